//! The agent against a loopback IMDS and wireserver stub, deciding with the standard policy
//! library: transient failures retried then ready, a restarted agent that keeps counting its
//! retries (its saved History) and escalates, a malformed instance document that does not
//! crash it, an unreachable IMDS escalated as a network problem.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

/// An instance document as IMDS serves it (`/metadata/instance?api-version=2021-02-01`,
/// trimmed to `compute`).
const INSTANCE: &str = r#"{
  "compute": {
    "azEnvironment": "AzurePublicCloud",
    "location": "eastus2",
    "name": "web-1",
    "osType": "Linux",
    "osProfile": {
      "adminUsername": "azureuser",
      "computerName": "web-1",
      "disablePasswordAuthentication": "true"
    },
    "publicKeys": [
      { "keyData": "ssh-rsa AAAAB3NzaC1yc2E...", "path": "/home/azureuser/.ssh/authorized_keys" }
    ],
    "vmId": "02aab8a4-74ef-476e-8182-f6d2ba4166a6"
  }
}"#;

/// A wireserver goal state (`/machine/?comp=goalstate`, x-ms-version 2012-11-30).
const GOALSTATE: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<GoalState xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:noNamespaceSchemaLocation="goalstate10.xsd">
  <Version>2012-11-30</Version>
  <Incarnation>1</Incarnation>
  <Machine>
    <ExpectedState>Started</ExpectedState>
  </Machine>
  <Container>
    <ContainerId>8a1a6f2c-8b1e-4a3c-9d5e-0f6b2c7d8e9f</ContainerId>
    <RoleInstanceList>
      <RoleInstance>
        <InstanceId>896f4f5a-1c2b-4d3e-8f70-a1b2c3d4e5f6._web-1</InstanceId>
        <State>Started</State>
      </RoleInstance>
    </RoleInstanceList>
  </Container>
</GoalState>"#;

#[derive(Default)]
struct Stub {
    instance: String,
    /// Statuses of the health reports, in order; 200 once they run out.
    health: Vec<u16>,
    reports: Vec<String>,
    requests: Vec<String>,
}

fn serve(stub: Arc<Mutex<Stub>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let stub = stub.clone();
            std::thread::spawn(move || handle(conn, &stub));
        }
    });
    format!("http://{addr}")
}

fn handle(conn: TcpStream, stub: &Mutex<Stub>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).unwrap();
        if h.trim().is_empty() {
            break;
        }
        headers.push(h.trim().to_ascii_lowercase());
    }
    let len = headers
        .iter()
        .find_map(|h| h.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).unwrap();
    let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut s = stub.lock().unwrap();
    s.requests.push(format!(
        "{} {target}",
        line.split_whitespace().next().unwrap_or("")
    ));
    let (status, reply) = if target.starts_with("/metadata/instance") {
        if headers.iter().any(|h| h == "metadata: true") {
            (200, s.instance.clone())
        } else {
            (400, "Required metadata header not specified".to_string())
        }
    } else if target == "/machine/?comp=goalstate" {
        (200, GOALSTATE.to_string())
    } else if target == "/machine/?comp=health" {
        s.reports.push(String::from_utf8_lossy(&body).into_owned());
        let status = if s.health.is_empty() {
            200
        } else {
            s.health.remove(0)
        };
        (status, String::new())
    } else {
        (404, String::new())
    };
    let mut conn = conn;
    let _ = write!(
        conn,
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
        reply.len()
    );
}

fn agent(base: &str, state: &Path, extra: &[&str]) -> Output {
    let policies = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../policies/standard");
    Command::new(env!("CARGO_BIN_EXE_azure-init-agent"))
        .args(["--imds", base, "--wireserver", base, "--policies", policies])
        .arg("--state")
        .arg(state)
        .args(["--max-delay-s", "0"])
        .args(extra)
        .output()
        .unwrap()
}

fn lines(o: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn show(o: &Output) -> String {
    format!(
        "{:?}\n{}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn stub(health: Vec<u16>) -> (Arc<Mutex<Stub>>, String) {
    let s = Arc::new(Mutex::new(Stub {
        instance: INSTANCE.into(),
        health,
        ..Stub::default()
    }));
    let base = serve(s.clone());
    (s, base)
}

#[test]
fn transient_failures_are_retried_then_the_vm_reports_ready() {
    let (s, base) = stub(vec![503, 503]);
    let dir = tempfile::tempdir().unwrap();
    let out = agent(&base, &dir.path().join("history.json"), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let l = lines(&out);
    let decisions: Vec<&serde_json::Value> =
        l.iter().filter(|v| v.get("decision").is_some()).collect();
    assert_eq!(decisions.len(), 2, "{}", show(&out));
    for d in &decisions {
        assert_eq!(d["step"], "health");
        assert_eq!(d["decision"]["action"], "retry", "{d}");
        assert_eq!(d["decision"]["policy"], "azure.failure.transient.retry");
    }
    assert_eq!(
        l[0]["username"], "azureuser",
        "libazureinit read the document"
    );
    assert_eq!(l[0]["ssh_keys"], 1);
    let ready = l.last().unwrap();
    assert_eq!(ready["ready"], "web-1");
    assert_eq!(
        ready["instance"],
        "896f4f5a-1c2b-4d3e-8f70-a1b2c3d4e5f6._web-1"
    );
    let s = s.lock().unwrap();
    assert_eq!(s.reports.len(), 3);
    let report = s.reports.last().unwrap();
    assert!(report.contains("<State>Ready</State>"), "{report}");
    assert!(
        report.contains("<GoalStateIncarnation>1</GoalStateIncarnation>"),
        "{report}"
    );
    assert!(
        report.contains("<ContainerId>8a1a6f2c-8b1e-4a3c-9d5e-0f6b2c7d8e9f</ContainerId>"),
        "{report}"
    );
}

#[test]
fn a_restarted_agent_keeps_counting_its_retries_and_escalates() {
    let (_s, base) = stub(vec![503; 100]);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("history.json");
    // One attempt per run, as systemd restarting a crashed agent would: three retries...
    for run in 1..=3 {
        let out = agent(&base, &state, &["--once"]);
        assert_eq!(out.status.code(), Some(1), "run {run}: {}", show(&out));
        let d = lines(&out).pop().unwrap();
        assert_eq!(d["decision"]["action"], "retry", "run {run}: {d}");
    }
    // ...then the retry budget the history carried is spent: escalate.
    let out = agent(&base, &state, &["--once"]);
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    let d = lines(&out).pop().unwrap();
    assert_eq!(d["decision"]["action"], "none", "{d}");
    assert_eq!(
        d["decision"]["escalations"][0]["policy"], "azure.failure.retries-exhausted.escalate",
        "{d}"
    );
    // Without the saved history the same failure would look like a first one.
    std::fs::remove_file(&state).unwrap();
    let out = agent(&base, &state, &["--once"]);
    assert_eq!(lines(&out).pop().unwrap()["decision"]["action"], "retry");
}

#[test]
fn a_malformed_instance_document_is_decided_not_a_crash() {
    let (s, base) = stub(vec![]);
    s.lock().unwrap().instance = r#"{"compute": {"osProfile": {"adminUsername": 7}}}"#.into();
    let dir = tempfile::tempdir().unwrap();
    let out = agent(&base, &dir.path().join("h.json"), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{}", show(&out));
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let d = lines(&out).pop().unwrap();
    assert_eq!(d["step"], "imds");
    assert!(
        d["error"].as_str().unwrap().contains("adminUsername"),
        "{d}"
    );
    assert_eq!(d["decision"]["action"], "none", "{d}");
    assert_eq!(s.lock().unwrap().reports.len(), 0, "never reported ready");
}

#[test]
fn an_unreachable_imds_is_a_network_problem_to_escalate() {
    // A port nothing listens on: what a firewall or forced tunnelling looks like.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let dir = tempfile::tempdir().unwrap();
    let out = agent(&closed, &dir.path().join("h.json"), &[]);
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    let d = lines(&out).pop().unwrap();
    assert_eq!(
        d["decision"]["escalations"][0]["policy"], "azure.provisioning.network-blocked.escalate",
        "{d}"
    );
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("h.json")).unwrap()).unwrap();
    assert_eq!(saved["format"], "keel.history/1");
}
