//! The pauses (`keel pause`), the decisions they hold, and what `keel status` reads.

use rusqlite::{Connection, OpenFlags};
use serde::Serialize;

use super::sql::{p, Begin, Conn, Row};
use super::{header_version, insert_outbox, NewOutbox, Store, StoreError, SCHEMA_VERSION};

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

fn held_row(r: &Row) -> Result<HeldRow, StoreError> {
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

const HELD_COLUMNS: &str = r#"SELECT decision_id, event_id, action, event_json, scope, reason, at, deadline, "by" FROM held"#;

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
            conn: std::sync::Mutex::new(Conn::Lite(conn)),
            db_clock: Default::default(),
            host: String::new(),
            // Read-only: nothing to checkpoint.
            path: None,
            checkpoint: Default::default(),
            sync: Default::default(),
            // Read-only: `keel run` may insert meanwhile; every look-up goes to the file.
            known: Default::default(),
        })
    }

    /// Pauses `scope` (canonical) with a reason, by whom, at `now`; a pause of the same scope
    /// is replaced. Returns whether the scope was not paused before. In a fleet a pause holds
    /// every host.
    pub fn pause(
        &self,
        scope: &str,
        reason: &str,
        by: &str,
        now: &str,
    ) -> Result<bool, StoreError> {
        self.c()?.tx(Begin::Exclusive, |c| {
            let before = !c.exists("SELECT 1 FROM pauses WHERE scope = ?1", p![scope])?;
            c.exec(
                r#"INSERT INTO pauses (scope, reason, "by", at) VALUES (?1, ?2, ?3, ?4)
                   ON CONFLICT (scope) DO UPDATE SET reason = excluded.reason,
                     "by" = excluded."by", at = excluded.at"#,
                p![scope, reason, by, now],
            )?;
            Ok(before)
        })
    }

    /// Lifts the pause of `scope` (canonical), or every pause (`None`); the scopes lifted.
    pub fn resume(&self, scope: Option<&str>) -> Result<Vec<String>, StoreError> {
        self.c()?.tx(Begin::Exclusive, |c| {
            let rows = match scope {
                Some(s) => c.rows("DELETE FROM pauses WHERE scope = ?1 RETURNING scope", p![s])?,
                None => c.rows("DELETE FROM pauses RETURNING scope", p![])?,
            };
            let mut gone = rows
                .iter()
                .map(|r| r.get(0))
                .collect::<Result<Vec<String>, _>>()?;
            gone.sort();
            Ok(gone)
        })
    }

    /// The pauses, oldest first.
    pub fn pauses(&self) -> Result<Vec<PauseRow>, StoreError> {
        pauses(&*self.c()?)
    }

    /// Whether a step (by its idempotency key) was ever begun.
    pub fn step_begun(&self, key: &str) -> Result<bool, StoreError> {
        self.c()?
            .exists("SELECT 1 FROM steps WHERE key = ?1", p![key])
    }

    /// The decision (redacted JSON) of `decision_id`, if it is stored.
    pub fn decision_json(&self, decision_id: &str) -> Result<Option<String>, StoreError> {
        decision_json(&*self.c()?, decision_id)
    }

    /// Holds a decision (of this host): its `held` row (replacing one it had) and its
    /// runbook state `held`, in one transaction.
    pub fn hold(&self, h: &HeldRow) -> Result<(), StoreError> {
        self.c()?.tx(Begin::Plain, |c| {
            c.exec(
                r#"INSERT INTO held (decision_id, event_id, action, event_json, scope, reason, at, deadline, "by", host)
                   VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                   ON CONFLICT (decision_id) DO UPDATE SET event_id = excluded.event_id,
                     action = excluded.action, event_json = excluded.event_json,
                     scope = excluded.scope, reason = excluded.reason, at = excluded.at,
                     deadline = excluded.deadline, "by" = excluded."by", host = excluded.host"#,
                p![&h.decision_id, &h.event_id, &h.action, &h.event_json, &h.scope, &h.reason, &h.since, &h.deadline, &h.by, &self.host],
            )?;
            c.exec(
                "UPDATE decisions SET runbook = 'held' WHERE decision_id = ?1",
                p![&h.decision_id],
            )?;
            Ok(())
        })
    }

    /// This host's held decisions, oldest first.
    pub fn held(&self) -> Result<Vec<HeldRow>, StoreError> {
        self.c()?
            .rows(
                &format!("{HELD_COLUMNS} WHERE host = ?1 ORDER BY at, decision_id"),
                p![&self.host],
            )?
            .iter()
            .map(held_row)
            .collect()
    }

    /// Releases a held decision: its `held` row goes and its runbook is `pending` again, in
    /// one transaction. Returns the decision (redacted JSON) to run, `None` when it was not
    /// held (any more).
    pub fn release(&self, decision_id: &str) -> Result<Option<String>, StoreError> {
        self.c()?.tx(Begin::Plain, |c| {
            if unhold(c, decision_id, "pending")? {
                decision_json(c, decision_id)
            } else {
                Ok(None)
            }
        })
    }

    /// A held decision whose deadline passed: its `held` row goes, its runbook becomes
    /// `escalated` and its escalation goes to the outbox, in one transaction.
    pub fn expire_held(
        &self,
        decision_id: &str,
        escalation: &NewOutbox<'_>,
        now: &str,
    ) -> Result<(), StoreError> {
        self.c()?.tx(Begin::Plain, |c| {
            if unhold(c, decision_id, "escalated")? {
                insert_outbox(c, escalation, now)?;
            }
            Ok(())
        })
    }

    /// What `keel status` shows at `now` (RFC 3339, UTC), in one read transaction (in a
    /// fleet: every host's).
    pub fn status(&self, now: &str) -> Result<Status, StoreError> {
        let schema_version = self.schema_version()?;
        self.c()?.tx(Begin::Snapshot, |c| {
            let pauses = pauses(c)?;
            let held = c
                .rows(&format!("{HELD_COLUMNS} ORDER BY at, decision_id"), p![])?
                .iter()
                .map(held_row)
                .collect::<Result<Vec<_>, _>>()?;
            let mut in_flight = c
                .rows(
                    "SELECT decision_id, event_id, action, time FROM decisions
                     WHERE runbook = 'pending' ORDER BY time, decision_id",
                    p![],
                )?
                .iter()
                .map(|r| {
                    Ok(InFlight {
                        decision_id: r.get(0)?,
                        event_id: r.get(1)?,
                        action: r.get(2)?,
                        since: r.get(3)?,
                        step: None,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            for f in &mut in_flight {
                f.step = c
                    .one(
                        "SELECT name, idx, started_at, outcome FROM steps WHERE decision_id = ?1
                         ORDER BY idx DESC LIMIT 1",
                        p![&f.decision_id],
                    )?
                    .map(|r| {
                        Ok::<_, StoreError>(StepAt {
                            name: r.get(0)?,
                            index: r.get(1)?,
                            started_at: r.get(2)?,
                            outcome: r.get(3)?,
                        })
                    })
                    .transpose()?;
            }
            let deferrals = c
                .rows(
                    "SELECT event_id, due FROM deferred ORDER BY due, event_id",
                    p![],
                )?
                .iter()
                .map(|r| {
                    Ok(Deferral {
                        event_id: r.get(0)?,
                        due: r.get(1)?,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            let outbox = c
                .one(
                    "SELECT COUNT(*), MIN(created_at), COALESCE(MAX(attempts), 0) FROM outbox
                     WHERE delivered_at IS NULL",
                    p![],
                )?
                .map(|r| {
                    Ok::<_, StoreError>(Backlog {
                        backlog: r.get(0)?,
                        oldest: r.get(1)?,
                        max_attempts: r.get(2)?,
                    })
                })
                .transpose()?
                .unwrap_or(Backlog {
                    backlog: 0,
                    oldest: None,
                    max_attempts: 0,
                });
            let leases = super::budget::leases(c, now)?;
            Ok(Status {
                schema_version,
                pauses,
                held,
                leases,
                in_flight,
                deferrals,
                outbox,
            })
        })
    }
}

/// The decision (redacted JSON) of `decision_id`, if it is stored.
fn decision_json(c: &Conn, decision_id: &str) -> Result<Option<String>, StoreError> {
    c.one(
        "SELECT decision_json FROM decisions WHERE decision_id = ?1",
        p![decision_id],
    )?
    .map(|r| r.get(0))
    .transpose()
}

/// Deletes a decision's `held` row and sets its runbook state; false when it was not held.
fn unhold(c: &Conn, decision_id: &str, state: &str) -> Result<bool, StoreError> {
    let held = c.exec("DELETE FROM held WHERE decision_id = ?1", p![decision_id])? == 1;
    if held {
        c.exec(
            "UPDATE decisions SET runbook = ?2 WHERE decision_id = ?1",
            p![decision_id, state],
        )?;
    }
    Ok(held)
}

fn pauses(c: &Conn) -> Result<Vec<PauseRow>, StoreError> {
    c.rows(
        r#"SELECT scope, reason, "by", at FROM pauses ORDER BY at, scope"#,
        p![],
    )?
    .iter()
    .map(|r| {
        Ok(PauseRow {
            scope: r.get(0)?,
            reason: r.get(1)?,
            by: r.get(2)?,
            at: r.get(3)?,
        })
    })
    .collect()
}

/// What `keel history` asks for: decisions made in `[since, until]` (RFC 3339, UTC), whose
/// event id contains `event` (ignoring case) and whose action is `action` (each when given),
/// the newest `limit`.
#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    /// Earliest decision time (inclusive).
    pub since: String,
    /// Latest decision time (inclusive).
    pub until: String,
    /// A part of the event id.
    pub event: Option<String>,
    /// The action decided.
    pub action: Option<String>,
    /// How many decisions at most (the newest).
    pub limit: usize,
}

/// A past decision with its runbook's steps, as `keel history` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PastDecision {
    /// When it was decided (RFC 3339, UTC).
    pub time: String,
    /// Its id.
    pub decision_id: String,
    /// Its event.
    pub event_id: String,
    /// The action decided.
    pub action: String,
    /// The policy that decided it, if one did.
    pub policy: Option<String>,
    /// Why, as the decision says.
    pub reason: Option<String>,
    /// `live` or `dry_run`.
    pub mode: String,
    /// The runbook's state: `pending`, `held`, `done`, `failed`, `canceled`, `escalated`,
    /// `planned`.
    pub runbook: String,
    /// In a fleet, the host that decided it (empty on SQLite).
    pub host: String,
    /// Its runbook's steps, in order.
    pub steps: Vec<PastStep>,
}

/// A step of a past decision's runbook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PastStep {
    /// Its position in the runbook.
    pub index: i64,
    /// Its name.
    pub name: String,
    /// When it first started (RFC 3339, UTC).
    pub started_at: String,
    /// When it finished, if it did.
    pub finished_at: Option<String>,
    /// How many times it was begun.
    pub attempts: i64,
    /// `ok`, `failed: …`, `skipped: …`, `in_doubt_escalated`; none while it runs.
    pub outcome: Option<String>,
}

/// `s` as a `LIKE` pattern matching any text that contains it (`\`, `%`, `_` literal).
fn contains_pattern(s: &str) -> String {
    let mut p = String::from("%");
    for c in s.chars() {
        if matches!(c, '\\' | '%' | '_') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

impl Store {
    /// Past decisions and their steps (`keel history`), oldest first among the newest
    /// `q.limit` that match, in one read transaction.
    pub fn history(&self, q: &HistoryQuery) -> Result<Vec<PastDecision>, StoreError> {
        let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
        // Case-insensitive on both backends (SQLite's LIKE is, PostgreSQL's is not).
        let event = q
            .event
            .as_deref()
            .map_or_else(|| "%".to_string(), |e| contains_pattern(&e.to_lowercase()));
        let action = q.action.as_deref().unwrap_or("");
        self.c()?.tx(Begin::Snapshot, |c| {
            let rows = c.rows(
                r"SELECT time, decision_id, event_id, action, mode, runbook, host, decision_json
                  FROM decisions
                  WHERE time >= ?1 AND time <= ?2 AND lower(event_id) LIKE ?3 ESCAPE '\'
                    AND (?4 = '' OR action = ?4)
                  ORDER BY time DESC, decision_id DESC LIMIT ?5",
                p![
                    q.since.as_str(),
                    q.until.as_str(),
                    event.as_str(),
                    action,
                    limit
                ],
            )?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows.iter().rev() {
                let decision_id: String = r.get(1)?;
                let d: serde_json::Value =
                    serde_json::from_str(&r.get::<String>(7)?).unwrap_or_default();
                let text = |k: &str| d.get(k).and_then(|v| v.as_str()).map(str::to_string);
                let steps = c
                    .rows(
                        "SELECT idx, name, started_at, finished_at, attempts, outcome FROM steps
                         WHERE decision_id = ?1 ORDER BY idx",
                        p![decision_id.as_str()],
                    )?
                    .iter()
                    .map(|s| {
                        Ok(PastStep {
                            index: s.get(0)?,
                            name: s.get(1)?,
                            started_at: s.get(2)?,
                            finished_at: s.get(3)?,
                            attempts: s.get(4)?,
                            outcome: s.get(5)?,
                        })
                    })
                    .collect::<Result<Vec<_>, StoreError>>()?;
                out.push(PastDecision {
                    time: r.get(0)?,
                    decision_id,
                    event_id: r.get(2)?,
                    action: r.get(3)?,
                    policy: text("policy"),
                    reason: text("reason"),
                    mode: r.get(4)?,
                    runbook: r.get(5)?,
                    host: r.get(6)?,
                    steps,
                });
            }
            Ok(out)
        })
    }
}
