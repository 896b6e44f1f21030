//! Issue 13, maintenance windows and blockers, through the real `keel run` binary: `windows:`
//! and `blockers:` are validated with their positions, and each blocker is checked by the
//! running host, its state in `keel_blocker_blocked{blocker}` and the decision log.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

mod common;

use common::{metric, root, Keel};

fn config(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let cfg = dir.join("keel.yaml");
    std::fs::write(
        &cfg,
        format!(
            "policies: {}\nstate: {}\nlisten: 127.0.0.1:0\n{extra}",
            root().join("policies/standard").display(),
            dir.join("state.db").display(),
        ),
    )
    .unwrap();
    cfg
}

#[test]
fn windows_and_blockers_are_validated_with_positions() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "windows:\n  - name: nights\n    days: [sun, funday]\n    start: \"22:00\"\n    end: \"4\"\n    \
         time_zone: Mars/Olympus\n\
         blockers:\n  - name: deploys\n    prometheus: {url: \"http://127.0.0.1:9090\", query: \"\"}\n",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(3), "{err}");
    for want in [
        "keel.yaml:6:17: error: expected a day: one of mon, tue, wed, thu, fri, sat, sun",
        "keel.yaml:8:10: error: expected a local time HH:MM (24 h), such as \"22:00\"",
        "keel.yaml:9:16: error: unknown time zone `Mars/Olympus`",
        "keel.yaml:12:55: error: expected a PromQL query of 1 to 4096 characters",
    ] {
        assert!(err.contains(want), "{want}\n{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_running_host_checks_each_blocker() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "windows:\n  - name: nights\n    start: \"22:00\"\n    end: \"04:00\"\n    \
         time_zone: Europe/Berlin\n\
         blockers:\n  - name: busy\n    exec: [/bin/sh, -c, \"exit 3\"]\n  \
         - name: free\n    exec: [/bin/true]\n\
         sources:\n  ingest:\n    token_env: KEEL_TEST_INGEST_TOKEN\n",
    );
    // A source keeps the host running.
    let token = [("KEEL_TEST_INGEST_TOKEN", "keel-test-token-0123456789abcdef")];
    let mut k = Keel::start(&cfg, &[], &token);
    k.wait_listen(Duration::from_secs(60)).await;
    let busy = k
        .wait_line("busy's first result", Duration::from_secs(60), |l| {
            l["blocker"]["name"] == "busy"
        })
        .await;
    assert_eq!(busy["blocker"]["blocked"], true, "{busy}");
    assert_eq!(
        busy["blocker"]["reason"], "/bin/sh exited with exit status: 3",
        "{busy}"
    );
    let free = k
        .wait_line("free's first result", Duration::from_secs(60), |l| {
            l["blocker"]["name"] == "free"
        })
        .await;
    assert_eq!(free["blocker"]["blocked"], false, "{free}");
    let m = k.metrics().await;
    assert_eq!(
        metric(&m, "keel_blocker_blocked{blocker=\"busy\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "keel_blocker_blocked{blocker=\"free\"}"),
        Some(0.0),
        "{m}"
    );
    k.keep_dir(dir).kill();
}
