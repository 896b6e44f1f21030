//! The Azure sources and the `arm` executor, end to end: the real `keel run` binary against
//! loopback stubs of IMDS (the legacy `/metadata/v1/maintenance` endpoint, InstanceInfo, the
//! managed-identity token endpoint) and of Azure Resource Manager (Resource Health's
//! availabilityStatuses, PUT of a VM). Also files replayed through a normalizer. The policy set
//! is `host/tests/data/azure-policies/`. Durations are scaled down.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::azure::{arm_stub, create_request, imds_stub, ingest_body, vm_id, Req, CLIENT_ID, SUB};
use common::{metric, root, Keel};
use serde_json::{json, Value};

const TOKEN: &str = "keel-test-token-0123456789abcdef";

// ------------------------------------------------------------------------------------------
// Configuration, and reading the running host.

fn policies() -> PathBuf {
    root().join("host/tests/data/azure-policies")
}

/// A configuration with the test policies, fresh state, any loopback port and `log` runbooks
/// (plus `runbooks`, YAML lines under `runbooks:`).
fn write_config(dir: &Path, top: &str, sources: &str, runbooks: &str) -> PathBuf {
    let cfg = dir.join("keel.yaml");
    std::fs::write(
        &cfg,
        format!(
            "policies: {}\nstate: {}\nlisten: 127.0.0.1:0\nself: test-vm\nunready_after: 1s\n{top}sources:\n{sources}runbooks:\n  drain:\n    - name: announce\n      log: {{}}\n{runbooks}",
            policies().display(),
            dir.join("state.db").display(),
        ),
    )
    .unwrap();
    cfg
}

/// `arm.scopes` (top level) with these scopes.
fn arm_scopes(scopes: &[&str]) -> String {
    let list: Vec<String> = scopes.iter().map(|s| format!("\"{s}\"")).collect();
    format!("arm:\n  scopes: [{}]\n", list.join(", "))
}

/// The test subscription as a scope.
fn sub_scope() -> String {
    format!("/subscriptions/{SUB}")
}

fn event_json(state: &Path, event_id: &str) -> Value {
    let c = rusqlite::Connection::open(state).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    let s: String = c
        .query_row(
            "SELECT event_json FROM decisions WHERE event_id = ?1",
            [event_id],
            |r| r.get(0),
        )
        .unwrap();
    serde_json::from_str(&s).unwrap()
}

// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_maintenance_notice_is_read_with_instance_info_and_drained_once() {
    let (imds_url, imds) = imds_stub().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "",
        &format!("  azure_maintenance_v1:\n    url: {imds_url}\n    interval: 100ms\n    timeout: 2s\n    max_backoff: 300ms\n"),
        "",
    );
    let mut k = Keel::start(&cfg, &[], &[]);
    // Nothing is coming: `{}` polls quietly.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !k.json_lines().iter().any(|l| l.get("decision").is_some()),
        "{}",
        k.dump()
    );
    imds.lock().unwrap().maintenance = json!({
        "EventID": "6F0A13A3-DC0D-4BBE-AB24-DF710A3917E6",
        "EventCreationTime": "9/15/2015 6:42:51 AM",
    });
    let d = k
        .decision("test.legacy-maintenance.drain", Duration::from_secs(10))
        .await;
    assert_eq!(d["decision"]["action"], "drain");
    let event_id = d["event_id"].as_str().unwrap().to_string();
    assert_eq!(
        event_id,
        "azure.maintenance_v1:6f0a13a3-dc0d-4bbe-ab24-df710a3917e6"
    );
    let id = d["decision_id"].as_str().unwrap().to_string();
    k.wait_line("the announce step", Duration::from_secs(5), |l| {
        l["decision_id"] == id.as_str() && l["step"] == "announce" && l["outcome"] == "ok"
    })
    .await;
    // Polled many times, decided once; InstanceInfo read once, and its name and domains are
    // on the event (from the persisted normalizer state).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let lines = k.json_lines();
    assert_eq!(
        lines
            .iter()
            .filter(|l| l["event_id"] == event_id.as_str())
            .count(),
        1
    );
    let m = k.metrics().await;
    assert_eq!(
        metric(
            &m,
            "keel_events_total{kind=\"maintenance\",source=\"azure.maintenance_v1\"}"
        ),
        Some(1.0),
        "{m}"
    );
    assert!(
        metric(
            &m,
            "keel_source_last_success_timestamp_seconds{source=\"azure.maintenance_v1\"}"
        )
        .is_some(),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "keel_source_errors_total{source=\"azure.maintenance_v1\"}"
        ),
        None,
        "{m}"
    );
    {
        let s = imds.lock().unwrap();
        assert_eq!(
            s.paths
                .iter()
                .filter(|p| *p == "/metadata/v1/InstanceInfo")
                .count(),
            1
        );
        assert!(
            s.paths
                .iter()
                .filter(|p| *p == "/metadata/v1/maintenance")
                .count()
                >= 5
        );
    }
    k.kill();
    let ev = event_json(&dir.path().join("state.db"), &event_id);
    assert_eq!(ev["resource"]["name"], "test-vm", "{ev}");
    assert_eq!(ev["resource"]["fault_domain"], 1, "{ev}");
    assert_eq!(ev["resource"]["update_domain"], 2, "{ev}");
    assert_eq!(
        ev["maintenance"]["not_before"], "2015-09-15T06:47:51Z",
        "{ev}"
    );
}

fn health_doc(vm: &str, state: &str, reason: &str, occured: &str) -> Value {
    json!({
        "id": format!("{}/providers/Microsoft.ResourceHealth/availabilityStatuses/current", vm_id(vm)),
        "name": "current",
        "type": "Microsoft.ResourceHealth/AvailabilityStatuses",
        "location": "eastus2",
        "properties": {
            "availabilityState": state, "title": state,
            "summary": "We're sorry, your virtual machine isn't available because we're applying a maintenance update to the host",
            "reasonType": reason, "context": "Platform Initiated", "category": reason,
            "occuredTime": occured, "reportedTime": occured,
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_health_is_polled_with_a_cached_managed_identity_token() {
    let (imds_url, imds) = imds_stub().await;
    let (arm_url, arm) = arm_stub().await;
    arm.lock().unwrap().health =
        health_doc("test-vm", "Unavailable", "Planned", "2026-11-23T10:00:00Z");
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &format!("azure_identity:\n  endpoint: {imds_url}\n  client_id: {CLIENT_ID}\n  timeout: 2s\n"),
        &format!("  azure_resource_health:\n    arm_endpoint: {arm_url}\n    subscription_id: {SUB}\n    resource_group: web\n    interval: 150ms\n    timeout: 2s\n    max_backoff: 300ms\n"),
        "",
    );
    let mut k = Keel::start(&cfg, &[], &[]);
    let d = k
        .decision("test.health.planned.expected", Duration::from_secs(10))
        .await;
    assert_eq!(d["decision"]["action"], "none");
    assert!(d["event_id"]
        .as_str()
        .unwrap()
        .starts_with("azure.resource_health:"));

    // Degraded hardware, unplanned: a new status, drained.
    arm.lock().unwrap().health =
        health_doc("test-vm", "Degraded", "Unplanned", "2026-11-23T11:00:00Z");
    let d = k
        .decision("test.health.degraded.drain", Duration::from_secs(10))
        .await;
    assert_eq!(d["decision"]["action"], "drain");

    // The token was asked for once (with the client id and the ARM resource) and reused.
    tokio::time::sleep(Duration::from_millis(400)).await;
    {
        let s = imds.lock().unwrap();
        assert_eq!(s.issued, 1, "{:?}", s.token_queries);
        let q = &s.token_queries[0];
        assert!(q.contains(&format!("client_id={CLIENT_ID}")), "{q}");
        assert!(
            q.contains("resource=https%3A%2F%2Fmanagement.azure.com%2F"),
            "{q}"
        );
        let a = arm.lock().unwrap();
        assert!(a.reqs.len() >= 4, "{}", a.reqs.len());
        let want = format!(
            "{}/providers/Microsoft.ResourceHealth/availabilityStatuses/current",
            vm_id("test-vm")
        );
        for r in &a.reqs {
            assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", want.as_str()));
            assert_eq!(r.query, "api-version=2025-04-01");
            assert_eq!(r.auth.as_deref(), Some("Bearer mi-token-1"));
        }
    }
    // ARM stops accepting the token: one 401, a fresh token, and no source error.
    arm.lock().unwrap().revoked.push("mi-token-1".into());
    let t0 = Instant::now();
    while imds.lock().unwrap().issued < 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "no token renewal\n{}",
            k.dump()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let m = k.metrics().await;
    assert_eq!(
        metric(
            &m,
            "keel_source_errors_total{source=\"azure.resource_health\"}"
        ),
        None,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "keel_events_total{kind=\"health\",source=\"azure.resource_health\"}"
        ),
        Some(2.0),
        "{m}"
    );
    let lines = k.json_lines();
    assert_eq!(
        lines.iter().filter(|l| l.get("decision").is_some()).count(),
        2
    );
    // No line of the log carries a token.
    assert!(!k.dump().contains("mi-token"), "{}", k.dump());
}

/// A Windows VM create body with the agent and an extension.
async fn post_ingest(k: &Keel, body: &Value) -> (u16, Value) {
    let r = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(format!("{}/ingest", k.base()))
        .bearer_auth(TOKEN)
        .json(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arm_step_resubmits_the_request_without_the_agent_once_honouring_retry_after() {
    let (imds_url, imds) = imds_stub().await;
    let (arm_url, arm) = arm_stub().await;
    arm.lock().unwrap().script.push_back((
        429,
        Some(1),
        json!({"error": {"code": "TooManyRequests", "message": "Throttled\u{1b}[31m"}}),
    ));
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &format!("azure_identity:\n  endpoint: {imds_url}\n{}", arm_scopes(&[&sub_scope()])),
        "  ingest:\n    token_env: KEEL_TEST_INGEST_TOKEN\n",
        &format!("  retry_without_agent:\n    - name: resubmit\n      arm:\n        endpoint: {arm_url}\n        poll_interval: 100ms\n        api_version: 2024-07-01\n      timeout: 10s\n      retries: 3\n      backoff: 100ms\n"),
    );
    let mut k = Keel::start(&cfg, &[], &[("KEEL_TEST_INGEST_TOKEN", TOKEN)]);
    k.wait_line("the listen line", Duration::from_secs(20), |l| {
        l.get("listen").is_some()
    })
    .await;

    let request = create_request();
    let (status, reply) = post_ingest(
        &k,
        &ingest_body(
            "deploy/web-win-1/create/1",
            "web-win-1",
            Some(request.clone()),
        ),
    )
    .await;
    assert_eq!(status, 202, "{reply}");
    assert_eq!(reply["action"], "retry_without_agent", "{reply}");
    let d = k
        .decision("test.vm-agent.retry-without-agent", Duration::from_secs(5))
        .await;
    let want = keel_engine::normalize::transform::retry_without_agent(&request).unwrap();
    assert_eq!(d["decision"]["retry"]["request"], want);
    let id = d["decision_id"].as_str().unwrap().to_string();
    k.wait_line("the resubmit step", Duration::from_secs(10), |l| {
        l["decision_id"] == id.as_str() && l["step"] == "resubmit"
    })
    .await;
    let step = k
        .json_lines()
        .into_iter()
        .find(|l| l["decision_id"] == id.as_str() && l["step"] == "resubmit")
        .unwrap();
    assert_eq!(step["outcome"], "ok", "{}", k.dump());
    assert_eq!(step["attempt"], 2, "{step}");

    // The step has returned, so every PUT it sent is recorded; it was the runbook's last.
    let puts: Vec<Req> = arm
        .lock()
        .unwrap()
        .reqs
        .iter()
        .filter(|r| r.method == "PUT")
        .cloned()
        .collect();
    assert_eq!(puts.len(), 2, "{puts:?}");
    for p in &puts {
        assert_eq!(p.path, vm_id("web-win-1"));
        assert_eq!(p.query, "api-version=2024-07-01");
        assert_eq!(p.auth.as_deref(), Some("Bearer mi-token-1"));
        assert_eq!(
            p.body, want,
            "the body is the request rewritten without the agent"
        );
        assert_eq!(p.client_request_id, puts[0].client_request_id);
        assert!(p.client_request_id.is_some());
    }
    assert_eq!(
        want["properties"]["osProfile"]["windowsConfiguration"]["provisionVMAgent"],
        false
    );
    assert_eq!(want["resources"], json!([]));
    let gap = puts[1].at - puts[0].at;
    assert!(
        gap >= Duration::from_millis(950),
        "Retry-After: 1 not honoured: {gap:?}"
    );
    assert_eq!(imds.lock().unwrap().issued, 1);

    // No request body in the decision: nothing to resubmit, so the step fails at once (no
    // retries) and the runbook escalates.
    let (status, reply) = post_ingest(
        &k,
        &ingest_body("deploy/web-win-2/create/1", "web-win-2", None),
    )
    .await;
    assert_eq!(status, 202, "{reply}");
    let event_id = reply["event_id"].as_str().unwrap().to_string();
    k.wait_line(
        "the failed runbook's escalation",
        Duration::from_secs(10),
        |l| l.get("escalation").is_some(),
    )
    .await;
    let lines = k.json_lines();
    let d2 = lines
        .iter()
        .find(|l| l["event_id"] == event_id.as_str() && l.get("decision").is_some())
        .unwrap();
    let id2 = d2["decision_id"].as_str().unwrap();
    let step = lines
        .iter()
        .find(|l| l["decision_id"] == id2 && l["step"] == "resubmit")
        .unwrap();
    assert_eq!(step["attempt"], 1, "{step}");
    assert!(
        step["outcome"]
            .as_str()
            .unwrap()
            .contains("no request body"),
        "{step}"
    );
    assert_eq!(
        arm.lock()
            .unwrap()
            .reqs
            .iter()
            .filter(|r| r.method == "PUT")
            .count(),
        2
    );
    let m = k.metrics().await;
    assert_eq!(
        metric(
            &m,
            "keel_step_attempts_total{executor=\"arm\",outcome=\"ok\"}"
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "keel_step_attempts_total{executor=\"arm\",outcome=\"failed\"}"
        ),
        Some(2.0),
        "{m}"
    );
    assert!(!k.dump().contains("mi-token"), "{}", k.dump());
    assert!(!k.dump().contains('\u{1b}'), "{}", k.dump());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_replayed_and_a_garbage_line_is_reported_without_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let lines = dir.path().join("capture.jsonl");
    std::fs::write(
        &lines,
        "{\"ID\":\"_test-vm\",\"UD\":\"0\",\"FD\":\"3\"}\n{}\nthis is not JSON\n\n{\"EventID\":\"0C3C3B6E-7E6B-4C0B-9D7E-5E7C7E8A9B01\",\"EventCreationTime\":\"11/23/2026 6:42:51 AM\"}\n",
    )
    .unwrap();
    let doc = root().join("policies/fixtures/azure-resource-health-degraded-hardware.json");
    let cfg = write_config(
        dir.path(),
        "",
        &format!(
            "  files:\n    - path: capture.jsonl\n      normalizer: azure.maintenance_v1\n    - path: {}\n      normalizer: azure.resource_health\n      format: document\n",
            doc.display()
        ),
        "",
    );
    let mut k = Keel::start(&cfg, &[], &[]);
    // Files are the only source: the host stops by itself once they are replayed.
    let status = k.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "{status}\n{}", k.dump());
    let out = k.json_lines();
    let bad: Vec<&Value> = out
        .iter()
        .filter(|l| l["source"] == "files" && l.get("error").is_some())
        .collect();
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert_eq!(bad[0]["at"], format!("{}:3", lines.display()), "{}", bad[0]);
    assert!(
        bad[0]["error"].as_str().unwrap().contains("JSON"),
        "{}",
        bad[0]
    );
    // The line after the garbage was read and decided.
    let d = out
        .iter()
        .find(|l| l["decision"]["policy"] == "test.legacy-maintenance.drain")
        .unwrap_or_else(|| panic!("{}", k.dump()));
    assert_eq!(
        d["event_id"],
        "azure.maintenance_v1:0c3c3b6e-7e6b-4c0b-9d7e-5e7c7e8a9b01"
    );
    assert!(out
        .iter()
        .any(|l| l["decision"]["policy"] == "test.health.degraded.drain"));
    let summary = out
        .iter()
        .find(|l| l["source"] == "files" && l["path"] == lines.display().to_string())
        .unwrap();
    assert_eq!(
        (summary["payloads"].as_u64(), summary["errors"].as_u64()),
        (Some(3), Some(1))
    );
    let ev = event_json(
        &dir.path().join("state.db"),
        "azure.maintenance_v1:0c3c3b6e-7e6b-4c0b-9d7e-5e7c7e8a9b01",
    );
    assert_eq!(ev["resource"]["fault_domain"], 3, "{ev}");
}

#[test]
fn azure_configuration_is_validated_with_positions() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "azure_identity:\n  client_idd: x\n",
        "  azure_resource_health:\n    subscription_id: not a guid\n    interval: 0s\n  files:\n    - path: missing.jsonl\n      normalizer: azure.maintenance_v2\n  azure_maintenance_v1:\n    url: ftp://x\n",
        "  retry_without_agent:\n    - arm: {endpont: x, api_version: latest}\n",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(3), "{err}");
    for want in [
        "keel.yaml:7:3: error: unknown key `client_idd` (did you mean `client_id`?)",
        "error: Resource Health needs the whole VM",
        "keel.yaml:10:22: error: expected a subscription id",
        "keel.yaml:11:15: error: must be longer than zero",
        "keel.yaml:13:13: error: `",
        "keel.yaml:14:19: error: unknown normalizer `azure.maintenance_v2` (did you mean `azure.maintenance_v1`?)",
        "keel.yaml:16:10: error: expected an http:// or https:// URL",
        "keel.yaml:22:13: error: unknown key `endpont` (did you mean `endpoint`?)",
        "keel.yaml:22:38: error: expected an api-version such as 2025-04-01",
    ] {
        assert!(err.contains(want), "{want}\n{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_flag_reads_standard_input_in_dry_run() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "", "  files: []\n", "");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_keel"))
        .args([
            "run",
            "--dry-run",
            "--replay",
            "-",
            "--normalizer",
            "azure.maintenance_v1",
            "--config",
        ])
        .arg(&cfg)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(b"{}\n{\"EventID\": 1\n{\"EventID\":\"7A1B\",\"EventCreationTime\":\"11/23/2026 6:42:51 AM\"}\n")
        .await
        .unwrap();
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("keel run --replay - did not stop at the end of its input")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let d = lines
        .iter()
        .find(|l| l["decision"]["policy"] == "test.legacy-maintenance.drain")
        .unwrap_or_else(|| panic!("{stdout}"));
    assert_eq!(d["mode"], "dry_run");
    assert_eq!(d["event_id"], "azure.maintenance_v1:7a1b");
    assert!(lines
        .iter()
        .any(|l| l["decision_id"] == d["decision_id"] && l["outcome"] == "planned"));
    let bad: Vec<&Value> = lines.iter().filter(|l| l["at"] == "-:2").collect();
    assert_eq!(bad.len(), 1, "{stdout}");
    // A normalizer that does not exist is a usage error.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
        .args([
            "run",
            "--replay",
            "-",
            "--normalizer",
            "azure.maintenanse_v1",
            "--config",
        ])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown normalizer"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arm_step_is_only_planned_in_dry_run() {
    let (imds_url, imds) = imds_stub().await;
    let (arm_url, arm) = arm_stub().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &format!("azure_identity:\n  endpoint: {imds_url}\n{}", arm_scopes(&[&sub_scope()])),
        "  ingest:\n    token_env: KEEL_TEST_INGEST_TOKEN\n",
        &format!("  retry_without_agent:\n    - name: resubmit\n      arm: {{ endpoint: \"{arm_url}\" }}\n"),
    );
    let mut k = Keel::start(&cfg, &["--dry-run"], &[("KEEL_TEST_INGEST_TOKEN", TOKEN)]);
    k.wait_line("the listen line", Duration::from_secs(20), |l| {
        l.get("listen").is_some()
    })
    .await;
    let body = ingest_body(
        "deploy/web-win-3/create/1",
        "web-win-3",
        Some(create_request()),
    );
    let (status, reply) = post_ingest(&k, &body).await;
    assert_eq!(status, 202, "{reply}");
    k.wait_line("the planned step", Duration::from_secs(5), |l| {
        l["step"] == "resubmit" && l["outcome"] == "planned"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(arm.lock().unwrap().reqs.is_empty());
    assert_eq!(imds.lock().unwrap().issued, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_health_reads_this_vm_from_instance_metadata_when_none_is_configured() {
    let (imds_url, imds) = imds_stub().await;
    let (arm_url, arm) = arm_stub().await;
    arm.lock().unwrap().health =
        health_doc("found-vm", "Degraded", "Unplanned", "2026-11-23T12:00:00Z");
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &format!("azure_identity:\n  endpoint: {imds_url}\n"),
        &format!("  azure_resource_health:\n    arm_endpoint: {arm_url}\n    interval: 200ms\n"),
        "",
    );
    let mut k = Keel::start(&cfg, &[], &[]);
    k.decision("test.health.degraded.drain", Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let want = format!(
        "{}/providers/Microsoft.ResourceHealth/availabilityStatuses/current",
        vm_id("found-vm")
    );
    let a = arm.lock().unwrap();
    assert!(a.reqs.len() >= 2);
    assert!(a.reqs.iter().all(|r| r.path == want), "{:?}", a.reqs);
    let s = imds.lock().unwrap();
    assert_eq!(
        s.paths
            .iter()
            .filter(|p| *p == "/metadata/instance/compute")
            .count(),
        1,
        "the instance metadata is read once"
    );
}

/// Without `self`, the Scheduled Events source reads this VM's name from instance metadata
/// before its first read: Scheduled Events go to every VM of an availability set or scale-set
/// placement group, and a neighbour's event must not drain this VM (the standard policies
/// take an event whose `is_self` is unknown as this VM's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_events_learn_this_vm_from_instance_metadata_when_none_is_configured() {
    let (imds_url, imds) = imds_stub().await;
    let nb = (chrono::Utc::now() + chrono::Duration::minutes(10))
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    let ev = |id: &str, vm: &str| {
        json!({"EventId": id, "EventType": "Reboot", "ResourceType": "VirtualMachine",
               "Resources": [vm], "EventStatus": "Scheduled", "NotBefore": nb,
               "Description": "", "EventSource": "Platform", "DurationInSeconds": -1})
    };
    imds.lock().unwrap().scheduled = json!({"DocumentIncarnation": 1,
        "Events": [ev("E-OTHER", "other-vm"), ev("E-MINE", "found-vm")]});
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("keel.yaml");
    std::fs::write(
        &cfg,
        format!(
            "policies: {}\nstate: {}\nlisten: 127.0.0.1:0\nsources:\n  azure_scheduled_events:\n    url: {imds_url}/metadata/scheduledevents?api-version=2020-07-01\n    interval: 200ms\n    timeout: 2s\n    first_timeout: 2s\nrunbooks:\n  drain:\n    - name: announce\n      log: {{}}\n",
            root().join("policies/standard").display(),
            dir.path().join("state.db").display(),
        ),
    )
    .unwrap();
    let mut k = Keel::start(&cfg, &[], &[]);
    let mine = k
        .wait_line("this VM's event decided", Duration::from_secs(10), |l| {
            l["event_id"] == "azure.scheduled_events:e-mine/found-vm"
        })
        .await;
    assert_eq!(mine["decision"]["action"], "drain", "{mine}");
    let other = k
        .wait_line(
            "the neighbour's event decided",
            Duration::from_secs(10),
            |l| l["event_id"] == "azure.scheduled_events:e-other/other-vm",
        )
        .await;
    assert_eq!(other["decision"]["action"], "none", "{other}");
    let state = dir.path().join("state.db");
    assert_eq!(
        event_json(&state, "azure.scheduled_events:e-other/other-vm")["resource"]["is_self"],
        false
    );
    assert_eq!(
        event_json(&state, "azure.scheduled_events:e-mine/found-vm")["resource"]["is_self"],
        true
    );
    let s = imds.lock().unwrap();
    let compute = s
        .paths
        .iter()
        .position(|p| p == "/metadata/instance/compute");
    let first_read = s
        .paths
        .iter()
        .position(|p| p == "/metadata/scheduledevents");
    assert!(compute.is_some() && compute < first_read, "{:?}", s.paths);
}

/// Runs the `arm` step for one reported failure against an ARM stub prepared by `setup`;
/// the step's log line and the stub.
async fn arm_run(setup: impl FnOnce(&mut common::azure::Arm)) -> (Value, common::azure::ArmState) {
    let (imds_url, _imds) = imds_stub().await;
    let (arm_url, arm) = arm_stub().await;
    setup(&mut arm.lock().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &format!("azure_identity:\n  endpoint: {imds_url}\n{}", arm_scopes(&[&sub_scope()])),
        "  ingest:\n    token_env: KEEL_TEST_INGEST_TOKEN\n",
        &format!("  retry_without_agent:\n    - name: resubmit\n      arm:\n        endpoint: {arm_url}\n        poll_interval: 100ms\n      timeout: 20s\n      retries: 0\n"),
    );
    let mut k = Keel::start(&cfg, &[], &[("KEEL_TEST_INGEST_TOKEN", TOKEN)]);
    k.wait_line("the listen line", Duration::from_secs(20), |l| {
        l.get("listen").is_some()
    })
    .await;
    let (status, reply) = post_ingest(
        &k,
        &ingest_body(
            "deploy/web-win-1/create/1",
            "web-win-1",
            Some(create_request()),
        ),
    )
    .await;
    assert_eq!(status, 202, "{reply}");
    k.wait_line("the resubmit step", Duration::from_secs(30), |l| {
        l["step"] == "resubmit"
    })
    .await;
    let step = k
        .json_lines()
        .into_iter()
        .find(|l| l["step"] == "resubmit")
        .unwrap();
    (step, arm)
}

fn operation_polls(arm: &common::azure::ArmState) -> Vec<Req> {
    arm.lock()
        .unwrap()
        .reqs
        .iter()
        .filter(|r| r.method == "GET" && r.path == common::azure::OPERATION_PATH)
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arm_step_follows_the_async_operation_until_it_succeeds() {
    let (step, arm) = arm_run(|a| {
        a.async_operation = Some(format!(
            "{}?api-version=2024-07-01",
            common::azure::OPERATION_PATH
        ));
        a.operations = [
            json!({"status": "InProgress"}),
            json!({"status": "InProgress"}),
            json!({"status": "Succeeded"}),
        ]
        .into();
    })
    .await;
    assert_eq!(step["outcome"], "ok", "{step}");
    let polls = operation_polls(&arm);
    assert_eq!(polls.len(), 3, "{polls:?}");
    assert!(polls
        .iter()
        .all(|p| p.auth.as_deref() == Some("Bearer mi-token-1")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arm_step_fails_and_escalates_when_the_operation_fails() {
    let (step, arm) = arm_run(|a| {
        a.async_operation = Some(common::azure::OPERATION_PATH.to_string());
        a.operations = [
            json!({"status": "InProgress"}),
            json!({"status": "Failed", "error": {"code": "OSProvisioningTimedOut",
                   "message": "OS Provisioning for VM 'web-win-1' did not finish\u{1b}[31m"}}),
        ]
        .into();
    })
    .await;
    let outcome = step["outcome"].as_str().unwrap();
    assert!(
        outcome.starts_with("failed: the ARM operation failed: OSProvisioningTimedOut"),
        "{outcome}"
    );
    assert!(!outcome.contains('\u{1b}'), "escaped: {outcome}");
    assert_eq!(operation_polls(&arm).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arm_step_never_sends_its_token_to_an_operation_url_on_another_host() {
    let (step, arm) = arm_run(|a| {
        a.async_operation = Some("http://127.0.0.1:9/steal?api-version=1".into());
    })
    .await;
    let outcome = step["outcome"].as_str().unwrap();
    assert!(outcome.contains("refusing to send a token"), "{outcome}");
    assert_eq!(
        arm.lock()
            .unwrap()
            .reqs
            .iter()
            .filter(|r| r.method == "PUT")
            .count(),
        1
    );
}

// ------------------------------------------------------------------------------------------
// What an `arm` step may write: VMs inside `arm.scopes` whose request names them; no redirect
// followed; no token in clear.

/// A refused `arm` step: its log line, every log line, the stubs and the escalations.
struct Refused {
    step: Value,
    lines: Vec<Value>,
    arm: common::azure::ArmState,
    imds: common::azure::ImdsState,
    /// The outbox entries (escalations) of the decision, from the state database.
    outbox: usize,
    dump: String,
}

/// Posts one ingest `body` to a host whose `retry` and `retry_without_agent` runbooks are one
/// `arm` step (with retries, to show that a refusal is not retried), with
/// `arm.scopes` = `scopes`, against an ARM stub prepared by `setup`; waits for the failed
/// runbook's escalation, then stops the host and collects everything.
async fn arm_refused(
    scopes: &[&str],
    body: &Value,
    want_action: &str,
    setup: impl FnOnce(&mut common::azure::Arm),
) -> Refused {
    let (imds_url, imds) = imds_stub().await;
    let (arm_url, arm) = arm_stub().await;
    setup(&mut arm.lock().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let step = format!("    - name: resubmit\n      arm:\n        endpoint: {arm_url}\n        poll_interval: 100ms\n      timeout: 10s\n      retries: 2\n      backoff: 100ms\n");
    let cfg = write_config(
        dir.path(),
        &format!(
            "azure_identity:\n  endpoint: {imds_url}\n{}",
            arm_scopes(scopes)
        ),
        "  ingest:\n    token_env: KEEL_TEST_INGEST_TOKEN\n",
        &format!("  retry:\n{step}  retry_without_agent:\n{step}"),
    );
    let mut k = Keel::start(&cfg, &[], &[("KEEL_TEST_INGEST_TOKEN", TOKEN)]);
    k.wait_listen(Duration::from_secs(20)).await;
    let (status, reply) = post_ingest(&k, body).await;
    assert_eq!(status, 202, "{reply}\n{}", k.dump());
    assert_eq!(reply["action"], want_action, "{reply}");
    let event_id = reply["event_id"].as_str().unwrap().to_string();
    let d = k
        .wait_line("the decision", Duration::from_secs(10), |l| {
            l["event_id"] == event_id.as_str() && l.get("decision").is_some()
        })
        .await;
    let id = d["decision_id"].as_str().unwrap().to_string();
    k.wait_line(
        "the failed runbook's escalation",
        Duration::from_secs(20),
        |l| l["decision_id"] == id.as_str() && l.get("escalation").is_some(),
    )
    .await;
    // The runbook is over; stop the host so that nothing can be sent or escalated after the
    // counts below.
    k.kill();
    let lines = k.json_lines();
    let steps: Vec<&Value> = lines
        .iter()
        .filter(|l| l["decision_id"] == id.as_str() && l["step"] == "resubmit")
        .collect();
    assert_eq!(steps.len(), 1, "{}", k.dump());
    let c = rusqlite::Connection::open(dir.path().join("state.db")).unwrap();
    let outbox: i64 = c
        .query_row(
            "SELECT count(*) FROM outbox WHERE decision_id = ?1",
            [&id],
            |r| r.get(0),
        )
        .unwrap();
    let escalations = lines
        .iter()
        .filter(|l| l["decision_id"] == id.as_str() && l.get("escalation").is_some())
        .count();
    assert_eq!(escalations, 1, "{}", k.dump());
    Refused {
        step: steps[0].clone(),
        dump: k.dump(),
        lines,
        arm,
        imds,
        outbox: usize::try_from(outbox).unwrap(),
    }
}

impl Refused {
    /// Asserts that the step failed at once with `why` (escaped), sent nothing to ARM, and
    /// escalated exactly once.
    fn assert_refused(&self, why: &str) {
        let outcome = self.step["outcome"].as_str().unwrap();
        assert!(
            outcome.starts_with("failed: ") && outcome.contains(why),
            "{why}: {outcome}"
        );
        assert_eq!(
            self.step["attempt"], 1,
            "a refusal is not retried: {}",
            self.step
        );
        assert!(!outcome.contains('\u{1b}'), "escaped: {outcome}");
        let reqs = self.arm.lock().unwrap().reqs.clone();
        assert!(reqs.is_empty(), "nothing reaches ARM: {reqs:?}");
        assert_eq!(
            self.imds.lock().unwrap().issued,
            0,
            "no token is even fetched"
        );
        assert_eq!(
            self.outbox, 1,
            "one escalation in the outbox\n{}",
            self.dump
        );
        assert!(!self.lines.is_empty());
    }
}

/// The body of the issue: an ingest client names a role assignment at subscription scope
/// and a request that grants a role, with a transient error the standard library retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arm_step_never_writes_a_role_assignment_from_an_ingest_body() {
    let guid = "0b1e6c2a-3f8d-4c1e-9a7b-2d5e8f1a3c4b";
    let body = json!({
        "idempotency_key": "attacker/1",
        "resource": {"id": format!("/subscriptions/s1/providers/Microsoft.Authorization/roleAssignments/{guid}")},
        "operation": "create",
        "request": {"properties": {
            "roleDefinitionId": "/subscriptions/s1/providers/Microsoft.Authorization/roleDefinitions/8e3af657-a8ff-443c-a75c-2fe8c4bcb635",
            "principalId": "99999999-9999-9999-9999-999999999999",
        }},
        "error": {"error": {"code": "InternalServerError", "message": "An internal error occurred.\u{1b}[31m"}},
    });
    // Even with the subscription itself in scope: only VMs are written.
    let r = arm_refused(&["/subscriptions/s1", &sub_scope()], &body, "retry", |_| {}).await;
    r.assert_refused("writes only virtual machines");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arm_step_never_writes_a_vm_outside_the_scopes() {
    let body = ingest_body(
        "deploy/web-win-1/create/1",
        "web-win-1",
        Some(create_request()),
    );
    // The VM is in resource group `web`; only `db` and another subscription are in scope.
    let r = arm_refused(
        &[
            &format!("/subscriptions/{SUB}/resourceGroups/db"),
            "/subscriptions/11111111-1111-1111-1111-111111111111",
        ],
        &body,
        "retry_without_agent",
        |_| {},
    )
    .await;
    r.assert_refused("outside every scope");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arm_step_never_writes_a_request_that_names_another_resource() {
    // The id names web-win-1, in scope (the resource group, in another case); the body, in
    // ARM-template form, another VM.
    let mut request = create_request();
    request["type"] = json!("Microsoft.Compute/virtualMachines");
    request["name"] = json!("db-1\u{1b}[31m");
    request["apiVersion"] = json!("2024-07-01");
    let body = ingest_body("deploy/web-win-1/create/1", "web-win-1", Some(request));
    let r = arm_refused(
        &[&format!("/subscriptions/{SUB}/resourcegroups/WEB")],
        &body,
        "retry_without_agent",
        |_| {},
    )
    .await;
    r.assert_refused("the request's `name` is db-1");
    // And a request whose type is not a VM's (a transient error: the request is retried as
    // it is).
    let mut request = create_request();
    request["type"] = json!("Microsoft.Authorization/roleAssignments");
    let mut body = ingest_body("deploy/web-win-1/create/2", "web-win-1", Some(request));
    body["error"] =
        json!({"error": {"code": "InternalServerError", "message": "An internal error occurred."}});
    let r = arm_refused(&[&sub_scope()], &body, "retry", |_| {}).await;
    r.assert_refused("the request's `type` is Microsoft.Authorization/roleAssignments");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arm_step_follows_no_redirect() {
    let body = ingest_body(
        "deploy/web-win-1/create/1",
        "web-win-1",
        Some(create_request()),
    );
    // A 302 to another VM on the same host, which a GET would find Succeeded.
    let r = arm_refused(&[&sub_scope()], &body, "retry_without_agent", |a| {
        a.redirect = Some(format!("{}?api-version=2024-07-01", vm_id("elsewhere")));
    })
    .await;
    let outcome = r.step["outcome"].as_str().unwrap();
    assert!(
        outcome.starts_with("failed: ARM answered HTTP 302 Found (a redirect to "),
        "{outcome}"
    );
    assert_eq!(
        r.step["attempt"], 1,
        "a redirect is not retried: {}",
        r.step
    );
    let reqs = r.arm.lock().unwrap().reqs.clone();
    // Nothing follows the redirect: neither a GET (as some clients turn a redirected PUT
    // into) nor the PUT again with the token (as reqwest's default policy does).
    let sent: Vec<(&str, &str)> = reqs
        .iter()
        .map(|q| (q.method.as_str(), q.path.as_str()))
        .collect();
    assert_eq!(sent, [("PUT", vm_id("web-win-1").as_str())], "{reqs:?}");
    assert_eq!(r.outbox, 1, "{}", r.dump);
}

#[test]
fn arm_configuration_needs_scopes_and_refuses_tokens_in_clear() {
    let dir = tempfile::tempdir().unwrap();
    let run = |cfg: &Path| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(["run", "--config"])
            .arg(cfg)
            .env("KEEL_TEST_INGEST_TOKEN", TOKEN)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(3), "{err}");
        err
    };
    // No `arm.scopes`: every `arm` step is an error at its position; tokens in clear are
    // refused at theirs (IMDS's own address is allowed for the identity).
    let cfg = write_config(
        dir.path(),
        "azure_identity:\n  endpoint: http://10.1.2.3\n",
        "  azure_resource_health:\n    arm_endpoint: http://management.azure.com\n    resource_id: /subscriptions/s/resourceGroups/r/providers/Microsoft.Compute/virtualMachines/v\n",
        "  retry:\n    - arm: {endpoint: \"http://arm.example\"}\n  retry_without_agent:\n    - name: resubmit\n      arm:\n        endpoint: http://127.0.0.1:9\n",
    );
    let err = run(&cfg);
    for want in [
        "keel.yaml:7:13: error: a token would travel in clear to http://10.1.2.3: use https:// (plain http:// only on a loopback address: 127.0.0.0/8, ::1, localhost, or IMDS's 169.254.169.254)",
        "keel.yaml:10:19: error: a token would travel in clear to http://management.azure.com",
        "keel.yaml:17:7: error: an `arm` step needs `arm.scopes`",
        "keel.yaml:17:23: error: a token would travel in clear to http://arm.example: use https://",
        "keel.yaml:20:7: error: an `arm` step needs `arm.scopes`",
    ] {
        assert!(err.contains(want), "{want}\n{err}");
    }
    assert_eq!(err.matches(": error: ").count(), 5, "{err}");
    // Scopes that are not scopes, and an empty list.
    let cfg = write_config(
        dir.path(),
        "azure_identity:\n  endpoint: http://169.254.169.254\narm:\n  scopes: [\"/subscriptions/s1/\", \"*\", \"/subscriptions/s1/resourceGroups/web/providers/Microsoft.Compute\"]\n",
        "  files: []\n",
        "  retry:\n    - arm: {endpoint: \"https://management.azure.com\"}\n",
    );
    let err = run(&cfg);
    for col in [12, 34, 39] {
        let want = format!("keel.yaml:9:{col}: error: expected a scope: /subscriptions/<id> or /subscriptions/<id>/resourceGroups/<name>");
        assert!(err.contains(&want), "{want}\n{err}");
    }
    assert_eq!(err.matches(": error: ").count(), 3, "{err}");
    let cfg = write_config(
        dir.path(),
        "arm:\n  scopes: []\n",
        "  files: []\n",
        "  retry:\n    - arm: {}\n",
    );
    let err = run(&cfg);
    assert!(
        err.contains("keel.yaml:7:11: error: no scope given"),
        "{err}"
    );
}
