//! Blockers (`blockers:` in `keel.yaml`): checks that hold the actions they name while they
//! are not clear. Each blocker is checked by its own task every `interval` ([`watch`]), and
//! the last result is kept in [`Blockers`]; a gate reads it ([`Host::blocker_verdict`]) and
//! never waits for a check.
//!
//! | check | clear when | blocked when |
//! | --- | --- | --- |
//! | `exec: [argv]` | it exits with status 0 | any other status, a signal, it cannot start, or it runs past `timeout` (then its process group is killed) |
//! | `http: URL` | `GET` answers 2xx | any other status (a redirect is not followed), no answer, past `timeout` |
//! | `prometheus: {url, query}` | `GET {url}/api/v1/query?query=…` answers `"status": "success"` with an empty `data.result` | a non-empty result, an error answer, a body that is not that JSON or larger than 1 MiB, past `timeout` |
//!
//! Fail safe: a blocker not checked yet, or whose last result is older than twice its
//! interval plus its timeout (its task is stuck), counts as blocked. An `exec` check runs
//! with a cleared environment (only the names of `steps::EXEC_ENV_ALLOWLIST`): no event data
//! reaches it, nor Keel's secrets. The reasons are escaped; `keel_blocker_blocked{blocker}` is
//! 1 while a blocker counts as blocked, else 0.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use keel_engine::{escape, Action, Decision, Event};
use tokio::sync::watch;

use super::gate::Verdict;
use super::{rfc, Host};
use crate::config::{Blocker, BlockerCheck};

/// The most of a Prometheus answer read.
pub const MAX_BODY: usize = 1024 * 1024;

/// The last result of one blocker's check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// `None`: clear; else why it is blocked (escaped).
    pub blocked: Option<String>,
    /// When the check finished.
    pub checked_at: DateTime<Utc>,
}

/// The blockers' last results, by name: shared by their tasks and the gate.
#[derive(Debug, Default)]
pub struct Blockers {
    last: Mutex<HashMap<String, Observed>>,
}

impl Blockers {
    /// Records the result of a check of `name`; returns the one before it.
    pub fn record(&self, name: &str, o: Observed) -> Option<Observed> {
        match self.last.lock() {
            Ok(mut m) => m.insert(name.to_string(), o),
            Err(p) => p.into_inner().insert(name.to_string(), o),
        }
    }

    /// The last result of a check of `name`, if any.
    pub fn last(&self, name: &str) -> Option<Observed> {
        match self.last.lock() {
            Ok(m) => m.get(name).cloned(),
            Err(p) => p.into_inner().get(name).cloned(),
        }
    }

    /// Why `b` counts as blocked at `now` (escaped), or `None` when it is clear: not checked
    /// yet, or last checked too long ago, is blocked.
    pub fn blocked(&self, b: &Blocker, now: DateTime<Utc>) -> Option<String> {
        let Some(o) = self.last(&b.name) else {
            return Some("not checked yet".into());
        };
        let limit = stale_after(b);
        let stale = chrono::Duration::from_std(limit)
            .ok()
            .and_then(|d| o.checked_at.checked_add_signed(d))
            .is_some_and(|limit| limit < now);
        if stale {
            return Some(format!(
                "last checked at {}, more than {}s ago",
                rfc(o.checked_at),
                limit.as_secs()
            ));
        }
        o.blocked
    }
}

impl Blocker {
    /// Whether the blocker applies to `action` on `ev` (its actions and scope).
    pub fn applies(&self, action: Action, ev: &Event) -> bool {
        self.actions.contains(&action) && self.scope.matches(ev)
    }
}

/// The blockers' verdict on `action` for `ev` at `now`: held by the first blocker (in the
/// configuration's order) that applies and counts as blocked.
pub fn verdict(
    blockers: &[Blocker],
    state: &Blockers,
    ev: &Event,
    action: Action,
    now: DateTime<Utc>,
) -> Verdict {
    for b in blockers.iter().filter(|b| b.applies(action, ev)) {
        if let Some(why) = state.blocked(b, now) {
            return Verdict::Hold {
                by: "blocker",
                scope: b.name.clone(),
                reason: format!("held: blocker {}: {why}", b.name),
            };
        }
    }
    Verdict::Pass
}

/// Runs one check of `b`: `Ok` when clear, else why it is blocked (not escaped yet).
pub async fn check(http: &reqwest::Client, b: &Blocker) -> Result<(), String> {
    let run = async {
        match &b.check {
            BlockerCheck::Exec(argv) => exec(argv).await,
            BlockerCheck::Http(url) => get(http, url).await,
            BlockerCheck::Prometheus { url, query } => prometheus(http, url, query).await,
        }
    };
    match tokio::time::timeout(b.timeout, run).await {
        Ok(r) => r,
        Err(_) => Err(format!("no result within {:?}", b.timeout)),
    }
}

/// Kills a process group when dropped, unless disarmed (the child exited by itself).
struct KillGroup(Option<i32>);

impl Drop for KillGroup {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some(pgid) = self.0.filter(|p| *p > 1) {
            // ESRCH: the group is gone already.
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pgid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// An `exec` check: clear on exit status 0. Dropped before the program exits (its timeout,
/// a shutdown), its whole process group is killed.
async fn exec(argv: &[String]) -> Result<(), String> {
    let Some((prog, args)) = argv.split_first() else {
        return Err("empty argv".into());
    };
    let mut cmd = tokio::process::Command::new(prog);
    cmd.args(args).env_clear();
    for name in super::steps::EXEC_ENV_ALLOWLIST {
        if let Some(value) = std::env::var_os(name) {
            cmd.env(name, value);
        }
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    #[cfg(unix)]
    cmd.process_group(0);
    let mut child = cmd.spawn().map_err(|e| format!("cannot run {prog}: {e}"))?;
    // Declared after the child: dropped first, while the child is not reaped yet (its group
    // id cannot have been reused).
    let mut group = KillGroup(child.id().and_then(|id| i32::try_from(id).ok()));
    let status = child.wait().await;
    group.0 = None;
    let status = status.map_err(|e| format!("lost {prog}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{prog} exited with {status}"))
    }
}

/// An `http` check: clear on a 2xx answer. The URL is not repeated in the reason (it may
/// carry credentials).
async fn get(http: &reqwest::Client, url: &str) -> Result<(), String> {
    let r = http
        .get(url)
        .send()
        .await
        .map_err(|e| format!("GET failed: {}", e.without_url()))?;
    let s = r.status();
    if s.is_success() {
        Ok(())
    } else {
        Err(format!("GET answered {s}"))
    }
}

/// Reads at most [`MAX_BODY`] bytes of a body.
async fn read_max(mut r: reqwest::Response) -> Result<Vec<u8>, String> {
    if r.content_length().is_some_and(|n| n > MAX_BODY as u64) {
        return Err(format!("answer larger than {MAX_BODY} bytes"));
    }
    let mut out = Vec::new();
    while let Some(chunk) = r
        .chunk()
        .await
        .map_err(|e| format!("reading the answer failed: {}", e.without_url()))?
    {
        if out.len() + chunk.len() > MAX_BODY {
            return Err(format!("answer larger than {MAX_BODY} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// A `prometheus` check: clear when the instant query's result is empty.
async fn prometheus(http: &reqwest::Client, url: &str, query: &str) -> Result<(), String> {
    let r = http
        .get(format!("{url}/api/v1/query"))
        .query(&[("query", query)])
        .send()
        .await
        .map_err(|e| format!("query failed: {}", e.without_url()))?;
    let status = r.status();
    let body = read_max(r).await?;
    let v: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| format!("answer ({status}) is not JSON: {e}"))?;
    if !status.is_success() || v.get("status").and_then(|s| s.as_str()) != Some("success") {
        let error: String = v
            .get("error")
            .and_then(|e| e.as_str())
            .unwrap_or("no error given")
            .chars()
            .take(200)
            .collect();
        return Err(format!("query failed ({status}): {error}"));
    }
    match v.pointer("/data/result") {
        Some(serde_json::Value::Array(a)) if a.is_empty() => Ok(()),
        Some(serde_json::Value::Array(a)) => Err(format!("the query returned {} series", a.len())),
        _ => Err("the answer has no data.result list".into()),
    }
}

/// Checks `b` every `interval` until `stop` turns true, recording each result in
/// `host.blockers` ([`Host::observe_blocker`]).
pub async fn watch(host: Arc<Host>, b: Blocker, mut stop: watch::Receiver<bool>) {
    host.metrics
        .set("keel_blocker_blocked", &[("blocker", &b.name)], 1.0);
    let mut tick = tokio::time::interval(b.interval.min(super::backoff::FAR_FUTURE));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = stop.changed() => if r.is_err() || *stop.borrow() { return },
            _ = tick.tick() => {}
        }
        let res = tokio::select! {
            r = stop.changed() => if r.is_err() || *stop.borrow() { return } else { continue },
            res = check(&host.http, &b) => res,
        };
        host.observe_blocker(&b.name, res, Utc::now());
    }
}

/// How old a blocker's last result may be before it counts as blocked (stale): twice its
/// interval plus its timeout.
pub fn stale_after(b: &Blocker) -> Duration {
    b.interval.saturating_mul(2).saturating_add(b.timeout)
}

impl Host {
    /// Records the result of a check of blocker `name` at `now` (its reason escaped), sets
    /// `keel_blocker_blocked{blocker}`, and logs each change (and the first result).
    pub fn observe_blocker(&self, name: &str, res: Result<(), String>, now: DateTime<Utc>) {
        let blocked = res.err().map(|why| escape(&why));
        self.metrics.set(
            "keel_blocker_blocked",
            &[("blocker", name)],
            if blocked.is_some() { 1.0 } else { 0.0 },
        );
        let before = self.blockers.record(
            name,
            Observed {
                blocked: blocked.clone(),
                checked_at: now,
            },
        );
        if before.is_none_or(|b| b.blocked.is_some() != blocked.is_some()) {
            self.log_line(&serde_json::json!({
                "time": rfc(now), "blocker": {
                    "name": name, "blocked": blocked.is_some(), "reason": blocked,
                },
            }));
        }
    }

    /// The blockers' verdict (reads the blockers' last observed state; never blocks).
    ///
    /// [`Verdict::Hold`] while a blocker that applies to the action and event counts as
    /// blocked (not checked yet, stale, or its last check not clear); else
    /// [`Verdict::Pass`]. A blocker that never clears holds until the hold's deadline, where
    /// the held decision escalates. `escalate` and `none` always pass.
    pub(crate) fn blocker_verdict(&self, ev: &Event, d: &Decision, now: DateTime<Utc>) -> Verdict {
        if matches!(d.action, Action::Escalate | Action::None) {
            return Verdict::Pass;
        }
        verdict(&self.cfg.blockers, &self.blockers, ev, d.action, now)
    }
}

#[cfg(test)]
#[path = "blocker_tests.rs"]
mod tests;
