//! Issue 13, "On by default": the blast-radius guards through the real `keel run` binary. A
//! regional outage fed to `/ingest` (the 2021-10-13 missing VM-agent artifact) is not
//! amplified: with no `guards:` in `keel.yaml`, at most a tenth of the failed creates are
//! resubmitted, and the storm pages once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use serde_json::Value;

mod common;

use common::{metric, root, Keel};

use common::azure::{outage_body as body, post_ingest as post, INGEST_TOKEN as TOKEN};

/// 500 Windows VM creates failing with the missing VM-agent artifact, and 20 Linux VMs
/// reporting the same error, in one region within a minute, through `/ingest` with the
/// standard policies and no `guards:`: at most 10% are resubmitted (before the guards all 500
/// were), the rest escalate with the guard's reason and the held action, and exactly one page
/// reaches the webhook.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regional_outage_through_ingest_retries_at_most_a_tenth_and_pages_once() {
    let (hook, hook_url) = common::webhook().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("keel.yaml");
    std::fs::write(
        &cfg,
        format!(
            r#"policies: {policies}
state: {state}
listen: 127.0.0.1:0
self: test-vm
sources:
  ingest:
    token_env: KEEL_TEST_INGEST_TOKEN
runbooks:
  escalate:
    - name: page
      http: {{ url: "{hook_url}" }}
      timeout: 5s
      backoff: 100ms
"#,
            policies = root().join("policies/standard").display(),
            state = dir.path().join("state.db").display(),
        ),
    )
    .unwrap();
    let env = [("KEEL_TEST_INGEST_TOKEN", TOKEN)];
    let mut k = Keel::start(&cfg, &[], &env);
    k.wait_listen(Duration::from_secs(20)).await;
    let base = k.base();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();

    const WINDOWS: usize = 500;
    const LINUX: usize = 20;
    // Posted in time order, from four clients at once (a deployment tool's workers).
    let bodies = common::azure::outage_bodies(WINDOWS, LINUX);
    let total = bodies.len();
    assert_eq!(total, WINDOWS + LINUX);
    for chunk in bodies.chunks(4) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|b| {
                let (client, base, b) = (client.clone(), base.clone(), b.clone());
                tokio::spawn(async move { post(&client, &base, b).await })
            })
            .collect();
        for t in tasks {
            let status = t.await.unwrap();
            assert_eq!(status, 202, "{}", k.dump());
        }
    }

    // Every body decided once.
    let deadline = Instant::now() + Duration::from_secs(60);
    let decisions = loop {
        let d: Vec<Value> = k
            .json_lines()
            .into_iter()
            .filter(|l| l.get("decision").is_some())
            .map(|l| l["decision"].clone())
            .collect();
        if d.len() >= total || Instant::now() > deadline {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(decisions.len(), total, "{}", k.dump());

    let count = |f: &dyn Fn(&Value) -> bool| decisions.iter().filter(|d| f(d)).count();
    let resubmitted = count(&|d| d["action"] == "retry_without_agent" || d["action"] == "retry");
    assert!(resubmitted >= 1, "the first VMs are still retried");
    assert!(
        resubmitted * 10 <= WINDOWS,
        "{resubmitted} of {WINDOWS} failed creates resubmitted"
    );
    // The others escalate, each naming its guard and the held action.
    let held: Vec<&Value> = decisions
        .iter()
        .filter(|d| d.get("guard").is_some())
        .collect();
    assert_eq!(held.len() + resubmitted, WINDOWS);
    for d in &held {
        assert_eq!(d["action"], "escalate", "{d}");
        assert_eq!(d["guard"]["held_action"], "retry_without_agent", "{d}");
        assert_eq!(d["guard"]["scope"], "eastus2/vm_agent", "{d}");
    }
    let storm = held
        .iter()
        .filter(|d| d["guard"]["name"] == "storm")
        .count();
    assert!(
        storm > WINDOWS / 2,
        "the storm guard holds the bulk: {storm}"
    );
    assert!(held.iter().any(|d| d["guard"]["name"] == "retry_budget"));
    assert!(held
        .iter()
        .find(|d| d["guard"]["name"] == "storm")
        .is_some_and(|d| d["reason"].as_str().unwrap().starts_with("storm guard: ")));
    // Every line of the decision log says when, how bad and what.
    common::assert_log_shape(&k.json_lines());
    let types: std::collections::BTreeSet<String> = k
        .json_lines()
        .iter()
        .filter_map(|l| l["type"].as_str().map(str::to_string))
        .collect();
    assert!(
        types.contains("decision") && types.contains("host"),
        "{types:?}"
    );
    // Linux VMs are not touched.
    assert_eq!(count(&|d| d["action"] == "none"), LINUX);

    // Exactly one page: wait until the outbox is empty, then count what the webhook received.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = k.metrics().await;
        let depth = metric(&m, "keel_outbox_depth").unwrap_or(0.0);
        if depth == 0.0 && !hook.lock().unwrap().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "outbox not drained\n{m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Delivery is at least once: a page retried (same Idempotency-Key) is still one page.
    let pages = || {
        let keys = hook.lock().unwrap().clone();
        keys.into_iter().collect::<std::collections::HashSet<_>>()
    };
    let paging: Vec<&Value> = decisions
        .iter()
        .filter(|d| {
            d["escalations"]
                .as_array()
                .is_some_and(|e| e.iter().any(|e| e["repeat"] != true))
        })
        .collect();
    assert_eq!(
        pages().len(),
        1,
        "one page for the storm, not one per VM: {:?}\n{paging:#?}",
        hook.lock().unwrap()
    );
    let m = k.metrics().await;
    let escalations: f64 = m
        .lines()
        .filter(|l| l.starts_with("keel_escalations_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(escalations, 1.0, "{m}");
    // A metric counts the holds, per guard.
    let holds = |g: &str| {
        metric(
            &m,
            &format!("keel_guard_holds_total{{guard=\"{g}\",held_action=\"retry_without_agent\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert_eq!(
        (holds("storm") + holds("retry_budget")) as usize,
        held.len(),
        "{m}"
    );

    // Killed and restarted on the same state, the host rebuilds its history from the store:
    // the next failure of the region is still held by the storm guard, and pages no more.
    drop(k);
    let mut k = Keel::start(&cfg, &[], &env);
    k.wait_listen(Duration::from_secs(20)).await;
    let status = post(&client, &k.base(), body("web-win-late", "windows", WINDOWS)).await;
    assert_eq!(status, 202, "{}", k.dump());
    let line = k
        .wait_line(
            "the decision after the restart",
            Duration::from_secs(20),
            |l| l["decision"]["event_id"].as_str().is_some(),
        )
        .await;
    let d = &line["decision"];
    assert_eq!(d["guard"]["name"], "storm", "{d}");
    assert!(
        d["escalations"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["repeat"] == true),
        "{d}"
    );
    let m = k.metrics().await;
    assert_eq!(metric(&m, "keel_outbox_depth").unwrap_or(0.0), 0.0, "{m}");
    assert_eq!(pages().len(), 1);
    drop(dir);
}

/// `guards:` is validated whole with positions, like the rest of `keel.yaml`.
#[test]
fn guards_in_keel_yaml_are_validated_with_positions() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("keel.yaml");
    std::fs::write(
        &cfg,
        format!(
            "policies: {}\nstate: {}\nguards:\n  retry_budget: {{ ratio: 1.5, window: 0s }}\n  storm: {{ threshold: -1, cooldown: soon, enabeld: false }}\n  flap: {{ enabled: maybe }}\n  budgets: {{}}\n",
            root().join("policies/standard").display(),
            d.path().join("state.db").display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["run", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    for want in [
        "keel.yaml:4:26: error: expected a fraction from 0 to 1",
        "keel.yaml:4:39: error: must be longer than zero",
        "keel.yaml:5:23: error: expected a whole number from 0 to 1000000",
        "keel.yaml:5:37: error: expected a duration",
        "keel.yaml:5:43: error: unknown key `enabeld`",
        "keel.yaml:6:20: error: expected true or false",
        "keel.yaml:7:3: error: unknown key `budgets`",
    ] {
        assert!(err.contains(want), "{want}\n{err}");
    }
}
