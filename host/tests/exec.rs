//! `exec` steps through the real `keel run` binary: a step past its timeout or its runbook's
//! deadline has its whole process group stopped (nothing it started is left behind), and a
//! step's environment holds only the allowlist, its `env` names and the event's `KEEL_*`
//! variables (never the ingest token, a paging key or Keel's own `KEEL_*` settings). Also:
//! the `plugin_cache` key of `keel.yaml`, and the cache rules seen from `keel run`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::Scenario;

/// The pids of the live processes whose command line holds `marker` as an argument (a
/// zombie has no command line: it is not counted).
fn processes_with(marker: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().map_while(Result::ok) {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline
            .split(|b| *b == 0)
            .any(|arg| arg == marker.as_bytes())
        {
            pids.push(pid);
        }
    }
    pids
}

/// Waits until `want(count)` holds for the processes carrying `marker`.
async fn wait_processes(marker: &str, within: Duration, what: &str, want: impl Fn(usize) -> bool) {
    let deadline = Instant::now() + within;
    loop {
        let pids = processes_with(marker);
        if want(pids.len()) {
            return;
        }
        if Instant::now() > deadline {
            panic!("{what}: still {pids:?} after {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Kills whatever a failed test left behind.
struct Reap(String);

impl Drop for Reap {
    fn drop(&mut self) {
        for pid in processes_with(&self.0) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

/// A unique `sleep` argument: 300-odd seconds, told apart by this test process's id.
fn marker(n: u32) -> String {
    format!("{n}.{}", std::process::id())
}

/// IMDS's NotBefore format, `secs` from now.
fn not_before_in(secs: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::seconds(secs))
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string()
}

fn hanging_runbook(marker: &str, timeout: &str) -> String {
    format!(
        r#"runbooks:
  drain:
    - name: hang
      exec: ["/bin/sh", "-c", "sleep {marker} & sleep {marker}"]
      timeout: {timeout}
      retries: 0
      idempotent: true
"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exec_step_past_its_timeout_leaves_no_process_behind() {
    let m = marker(301);
    let _reap = Reap(m.clone());
    let sc = Scenario::new(false, &common::not_before_in_15_minutes()).await;
    sc.set_runbooks(&hanging_runbook(&m, "3s"), "");
    let mut k = sc.keel(&[], &[]);
    // The shell and both sleeps run (the shell's command line holds the marker too).
    wait_processes(&m, Duration::from_secs(60), "the step's processes", |n| {
        n >= 2
    })
    .await;
    assert_eq!(
        sc.wait_runbook_finished(&mut k, Duration::from_secs(60))
            .await,
        "failed"
    );
    let step = k
        .wait_line("the step's outcome", Duration::from_secs(10), |l| {
            l["step"] == "hang" && l.get("outcome").is_some()
        })
        .await;
    assert_eq!(step["outcome"], "failed: timed out after 3s", "{step}");
    // SIGTERM, then SIGKILL after the grace: the background sleep goes too.
    wait_processes(&m, Duration::from_secs(30), "processes left behind", |n| {
        n == 0
    })
    .await;
    // Keel itself is still running.
    assert!(k.child.try_wait().unwrap().is_none(), "{}", k.dump());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exec_step_running_at_the_drain_deadline_leaves_no_process_behind() {
    let m = marker(302);
    let _reap = Reap(m.clone());
    // NotBefore five seconds ahead is the drain's deadline; the step's own timeout is long.
    let sc = Scenario::new(false, &not_before_in(5)).await;
    sc.set_runbooks(&hanging_runbook(&m, "10m"), "");
    let mut k = sc.keel(&[], &[]);
    wait_processes(&m, Duration::from_secs(60), "the step's processes", |n| {
        n >= 2
    })
    .await;
    assert_eq!(
        sc.wait_runbook_finished(&mut k, Duration::from_secs(60))
            .await,
        "failed"
    );
    let step = k
        .wait_line("the step's outcome", Duration::from_secs(10), |l| {
            l["step"] == "hang" && l.get("outcome").is_some()
        })
        .await;
    assert!(
        step["outcome"]
            .as_str()
            .unwrap()
            .starts_with("failed: the runbook missed its deadline"),
        "{step}"
    );
    wait_processes(&m, Duration::from_secs(30), "processes left behind", |n| {
        n == 0
    })
    .await;
}

const TOKEN: &str = "ingest-token-0123456789-secret";
const PAGING_KEY: &str = "paging-routing-key-secret";

#[tokio::test(flavor = "multi_thread")]
async fn an_exec_step_sees_the_event_variables_and_no_secret_of_keels_environment() {
    let sc = Scenario::new(false, &common::not_before_in_15_minutes()).await;
    let out = sc.dir.path().join("env.out");
    // The ingest endpoint's token and a PagerDuty step's routing key come from the
    // environment, as the configuration reference shows.
    let text = std::fs::read_to_string(&sc.config).unwrap();
    std::fs::write(
        &sc.config,
        text.replacen(
            "sources:\n",
            "sources:\n  ingest:\n    token_env: KEEL_INGEST_TOKEN\n",
            1,
        ),
    )
    .unwrap();
    sc.set_runbooks(
        &format!(
            r#"runbooks:
  drain:
    - name: env
      exec: ["/bin/sh", "-c", "env > \"$0\"", "{out}"]
      env: [RUNBOOK_EXTRA]
      timeout: 10s
      retries: 0
  escalate:
    - name: page
      http: {{ url: "http://127.0.0.1:9/hook", format: pagerduty, routing_key_env: PD_ROUTING_KEY }}
"#,
            out = out.display()
        ),
        "",
    );
    let mut k = sc.keel(
        &[],
        &[
            ("KEEL_INGEST_TOKEN", TOKEN),
            ("PD_ROUTING_KEY", PAGING_KEY),
            ("KEEL_HOST_SETTING", "host-only"),
            ("UNLISTED_VARIABLE", "unlisted"),
            ("RUNBOOK_EXTRA", "passed-on"),
            ("LANG", "C.UTF-8"),
        ],
    );
    assert_eq!(
        sc.wait_runbook_finished(&mut k, Duration::from_secs(60))
            .await,
        "done",
        "{}",
        k.dump()
    );
    let env = std::fs::read_to_string(&out).unwrap();
    let vars: std::collections::BTreeMap<&str, &str> =
        env.lines().filter_map(|l| l.split_once('=')).collect();
    // The event's variables.
    assert_eq!(vars.get("KEEL_ACTION"), Some(&"drain"), "{env}");
    assert_eq!(vars.get("KEEL_EVENT_KIND"), Some(&"maintenance"), "{env}");
    assert_eq!(vars.get("KEEL_MAINTENANCE_TYPE"), Some(&"reboot"), "{env}");
    assert_eq!(vars.get("KEEL_RESOURCE_NAME"), Some(&common::VM), "{env}");
    for k in [
        "KEEL_DECISION_ID",
        "KEEL_IDEMPOTENCY_KEY",
        "KEEL_EVENT_ID",
        "KEEL_NOT_BEFORE",
    ] {
        assert!(vars.get(k).is_some_and(|v| !v.is_empty()), "{k}: {env}");
    }
    // The allowlist and the step's own `env`.
    assert_eq!(vars.get("LANG"), Some(&"C.UTF-8"), "{env}");
    assert!(vars.contains_key("PATH"), "{env}");
    assert_eq!(vars.get("RUNBOOK_EXTRA"), Some(&"passed-on"), "{env}");
    // No secret, nothing unlisted, none of Keel's own KEEL_* settings.
    assert!(!env.contains(TOKEN), "{env}");
    assert!(!env.contains(PAGING_KEY), "{env}");
    for k in [
        "KEEL_INGEST_TOKEN",
        "PD_ROUTING_KEY",
        "KEEL_HOST_SETTING",
        "UNLISTED_VARIABLE",
    ] {
        assert!(!vars.contains_key(k), "{k}: {env}");
    }
    let keel_vars: Vec<&&str> = vars.keys().filter(|k| k.starts_with("KEEL_")).collect();
    assert_eq!(
        keel_vars,
        [
            &"KEEL_ACTION",
            &"KEEL_DECISION_ID",
            &"KEEL_EVENT_ID",
            &"KEEL_EVENT_KIND",
            &"KEEL_IDEMPOTENCY_KEY",
            &"KEEL_MAINTENANCE_TYPE",
            &"KEEL_NOT_BEFORE",
            &"KEEL_RESOURCE_ID",
            &"KEEL_RESOURCE_NAME",
        ],
        "{env}"
    );
}

#[test]
fn a_step_env_naming_a_keel_variable_or_on_another_step_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    let config = dir.path().join("keel.yaml");
    std::fs::write(
        &config,
        r#"sources:
  ingest:
    token_env: MY_INGEST_TOKEN
runbooks:
  drain:
    - { name: a, exec: ["/bin/true"], env: [KEEL_INGEST_TOKEN] }
    - { name: b, log: {}, env: [HOME] }
    - { name: c, exec: ["/bin/true"], env: ["A=B"] }
    - { name: d, exec: ["/bin/true"], env: [HOME, MY_INGEST_TOKEN, PD_KEY] }
  escalate:
    - { name: page, http: { url: "https://events.pagerduty.com/v2/enqueue", format: pagerduty, routing_key_env: PD_KEY } }
"#,
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "`KEEL_INGEST_TOKEN`: `KEEL_*` variables are the event's",
        "`env` applies to `exec` steps only",
        "expected an environment variable name",
        // The secrets Keel reads are never passed on, even when listed.
        "keel.yaml:9:51: error: `MY_INGEST_TOKEN` holds a secret Keel uses",
        "keel.yaml:9:68: error: `PD_KEY` holds a secret Keel uses",
    ] {
        assert!(err.contains(want), "{want}: {err}");
    }
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

/// `plugin_cache` in `keel.yaml` names the cache `keel run` uses; one that others can write is
/// not used (a warning says so, and the plugin still decides).
#[tokio::test(flavor = "multi_thread")]
async fn keel_run_accepts_plugin_cache_and_refuses_one_others_can_write() {
    use std::os::unix::fs::PermissionsExt;
    let sc = Scenario::new(false, &common::not_before_in_15_minutes()).await;
    // The maintenance-window example plugin (built into wasm-plugins/dist/ by
    // `cargo run -p xtask -- build-plugins`, which test.sh runs first).
    let cache = sc.dir.path().join("compiled");
    let text = std::fs::read_to_string(&sc.config).unwrap();
    let rest = &text[text.find('\n').unwrap()..];
    let policies = common::root().join("wasm-plugins/examples/maintenance-window");
    std::fs::write(
        &sc.config,
        format!(
            "policies: {}\nplugin_cache: {}{rest}",
            policies.display(),
            cache.display()
        ),
    )
    .unwrap();
    // Group-writable: not used.
    std::fs::create_dir(&cache).unwrap();
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o775)).unwrap();
    let mut k = sc.keel(&[], &[]);
    let w = k
        .wait_line("the cache warning", Duration::from_secs(60), |l| {
            l["warning"]
                .as_str()
                .is_some_and(|w| w.contains("plugin cache") && w.contains("not used"))
        })
        .await;
    assert!(w["warning"].as_str().unwrap().contains("mode 0775"), "{w}");
    k.decision("team.maintenance-window", Duration::from_secs(60))
        .await;
    k.kill();
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 0);
    assert!(!sc.dir.path().join("compiled.key").exists());
    // Private: used, with its key beside it; nothing in the default place. (A fresh state:
    // the event is decided again.)
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", sc.state.display()));
    }
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut k = sc.keel(&[], &[]);
    k.decision("team.maintenance-window", Duration::from_secs(60))
        .await;
    k.kill();
    assert!(
        !k.json_lines().iter().any(|l| l.get("warning").is_some()),
        "{}",
        k.dump()
    );
    let entries: Vec<_> = std::fs::read_dir(&cache).unwrap().collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(mode(&sc.dir.path().join("compiled.key")), 0o600);
    assert!(!sc.dir.path().join("plugin-cache").exists());
}
