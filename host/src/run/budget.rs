//! Concurrency budgets (`budgets:` in `keel.yaml`), as leases. The model (keys, units,
//! admission and its reasons, deadlines) is the engine's [`keel_engine::budget`], shared with
//! `keel test`; this module keeps the leases in the state database.
//!
//! A budget groups events by its `key` (a CEL expression: an availability set, a zone, a
//! tag) and lets at most `max_in_flight` units of a group run an action it names at once; a
//! unit is what `per` evaluates to (an update domain: the VMs of one update domain share a
//! slot), or the resource. A runbook takes its slots before its first effect (after pauses,
//! windows and blockers let it) and gives them back when it ends, on every path; a slot then
//! stays taken for the budget's `bake` time. A slot is a lease in the state database: its
//! holder (`<host>#<random>`, new at each start) renews it while the runbook runs, and a
//! holder that dies frees it when the lease expires (`lease_ttl`). A decision that finds a
//! budget full is held, with the reason, until a slot frees or its deadline passes (it then
//! escalates).
//!
//! An event whose key does not evaluate (a field it does not carry) falls in the group `?`:
//! unknown events share one group rather than escape the budget. One whose `per` does not
//! evaluate is its own unit (its resource), as without `per`.

use chrono::Utc;
use keel_engine::{Decision, Event};

use super::gate::Verdict;
use super::store::{Db, LeaseWant, StoreError};
use super::{rfc, Host};
use crate::config::Budget;

pub use keel_engine::budget::{admit, health_of, key_and_unit};

/// A new holder identity: `<name>#<8 random hex digits>` (`name`: this host's `self`, else
/// `keel`).
pub fn new_holder(name: Option<&str>) -> String {
    let mut b = [0u8; 4];
    // Without randomness the time stands in: holders only need to differ between starts.
    if getrandom::fill(&mut b).is_err() {
        let t = Utc::now().timestamp_subsec_nanos().to_le_bytes();
        b = t;
    }
    format!("{}#{}", name.unwrap_or("keel"), hex::encode(b))
}

impl Host {
    /// Records `ev`'s unit as a member of each budget's group (its observed size) with the
    /// health the event reports, inside the batch `db` that records the event.
    pub fn note_budget_members(
        &self,
        db: &Db<'_>,
        ev: &Event,
        now: &str,
    ) -> Result<(), StoreError> {
        let healthy = health_of(ev);
        for b in &self.cfg.budgets {
            let (key, unit) = key_and_unit(b, ev);
            db.note_member(&b.name, &key, &unit, healthy, now)?;
        }
        Ok(())
    }

    /// The budgets' verdict for `d` on `ev`: takes every slot it needs (all or none) and
    /// passes, or holds with the first full budget's reason. The leases last the longest
    /// `lease_ttl` of the budgets taken, renewed while the runbook runs.
    pub(crate) fn budget_verdict(&self, decision_id: &str, ev: &Event, d: &Decision) -> Verdict {
        self.take_slots(decision_id, ev, d, false)
    }

    fn take_slots(&self, decision_id: &str, ev: &Event, d: &Decision, force: bool) -> Verdict {
        let budgets: Vec<&Budget> = self
            .cfg
            .budgets
            .iter()
            .filter(|b| b.actions.contains(&d.action))
            .collect();
        if budgets.is_empty() {
            return Verdict::Pass;
        }
        let keyed: Vec<(&Budget, String, String)> = budgets
            .iter()
            .map(|b| {
                let (k, u) = key_and_unit(b, ev);
                (*b, k, u)
            })
            .collect();
        let wants: Vec<LeaseWant<'_>> = keyed
            .iter()
            .map(|(b, k, u)| LeaseWant {
                budget: &b.name,
                key: k,
                unit: u,
                bake_s: b.bake_s,
                max_in_flight: i64::from(b.max_in_flight.of(b.group_size.unwrap_or(1))),
            })
            .collect();
        let ttl = keyed
            .iter()
            .map(|(b, _, _)| b.lease_ttl_s)
            .max()
            .unwrap_or(60);
        let stamps = || {
            let now = Utc::now();
            (rfc(now), rfc(now + chrono::Duration::seconds(ttl)))
        };
        let res =
            self.store
                .acquire_leases(decision_id, &wants, &self.holder, stamps, |w, view| {
                    let b = keyed.iter().find(|(b, _, _)| b.name == w.budget);
                    match b {
                        Some((b, k, u)) if !force => admit(b, k, u, view),
                        _ => Ok(()),
                    }
                });
        match res {
            Ok(Ok(())) => {
                self.leased(decision_id, true);
                self.metrics.add("keel_budget_leases_total", &[], 1.0);
                Verdict::Pass
            }
            Ok(Err(no)) => Verdict::Hold {
                by: "budget",
                scope: format!("{}/{}", no.budget, no.key),
                reason: format!("held: {}", no.reason),
            },
            // A store that cannot say: hold (fail safe), the tick asks again.
            Err(e) => Verdict::Hold {
                by: "budget",
                scope: "-".into(),
                reason: format!("held: the budgets cannot be read: {e}"),
            },
        }
    }

    /// Takes the slots of a runbook resumed past its first effect (after a restart), whatever
    /// the budgets say: it is in flight already, so it must count (a dead holder's lease for
    /// it is taken over; one that expired meanwhile is taken anew).
    pub fn resume_budget(&self, decision_id: &str, ev: &Event, d: &Decision) {
        self.take_slots(decision_id, ev, d, true);
    }

    /// Gives back the slots of `decision_id` (its runbook ended). Failures are logged: the
    /// lease then frees itself at its expiry.
    pub fn release_budget(&self, decision_id: &str) {
        if self.cfg.budgets.is_empty() {
            return;
        }
        self.leased(decision_id, false);
        let now = Utc::now();
        match self.store.release_leases(decision_id, &self.holder, now) {
            Ok(0) => {}
            Ok(_) => self.log_line(&serde_json::json!({
                "time": rfc(now), "decision_id": decision_id, "budget": "released",
            })),
            Err(e) => self.log_line(&serde_json::json!({
                "time": rfc(now), "decision_id": decision_id, "error": e.to_string(),
            })),
        }
    }

    /// Renews the leases of the runbooks running here, every third of the shortest
    /// `lease_ttl` (called every tick).
    pub fn renew_budget_leases(&self) {
        let Some(ttl) = self.cfg.budgets.iter().map(|b| b.lease_ttl_s).min() else {
            return;
        };
        let now = Utc::now();
        let running: Vec<String> = {
            let Ok(mut r) = self.leases.lock() else {
                return;
            };
            let due =
                r.1.is_none_or(|last| now - last >= chrono::Duration::seconds(ttl / 3));
            if !due || r.0.is_empty() {
                return;
            }
            r.1 = Some(now);
            r.0.iter().cloned().collect()
        };
        let longest = self
            .cfg
            .budgets
            .iter()
            .map(|b| b.lease_ttl_s)
            .max()
            .unwrap_or(ttl);
        let expires = now + chrono::Duration::seconds(longest);
        if let Err(e) = self
            .store
            .renew_leases(&self.holder, &running, &rfc(now), &rfc(expires))
        {
            self.log_line(&serde_json::json!({"time": rfc(now), "error": e.to_string()}));
        }
    }

    fn leased(&self, decision_id: &str, on: bool) {
        if let Ok(mut r) = self.leases.lock() {
            if on {
                // Just taken: the next renewal is a third of the TTL away.
                if r.0.is_empty() {
                    r.1 = Some(Utc::now());
                }
                r.0.insert(decision_id.to_string());
            } else {
                r.0.remove(decision_id);
            }
        }
    }
}

#[cfg(test)]
mod tests;
