//! The budgets' leases and the members each budget key has been seen with. A lease is the
//! truth of a slot: no count is kept in memory, so a restarted host, or (later) another host
//! on the same database, sees exactly the slots taken.

use serde::Serialize;

use super::sql::{p, Conn, Row};
use super::{Db, Store, StoreError};

/// A lease as stored (and as `keel status` shows it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaseRow {
    /// The budget's name.
    pub budget: String,
    /// The budget key (e.g. the availability set) the slot belongs to.
    pub key: String,
    /// The unit that occupies the slot (e.g. the update domain; the resource when the budget
    /// has no `per`).
    pub unit: String,
    /// The decision whose runbook holds it.
    pub decision_id: String,
    /// Who holds it (`<host>#<random>`: a restarted host is a new holder).
    pub holder: String,
    /// The budget's `max_in_flight` when it was taken.
    pub max_in_flight: i64,
    /// When it was taken, last renewed, and when it expires (RFC 3339, UTC). A released lease
    /// expires when its bake time ends.
    pub acquired_at: String,
    /// See `acquired_at`.
    pub renewed_at: String,
    /// See `acquired_at`.
    pub expires_at: String,
    /// When its runbook ended; none while it runs.
    pub released_at: Option<String>,
}

pub use keel_engine::budget::{KeyView, Lease, Member};

/// A slot wanted by a decision.
#[derive(Debug, Clone)]
pub struct LeaseWant<'a> {
    /// The budget.
    pub budget: &'a str,
    /// Its key for the event.
    pub key: &'a str,
    /// The unit the event belongs to.
    pub unit: &'a str,
    /// The budget's bake time after a release, seconds.
    pub bake_s: i64,
    /// `max_in_flight` as resolved, for the record.
    pub max_in_flight: i64,
}

/// Why a decision did not get its slots: the budget and key that were full, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// The budget.
    pub budget: String,
    /// Its key.
    pub key: String,
    /// Why, in one line.
    pub reason: String,
}

const LEASE_COLUMNS: &str = "SELECT budget, key, unit, decision_id, holder, max_in_flight,
    acquired_at, renewed_at, expires_at, released_at FROM leases";

fn lease_row(r: &Row) -> Result<LeaseRow, StoreError> {
    Ok(LeaseRow {
        budget: r.get(0)?,
        key: r.get(1)?,
        unit: r.get(2)?,
        decision_id: r.get(3)?,
        holder: r.get(4)?,
        max_in_flight: r.get(5)?,
        acquired_at: r.get(6)?,
        renewed_at: r.get(7)?,
        expires_at: r.get(8)?,
        released_at: r.get(9)?,
    })
}

impl From<&LeaseRow> for Lease {
    fn from(l: &LeaseRow) -> Lease {
        Lease {
            unit: l.unit.clone(),
            holder: l.holder.clone(),
            // Written by this store in RFC 3339: an unreadable one shows as the epoch (it is
            // live all the same: the query compared it).
            expires_at: chrono::DateTime::parse_from_rfc3339(&l.expires_at)
                .map(|t| t.with_timezone(&chrono::Utc))
                .unwrap_or_default(),
            released: l.released_at.is_some(),
        }
    }
}

/// The live leases of a key at `now` (soonest expiry first) and its members.
fn view(
    c: &Conn,
    budget: &str,
    key: &str,
    now: &str,
) -> Result<(Vec<LeaseRow>, KeyView), StoreError> {
    let live = c
        .rows(
            &format!(
                "{LEASE_COLUMNS} WHERE budget = ?1 AND key = ?2 AND expires_at > ?3
                 ORDER BY expires_at, decision_id"
            ),
            p![budget, key, now],
        )?
        .iter()
        .map(lease_row)
        .collect::<Result<Vec<_>, _>>()?;
    let members = c
        .rows(
            "SELECT member, healthy FROM budget_members WHERE budget = ?1 AND key = ?2
             ORDER BY member",
            p![budget, key],
        )?
        .iter()
        .map(|r| {
            Ok(Member {
                member: r.get(0)?,
                healthy: r.get(1)?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let view = KeyView {
        live: live.iter().map(Lease::from).collect(),
        members,
    };
    Ok((live, view))
}

/// Runs `f` in a write transaction (on PostgreSQL, under the fleet's write lock: no two
/// hosts admit against the same leases at once). On SQLite it commits without waiting for
/// the disk ([`Conn::tx_unsynced`]). A lease write needs no fsync of its own: the next
/// `FULL` commit on the connection syncs the log with every frame before it, and for a slot
/// taken that commit is the runbook's first step start, written before any effect; a lease
/// lost with the machine's power was never used (and a renewal or release lost only ends
/// earlier or later at the lease's expiry). The first-step latency keeps one fsync instead
/// of two.
fn lease_tx<R>(c: &Conn, f: impl FnOnce(&Conn) -> Result<R, StoreError>) -> Result<R, StoreError> {
    c.tx_unsynced(f)
}

impl Store {
    /// The database's clock, when leases are stamped by it ([`Store::use_database_clock`]).
    fn db_now(&self, c: &Conn) -> Result<Option<chrono::DateTime<chrono::Utc>>, StoreError> {
        if !(c.is_fleet() && self.db_clock.load(std::sync::atomic::Ordering::Relaxed)) {
            return Ok(None);
        }
        let ms: i64 = c
            .one(
                "SELECT CAST(FLOOR(EXTRACT(EPOCH FROM clock_timestamp()) * 1000) AS BIGINT)",
                p![],
            )?
            .map_or(Ok(0), |r| r.get(0))?;
        Ok(chrono::DateTime::from_timestamp_millis(ms))
    }

    /// `(now, expires)` moved to start at `at`, the lease's length kept (as given, when either
    /// cannot be read).
    fn restamp(
        now: &str,
        expires: &str,
        at: Option<chrono::DateTime<chrono::Utc>>,
    ) -> (String, String) {
        let parse = |t: &str| {
            chrono::DateTime::parse_from_rfc3339(t).map(|t| t.with_timezone(&chrono::Utc))
        };
        match (at, parse(now), parse(expires)) {
            (Some(at), Ok(n), Ok(e)) => (
                super::super::rfc(at),
                super::super::rfc(at.checked_add_signed(e - n).unwrap_or(at)),
            ),
            _ => (now.to_string(), expires.to_string()),
        }
    }

    /// Takes every slot `wants` names for `decision_id`, or none: in one write transaction,
    /// `admit` sees each key's live leases and members and says yes (`Ok`) or why not
    /// (`Err(reason)`); on the first no, nothing is written and the reason is returned. A
    /// slot this decision already holds (e.g. taken by a host that died before its first
    /// step) is taken over by `holder` and renewed. `stamps` gives the time and the lease's
    /// expiry (RFC 3339, UTC); it is read once the transaction holds the write lock, so that
    /// a lease's `acquired_at` is never earlier than the release it waited for (on another
    /// host, or another connection).
    pub fn acquire_leases(
        &self,
        decision_id: &str,
        wants: &[LeaseWant<'_>],
        holder: &str,
        stamps: impl FnOnce() -> (String, String),
        mut admit: impl FnMut(&LeaseWant<'_>, &KeyView) -> Result<(), String>,
    ) -> Result<Result<(), Denied>, StoreError> {
        lease_tx(&*self.c()?, |tx| {
            let (now, expires) = stamps();
            let (now, expires) = Self::restamp(&now, &expires, self.db_now(tx)?);
            let (now, expires) = (now.as_str(), expires.as_str());
            for w in wants {
                let (rows, v) = view(tx, w.budget, w.key, now)?;
                let mine = rows
                    .iter()
                    .any(|l| l.decision_id == decision_id && l.released_at.is_none());
                if !mine {
                    if let Err(reason) = admit(w, &v) {
                        return Ok(Err(Denied {
                            budget: w.budget.to_string(),
                            key: w.key.to_string(),
                            reason,
                        }));
                    }
                }
                tx.exec(
                    "INSERT INTO leases (decision_id, budget, key, unit, holder, max_in_flight,
                   bake_s, acquired_at, renewed_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8, ?9)
                 ON CONFLICT (decision_id, budget) DO UPDATE SET
                   holder = excluded.holder, renewed_at = excluded.renewed_at,
                   expires_at = excluded.expires_at, released_at = NULL,
                   acquired_at = CASE WHEN leases.released_at IS NULL
                                      AND leases.expires_at > excluded.renewed_at
                                 THEN leases.acquired_at ELSE excluded.acquired_at END",
                    p![
                        decision_id,
                        w.budget,
                        w.key,
                        w.unit,
                        holder,
                        w.max_in_flight,
                        w.bake_s,
                        now,
                        expires
                    ],
                )?;
            }
            Ok(Ok(()))
        })
    }

    /// What a budget key looks like at `now` (read-only: `keel eval --config` explains what a
    /// decision would wait for).
    pub fn key_view(&self, budget: &str, key: &str, now: &str) -> Result<KeyView, StoreError> {
        view(&*self.c()?, budget, key, now).map(|(_, v)| v)
    }

    /// Renews the unreleased leases `holder` holds for `decisions` until `expires`. Returns
    /// how many were renewed.
    pub fn renew_leases(
        &self,
        holder: &str,
        decisions: &[String],
        now: &str,
        expires: &str,
    ) -> Result<usize, StoreError> {
        lease_tx(&*self.c()?, |tx| {
            let (now, expires) = Self::restamp(now, expires, self.db_now(tx)?);
            let (now, expires) = (now.as_str(), expires.as_str());
            let mut n = 0;
            for d in decisions {
                n += tx.exec(
                    "UPDATE leases SET renewed_at = ?3, expires_at = ?4
                     WHERE decision_id = ?1 AND holder = ?2 AND released_at IS NULL",
                    p![d, holder, now, expires],
                )?;
            }
            Ok(n)
        })
    }

    /// Gives back the slots `holder` holds for `decision_id` (its runbook ended, on whatever
    /// path): each stays taken for its budget's bake time, counted from `now`. A slot another
    /// holder took over is not touched. Returns how many were released.
    pub fn release_leases(
        &self,
        decision_id: &str,
        holder: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<usize, StoreError> {
        lease_tx(&*self.c()?, |tx| {
            let now = self.db_now(tx)?.unwrap_or(now);
            let rows = tx
                .rows(
                    "SELECT budget, bake_s FROM leases
                     WHERE decision_id = ?1 AND holder = ?2 AND released_at IS NULL",
                    p![decision_id, holder],
                )?
                .iter()
                .map(|r| Ok((r.get(0)?, r.get(1)?)))
                .collect::<Result<Vec<(String, i64)>, StoreError>>()?;
            let at = super::super::rfc(now);
            for (budget, bake_s) in &rows {
                let until = chrono::Duration::try_seconds(*bake_s)
                    .and_then(|b| now.checked_add_signed(b))
                    .unwrap_or(now);
                tx.exec(
                    "UPDATE leases SET released_at = ?3, expires_at = ?4
                     WHERE decision_id = ?1 AND budget = ?2",
                    p![decision_id, budget, &at, &super::super::rfc(until)],
                )?;
            }
            Ok(rows.len())
        })
    }

    /// Every lease not yet expired at `now`, soonest expiry first.
    #[cfg(test)]
    pub fn leases(&self, now: &str) -> Result<Vec<LeaseRow>, StoreError> {
        leases(&*self.c()?, now)
    }

    /// The lease of a decision in a budget, if any (expired or not).
    #[cfg(test)]
    pub fn lease(&self, decision_id: &str, budget: &str) -> Result<Option<LeaseRow>, StoreError> {
        self.c()?
            .one(
                &format!("{LEASE_COLUMNS} WHERE decision_id = ?1 AND budget = ?2"),
                p![decision_id, budget],
            )?
            .as_ref()
            .map(lease_row)
            .transpose()
    }
}

impl Db<'_> {
    /// Records that `member` belongs to `budget`'s group `key`, with its health when the
    /// event says (`None`: unchanged, healthy when new).
    pub fn note_member(
        &self,
        budget: &str,
        key: &str,
        member: &str,
        healthy: Option<bool>,
        now: &str,
    ) -> Result<(), StoreError> {
        let h = healthy.map(i64::from);
        self.c()?.exec(
            "INSERT INTO budget_members (budget, key, member, healthy, seen_at)
             VALUES (?1, ?2, ?3, COALESCE(CAST(?4 AS BIGINT), 1), ?5)
             ON CONFLICT (budget, key, member) DO UPDATE SET
               healthy = COALESCE(CAST(?4 AS BIGINT), budget_members.healthy),
               seen_at = excluded.seen_at",
            p![budget, key, member, h, now],
        )?;
        Ok(())
    }
}

/// The leases not expired at `now`, soonest expiry first.
pub(super) fn leases(c: &Conn, now: &str) -> Result<Vec<LeaseRow>, StoreError> {
    c.rows(
        &format!(
            "{LEASE_COLUMNS} WHERE expires_at > ?1 ORDER BY budget, key, expires_at, decision_id"
        ),
        p![now],
    )?
    .iter()
    .map(lease_row)
    .collect()
}
