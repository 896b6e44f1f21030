//! Issue 14, fleet mode: several real `keel run` processes share one real PostgreSQL server
//! (started here: `common::pg`), and the fleet behaves as one host would: the 2021-10-13
//! storm split across three hosts pages once and resubmits at most a tenth of the failed
//! creates fleet-wide. And `state:` values that look like URLs are understood or refused,
//! never taken as file names.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;

use common::pg::PgServer;
use common::{metric, root, Keel};

const TOKEN: &str = "keel-test-token-0123456789abcdef";

/// `keel check --config` on a configuration whose text is `yaml`: (success, stderr).
fn check_config(dir: &Path, yaml: &str) -> (bool, String) {
    let cfg = dir.join("keel.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["check", "--config"])
        .arg(&cfg)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A URL in `state` is understood (postgres) or refused with its position, and never
/// becomes a file: no file named after a URL appears beside the configuration.
#[test]
fn a_state_url_is_understood_or_refused_never_a_file_name() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (yaml, want) in [
        ("state: mysql://db/keel\n", "keel.yaml:1:8: error: `mysql://` is not a state store Keel knows"),
        ("state: sqlite:///var/lib/keel.db\n", "`sqlite://` is not a state store"),
        (
            "state: postgres://keel:hunter2@db.example.com/keel\n",
            "a password in the URL would sit in keel.yaml",
        ),
        (
            "state: postgres://keel@db.example.com/keel?sslmode=disable\n",
            "`sslmode=disable` is refused off loopback",
        ),
        (
            "state: postgres://keel@db.example.com/keel?sslmode=prefer\n",
            "`sslmode=prefer` is not supported",
        ),
        (
            "state: postgres://keel@db.example.com/keel?application_name=x\n",
            "unknown URL parameter `application_name`",
        ),
        ("state: postgres:///keel\n", "the URL names no host"),
        (
            "state: postgres://keel@127.0.0.1/keel\npostgres:\n  password_env: KEEL_TEST_NO_SUCH_VARIABLE\n",
            "keel.yaml:3:17: error: the environment variable `KEEL_TEST_NO_SUCH_VARIABLE` is not set",
        ),
        (
            "state: postgres://keel@127.0.0.1/keel\npostgres:\n  password_file: missing\n",
            "postgres/password_file",
        ),
        (
            "state: state.db\npostgres:\n  password_env: X\n",
            "`postgres` only applies with `state: postgres://…`",
        ),
    ] {
        let (ok, text) = check_config(d, yaml);
        assert!(!ok, "{yaml} passed:\n{text}");
        let text = text.replace(&format!("{}/", d.display()), "");
        if want.contains("postgres/password_file") {
            assert!(text.contains("cannot read"), "{yaml}:\n{text}");
        } else {
            assert!(text.contains(want), "{yaml}: want {want:?}:\n{text}");
        }
        let files: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "keel.yaml")
            .collect();
        assert!(files.is_empty(), "{yaml} made files: {files:?}");
    }
    // Understood: on loopback without TLS, off loopback with verified TLS.
    for yaml in [
        "state: postgres://keel@127.0.0.1:5432/keel\n",
        "state: postgresql://keel@localhost/keel?connect_timeout=3\n",
        "state: postgres://keel@db.example.com/keel?sslmode=verify-full\n",
        "state: postgres://keel@db.example.com/keel\npostgres:\n  password_env: PATH\n",
    ] {
        let (ok, text) = check_config(d, yaml);
        assert!(ok, "{yaml} refused:\n{text}");
    }
}

/// The vendor's error body for VM `i` (its name, id, OS and time varied): VM `i` fails at
/// 07:02:00 + `i` × 100 ms.
fn body(name: &str, os: &str, i: usize) -> String {
    let key = format!("deploy-2021-10-13/{name}/create/1");
    let mut b = common::azure::ingest_body(&key, name, None);
    b["resource"]["os"] = json!(os);
    let end = chrono::DateTime::parse_from_rfc3339("2021-10-13T07:02:00Z").unwrap()
        + chrono::Duration::milliseconds(100 * i as i64);
    b["error"]["endTime"] = json!(end.to_rfc3339());
    b["error"]["startTime"] = json!((end - chrono::Duration::seconds(3)).to_rfc3339());
    b["error"]["name"] = json!(format!("op-{name}"));
    b.to_string()
}

async fn post(client: &reqwest::Client, base: &str, body: String) -> u16 {
    for _ in 0..200 {
        let r = client
            .post(format!("{base}/ingest"))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body.clone())
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        if status != 503 {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("still 503 after 200 tries");
}

/// Three hosts' `keel.yaml`: the same `state: postgres://…` (password from a file), the
/// standard policies, an ingest endpoint each, and one escalation webhook.
fn fleet_configs(
    dir: &Path,
    url: &str,
    pw: &Path,
    hook_url: &str,
    extra: &str,
) -> Vec<std::path::PathBuf> {
    (0..3)
        .map(|h| {
            let cfg = dir.join(format!("host-{h}.yaml"));
            std::fs::write(
                &cfg,
                format!(
                    r#"policies: {policies}
state: {url}
postgres:
  password_file: {pw}
plugin_cache: {cache}
listen: 127.0.0.1:0
self: host-{h}
sources:
  ingest:
    token_env: KEEL_TEST_INGEST_TOKEN
runbooks:
  escalate:
    - name: page
      http: {{ url: "{hook_url}" }}
      timeout: 5s
      backoff: 100ms
{extra}"#,
                    policies = root().join("policies/standard").display(),
                    pw = pw.display(),
                    cache = dir.join(format!("cache-{h}")).display(),
                ),
            )
            .unwrap();
            cfg
        })
        .collect()
}

/// The 2021-10-13 replay split across three hosts on one PostgreSQL: 300 Windows VM creates
/// failing with the missing VM-agent artifact (and 15 Linux VMs), posted to the hosts in
/// turn. The fleet resubmits at most a tenth of them in all (each host alone would have
/// resubmitted its first ones up to its own budget), every body is decided once, and exactly
/// one page reaches the webhook for the whole fleet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_2021_10_13_storm_split_across_three_hosts_pages_once_and_retries_a_tenth() {
    let pg = PgServer::start();
    let url = pg.create_db("storm");
    let (hook, hook_url) = common::webhook().await;
    let dir = tempfile::tempdir().unwrap();
    let pw = pg.password_file(dir.path());
    let env = [("KEEL_TEST_INGEST_TOKEN", TOKEN)];
    let mut hosts: Vec<Keel> = fleet_configs(dir.path(), &url, &pw, &hook_url, "")
        .iter()
        .map(|c| Keel::start(c, &[], &env))
        .collect();
    let mut bases = Vec::new();
    for k in &mut hosts {
        k.wait_listen(Duration::from_secs(60)).await;
        bases.push(k.base());
    }
    let client = reqwest::Client::builder().no_proxy().build().unwrap();

    const WINDOWS: usize = 300;
    const LINUX: usize = 15;
    let mut bodies = Vec::new();
    for i in 0..WINDOWS {
        bodies.push(body(&format!("web-win-{i}"), "windows", i));
        if i % (WINDOWS / LINUX) == 0 {
            bodies.push(body(&format!("db-linux-{i}"), "linux", i));
        }
    }
    let total = bodies.len();
    // Three at a time, one to each host.
    for (n, chunk) in bodies.chunks(3).enumerate() {
        let tasks: Vec<_> = chunk
            .iter()
            .enumerate()
            .map(|(j, b)| {
                let base = bases[(n + j) % 3].clone();
                let (client, b) = (client.clone(), b.clone());
                tokio::spawn(async move { post(&client, &base, b).await })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), 202);
        }
    }

    // Every body decided once, by one of the hosts.
    let deadline = Instant::now() + Duration::from_secs(90);
    let decisions = loop {
        let d: Vec<Value> = hosts
            .iter()
            .flat_map(|k| k.json_lines())
            .filter(|l| l.get("decision").is_some())
            .map(|l| l["decision"].clone())
            .collect();
        if d.len() >= total || Instant::now() > deadline {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(decisions.len(), total, "{}", hosts[0].dump());
    let per_host: Vec<usize> = hosts
        .iter()
        .map(|k| {
            k.json_lines()
                .iter()
                .filter(|l| l.get("decision").is_some())
                .count()
        })
        .collect();
    assert!(per_host.iter().all(|&n| n >= total / 3 - 1), "{per_host:?}");

    let count = |f: &dyn Fn(&Value) -> bool| decisions.iter().filter(|d| f(d)).count();
    let resubmitted = count(&|d| d["action"] == "retry_without_agent" || d["action"] == "retry");
    assert!(resubmitted >= 1, "the first VMs are still retried");
    assert!(
        resubmitted * 10 <= WINDOWS,
        "{resubmitted} of {WINDOWS} failed creates resubmitted across the fleet"
    );
    assert_eq!(count(&|d| d["action"] == "none"), LINUX);
    // Guards held on every host, not only the first: each saw the others' failures.
    for k in &hosts {
        let guarded = k
            .json_lines()
            .iter()
            .filter(|l| l["decision"].get("guard").is_some())
            .count();
        assert!(
            guarded > 0,
            "a host decided without the fleet's history:\n{}",
            k.dump()
        );
    }

    // The database holds each decision once, by the host that made it.
    let by_host = pg.rows(
        "storm",
        "SELECT host, COUNT(*) FROM decisions GROUP BY host ORDER BY host",
    );
    assert_eq!(by_host.len(), 3, "{by_host:?}");
    assert_eq!(
        by_host.iter().map(|r| r.1).sum::<i64>(),
        total as i64,
        "{by_host:?}"
    );

    // One page for the fleet: wait until the shared outbox is empty.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pending = pg.count(
            "storm",
            "SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL",
        );
        if pending == 0 && !hook.lock().unwrap().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "outbox not drained");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pages: std::collections::HashSet<Option<String>> =
        hook.lock().unwrap().iter().cloned().collect();
    assert_eq!(
        pages.len(),
        1,
        "one page for the fleet: {:?}",
        hook.lock().unwrap()
    );
    // Delivered once: by one host, with one attempt.
    let delivered = pg.count(
        "storm",
        "SELECT COUNT(*) FROM outbox WHERE delivered_at IS NOT NULL",
    );
    assert_eq!(delivered, 1);
    assert_eq!(hook.lock().unwrap().len(), 1, "delivered exactly once");

    for k in &hosts {
        let m = k.metrics().await;
        assert!(metric(&m, "keel_outbox_depth").is_some(), "{m}");
    }
    for k in &mut hosts {
        k.kill();
    }
}
