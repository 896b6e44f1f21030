//! Issue 15, `keel history`: past decisions and their steps, read from the state while or
//! after `keel run` ran, filtered by time, event and action, as a table or JSON lines.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Scenario, EVENT_ID};
use serde_json::Value;

/// `keel history --config <config> <args>`: (exit code, stdout, stderr).
fn history(config: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .arg("history")
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json_lines(s: &str) -> Vec<Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn history_shows_the_drain_and_its_steps_and_filters_by_time_event_and_action() {
    let sc = Scenario::new(true, &common::not_before_in_15_minutes()).await;
    let mut k = sc.keel(&[], &[]);
    assert_eq!(
        sc.wait_runbook_finished(&mut k, Duration::from_secs(60))
            .await,
        "done"
    );
    // While keel run runs on the database.
    let (code, out, err) = history(&sc.config, &["--json"]);
    assert_eq!(code, 0, "{err}");
    let past = json_lines(&out);
    let drain = past
        .iter()
        .find(|d| d["action"] == "drain")
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        drain["event_id"]
            .as_str()
            .unwrap()
            .contains(&EVENT_ID.to_lowercase()),
        "{drain}"
    );
    assert_eq!(drain["runbook"], "done");
    assert_eq!(drain["mode"], "live");
    assert!(
        drain["policy"].as_str().unwrap().starts_with("azure."),
        "{drain}"
    );
    let steps: Vec<&str> = drain["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(steps, common::STEPS);
    assert!(drain["steps"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["outcome"] == "ok" && s["attempts"] == 1));
    // Oldest first.
    let times: Vec<&str> = past.iter().map(|d| d["time"].as_str().unwrap()).collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted);
    // The rest on a database that no longer changes (the host goes on deciding the event's
    // next states).
    k.kill();
    let (_, out, _) = history(&sc.config, &["--json"]);
    let past = json_lines(&out);

    // Filters.
    let (_, out, _) = history(&sc.config, &["--json", "--action", "drain"]);
    assert_eq!(json_lines(&out).len(), 1, "{out}");
    let (_, out, _) = history(&sc.config, &["--json", "--action", "retry"]);
    assert!(json_lines(&out).is_empty(), "{out}");
    // Any part of the id, whatever its case.
    let (_, out, _) = history(&sc.config, &["--json", "--event", &EVENT_ID[..8]]);
    assert!(!json_lines(&out).is_empty(), "{out}");
    let (_, out, _) = history(&sc.config, &["--json", "--event", "no-such%_"]);
    assert!(
        json_lines(&out).is_empty(),
        "`%` and `_` are literal: {out}"
    );
    let (_, out, _) = history(
        &sc.config,
        &[
            "--json",
            "--since",
            "2000-01-01T00:00:00Z",
            "--until",
            "2000-01-02T00:00:00Z",
        ],
    );
    assert!(json_lines(&out).is_empty(), "{out}");
    let (_, out, _) = history(&sc.config, &["--json", "--limit", "1"]);
    let last = json_lines(&out);
    assert_eq!(last.len(), 1);
    assert_eq!(last[0]["time"], *past.last().unwrap().get("time").unwrap());

    // The table.
    let (code, out, _) = history(&sc.config, &["--since", "1h"]);
    assert_eq!(code, 0);
    assert!(
        out.lines().next().unwrap().contains("decision(s) from"),
        "{out}"
    );
    assert!(
        out.contains("drain") && out.contains("step 1 cordon"),
        "{out}"
    );

    // Usage errors.
    for bad in [["--since", "yesterday"], ["--until", "2h"]] {
        let (code, _, err) = history(&sc.config, &bad);
        assert_eq!(code, 2, "{bad:?}: {err}");
        assert!(err.starts_with("error: "), "{err}");
    }
}

/// `log.journald`: the decision log goes to journald's socket over the native protocol, one
/// datagram a line with the line as MESSAGE and its type and level as fields, instead of
/// standard output; the same lines as `log.file`.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread")]
async fn the_decision_log_goes_to_journald_natively() {
    use std::os::unix::net::UnixDatagram;
    let sc = Scenario::new(true, &common::not_before_in_15_minutes()).await;
    let socket = sc.dir.path().join("journal.socket");
    let journal = UnixDatagram::bind(&socket).unwrap();
    let file = sc.dir.path().join("decisions.jsonl");
    let text = std::fs::read_to_string(&sc.config).unwrap();
    std::fs::write(
        &sc.config,
        format!(
            "log:\n  file: {}\n  journald: {}\n{text}",
            file.display(),
            socket.display()
        ),
    )
    .unwrap();
    let mut k = sc.keel(&[], &[]);
    assert_eq!(
        sc.wait_runbook_finished(&mut k, Duration::from_secs(60))
            .await,
        "done"
    );
    k.kill();
    assert!(k.json_lines().is_empty(), "standard output: {}", k.dump());
    journal.set_nonblocking(true).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let mut entries: Vec<Vec<(String, String)>> = Vec::new();
    while let Ok(n) = journal.recv(&mut buf) {
        // Every line here is JSON without newlines: only the `NAME=value` form.
        let text = String::from_utf8(buf[..n].to_vec()).unwrap();
        entries.push(
            text.lines()
                .map(|l| {
                    let (k, v) = l.split_once('=').unwrap();
                    (k.to_string(), v.to_string())
                })
                .collect(),
        );
    }
    let get =
        |e: &[(String, String)], k: &str| e.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let messages: Vec<Value> = entries
        .iter()
        .map(|e| serde_json::from_str(&get(e, "MESSAGE").unwrap()).unwrap())
        .collect();
    let in_file: Vec<Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(messages.len() >= 3, "{messages:?}");
    assert_eq!(messages, in_file);
    for (e, m) in entries.iter().zip(&messages) {
        assert_eq!(get(e, "SYSLOG_IDENTIFIER").as_deref(), Some("keel"));
        assert_eq!(get(e, "KEEL_TYPE").as_deref(), m["type"].as_str(), "{e:?}");
        assert_eq!(
            get(e, "KEEL_LEVEL").as_deref(),
            m["level"].as_str(),
            "{e:?}"
        );
        let priority = match m["level"].as_str() {
            Some("error") => "3",
            Some("warn") => "4",
            _ => "6",
        };
        assert_eq!(get(e, "PRIORITY").as_deref(), Some(priority), "{e:?}");
    }
    let decision = entries
        .iter()
        .find(|e| get(e, "KEEL_TYPE").as_deref() == Some("decision"))
        .expect("a decision entry");
    assert_eq!(
        get(decision, "KEEL_ACTION").as_deref(),
        Some("drain"),
        "{decision:?}"
    );
    assert!(get(decision, "KEEL_EVENT_ID").is_some(), "{decision:?}");
}

/// Issue 15, `log.file`: the decision log also goes to a file (beside standard output), the
/// same lines; the configuration is checked with positions.
#[tokio::test(flavor = "multi_thread")]
async fn the_decision_log_also_goes_to_log_file() {
    let sc = Scenario::new(true, &common::not_before_in_15_minutes()).await;
    let file = sc.dir.path().join("decisions.jsonl");
    let text = std::fs::read_to_string(&sc.config).unwrap();
    std::fs::write(
        &sc.config,
        format!("log:\n  file: {}\n  keep: 2\n{text}", file.display()),
    )
    .unwrap();
    let mut k = sc.keel(&[], &[]);
    assert_eq!(
        sc.wait_runbook_finished(&mut k, Duration::from_secs(60))
            .await,
        "done"
    );
    k.kill();
    let stdout: Vec<Value> = k.json_lines();
    let in_file: Vec<Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        in_file.iter().any(|l| l["type"] == "decision"),
        "{in_file:?}"
    );
    // The same lines, in order (standard output's reader may lag a line behind the file).
    let n = in_file.len().min(stdout.len());
    assert!(n >= 3, "{in_file:?}");
    assert_eq!(in_file[..n], stdout[..n]);
    common::assert_log_shape(&in_file);

    for (yaml, want) in [
        (
            "log:\n  file: no-such-dir/x.jsonl\n",
            "keel.yaml:2:9: error: `",
        ),
        (
            "log:\n  file: x.jsonl\n  keep: 0\n",
            "keel.yaml:3:9: error: expected how many rotated files",
        ),
        (
            "log:\n  file: x.jsonl\n  max_bytes: 10\n",
            "keel.yaml:3:14: error: expected a size in bytes",
        ),
        ("log:\n  keep: 3\n", "`log` needs `file`"),
        (
            "log:\n  journald: 3\n",
            "keel.yaml:2:13: error: expected true, false, or the path",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("keel.yaml");
        std::fs::write(&cfg, yaml).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(["check", "--config"])
            .arg(&cfg)
            .current_dir(dir.path())
            .output()
            .unwrap();
        let err =
            String::from_utf8_lossy(&out.stderr).replace(&format!("{}/", dir.path().display()), "");
        assert_eq!(out.status.code(), Some(3), "{yaml}: {err}");
        assert!(err.contains(want), "{yaml}: want {want:?}\n{err}");
    }
}
