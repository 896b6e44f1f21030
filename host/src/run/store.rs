//! Durable state behind one narrow interface: events seen, decisions, step executions (each
//! written, with its idempotency key, before its effect), deferred work, normalizer state.
//! Two backends, one SQL ([`sql`]): SQLite in WAL mode with `synchronous=FULL` (survives
//! power loss) for one host, and PostgreSQL ([`pg`]) for a fleet whose hosts share budgets,
//! guards, escalations and history. Versioned migrations for each.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::Connection;

use sql::{p, Begin, Conn};

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
    /// PostgreSQL refused a statement (its message and SQLSTATE).
    #[error("state database: {0}")]
    Pg(String),
    /// PostgreSQL cannot be reached, or the connection broke (a transaction open on it was
    /// rolled back by the server).
    #[error("state database unavailable: {0}")]
    Unavailable(String),
    /// Another `keel run` with this host's identity is connected to the database.
    #[error(
        "state database: another keel run with the identity `{0}` is connected to it; one keel run per host: stop that one first, or give this one its own `self`"
    )]
    HostTaken(String),
    /// A row did not have the shape the store wrote.
    #[error("state database: unexpected row: {0}")]
    Shape(String),
    /// Syncing the write-ahead log to the disk failed: the store refuses everything after
    /// it, and a restart recovers what is on the disk.
    #[error("state database: the log could not be synced to the disk ({0}); restart keel run, which recovers what the disk holds")]
    Unsynced(String),
}

/// Runs `f`, which blocks (a lock wait, a flush, a query that may take long), with
/// [`tokio::task::block_in_place`] when called on a worker of a multi-threaded runtime, so
/// that the worker's other tasks (`/healthz`, ingest, timers, drain deadlines) move to another
/// thread meanwhile; else as it is.
pub fn blocking<R>(f: impl FnOnce() -> R) -> R {
    let on_worker = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if on_worker {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

/// A decision's id: the first 8 bytes of the SHA-256 of its event's id and the status it
/// was decided in, so that a replay finds the same id. The store knows an event was seen
/// in a status by its decision ([`SEEN`]).
pub fn decision_key(event_id: &str, status: &str) -> String {
    super::short_hash(&format!("{event_id}\u{1f}{status}"), 8)
}

/// Whether an event was seen in a status: its decision exists (`?1` its id,
/// [`decision_key`]; `?2` the event's id, so that two events whose ids hash alike are
/// never taken for each other). The decision is written with the event's first sight,
/// in the same transaction, and the garbage collector removes it with its history.
pub(crate) const SEEN: &str = "SELECT 1 FROM decisions WHERE decision_id = ?1 AND event_id = ?2";

/// How much of the database file SQLite reads through a memory map (`PRAGMA mmap_size`).
pub const MMAP_BYTES: i64 = 256 * 1024 * 1024;

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
    // 8: which host a decision, a held decision and a deferral belong to: SQLite's single
    // host leaves it empty; PostgreSQL's fleet writes the host's identity.
    "ALTER TABLE decisions ADD COLUMN host TEXT NOT NULL DEFAULT '';
     ALTER TABLE held ADD COLUMN host TEXT NOT NULL DEFAULT '';
     ALTER TABLE deferred ADD COLUMN host TEXT NOT NULL DEFAULT '';",
    // 9: an event is seen in a status when its decision exists ([`SEEN`]): the events
    // table said the same (a decision was written exactly when its event was new) and
    // cost, with the decisions' index by event that only its garbage collection read,
    // three more B-tree inserts a decision.
    "DROP INDEX decisions_event;
     DROP TABLE events;",
    // 10: the open decisions (a runbook pending or held) by event, for the garbage
    // collector: it keeps every decision of an event one of them is open for, so that the
    // statuses a pending runbook checks (was its event canceled?) stay seen. Partial: a
    // finished decision is not written into it.
    "CREATE INDEX decisions_open ON decisions (event_id) WHERE runbook IN ('pending', 'held');",
];

/// The PostgreSQL schema's migrations, in order; `keel_schema.version` records how many ran.
/// The same tables as SQLite's (every text compared or ordered byte-wise, as SQLite does,
/// whatever the database's locale), plus `decisions.seq`: the order decisions were committed
/// in (the decision path commits under the write lock), which the hosts of a fleet read each
/// other's decisions by.
pub const PG_MIGRATIONS: &[&str] = &[
    r#"
    CREATE TABLE events (
        id TEXT COLLATE "C" NOT NULL, status TEXT COLLATE "C" NOT NULL,
        first_seen TEXT COLLATE "C" NOT NULL, PRIMARY KEY (id, status));
    CREATE INDEX events_first_seen ON events (first_seen);
    CREATE TABLE decisions (
        seq BIGSERIAL UNIQUE, decision_id TEXT COLLATE "C" PRIMARY KEY,
        time TEXT COLLATE "C" NOT NULL, event_id TEXT COLLATE "C" NOT NULL,
        mode TEXT NOT NULL, policy_set TEXT NOT NULL, action TEXT NOT NULL,
        event_json TEXT NOT NULL, decision_json TEXT NOT NULL, runbook TEXT NOT NULL,
        host TEXT COLLATE "C" NOT NULL DEFAULT '');
    CREATE INDEX decisions_time ON decisions (time);
    CREATE INDEX decisions_event ON decisions (event_id);
    CREATE INDEX decisions_host ON decisions (host, runbook);
    CREATE TABLE steps (
        key TEXT COLLATE "C" PRIMARY KEY, decision_id TEXT COLLATE "C" NOT NULL,
        idx BIGINT NOT NULL, name TEXT NOT NULL, idempotent BIGINT NOT NULL,
        started_at TEXT COLLATE "C" NOT NULL, attempts BIGINT NOT NULL,
        finished_at TEXT COLLATE "C", outcome TEXT);
    CREATE INDEX steps_decision ON steps (decision_id);
    CREATE TABLE deferred (
        event_id TEXT COLLATE "C" PRIMARY KEY, due TEXT COLLATE "C" NOT NULL,
        event_json TEXT NOT NULL, host TEXT COLLATE "C" NOT NULL DEFAULT '');
    CREATE TABLE normalizer_state (name TEXT COLLATE "C" PRIMARY KEY, json TEXT NOT NULL);
    CREATE TABLE ingest_keys (
        key TEXT COLLATE "C" PRIMARY KEY, received_at TEXT COLLATE "C" NOT NULL,
        event_id TEXT NOT NULL);
    CREATE INDEX ingest_keys_received ON ingest_keys (received_at);
    CREATE TABLE attempts (
        resource TEXT COLLATE "C" NOT NULL, operation TEXT COLLATE "C" NOT NULL,
        count BIGINT NOT NULL, last_at TEXT COLLATE "C" NOT NULL,
        PRIMARY KEY (resource, operation));
    CREATE INDEX attempts_last ON attempts (last_at);
    CREATE TABLE outbox (
        key TEXT COLLATE "C" PRIMARY KEY, decision_id TEXT COLLATE "C" NOT NULL,
        created_at TEXT COLLATE "C" NOT NULL, body TEXT NOT NULL, attempts BIGINT NOT NULL,
        next_at TEXT COLLATE "C" NOT NULL, delivered_at TEXT COLLATE "C", last_error TEXT);
    CREATE INDEX outbox_pending ON outbox (delivered_at, next_at);
    CREATE INDEX outbox_decision ON outbox (decision_id);
    CREATE TABLE approvals (
        event_id TEXT COLLATE "C" PRIMARY KEY, decision_id TEXT NOT NULL,
        at TEXT COLLATE "C" NOT NULL, sent BIGINT NOT NULL);
    CREATE INDEX approvals_at ON approvals (at);
    CREATE TABLE pauses (
        scope TEXT COLLATE "C" PRIMARY KEY, reason TEXT NOT NULL, "by" TEXT NOT NULL,
        at TEXT COLLATE "C" NOT NULL);
    CREATE TABLE held (
        decision_id TEXT COLLATE "C" PRIMARY KEY, event_id TEXT NOT NULL,
        action TEXT NOT NULL, event_json TEXT NOT NULL, scope TEXT NOT NULL,
        reason TEXT NOT NULL, at TEXT COLLATE "C" NOT NULL, deadline TEXT COLLATE "C",
        "by" TEXT NOT NULL DEFAULT 'pause', host TEXT COLLATE "C" NOT NULL DEFAULT '');
    CREATE TABLE leases (
        decision_id TEXT COLLATE "C" NOT NULL, budget TEXT COLLATE "C" NOT NULL,
        key TEXT COLLATE "C" NOT NULL, unit TEXT COLLATE "C" NOT NULL,
        holder TEXT COLLATE "C" NOT NULL, max_in_flight BIGINT NOT NULL,
        bake_s BIGINT NOT NULL, acquired_at TEXT COLLATE "C" NOT NULL,
        renewed_at TEXT COLLATE "C" NOT NULL, expires_at TEXT COLLATE "C" NOT NULL,
        released_at TEXT COLLATE "C", PRIMARY KEY (decision_id, budget));
    CREATE INDEX leases_key ON leases (budget, key, expires_at);
    CREATE INDEX leases_expiry ON leases (expires_at);
    CREATE TABLE budget_members (
        budget TEXT COLLATE "C" NOT NULL, key TEXT COLLATE "C" NOT NULL,
        member TEXT COLLATE "C" NOT NULL, healthy BIGINT NOT NULL,
        seen_at TEXT COLLATE "C" NOT NULL, PRIMARY KEY (budget, key, member));
    CREATE INDEX budget_members_seen ON budget_members (seen_at);
"#,
    // 2: decisions (an event and a decision of 1 to 4 KB) are stored as they are, not compressed:
    // a fleet writes them under its write lock, where compressing them cost a tenth of the
    // server's time, and reads them back at once (the other hosts' correlation history).
    r#"
    ALTER TABLE decisions SET (toast_tuple_target = 8160);
"#,
    // 3: an event is seen in a status when its decision exists, as on SQLite (its
    // migration 9).
    r#"
    DROP INDEX decisions_event;
    DROP TABLE events;
"#,
    // 4: the open decisions by event, as on SQLite (its migration 10).
    r#"
    CREATE INDEX decisions_open ON decisions (event_id) WHERE runbook IN ('pending', 'held');
"#,
];

/// The garbage collector's deletes, in order ([`Store::gc`]); `?1` is the cut-off time. Each
/// finds its rows through an index (migration 4), except `steps`, whose scan probes the
/// decisions' primary key once per row.
const GC_DELETES: [&str; 8] = [
    "DELETE FROM decisions WHERE time < ?1 AND runbook NOT IN ('pending', 'held')
       AND NOT EXISTS (SELECT 1 FROM outbox o
                       WHERE o.decision_id = decisions.decision_id AND o.delivered_at IS NULL)
       AND event_id NOT IN (SELECT event_id FROM decisions WHERE runbook IN ('pending', 'held'))",
    "DELETE FROM steps WHERE NOT EXISTS
       (SELECT 1 FROM decisions d WHERE d.decision_id = steps.decision_id)",
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

/// With [`Store::checkpoint_in_background`], the WAL size (in pages) past which a batch's
/// commit checkpoints by itself (SQLite's default, used without the thread, is 1,000).
pub const WAL_FALLBACK_PAGES: i64 = 16_000;

/// The state database.
pub struct Store {
    conn: Mutex<Conn>,
    /// On PostgreSQL, whether leases are stamped by the database's clock (`keel run`), not
    /// by the times the caller gives (tests on a virtual clock).
    db_clock: std::sync::atomic::AtomicBool,
    /// The host's identity in a fleet's shared database (its decisions, held decisions,
    /// deferrals and normalizer state); empty on SQLite, which has one host.
    host: String,
    /// On SQLite, the database file (for the checkpointing thread's own connection).
    path: Option<PathBuf>,
    /// With [`Store::checkpoint_in_background`]: wakes the checkpointing thread after a
    /// batch commits (it stops when the store is dropped).
    checkpoint: std::sync::OnceLock<std::sync::mpsc::SyncSender<()>>,
    /// [`Store::batch_unsynced`]'s commits and how far the log on disk holds them.
    sync: LogSync,
    /// On SQLite, once [`Store::track_keys`] was called (by `keel run`, holding the state's
    /// lock): the decisions' and ingest keys' filters ([`known`]).
    known: std::sync::OnceLock<known::Tables>,
}

/// How far the commits of [`Store::batch_unsynced`] are on the disk.
#[derive(Default)]
struct LogSync {
    /// Commits made without waiting for the disk, numbered from 1.
    committed: std::sync::atomic::AtomicU64,
    /// The last of them the log is synced through, and the log file (kept open).
    synced: Mutex<(u64, Option<std::fs::File>)>,
    /// Why syncing the log failed: the store then refuses every operation (after a failed
    /// `fsync` the kernel may have dropped the pages it could not write, so nothing written
    /// since the last good sync can be trusted to be on the disk; a restart recovers what
    /// is).
    broken: std::sync::OnceLock<String>,
}

/// A batch committed by [`Store::batch_unsynced`]: on the disk once [`Store::sync`] returns
/// `Ok` for it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[must_use = "a batch is durable only once `Store::sync` returns Ok for it"]
pub struct Unsynced(u64);

/// The state database inside a [`Store::batch`] (or for one call): what the decision path
/// reads and writes. Its writes commit with the batch, all or nothing. In a fleet's batch it
/// carries the batch's cache and unwritten decisions ([`batch`]).
///
/// On SQLite it also carries the filters of what the tables hold ([`known`]).
pub struct Db<'a>(
    &'a Conn,
    &'a str,
    Option<&'a batch::Overlay>,
    Option<&'a known::Tables>,
);

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

fn insert_outbox(c: &Conn, o: &NewOutbox<'_>, now: &str) -> Result<(), StoreError> {
    c.exec(
        "INSERT OR IGNORE INTO outbox (key, decision_id, created_at, body, attempts, next_at)
         VALUES (?1, ?2, ?3, ?4, 0, ?3)",
        p![o.key, o.decision_id, now, o.body],
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
            + self.outbox
            + self.ingest_keys
            + self.attempts
            + self.approvals
            + self.leases
            + self.budget_members
    }
}

/// `fdatasync` of the database's write-ahead log (`<path>-wal`), kept open in `file`. The
/// file is opened again should it not be the one at that path any more (SQLite keeps it
/// while a connection is open; this is a check, not an expected case), and then its
/// directory is synced too: SQLite syncs the directory of a log it creates only at its own
/// first sync, which a log written by `synchronous = NORMAL` commits alone may never have.
fn sync_log(path: &Path, file: &mut Option<std::fs::File>) -> std::io::Result<()> {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let wal = PathBuf::from(wal);
    let on_disk = std::fs::metadata(&wal)?;
    let same = match file {
        Some(f) => same_file(&f.metadata()?, &on_disk),
        None => false,
    };
    if !same {
        let f = std::fs::File::open(&wal)?;
        if let Some(dir) = wal.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        } else {
            std::fs::File::open(".")?.sync_all()?;
        }
        *file = Some(f);
    }
    match file {
        Some(f) => f.sync_data(),
        None => Ok(()),
    }
}

#[cfg(unix)]
fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    (a.dev(), a.ino()) == (b.dev(), b.ino())
}

#[cfg(not(unix))]
fn same_file(_: &std::fs::Metadata, _: &std::fs::Metadata) -> bool {
    // Without inode numbers: open it again every time.
    false
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
        // Statement journals (savepoints inside a transaction) in memory, not in temporary
        // files: they only serve a rollback of the open transaction, which a crash rolls back
        // from the WAL anyway. Written to files (when each decision had its own savepoint)
        // they were a tenth of the ingest path's time (a `pwrite` per page).
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        // Reads through a memory map of the database file's first 256 MiB (writes still go
        // through the WAL): a page the operating system caches is read in place instead of
        // copied in by a `pread` per page, which was most of what a look-up by a random key
        // (the decisions', the ingest keys') cost the deciding thread. A larger page cache
        // did not do the same (16 MiB: no gain). What it costs: the mapped pages count in
        // the process's resident set (as file pages the kernel reclaims), and a read error of
        // the disk under the map ends the process (SIGBUS) instead of failing one statement;
        // the state is then what a `kill -9` leaves, which a restart recovers.
        conn.pragma_update(None, "mmap_size", MMAP_BYTES)?;
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
            conn: Mutex::new(Conn::Lite(conn)),
            db_clock: Default::default(),
            host: String::new(),
            path: Some(path.to_path_buf()),
            checkpoint: Default::default(),
            sync: Default::default(),
            known: Default::default(),
        })
    }

    /// Connects to a fleet's PostgreSQL database as the host `settings.host` and migrates it
    /// (under a lock: hosts starting together migrate once). A database migrated by a newer
    /// Keel is refused, untouched.
    pub fn open_postgres(settings: pg::Settings) -> Result<Store, StoreError> {
        let host = settings.host.clone();
        let pg = pg::Pg::connect(settings)?;
        pg.migrate(PG_MIGRATIONS)?;
        Ok(Store {
            conn: Mutex::new(Conn::Pg(pg)),
            db_clock: Default::default(),
            host,
            path: None,
            checkpoint: Default::default(),
            sync: Default::default(),
            known: Default::default(),
        })
    }

    /// Opens the state a configuration names: its PostgreSQL database, or its SQLite file.
    pub fn open_config(cfg: &crate::config::Config) -> Result<Store, StoreError> {
        match &cfg.postgres {
            Some(pg) => Store::open_postgres(pg.settings(cfg)),
            None => Store::open(&cfg.state),
        }
    }

    /// Opens the state a configuration names for a command beside `keel run` (`keel pause`,
    /// `keel status`, `keel eval --config`): on PostgreSQL under an identity of its own (the
    /// host's, with `#cli-<pid>`), so that it never takes the running host's place; with
    /// `read_only`, nothing is migrated (a schema other than this binary's is an error) and,
    /// on SQLite, the file is opened read-only and must exist.
    pub fn open_for_command(
        cfg: &crate::config::Config,
        read_only: bool,
    ) -> Result<Store, StoreError> {
        let Some(pg) = &cfg.postgres else {
            return if read_only {
                Store::open_read_only(&cfg.state)
            } else {
                Store::open(&cfg.state)
            };
        };
        let mut settings = pg.settings(cfg);
        settings.host = format!("{}#cli-{}", settings.host, std::process::id());
        if !read_only {
            return Store::open_postgres(settings);
        }
        let supported = i64::try_from(PG_MIGRATIONS.len()).unwrap_or(i64::MAX);
        let store = Store {
            conn: Mutex::new(Conn::Pg(pg::Pg::connect(settings)?)),
            db_clock: Default::default(),
            host: String::from("#cli"),
            path: None,
            checkpoint: Default::default(),
            sync: Default::default(),
            known: Default::default(),
        };
        let found = match store.schema_version() {
            Ok(v) => v,
            // No keel_schema table: no keel run has migrated this database yet.
            Err(StoreError::Pg(_)) => 0,
            Err(e) => return Err(e),
        };
        if found != supported {
            return Err(StoreError::OtherSchema { found, supported });
        }
        Ok(store)
    }

    /// Whether this is a fleet's shared (PostgreSQL) database.
    pub fn is_fleet(&self) -> bool {
        !self.host.is_empty()
    }

    /// On a fleet's database, stamps leases with the database's clock from now on (the
    /// hosts' clocks may disagree; the database's is one): their acquisition, renewal,
    /// release and expiry, and the test of which leases are live. The caller's times still
    /// give the lease's length. No effect on SQLite (one host, one clock).
    pub fn use_database_clock(&self) {
        self.db_clock
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// This host's identity in a fleet's database (`None` on SQLite).
    pub fn fleet_identity(&self) -> Option<&str> {
        self.is_fleet().then_some(self.host.as_str())
    }

    /// Whether the database answered the last request (always, for SQLite): `/readyz` is
    /// red while a fleet's database is unreachable.
    pub fn reachable(&self) -> bool {
        match self.conn.try_lock().as_deref() {
            Ok(Conn::Pg(pg)) => pg.up(),
            Ok(Conn::Lite(_)) => true,
            // Busy: someone is using it; its outcome will say.
            Err(_) => true,
        }
    }

    /// The schema version of the database.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        let c = self.c()?;
        match &*c {
            Conn::Lite(c) => Ok(c.pragma_query_value(None, "user_version", |r| r.get(0))?),
            Conn::Pg(_) => c
                .one("SELECT version FROM keel_schema", p![])?
                .map_or(Ok(0), |r| r.get(0)),
        }
    }

    /// The connection. A batch holds it while it decides (which may call plugins until their
    /// deadlines) and a garbage collection while it deletes: when it is taken, a caller on a
    /// worker of the multi-threaded runtime (a runbook recording a step, the outbox) waits
    /// with [`tokio::task::block_in_place`], which hands the worker's other tasks (`/healthz`,
    /// ingest, timers, drain deadlines) to another thread instead of stalling them.
    fn c(&self) -> Result<MutexGuard<'_, Conn>, StoreError> {
        if let Some(why) = self.sync.broken.get() {
            return Err(StoreError::Unsynced(why.clone()));
        }
        match self.conn.try_lock() {
            Ok(c) => Ok(c),
            Err(std::sync::TryLockError::Poisoned(_)) => Err(StoreError::Poisoned),
            Err(std::sync::TryLockError::WouldBlock) => {
                blocking(|| self.conn.lock().map_err(|_| StoreError::Poisoned))
            }
        }
    }

    /// Keeps filters of the decisions' ids and the ingest keys ([`known`]) from now on, on
    /// SQLite: only for the process that holds the state's lock (`keel run`), since a filter
    /// must be given every key inserted into its table. A no-op on PostgreSQL.
    pub fn track_keys(&self) {
        let _ = self.known.set(known::Tables::default());
    }

    /// The filters of what the tables hold, on SQLite ([`known`]).
    fn filters(&self, c: &Conn) -> Option<&known::Tables> {
        self.known.get().filter(|_| !c.is_fleet())
    }

    /// Runs `f` on the database; its writes are one transaction per call of a [`Db`] method.
    pub fn with<R>(
        &self,
        f: impl FnOnce(&Db<'_>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let c = self.c()?;
        f(&Db(&c, &self.host, None, self.filters(&c)))
    }

    /// Group commit: runs `f` in one transaction (SQLite's `BEGIN IMMEDIATE`, PostgreSQL's
    /// write lock) ... `COMMIT`, holding the database for the whole batch so that no other
    /// writer (a runbook recording a step before its effect, another host deciding) lands in
    /// it. `f`'s writes are durable when this returns `Ok`, and none of them is when it
    /// returns `Err` (`f`'s own error, or the commit's).
    pub fn batch<R>(
        &self,
        f: impl FnOnce(&Db<'_>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let c = self.c()?;
        let r = if c.is_fleet() {
            // The decisions the batch recorded are written with its COMMIT, in one round
            // trip: the fleet's write lock is held for one fewer.
            let overlay = batch::Overlay::default();
            c.begin(Begin::Exclusive)?;
            let db = Db(&c, &self.host, Some(&overlay), None);
            let r = f(&db).and_then(|r| {
                db.flush_and_commit()?;
                Ok(r)
            });
            if r.is_err() {
                c.rollback();
            }
            r
        } else {
            c.tx(Begin::Exclusive, |c| {
                f(&Db(c, &self.host, None, self.filters(c)))
            })
        };
        if let (Ok(_), Some(wake)) = (&r, self.checkpoint.get()) {
            // Full: it is awake already, and will see this batch's frames.
            let _ = wake.try_send(());
        }
        r
    }

    /// Group commit without waiting for the disk: [`Store::batch`], except that on SQLite
    /// the `COMMIT` returns once the log is written (`synchronous = NORMAL` for it alone),
    /// not once it is on the disk. Nothing of the batch may be acknowledged, and no effect
    /// may follow from it, before [`Store::sync`] returns `Ok` for the returned
    /// [`Unsynced`]; meanwhile the next batch can decide and commit. A crash of the process
    /// loses nothing committed (the kernel holds the writes); a power loss may lose the
    /// batches not yet synced, which were never acknowledged (the log is written in order,
    /// so a later batch on the disk means every earlier one is). On PostgreSQL the commit
    /// is durable as in [`Store::batch`] and `sync` has nothing to do.
    pub fn batch_unsynced<R>(
        &self,
        f: impl FnOnce(&Db<'_>) -> Result<R, StoreError>,
    ) -> Result<(R, Unsynced), StoreError> {
        use std::sync::atomic::Ordering;
        if self.path.is_none() {
            return self.batch(f).map(|r| (r, Unsynced(0)));
        }
        let c = self.c()?;
        let res = c.tx_unsynced(|c| f(&Db(c, &self.host, None, self.filters(c))));
        // Counted while the connection is held: commits are numbered in the log's order.
        let n = self.sync.committed.fetch_add(1, Ordering::SeqCst) + 1;
        drop(c);
        if let (Ok(_), Some(wake)) = (&res, self.checkpoint.get()) {
            let _ = wake.try_send(());
        }
        Ok((res?, Unsynced(n)))
    }

    /// Makes `batch` durable: returns once the log on the disk holds it (and every commit
    /// before it). One `fdatasync` of the log serves every batch committed before it starts,
    /// so a caller that syncs batches in order waits once for several. Meanwhile the
    /// connection is free: batches keep committing. After a failed sync the store refuses
    /// everything ([`StoreError::Unsynced`]).
    pub fn sync(&self, batch: Unsynced) -> Result<(), StoreError> {
        let Some(path) = self.path.as_ref().filter(|_| batch.0 > 0) else {
            // PostgreSQL, or nothing committed.
            return Ok(());
        };
        if let Some(why) = self.sync.broken.get() {
            return Err(StoreError::Unsynced(why.clone()));
        }
        let Ok(mut synced) = self.sync.synced.lock() else {
            return Err(StoreError::Poisoned);
        };
        if synced.0 >= batch.0 {
            return Ok(());
        }
        self.sync_locked(path, &mut synced)
    }

    /// Makes everything committed so far durable, whatever was synced before: for a reader
    /// about to act on what it read (the outbox delivering an escalation), which may have
    /// seen a batch not yet synced, or not yet counted.
    pub fn sync_all(&self) -> Result<(), StoreError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        if let Some(why) = self.sync.broken.get() {
            return Err(StoreError::Unsynced(why.clone()));
        }
        // A flush, after the syncing thread's if it holds the state: off the caller's
        // runtime worker (the outbox calls this from a task).
        blocking(|| {
            let Ok(mut synced) = self.sync.synced.lock() else {
                return Err(StoreError::Poisoned);
            };
            self.sync_locked(path, &mut synced)
        })
    }

    /// One `fdatasync` of the log, holding the sync state.
    fn sync_locked(
        &self,
        path: &Path,
        synced: &mut (u64, Option<std::fs::File>),
    ) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering;
        // Every commit counted by now has written its frames: one sync covers them all.
        let through = self.sync.committed.load(Ordering::SeqCst);
        match sync_log(path, &mut synced.1) {
            Ok(()) => {
                synced.0 = synced.0.max(through);
                Ok(())
            }
            Err(e) => {
                let why = e.to_string();
                let _ = self.sync.broken.set(why.clone());
                Err(StoreError::Unsynced(why))
            }
        }
    }

    /// On SQLite, moves the WAL checkpoints (copying the log's committed pages into the
    /// database file, and syncing it) off the commit path: a thread of its own, with its own
    /// connection, checkpoints after the batches commit (at most once per `PAUSE`) and at
    /// least every `IDLE` (for writes outside batches), without blocking them (`PASSIVE`). The batches' connection still checkpoints by itself should
    /// the log pass [`WAL_FALLBACK_PAGES`] (the thread stuck or gone), so the log stays
    /// bounded. Done in the commit, the checkpoint was a twentieth of the ingest path. A
    /// no-op on PostgreSQL, or when called again.
    pub fn checkpoint_in_background(&self) -> Result<(), StoreError> {
        /// The least time between two checkpoints.
        const PAUSE: std::time::Duration = std::time::Duration::from_millis(100);
        /// The most time between two checkpoints.
        const IDLE: std::time::Duration = std::time::Duration::from_secs(1);
        let Some(path) = &self.path else {
            return Ok(());
        };
        if self.checkpoint.get().is_some() {
            return Ok(());
        }
        let own = Connection::open(path)?;
        own.busy_timeout(std::time::Duration::from_secs(5))?;
        own.pragma_update(None, "synchronous", "FULL")?;
        if let Conn::Lite(c) = &*self.c()? {
            c.pragma_update(None, "wal_autocheckpoint", WAL_FALLBACK_PAGES)?;
        }
        let (wake, woken) = std::sync::mpsc::sync_channel::<()>(1);
        std::thread::Builder::new()
            .name("keel-checkpoint".into())
            .spawn(move || loop {
                // Woken by a batch, or every `IDLE` for what was written outside batches
                // (runbook steps, leases, the outbox); gone with the store.
                match woken.recv_timeout(IDLE) {
                    Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                }
                // A failure (the database busy past the timeout) is retried next time; the
                // fallback bounds the log meanwhile.
                let _ = own.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
                std::thread::sleep(PAUSE);
            })
            .map_err(|e| StoreError::Files(path.clone(), e))?;
        let _ = self.checkpoint.set(wake);
        Ok(())
    }

    /// Whether an event was seen before in this status.
    pub fn seen(&self, event_id: &str, status: &str) -> Result<bool, StoreError> {
        self.with(|db| db.seen(event_id, status))
    }

    /// The name of this host's normalizer state.
    fn state_name(&self) -> &str {
        state_name(&self.host)
    }

    /// The saved normalizer state, if any.
    pub fn normalizer_state(&self) -> Result<Option<String>, StoreError> {
        self.c()?
            .one(
                "SELECT json FROM normalizer_state WHERE name = ?1",
                p![self.state_name()],
            )?
            .map(|r| r.get(0))
            .transpose()
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
        let idx = i64::try_from(idx).unwrap_or(i64::MAX);
        // One transaction: the read and the write cannot interleave with another writer.
        self.c()?.tx(Begin::Exclusive, |c| {
            let row = c.one("SELECT outcome FROM steps WHERE key = ?1", p![key])?;
            Ok(match row.map(|r| r.get::<Option<String>>(0)).transpose()? {
                Some(Some(outcome)) => StepRecord::Done(outcome),
                Some(None) => {
                    c.exec(
                        "UPDATE steps SET attempts = attempts + 1 WHERE key = ?1",
                        p![key],
                    )?;
                    StepRecord::InDoubt
                }
                None => {
                    c.exec(
                        "INSERT INTO steps (key, decision_id, idx, name, idempotent, started_at, attempts)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1)",
                        p![key, decision_id, idx, name, idempotent, now],
                    )?;
                    StepRecord::New
                }
            })
        })
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
        self.c()?.tx(Begin::Plain, |c| {
            c.exec(
                "UPDATE steps SET outcome = ?2, finished_at = ?3 WHERE key = ?1",
                p![key, outcome, now],
            )?;
            if let Some((event_id, decision_id)) = approval {
                c.exec(
                    "INSERT INTO approvals (event_id, decision_id, at, sent) VALUES (?1, ?2, ?3, 1)
                     ON CONFLICT (event_id) DO UPDATE SET sent = 1, at = excluded.at",
                    p![event_id.to_ascii_lowercase().as_str(), decision_id, now],
                )?;
            }
            Ok(())
        })
    }

    /// Records, before StartRequests is sent for the Scheduled Event `event_id`, that it may
    /// be approved from now on (an approval already recorded stays as it is).
    pub fn approval_before_send(
        &self,
        event_id: &str,
        decision_id: &str,
        now: &str,
    ) -> Result<(), StoreError> {
        self.c()?.exec(
            "INSERT OR IGNORE INTO approvals (event_id, decision_id, at, sent) VALUES (?1, ?2, ?3, 0)",
            p![event_id.to_ascii_lowercase().as_str(), decision_id, now],
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
        self.c()?.tx(Begin::Plain, |c| {
            c.exec(
                "UPDATE decisions SET runbook = ?2 WHERE decision_id = ?1",
                p![decision_id, state],
            )?;
            if let Some(o) = escalation {
                insert_outbox(c, o, now)?;
            }
            Ok(())
        })
    }

    /// Up to `limit` undelivered outbox entries due at `now` (RFC 3339, UTC), oldest first.
    /// In a fleet they are claimed: each is due again for another host only at `claim_until`
    /// (this host delivers it, or records its failure, before then), so that one delivery is
    /// attempted at a time whichever host's outbox loop runs.
    pub fn outbox_due(
        &self,
        now: &str,
        claim_until: &str,
        limit: usize,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let c = self.c()?;
        let rows = if c.is_fleet() {
            c.rows(
                "UPDATE outbox SET next_at = ?2 WHERE key IN
                   (SELECT key FROM outbox WHERE delivered_at IS NULL AND next_at <= ?1
                    ORDER BY created_at, key LIMIT ?3 FOR UPDATE SKIP LOCKED)
                 RETURNING key, decision_id, body, attempts, created_at",
                p![now, claim_until, limit],
            )?
        } else {
            let rows = c.rows(
                "SELECT key, decision_id, body, attempts, created_at FROM outbox
                 WHERE delivered_at IS NULL AND next_at <= ?1 ORDER BY created_at, key LIMIT ?2",
                p![now, limit],
            )?;
            drop(c);
            // An entry may come from a batch committed and not yet on the disk
            // (`batch_unsynced`): nothing is delivered before it is.
            if !rows.is_empty() {
                self.sync_all()?;
            }
            rows
        };
        let mut out = rows
            .iter()
            .map(|r| {
                Ok((
                    r.get::<String>(4)?,
                    OutboxRow {
                        key: r.get(0)?,
                        decision_id: r.get(1)?,
                        body: r.get(2)?,
                        attempts: r.get(3)?,
                    },
                ))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        out.sort_by(|a, b| (&a.0, &a.1.key).cmp(&(&b.0, &b.1.key)));
        Ok(out.into_iter().map(|(_, o)| o).collect())
    }

    /// Marks an outbox entry delivered.
    pub fn outbox_delivered(&self, key: &str, now: &str) -> Result<(), StoreError> {
        self.c()?.exec(
            "UPDATE outbox SET delivered_at = ?2, attempts = attempts + 1 WHERE key = ?1",
            p![key, now],
        )?;
        Ok(())
    }

    /// Records a failed delivery attempt and when to try again.
    pub fn outbox_retry(&self, key: &str, next_at: &str, error: &str) -> Result<(), StoreError> {
        self.c()?.exec(
            "UPDATE outbox SET attempts = attempts + 1, next_at = ?2, last_error = ?3 WHERE key = ?1",
            p![key, next_at, error],
        )?;
        Ok(())
    }

    /// How many outbox entries are not delivered yet.
    pub fn outbox_depth(&self) -> Result<i64, StoreError> {
        self.c()?
            .one(
                "SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL",
                p![],
            )?
            .map_or(Ok(0), |r| r.get(0))
    }

    /// When a decision was made (RFC 3339, UTC), if it is recorded.
    pub fn decided_at(&self, decision_id: &str) -> Result<Option<String>, StoreError> {
        self.c()?
            .one(
                "SELECT time FROM decisions WHERE decision_id = ?1",
                p![decision_id],
            )?
            .map(|r| r.get(0))
            .transpose()
    }

    /// This host's decisions whose runbook is still `pending` (after a restart: resume them).
    pub fn pending(&self) -> Result<Vec<Pending>, StoreError> {
        self.c()?
            .rows(
                "SELECT decision_id, event_json, decision_json FROM decisions
                 WHERE runbook = 'pending' AND host = ?1 ORDER BY time",
                p![&self.host],
            )?
            .iter()
            .map(|r| {
                Ok(Pending {
                    decision_id: r.get(0)?,
                    event_json: r.get(1)?,
                    decision_json: r.get(2)?,
                })
            })
            .collect()
    }

    /// The events and decisions recorded at or after `since` (RFC 3339, UTC), oldest first,
    /// at most `limit` (the newest): the correlation history to rebuild after a restart (in
    /// a fleet, every host's).
    pub fn decisions_since(
        &self,
        since: &str,
        limit: usize,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.c()?
            .rows(
                "SELECT event_json, decision_json FROM
                   (SELECT time, event_json, decision_json FROM decisions WHERE time >= ?1
                    ORDER BY time DESC LIMIT ?2) AS recent
                 ORDER BY time",
                p![since, limit],
            )?
            .iter()
            .map(|r| Ok((r.get(0)?, r.get(1)?)))
            .collect()
    }

    /// Deletes finished history older than `before` (RFC 3339, UTC): decisions whose runbook
    /// is not pending nor held by a pause and that have no undelivered escalation, their step executions (and with them the
    /// sight of their events), delivered escalations, ingest keys and attempt
    /// counts, budget leases and members. Pending runbooks, deferrals and undelivered escalations are never collected,
    /// nor any decision of an event one of whose decisions is pending or held (its other
    /// statuses stay seen).
    /// Returns how many rows went, per table.
    pub fn gc(&self, before: &str) -> Result<GcCounts, StoreError> {
        let n = self.c()?.tx(Begin::Plain, |c| {
            let mut n = [0usize; GC_DELETES.len()];
            for (count, sql) in n.iter_mut().zip(GC_DELETES) {
                *count = if sql.contains("?1") {
                    c.exec(sql, p![before])?
                } else {
                    c.exec(sql, p![])?
                };
            }
            Ok(n)
        })?;
        let [decisions, steps, outbox, ingest_keys, attempts, approvals, leases, budget_members] =
            n;
        Ok(GcCounts {
            decisions,
            steps,
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
        self.c()?
            .rows(
                "SELECT name, outcome FROM steps ORDER BY started_at, idx",
                p![],
            )?
            .iter()
            .map(|r| Ok((r.get(0)?, r.get(1)?)))
            .collect()
    }
}

/// The name of a host's normalizer state: `all` for SQLite's single host.
fn state_name(host: &str) -> &str {
    if host.is_empty() {
        "all"
    } else {
        host
    }
}

impl Db<'_> {
    /// The connection, for a statement: in a fleet's batch, after writing the decisions
    /// recorded before it (so the database sees the statements in the order they were made).
    fn c(&self) -> Result<&Conn, StoreError> {
        self.flush()?;
        Ok(self.0)
    }

    /// Takes (reads and deletes) this host's deferrals due at `now` (RFC 3339, compared as
    /// text in UTC); use inside a batch, which records their new decisions in the same
    /// transaction.
    pub fn take_due(&self, now: &str) -> Result<Vec<(String, String)>, StoreError> {
        let due = self
            .c()?
            .rows(
                "SELECT event_id, event_json FROM deferred WHERE due <= ?1 AND host = ?2",
                p![now, self.1],
            )?
            .iter()
            .map(|r| Ok((r.get(0)?, r.get(1)?)))
            .collect::<Result<Vec<(String, String)>, StoreError>>()?;
        for (id, _) in &due {
            self.c()?
                .exec("DELETE FROM deferred WHERE event_id = ?1", p![id])?;
        }
        Ok(due)
    }

    /// Whether StartRequests was (or may have been) sent for the Scheduled Event `event_id`
    /// (compared case-insensitively).
    pub fn approved(&self, event_id: &str) -> Result<bool, StoreError> {
        self.c()?.exists(
            "SELECT 1 FROM approvals WHERE event_id = ?1",
            p![event_id.to_ascii_lowercase().as_str()],
        )
    }

    /// Whether an event was seen before in this status.
    pub fn seen(&self, event_id: &str, status: &str) -> Result<bool, StoreError> {
        self.seen_as(&decision_key(event_id, status), event_id, status)
    }

    /// [`Db::seen`] with the decision's id ([`decision_key`] of the event's id and the
    /// status) already made.
    pub fn seen_as(
        &self,
        decision_id: &str,
        event_id: &str,
        status: &str,
    ) -> Result<bool, StoreError> {
        debug_assert_eq!(decision_id, decision_key(event_id, status));
        if let Some(o) = self.2 {
            return self.seen_cached(o, decision_id, event_id, status);
        }
        if let Some(k) = self.3 {
            if !k.decisions.maybe(self.0, decision_id)? {
                return Ok(false);
            }
        }
        self.0.exists(SEEN, p![decision_id, event_id])
    }

    /// The event an ingest idempotency key was accepted as, if it was.
    pub fn ingest_key(&self, key: &str) -> Result<Option<String>, StoreError> {
        if let Some(o) = self.2 {
            return self.ingest_key_cached(o, key);
        }
        if let Some(k) = self.3 {
            if !k.ingest_keys.maybe(self.0, key)? {
                return Ok(None);
            }
        }
        self.0
            .one("SELECT event_id FROM ingest_keys WHERE key = ?1", p![key])?
            .map(|r| r.get(0))
            .transpose()
    }

    /// How many failed attempts of `operation` on `resource` were counted since `since`
    /// (RFC 3339, UTC); 0 when the last one is older.
    pub fn attempts(
        &self,
        resource: &str,
        operation: &str,
        since: &str,
    ) -> Result<i64, StoreError> {
        if let Some(o) = self.2 {
            return self.attempts_cached(o, resource, operation, since);
        }
        self.0
            .one(
                "SELECT count FROM attempts WHERE resource = ?1 AND operation = ?2 AND last_at >= ?3",
                p![resource, operation, since],
            )?
            .map_or(Ok(0), |r| r.get(0))
    }

    /// Records an event as seen (in this status) together with its decision, in one
    /// transaction with the normalizer state that produced it (and, for an ingest body, its
    /// idempotency key and attempt count). Returns false when the event was seen in this
    /// status before (then only the normalizer state and the ingest key are written).
    ///
    /// Inside a transaction (a [`Store::batch`]) a failure may leave part of the record
    /// written: the caller must then fail the transaction, as every batch does (a failed
    /// record rolls the whole batch back). A savepoint per decision would protect nothing
    /// there, and SQLite copied every page it touched into its statement journal (a
    /// fifteenth of the ingest path's time). Outside one, the record is its own transaction.
    pub fn record(&self, r: &NewDecision<'_>) -> Result<bool, StoreError> {
        debug_assert_eq!(
            r.decision_id,
            decision_key(r.event_id, r.status),
            "a decision's id is its event's and status's key: how the store knows the event was seen"
        );
        if let Some(o) = self.2 {
            return self.record_cached(o, r);
        }
        let tx = self.0;
        if tx.is_fleet() {
            return self.record_fleet(r);
        }
        let write = || {
            let new = tx.exec(
                "INSERT INTO decisions (decision_id, time, event_id, mode, policy_set, action, event_json, decision_json, runbook, host)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT (decision_id) DO NOTHING",
                p![r.decision_id, r.now, r.event_id, r.mode, r.policy_set, r.action, r.event_json, r.decision_json, r.runbook, self.1],
            )? == 1;
            if let (true, Some(k)) = (new, self.3) {
                k.decisions.add(r.decision_id)?;
            }
            if let Some(state) = r.normalizer_state {
                self.save_normalizer_state(state)?;
            }
            if new {
                for o in r.outbox {
                    insert_outbox(tx, o, r.now)?;
                }
            }
            if let Some(i) = &r.ingest {
                tx.exec(
                    "INSERT OR IGNORE INTO ingest_keys (key, received_at, event_id) VALUES (?1, ?2, ?3)",
                    p![i.key, r.now, r.event_id],
                )?;
                if let Some(k) = self.3 {
                    k.ingest_keys.add(i.key)?;
                }
                if let (true, Some((resource, operation))) = (new, i.counted) {
                    tx.exec(
                        "INSERT INTO attempts (resource, operation, count, last_at) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (resource, operation) DO UPDATE SET count = excluded.count, last_at = excluded.last_at",
                        p![resource, operation, i.attempt, r.now],
                    )?;
                }
            }
            Ok(new)
        };
        if tx.in_tx() {
            write()
        } else {
            tx.atomic(write)
        }
    }

    /// [`Db::record`] on PostgreSQL: the decision, ingest key and attempt count in one
    /// statement (one round trip instead of five; a statement is atomic, so no savepoint), then
    /// the outbox entries and the normalizer state when there are any. Should one of those
    /// fail, the server aborts the transaction and the batch commits nothing.
    fn record_fleet(&self, r: &NewDecision<'_>) -> Result<bool, StoreError> {
        let tx = self.0;
        let (key, resource, operation, attempt) = match &r.ingest {
            Some(i) => (
                Some(i.key),
                i.counted.map(|c| c.0),
                i.counted.map(|c| c.1),
                i.attempt,
            ),
            None => (None, None, None, 0),
        };
        let new = tx
            .one(
                "WITH dec AS (
                   INSERT INTO decisions (decision_id, time, event_id, mode, policy_set, action,
                                          event_json, decision_json, runbook, host)
                   VALUES (CAST(?3 AS TEXT), CAST(?2 AS TEXT), CAST(?1 AS TEXT), CAST(?4 AS TEXT),
                           CAST(?5 AS TEXT), CAST(?6 AS TEXT), CAST(?7 AS TEXT), CAST(?8 AS TEXT),
                           CAST(?9 AS TEXT), CAST(?10 AS TEXT))
                   ON CONFLICT (decision_id) DO NOTHING
                   RETURNING 1
                 ), ik AS (
                   INSERT INTO ingest_keys (key, received_at, event_id)
                   SELECT CAST(?11 AS TEXT), CAST(?2 AS TEXT), CAST(?1 AS TEXT)
                   WHERE CAST(?11 AS TEXT) IS NOT NULL
                   ON CONFLICT DO NOTHING RETURNING 1
                 ), att AS (
                   INSERT INTO attempts (resource, operation, count, last_at)
                   SELECT CAST(?12 AS TEXT), CAST(?13 AS TEXT), CAST(?14 AS BIGINT), CAST(?2 AS TEXT)
                   WHERE CAST(?12 AS TEXT) IS NOT NULL AND CAST(?11 AS TEXT) IS NOT NULL
                     AND EXISTS (SELECT 1 FROM dec)
                   ON CONFLICT (resource, operation) DO UPDATE
                     SET count = excluded.count, last_at = excluded.last_at
                   RETURNING 1
                 )
                 SELECT COUNT(*) FROM dec",
                p![
                    r.event_id,
                    r.now,
                    r.decision_id,
                    r.mode,
                    r.policy_set,
                    r.action,
                    r.event_json,
                    r.decision_json,
                    r.runbook,
                    self.1,
                    key,
                    resource,
                    operation,
                    attempt
                ],
            )?
            .map_or(Ok(0), |row| row.get::<i64>(0))?
            == 1;
        if let Some(state) = r.normalizer_state {
            self.save_normalizer_state(state)?;
        }
        if new {
            for o in r.outbox {
                insert_outbox(tx, o, r.now)?;
            }
        }
        Ok(new)
    }

    /// Saves the normalizer state alone (a poll that produced no event).
    pub fn save_normalizer_state(&self, json: &str) -> Result<(), StoreError> {
        self.c()?.exec(
            "INSERT INTO normalizer_state (name, json) VALUES (?1, ?2)
             ON CONFLICT (name) DO UPDATE SET json = excluded.json",
            p![state_name(self.1), json],
        )?;
        Ok(())
    }

    /// Remembers that `event` must be decided again at `due` (by this host).
    pub fn defer(&self, event_id: &str, due: &str, event_json: &str) -> Result<(), StoreError> {
        self.c()?.exec(
            "INSERT INTO deferred (event_id, due, event_json, host) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (event_id) DO UPDATE SET due = excluded.due, event_json = excluded.event_json,
               host = excluded.host",
            p![event_id, due, event_json, self.1],
        )?;
        Ok(())
    }

    /// In a fleet, the decisions committed after `after` (a `seq`), oldest first, at most
    /// `limit`: each `seq`, with the event and decision JSON when another host made it
    /// (`None` for this host's own, which it knows: they are read only to move past them).
    /// Empty on SQLite (one host).
    #[allow(clippy::type_complexity)]
    pub fn fleet_decisions(
        &self,
        after: i64,
        limit: usize,
    ) -> Result<Vec<(i64, Option<(String, String)>)>, StoreError> {
        if !self.0.is_fleet() {
            return Ok(Vec::new());
        }
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.c()?
            .rows(
                "SELECT seq, CASE WHEN host <> ?2 THEN event_json END,
                        CASE WHEN host <> ?2 THEN decision_json END
                   FROM decisions WHERE seq > ?1 ORDER BY seq LIMIT ?3",
                p![after, self.1, limit],
            )?
            .iter()
            .map(|r| {
                let seq = r.get(0)?;
                let theirs = match (r.get::<Option<String>>(1)?, r.get::<Option<String>>(2)?) {
                    (Some(ev), Some(d)) => Some((ev, d)),
                    _ => None,
                };
                Ok((seq, theirs))
            })
            .collect()
    }

    /// In a fleet, the newest decision's `seq` (0 when there is none, or on SQLite).
    pub fn fleet_cursor(&self) -> Result<i64, StoreError> {
        if !self.0.is_fleet() {
            return Ok(0);
        }
        self.c()?
            .one("SELECT COALESCE(MAX(seq), 0) FROM decisions", p![])?
            .map_or(Ok(0), |r| r.get(0))
    }
}

mod batch;
mod budget;
mod known;
mod pause;
pub mod pg;
pub mod sql;
pub use batch::Prefetch;
pub use budget::{LeaseRow, LeaseWant};
#[cfg(test)]
pub(crate) use pause::PastStep;
pub use pause::{HeldRow, HistoryQuery, PastDecision, Status};

#[cfg(test)]
mod parity_tests;
#[cfg(test)]
mod tests;
