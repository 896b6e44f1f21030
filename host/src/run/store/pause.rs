//! The pauses (`keel pause`), the decisions they hold, and what `keel status` reads.

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde::Serialize;

use super::{exec, header_version, insert_outbox, NewOutbox, Store, StoreError, SCHEMA_VERSION};

/// A pause as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PauseRow {
    /// The canonical scope (`all`, `region:…`, `resource-group:…`, `resource:…`).
    pub scope: String,
    /// Why (as given to `keel pause --reason`).
    pub reason: String,
    /// Who paused.
    pub by: String,
    /// When (RFC 3339, UTC).
    pub at: String,
}

/// A decision held before its runbook's first effect (by a pause, a maintenance window, a
/// blocker or a budget).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeldRow {
    /// The decision held.
    pub decision_id: String,
    /// Its event.
    pub event_id: String,
    /// The action decided.
    pub action: String,
    /// The event (redacted JSON), decided again on the resume.
    #[serde(skip)]
    pub event_json: String,
    /// What holds it: `pause`, `window`, `blocker` or `budget`.
    pub by: String,
    /// What of it holds it: the pause's scope, the window's or blocker's name, the budget
    /// and its key.
    pub scope: String,
    /// Why, in one line: the pause's reason, or the gate's explanation (e.g. "budget ud/web
    /// full: 1/1 in flight, holder vm-17#… until …").
    pub reason: String,
    /// When it was held (RFC 3339, UTC).
    pub since: String,
    /// By when it must run, else it escalates (RFC 3339, UTC); none: it waits however long.
    pub deadline: Option<String>,
}

/// The step a runbook in flight is at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepAt {
    /// Its name.
    pub name: String,
    /// Its index in the runbook.
    pub index: i64,
    /// When it started (RFC 3339, UTC).
    pub started_at: String,
    /// Its outcome, when it finished (the next one has not begun yet).
    pub outcome: Option<String>,
}

/// A runbook in flight (its decision is `pending`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InFlight {
    /// The decision.
    pub decision_id: String,
    /// Its event.
    pub event_id: String,
    /// The action.
    pub action: String,
    /// When it was decided (RFC 3339, UTC).
    pub since: String,
    /// The last step begun; none before the first.
    pub step: Option<StepAt>,
}

/// A deferral waiting to be decided again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Deferral {
    /// The event.
    pub event_id: String,
    /// When it is decided again (RFC 3339, UTC).
    pub due: String,
}

/// The escalations not delivered yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Backlog {
    /// How many.
    pub backlog: i64,
    /// When the oldest was written (RFC 3339, UTC).
    pub oldest: Option<String>,
    /// The most delivery attempts any of them has had.
    pub max_attempts: i64,
}

/// What `keel status` shows, read in one transaction (a consistent snapshot). Its JSON is
/// stable for scripts: new sections (budgets, their holders and leases) are added as new keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    /// The database's schema version.
    pub schema_version: i64,
    /// The pauses, oldest first.
    pub pauses: Vec<PauseRow>,
    /// The decisions held (by a pause, window, blocker or budget), oldest first.
    pub held: Vec<HeldRow>,
    /// The budgets' leases not yet expired (held, or released and baking), by budget and
    /// key, soonest expiry first.
    pub leases: Vec<super::LeaseRow>,
    /// The runbooks in flight, oldest first.
    pub in_flight: Vec<InFlight>,
    /// The pending deferrals, soonest first.
    pub deferrals: Vec<Deferral>,
    /// The escalation outbox.
    pub outbox: Backlog,
}

fn collect<T>(
    c: &Connection,
    sql: &str,
    p: impl rusqlite::Params,
    f: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>, StoreError> {
    let mut st = c.prepare(sql)?;
    let rows = st.query_map(p, f)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

fn held_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<HeldRow> {
    Ok(HeldRow {
        decision_id: r.get(0)?,
        event_id: r.get(1)?,
        action: r.get(2)?,
        event_json: r.get(3)?,
        scope: r.get(4)?,
        reason: r.get(5)?,
        since: r.get(6)?,
        deadline: r.get(7)?,
        by: r.get(8)?,
    })
}

const HELD_COLUMNS: &str =
    "SELECT decision_id, event_id, action, event_json, scope, reason, at, deadline, by FROM held";

impl Store {
    /// Opens an existing database read-only, without migrating it (`keel status`, while
    /// `keel run` writes to it). A missing file, or a schema other than this binary's, is an
    /// error.
    pub fn open_read_only(path: &std::path::Path) -> Result<Store, StoreError> {
        let files = |e| StoreError::Files(path.to_path_buf(), e);
        let found = header_version(path).map_err(files)?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                found,
                supported: SCHEMA_VERSION,
            });
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version != SCHEMA_VERSION {
            return Err(StoreError::OtherSchema {
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        Ok(Store {
            conn: std::sync::Mutex::new(conn),
        })
    }

    /// Pauses `scope` (canonical) with a reason, by whom, at `now`; a pause of the same scope
    /// is replaced. Returns whether the scope was not paused before.
    pub fn pause(
        &self,
        scope: &str,
        reason: &str,
        by: &str,
        now: &str,
    ) -> Result<bool, StoreError> {
        let mut c = self.c()?;
        let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let before = tx
            .query_row(
                "SELECT 1 FROM pauses WHERE scope = ?1",
                params![scope],
                |_| Ok(()),
            )
            .optional()?
            .is_none();
        tx.execute(
            "INSERT INTO pauses (scope, reason, by, at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (scope) DO UPDATE SET reason = excluded.reason, by = excluded.by, at = excluded.at",
            params![scope, reason, by, now],
        )?;
        tx.commit()?;
        Ok(before)
    }

    /// Lifts the pause of `scope` (canonical), or every pause (`None`); the scopes lifted.
    pub fn resume(&self, scope: Option<&str>) -> Result<Vec<String>, StoreError> {
        let mut c = self.c()?;
        let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let gone = match scope {
            Some(s) => collect(
                &tx,
                "DELETE FROM pauses WHERE scope = ?1 RETURNING scope",
                params![s],
                |r| r.get(0),
            )?,
            None => collect(&tx, "DELETE FROM pauses RETURNING scope", [], |r| r.get(0))?,
        };
        tx.commit()?;
        Ok(gone)
    }

    /// The pauses, oldest first.
    pub fn pauses(&self) -> Result<Vec<PauseRow>, StoreError> {
        pauses(&*self.c()?)
    }

    /// Whether a step (by its idempotency key) was ever begun.
    pub fn step_begun(&self, key: &str) -> Result<bool, StoreError> {
        Ok(self
            .c()?
            .query_row("SELECT 1 FROM steps WHERE key = ?1", params![key], |_| {
                Ok(())
            })
            .optional()?
            .is_some())
    }

    /// The decision (redacted JSON) of `decision_id`, if it is stored.
    pub fn decision_json(&self, decision_id: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .c()?
            .query_row(
                "SELECT decision_json FROM decisions WHERE decision_id = ?1",
                params![decision_id],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Holds a decision: its `held` row (replacing one it had) and its runbook state `held`,
    /// in one transaction.
    pub fn hold(&self, h: &HeldRow) -> Result<(), StoreError> {
        let mut c = self.c()?;
        let tx = c.transaction()?;
        tx.execute(
            "INSERT OR REPLACE INTO held (decision_id, event_id, action, event_json, scope, reason, at, deadline, by)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![h.decision_id, h.event_id, h.action, h.event_json, h.scope, h.reason, h.since, h.deadline, h.by],
        )?;
        tx.execute(
            "UPDATE decisions SET runbook = 'held' WHERE decision_id = ?1",
            params![h.decision_id],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The decisions held, oldest first.
    pub fn held(&self) -> Result<Vec<HeldRow>, StoreError> {
        collect(
            &*self.c()?,
            &format!("{HELD_COLUMNS} ORDER BY at, decision_id"),
            [],
            held_row,
        )
    }

    /// Releases a held decision: its `held` row goes and its runbook is `pending` again, in
    /// one transaction. Returns the decision (redacted JSON) to run, `None` when it was not
    /// held (any more).
    pub fn release(&self, decision_id: &str) -> Result<Option<String>, StoreError> {
        let mut c = self.c()?;
        let tx = c.transaction()?;
        let mut decision = None;
        if unhold(&tx, decision_id, "pending")? {
            decision = tx
                .query_row(
                    "SELECT decision_json FROM decisions WHERE decision_id = ?1",
                    params![decision_id],
                    |r| r.get(0),
                )
                .optional()?;
        }
        tx.commit()?;
        Ok(decision)
    }

    /// A held decision whose deadline passed: its `held` row goes, its runbook becomes
    /// `escalated` and its escalation goes to the outbox, in one transaction.
    pub fn expire_held(
        &self,
        decision_id: &str,
        escalation: &NewOutbox<'_>,
        now: &str,
    ) -> Result<(), StoreError> {
        let mut c = self.c()?;
        let tx = c.transaction()?;
        if unhold(&tx, decision_id, "escalated")? {
            insert_outbox(&tx, escalation, now)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// What `keel status` shows at `now` (RFC 3339, UTC), in one read transaction.
    pub fn status(&self, now: &str) -> Result<Status, StoreError> {
        let mut c = self.c()?;
        let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Deferred)?;
        let schema_version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let pauses = pauses(&tx)?;
        let held = collect(
            &tx,
            &format!("{HELD_COLUMNS} ORDER BY at, decision_id"),
            [],
            held_row,
        )?;
        let mut in_flight = collect(
            &tx,
            "SELECT decision_id, event_id, action, time FROM decisions
             WHERE runbook = 'pending' ORDER BY time, decision_id",
            [],
            |r| {
                Ok(InFlight {
                    decision_id: r.get(0)?,
                    event_id: r.get(1)?,
                    action: r.get(2)?,
                    since: r.get(3)?,
                    step: None,
                })
            },
        )?;
        for f in &mut in_flight {
            f.step = tx
                .query_row(
                    "SELECT name, idx, started_at, outcome FROM steps WHERE decision_id = ?1
                     ORDER BY idx DESC LIMIT 1",
                    params![f.decision_id],
                    |r| {
                        Ok(StepAt {
                            name: r.get(0)?,
                            index: r.get(1)?,
                            started_at: r.get(2)?,
                            outcome: r.get(3)?,
                        })
                    },
                )
                .optional()?;
        }
        let deferrals = collect(
            &tx,
            "SELECT event_id, due FROM deferred ORDER BY due, event_id",
            [],
            |r| {
                Ok(Deferral {
                    event_id: r.get(0)?,
                    due: r.get(1)?,
                })
            },
        )?;
        let outbox = tx.query_row(
            "SELECT COUNT(*), MIN(created_at), COALESCE(MAX(attempts), 0) FROM outbox
             WHERE delivered_at IS NULL",
            [],
            |r| {
                Ok(Backlog {
                    backlog: r.get(0)?,
                    oldest: r.get(1)?,
                    max_attempts: r.get(2)?,
                })
            },
        )?;
        let leases = super::budget::leases(&tx, now)?;
        tx.commit()?;
        Ok(Status {
            schema_version,
            pauses,
            held,
            leases,
            in_flight,
            deferrals,
            outbox,
        })
    }
}

/// Deletes a decision's `held` row and sets its runbook state; false when it was not held.
fn unhold(c: &Connection, decision_id: &str, state: &str) -> Result<bool, StoreError> {
    let held = exec(
        c,
        "DELETE FROM held WHERE decision_id = ?1",
        params![decision_id],
    )? == 1;
    if held {
        exec(
            c,
            "UPDATE decisions SET runbook = ?2 WHERE decision_id = ?1",
            params![decision_id, state],
        )?;
    }
    Ok(held)
}

fn pauses(c: &Connection) -> Result<Vec<PauseRow>, StoreError> {
    collect(
        c,
        "SELECT scope, reason, by, at FROM pauses ORDER BY at, scope",
        [],
        |r| {
            Ok(PauseRow {
                scope: r.get(0)?,
                reason: r.get(1)?,
                by: r.get(2)?,
                at: r.get(3)?,
            })
        },
    )
}
