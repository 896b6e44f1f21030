//! The host daemon: sources feed the normalizers, the engine decides, runbooks act, and the
//! state store makes "exactly once" hold across crashes.
//!
//! What "exactly once" means here (ARCHITECTURE.md): each step's start is written with its
//! idempotency key before its effect; after a crash an idempotent step left in doubt runs
//! again with the same key, and a non-idempotent one never runs again and escalates.

pub mod arm;
pub mod backoff;
pub mod blocker;
pub mod budget;
pub mod gate;
pub mod health;
pub mod http;
pub mod identity;
pub mod journald;
#[cfg(feature = "kubernetes")]
pub mod kubernetes;
pub mod lock;
pub mod logfile;
pub mod metrics;
pub mod notify;
pub mod outbox;
pub mod pause;
pub mod reload;
pub mod sources;
pub mod steps;
pub mod store;
pub mod window;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use keel_engine::normalize::{normalize, Input, NormalizerState};
use keel_engine::{escape, Action, Ctx, Decision, Engine, Event, History};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::{Config, Step};
use health::{Change, Health};
use metrics::Metrics;
use store::{Db, IngestRecord, NewDecision, NewOutbox, Store, StoreError};

/// A raw payload from a source.
#[derive(Debug)]
pub struct Payload {
    /// The normalizer to run.
    pub normalizer: &'static str,
    /// The bytes.
    pub bytes: Vec<u8>,
    /// When it was read.
    pub observed_at: DateTime<Utc>,
}

/// What the sources send to the run loop, which normalizes and decides one message at a time.
#[derive(Debug)]
pub enum Inbox {
    /// A payload read by a polling source; the loop answers whether it normalized (the
    /// normalizer's error otherwise), so that the source can count the failure and back off.
    Poll(Payload, oneshot::Sender<Result<(), String>>),
    /// A body posted to the ingest endpoint; the loop answers with the HTTP reply. With the
    /// body normalized on arrival, when it could be ([`Host::normalize_on_arrival`]).
    Ingest(
        Payload,
        oneshot::Sender<IngestReply>,
        Option<sources::ingest::Normalized>,
    ),
}

/// The ingest endpoint's answer to one body.
#[derive(Debug, Clone, Default)]
pub struct IngestReply {
    /// The HTTP status: 202 accepted, 200 duplicate (or no failure in the body), 400 bad
    /// body, 500 the state store failed.
    pub status: u16,
    /// The JSON body.
    pub body: serde_json::Value,
}

/// A decision whose runbook must run: its id, the event and the decision.
pub type Work = (String, Event, Decision);

/// What a batch releases once it commits: the decision-log lines and the runbooks to start.
#[derive(Default)]
pub struct Effects {
    /// Decision-log lines, written once the batch is on the disk.
    logs: Vec<LogLine>,
    work: Vec<Work>,
    recorded: usize,
    /// The state store failed inside the batch: the whole batch is rolled back.
    failed: Option<StoreError>,
}

/// A decision-log line of a batch, serialized when it is written (by the thread that syncs
/// and delivers the batch, not the deciding thread).
enum LogLine {
    /// A line already serialized.
    Text(String),
    /// A decision: its time, id, event id, mode, policy set's digest and redacted JSON.
    Decision {
        at: String,
        id: String,
        event_id: String,
        mode: &'static str,
        digest: String,
        json: String,
    },
}

impl LogLine {
    /// Appends the line (without its newline) to `out`.
    fn write_to(&self, out: &mut String) {
        match self {
            LogLine::Text(t) => out.push_str(t),
            LogLine::Decision {
                at,
                id,
                event_id,
                mode,
                digest,
                json,
            } => {
                let js = |v: &str| serde_json::to_string(v).unwrap_or_default();
                out.push_str(&format!(
                    r#"{{"time":{},"level":"info","type":"decision","decision_id":{},"event_id":{},"mode":{},"policy_set_digest":{},"decision":{json}}}"#,
                    js(at),
                    js(id),
                    js(event_id),
                    js(mode),
                    js(digest),
                ));
            }
        }
    }
}

/// An answer to a source or an ingest client, sent once the batch is committed.
enum Answer {
    Poll(oneshot::Sender<Result<(), String>>, Result<(), String>),
    Ingest(oneshot::Sender<IngestReply>, IngestReply),
}

/// Answers a batch that failed (`why`, escaped): sources are told, ingest clients get 500
/// (whatever each answer held before).
fn fail_answers(answers: impl IntoIterator<Item = Answer>, why: &str) {
    for a in answers {
        match a {
            Answer::Poll(ack, _) => {
                let _ = ack.send(Err(why.to_string()));
            }
            Answer::Ingest(reply, _) => {
                let _ = reply.send(IngestReply {
                    status: 500,
                    body: serde_json::json!({ "error": why }),
                });
            }
        }
    }
}

/// A batch committed by [`Host::commit`] and perhaps not yet on the disk: what it holds
/// back until [`Host::deliver`].
#[derive(Default)]
pub struct Committed {
    unsynced: store::Unsynced,
    answers: Vec<Answer>,
    logs: Vec<LogLine>,
    work: Vec<Work>,
    recorded: usize,
    reserved: Reserved,
}

/// A batch on the disk and answered ([`Host::deliver`]): the runbooks to start.
#[derive(Default)]
pub struct Delivered {
    /// The runbooks to start.
    pub work: Vec<Work>,
    /// Until dropped (once they are started), the scan for orphaned runbooks leaves them
    /// alone.
    reserved: Reserved,
}

/// Decision ids held in one of the host's sets until this is dropped, however it is dropped:
/// runbooks on their way to a task (committed, waiting for the disk or for the run loop),
/// which [`Host::orphans`] leaves alone, so that a batch lost on the way (a panic) leaves
/// them to the scan; and runbooks whose task runs (`Host::running`).
#[derive(Default)]
struct Reserved(
    Option<Arc<Mutex<std::collections::BTreeSet<String>>>>,
    Vec<String>,
);

impl Reserved {
    fn new(set: &Arc<Mutex<std::collections::BTreeSet<String>>>, work: &[Work]) -> Reserved {
        if work.is_empty() {
            return Reserved::default();
        }
        let ids: Vec<String> = work.iter().map(|w| w.0.clone()).collect();
        if let Ok(mut r) = set.lock() {
            r.extend(ids.iter().cloned());
        }
        Reserved(Some(set.clone()), ids)
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        if let Some(Ok(mut r)) = self.0.as_ref().map(|s| s.lock()) {
            for id in &self.1 {
                r.remove(id);
            }
        }
    }
}

/// An event decided and recorded.
struct Recorded {
    decision_id: String,
    decision: Decision,
    pending: bool,
}

/// Everything the daemon's tasks share.
pub struct Host {
    /// The configuration.
    pub cfg: Config,
    /// This VM's name as the Scheduled Events source learned it from IMDS, where `self` is
    /// not configured ([`Host::self_name`]).
    learned_self: std::sync::OnceLock<String>,
    /// The policy set, swapped whole when the policy files change.
    engine: RwLock<Arc<Engine>>,
    /// The state store.
    pub store: Store,
    /// The HTTP client for sources and executors.
    pub http: reqwest::Client,
    /// Metrics.
    pub metrics: Metrics,
    /// The health of every source, for `/readyz`.
    pub health: Health,
    /// One permit per drain allowed to run at once (`limits.concurrent_drains`).
    pub drain_slots: Arc<tokio::sync::Semaphore>,
    /// One permit per runbook other than a drain allowed to run at once
    /// (`limits.concurrent_runbooks`); the others wait for one.
    pub runbook_slots: Arc<tokio::sync::Semaphore>,
    /// Managed-identity tokens (Resource Health, `arm` steps), cached; nothing is requested
    /// until one is needed.
    pub identity: identity::TokenClient,
    /// Who holds this host's budget leases: `<self or "keel">#<8 random hex digits>`, new at
    /// each start (a restarted host does not inherit a dead one's leases: they expire).
    pub holder: String,
    /// The decisions whose runbooks hold budget leases here (renewed every tick that is
    /// due), and when they were last renewed.
    leases: Mutex<(std::collections::BTreeSet<String>, Option<DateTime<Utc>>)>,
    /// The decisions whose runbook runs in this process now.
    running: Arc<Mutex<std::collections::BTreeSet<String>>>,
    /// Decisions committed whose runbooks are on their way to a task ([`Reserved`]).
    reserved: Arc<Mutex<std::collections::BTreeSet<String>>>,
    /// The blockers' last results (`blockers:`), written by their tasks.
    pub blockers: blocker::Blockers,
    history: Mutex<History>,
    /// In a fleet: the newest other host's decision already in `history` (its `seq`).
    fleet_seq: std::sync::atomic::AtomicI64,
    nstate: Mutex<NormalizerState>,
    log: Mutex<Box<dyn std::io::Write + Send>>,
    /// The exclusive lock on the SQLite state database, held for the host's life (a fleet's
    /// database holds a session lock on the host's identity instead).
    _lock: Option<lock::StateLock>,
}

/// Why the host could not start, or stopped on an error.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The policy set is invalid (its diagnostics are rendered with their positions).
    #[error("the policy set is invalid")]
    Policies(#[from] keel_engine::LoadError),
    /// Another host holds the state database, or its lock file cannot be written.
    #[error(transparent)]
    Lock(#[from] lock::LockError),
    /// The state database cannot be opened, migrated, read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    /// The ingest and health endpoint cannot listen on its address.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The configured `listen` address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A thread of the host could not be started.
    #[error("cannot start a thread: {0}")]
    Thread(#[source] std::io::Error),
}

impl StartError {
    /// The exit code of `keel run` and `keel demo` for this error: an invalid policy set is
    /// [`Exit::Invalid`](crate::Exit::Invalid), anything else about the host itself (state,
    /// lock, listen address) [`Exit::Host`](crate::Exit::Host).
    pub fn exit(&self) -> crate::Exit {
        match self {
            StartError::Policies(_) => crate::Exit::Invalid,
            _ => crate::Exit::Host,
        }
    }

    /// Writes the error to `out`: an invalid policy set with every diagnostic and its
    /// position, anything else on one `error:` line.
    pub fn render(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        if let StartError::Policies(e) = self {
            crate::render::diagnostics(out, e)?;
            writeln!(out, "error: the policy set is invalid; nothing was started")
        } else {
            writeln!(out, "error: {self}")
        }
    }
}

fn now() -> DateTime<Utc> {
    Utc::now()
}

/// `t` as the store and the decision log write times: RFC 3339, UTC, milliseconds (so that
/// times compare as text).
pub fn rfc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The decision log's line types, by what a line reports.
pub const LOG_TYPES: &[&str] = &["decision", "step", "escalation", "source", "host"];

/// A decision-log line with the fields every line has: `time` (now, unless it has one),
/// `level` (`error` for a failure of Keel's own, `warn` for a source failing, a warning, a
/// step not ok or a wait, else `info`) and `type` (one of [`LOG_TYPES`]: a decision or what
/// happens to it before its runbook, a runbook step, an escalation's delivery, a source's
/// health, the host itself). A line that is not an object is wrapped as `{"message": …}`.
pub fn stamp(v: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    let mut m = match v {
        Value::Object(m) => m.clone(),
        other => {
            let mut m = serde_json::Map::new();
            m.insert("message".into(), other.clone());
            m
        }
    };
    let has = |k: &str| m.contains_key(k);
    let kind = if has("outbox") || has("escalation") {
        "escalation"
    } else if has("step") || has("log") {
        // A `log` step's own line is a step's output.
        "step"
    } else if has("source") {
        "source"
    } else if has("decision") || has("held") || has("released") || has("decision_id") {
        "decision"
    } else {
        "host"
    };
    debug_assert!(LOG_TYPES.contains(&kind));
    let outcome = m.get("outcome").and_then(Value::as_str).unwrap_or("ok");
    let level = if has("error") && kind != "source" {
        "error"
    } else if has("error")
        || has("warning")
        || has("waiting")
        || !(outcome == "ok" || outcome == "planned" || outcome.starts_with("skipped"))
    {
        "warn"
    } else {
        "info"
    };
    if !has("time") {
        m.insert("time".into(), Value::from(rfc(now())));
    }
    m.entry("level").or_insert_with(|| Value::from(level));
    m.entry("type").or_insert_with(|| Value::from(kind));
    Value::Object(m)
}

/// `decision_id`: a stable hash of the event and its status (`status_of(ev)`), so a replay
/// finds the same id.
fn decision_id(ev: &Event, status: &str) -> String {
    store::decision_key(&ev.id, status)
}

/// The first `bytes` bytes (at most 32) of the SHA-256 of `text`, in lowercase hex: the
/// stable ids and keys of decisions, steps and outbox entries.
pub fn short_hash(text: &str, bytes: usize) -> String {
    let d = Sha256::digest(text.as_bytes());
    hex::encode(&d[..bytes.min(d.len())])
}

/// Whether `ev` is a maintenance event that completed or was canceled.
fn finished(ev: &Event) -> bool {
    ev.maintenance
        .as_ref()
        .is_some_and(|m| matches!(m.status.as_str(), "completed" | "canceled"))
}

pub(crate) fn status_of(ev: &Event) -> String {
    ev.maintenance
        .as_ref()
        .map(|m| m.status.as_str().to_string())
        .or_else(|| ev.health.as_ref().map(|h| h.state.as_str().to_string()))
        .unwrap_or_else(|| "-".into())
}

/// The correlation history as it was before a restart: the events and decisions of the
/// history's retention, replayed from the store in order. Without it a restart would forget,
/// for example, that a VM was drained for the maintenance that now shows as Started, and
/// drain it a second time as unannounced.
fn rebuild_history(store: &Store) -> Result<History, StoreError> {
    let mut h = History::new();
    let clock = now();
    let since = clock - chrono::Duration::seconds(keel_engine::history::DEFAULT_RETENTION_S);
    for (ev, d) in store.decisions_since(&rfc(since), keel_engine::history::DEFAULT_MAX_EVENTS)? {
        let (Ok(ev), Ok(d)) = (
            serde_json::from_str::<Event>(&ev),
            serde_json::from_str::<Decision>(&d),
        ) else {
            continue;
        };
        h.record_at(&ev, clock);
        h.record_decision_at(&ev, &d, clock);
    }
    Ok(h)
}

/// The one HTTP client of the host (sources, the managed identity, `arm`, `http` and `azure_ack`
/// steps, the outbox): no proxy, and no redirect followed. A 3xx is returned as it is, so that
/// a redirected PUT never becomes a GET that "succeeds" and no token or request body follows
/// a `Location` to another place; each caller treats it as the failure it is.
pub fn http_client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

/// Loads the configuration's policy set (with its plugin cache, when plugins are built in):
/// its `policies` directory, else the embedded library.
pub fn load_policies(cfg: &Config) -> Result<Engine, keel_engine::LoadError> {
    let b = match &cfg.policies {
        Some(dir) => Engine::builder().add_path(dir),
        None => crate::library::builder(),
    };
    let b = b.guards(cfg.guards.clone());
    #[cfg(feature = "plugins")]
    let b = b.plugin_cache_dir(Some(cfg.plugin_cache.clone()));
    b.build()
}

impl Host {
    /// Loads the policies and the state and builds the host.
    pub fn new(cfg: Config, log: Box<dyn std::io::Write + Send>) -> Result<Arc<Host>, StartError> {
        // Before anything beside the state is touched (the plugin cache, the database): a
        // second host on it stops here.
        let state_lock = match cfg.postgres {
            Some(_) => None,
            None => Some(lock::acquire(&cfg.state)?),
        };
        let engine = load_policies(&cfg)?;
        let store = Store::open_config(&cfg)?;
        // A fleet's hosts judge leases by one clock, the database's.
        store.use_database_clock();
        store.checkpoint_in_background()?;
        // This process alone inserts into the state file (it holds the lock).
        store.track_keys();
        let nstate = match store.normalizer_state()? {
            Some(json) => serde_json::from_str(&json).unwrap_or_default(),
            None => NormalizerState::default(),
        };
        // The cursor first: a decision committed in between is read twice (counted once
        // more, never missed).
        let fleet_seq = store.with(|db| db.fleet_cursor())?;
        let history = rebuild_history(&store)?;
        let http = http_client()?;
        let identity = identity::TokenClient::new(http.clone(), cfg.azure_identity.clone());
        // A fleet's hosts hold leases under their identity there; one host under `self`.
        let holder_name = store
            .fleet_identity()
            .map(str::to_string)
            .or_else(|| cfg.self_name.clone());
        let host = Arc::new(Host {
            drain_slots: Arc::new(tokio::sync::Semaphore::new(cfg.limits.concurrent_drains)),
            runbook_slots: Arc::new(tokio::sync::Semaphore::new(cfg.limits.concurrent_runbooks)),
            cfg,
            learned_self: std::sync::OnceLock::new(),
            engine: RwLock::new(Arc::new(engine)),
            store,
            identity,
            blockers: blocker::Blockers::default(),
            http,
            metrics: Metrics::default(),
            health: Health::default(),
            holder: budget::new_holder(holder_name.as_deref()),
            leases: Mutex::new((std::collections::BTreeSet::new(), None)),
            running: Arc::default(),
            reserved: Arc::default(),
            history: Mutex::new(history),
            fleet_seq: std::sync::atomic::AtomicI64::new(fleet_seq),
            nstate: Mutex::new(nstate),
            log: Mutex::new(log),
            _lock: state_lock,
        });
        host.metrics.policy_set(host.engine().digest());
        host.log_plugin_warnings();
        Ok(host)
    }

    /// This VM's name as the platform lists it: `self`, else what the Scheduled Events
    /// source learned from IMDS before its first read ([`Host::learn_self`]).
    pub fn self_name(&self) -> Option<&str> {
        self.cfg
            .self_name
            .as_deref()
            .or_else(|| self.learned_self.get().map(String::as_str))
    }

    /// Records this VM's name learned from IMDS (the first one learned stays).
    pub fn learn_self(&self, name: String) {
        let _ = self.learned_self.set(name);
    }

    /// Logs why the plugin cache, or entries of it, were not used by the policy set in use
    /// (the plugins were compiled instead).
    pub fn log_plugin_warnings(&self) {
        #[cfg(feature = "plugins")]
        for w in self.engine().plugin_warnings() {
            self.log_line(&serde_json::json!({
                "time": rfc(now()), "warning": escape(&w),
            }));
        }
    }

    /// The steps of the runbook of `d` for `ev`: its action's; when `ev` is a maintenance
    /// event that completed or was canceled, first the uncordon of each node a `kubernetes`
    /// step may have cordoned for it (the step says whether Keel did: capacity comes back
    /// before anything else of the runbook, which may fail).
    pub fn steps_for(&self, ev: &Event, d: &Decision) -> Vec<Step> {
        let uncordons = if finished(ev) {
            &self.cfg.uncordons[..]
        } else {
            &[]
        };
        let action = self
            .cfg
            .runbooks
            .get(&d.action)
            .map_or(&[][..], Vec::as_slice);
        uncordons.iter().chain(action).cloned().collect()
    }

    /// How many steps [`Host::steps_for`] gives, without copying them (every decision asks).
    fn step_count(&self, ev: &Event, d: &Decision) -> usize {
        let uncordons = if finished(ev) {
            self.cfg.uncordons.len()
        } else {
            0
        };
        uncordons + self.cfg.runbooks.get(&d.action).map_or(0, Vec::len)
    }

    /// The policy set in use.
    pub fn engine(&self) -> Arc<Engine> {
        match self.engine.read() {
            Ok(e) => e.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Replaces the policy set (decisions in flight finish with the old one).
    pub fn set_engine(&self, engine: Engine) {
        self.metrics.policy_set(engine.digest());
        let new = Arc::new(engine);
        match self.engine.write() {
            Ok(mut e) => *e = new,
            Err(p) => *p.into_inner() = new,
        }
    }

    /// Writes one JSON line to the decision log (untrusted strings are JSON-escaped), with
    /// its `time`, `level` and `type` ([`stamp`]).
    pub fn log_line(&self, v: &serde_json::Value) {
        let v = stamp(v);
        if let Ok(mut w) = self.log.lock() {
            let _ = writeln!(w, "{v}");
            let _ = w.flush();
        }
    }

    /// Writes serialized JSON lines to the decision log in one write (standard output is
    /// line-buffered: a write per line would be a system call per line), flushed once.
    fn log_lines(&self, lines: &[LogLine]) {
        if lines.is_empty() {
            return;
        }
        let mut all = String::new();
        for line in lines {
            line.write_to(&mut all);
            all.push('\n');
        }
        if let Ok(mut w) = self.log.lock() {
            let _ = w.write_all(all.as_bytes());
            let _ = w.flush();
        }
    }

    /// Records a success of a source's channel: sets
    /// `keel_source_last_success_timestamp_seconds{source}` when no channel of the source is
    /// failing, and logs a recovery.
    pub fn source_ok(&self, source: &'static str, channel: &'static str) {
        let (change, whole) = self.health.ok(source, channel);
        if whole {
            self.metrics.set_now(
                "keel_source_last_success_timestamp_seconds",
                &[("source", source)],
            );
        }
        if change == Change::Recovered {
            self.log_line(&serde_json::json!({
                "time": rfc(now()), "source": source, "channel": channel, "recovered": true,
            }));
        }
    }

    /// Records a failure of a source's channel: counts `keel_source_errors_total{source}`,
    /// and logs the first failure of a streak (escaped).
    pub fn source_failed(&self, source: &'static str, channel: &'static str, why: &str) {
        self.metrics
            .add("keel_source_errors_total", &[("source", source)], 1.0);
        let why = escape(why);
        if self.health.failed(source, channel, &why) == Change::StartedFailing {
            self.log_line(&serde_json::json!({
                "time": rfc(now()), "source": source, "channel": channel, "error": why,
            }));
        }
    }

    /// Normalizes a payload and decides every event it yields, inside the batch `db`; the
    /// runbooks to run and the log lines go to `fx` (released when the batch commits). The
    /// normalizer's error (escaped) otherwise.
    fn handle(self: &Arc<Self>, db: &Db<'_>, p: Payload, fx: &mut Effects) -> Result<(), String> {
        let events = {
            let Ok(mut st) = self.nstate.lock() else {
                return Err("normalizer state lock poisoned".into());
            };
            if let Err(e) = Self::apply_approvals(db, &mut st) {
                fx.failed.get_or_insert(e);
                return Ok(());
            }
            let mut input = Input::new(&p.bytes, p.observed_at);
            if let Some(me) = self.self_name() {
                input = input.self_name(me);
            }
            match normalize(p.normalizer, &input, &mut st) {
                Ok(evs) => evs,
                // The source counts and logs it (once per streak of failures).
                Err(e) => return Err(escape(&e.to_string())),
            }
        };
        for ev in events {
            match self.decide(db, &ev, p.observed_at, None, None, fx) {
                Ok(Some(r)) => {
                    if r.pending {
                        fx.work.push((r.decision_id, ev, r.decision));
                    }
                }
                Ok(None) => {}
                // Nothing of this batch may stick: `process` rolls it all back.
                Err(e) => {
                    fx.failed.get_or_insert(e);
                    break;
                }
            }
        }
        Ok(())
    }

    /// Decides an event not seen before in its status, and records it with its decision (and,
    /// for an ingest body, its key) atomically inside the batch `db`. `Ok(None)`: seen
    /// before, nothing done. `ev_json`: the event's redacted JSON when it was written before
    /// the batch (an ingest body's, on arrival: [`sources::ingest::Normalized`]); it must be
    /// what [`keel_engine::redact::to_redacted_string`] makes of `ev`.
    fn decide(
        self: &Arc<Self>,
        db: &Db<'_>,
        ev: &Event,
        at: DateTime<Utc>,
        ingest: Option<IngestRecord<'_>>,
        ev_json: Option<String>,
        fx: &mut Effects,
    ) -> Result<Option<Recorded>, StoreError> {
        let status = status_of(ev);
        let id = decision_id(ev, &status);
        // A budget's members are learned from the platform's own signals: not from ingest
        // bodies, nor from a deferral decided again (its first decision noted what it could,
        // and an ingested one's must not be noted now).
        let learns_members = ingest.is_none() && !ev.id.contains(REDECIDED);
        // A stateless source (AWS IMDS) re-reads the same notice every poll: decide it once,
        // and keep the correlation history free of repeats.
        if db.seen_as(&id, &ev.id, &status)? {
            return Ok(None);
        }
        let started = std::time::Instant::now();
        let engine = self.engine();
        let decision = {
            let Ok(mut h) = self.history.lock() else {
                return Err(StoreError::Poisoned);
            };
            h.record_at(ev, at);
            let d = engine.decide(ev, &Ctx::new(at).with_history(&h));
            h.record_decision_at(ev, &d, at);
            d
        };
        self.metrics
            .observe("keel_decide_seconds", &[], started.elapsed().as_secs_f64());
        let at_s = rfc(at);
        let mode = if self.cfg.dry_run { "dry_run" } else { "live" };
        let steps = self.step_count(ev, &decision);
        let runbook = if steps == 0 {
            "done"
        } else if self.cfg.dry_run {
            "planned"
        } else {
            "pending"
        };
        // What leaves memory (the store, the decision log) has its secrets redacted
        // (`keel_engine::redact`); the runbook gets the event and decision unredacted.
        let ev_json = match ev_json {
            Some(j) => {
                debug_assert_eq!(
                    Some(&j),
                    keel_engine::redact::to_redacted_string(ev).ok().as_ref(),
                    "an event's JSON written ahead is not the event's"
                );
                j
            }
            None => keel_engine::redact::to_redacted_string(ev).unwrap_or_default(),
        };
        let d_json = keel_engine::redact::to_redacted_string(&decision).unwrap_or_default();
        // New escalations go to the outbox with the decision (never in dry-run: no effects).
        let entries = if self.cfg.dry_run {
            Vec::new()
        } else {
            outbox::decision_entries(&id, ev, &decision)
        };
        let outbox_rows: Vec<NewOutbox<'_>> = entries
            .iter()
            .map(|(k, body)| NewOutbox {
                key: k,
                decision_id: &id,
                body,
            })
            .collect();
        crate::failpoint::hit(crate::failpoint::DECISION_BEFORE_RECORD, None);
        let new = db.record(&NewDecision {
            event_id: &ev.id,
            status: &status,
            now: &at_s,
            normalizer_state: None,
            decision_id: &id,
            mode,
            policy_set: engine.digest(),
            action: decision.action.as_str(),
            event_json: &ev_json,
            decision_json: &d_json,
            runbook,
            ingest,
            outbox: &outbox_rows,
        })?;
        if !new {
            return Ok(None);
        }
        // An ingest client could otherwise name made-up members into a group, widening a
        // `max_in_flight` given as a share of it.
        if learns_members {
            self.note_budget_members(db, ev, &at_s)?;
        }
        if let (Action::Defer, Some(due)) = (decision.action, decision.due) {
            db.defer(&ev.id, &rfc(due), &ev_json)?;
        }
        fx.recorded += 1;
        self.metrics.add(
            "keel_events_total",
            &[("source", ev.source.as_str()), ("kind", ev.kind.as_str())],
            1.0,
        );
        let policy = decision.policy.clone().unwrap_or_else(|| "-".into());
        self.metrics.add(
            "keel_decisions_total",
            &[("action", decision.action.as_str()), ("policy", &policy)],
            1.0,
        );
        // The decision line reuses the decision's JSON serialized for the store.
        fx.logs.push(LogLine::Decision {
            at: at_s,
            id: id.clone(),
            event_id: ev.id.clone(),
            mode,
            digest: engine.digest().to_string(),
            json: d_json,
        });
        if let Some(g) = &decision.guard {
            self.metrics.add(
                "keel_guard_holds_total",
                &[
                    ("guard", g.name.as_str()),
                    ("held_action", g.held_action.as_str()),
                ],
                1.0,
            );
        }
        for e in decision.escalations.iter().filter(|e| !e.repeat) {
            self.metrics.add(
                "keel_escalations_total",
                &[
                    ("policy", &e.policy),
                    ("severity", &format!("{:?}", e.severity).to_lowercase()),
                ],
                1.0,
            );
        }
        if self.cfg.dry_run {
            for (i, s) in self.steps_for(ev, &decision).iter().enumerate() {
                fx.logs.push(LogLine::Text(
                    stamp(&serde_json::json!({
                        "decision_id": id, "step": s.name, "index": i, "attempt": 1,
                        "idempotency_key": steps::step_key(&id, i, &s.name), "outcome": "planned",
                    }))
                    .to_string(),
                ));
            }
        }
        Ok(Some(Recorded {
            decision_id: id,
            decision,
            pending: runbook == "pending",
        }))
    }

    /// The normalizer state as JSON, to save with a batch.
    fn state_json(&self) -> String {
        self.nstate
            .lock()
            .ok()
            .and_then(|st| serde_json::to_string(&*st).ok())
            .unwrap_or_else(|| "{}".into())
    }

    /// Group commit: normalizes and decides every message of `msgs` in one transaction,
    /// saves the normalizer state once, and once the transaction is on the disk answers the
    /// sources and the ingest clients and writes the decision log. Returns the runbooks to
    /// start. When the commit fails, nothing of the batch happened: the sources are told
    /// (they back off and read again) and ingest clients get 500.
    #[cfg(test)]
    pub fn process(self: &Arc<Self>, msgs: Vec<Inbox>) -> Vec<Work> {
        let c = self.commit(msgs);
        self.deliver(c).work
    }

    /// [`Host::commit_more`] with nothing more.
    #[cfg(test)]
    pub fn commit(self: &Arc<Self>, msgs: Vec<Inbox>) -> Committed {
        self.commit_more(msgs, |_| {})
    }

    /// The first half of [`Host::process`]: decides and commits the batch without waiting for
    /// the disk ([`Store::batch_unsynced`]), so that the next batch can be decided while
    /// this one's log is synced. Its answers, decision-log lines and runbooks are held in the
    /// returned [`Committed`] until [`Host::deliver`]. A batch that fails is answered here.
    /// In a fleet, once the batch holds the fleet's write lock, what `more` adds to `msgs`
    /// joins it (what arrived while the lock was awaited: under contention each hold of the
    /// lock then decides more).
    pub fn commit_more(
        self: &Arc<Self>,
        mut msgs: Vec<Inbox>,
        mut more: impl FnMut(&mut Vec<Inbox>),
    ) -> Committed {
        let mut fx = Effects::default();
        let mut answers = Vec::with_capacity(msgs.len());
        // What the normalizers knew before the batch: restored if it rolls back (a document
        // read again must yield its events again), and compared with after it (an unchanged
        // state is not written).
        let before = self.nstate.lock().ok().map(|st| st.clone());
        // In a fleet, what can be done before taking the fleet's write lock is: the
        // batch holds it from its first statement to its commit, and the other hosts wait.
        // The ingest bodies are normalized, what they will look up gathered (read in one
        // round trip, `Db::prefetch`), and the other hosts' decisions so far recorded (the
        // batch then reads only those committed since).
        let mut want = store::Prefetch::default();
        let mut ahead: Vec<Option<sources::ingest::Normalized>> = msgs
            .iter_mut()
            .map(|m| match m {
                Inbox::Ingest(_, _, arrived) => arrived.take(),
                Inbox::Poll(..) => None,
            })
            .collect();
        let snapshot = if self.store.is_fleet() {
            self.nstate
                .lock()
                .ok()
                .map(|st| Arc::new(st.azure_arm.clone()))
        } else {
            None
        };
        if let Some(snapshot) = &snapshot {
            for (m, pre) in msgs.iter().zip(ahead.iter_mut()) {
                if let Inbox::Ingest(p, ..) = m {
                    *pre = self.normalize_ahead(p, pre.take(), snapshot, &mut want);
                }
            }
            // A failure here is the batch's to report: it reads the same again.
            let _ = self.store.with(|db| self.sync_fleet(db));
        }
        let res = self.store.batch_unsynced(|db| {
            self.sync_fleet(db)?;
            if let Some(snapshot) = &snapshot {
                // The lock is held from the first statement's answer (`sync_fleet`'s).
                let had = msgs.len();
                more(&mut msgs);
                for m in msgs.iter_mut().skip(had) {
                    let pre = match m {
                        Inbox::Ingest(p, _, arrived) => {
                            self.normalize_ahead(p, arrived.take(), snapshot, &mut want)
                        }
                        Inbox::Poll(..) => None,
                    };
                    ahead.push(pre);
                }
            }
            db.prefetch(&want)?;
            for (i, m) in msgs.drain(..).enumerate() {
                match m {
                    Inbox::Poll(p, ack) => {
                        let r = self.handle(db, p, &mut fx);
                        answers.push(Answer::Poll(ack, r));
                    }
                    Inbox::Ingest(p, reply, _) => {
                        let pre = ahead.get_mut(i).and_then(Option::take);
                        let r = self.ingest(db, &p, pre, &mut fx);
                        answers.push(Answer::Ingest(reply, r));
                    }
                }
            }
            if let Some(e) = fx.failed.take() {
                return Err(e);
            }
            let changed = match (&before, self.nstate.lock()) {
                (Some(b), Ok(now)) => *b != *now,
                _ => true,
            };
            if changed {
                db.save_normalizer_state(&self.state_json())?;
            }
            Ok(())
        });
        match res {
            Ok(((), unsynced)) => {
                // The scan for orphaned runbooks must not start these while the batch waits
                // for the disk and the run loop: reserved until they are started, or dropped.
                let reserved = Reserved::new(&self.reserved, &fx.work);
                Committed {
                    unsynced,
                    answers,
                    logs: fx.logs,
                    work: fx.work,
                    recorded: fx.recorded,
                    reserved,
                }
            }
            Err(e) => {
                let why = escape(&e.to_string());
                self.log_line(&serde_json::json!({"time": rfc(now()), "error": why}));
                self.roll_back(before);
                fail_answers(answers, &why);
                // A batch that could not begin (the database busy, the store broken)
                // handled none of its messages: they fail alike.
                fail_answers(
                    msgs.into_iter().map(|m| match m {
                        Inbox::Poll(_, ack) => Answer::Poll(ack, Ok(())),
                        Inbox::Ingest(_, reply, _) => Answer::Ingest(reply, IngestReply::default()),
                    }),
                    &why,
                );
                Committed::default()
            }
        }
    }

    /// The second half of [`Host::process`]: waits until `c`'s batch is on the disk
    /// ([`Store::sync`]), then writes its decision-log lines, answers its sources and
    /// ingest clients, and returns its runbooks. Batches must be delivered in the order they
    /// were committed. If the disk cannot be synced, the batch is answered as failed (500)
    /// and the store refuses everything after it.
    pub fn deliver(&self, c: Committed) -> Delivered {
        if let Err(e) = self.store.sync(c.unsynced) {
            let why = escape(&e.to_string());
            self.log_line(&serde_json::json!({"time": rfc(now()), "error": why}));
            fail_answers(c.answers, &why);
            return Delivered::default();
        }
        if c.recorded > 0 {
            crate::failpoint::hit(crate::failpoint::DECISION_AFTER_RECORD, None);
        }
        self.log_lines(&c.logs);
        for a in c.answers {
            match a {
                Answer::Poll(ack, r) => {
                    let _ = ack.send(r);
                }
                Answer::Ingest(reply, r) => {
                    let _ = reply.send(r);
                }
            }
        }
        Delivered {
            work: c.work,
            reserved: c.reserved,
        }
    }

    /// Marks in the normalizer state the Scheduled Events the store has approved (StartRequests
    /// sent, or possibly sent), so that their disappearance is never read as a cancellation.
    /// The store is the truth: the mark survives a restart and a batch rolled back.
    fn apply_approvals(db: &Db<'_>, st: &mut NormalizerState) -> Result<(), StoreError> {
        let se = &mut st.azure_scheduled_events;
        let unmarked: Vec<String> = se
            .events
            .values()
            .filter(|t| !t.approved)
            .filter_map(|t| t.event.maintenance.as_ref()?.vendor_id.clone())
            .collect();
        for vid in unmarked {
            if db.approved(&vid)? {
                se.mark_approved(&vid);
            }
        }
        Ok(())
    }

    /// Decides again every deferral that is due: taking it and recording the new decision
    /// are one transaction, so a crash between them loses nothing.
    pub fn due_deferrals(self: &Arc<Self>) -> Vec<Work> {
        let mut fx = Effects::default();
        let at = now();
        let res = self.store.batch(|db| {
            self.sync_fleet(db)?;
            for (_, json) in db.take_due(&rfc(at))? {
                let Ok(mut ev) = serde_json::from_str::<Event>(&json) else {
                    continue;
                };
                // A re-decision is a new decision for the same event: mark it so the store
                // keeps both (the original id, once: a deferral deferred again keeps it).
                ev.id = redecision_id(&ev.id, at);
                if let Some(r) = self.decide(db, &ev, at, None, None, &mut fx)? {
                    if r.pending {
                        fx.work.push((r.decision_id, ev, r.decision));
                    }
                }
            }
            Ok(())
        });
        match res {
            Ok(()) => {
                self.log_lines(&fx.logs);
                fx.work
            }
            Err(e) => {
                self.log_line(&serde_json::json!({"time": rfc(now()), "error": e.to_string()}));
                self.roll_back(None);
                Vec::new()
            }
        }
    }

    /// In a fleet, inside a batch (which holds the fleet's write lock): records in the
    /// correlation history the decisions other hosts committed since the last look, so that
    /// `history.*`, the storm guard and the retry budget count the whole fleet's events, and
    /// an escalation one host raised is not raised again by another.
    fn sync_fleet(&self, db: &Db<'_>) -> Result<(), StoreError> {
        if !self.store.is_fleet() {
            return Ok(());
        }
        loop {
            let after = self.fleet_seq.load(Ordering::Relaxed);
            let rows = db.fleet_decisions(after, 1024)?;
            let Some(last) = rows.last().map(|r| r.0) else {
                return Ok(());
            };
            let Ok(mut h) = self.history.lock() else {
                return Err(StoreError::Poisoned);
            };
            let clock = now();
            for (ev, d) in rows.iter().filter_map(|r| r.1.as_ref()) {
                if let (Ok(ev), Ok(d)) = (
                    serde_json::from_str::<Event>(ev),
                    serde_json::from_str::<Decision>(d),
                ) {
                    h.record_at(&ev, clock);
                    h.record_decision_at(&ev, &d, clock);
                }
            }
            self.fleet_seq.store(last, Ordering::Relaxed);
            if rows.len() < 1024 {
                return Ok(());
            }
        }
    }

    /// After a batch rolled back: the normalizer state as it was before it (when given), and
    /// the correlation history as the store has it (the batch recorded events in memory).
    fn roll_back(&self, nstate: Option<NormalizerState>) {
        if let (Some(before), Ok(mut st)) = (nstate, self.nstate.lock()) {
            *st = before;
        }
        if let Ok(seq) = self.store.with(|db| db.fleet_cursor()) {
            self.fleet_seq
                .store(seq, std::sync::atomic::Ordering::Relaxed);
        }
        if let (Ok(h), Ok(mut cur)) = (rebuild_history(&self.store), self.history.lock()) {
            *cur = h;
        }
    }
}

/// The id of a deferred event decided again at `at`: the original id (once, however often it
/// was deferred) and the time.
fn redecision_id(id: &str, at: DateTime<Utc>) -> String {
    let original = id.split_once(REDECIDED).map_or(id, |(o, _)| o);
    format!("{original}{REDECIDED}{}", rfc(at))
}

/// What marks the id of a deferred event decided again ([`redecision_id`]).
const REDECIDED: &str = "#deferred@";

/// Deletes finished history older than `retention`, at start and every `gc_interval`
/// ([`Store::gc`]: pending work is never collected), counting the rows in
/// `keel_gc_rows_total`.
async fn collect_garbage(host: Arc<Host>, mut stop: watch::Receiver<bool>) {
    // An interval adds its period to an instant at every tick: a huge `gc_interval` saturates.
    let mut tick = tokio::time::interval(host.cfg.gc_interval.min(backoff::FAR_FUTURE));
    loop {
        tokio::select! {
            _ = stop.changed() => if *stop.borrow() { return },
            _ = tick.tick() => {}
        }
        let Ok(retention) = chrono::Duration::from_std(host.cfg.retention) else {
            continue;
        };
        let Some(before) = now().checked_sub_signed(retention) else {
            continue;
        };
        // Off the runtime: the deletes hold the database's write lock while they run.
        let h = host.clone();
        let res = tokio::task::spawn_blocking(move || h.store.gc(&rfc(before)))
            .await
            .unwrap_or_else(|_| Err(StoreError::Poisoned));
        match res {
            Ok(n) if n.total() > 0 => {
                host.metrics
                    .add("keel_gc_rows_total", &[], n.total() as f64);
                host.log_line(&serde_json::json!({
                    "time": rfc(now()), "gc": {
                        "before": rfc(before), "decisions": n.decisions, "steps": n.steps,
                        "outbox": n.outbox,
                        "ingest_keys": n.ingest_keys, "attempts": n.attempts,
                        "approvals": n.approvals,
                    },
                }));
            }
            Ok(_) => {}
            Err(e) => host.log_line(&serde_json::json!({
                "time": rfc(now()), "gc": {"error": e.to_string()},
            })),
        }
    }
}

/// Starts the runbook of one decision. A runbook other than a drain first waits for one of
/// `limits.concurrent_runbooks` slots (a drain waits for its own, `limits.concurrent_drains`,
/// in [`steps::run_runbook`]).
fn spawn_runbook(runbooks: &mut tokio::task::JoinSet<()>, host: &Arc<Host>, work: Work) {
    // In the running set until its task ends, however it ends.
    let running = Reserved::new(&host.running, std::slice::from_ref(&work));
    let (id, ev, d) = work;
    let host = host.clone();
    runbooks.spawn(async move {
        let _running = running;
        let _slot = if d.action == Action::Drain {
            None
        } else {
            host.runbook_slots.clone().acquire_owned().await.ok()
        };
        steps::run_runbook(host, id, ev, d).await;
    });
}

/// Logs that a pending runbook nobody ran is started again.
fn h_log_orphan(host: &Host, decision_id: &str) {
    host.log_line(&serde_json::json!({
        "time": rfc(now()), "decision_id": decision_id,
        "resumed": "a pending runbook no task ran (stopped on a store error) starts again",
    }));
}

/// How often the host looks for its pending runbooks that no task runs.
const ORPHAN_SCAN: Duration = Duration::from_secs(30);

impl Host {
    /// This host's decisions whose runbook is pending in the store but runs nowhere in this
    /// process: one stopped because the store could not be asked (its gate, a hold), or a
    /// batch whose commit landed although its answer was lost with the connection. Their
    /// runbooks start again; the steps' records keep every effect to once.
    fn orphans(&self) -> Vec<Work> {
        let Ok(pending) = self.store.pending() else {
            return Vec::new();
        };
        let Ok(mut running) = self.running.lock().map(|r| r.clone()) else {
            return Vec::new();
        };
        match self.reserved.lock() {
            Ok(r) => running.extend(r.iter().cloned()),
            Err(_) => return Vec::new(),
        }
        pending
            .into_iter()
            .filter(|p| !running.contains(&p.decision_id))
            .filter_map(|p| {
                let ev = serde_json::from_str::<Event>(&p.event_json).ok()?;
                let d = serde_json::from_str::<Decision>(&p.decision_json).ok()?;
                Some((p.decision_id, ev, d))
            })
            .collect()
    }
}

/// What the run loop hands the deciding thread: a batch, the deferrals due, the orphans.
type Job = Box<dyn FnOnce() + Send>;

/// The thread that decides and commits (`keel-decide`), one job at a time, in the order the
/// run loop sends them. Its own thread rather than one of the blocking pool's: deciding may
/// call plugins until their deadlines and the commit waits for the disk, and neither may hold
/// a worker of the runtime (which serves `/healthz`, ingest, the timers and the drain
/// deadlines); and one long-lived thread keeps its caches warm and is easy to find (`top -H`,
/// `perf`) where the pool's threads took turns.
struct Decider {
    jobs: std::sync::mpsc::Sender<Job>,
    thread: std::thread::JoinHandle<()>,
}

impl Decider {
    /// Starts the thread, inside the runtime of the caller (a job may spawn on it).
    fn start() -> std::io::Result<Decider> {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let rt = tokio::runtime::Handle::current();
        let thread = std::thread::Builder::new()
            .name("keel-decide".into())
            .spawn(move || {
                let _rt = rt.enter();
                // Each job catches its own panic ([`off_runtime`]): the thread goes on.
                for job in queue {
                    job();
                }
            })?;
        Ok(Decider { jobs, thread })
    }

    /// Ends the thread once its queue is done.
    fn stop(self) {
        drop(self.jobs);
        let _ = self.thread.join();
    }
}

/// What a panic's payload says (a `panic!`'s message), for the log.
fn panicked(payload: &(dyn std::any::Any + Send)) -> String {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string());
    format!("it panicked: {what}")
}

/// How long the deciding thread goes on with the batches that arrived while it decided one,
/// before it hands back to the run loop (which starts runbooks and checks the held decisions
/// and the deferrals due).
const KEEP_DECIDING: Duration = Duration::from_millis(25);

/// The run loop's queues: polled payloads and ingest bodies. The run loop waits on them;
/// the deciding thread takes what else is waiting, polled payloads first.
struct Queues {
    polls: tokio::sync::Mutex<mpsc::Receiver<Inbox>>,
    ingest: tokio::sync::Mutex<mpsc::Receiver<Inbox>>,
}

impl Queues {
    /// Adds to `msgs` what is waiting, up to `max` messages in all, without waiting.
    fn gather(&self, msgs: &mut Vec<Inbox>, max: usize) {
        for q in [&self.polls, &self.ingest] {
            // Only the run loop's wait holds them, and it does not wait while this runs.
            let Ok(mut q) = q.try_lock() else { continue };
            while msgs.len() < max {
                match q.try_recv() {
                    Ok(m) => msgs.push(m),
                    Err(_) => break,
                }
            }
        }
    }
}

/// Runs a batch (or the deferrals due) on the deciding thread ([`Decider`]); a panic in it is
/// caught there and logged here with its message.
async fn off_runtime(
    decider: &Decider,
    host: &Arc<Host>,
    f: impl FnOnce(&Arc<Host>) -> Vec<Work> + Send + 'static,
) -> Vec<Work> {
    let h = host.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&h)));
        let _ = tx.send(done.map_err(|p| panicked(p.as_ref())));
    });
    let res = match decider.jobs.send(job) {
        Ok(()) => rx
            .await
            .unwrap_or_else(|_| Err("its answer was dropped".to_string())),
        Err(_) => Err("the deciding thread is gone".to_string()),
    };
    match res {
        Ok(work) => work,
        Err(e) => {
            host.log_line(&serde_json::json!({
                "time": rfc(now()), "error": format!("the run loop's batch failed: {e}"),
            }));
            Vec::new()
        }
    }
}

/// Runs the host until `stop` turns true: sources, decisions, runbooks, the metrics, health
/// and ingest endpoints. Pending runbooks from before a restart are resumed first. A source
/// that fails backs off and is reported; it never stops the other sources or the loop.
///
/// Batches are decided and committed on the deciding thread ([`Decider`]), one at a time, in
/// arrival order;
/// polled payloads and ingest bodies have separate queues, so that a flood of ingest bodies
/// (answered 503 once `sources.ingest.queue` is full) never delays the platform's notices.
pub async fn run(host: Arc<Host>, mut stop: watch::Receiver<bool>) -> Result<(), StartError> {
    let (tx, rx) = mpsc::channel::<Inbox>(host.cfg.commit_batch_max.max(64));
    let queue = host.cfg.ingest.as_ref().map_or(1, |i| i.queue);
    let (itx, irx) = mpsc::channel::<Inbox>(queue);
    let queues = Arc::new(Queues {
        polls: tokio::sync::Mutex::new(rx),
        ingest: tokio::sync::Mutex::new(irx),
    });
    let mut tasks = tokio::task::JoinSet::new();
    let listen = |source| StartError::Listen {
        addr: host.cfg.listen,
        source,
    };
    let listener = tokio::net::TcpListener::bind(host.cfg.listen)
        .await
        .map_err(listen)?;
    let local = listener.local_addr().map_err(listen)?;
    host.log_line(&serde_json::json!({"time": rfc(now()), "listen": local.to_string()}));
    if let Some(se) = host.cfg.azure_scheduled_events.clone() {
        host.health.register(sources::SE, "poll");
        tasks.spawn(sources::poll_scheduled_events(
            host.clone(),
            se,
            tx.clone(),
            stop.clone(),
        ));
    }
    if let Some(aws) = host.cfg.aws_imds.clone() {
        host.health.register(sources::aws_imds::SOURCE, "poll");
        tasks.spawn(sources::aws_imds::poll(
            host.clone(),
            aws,
            tx.clone(),
            stop.clone(),
        ));
    }
    if let Some(gcp) = host.cfg.gcp_metadata.clone() {
        for key in sources::gcp_metadata::KEYS {
            host.health.register(sources::gcp_metadata::SOURCE, key);
            tasks.spawn(sources::gcp_metadata::watch(
                host.clone(),
                gcp.clone(),
                key,
                tx.clone(),
                stop.clone(),
            ));
        }
    }
    if let Some(mv1) = host.cfg.azure_maintenance_v1.clone() {
        host.health
            .register(sources::azure_maintenance_v1::SOURCE, "poll");
        tasks.spawn(sources::azure_maintenance_v1::poll(
            host.clone(),
            mv1,
            tx.clone(),
            stop.clone(),
        ));
    }
    if let Some(rh) = host.cfg.azure_resource_health.clone() {
        host.health
            .register(sources::azure_resource_health::SOURCE, "poll");
        tasks.spawn(sources::azure_resource_health::poll(
            host.clone(),
            rh,
            tx.clone(),
            stop.clone(),
        ));
    }
    for f in host.cfg.files.clone() {
        // One health channel per file, named by its path (a few, fixed at start).
        let channel: &'static str = Box::leak(f.display().into_boxed_str());
        host.health.register(sources::files::SOURCE, channel);
        tasks.spawn(sources::files::read(
            host.clone(),
            f,
            channel,
            tx.clone(),
            stop.clone(),
        ));
    }
    let inbox = host.cfg.ingest.is_some().then_some(itx);
    if inbox.is_some() {
        // The endpoint is up as soon as the listener is bound.
        host.health.register(sources::ingest::SOURCE, "endpoint");
        host.source_ok(sources::ingest::SOURCE, "endpoint");
    }
    drop(tx);
    for b in host.cfg.blockers.clone() {
        tasks.spawn(blocker::watch(host.clone(), b, stop.clone()));
    }
    tasks.spawn(outbox::deliver(host.clone(), stop.clone()));
    tasks.spawn(collect_garbage(host.clone(), stop.clone()));
    tasks.spawn(reload::watch(
        host.clone(),
        host.cfg.reload_interval,
        stop.clone(),
    ));
    tasks.spawn(sources::serve_http(
        host.clone(),
        listener,
        inbox,
        stop.clone(),
    ));
    let mut runbooks = tokio::task::JoinSet::new();
    for p in host.store.pending()? {
        let (Ok(ev), Ok(d)) = (
            serde_json::from_str::<Event>(&p.event_json),
            serde_json::from_str::<Decision>(&p.decision_json),
        ) else {
            continue;
        };
        spawn_runbook(&mut runbooks, &host, (p.decision_id, ev, d));
    }
    // The listener is bound and every source started: ready for the service manager.
    notify::notify_or_warn("READY=1");
    let watchdog = notify::watchdog_interval();
    let mut petted = std::time::Instant::now();
    let mut scanned = std::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let (mut polls_open, mut ingest_open) = (true, true);
    // Batches are committed one at a time, then handed to the `keel-sync` thread, which
    // waits for each to be on the disk (one sync for all it finds waiting) and delivers it
    // (`Host::deliver`: the decision log, the answers, the runbooks sent back here), while
    // the next batch is decided. At most `IN_SYNC` batches wait for the disk at once: the
    // sync thread shares two cores with the HTTP threads and the deciding thread, and with
    // room for 2 the deciding thread often waited for it (4 against 2, then 8 against 4:
    // 1.04x the ingest rate each, in turns); a power loss takes at most these batches, none
    // of them answered.
    const IN_SYNC: usize = 8;
    let (to_sync, synced) = std::sync::mpsc::sync_channel::<Committed>(IN_SYNC);
    let (delivered, mut runbooks_rx) = mpsc::unbounded_channel::<Delivered>();
    let decider = Decider::start().map_err(StartError::Thread)?;
    // How many delivered batches' runbooks wait for this loop to start them.
    let waiting = Arc::new(AtomicUsize::new(0));
    let syncer = {
        let host = host.clone();
        let waiting = waiting.clone();
        std::thread::Builder::new()
            .name("keel-sync".into())
            .spawn(move || {
                for c in synced {
                    let d = host.deliver(c);
                    if !d.work.is_empty() {
                        waiting.fetch_add(1, Ordering::SeqCst);
                        let _ = delivered.send(d);
                    }
                }
            })
            .map_err(StartError::Thread)?
    };
    loop {
        let first = tokio::select! {
            _ = stop.changed() => {
                if *stop.borrow() { break; }
                continue;
            }
            Some(d) = runbooks_rx.recv() => {
                waiting.fetch_sub(1, Ordering::SeqCst);
                // Started (running) before their reservation is dropped.
                let Delivered { work, reserved } = d;
                for w in work {
                    spawn_runbook(&mut runbooks, &host, w);
                }
                drop(reserved);
                continue;
            }
            m = async { queues.polls.lock().await.recv().await }, if polls_open => {
                m.or_else(|| { polls_open = false; None })
            }
            m = async { queues.ingest.lock().await.recv().await }, if ingest_open => {
                m.or_else(|| { ingest_open = false; None })
            }
            _ = tick.tick() => {
                let due = |h: &Arc<Host>| {
                    let mut work = h.check_held();
                    work.extend(h.due_deferrals());
                    work
                };
                for w in off_runtime(&decider, &host, due).await {
                    spawn_runbook(&mut runbooks, &host, w);
                }
                if scanned.elapsed() >= ORPHAN_SCAN {
                    scanned = std::time::Instant::now();
                    for w in off_runtime(&decider, &host, |h| h.orphans()).await {
                        h_log_orphan(&host, &w.0);
                        spawn_runbook(&mut runbooks, &host, w);
                    }
                }
                // The run loop turns: tell the watchdog (sent from here, not from a task of
                // its own, so that a stuck loop is what it notices).
                if watchdog.is_some_and(|every| petted.elapsed() >= every) {
                    notify::notify_or_warn("WATCHDOG=1");
                    petted = std::time::Instant::now();
                }
                continue;
            }
            Some(_) = runbooks.join_next(), if !runbooks.is_empty() => continue,
        };
        let Some(m) = first else {
            if polls_open || ingest_open {
                continue;
            }
            break;
        };
        // Group commit: whatever else is already waiting joins this message's transaction
        // (one fsync for all of them); polled payloads first.
        let mut msgs = vec![m];
        queues.gather(&mut msgs, host.cfg.commit_batch_max);
        let to_sync = to_sync.clone();
        let (queues, stop, waiting) = (queues.clone(), stop.clone(), waiting.clone());
        // The deciding thread goes on with what arrived meanwhile (without waiting for this
        // loop's turn among the runtime's tasks), for at most `KEEP_DECIDING`, and hands
        // back as soon as runbooks wait to start or the host stops.
        let commit = move |h: &Arc<Host>| {
            let since = std::time::Instant::now();
            let mut msgs = msgs;
            loop {
                h.metrics.add("keel_commit_batches_total", &[], 1.0);
                if let Err(std::sync::mpsc::SendError(c)) =
                    to_sync.send(h.commit_more(msgs, |m| queues.gather(m, h.cfg.commit_batch_max)))
                {
                    // The syncing thread is gone (it panicked): deliver here.
                    return h.deliver(c).work;
                }
                if since.elapsed() >= KEEP_DECIDING
                    || waiting.load(Ordering::SeqCst) > 0
                    || *stop.borrow()
                {
                    return Vec::new();
                }
                msgs = Vec::new();
                queues.gather(&mut msgs, h.cfg.commit_batch_max);
                if msgs.is_empty() {
                    return Vec::new();
                }
            }
        };
        for w in off_runtime(&decider, &host, commit).await {
            spawn_runbook(&mut runbooks, &host, w);
        }
    }
    // Every committed batch is delivered before the host stops (its clients answered, its
    // decision-log lines written); its runbooks stay `pending` for the next start.
    let _ = tokio::task::spawn_blocking(move || decider.stop()).await;
    drop(to_sync);
    let _ = tokio::task::spawn_blocking(move || syncer.join()).await;
    // The runbooks of the batches delivered since the loop last looked (all of them, when the
    // sources ended: a replay) start as any other, and get the grace below.
    while let Ok(Delivered { work, reserved }) = runbooks_rx.try_recv() {
        for w in work {
            spawn_runbook(&mut runbooks, &host, w);
        }
        drop(reserved);
    }
    // Graceful shutdown: in-flight runbooks get a moment to finish; the rest stay `pending`
    // in the store and resume at the next start.
    notify::notify_or_warn("STOPPING=1");
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while runbooks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
    Ok(())
}

#[cfg(test)]
mod tests;
