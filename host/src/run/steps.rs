//! Runbooks: the ordered steps of an action, run with timeouts, retries with exponential
//! backoff and jitter, and a record of every execution in the store.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use keel_engine::{escape, Action, Decision, Event};

use super::http::{azure_ack, post_http, StepError};
use super::store::{StepRecord, StoreError};
use super::{rfc, Host};
use crate::config::{Step, StepKind};
use crate::failpoint;

/// The idempotency key of a step of a decision: the same after a restart.
pub fn step_key(decision_id: &str, idx: usize, name: &str) -> String {
    super::short_hash(&format!("{decision_id}\u{1f}{idx}\u{1f}{name}"), 16)
}

pub use keel_engine::runbook_deadline;

/// The time left until `deadline` as a tokio instant (now when it has passed; a century
/// away when the deadline is further than an instant can count).
fn instant_of(deadline: DateTime<Utc>) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    let left = deadline
        .signed_duration_since(Utc::now())
        .to_std()
        .unwrap_or(Duration::ZERO);
    super::backoff::later(now, left)
}

/// Why a step did not run or did not finish: the runbook's deadline passed.
fn missed(deadline: DateTime<Utc>) -> String {
    format!(
        "failed: the runbook missed its deadline ({})",
        rfc(deadline)
    )
}

/// Runs the runbook of `d`'s action for `ev`, step after step; a step runs only when every
/// step before it succeeded. A drain waits for one of `limits.concurrent_drains` slots and
/// must finish by [`runbook_deadline`]; a step that would start, or is still running, past it
/// fails. When the platform cancels the event, the steps not yet started are skipped (no
/// approval of a canceled event). A failed runbook escalates (in the decision log and the
/// outbox).
pub async fn run_runbook(host: Arc<Host>, decision_id: String, ev: Event, d: Decision) {
    let steps = host.steps_for(&ev, &d);
    let decided_at = host
        .store
        .decided_at(&decision_id)
        .ok()
        .flatten()
        .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
        .map_or_else(Utc::now, |t| t.with_timezone(&Utc));
    let deadline = runbook_deadline(&ev, &d, decided_at);
    // A drain holds a slot for its whole runbook; waiting for one counts against the deadline.
    let _slot = if d.action == Action::Drain && !steps.is_empty() {
        let wait = host.drain_slots.clone().acquire_owned();
        let got = match deadline {
            Some(dl) => tokio::time::timeout_at(instant_of(dl), wait)
                .await
                .ok()
                .and_then(Result::ok),
            None => wait.await.ok(),
        };
        if got.is_none() {
            host.log_line(&serde_json::json!({
                "decision_id": decision_id,
                "waiting": "no drain slot was free before the runbook's deadline",
            }));
        }
        got
    } else {
        None
    };
    let mut ok = true;
    let mut canceled = false;
    // Whether a step was skipped for it: a runbook whose steps had all run before the
    // platform withdrew the event (e.g. resumed after a crash once the event ended) is done.
    let mut skipped = false;
    let mut pause_checked = false;
    for (idx, step) in steps.iter().enumerate() {
        let key = step_key(&decision_id, idx, &step.name);
        if !canceled && was_canceled(&host, &ev) {
            canceled = true;
            host.log_line(&serde_json::json!({
                "decision_id": decision_id, "event_id": ev.id,
                "canceled": "the platform canceled the event; the remaining steps are skipped",
            }));
        }
        // The gate (pause, window, blocker, budget) holds a runbook before its first effect,
        // never in the middle of them.
        // An uncordon gives capacity back: no gate holds it, nor a cancellation.
        let uncordon = is_uncordon(step);
        if !canceled && !pause_checked && !matches!(step.kind, StepKind::Log) && !uncordon {
            pause_checked = true;
            // The gate reads the store (pauses, leases): with a fleet's database away, wait
            // for it rather than pass a gate nobody could ask.
            if let Err(e) =
                until_reachable(&host, &decision_id, || host.store.step_begun(&key)).await
            {
                // Fail closed: a gate nobody could ask is not passed. The runbook stays
                // pending (resumed at the next start).
                host.log_line(&serde_json::json!({
                    "time": rfc(Utc::now()), "decision_id": decision_id,
                    "error": e.to_string(), "stopped": "the gate could not be asked",
                }));
                return;
            }
            if host.hold_if_gated(&key, &decision_id, &ev, &d, decided_at) {
                return;
            }
        }
        let record = match until_reachable(&host, &decision_id, || {
            host.store.begin_step(
                &key,
                &decision_id,
                idx,
                &step.name,
                step.idempotent,
                &rfc(Utc::now()),
            )
        })
        .await
        {
            Ok(r) => r,
            Err(e) => {
                host.log_line(&serde_json::json!({"decision_id": decision_id, "step": step.name, "error": e.to_string()}));
                ok = false;
                break;
            }
        };
        let (outcome, tries) = match record {
            StepRecord::Done(o) => {
                if o == "ok" || o.starts_with("skipped") {
                    continue;
                }
                ok = false;
                break;
            }
            StepRecord::InDoubt if !step.idempotent => {
                // It may have taken effect before the crash: never run it twice.
                ("in_doubt_escalated".to_string(), 0)
            }
            StepRecord::New | StepRecord::InDoubt
                if d.action == keel_engine::Action::Escalate
                    && matches!(step.kind, StepKind::Http { .. }) =>
            {
                // The escalate runbook's webhooks receive the escalations through the outbox
                // (durably, with retries): the decision itself is not sent twice.
                ("skipped: delivered through the outbox".to_string(), 1)
            }
            StepRecord::New | StepRecord::InDoubt if canceled && !uncordon => {
                skipped = true;
                ("skipped: the event was canceled".to_string(), 0)
            }
            StepRecord::New | StepRecord::InDoubt
                if deadline.is_some_and(|dl| Utc::now() >= dl) =>
            {
                (deadline.map(missed).unwrap_or_default(), 0)
            }
            StepRecord::New | StepRecord::InDoubt => {
                failpoint::hit(failpoint::STEP_BEFORE_EFFECT, Some(&step.name));
                let run = attempt(&host, step, &key, &ev, &d, &decision_id);
                let r = match deadline {
                    // A step still running at the deadline is stopped (an `exec` child is
                    // killed) and counts as failed.
                    Some(dl) => tokio::time::timeout_at(instant_of(dl), run)
                        .await
                        .unwrap_or_else(|_| (missed(dl), 1)),
                    None => run.await,
                };
                failpoint::hit(failpoint::STEP_AFTER_EFFECT, Some(&step.name));
                r
            }
        };
        // StartRequests sent: the approval is durable with the step's outcome.
        let approved = (matches!(step.kind, StepKind::AzureAck) && outcome == "ok")
            .then(|| ev.maintenance.as_ref()?.vendor_id.as_deref())
            .flatten()
            .map(|vid| (vid, decision_id.as_str()));
        let _ = until_reachable(&host, &decision_id, || {
            host.store
                .finish_step_approving(&key, &outcome, approved, &rfc(Utc::now()))
        })
        .await;
        host.log_line(&serde_json::json!({
            "decision_id": decision_id, "step": step.name, "index": idx, "attempt": tries,
            "idempotency_key": key, "outcome": outcome,
        }));
        failpoint::hit(failpoint::STEP_AFTER_OUTCOME, Some(&step.name));
        if outcome != "ok" && !outcome.starts_with("skipped") {
            ok = false;
            break;
        }
    }
    let state = match (ok, canceled && skipped) {
        (false, _) => "failed",
        (true, true) => "canceled",
        (true, false) => "done",
    };
    let entry = (!ok && !host.cfg.dry_run)
        .then(|| super::outbox::runbook_failed_entry(&decision_id, &ev, &d));
    let outbox = entry.as_ref().map(|(k, body)| super::store::NewOutbox {
        key: k,
        decision_id: &decision_id,
        body,
    });
    if let Err(e) = until_reachable(&host, &decision_id, || {
        host.store
            .finish_runbook_escalating(&decision_id, state, outbox.as_ref(), &rfc(Utc::now()))
    })
    .await
    {
        host.log_line(&serde_json::json!({"decision_id": decision_id, "error": e.to_string()}));
    }
    // Its budget slots go back (and bake) whatever the outcome.
    host.release_budget(&decision_id);
    if !ok {
        host.metrics.add(
            "keel_runbooks_failed_total",
            &[("action", d.action.as_str())],
            1.0,
        );
        host.log_line(&serde_json::json!({
            "decision_id": decision_id, "escalation": {
                "reason": format!("runbook `{}` failed for event {}", d.action, escape(&ev.id)),
                "severity": "error",
            },
        }));
    }
}

/// Whether the platform withdrew `ev` since it was decided: the store saw it `canceled`, or
/// `ended` (gone from the document while still scheduled: canceled, or run and finished
/// between two polls; either way there is nothing left to approve).
fn was_canceled(host: &Host, ev: &Event) -> bool {
    ev.maintenance.is_some()
        && ["canceled", "ended"]
            .iter()
            .any(|s| host.store.seen(&ev.id, s).unwrap_or(false))
}

/// Whether `step` is the uncordon Keel adds to a maintenance event's completion.
fn is_uncordon(step: &Step) -> bool {
    matches!(
        &step.kind,
        StepKind::Kubernetes(k) if k.op == crate::config::KubeOp::Uncordon
    )
}

fn executor(k: &StepKind) -> &'static str {
    match k {
        StepKind::Exec(_) => "exec",
        StepKind::Http { .. } => "http",
        StepKind::AzureAck => "azure_ack",
        StepKind::Arm { .. } => "arm",
        StepKind::Log => "log",
        StepKind::Kubernetes(_) => "kubernetes",
    }
}

/// Whether a child ended by a signal (killed mid-run) rather than by exiting.
fn killed(status: &std::process::ExitStatus) -> bool {
    #[cfg(unix)]
    {
        std::os::unix::process::ExitStatusExt::signal(status).is_some()
    }
    #[cfg(not(unix))]
    {
        status.code().is_none()
    }
}

/// The outcome of a non-idempotent step whose attempt may have acted: not retried, the
/// runbook escalates.
fn in_doubt_outcome(why: &str) -> String {
    format!("in_doubt_escalated: {why}; the step is not idempotent, so it is not retried")
}

/// Runs a step with its retries: its outcome and how many tries it took (the decision log's
/// `attempt`; a planned step in dry-run shows 1).
async fn attempt(
    host: &Arc<Host>,
    step: &Step,
    key: &str,
    ev: &Event,
    d: &Decision,
    decision_id: &str,
) -> (String, u32) {
    let mut delay = step.backoff;
    let mut last = String::new();
    if matches!(step.kind, StepKind::Arm { .. }) && !host.cfg.dry_run {
        // A retry is resubmitted no earlier than the decision says (Retry-After, backoff).
        tokio::time::sleep(super::arm::wait_for_not_before(d)).await;
    }
    for n in 0..=step.retries {
        let started = std::time::Instant::now();
        let res =
            tokio::time::timeout(step.timeout, once(host, step, key, ev, d, decision_id)).await;
        let took = started.elapsed().as_secs_f64();
        let timed_out = res.is_err();
        let mut retry_after = None;
        let mut permanent = false;
        // A timeout stops an attempt that may already have acted.
        let mut in_doubt = false;
        let mut before_effect = false;
        let outcome = match res {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => {
                retry_after = e.retry_after;
                permanent = e.permanent;
                in_doubt = e.in_doubt;
                before_effect = e.before_effect;
                format!("failed: {}", escape(&e.message))
            }
            Err(_) => {
                in_doubt = true;
                format!("failed: timed out after {:?}", step.timeout)
            }
        };
        let labels = [
            ("executor", executor(&step.kind)),
            (
                "outcome",
                if outcome == "ok" || outcome.starts_with("skipped") {
                    "ok"
                } else {
                    "failed"
                },
            ),
        ];
        host.metrics.add("keel_step_attempts_total", &labels, 1.0);
        host.metrics
            .observe("keel_step_duration_seconds", &labels, took);
        if outcome == "ok" || outcome.starts_with("skipped") {
            return (outcome, n + 1);
        }
        if !step.idempotent && in_doubt {
            // Its effect may have happened: never run it again.
            let why = outcome.strip_prefix("failed: ").unwrap_or(&outcome);
            return (in_doubt_outcome(why), n + 1);
        }
        last = outcome;
        // A non-idempotent step tries again only after a failure that had no effect.
        if permanent || (!step.idempotent && !before_effect) {
            return (last, n + 1);
        }
        if n < step.retries {
            let mut wait = retry_wait(delay, retry_after);
            if matches!(step.kind, StepKind::Exec(_)) && timed_out {
                // The timed-out attempt's process group is being stopped (SIGTERM, SIGKILL
                // after the grace): the next attempt never overlaps one that ignores SIGTERM.
                wait = wait.max(EXEC_KILL_GRACE + Duration::from_millis(250));
            }
            tokio::time::sleep(wait).await;
            delay = delay.saturating_mul(2).min(Duration::from_secs(300));
        }
    }
    (last, step.retries + 1)
}

/// The wait before the next attempt of a step: the backoff `delay` plus up to a quarter of it
/// as jitter, or the server's `Retry-After` (capped) when longer. Saturating: a configured
/// `backoff` near the largest duration waits (practically) forever instead of overflowing.
fn retry_wait(delay: Duration, retry_after: Option<Duration>) -> Duration {
    delay
        .saturating_add(super::backoff::jitter(delay / 4))
        .max(retry_after.map_or(Duration::ZERO, |r| r.min(super::backoff::MAX_RETRY_AFTER)))
}

/// One attempt of one step.
async fn once(
    host: &Arc<Host>,
    step: &Step,
    key: &str,
    ev: &Event,
    d: &Decision,
    decision_id: &str,
) -> Result<String, StepError> {
    match &step.kind {
        StepKind::Log => {
            host.log_line(&serde_json::json!({
                "decision_id": decision_id, "log": format!("{} for {}", d.action, ev.id),
            }));
            Ok("ok".into())
        }
        StepKind::Exec(argv) => run_exec(step, argv, key, ev, d, decision_id).await,
        StepKind::Http { .. } => {
            let body = serde_json::json!({
                "decision_id": decision_id, "idempotency_key": key, "event_id": ev.id,
                "action": d.action, "policy": d.policy, "reason": d.reason, "escalations": d.escalations,
            });
            post_http(host, &step.kind, key, &body)
                .await
                .map(|()| "ok".to_string())
        }
        StepKind::AzureAck => azure_ack(host, ev, decision_id).await,
        #[cfg(feature = "kubernetes")]
        StepKind::Kubernetes(k) => {
            super::kubernetes::run(host, k, step.timeout, ev, d, decision_id).await
        }
        // The configuration refuses the step in a build without the feature.
        #[cfg(not(feature = "kubernetes"))]
        StepKind::Kubernetes(_) => Err(StepError::permanent(
            "this keel was built without the `kubernetes` feature",
        )),
        StepKind::Arm {
            endpoint,
            api_version,
            follow,
            poll_interval,
        } => {
            let follow = follow.then_some(*poll_interval);
            super::arm::resubmit(host, endpoint, api_version, follow, key, ev, d).await
        }
    }
}

/// The variables of Keel's own environment an `exec` child inherits (when set), besides the
/// names in its step's `env`. Everything else is cleared: the ingest token, webhook routing
/// keys and any other secret in Keel's environment never reach a runbook, and neither do
/// Keel's own `KEEL_*` variables (the child's `KEEL_*` are the event's, set by Keel).
pub const EXEC_ENV_ALLOWLIST: &[&str] =
    &["PATH", "HOME", "LANG", "LC_ALL", "TZ", "USER", "LOGNAME"];

/// How long an `exec` step's process group has between SIGTERM and SIGKILL once its
/// attempt timed out or its runbook missed its deadline.
pub const EXEC_KILL_GRACE: Duration = Duration::from_secs(2);

/// Runs an `exec` step's program in its own process group, with a cleared environment: the
/// [`EXEC_ENV_ALLOWLIST`], the step's `env` names and the event's `KEEL_*` variables. When
/// the attempt is dropped before the program exits (its timeout, the runbook's deadline, a
/// shutdown), the whole group is stopped ([`ExecGroup`]).
async fn run_exec(
    step: &Step,
    argv: &[String],
    key: &str,
    ev: &Event,
    d: &Decision,
    decision_id: &str,
) -> Result<String, StepError> {
    let Some((prog, args)) = argv.split_first() else {
        return Err(StepError::permanent("empty argv"));
    };
    let mut cmd = tokio::process::Command::new(prog);
    cmd.args(args).env_clear();
    for name in EXEC_ENV_ALLOWLIST
        .iter()
        .copied()
        .chain(step.env.iter().map(String::as_str))
    {
        if let Some(value) = std::env::var_os(name) {
            cmd.env(name, value);
        }
    }
    cmd.env("KEEL_DECISION_ID", decision_id)
        .env("KEEL_IDEMPOTENCY_KEY", key)
        .env("KEEL_ACTION", d.action.as_str())
        .env("KEEL_EVENT_ID", &ev.id)
        .env("KEEL_EVENT_KIND", ev.kind.as_str())
        .env(
            "KEEL_RESOURCE_NAME",
            ev.resource.name.as_deref().unwrap_or(""),
        )
        .env("KEEL_RESOURCE_ID", ev.resource.id.as_deref().unwrap_or(""))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    if let Some(m) = &ev.maintenance {
        cmd.env("KEEL_MAINTENANCE_TYPE", m.type_.as_str());
        if let Some(nb) = m.not_before {
            cmd.env("KEEL_NOT_BEFORE", nb.to_rfc3339());
        }
    }
    #[cfg(unix)]
    cmd.process_group(0);
    // Not started (not found, not executable): certainly no effect.
    let child = cmd
        .spawn()
        .map_err(|e| StepError::before_effect(format!("cannot run {}: {e}", escape(prog))))?;
    let mut group = ExecGroup::new(child);
    let status = group
        .wait()
        .await
        .map_err(|e| StepError::in_doubt(format!("lost {} while it ran: {e}", escape(prog))))?;
    if status.success() {
        Ok("ok".into())
    } else if killed(&status) {
        // Killed mid-run: what it did is unknown.
        Err(StepError::in_doubt(format!(
            "{} was killed ({status})",
            escape(prog)
        )))
    } else {
        Err(format!("{} exited with {status}", escape(prog)).into())
    }
}

/// An `exec` child, leader of its own process group. Dropped before the child exited (the
/// attempt's timeout or the runbook's deadline dropped the future waiting for it), it sends
/// SIGTERM to the whole group, and, after [`EXEC_KILL_GRACE`], SIGKILL to what is left, then
/// reaps the child. The child is reaped only after the last signal, so the group's id cannot
/// have been reused by then. A child that exited by itself leaves its group alone.
struct ExecGroup {
    child: Option<tokio::process::Child>,
    /// The process group (the child's pid); `None` when unknown.
    pgid: Option<i32>,
}

impl ExecGroup {
    fn new(child: tokio::process::Child) -> ExecGroup {
        let pgid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .filter(|id| *id > 1);
        ExecGroup {
            child: Some(child),
            pgid,
        }
    }

    /// Waits for the child to exit; from then on the group is not touched.
    async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        let Some(child) = self.child.as_mut() else {
            return Err(std::io::Error::other("the child was already waited for"));
        };
        let status = child.wait().await;
        self.child = None;
        status
    }
}

impl Drop for ExecGroup {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let Some(pgid) = self.pgid else {
            let _ = child.start_kill();
            return;
        };
        signal_group(pgid, GroupSignal::Term);
        // If the runtime drops the task (a shutdown), the guard still kills the group.
        let guard = KillGroupOnDrop(pgid);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    tokio::time::sleep(EXEC_KILL_GRACE).await;
                    drop(guard);
                    let _ = child.wait().await;
                });
            }
            Err(_) => {
                drop(guard);
                let _ = child.start_kill();
            }
        }
    }
}

/// Sends SIGKILL to a process group when dropped.
struct KillGroupOnDrop(i32);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        signal_group(self.0, GroupSignal::Kill);
    }
}

#[derive(Clone, Copy)]
enum GroupSignal {
    Term,
    Kill,
}

/// Signals every process of the group `pgid` (never Keel's own: `pgid` > 1 and the child's).
#[cfg(unix)]
fn signal_group(pgid: i32, sig: GroupSignal) {
    use nix::sys::signal::{killpg, Signal};
    let sig = match sig {
        GroupSignal::Term => Signal::SIGTERM,
        GroupSignal::Kill => Signal::SIGKILL,
    };
    if pgid > 1 {
        // ESRCH: the group is gone already.
        let _ = killpg(nix::unistd::Pid::from_raw(pgid), sig);
    }
}

#[cfg(not(unix))]
fn signal_group(_: i32, _: GroupSignal) {}

/// How long a runbook waits for a fleet's database that cannot be reached before it gives up
/// on the write (the runbook then stops as on any store error; `keel run` resumes it at its
/// next start).
const UNREACHABLE_WAIT: Duration = Duration::from_secs(600);

/// Runs a store write of a runbook; while a fleet's database cannot be reached, waits and
/// tries again (every 500 ms, up to [`UNREACHABLE_WAIT`]; the first wait is logged), so that
/// a database restart neither loses a step's record nor runs an effect without one.
async fn until_reachable<T>(
    host: &Host,
    decision_id: &str,
    mut write: impl FnMut() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let until = tokio::time::Instant::now() + UNREACHABLE_WAIT;
    let mut logged = false;
    loop {
        // The write blocks (a connection attempt may take seconds): this worker's other
        // tasks move to another thread meanwhile.
        let r = crate::run::store::blocking(&mut write);
        match r {
            Err(StoreError::Unavailable(why)) if tokio::time::Instant::now() < until => {
                if !logged {
                    logged = true;
                    host.log_line(&serde_json::json!({
                        "time": rfc(Utc::now()), "decision_id": decision_id,
                        "waiting": "the state database cannot be reached",
                        "error": escape(&why),
                    }));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Durations at and near the extremes a configuration (`backoff: 213503982334601d`,
    /// `18446744073709551615s`) or a policy (`deadline_s: 1e300`) can give.
    fn extremes() -> Vec<Duration> {
        vec![
            Duration::ZERO,
            Duration::from_millis(1),
            Duration::from_secs(300),
            Duration::from_secs(100_000_000 * 86_400),
            Duration::from_millis(u64::MAX),
            Duration::from_secs(u64::MAX / 2),
            Duration::from_secs(u64::MAX),
            Duration::MAX,
        ]
    }

    #[test]
    fn the_retry_wait_saturates_for_any_backoff() {
        for d in extremes() {
            for ra in [None, Some(Duration::from_secs(7)), Some(Duration::MAX)] {
                let w = retry_wait(d, ra);
                assert!(w >= d, "{d:?} {ra:?}: {w:?}");
                assert!(w <= d.saturating_add(d / 4).max(Duration::from_secs(300)));
            }
            // The doubling saturates too, and is capped.
            assert!(d.saturating_mul(2).min(Duration::from_secs(300)) <= Duration::from_secs(300));
        }
        assert_eq!(retry_wait(Duration::MAX, None), Duration::MAX);
    }

    #[test]
    fn deadlines_far_away_or_unrepresentable_do_not_panic() {
        let now = Utc::now();
        for dl in [
            DateTime::<Utc>::MAX_UTC,
            DateTime::<Utc>::MIN_UTC,
            now,
            now + chrono::Duration::days(365 * 1000),
        ] {
            let i = instant_of(dl);
            assert!(i >= tokio::time::Instant::now() - Duration::from_secs(1));
        }
        let ev: Event = serde_json::from_value(serde_json::json!({
            "id": "e", "time": "2026-01-01T00:00:00Z", "source": "azure.scheduled_events",
            "kind": "maintenance", "resource": {"name": "vm"},
            "maintenance": {"type": "reboot", "status": "scheduled"},
        }))
        .unwrap_or_else(|e| unreachable!("{e}"));
        for s in [1e300, f64::MAX, 9.3e15, 1e12] {
            let d: Decision = serde_json::from_value(serde_json::json!({
                "event_id": "e", "action": "drain", "params": {"deadline_s": s},
            }))
            .unwrap_or_else(|e| unreachable!("{e}"));
            let got = runbook_deadline(&ev, &d, now);
            assert!(got.is_none_or(|t| t > now), "{s}: {got:?}");
        }
    }
}
