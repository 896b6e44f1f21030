//! The blockers' unit tests: each check against a local server or program, the fail-safe
//! state, the verdict, and the host's view (metrics, window and blocker verdicts).

#![allow(clippy::unwrap_used, clippy::panic)]

use axum::http::{StatusCode, Uri};
use axum::response::IntoResponse;
use axum::Router;

use super::*;
use crate::run::pause::Scope;

fn blocker(name: &str, check: BlockerCheck, timeout: Duration) -> Blocker {
    Blocker {
        name: name.into(),
        check,
        interval: Duration::from_secs(60),
        timeout,
        actions: vec![Action::Drain],
        scope: Scope::All,
    }
}

fn exec(argv: &[&str], timeout: Duration) -> Blocker {
    blocker(
        "b",
        BlockerCheck::Exec(argv.iter().map(|s| s.to_string()).collect()),
        timeout,
    )
}

fn ev(region: &str) -> Event {
    serde_json::from_value(serde_json::json!({
        "id": "ingest:e1", "time": "2026-12-01T00:00:00Z", "source": "ingest",
        "kind": "maintenance", "resource": {"name": "vm1", "region": region},
        "maintenance": {"type": "reboot", "status": "scheduled"},
    }))
    .unwrap()
}

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

const SEC: Duration = Duration::from_secs(1);

#[tokio::test]
async fn exec_is_clear_on_status_zero_only() {
    let http = reqwest::Client::new();
    assert_eq!(check(&http, &exec(&["/bin/true"], 10 * SEC)).await, Ok(()));
    let why = check(&http, &exec(&["/bin/sh", "-c", "exit 1"], 10 * SEC))
        .await
        .unwrap_err();
    assert!(why.contains("exited with exit status: 1"), "{why}");
    let why = check(&http, &exec(&["/nonexistent/check"], 10 * SEC))
        .await
        .unwrap_err();
    assert!(why.starts_with("cannot run /nonexistent/check"), "{why}");
}

#[tokio::test]
async fn exec_past_its_timeout_is_blocked_and_killed() {
    let dir = tempfile::tempdir().unwrap();
    let mark = dir.path().join("still-running");
    // The child of the shell would write the file after 2 s unless its group is killed.
    let script = format!("sleep 2; touch {}", mark.display());
    let b = exec(&["/bin/sh", "-c", &script], Duration::from_millis(200));
    let why = check(&reqwest::Client::new(), &b).await.unwrap_err();
    assert_eq!(why, "no result within 200ms");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        !mark.exists(),
        "the check's process group outlived its timeout"
    );
}

#[tokio::test]
async fn exec_gets_only_the_allowed_environment() {
    // Whatever the test's environment holds (cargo's CARGO_* at least), the check sees only
    // the allow-list's names, and what the shell itself sets.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("env");
    let script = format!("env > {}", out.display());
    let b = exec(&["/bin/sh", "-c", &script], 10 * SEC);
    assert_eq!(check(&reqwest::Client::new(), &b).await, Ok(()));
    let seen = std::fs::read_to_string(&out).unwrap();
    let names: Vec<&str> = seen
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(n, _)| n)
        .collect();
    assert!(names.contains(&"PATH"), "{seen}");
    for n in names {
        assert!(
            crate::run::steps::EXEC_ENV_ALLOWLIST.contains(&n)
                || ["PWD", "SHLVL", "_"].contains(&n),
            "{n} reached the check:\n{seen}"
        );
    }
}

/// A local server: `/ok` 200, `/busy` 503, `/moved` 302, and a Prometheus query API under
/// `/{empty,firing,error,html,huge}/api/v1/query`; `/empty` answers an empty result only to
/// the expected query.
async fn server() -> String {
    let app = Router::new().fallback(|uri: Uri| async move {
        let query = uri.query().unwrap_or("").to_string();
        let json = |v: serde_json::Value| {
            (
                StatusCode::OK,
                [("content-type", "application/json")],
                v.to_string(),
            )
                .into_response()
        };
        let series = serde_json::json!({"metric": {"alertname": "Deploy"}, "value": [0, "1"]});
        match uri.path() {
            "/ok" => StatusCode::NO_CONTENT.into_response(),
            "/busy" => StatusCode::SERVICE_UNAVAILABLE.into_response(),
            "/moved" => (StatusCode::FOUND, [("location", "/ok")]).into_response(),
            "/empty/api/v1/query" if query == "query=ALERTS%7Balertstate%3D%22firing%22%7D" => {
                json(serde_json::json!({"status": "success",
                    "data": {"resultType": "vector", "result": []}}))
            }
            "/empty/api/v1/query" => json(serde_json::json!({"status": "success",
                "data": {"resultType": "vector", "result": [series.clone()]}})),
            "/firing/api/v1/query" => json(serde_json::json!({"status": "success",
                "data": {"resultType": "vector", "result": [series.clone(), series]}})),
            "/error/api/v1/query" => (
                StatusCode::BAD_REQUEST,
                serde_json::json!({"status": "error", "errorType": "bad_data",
                    "error": "parse error\u{1b}[31m"})
                .to_string(),
            )
                .into_response(),
            "/html/api/v1/query" => "<html>proxy</html>".into_response(),
            "/huge/api/v1/query" => " ".repeat(MAX_BODY + 1).into_response(),
            _ => StatusCode::NOT_FOUND.into_response(),
        }
    });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn http_is_clear_on_2xx_only() {
    let base = server().await;
    let http = crate::run::http_client().unwrap();
    let get = |path: &str| blocker("h", BlockerCheck::Http(format!("{base}{path}")), 10 * SEC);
    assert_eq!(check(&http, &get("/ok")).await, Ok(()));
    assert_eq!(
        check(&http, &get("/busy")).await,
        Err("GET answered 503 Service Unavailable".into())
    );
    assert_eq!(
        check(&http, &get("/moved")).await,
        Err("GET answered 302 Found".into())
    );
    // Nothing listens there: blocked, and the URL is not repeated.
    let closed = blocker(
        "h",
        BlockerCheck::Http("http://127.0.0.1:9/x".into()),
        10 * SEC,
    );
    let why = check(&http, &closed).await.unwrap_err();
    assert!(
        why.starts_with("GET failed") && !why.contains("127.0.0.1"),
        "{why}"
    );
}

#[tokio::test]
async fn prometheus_is_clear_on_an_empty_result_only() {
    let base = server().await;
    let http = crate::run::http_client().unwrap();
    let prom = |path: &str| {
        blocker(
            "p",
            BlockerCheck::Prometheus {
                url: format!("{base}{path}"),
                query: "ALERTS{alertstate=\"firing\"}".into(),
            },
            10 * SEC,
        )
    };
    // The query is sent URL-encoded: the server answers empty only to it.
    assert_eq!(check(&http, &prom("/empty")).await, Ok(()));
    assert_eq!(
        check(&http, &prom("/firing")).await,
        Err("the query returned 2 series".into())
    );
    let why = check(&http, &prom("/error")).await.unwrap_err();
    assert!(
        why.starts_with("query failed (400 Bad Request): parse error"),
        "{why}"
    );
    let why = check(&http, &prom("/html")).await.unwrap_err();
    assert!(why.contains("is not JSON"), "{why}");
    assert_eq!(
        check(&http, &prom("/huge")).await,
        Err(format!("answer larger than {MAX_BODY} bytes"))
    );
    assert!(check(&http, &prom("/nothing")).await.is_err());
}

#[test]
fn not_checked_yet_or_stale_is_blocked() {
    let b = blocker("deploys", BlockerCheck::Http("http://x".into()), 10 * SEC);
    let state = Blockers::default();
    let now = t("2026-12-02T12:00:00Z");
    assert_eq!(state.blocked(&b, now), Some("not checked yet".into()));
    state.record(
        "deploys",
        Observed {
            blocked: None,
            checked_at: now,
        },
    );
    assert_eq!(state.blocked(&b, now), None);
    // Two intervals and a timeout later: still fresh; a second more: stale.
    assert_eq!(state.blocked(&b, t("2026-12-02T12:02:10Z")), None);
    assert_eq!(
        state.blocked(&b, t("2026-12-02T12:02:11Z")),
        Some("last checked at 2026-12-02T12:00:00.000Z, more than 130s ago".into())
    );
    state.record(
        "deploys",
        Observed {
            blocked: Some("GET answered 503 Service Unavailable".into()),
            checked_at: now,
        },
    );
    assert_eq!(
        state.blocked(&b, now),
        Some("GET answered 503 Service Unavailable".into())
    );
}

#[test]
fn the_verdict_holds_on_the_first_applying_blocked_blocker() {
    let now = t("2026-12-02T12:00:00Z");
    let mut east = blocker("east", BlockerCheck::Http("http://x".into()), SEC);
    east.scope = Scope::Region("eastus".into());
    let mut retries = blocker("retries", BlockerCheck::Http("http://x".into()), SEC);
    retries.actions = vec![Action::Retry];
    let deploys = blocker("deploys", BlockerCheck::Http("http://x".into()), SEC);
    let all = vec![east, retries, deploys];
    let state = Blockers::default();
    let e = ev("westeurope");
    // None checked yet: `deploys` is the one that applies to a drain in westeurope.
    assert_eq!(
        verdict(&all, &state, &e, Action::Drain, now),
        Verdict::Hold {
            by: "blocker",
            scope: "deploys".into(),
            reason: "held: blocker deploys: not checked yet".into(),
        }
    );
    assert!(matches!(
        verdict(&all, &state, &e, Action::Retry, now),
        Verdict::Hold { scope, .. } if scope == "retries"
    ));
    assert_eq!(
        verdict(&all, &state, &e, Action::Acknowledge, now),
        Verdict::Pass
    );
    let clear = Observed {
        blocked: None,
        checked_at: now,
    };
    state.record("deploys", clear.clone());
    assert_eq!(verdict(&all, &state, &e, Action::Drain, now), Verdict::Pass);
    // In eastus `east` applies too, and has not been checked.
    assert!(matches!(
        verdict(&all, &state, &ev("eastus"), Action::Drain, now),
        Verdict::Hold { scope, .. } if scope == "east"
    ));
}

/// A host whose `keel.yaml` ends with `extra`.
fn host(dir: &tempfile::TempDir, extra: &str) -> Arc<Host> {
    let path = dir.path().join("keel.yaml");
    let policies = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/standard");
    std::fs::write(
        &path,
        format!(
            "policies: {}\nstate: state.db\nlisten: 127.0.0.1:0\n{extra}",
            policies.display()
        ),
    )
    .unwrap();
    let cfg = crate::config::load(&path)
        .map_err(|e| format!("{e:?}"))
        .unwrap();
    Host::new(cfg, Box::new(std::io::sink())).unwrap()
}

fn drain() -> Decision {
    serde_json::from_value(serde_json::json!({"event_id": "ingest:e1", "action": "drain"})).unwrap()
}

#[test]
fn the_hosts_verdicts_read_its_configuration_and_state() {
    let dir = tempfile::tempdir().unwrap();
    let h = host(
        &dir,
        "windows:\n  - name: nights\n    start: \"22:00\"\n    end: \"04:00\"\n\
         blockers:\n  - name: deploys\n    exec: [/bin/false]\n",
    );
    let (e, d) = (ev("westeurope"), drain());
    let noon = t("2026-12-02T12:00:00Z");
    assert!(matches!(
        h.window_verdict(&e, &d, None, noon),
        Verdict::Hold { by: "window", .. }
    ));
    assert!(matches!(
        h.window_verdict(&e, &d, Some(t("2026-12-02T13:00:00Z")), noon),
        Verdict::Escalate(_)
    ));
    assert_eq!(
        h.window_verdict(&e, &d, None, t("2026-12-02T23:00:00Z")),
        Verdict::Pass
    );
    let mut esc = d.clone();
    esc.action = Action::Escalate;
    assert_eq!(h.window_verdict(&e, &esc, None, noon), Verdict::Pass);
    assert_eq!(h.blocker_verdict(&e, &esc, noon), Verdict::Pass);
    // The blocker: not checked yet, then blocked, then clear; the gauge follows.
    assert!(matches!(
        h.blocker_verdict(&e, &d, noon),
        Verdict::Hold { by: "blocker", .. }
    ));
    h.observe_blocker("deploys", Err("exit \u{1b}[31m1".into()), noon);
    assert_eq!(
        h.blocker_verdict(&e, &d, noon),
        Verdict::Hold {
            by: "blocker",
            scope: "deploys".into(),
            reason: "held: blocker deploys: exit \\u{1b}[31m1".into(),
        }
    );
    let gauge = || {
        h.metrics
            .get("keel_blocker_blocked", &[("blocker", "deploys")])
    };
    assert_eq!(gauge(), 1.0);
    h.observe_blocker("deploys", Ok(()), noon);
    assert_eq!(h.blocker_verdict(&e, &d, noon), Verdict::Pass);
    assert_eq!(gauge(), 0.0);
}

#[tokio::test]
async fn the_watch_task_checks_until_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let h = host(
        &dir,
        "blockers:\n  - name: ok\n    exec: [/bin/true]\n    interval: 1h\n",
    );
    let (tx, rx) = tokio::sync::watch::channel(false);
    let b = h.cfg.blockers[0].clone();
    let task = tokio::spawn(watch(h.clone(), b, rx));
    // The first check runs at once.
    for _ in 0..200 {
        if h.blockers.last("ok").is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(h.blockers.last("ok").map(|o| o.blocked), Some(None));
    assert_eq!(
        h.metrics.get("keel_blocker_blocked", &[("blocker", "ok")]),
        0.0
    );
    tx.send(true).unwrap();
    task.await.unwrap();
}

#[test]
fn a_blocker_that_never_clears_holds_at_every_check() {
    // Checked every minute for a day, blocked each time: the verdict holds throughout (never
    // passes, and never escalates by itself: the hold's deadline does, in the gate's tick).
    let b = blocker("freeze", BlockerCheck::Http("http://x".into()), 10 * SEC);
    let state = Blockers::default();
    let e = ev("westeurope");
    let t0 = t("2026-10-24T12:00:00Z");
    for minute in 0..(24 * 60) {
        let now = t0 + chrono::Duration::minutes(minute);
        state.record(
            "freeze",
            Observed {
                blocked: Some("GET answered 423 Locked".into()),
                checked_at: now,
            },
        );
        let later = now + chrono::Duration::seconds(59);
        assert_eq!(
            verdict(std::slice::from_ref(&b), &state, &e, Action::Drain, later),
            Verdict::Hold {
                by: "blocker",
                scope: "freeze".into(),
                reason: "held: blocker freeze: GET answered 423 Locked".into(),
            }
        );
    }
}
