//! The host daemon: sources feed the normalizers, the engine decides, runbooks act, and the
//! state store makes "exactly once" hold across crashes.
//!
//! What "exactly once" means here (DESIGN.md "Host"): each step's start is written with its
//! idempotency key before its effect; after a crash an idempotent step left in doubt runs
//! again with the same key, and a non-idempotent one never runs again and escalates.

pub mod arm;
pub mod backoff;
pub mod health;
pub mod identity;
pub mod metrics;
pub mod outbox;
pub mod reload;
pub mod sources;
pub mod steps;
pub mod store;

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use keel_engine::normalize::{normalize, Input, NormalizerState};
use keel_engine::{escape, Action, Ctx, Decision, Engine, Event, History};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::Config;
use health::{Change, Health};
use metrics::Metrics;
use store::{IngestRecord, NewDecision, NewOutbox, Store, StoreError};

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
    /// A body posted to the ingest endpoint; the loop answers with the HTTP reply.
    Ingest(Payload, oneshot::Sender<IngestReply>),
}

/// The ingest endpoint's answer to one body.
#[derive(Debug, Clone)]
pub struct IngestReply {
    /// The HTTP status: 202 accepted, 200 duplicate (or no failure in the body), 400 bad
    /// body, 500 the state store failed.
    pub status: u16,
    /// The JSON body.
    pub body: serde_json::Value,
}

/// A decision whose runbook must run: its id, the event and the decision.
pub type Work = (String, Event, Decision);

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
    /// Managed-identity tokens (Resource Health, `arm` steps), cached; nothing is requested
    /// until one is needed.
    pub identity: identity::TokenClient,
    history: Mutex<History>,
    nstate: Mutex<NormalizerState>,
    log: Mutex<Box<dyn std::io::Write + Send>>,
}

/// Why the host could not start.
pub type StartError = String;

fn now() -> DateTime<Utc> {
    Utc::now()
}

fn rfc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// `decision_id`: a stable hash of the event and its status, so a replay finds the same id.
fn decision_id(ev: &Event) -> String {
    let status = status_of(ev);
    let d = Sha256::digest(format!("{}\u{1f}{status}", ev.id).as_bytes());
    d[..8].iter().map(|b| format!("{b:02x}")).collect()
}

fn status_of(ev: &Event) -> String {
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
    let since = now() - chrono::Duration::seconds(keel_engine::history::DEFAULT_RETENTION_S);
    for (ev, d) in store.decisions_since(&rfc(since), keel_engine::history::DEFAULT_MAX_EVENTS)? {
        let (Ok(ev), Ok(d)) = (
            serde_json::from_str::<Event>(&ev),
            serde_json::from_str::<Decision>(&d),
        ) else {
            continue;
        };
        h.record(&ev);
        h.record_decision(&ev, &d);
    }
    Ok(h)
}

impl Host {
    /// Loads the policies and the state and builds the host.
    pub fn new(cfg: Config, log: Box<dyn std::io::Write + Send>) -> Result<Arc<Host>, StartError> {
        let engine = Engine::from_dir(&cfg.policies).map_err(|e| e.to_string())?;
        let store = Store::open(&cfg.state).map_err(|e| e.to_string())?;
        let nstate = match store.normalizer_state().map_err(|e| e.to_string())? {
            Some(json) => serde_json::from_str(&json).unwrap_or_default(),
            None => NormalizerState::default(),
        };
        let history = rebuild_history(&store).map_err(|e| e.to_string())?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .map_err(|e| e.to_string())?;
        let identity = identity::TokenClient::new(http.clone(), cfg.azure_identity.clone());
        Ok(Arc::new(Host {
            cfg,
            engine: RwLock::new(Arc::new(engine)),
            store,
            identity,
            http,
            metrics: Metrics::default(),
            health: Health::default(),
            history: Mutex::new(history),
            nstate: Mutex::new(nstate),
            log: Mutex::new(log),
        }))
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
        let new = Arc::new(engine);
        match self.engine.write() {
            Ok(mut e) => *e = new,
            Err(p) => *p.into_inner() = new,
        }
    }

    /// Writes one JSON line to the decision log (untrusted strings are JSON-escaped).
    pub fn log_line(&self, v: &serde_json::Value) {
        if let Ok(mut w) = self.log.lock() {
            let _ = writeln!(w, "{v}");
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

    /// Normalizes a payload and decides every event it yields; returns the decisions whose
    /// runbooks must run, or the normalizer's error (escaped).
    pub fn handle(self: &Arc<Self>, p: Payload) -> Result<Vec<Work>, String> {
        let (events, state_json) = {
            let Ok(mut st) = self.nstate.lock() else {
                return Err("normalizer state lock poisoned".into());
            };
            let mut input = Input::new(&p.bytes, p.observed_at);
            if let Some(me) = &self.cfg.self_name {
                input = input.self_name(me);
            }
            match normalize(p.normalizer, &input, &mut st) {
                Ok(evs) => (evs, serde_json::to_string(&*st).unwrap_or_default()),
                // The source counts and logs it (once per streak of failures).
                Err(e) => return Err(escape(&e.to_string())),
            }
        };
        let mut out = Vec::new();
        let mut recorded = false;
        for ev in events {
            match self.decide(&ev, &state_json, p.observed_at, None) {
                Ok(Some(r)) => {
                    recorded = true;
                    if r.pending {
                        out.push((r.decision_id, ev, r.decision));
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    self.log_line(&serde_json::json!({"time": rfc(now()), "error": e.to_string()}));
                }
            }
        }
        if !recorded {
            let _ = self.store.save_normalizer_state(&state_json);
        }
        Ok(out)
    }

    /// Decides one event (new in this status) and records it with its decision.
    pub fn decide_and_record(
        self: &Arc<Self>,
        ev: &Event,
        state_json: &str,
        at: DateTime<Utc>,
    ) -> Option<Work> {
        match self.decide(ev, state_json, at, None) {
            Ok(Some(r)) => r.pending.then(|| (r.decision_id, ev.clone(), r.decision)),
            Ok(None) => None,
            Err(e) => {
                self.log_line(&serde_json::json!({"time": rfc(now()), "error": e.to_string()}));
                None
            }
        }
    }

    /// Decides an event not seen before in its status, and records it with its decision (and,
    /// for an ingest body, its key) in one transaction. `Ok(None)`: seen before, nothing done.
    fn decide(
        self: &Arc<Self>,
        ev: &Event,
        state_json: &str,
        at: DateTime<Utc>,
        ingest: Option<IngestRecord<'_>>,
    ) -> Result<Option<Recorded>, StoreError> {
        let status = status_of(ev);
        // A stateless source (AWS IMDS) re-reads the same notice every poll: decide it once,
        // and keep the correlation history free of repeats.
        if self.store.seen(&ev.id, &status)? {
            return Ok(None);
        }
        let started = std::time::Instant::now();
        let engine = self.engine();
        let decision = {
            let Ok(mut h) = self.history.lock() else {
                return Err(StoreError::Poisoned);
            };
            h.record(ev);
            let d = engine.decide(ev, &Ctx::new(at).with_history(&h));
            h.record_decision(ev, &d);
            d
        };
        self.metrics.add(
            "keel_decide_seconds_sum",
            &[],
            started.elapsed().as_secs_f64(),
        );
        self.metrics.add("keel_decide_seconds_count", &[], 1.0);
        let id = decision_id(ev);
        let mode = if self.cfg.dry_run { "dry_run" } else { "live" };
        let steps = self.cfg.runbooks.get(&decision.action).map_or(0, Vec::len);
        let runbook = if steps == 0 {
            "done"
        } else if self.cfg.dry_run {
            "planned"
        } else {
            "pending"
        };
        let ev_json = serde_json::to_string(ev).unwrap_or_default();
        let d_json = serde_json::to_string(&decision).unwrap_or_default();
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
        let new = self.store.record(&NewDecision {
            event_id: &ev.id,
            status: &status,
            now: &rfc(at),
            normalizer_state: state_json,
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
        crate::failpoint::hit(crate::failpoint::DECISION_AFTER_RECORD, None);
        if !new {
            return Ok(None);
        }
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
        self.log_line(&serde_json::json!({
            "decision_id": id, "time": rfc(at), "event_id": ev.id, "mode": mode,
            "policy_set_digest": engine.digest(), "decision": decision,
        }));
        if let (Action::Defer, Some(due)) = (decision.action, decision.due) {
            let _ = self.store.defer(&ev.id, &rfc(due), &ev_json);
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
            for (i, s) in self
                .cfg
                .runbooks
                .get(&decision.action)
                .into_iter()
                .flatten()
                .enumerate()
            {
                self.log_line(&serde_json::json!({
                    "decision_id": id, "step": s.name, "index": i, "attempt": 1,
                    "idempotency_key": steps::step_key(&id, i, &s.name), "outcome": "planned",
                }));
            }
        }
        Ok(Some(Recorded {
            decision_id: id,
            decision,
            pending: runbook == "pending",
        }))
    }

    /// Records that StartRequests was sent for `event_id`.
    pub fn mark_approved(&self, event_id: &str) {
        if let Ok(mut st) = self.nstate.lock() {
            st.azure_scheduled_events.mark_approved(event_id);
        }
    }

    /// Decides again every deferral that is due.
    pub fn due_deferrals(self: &Arc<Self>) -> Vec<Work> {
        let mut out = Vec::new();
        let Ok(due) = self.store.take_due(&rfc(now())) else {
            return out;
        };
        if due.is_empty() {
            return out;
        }
        // The record keeps the normalizer state as it is (a deferral changes none of it).
        let state_json = self
            .nstate
            .lock()
            .ok()
            .and_then(|st| serde_json::to_string(&*st).ok())
            .unwrap_or_else(|| "{}".into());
        for (_, json) in due {
            let Ok(mut ev) = serde_json::from_str::<Event>(&json) else {
                continue;
            };
            // A re-decision is a new decision for the same event: mark it so the store keeps both.
            ev.id = format!("{}#deferred@{}", ev.id, rfc(now()));
            if let Some(d) = self.decide_and_record(&ev, &state_json, now()) {
                out.push(d);
            }
        }
        out
    }
}

/// Runs the host until `stop` turns true: sources, decisions, runbooks, the metrics, health
/// and ingest endpoints. Pending runbooks from before a restart are resumed first. A source
/// that fails backs off and is reported; it never stops the other sources or the loop.
pub async fn run(host: Arc<Host>, mut stop: watch::Receiver<bool>) -> Result<(), StartError> {
    let (tx, mut rx) = mpsc::channel::<Inbox>(64);
    let mut tasks = tokio::task::JoinSet::new();
    let listener = tokio::net::TcpListener::bind(host.cfg.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", host.cfg.listen))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot listen on {}: {e}", host.cfg.listen))?;
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
    let inbox = host.cfg.ingest.is_some().then(|| tx.clone());
    if inbox.is_some() {
        // The endpoint is up as soon as the listener is bound.
        host.health.register(sources::ingest::SOURCE, "endpoint");
        host.source_ok(sources::ingest::SOURCE, "endpoint");
    }
    drop(tx);
    tasks.spawn(outbox::deliver(host.clone(), stop.clone()));
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
    for p in host.store.pending().map_err(|e| e.to_string())? {
        let (Ok(ev), Ok(d)) = (
            serde_json::from_str::<Event>(&p.event_json),
            serde_json::from_str::<Decision>(&p.decision_json),
        ) else {
            continue;
        };
        runbooks.spawn(steps::run_runbook(host.clone(), p.decision_id, ev, d));
    }
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = stop.changed() => {
                if *stop.borrow() { break; }
            }
            m = rx.recv() => {
                let Some(m) = m else { break };
                let work = match m {
                    Inbox::Poll(p, ack) => {
                        let res = host.handle(p);
                        let (work, answer) = match res {
                            Ok(w) => (w, Ok(())),
                            Err(e) => (Vec::new(), Err(e)),
                        };
                        let _ = ack.send(answer);
                        work
                    }
                    Inbox::Ingest(p, reply) => {
                        let (answer, work) = host.ingest(&p);
                        let _ = reply.send(answer);
                        work
                    }
                };
                for (id, ev, d) in work {
                    runbooks.spawn(steps::run_runbook(host.clone(), id, ev, d));
                }
            }
            _ = tick.tick() => {
                for (id, ev, d) in host.due_deferrals() {
                    runbooks.spawn(steps::run_runbook(host.clone(), id, ev, d));
                }
            }
            Some(_) = runbooks.join_next(), if !runbooks.is_empty() => {}
        }
    }
    // Graceful shutdown: in-flight runbooks get a moment to finish; the rest stay `pending`
    // in the store and resume at the next start.
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while runbooks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
    Ok(())
}
