//! Durable state behind one narrow interface: events seen, decisions, step executions (each
//! written, with its idempotency key, before its effect), deferred work, normalizer state.
//! SQLite in WAL mode with `synchronous=FULL` (survives power loss); portable SQL and
//! versioned migrations, so that a PostgreSQL backend can follow.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{params, Connection, OptionalExtension};

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened, migrated or written.
    #[error("state database: {0}")]
    Sql(#[from] rusqlite::Error),
    /// The lock was poisoned by a panicking thread.
    #[error("state database: lock poisoned")]
    Poisoned,
    /// The database was written by a newer Keel (its schema version is higher than this
    /// binary's); it is left untouched.
    #[error(
        "state database: its schema version is {found}, newer than this keel supports ({supported}); it was written by a newer keel: run that version (the database was left unchanged)"
    )]
    NewerSchema {
        /// The database's schema version.
        found: i64,
        /// The newest version this binary knows.
        supported: i64,
    },
    /// `keel status` reads only a database this binary's `keel run` has migrated.
    #[error(
        "state database: its schema version is {found}, this keel reads version {supported}; start this keel's `keel run` (or `keel pause`) once to migrate it"
    )]
    OtherSchema {
        /// The database's schema version.
        found: i64,
        /// The version this binary reads.
        supported: i64,
    },
    /// The state directory or a database file could not be created or restricted.
    #[error("state database: {path}: {1}", path = .0.display())]
    Files(std::path::PathBuf, #[source] std::io::Error),
}

/// The migrations, in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE events (
        id TEXT NOT NULL, status TEXT NOT NULL, first_seen TEXT NOT NULL,
        PRIMARY KEY (id, status));
     CREATE TABLE decisions (
        decision_id TEXT PRIMARY KEY, time TEXT NOT NULL, event_id TEXT NOT NULL,
        mode TEXT NOT NULL, policy_set TEXT NOT NULL, action TEXT NOT NULL,
        event_json TEXT NOT NULL, decision_json TEXT NOT NULL, runbook TEXT NOT NULL);
     CREATE TABLE steps (
        key TEXT PRIMARY KEY, decision_id TEXT NOT NULL, idx INTEGER NOT NULL,
        name TEXT NOT NULL, idempotent INTEGER NOT NULL, started_at TEXT NOT NULL,
        attempts INTEGER NOT NULL, finished_at TEXT, outcome TEXT);
     CREATE TABLE deferred (
        event_id TEXT PRIMARY KEY, due TEXT NOT NULL, event_json TEXT NOT NULL);
     CREATE TABLE normalizer_state (
        name TEXT PRIMARY KEY, json TEXT NOT NULL);",
    // 2: the ingest endpoint's idempotency keys, and failed attempts per (resource, operation).
    "CREATE TABLE ingest_keys (
        key TEXT PRIMARY KEY, received_at TEXT NOT NULL, event_id TEXT NOT NULL);
     CREATE TABLE attempts (
        resource TEXT NOT NULL, operation TEXT NOT NULL, count INTEGER NOT NULL,
        last_at TEXT NOT NULL, PRIMARY KEY (resource, operation));",
    // 3: the escalation outbox: written with the decision (or the runbook's failure), delivered
    // with retries, kept until delivered.
    "CREATE TABLE outbox (
        key TEXT PRIMARY KEY, decision_id TEXT NOT NULL, created_at TEXT NOT NULL,
        body TEXT NOT NULL, attempts INTEGER NOT NULL, next_at TEXT NOT NULL,
        delivered_at TEXT, last_error TEXT);
     CREATE INDEX outbox_pending ON outbox (delivered_at, next_at);",
    // 4: what the garbage collector's deletes look up ([`Store::gc`]): without these, each
    // of them scans its whole table while holding the write lock.
    "CREATE INDEX decisions_time ON decisions (time);
     CREATE INDEX decisions_event ON decisions (event_id);
     CREATE INDEX events_first_seen ON events (first_seen);
     CREATE INDEX outbox_decision ON outbox (decision_id);
     CREATE INDEX ingest_keys_received ON ingest_keys (received_at);
     CREATE INDEX attempts_last ON attempts (last_at);",
    // 5: Scheduled Events approvals (StartRequests), by EventId: written before the request
    // (`sent` 0: it may have been sent) and with the step's outcome (`sent` 1), so that no
    // restart or rolled-back batch reads an approved event's disappearance as a cancellation.
    "CREATE TABLE approvals (
        event_id TEXT PRIMARY KEY COLLATE NOCASE, decision_id TEXT NOT NULL,
        at TEXT NOT NULL, sent INTEGER NOT NULL);
     CREATE INDEX approvals_at ON approvals (at);",
    // 6: pauses (`keel pause`), by canonical scope, and the decisions held by one until the
    // resume (or their deadline).
    "CREATE TABLE pauses (
        scope TEXT PRIMARY KEY, reason TEXT NOT NULL, by TEXT NOT NULL, at TEXT NOT NULL);
     CREATE TABLE held (
        decision_id TEXT PRIMARY KEY, event_id TEXT NOT NULL, action TEXT NOT NULL,
        event_json TEXT NOT NULL, scope TEXT NOT NULL, reason TEXT NOT NULL,
        at TEXT NOT NULL, deadline TEXT);",
    // 7: what holds a held decision (`by`: pause, window, blocker or budget); the budgets'
    // leases (one per decision and budget: holder, expiry, bake after release) and the
    // members each budget key has been seen with (its observed group and their health).
    "ALTER TABLE held ADD COLUMN by TEXT NOT NULL DEFAULT 'pause';
     CREATE TABLE leases (
        decision_id TEXT NOT NULL, budget TEXT NOT NULL, key TEXT NOT NULL,
        unit TEXT NOT NULL, holder TEXT NOT NULL, max_in_flight INTEGER NOT NULL,
        bake_s INTEGER NOT NULL, acquired_at TEXT NOT NULL, renewed_at TEXT NOT NULL,
        expires_at TEXT NOT NULL, released_at TEXT,
        PRIMARY KEY (decision_id, budget));
     CREATE INDEX leases_key ON leases (budget, key, expires_at);
     CREATE INDEX leases_expiry ON leases (expires_at);
     CREATE TABLE budget_members (
        budget TEXT NOT NULL, key TEXT NOT NULL, member TEXT NOT NULL,
        healthy INTEGER NOT NULL, seen_at TEXT NOT NULL,
        PRIMARY KEY (budget, key, member));
     CREATE INDEX budget_members_seen ON budget_members (seen_at);",
];

/// The garbage collector's deletes, in order ([`Store::gc`]); `?1` is the cut-off time. Each
/// finds its rows through an index (migration 4), except `steps`, whose scan probes the
/// decisions' primary key once per row.
const GC_DELETES: [&str; 9] = [
    "DELETE FROM decisions WHERE time < ?1 AND runbook NOT IN ('pending', 'held')
       AND NOT EXISTS (SELECT 1 FROM outbox o
                       WHERE o.decision_id = decisions.decision_id AND o.delivered_at IS NULL)",
    "DELETE FROM steps WHERE NOT EXISTS
       (SELECT 1 FROM decisions d WHERE d.decision_id = steps.decision_id)",
    "DELETE FROM events WHERE first_seen < ?1 AND NOT EXISTS
       (SELECT 1 FROM decisions d WHERE d.event_id = events.id)",
    "DELETE FROM outbox WHERE delivered_at IS NOT NULL AND delivered_at < ?1",
    "DELETE FROM ingest_keys WHERE received_at < ?1",
    "DELETE FROM attempts WHERE last_at < ?1",
    "DELETE FROM approvals WHERE at < ?1",
    "DELETE FROM leases WHERE expires_at < ?1",
    "DELETE FROM budget_members WHERE seen_at < ?1",
];

/// The schema version this binary writes (`PRAGMA user_version`: how many migrations ran). A
/// database with a higher version was written by a newer Keel and is refused.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Creates `dir` (and its missing parents) if it is missing; a directory created here is 0700
/// whatever the umask. An existing directory is left as it is.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir)?;
    restrict(dir, 0o700)
}

/// The schema version (`user_version`) in a database file's header, read without SQLite (0
/// for an empty or short file). A version written since the last checkpoint is only in the
/// `-wal`: [`Store::open`] checks again once the database is open, before any write.
fn header_version(path: &Path) -> std::io::Result<i64> {
    use std::io::Read;
    let mut head = [0u8; 64];
    let mut f = std::fs::File::open(path)?;
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..])? {
            0 => return Ok(0),
            k => n += k,
        }
    }
    // The header's user_version: a big-endian 32-bit integer at offset 60.
    Ok(i64::from(i32::from_be_bytes([
        head[60], head[61], head[62], head[63],
    ])))
}

/// Creates an empty database file readable and writable by its owner only.
fn create_private_file(path: &Path) -> std::io::Result<()> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path).map(drop)
}

/// Sets `path`'s permission bits to exactly `mode` (the umask does not apply to chmod).
fn restrict(path: &Path, mode: u32) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
    }
    #[cfg(not(unix))]
    {
        let _ = (path, mode);
        Ok(())
    }
}

/// The state database.
pub struct Store {
    conn: Mutex<Connection>,
}

/// The state database inside a [`Store::batch`] (or for one call): what the decision path
/// reads and writes. Its writes commit with the batch, all or nothing.
pub struct Db<'a>(&'a Connection);

/// Executes `sql` through the connection's statement cache (the decision path runs the same
/// few statements thousands of times a second: parse them once).
fn exec(c: &Connection, sql: &str, p: impl rusqlite::Params) -> rusqlite::Result<usize> {
    c.prepare_cached(sql)?.execute(p)
}

/// Reads one row through the statement cache (see [`exec`]).
fn row<T>(
    c: &Connection,
    sql: &str,
    p: impl rusqlite::Params,
    f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    c.prepare_cached(sql)?.query_row(p, f)
}

/// Runs `f` atomically: a savepoint, which nests inside a batch's transaction and is a
/// transaction of its own outside one.
fn atomic<R>(c: &Connection, f: impl FnOnce() -> Result<R, StoreError>) -> Result<R, StoreError> {
    exec(c, "SAVEPOINT keel_atomic", [])?;
    match f() {
        Ok(r) => {
            exec(c, "RELEASE keel_atomic", [])?;
            Ok(r)
        }
        Err(e) => {
            let _ = c.execute_batch("ROLLBACK TO keel_atomic; RELEASE keel_atomic");
            Err(e)
        }
    }
}

/// A step's record when it is about to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepRecord {
    /// Never started: run it.
    New,
    /// Finished before (with this outcome): do not run it again.
    Done(String),
    /// Started and never finished (a crash in the middle): run it again only if idempotent.
    InDoubt,
}

/// An event and its decision, to record together.
#[derive(Debug, Clone, Copy)]
pub struct NewDecision<'a> {
    /// The event's id.
    pub event_id: &'a str,
    /// The event's status (an event is new once per status).
    pub status: &'a str,
    /// When (RFC 3339, UTC).
    pub now: &'a str,
    /// The normalizer state that produced the event, as JSON (`None` inside a batch, which
    /// writes the state once, at its end).
    pub normalizer_state: Option<&'a str>,
    /// The decision's id.
    pub decision_id: &'a str,
    /// `live` or `dry_run`.
    pub mode: &'a str,
    /// The policy set's digest.
    pub policy_set: &'a str,
    /// The action decided.
    pub action: &'a str,
    /// The event, as JSON.
    pub event_json: &'a str,
    /// The decision, as JSON.
    pub decision_json: &'a str,
    /// The runbook's state: `pending`, `planned`, `done`.
    pub runbook: &'a str,
    /// For an ingest body: its idempotency key and attempt, written in the same transaction.
    pub ingest: Option<IngestRecord<'a>>,
    /// Escalations to deliver through the outbox, written in the same transaction.
    pub outbox: &'a [NewOutbox<'a>],
}

/// An escalation to put in the outbox.
#[derive(Debug, Clone, Copy)]
pub struct NewOutbox<'a> {
    /// Its idempotency key (the `Idempotency-Key` of every delivery attempt).
    pub key: &'a str,
    /// The decision it belongs to.
    pub decision_id: &'a str,
    /// What to deliver, as JSON.
    pub body: &'a str,
}

/// An escalation in the outbox, not yet delivered.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    /// Its idempotency key.
    pub key: String,
    /// The decision it belongs to.
    pub decision_id: String,
    /// What to deliver, as JSON.
    pub body: String,
    /// How many delivery attempts failed so far.
    pub attempts: i64,
}

fn insert_outbox(c: &Connection, o: &NewOutbox<'_>, now: &str) -> Result<(), StoreError> {
    exec(
        c,
        "INSERT OR IGNORE INTO outbox (key, decision_id, created_at, body, attempts, next_at)
         VALUES (?1, ?2, ?3, ?4, 0, ?3)",
        params![o.key, o.decision_id, now, o.body],
    )?;
    Ok(())
}

/// What the ingest endpoint remembers of an accepted body.
#[derive(Debug, Clone, Copy)]
pub struct IngestRecord<'a> {
    /// The body's idempotency key: a repeat is accepted once.
    pub key: &'a str,
    /// The resource and operation whose attempts are counted, when the resource is known.
    pub counted: Option<(&'a str, &'a str)>,
    /// The attempt this failure was (stamped by the host, or given by the body).
    pub attempt: i64,
}

/// How many rows one garbage collection deleted, per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcCounts {
    /// Decisions (with finished runbooks).
    pub decisions: usize,
    /// Step executions of those decisions.
    pub steps: usize,
    /// Seen events no decision refers to any more.
    pub events: usize,
    /// Delivered escalations.
    pub outbox: usize,
    /// Ingest idempotency keys.
    pub ingest_keys: usize,
    /// Attempt counts of (resource, operation).
    pub attempts: usize,
    /// Scheduled Events approvals.
    pub approvals: usize,
    /// Budget leases expired (and baked) before the cut-off.
    pub leases: usize,
    /// Budget group members not seen since the cut-off.
    pub budget_members: usize,
}

impl GcCounts {
    /// All rows deleted.
    pub fn total(&self) -> usize {
        self.decisions
            + self.steps
            + self.events
            + self.outbox
            + self.ingest_keys
            + self.attempts
            + self.approvals
            + self.leases
            + self.budget_members
    }
}

/// A decision whose runbook did not finish.
#[derive(Debug, Clone)]
pub struct Pending {
    /// Its id.
    pub decision_id: String,
    /// The event, as JSON.
    pub event_json: String,
    /// The decision, as JSON.
    pub decision_json: String,
}

impl Store {
    /// Opens (creating it and its directory) and migrates the database. A database with a
    /// newer schema version than [`SCHEMA_VERSION`] is refused before anything is written to
    /// it. The state directory Keel creates is 0700; the database and its `-wal` and `-shm`
    /// files are 0600 (whatever the umask).
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let files = |e| StoreError::Files(path.to_path_buf(), e);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_private_dir(dir).map_err(|e| StoreError::Files(dir.to_path_buf(), e))?;
        }
        if path.exists() {
            // Read the version from the file's header, without SQLite: a newer database is
            // left exactly as it is (no journal-mode change, no migration, no new file).
            let found = header_version(path).map_err(files)?;
            if found > SCHEMA_VERSION {
                return Err(StoreError::NewerSchema {
                    found,
                    supported: SCHEMA_VERSION,
                });
            }
        } else {
            create_private_file(path).map_err(files)?;
        }
        restrict(path, 0o600).map_err(files)?;
        let conn = Connection::open(path)?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        // First: `keel pause` opens the database while `keel run` writes to it.
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        // SQLite creates `-wal` and `-shm` with the database's mode; make sure of it (and
        // tighten files left by an older Keel).
        for suffix in ["-wal", "-shm"] {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            let p = std::path::PathBuf::from(p);
            if p.exists() {
                restrict(&p, 0o600).map_err(|e| StoreError::Files(p.clone(), e))?;
            }
        }
        for (i, m) in MIGRATIONS
            .iter()
            .enumerate()
            .skip(usize::try_from(version).unwrap_or(0))
        {
            conn.execute_batch(&format!(
                "BEGIN; {m}; PRAGMA user_version = {}; COMMIT;",
                i + 1
            ))?;
        }
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    /// The connection. A batch holds it while it decides (which may call plugins until their
    /// deadlines) and a garbage collection while it deletes: when it is taken, a caller on a
    /// worker of the multi-threaded runtime (a runbook recording a step, the outbox) waits
    /// with [`tokio::task::block_in_place`], which hands the worker's other tasks (`/healthz`,
    /// ingest, timers, drain deadlines) to another thread instead of stalling them.
    fn c(&self) -> Result<MutexGuard<'_, Connection>, StoreError> {
        match self.conn.try_lock() {
            Ok(c) => Ok(c),
            Err(std::sync::TryLockError::Poisoned(_)) => Err(StoreError::Poisoned),
            Err(std::sync::TryLockError::WouldBlock) => {
                let wait = || self.conn.lock().map_err(|_| StoreError::Poisoned);
                let on_worker = tokio::runtime::Handle::try_current().is_ok_and(|h| {
                    h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
                });
                if on_worker {
                    tokio::task::block_in_place(wait)
                } else {
                    wait()
                }
            }
        }
    }

    /// Runs `f` on the database; its writes are one transaction per call of a [`Db`] method.
    pub fn with<R>(
        &self,
        f: impl FnOnce(&Db<'_>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let c = self.c()?;
        f(&Db(&c))
    }

    /// Group commit: runs `f` in one transaction (`BEGIN IMMEDIATE` ... `COMMIT`), holding the
    /// database for the whole batch so that no other writer (a runbook recording a step before
    /// its effect) lands in it. `f`'s writes are durable when this returns `Ok`, and none of
    /// them is when it returns `Err` (`f`'s own error, or the commit's).
    pub fn batch<R>(
        &self,
        f: impl FnOnce(&Db<'_>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let c = self.c()?;
        c.execute_batch("BEGIN IMMEDIATE")?;
        let r = f(&Db(&c)).and_then(|r| {
            c.execute_batch("COMMIT")?;
            Ok(r)
        });
        if r.is_err() && !c.is_autocommit() {
            let _ = c.execute_batch("ROLLBACK");
        }
        r
    }

    /// Whether an event was seen before in this status.
    pub fn seen(&self, event_id: &str, status: &str) -> Result<bool, StoreError> {
        self.with(|db| db.seen(event_id, status))
    }

    /// The saved normalizer state, if any.
    pub fn normalizer_state(&self) -> Result<Option<String>, StoreError> {
        Ok(self
            .c()?
            .query_row(
                "SELECT json FROM normalizer_state WHERE name = 'all'",
                [],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Writes a step's start (with its idempotency key) before its effect, or reports what is
    /// known of it.
    pub fn begin_step(
        &self,
        key: &str,
        decision_id: &str,
        idx: usize,
        name: &str,
        idempotent: bool,
        now: &str,
    ) -> Result<StepRecord, StoreError> {
        let mut c = self.c()?;
        // One transaction: the read and the write cannot interleave with another writer.
        let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let row: Option<(Option<String>,)> = tx
            .query_row(
                "SELECT outcome FROM steps WHERE key = ?1",
                params![key],
                |r| Ok((r.get(0)?,)),
            )
            .optional()?;
        let rec = match row {
            Some((Some(outcome),)) => StepRecord::Done(outcome),
            Some((None,)) => {
                tx.execute(
                    "UPDATE steps SET attempts = attempts + 1 WHERE key = ?1",
                    params![key],
                )?;
                StepRecord::InDoubt
            }
            None => {
                tx.execute(
                    "INSERT INTO steps (key, decision_id, idx, name, idempotent, started_at, attempts)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1)",
                    params![key, decision_id, idx as i64, name, idempotent, now],
                )?;
                StepRecord::New
            }
        };
        tx.commit()?;
        Ok(rec)
    }

    /// Records a step's outcome and, for an `azure_ack` step that sent StartRequests, the
    /// approval (`(EventId, decision id)`), in one transaction.
    pub fn finish_step_approving(
        &self,
        key: &str,
        outcome: &str,
        approval: Option<(&str, &str)>,
        now: &str,
    ) -> Result<(), StoreError> {
        let mut c = self.c()?;
        let tx = c.transaction()?;
        tx.execute(
            "UPDATE steps SET outcome = ?2, finished_at = ?3 WHERE key = ?1",
            params![key, outcome, now],
        )?;
        if let Some((event_id, decision_id)) = approval {
            tx.execute(
                "INSERT INTO approvals (event_id, decision_id, at, sent) VALUES (?1, ?2, ?3, 1)
                 ON CONFLICT (event_id) DO UPDATE SET sent = 1, at = excluded.at",
                params![event_id, decision_id, now],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Records, before StartRequests is sent for the Scheduled Event `event_id`, that it may
    /// be approved from now on (an approval already recorded stays as it is).
    pub fn approval_before_send(
        &self,
        event_id: &str,
        decision_id: &str,
        now: &str,
    ) -> Result<(), StoreError> {
        self.c()?.execute(
            "INSERT OR IGNORE INTO approvals (event_id, decision_id, at, sent) VALUES (?1, ?2, ?3, 0)",
            params![event_id, decision_id, now],
        )?;
        Ok(())
    }

    /// Marks a decision's runbook finished and, when it failed, puts its escalation in the
    /// outbox, in one transaction.
    pub fn finish_runbook_escalating(
        &self,
        decision_id: &str,
        state: &str,
        escalation: Option<&NewOutbox<'_>>,
        now: &str,
    ) -> Result<(), StoreError> {
        let mut c = self.c()?;
        let tx = c.transaction()?;
        tx.execute(
            "UPDATE decisions SET runbook = ?2 WHERE decision_id = ?1",
            params![decision_id, state],
        )?;
        if let Some(o) = escalation {
            insert_outbox(&tx, o, now)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Up to `limit` undelivered outbox entries due at `now` (RFC 3339, UTC), oldest first.
    pub fn outbox_due(&self, now: &str, limit: usize) -> Result<Vec<OutboxRow>, StoreError> {
        let c = self.c()?;
        let mut st = c.prepare(
            "SELECT key, decision_id, body, attempts FROM outbox
             WHERE delivered_at IS NULL AND next_at <= ?1 ORDER BY created_at, key LIMIT ?2",
        )?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = st.query_map(params![now, limit], |r| {
            Ok(OutboxRow {
                key: r.get(0)?,
                decision_id: r.get(1)?,
                body: r.get(2)?,
                attempts: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Marks an outbox entry delivered.
    pub fn outbox_delivered(&self, key: &str, now: &str) -> Result<(), StoreError> {
        self.c()?.execute(
            "UPDATE outbox SET delivered_at = ?2, attempts = attempts + 1 WHERE key = ?1",
            params![key, now],
        )?;
        Ok(())
    }

    /// Records a failed delivery attempt and when to try again.
    pub fn outbox_retry(&self, key: &str, next_at: &str, error: &str) -> Result<(), StoreError> {
        self.c()?.execute(
            "UPDATE outbox SET attempts = attempts + 1, next_at = ?2, last_error = ?3 WHERE key = ?1",
            params![key, next_at, error],
        )?;
        Ok(())
    }

    /// How many outbox entries are not delivered yet.
    pub fn outbox_depth(&self) -> Result<i64, StoreError> {
        Ok(self.c()?.query_row(
            "SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL",
            [],
            |r| r.get(0),
        )?)
    }

    /// When a decision was made (RFC 3339, UTC), if it is recorded.
    pub fn decided_at(&self, decision_id: &str) -> Result<Option<String>, StoreError> {
        Ok(row(
            &*self.c()?,
            "SELECT time FROM decisions WHERE decision_id = ?1",
            params![decision_id],
            |r| r.get(0),
        )
        .optional()?)
    }

    /// Decisions whose runbook is still `pending` (after a restart: resume them).
    pub fn pending(&self) -> Result<Vec<Pending>, StoreError> {
        let c = self.c()?;
        let mut st = c.prepare(
            "SELECT decision_id, event_json, decision_json FROM decisions WHERE runbook = 'pending' ORDER BY time",
        )?;
        let rows = st.query_map([], |r| {
            Ok(Pending {
                decision_id: r.get(0)?,
                event_json: r.get(1)?,
                decision_json: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// The events and decisions recorded at or after `since` (RFC 3339, UTC), oldest first,
    /// at most `limit` (the newest): the correlation history to rebuild after a restart.
    pub fn decisions_since(
        &self,
        since: &str,
        limit: usize,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let c = self.c()?;
        let mut st = c.prepare(
            "SELECT event_json, decision_json FROM
               (SELECT time, event_json, decision_json FROM decisions WHERE time >= ?1
                ORDER BY time DESC LIMIT ?2)
             ORDER BY time",
        )?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = st.query_map(params![since, limit], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Deletes finished history older than `before` (RFC 3339, UTC): decisions whose runbook
    /// is not pending nor held by a pause and that have no undelivered escalation, their step executions, the seen
    /// events no remaining decision refers to, delivered escalations, ingest keys and attempt
    /// counts, budget leases and members. Pending runbooks, deferrals and undelivered escalations are never collected.
    /// Returns how many rows went, per table.
    pub fn gc(&self, before: &str) -> Result<GcCounts, StoreError> {
        let mut c = self.c()?;
        let tx = c.transaction()?;
        let mut n = [0usize; GC_DELETES.len()];
        for (count, sql) in n.iter_mut().zip(GC_DELETES) {
            *count = if sql.contains("?1") {
                tx.execute(sql, params![before])?
            } else {
                tx.execute(sql, [])?
            };
        }
        let [decisions, steps, events, outbox, ingest_keys, attempts, approvals, leases, budget_members] =
            n;
        tx.commit()?;
        Ok(GcCounts {
            decisions,
            steps,
            events,
            outbox,
            ingest_keys,
            attempts,
            approvals,
            leases,
            budget_members,
        })
    }

    /// How many step executions finished with each outcome (for tests and the demo).
    pub fn step_outcomes(&self) -> Result<Vec<(String, Option<String>)>, StoreError> {
        let c = self.c()?;
        let mut st = c.prepare("SELECT name, outcome FROM steps ORDER BY started_at, idx")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
}

impl Db<'_> {
    /// Takes (reads and deletes) the deferrals due at `now` (RFC 3339, compared as text in
    /// UTC); use inside a batch, which records their new decisions in the same transaction.
    pub fn take_due(&self, now: &str) -> Result<Vec<(String, String)>, StoreError> {
        let due: Vec<(String, String)> = {
            let mut st = self
                .0
                .prepare("SELECT event_id, event_json FROM deferred WHERE due <= ?1")?;
            let rows = st.query_map(params![now], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        for (id, _) in &due {
            exec(
                self.0,
                "DELETE FROM deferred WHERE event_id = ?1",
                params![id],
            )?;
        }
        Ok(due)
    }

    /// Whether StartRequests was (or may have been) sent for the Scheduled Event `event_id`
    /// (compared case-insensitively).
    pub fn approved(&self, event_id: &str) -> Result<bool, StoreError> {
        Ok(row(
            self.0,
            "SELECT 1 FROM approvals WHERE event_id = ?1",
            params![event_id],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
    }

    /// Whether an event was seen before in this status.
    pub fn seen(&self, event_id: &str, status: &str) -> Result<bool, StoreError> {
        Ok(row(
            self.0,
            "SELECT 1 FROM events WHERE id = ?1 AND status = ?2",
            params![event_id, status],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
    }

    /// The event an ingest idempotency key was accepted as, if it was.
    pub fn ingest_key(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(row(
            self.0,
            "SELECT event_id FROM ingest_keys WHERE key = ?1",
            params![key],
            |r| r.get(0),
        )
        .optional()?)
    }

    /// How many failed attempts of `operation` on `resource` were counted since `since`
    /// (RFC 3339, UTC); 0 when the last one is older.
    pub fn attempts(
        &self,
        resource: &str,
        operation: &str,
        since: &str,
    ) -> Result<i64, StoreError> {
        Ok(row(
            self.0,
            "SELECT count FROM attempts WHERE resource = ?1 AND operation = ?2 AND last_at >= ?3",
            params![resource, operation, since],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0))
    }

    /// Records an event as seen (in this status) together with its decision, in one
    /// transaction with the normalizer state that produced it (and, for an ingest body, its
    /// idempotency key and attempt count). Returns false when the event was seen in this
    /// status before (then only the normalizer state and the ingest key are written).
    pub fn record(&self, r: &NewDecision<'_>) -> Result<bool, StoreError> {
        let tx = self.0;
        atomic(tx, || {
            let new = exec(
                tx,
                "INSERT OR IGNORE INTO events (id, status, first_seen) VALUES (?1, ?2, ?3)",
                params![r.event_id, r.status, r.now],
            )? == 1;
            if let Some(state) = r.normalizer_state {
                exec(
                    tx,
                    "INSERT INTO normalizer_state (name, json) VALUES ('all', ?1)
                 ON CONFLICT (name) DO UPDATE SET json = excluded.json",
                    params![state],
                )?;
            }
            if new {
                exec(tx,
                "INSERT INTO decisions (decision_id, time, event_id, mode, policy_set, action, event_json, decision_json, runbook)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![r.decision_id, r.now, r.event_id, r.mode, r.policy_set, r.action, r.event_json, r.decision_json, r.runbook],
            )?;
                for o in r.outbox {
                    insert_outbox(tx, o, r.now)?;
                }
            }
            if let Some(i) = &r.ingest {
                exec(tx,
                "INSERT OR IGNORE INTO ingest_keys (key, received_at, event_id) VALUES (?1, ?2, ?3)",
                params![i.key, r.now, r.event_id],
            )?;
                if let (true, Some((resource, operation))) = (new, i.counted) {
                    exec(tx,
                    "INSERT INTO attempts (resource, operation, count, last_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (resource, operation) DO UPDATE SET count = excluded.count, last_at = excluded.last_at",
                    params![resource, operation, i.attempt, r.now],
                )?;
                }
            }
            Ok(new)
        })
    }

    /// Saves the normalizer state alone (a poll that produced no event).
    pub fn save_normalizer_state(&self, json: &str) -> Result<(), StoreError> {
        exec(
            self.0,
            "INSERT INTO normalizer_state (name, json) VALUES ('all', ?1)
             ON CONFLICT (name) DO UPDATE SET json = excluded.json",
            params![json],
        )?;
        Ok(())
    }

    /// Remembers that `event` must be decided again at `due`.
    pub fn defer(&self, event_id: &str, due: &str, event_json: &str) -> Result<(), StoreError> {
        exec(self.0,
            "INSERT INTO deferred (event_id, due, event_json) VALUES (?1, ?2, ?3)
             ON CONFLICT (event_id) DO UPDATE SET due = excluded.due, event_json = excluded.event_json",
            params![event_id, due, event_json],
        )?;
        Ok(())
    }
}

mod budget;
mod pause;
pub use budget::{LeaseRow, LeaseWant};
pub use pause::{HeldRow, Status};

#[cfg(test)]
mod tests;
