//! The state on disk, through the real `keel run` binary: no secret of an ingested request in
//! the decision log, the database files or `/metrics` (while the `arm` step still PUTs the
//! real body, from memory); the state directory and files private whatever the umask; a
//! runbook with a huge backoff waits without a panic; a state database written by a newer
//! Keel refused and left unchanged.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::azure::{arm_stub, create_request, imds_stub, ingest_body, Req, SUB};
use common::{metric, root, Keel};
use serde_json::{json, Value};

const TOKEN: &str = "keel-test-token-0123456789abcdef";

/// Every secret field of a VM create request (nested, in mixed case) and its value: each value
/// is unique, so that finding it anywhere names the field that leaked.
fn secrets() -> Vec<(&'static str, String)> {
    [
        "adminPassword",
        "CustomData",
        "userData",
        "protectedSettings",
        "ProtectedSettingsFromKeyVault",
        "password",
        "Client_Secret",
        "privateKey",
        "connectionString",
        "SASToken",
        "accessKey",
        "token",
    ]
    .iter()
    .map(|k| (*k, format!("S3cret-{}-9f4e7a", k.to_ascii_lowercase())))
    .collect()
}

/// A Windows VM create request carrying every secret of [`secrets`], and a PEM private key
/// under an ordinary key.
fn request_with_secrets() -> Value {
    let s: std::collections::HashMap<&str, String> = secrets().into_iter().collect();
    let mut r = create_request();
    let p = &mut r["properties"];
    p["osProfile"]["adminPassword"] = json!(s["adminPassword"]);
    p["osProfile"]["CustomData"] = json!(s["CustomData"]);
    p["userData"] = json!(s["userData"]);
    p["diagnosticsProfile"] = json!({"bootDiagnostics": {"storage": [
        {"connectionString": s["connectionString"], "SASToken": s["SASToken"]},
        {"nested": {"accessKey": s["accessKey"], "token": s["token"]}},
    ]}});
    r["tags"] = json!({
        "deploy": {"Client_Secret": s["Client_Secret"], "password": s["password"],
                   "privateKey": {"pem": s["privateKey"]}},
        "note": "-----BEGIN OPENSSH PRIVATE KEY-----\nS3cret-pem-body-9f4e7a\n-----END OPENSSH PRIVATE KEY-----",
    });
    // Extension settings: the extension itself is dropped by the rewrite without the agent,
    // but the original request is in the event.
    r["resources"][0]["properties"]["protectedSettings"] =
        json!({"commandToExecute": s["protectedSettings"]});
    r["resources"][0]["properties"]["ProtectedSettingsFromKeyVault"] =
        json!({"secretUrl": s["ProtectedSettingsFromKeyVault"]});
    r
}

/// The bytes of the database and its `-wal` and `-shm` (those that exist).
fn state_bytes(db: &Path) -> Vec<(String, Vec<u8>)> {
    ["", "-wal", "-shm"]
        .iter()
        .filter_map(|suffix| {
            let p = format!("{}{suffix}", db.display());
            std::fs::read(&p).ok().map(|b| (p, b))
        })
        .collect()
}

/// Panics if any secret value (or the PEM body) is in `text` or in the state files.
fn assert_no_secret(what: &str, text: &str, db: &Path) {
    let mut values: Vec<String> = secrets().into_iter().map(|(_, v)| v).collect();
    values.push("S3cret-pem-body-9f4e7a".into());
    for v in &values {
        assert!(!text.contains(v.as_str()), "{what} shows {v}:\n{text}");
        for (p, bytes) in state_bytes(db) {
            assert!(
                !bytes.windows(v.len()).any(|w| w == v.as_bytes()),
                "{p} holds {v}"
            );
        }
    }
    // The store has the request, redacted.
    let marker = b"[redacted]";
    assert!(
        state_bytes(db)
            .iter()
            .any(|(_, b)| b.windows(marker.len()).any(|w| w == marker)),
        "no redacted request in the state files"
    );
}

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn puts(arm: &common::azure::ArmState) -> Vec<Req> {
    arm.lock()
        .unwrap()
        .reqs
        .iter()
        .filter(|r| r.method == "PUT")
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_log_the_state_files_or_metrics() {
    let (imds_url, _imds) = imds_stub().await;
    let (arm_url, arm) = arm_stub().await;
    // The first PUT is throttled for 300 s: the runbook waits there, and the host is killed.
    arm.lock().unwrap().script.push_back((
        429,
        Some(300),
        json!({"error": {"code": "TooManyRequests"}}),
    ));
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let db = state_dir.join("keel.db");
    let cfg = dir.path().join("keel.yaml");
    std::fs::write(
        &cfg,
        format!(
            "policies: {}\nstate: {}\nlisten: 127.0.0.1:0\narm:\n  scopes: [\"/subscriptions/{SUB}\"]\nazure_identity:\n  endpoint: {imds_url}\nsources:\n  ingest:\n    token_env: KEEL_TEST_INGEST_TOKEN\nrunbooks:\n  retry_without_agent:\n    - name: resubmit\n      arm:\n        endpoint: {arm_url}\n        poll_interval: 100ms\n      timeout: 600s\n      retries: 1\n      backoff: 100ms\n",
            root().join("host/tests/data/azure-policies").display(),
            db.display(),
        ),
    )
    .unwrap();
    let env = [("KEEL_TEST_INGEST_TOKEN", TOKEN)];
    // A permissive umask: the state must be private all the same.
    let mut k = Keel::start_with_umask("000", &cfg, &[], &env);
    let base = k.wait_listen(Duration::from_secs(20)).await;

    let request = request_with_secrets();
    let r = common::http()
        .post(format!("{base}/ingest"))
        .bearer_auth(TOKEN)
        .json(&ingest_body(
            "deploy/web-win-1/create/1",
            "web-win-1",
            Some(request.clone()),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let reply = r.text().await.unwrap();
    let d = k
        .decision("test.vm-agent.retry-without-agent", Duration::from_secs(10))
        .await;
    assert_eq!(d["decision"]["action"], "retry_without_agent", "{d}");
    // The decision log shows the request, redacted.
    assert_eq!(
        d["decision"]["retry"]["request"]["properties"]["osProfile"]["adminPassword"], "[redacted]",
        "{d}"
    );

    // The resubmission still PUTs the real body, from memory.
    let deadline = Instant::now() + Duration::from_secs(20);
    while puts(&arm).is_empty() {
        assert!(Instant::now() < deadline, "no PUT\n{}", k.dump());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let want = keel_engine::normalize::transform::retry_without_agent(&request).unwrap();
    let first = puts(&arm);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].body, want);
    assert_eq!(
        first[0].body["properties"]["osProfile"]["adminPassword"],
        "S3cret-adminpassword-9f4e7a"
    );

    #[cfg(unix)]
    {
        assert_eq!(mode(&state_dir), 0o700, "the state directory");
        assert_eq!(mode(&db), 0o600, "the database");
        for suffix in ["-wal", "-shm"] {
            let p = Path::new(&format!("{}{suffix}", db.display())).to_path_buf();
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
    }
    let m = k.metrics().await;
    assert_no_secret("/metrics", &m, &db);
    assert_no_secret("the ingest reply", &reply, &db);
    k.kill();
    assert_no_secret("the decision log", &k.dump(), &db);

    // After a restart, the pending resubmission has only the stored, redacted body: it is not
    // sent with "[redacted]" in place of the password; the step fails at once and escalates.
    let mut k = Keel::start_with_umask("000", &cfg, &[], &env);
    k.wait_listen(Duration::from_secs(20)).await;
    let step = k
        .wait_line("the resubmit step", Duration::from_secs(20), |l| {
            l["step"] == "resubmit"
        })
        .await;
    let outcome = step["outcome"].as_str().unwrap();
    assert!(
        outcome.starts_with("failed: ") && outcome.contains("redacted"),
        "{step}"
    );
    assert!(
        outcome.contains("/properties/osProfile/adminPassword"),
        "{step}"
    );
    assert_eq!(
        step["attempt"], 1,
        "no retry of a permanent failure: {step}"
    );
    k.wait_line("the escalation", Duration::from_secs(10), |l| {
        l.get("escalation").is_some()
    })
    .await;
    assert_eq!(puts(&arm).len(), 1, "nothing sent after the restart");
    let m = k.metrics().await;
    assert_eq!(
        metric(
            &m,
            "keel_runbooks_failed_total{action=\"retry_without_agent\"}"
        ),
        Some(1.0),
        "{m}"
    );
    assert_no_secret("/metrics", &m, &db);
    k.kill();
    assert_no_secret("the decision log", &k.dump(), &db);
    #[cfg(unix)]
    assert_eq!(mode(&db), 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_backoff_and_intervals_wait_without_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("keel.yaml");
    let huge = "18446744073709551615s";
    std::fs::write(
        &cfg,
        format!(
            "policies: {}\nstate: {}\nlisten: 127.0.0.1:0\ngc_interval: {huge}\nretention: {huge}\npolicy_reload_interval: {huge}\nunready_after: {huge}\nsources:\n  ingest:\n    token_env: KEEL_TEST_INGEST_TOKEN\nrunbooks:\n  retry_without_agent:\n    - name: fails\n      exec: [\"/bin/sh\", \"-c\", \"exit 1\"]\n      idempotent: true\n      retries: 3\n      backoff: {huge}\n      timeout: {huge}\n",
            root().join("host/tests/data/azure-policies").display(),
            dir.path().join("state.db").display(),
        ),
    )
    .unwrap();
    let mut k = Keel::start(&cfg, &[], &[("KEEL_TEST_INGEST_TOKEN", TOKEN)]);
    let base = k.wait_listen(Duration::from_secs(20)).await;
    let r = common::http()
        .post(format!("{base}/ingest"))
        .bearer_auth(TOKEN)
        .json(&ingest_body(
            "deploy/web-win-1/create/1",
            "web-win-1",
            Some(create_request()),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    // The first attempt fails; the next one waits for the (saturated) backoff.
    let series = "keel_step_attempts_total{executor=\"exec\",outcome=\"failed\"}";
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if metric(&k.metrics().await, series) == Some(1.0) {
            break;
        }
        assert!(Instant::now() < deadline, "no failed attempt\n{}", k.dump());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The host keeps answering, and nothing panicked (the garbage collector has run once and
    // armed its next tick; the runbook sleeps).
    for _ in 0..5 {
        let r = common::http()
            .get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(k.child.try_wait().unwrap().is_none(), "{}", k.dump());
    assert!(!k.stderr().contains("panicked"), "{}", k.dump());
    assert_eq!(metric(&k.metrics().await, series), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_database_from_a_newer_keel_is_refused_and_left_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let cfg = dir.path().join("keel.yaml");
    std::fs::write(
        &cfg,
        format!(
            "policies: {}\nstate: {}\nlisten: 127.0.0.1:0\nsources:\n  ingest:\n    token_env: KEEL_TEST_INGEST_TOKEN\n",
            root().join("host/tests/data/azure-policies").display(),
            db.display(),
        ),
    )
    .unwrap();
    let env = [("KEEL_TEST_INGEST_TOKEN", TOKEN)];
    // A real state database, then stamped as a newer Keel would.
    let mut k = Keel::start(&cfg, &[], &env);
    k.wait_listen(Duration::from_secs(20)).await;
    k.kill();
    let ours: i64 = {
        let c = rusqlite::Connection::open(&db).unwrap();
        let v = c
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        c.pragma_update(None, "user_version", v + 1).unwrap();
        v
    };
    assert!(ours >= 1);
    let listing = || {
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let files = listing();
    let bytes = std::fs::read(&db).unwrap();
    #[cfg(unix)]
    let mode_before = mode(&db);

    let mut k = Keel::start(&cfg, &[], &env);
    let status = k.wait_exit(Duration::from_secs(20)).await;
    assert!(!status.success(), "{status}\n{}", k.dump());
    let err = k.stderr();
    assert!(
        err.contains(&format!("schema version is {}", ours + 1))
            && err.contains(&format!("supports ({ours})")),
        "{err}"
    );
    assert!(std::fs::read(&db).unwrap() == bytes, "the database changed");
    assert_eq!(listing(), files, "files were created or removed");
    #[cfg(unix)]
    assert_eq!(mode(&db), mode_before);
}
