//! What the crash matrix (`crash.rs`) and the dry-run identity test (`dry_run.rs`) share: a
//! loopback Azure Scheduled Events stub, a webhook stub that counts requests by
//! `Idempotency-Key`, a temp configuration whose drain runbook has a counted `exec`, and the
//! real `keel run` binary with its decision log collected.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

pub mod azure;
pub mod pg;

/// Every decision-log line has `time` (RFC 3339), `level` (`info`, `warn`, `error`) and
/// `type` (`decision`, `step`, `escalation`, `source`, `host`).
pub fn assert_log_shape(lines: &[Value]) {
    assert!(!lines.is_empty());
    for l in lines {
        let time = l["time"].as_str().unwrap_or_else(|| panic!("no time: {l}"));
        assert!(chrono::DateTime::parse_from_rfc3339(time).is_ok(), "{l}");
        assert!(
            ["info", "warn", "error"].contains(&l["level"].as_str().unwrap_or("")),
            "{l}"
        );
        assert!(
            ["decision", "step", "escalation", "source", "host"]
                .contains(&l["type"].as_str().unwrap_or("")),
            "{l}"
        );
    }
}

/// An HTTP client for loopback (no proxy).
pub fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// The value of a metric series (`name{labels}`), if present.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The Reboot announced in every scenario.
pub const EVENT_ID: &str = "0D7B3D39-6A5B-4F0E-8E3A-C6F7C1B2D001";
/// This VM.
pub const VM: &str = "test-vm";
/// The drain runbook's steps, in order.
pub const STEPS: &[&str] = &["announce", "cordon", "notify", "approve"];

// ------------------------------------------------------------------------------------------
// Azure Scheduled Events stub: `Metadata: true`, incarnations, StartRequests. With `advance`,
// an approved event turns Started and is gone `impact` later; without, the document stays as
// it is (approvals are only recorded), so that two runs see the same documents.

#[derive(Default)]
pub struct Se {
    pub incarnation: i64,
    pub events: Vec<Value>,
    /// Every EventId in a StartRequests, in order (repeats included).
    pub approvals: Vec<String>,
    pub advance: bool,
    /// With `advance`: an approved event is gone from the very next document (incarnation + 1),
    /// its Started phase never seen, as a poller can miss it.
    pub vanish: bool,
    /// How many documents were served.
    pub gets: usize,
}

pub type SeState = Arc<Mutex<Se>>;

/// Serves `se` as an Azure Scheduled Events endpoint; its URL (with the path and version).
pub async fn se_stub(se: SeState) -> String {
    let base = serve(
        Router::new()
            .route("/metadata/scheduledevents", get(se_get).post(se_post))
            .with_state(se),
    )
    .await;
    format!("{base}/metadata/scheduledevents?api-version=2020-07-01")
}

async fn se_get(State(st): State<SeState>, h: HeaderMap) -> (StatusCode, Json<Value>) {
    if h.get("Metadata").and_then(|v| v.to_str().ok()) != Some("true") {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "no header"})));
    }
    let mut s = st.lock().unwrap();
    s.gets += 1;
    (
        StatusCode::OK,
        Json(json!({"DocumentIncarnation": s.incarnation, "Events": s.events})),
    )
}

async fn se_post(State(st): State<SeState>, h: HeaderMap, body: Json<Value>) -> StatusCode {
    if h.get("Metadata").and_then(|v| v.to_str().ok()) != Some("true") {
        return StatusCode::BAD_REQUEST;
    }
    let Some(reqs) = body.get("StartRequests").and_then(Value::as_array) else {
        return StatusCode::BAD_REQUEST;
    };
    let ids: Vec<String> = reqs
        .iter()
        .filter_map(|r| r["EventId"].as_str().map(str::to_string))
        .collect();
    let mut started = Vec::new();
    {
        let mut s = st.lock().unwrap();
        if s.advance && s.vanish {
            let before = s.events.len();
            s.events.retain(|e| {
                !(ids.iter().any(|i| e["EventId"] == i.as_str()) && e["EventStatus"] == "Scheduled")
            });
            if s.events.len() != before {
                s.incarnation += 1;
            }
        } else if s.advance {
            let mut changed = false;
            for e in s.events.iter_mut() {
                if ids.iter().any(|i| e["EventId"] == i.as_str()) && e["EventStatus"] == "Scheduled"
                {
                    e["EventStatus"] = json!("Started");
                    e["NotBefore"] = json!("");
                    started.push(e["EventId"].as_str().unwrap().to_string());
                    changed = true;
                }
            }
            if changed {
                s.incarnation += 1;
            }
        }
        s.approvals.extend(ids);
    }
    for id in started {
        let st = st.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mut s = st.lock().unwrap();
            s.events.retain(|e| e["EventId"] != id.as_str());
            s.incarnation += 1;
        });
    }
    StatusCode::OK
}

/// Serves `app` on a loopback port; its base URL.
pub async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

/// A fixed NotBefore a quarter of an hour ahead (IMDS's format), so that two runs of a
/// scenario see the same document.
pub fn not_before_in_15_minutes() -> String {
    (chrono::Utc::now() + chrono::Duration::minutes(15))
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string()
}

// ------------------------------------------------------------------------------------------
// Webhook stub: every request's Idempotency-Key, in order.

pub type Hook = Arc<Mutex<Vec<Option<String>>>>;

async fn hook_post(State(st): State<Hook>, h: HeaderMap) -> StatusCode {
    let key = h
        .get("Idempotency-Key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    st.lock().unwrap().push(key);
    StatusCode::OK
}

/// A webhook stub on a loopback port: what it received, and its URL (`.../hook`).
pub async fn webhook() -> (Hook, String) {
    let hook: Hook = Arc::default();
    let url = serve(
        Router::new()
            .route("/hook", post(hook_post))
            .with_state(hook.clone()),
    )
    .await;
    (hook, format!("{url}/hook"))
}

// ------------------------------------------------------------------------------------------
// A scenario: stubs, a temp directory with the configuration, the state and the counter.

pub struct Scenario {
    pub dir: tempfile::TempDir,
    pub se: SeState,
    pub hook: Hook,
    /// The webhook stub's URL (`…/hook`).
    pub hook_url: String,
    pub config: PathBuf,
    pub state: PathBuf,
    /// The `cordon` step appends its idempotency key here, one line per run.
    pub counter: PathBuf,
}

impl Scenario {
    /// Fresh stubs and state; a platform Reboot of this VM is already announced.
    pub async fn new(advance: bool, not_before: &str) -> Scenario {
        let dir = tempfile::tempdir().unwrap();
        let se: SeState = Arc::new(Mutex::new(Se {
            incarnation: 2,
            advance,
            events: vec![json!({
                "EventId": EVENT_ID, "EventStatus": "Scheduled", "EventType": "Reboot",
                "ResourceType": "VirtualMachine", "Resources": [VM], "NotBefore": not_before,
                "Description": "Host server is undergoing maintenance.",
                "EventSource": "Platform", "DurationInSeconds": -1,
            })],
            ..Se::default()
        }));
        let se_url = serve(
            Router::new()
                .route("/metadata/scheduledevents", get(se_get).post(se_post))
                .with_state(se.clone()),
        )
        .await;
        let (hook, hook_url) = webhook().await;
        let state = dir.path().join("state.db");
        let counter = dir.path().join("cordon.count");
        let config = dir.path().join("keel.yaml");
        std::fs::write(
            &config,
            format!(
                r#"policies: {policies}
state: {state}
listen: 127.0.0.1:0
self: {VM}
sources:
  azure_scheduled_events:
    url: {se_url}/metadata/scheduledevents?api-version=2020-07-01
    interval: 100ms
    timeout: 2s
    first_timeout: 5s
runbooks:
  drain:
    - name: announce
      log: {{}}
    - name: cordon
      exec:
        - /bin/sh
        - -c
        - 'echo "$KEEL_IDEMPOTENCY_KEY" >> "$0"'
        - {counter}
      timeout: 5s
      retries: 0
      idempotent: false
    - name: notify
      http: {{ url: "{hook_url}" }}
      timeout: 5s
      retries: 2
      backoff: 100ms
    - name: approve
      azure_ack: {{}}
      timeout: 5s
      retries: 2
      backoff: 100ms
"#,
                policies = root().join("policies/standard").display(),
                state = state.display(),
                counter = counter.display(),
            ),
        )
        .unwrap();
        Scenario {
            dir,
            se,
            hook,
            hook_url,
            config,
            state,
            counter,
        }
    }

    /// Replaces the configuration's runbooks with `runbooks` (YAML, `runbooks:` included) and
    /// appends `extra` top-level keys.
    pub fn set_runbooks(&self, runbooks: &str, extra: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let head = &text[..text.find("runbooks:").unwrap()];
        std::fs::write(&self.config, format!("{head}{extra}\n{runbooks}")).unwrap();
    }

    /// Waits until the host has read the document `n` more times (anything those reads
    /// would cause has then begun), or panics after `within`.
    pub async fn wait_polls(&self, k: &mut Keel, n: usize, within: Duration) {
        let want = self.se.lock().unwrap().gets + n;
        let deadline = Instant::now() + within;
        while self.se.lock().unwrap().gets < want {
            if let Ok(Some(status)) = k.child.try_wait() {
                panic!("keel exited with {status}\n{}", k.dump());
            }
            assert!(
                Instant::now() < deadline,
                "fewer than {n} polls within {within:?}\n{}",
                k.dump()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Makes the stub drop an approved event from the next document (see [`Se::vanish`]).
    pub fn vanish_on_approval(&self) {
        self.se.lock().unwrap().vanish = true;
    }

    /// The statuses the store has seen the announced event in, oldest first: those of its
    /// decisions (an event is seen in a status when it has a decision in it).
    pub fn statuses(&self) -> Vec<String> {
        if !self.state.exists() {
            return Vec::new();
        }
        let c = self.db();
        let Ok(mut st) = c.prepare(
            "SELECT COALESCE(json_extract(event_json, '$.maintenance.status'),
                                 json_extract(event_json, '$.health.state'), '-')
                   FROM decisions WHERE event_id LIKE ?1 ORDER BY time, rowid",
        ) else {
            return Vec::new();
        };
        st.query_map([format!("%{}%", EVENT_ID.to_lowercase())], |r| r.get(0))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
    }

    /// Changes the Scheduled Events document (the incarnation goes up by one).
    pub fn change_document(&self, f: impl FnOnce(&mut Vec<Value>)) {
        let mut s = self.se.lock().unwrap();
        f(&mut s.events);
        s.incarnation += 1;
    }

    /// Starts `keel run` on this scenario's configuration and state.
    pub fn keel(&self, extra: &[&str], env: &[(&str, &str)]) -> Keel {
        Keel::start(&self.config, extra, env)
    }

    /// The lines the `cordon` exec appended (one per run of its effect).
    pub fn exec_runs(&self) -> Vec<String> {
        std::fs::read_to_string(&self.counter)
            .map(|s| s.lines().map(str::to_string).collect())
            .unwrap_or_default()
    }

    pub fn hook_keys(&self) -> Vec<Option<String>> {
        self.hook.lock().unwrap().clone()
    }

    pub fn approvals(&self) -> Vec<String> {
        self.se.lock().unwrap().approvals.clone()
    }

    fn db(&self) -> rusqlite::Connection {
        let c = rusqlite::Connection::open(&self.state).unwrap();
        c.busy_timeout(Duration::from_secs(5)).unwrap();
        c
    }

    /// The drain decisions' runbook states (`pending`, `done`, `failed`), from the store.
    pub fn drain_runbooks(&self) -> Vec<String> {
        if !self.state.exists() {
            return Vec::new();
        }
        let c = self.db();
        // The host may not have created its tables yet.
        let Ok(mut st) = c.prepare("SELECT runbook FROM decisions WHERE action = 'drain'") else {
            return Vec::new();
        };
        st.query_map([], |r| r.get::<_, String>(0))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
    }

    /// Every step execution in the store: (name, idempotency key, executions begun, outcome).
    pub fn step_rows(&self) -> Vec<(String, String, i64, Option<String>)> {
        let c = self.db();
        let mut st = c
            .prepare("SELECT name, key, attempts, outcome FROM steps ORDER BY idx")
            .unwrap();
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
    }

    /// Waits until the drain decision's runbook is no longer pending; its state.
    pub async fn wait_runbook_finished(&self, k: &mut Keel, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let rb = self.drain_runbooks();
            if let [state] = rb.as_slice() {
                if state != "pending" {
                    return state.clone();
                }
            }
            if let Ok(Some(status)) = k.child.try_wait() {
                panic!(
                    "keel exited with {status} before the runbook finished\n{}",
                    k.dump()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "runbook not finished within {within:?}: {rb:?}\n{}",
                    k.dump()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

// ------------------------------------------------------------------------------------------
// The binary.

/// A running `keel run`, killed on drop.
pub struct Keel {
    pub child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    /// A directory (configuration, state) that must live as long as the process.
    dir: Option<tempfile::TempDir>,
}

impl Keel {
    /// Starts `keel run --config <config>` with `extra` arguments and `env`.
    pub fn start(config: &Path, extra: &[&str], env: &[(&str, &str)]) -> Keel {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keel"));
        cmd.args(["run", "--config"]).arg(config).args(extra);
        Keel::spawn(cmd, env)
    }

    /// [`Keel::start`] under the file-creation mask `umask` (octal, e.g. `000`), set by
    /// `/bin/sh` before it execs `keel`.
    pub fn start_with_umask(
        umask: &str,
        config: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Keel {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "umask \"$0\" && exec \"$@\"", umask])
            .arg(env!("CARGO_BIN_EXE_keel"))
            .args(["run", "--config"])
            .arg(config)
            .args(extra);
        Keel::spawn(cmd, env)
    }

    fn spawn(mut cmd: Command, env: &[(&str, &str)]) -> Keel {
        let mut child = cmd
            .env_remove("KEEL_FAILPOINT")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let l = lines.clone();
        let r1 = std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let err = child.stderr.take().unwrap();
        let e = stderr.clone();
        let r2 = std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut s = e.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Keel {
            child,
            lines,
            stderr,
            readers: vec![r1, r2],
            dir: None,
        }
    }

    /// The decision log so far, one JSON value per line.
    pub fn json_lines(&self) -> Vec<Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn dump(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            self.lines.lock().unwrap().join("\n"),
            self.stderr()
        )
    }

    /// Waits for the process to exit by itself; its status, once its output is all read.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                for r in self.readers.drain(..) {
                    let _ = r.join();
                }
                return status;
            }
            if Instant::now() > deadline {
                panic!("keel still running after {within:?}\n{}", self.dump());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for a decision-log line.
    pub async fn wait_line(
        &mut self,
        what: &str,
        within: Duration,
        f: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            if let Some(v) = self.json_lines().into_iter().find(|l| f(l)) {
                return v;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("keel exited with {status} before {what}\n{}", self.dump());
            }
            if Instant::now() > deadline {
                panic!("no {what} within {within:?}\n{}", self.dump());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `f` holds, or panics after `within` (or when the process exits first)
    /// with the output so far.
    pub async fn wait_until(&mut self, what: &str, within: Duration, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + within;
        while !f() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("keel exited with {status} before {what}\n{}", self.dump());
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within {within:?}\n{}",
                self.dump()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Keeps `dir` (the configuration and state) until the process is dropped.
    pub fn keep_dir(mut self, dir: tempfile::TempDir) -> Self {
        self.dir = Some(dir);
        self
    }

    /// Waits for the host to listen; its base URL (`http://addr`).
    pub async fn wait_listen(&mut self, within: Duration) -> String {
        let l = self
            .wait_line("the listen line", within, |l| l.get("listen").is_some())
            .await;
        format!("http://{}", l["listen"].as_str().unwrap_or_default())
    }

    /// The base URL the host listens on (it has logged its listen line).
    pub fn base(&self) -> String {
        let l = self
            .json_lines()
            .into_iter()
            .find(|l| l.get("listen").is_some())
            .unwrap();
        format!("http://{}", l["listen"].as_str().unwrap())
    }

    /// Waits for the decision of `policy`; its log line.
    pub async fn decision(&mut self, policy: &str, within: Duration) -> Value {
        self.wait_line(&format!("decision of {policy}"), within, |l| {
            l["decision"]["policy"] == policy
        })
        .await
    }

    /// `GET /metrics`.
    pub async fn metrics(&self) -> String {
        http()
            .get(format!("{}/metrics", self.base()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// `GET /readyz`: its status and JSON report.
    pub async fn readyz(&self) -> (u16, Value) {
        let r = http()
            .get(format!("{}/readyz", self.base()))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    /// Waits until `/readyz` answers `want`; how long that took.
    pub async fn wait_ready(&self, want: u16, within: Duration) -> Duration {
        let t0 = Instant::now();
        loop {
            let (status, report) = self.readyz().await;
            if status == want {
                return t0.elapsed();
            }
            if t0.elapsed() > within {
                panic!(
                    "/readyz is still {status} after {within:?}: {report}\n{}",
                    self.dump()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Kills the process (SIGKILL) and collects the rest of its output.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }
}

impl Drop for Keel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
