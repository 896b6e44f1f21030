//! The PostgreSQL backend: one connection, owned by a thread of its own (with its own small
//! runtime, which must not run on the host's), reconnected when it breaks, never in the
//! middle of a transaction.
//!
//! Statements that need no answer of their own are pipelined with the next: a `BEGIN` (and
//! the fleet's write lock) goes out with the transaction's first statement, and a batch's
//! last write with its `COMMIT`, so that the lock is held for fewer round trips. The server
//! runs them in order; when one fails, the transaction is aborted, the ones after it fail
//! or roll back, and the first failure is the answer.
//!
//! Each host holds a session advisory lock on its identity for as long as it is connected, so
//! two `keel run` with the same identity cannot share a database (the second is refused, as
//! a second host on one SQLite file is). [`Begin::Exclusive`](super::sql::Begin) transactions
//! take the store's write lock, a transaction-scoped advisory lock: budget leases, decisions
//! with the guards' counts and step starts are serialized across the fleet, so no update is
//! lost and no guard is counted twice.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use bytes::BytesMut;
use tokio_postgres::types::{IsNull, ToSql, Type};
use tokio_postgres::{Client, Statement};

use super::sql::{Cell, Row, Val};
use super::StoreError;

/// The advisory lock key of [`Begin::Exclusive`](super::sql::Begin) transactions.
const WRITE_LOCK: i64 = 0x6b65_656c_0001;
/// The advisory lock key held while migrating.
const MIGRATE_LOCK: i64 = 0x6b65_656c_0002;

/// How to reach the database.
#[derive(Clone)]
pub struct Settings {
    /// The connection settings (host, port, user, database, password, timeouts).
    pub config: tokio_postgres::Config,
    /// TLS (certificates verified against these roots), or none on loopback.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// This host's identity: the key of its session lock and of its host-local rows.
    pub host: String,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("Settings")
            .field("hosts", &self.config.get_hosts())
            .field("dbname", &self.config.get_dbname())
            .field("user", &self.config.get_user())
            .field("tls", &self.tls.is_some())
            .field("host", &self.host)
            .finish()
    }
}

/// A parameter, owned, to cross to the connection's thread.
#[derive(Debug, Clone)]
enum Owned {
    Text(String),
    Int(i64),
    Null,
    Texts(Vec<Option<String>>),
    Ints(Vec<i64>),
}

impl From<&Val<'_>> for Owned {
    fn from(v: &Val<'_>) -> Self {
        match *v {
            Val::Text(s) => Owned::Text(s.to_string()),
            Val::Int(i) => Owned::Int(i),
            Val::Null => Owned::Null,
            Val::Texts(l) => Owned::Texts(l.iter().map(|t| t.map(str::to_string)).collect()),
            Val::Ints(l) => Owned::Ints(l.to_vec()),
        }
    }
}

type BoxError = Box<dyn StdError + Sync + Send>;

impl ToSql for Owned {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        match self {
            Owned::Null => Ok(IsNull::Yes),
            Owned::Text(s) => match *ty {
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
                    s.as_str().to_sql(ty, out)
                }
                _ => Err(format!("text given for a {ty} parameter").into()),
            },
            Owned::Int(i) => match *ty {
                Type::INT8 => i.to_sql(ty, out),
                Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
                Type::BOOL => (*i != 0).to_sql(ty, out),
                _ => i.to_string().as_str().to_sql(ty, out),
            },
            Owned::Texts(l) => match *ty {
                Type::TEXT_ARRAY => l.to_sql(ty, out),
                _ => Err(format!("a list of texts given for a {ty} parameter").into()),
            },
            Owned::Ints(l) => match *ty {
                Type::INT8_ARRAY => l.to_sql(ty, out),
                _ => Err(format!("a list of integers given for a {ty} parameter").into()),
            },
        }
    }

    fn accepts(ty: &Type) -> bool {
        matches!(
            *ty,
            Type::INT8
                | Type::INT4
                | Type::INT2
                | Type::BOOL
                | Type::TEXT
                | Type::VARCHAR
                | Type::BPCHAR
                | Type::NAME
                | Type::UNKNOWN
                | Type::TEXT_ARRAY
                | Type::INT8_ARRAY
        )
    }

    tokio_postgres::types::to_sql_checked!();
}

/// The SQL both backends share, in PostgreSQL's spelling: `?N` parameters become `$N`, and
/// `INSERT OR IGNORE` becomes `INSERT … ON CONFLICT DO NOTHING`.
pub fn dialect(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 24);
    let mut chars = sql.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        if c == '\'' {
            quoted = !quoted;
        }
        if c == '?' && !quoted && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    if let Some(at) = out.find("INSERT OR IGNORE INTO") {
        out.replace_range(at..at + "INSERT OR IGNORE INTO".len(), "INSERT INTO");
        let body = out.trim_end().trim_end_matches(';').to_string();
        out = match body.rfind(" RETURNING ") {
            Some(r) => format!("{} ON CONFLICT DO NOTHING{}", &body[..r], &body[r..]),
            None => format!("{body} ON CONFLICT DO NOTHING"),
        };
    }
    out
}

enum Req {
    Exec(String, Vec<Owned>),
    Rows(String, Vec<Owned>),
    Begin(super::sql::Begin),
    /// Commits, after running the statement given (pipelined with the `COMMIT`).
    Commit(Option<(String, Vec<Owned>)>),
    Rollback,
    Migrate(&'static [&'static str]),
}

enum Reply {
    Count(u64),
    Rows(Vec<Row>),
    Done,
}

type Answer = Result<Reply, StoreError>;

/// The connection: requests go to its thread, one at a time.
pub struct Pg {
    to: mpsc::Sender<(Req, mpsc::SyncSender<Answer>)>,
    in_tx: AtomicBool,
    up: std::sync::Arc<AtomicBool>,
}

impl Pg {
    /// Starts the connection's thread and connects (taking the host's session lock). Fails
    /// when the database cannot be reached or another `keel run` with this identity holds it.
    pub fn connect(settings: Settings) -> Result<Pg, StoreError> {
        let (to, from) = mpsc::channel::<(Req, mpsc::SyncSender<Answer>)>();
        let up = std::sync::Arc::new(AtomicBool::new(false));
        let thread_up = up.clone();
        // The runtime and the first connection are made on the thread too: the client must
        // never block a thread that drives the host's runtime, and a runtime must not be
        // dropped on one.
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("keel-postgres".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(StoreError::Unavailable(format!(
                            "cannot start its runtime: {e}"
                        ))));
                        return;
                    }
                };
                let mut w = Worker {
                    settings,
                    rt,
                    client: None,
                    pending: None,
                    stmts: HashMap::new(),
                    in_tx: false,
                    aborted: false,
                    connected_once: false,
                    up: thread_up,
                };
                let first = w.ensure().map(drop);
                let ok = first.is_ok();
                let _ = ready_tx.send(first);
                if !ok {
                    return;
                }
                w.up.store(true, Ordering::Relaxed);
                for (req, reply) in from {
                    let _ = reply.send(w.serve(req));
                }
            })
            .map_err(|e| StoreError::Unavailable(format!("cannot start its thread: {e}")))?;
        ready_rx
            .recv()
            .map_err(|_| StoreError::Unavailable("its thread stopped".into()))??;
        Ok(Pg {
            to,
            in_tx: AtomicBool::new(false),
            up,
        })
    }

    fn ask(&self, req: Req) -> Answer {
        let (tx, rx) = mpsc::sync_channel(1);
        self.to
            .send((req, tx))
            .map_err(|_| StoreError::Unavailable("its thread stopped".into()))?;
        rx.recv()
            .map_err(|_| StoreError::Unavailable("its thread stopped".into()))?
    }

    /// See [`Conn::exec`](super::sql::Conn::exec).
    pub fn exec(&self, sql: &str, p: &[Val<'_>]) -> Result<usize, StoreError> {
        match self.ask(Req::Exec(
            sql.to_string(),
            p.iter().map(Owned::from).collect(),
        ))? {
            Reply::Count(n) => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
            _ => Ok(0),
        }
    }

    /// See [`Conn::rows`](super::sql::Conn::rows).
    pub fn rows(&self, sql: &str, p: &[Val<'_>]) -> Result<Vec<Row>, StoreError> {
        match self.ask(Req::Rows(
            sql.to_string(),
            p.iter().map(Owned::from).collect(),
        ))? {
            Reply::Rows(r) => Ok(r),
            _ => Ok(Vec::new()),
        }
    }

    /// Begins a transaction (see [`Begin`](super::sql::Begin)).
    pub fn begin(&self, begin: super::sql::Begin) -> Result<(), StoreError> {
        self.ask(Req::Begin(begin))?;
        self.in_tx.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Commits.
    pub fn commit(&self) -> Result<(), StoreError> {
        self.in_tx.store(false, Ordering::Relaxed);
        self.ask(Req::Commit(None)).map(drop)
    }

    /// Runs `sql` and commits, in one round trip. When `sql` fails, nothing is committed
    /// (the server answers the `COMMIT` of the aborted transaction with a rollback, and one
    /// that could not be sent is followed by a `ROLLBACK`) and its error is returned.
    pub fn commit_with(&self, sql: &str, p: &[Val<'_>]) -> Result<(), StoreError> {
        self.in_tx.store(false, Ordering::Relaxed);
        self.ask(Req::Commit(Some((
            sql.to_string(),
            p.iter().map(Owned::from).collect(),
        ))))
        .map(drop)
    }

    /// Rolls back.
    pub fn rollback(&self) {
        self.in_tx.store(false, Ordering::Relaxed);
        let _ = self.ask(Req::Rollback);
    }

    /// Whether a transaction is open.
    pub fn in_tx(&self) -> bool {
        self.in_tx.load(Ordering::Relaxed)
    }

    /// Whether the last request reached the database.
    pub fn up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Runs the migrations not yet run, each in its transaction, under the migration lock (two
    /// hosts starting together migrate once). Returns the schema version.
    pub fn migrate(&self, migrations: &'static [&'static str]) -> Result<i64, StoreError> {
        self.ask(Req::Migrate(migrations))?;
        let v = self
            .rows("SELECT version FROM keel_schema", &[])?
            .first()
            .map(|r| r.get::<i64>(0))
            .transpose()?
            .unwrap_or(0);
        Ok(v)
    }
}

struct Worker {
    settings: Settings,
    /// Drives the connection, only while a request is served.
    rt: tokio::runtime::Runtime,
    client: Option<Client>,
    /// A `BEGIN` not sent yet: it goes out with the transaction's first statement.
    pending: Option<String>,
    /// Prepared statements by the store's SQL (before [`dialect`]).
    stmts: HashMap<String, Statement>,
    in_tx: bool,
    /// A statement of the open transaction failed: PostgreSQL has aborted it (until a
    /// `ROLLBACK TO SAVEPOINT`), and would answer a COMMIT with a rollback.
    aborted: bool,
    /// A connection was made before: a lost session lock is then our own old session's.
    connected_once: bool,
    up: std::sync::Arc<AtomicBool>,
}

fn fail(e: &tokio_postgres::Error) -> StoreError {
    // The server's message (a constraint, a type) with its code; a dropped connection as
    // unavailable. A server message may quote a value of a statement (an event's id in a
    // key conflict): escaped, as any untrusted text bound for a log or a terminal.
    use keel_engine::escape;
    match e.as_db_error() {
        // Connection exceptions (class 08) and the server shutting down (57P01 to 57P03):
        // the database is away, not the statement wrong.
        Some(db) if db.code().code().starts_with("08") || db.code().code().starts_with("57P0") => {
            StoreError::Unavailable(escape(db.message()))
        }
        // A decision's id taken already: the batches of a fleet write decisions under its
        // write lock, having read which exist, so only a writer outside it can cause this.
        Some(db)
            if *db.code() == tokio_postgres::error::SqlState::UNIQUE_VIOLATION
                && db.constraint() == Some("decisions_pkey") =>
        {
            StoreError::Pg(
                "a new event of the batch was recorded by a writer outside the fleet's write lock; the batch is rolled back"
                    .into(),
            )
        }
        Some(db) => StoreError::Pg(format!("{} ({})", escape(db.message()), db.code().code())),
        None if e.is_closed() => StoreError::Unavailable(escape(&e.to_string())),
        None => StoreError::Unavailable(escape(&match e.source() {
            Some(s) => format!("{e}: {s}"),
            None => e.to_string(),
        })),
    }
}

impl Worker {
    /// A live connection (with the runtime that drives it): the one there is, or a new one
    /// when none is and no transaction was open on the one that broke.
    fn ensure(&mut self) -> Result<(&tokio::runtime::Runtime, &Client), StoreError> {
        if self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
            self.stmts.clear();
        }
        if self.client.is_none() {
            if self.in_tx {
                return Err(StoreError::Unavailable(
                    "the connection broke inside a transaction (rolled back)".into(),
                ));
            }
            let c = match self.open() {
                // Our own session from before the break may still hold the lock until the
                // server notices it is gone (its keepalives, set below, see to that within
                // seconds): wait, as for any outage.
                Err(StoreError::HostTaken(h)) if self.connected_once => {
                    return Err(StoreError::Unavailable(format!(
                        "the previous session of `{h}` still holds its lock; waiting for the server to drop it"
                    )))
                }
                r => r?,
            };
            self.connected_once = true;
            self.client = Some(c);
        }
        match &self.client {
            Some(c) => Ok((&self.rt, c)),
            None => Err(StoreError::Unavailable("not connected".into())),
        }
    }

    fn open(&self) -> Result<Client, StoreError> {
        let s = &self.settings;
        let c = match &s.tls {
            Some(tls) => {
                let tls = tokio_postgres_rustls::MakeRustlsConnect::new((**tls).clone());
                let (c, conn) = self
                    .rt
                    .block_on(s.config.connect(tls))
                    .map_err(|e| fail(&e))?;
                // Polled whenever a request is served (the runtime runs only then); it ends
                // when the client is dropped or the connection breaks.
                self.rt.spawn(conn);
                c
            }
            None => {
                let (c, conn) = self
                    .rt
                    .block_on(s.config.connect(tokio_postgres::NoTls))
                    .map_err(|e| fail(&e))?;
                self.rt.spawn(conn);
                c
            }
        };
        let key = format!("keel-host:{}", s.host);
        let got: bool = self
            .rt
            .block_on(c.query_one(
                "SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
                &[&key],
            ))
            .map_err(|e| fail(&e))?
            .try_get(0)
            .map_err(|e| fail(&e))?;
        if !got {
            return Err(StoreError::HostTaken(s.host.clone()));
        }
        Ok(c)
    }

    fn serve(&mut self, req: Req) -> Answer {
        let savepoint_back =
            matches!(&req, Req::Exec(sql, _) if sql.starts_with("ROLLBACK TO SAVEPOINT"));
        // A request that sends nothing (a BEGIN kept for the next statement, the end of a
        // transaction that sent nothing) says nothing of whether the database is reachable.
        let silent = matches!(req, Req::Begin(_))
            || (self.pending.is_some() && matches!(req, Req::Commit(None) | Req::Rollback))
            || (!self.in_tx && self.pending.is_none() && matches!(req, Req::Rollback));
        let r = self.run(req);
        if self.in_tx {
            match &r {
                Err(_) => self.aborted = true,
                Ok(_) if savepoint_back => self.aborted = false,
                Ok(_) => {}
            }
        }
        if !silent {
            let lost = matches!(r, Err(StoreError::Unavailable(_)));
            self.up.store(!lost, Ordering::Relaxed);
        }
        r
    }

    fn run(&mut self, req: Req) -> Answer {
        match req {
            Req::Begin(begin) => {
                // READ COMMITTED whatever the server's default: after the write lock is
                // granted, each statement sees what the lock's previous holder committed.
                // A snapshot is one view of everything, for `keel status`.
                // Sent with the transaction's first statement (the write lock then granted
                // before it runs), or not at all if there is none.
                self.pending = Some(match begin {
                    super::sql::Begin::Snapshot => {
                        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY".into()
                    }
                    super::sql::Begin::Plain => "BEGIN ISOLATION LEVEL READ COMMITTED".into(),
                    super::sql::Begin::Exclusive => format!(
                        "BEGIN ISOLATION LEVEL READ COMMITTED; SELECT pg_advisory_xact_lock({WRITE_LOCK})"
                    ),
                });
                self.aborted = false;
                Ok(Reply::Done)
            }
            Req::Commit(last) => {
                if self.pending.is_some() && last.is_none() {
                    // Nothing was sent: there is no transaction to end.
                    self.pending = None;
                    return Ok(Reply::Done);
                }
                if self.aborted {
                    let _ = self.simple("ROLLBACK");
                    self.in_tx = false;
                    self.aborted = false;
                    return Err(StoreError::Pg(
                        "the transaction was rolled back: one of its statements failed".into(),
                    ));
                }
                match last {
                    // Ends the transaction once the COMMIT is sent (`pipelined`); when it
                    // could not be, the transaction is still the caller's to roll back.
                    Some((sql, p)) => self.pipelined(&sql, &p, Some("COMMIT"), false),
                    None => {
                        let r = self.simple("COMMIT").map(|()| Reply::Done);
                        self.in_tx = false;
                        r
                    }
                }
            }
            Req::Rollback => {
                if self.pending.take().is_some() || !self.in_tx {
                    // Nothing was sent, or the transaction ended already.
                    return Ok(Reply::Done);
                }
                let r = self.simple("ROLLBACK");
                self.in_tx = false;
                r.map(|()| Reply::Done)
            }
            Req::Exec(sql, p) => self.pipelined(&sql, &p, None, true),
            Req::Rows(sql, p) => self.pipelined(&sql, &p, None, false),
            Req::Migrate(migrations) => self.migrate(migrations).map(|()| Reply::Done),
        }
    }

    /// Runs `sql` (prepared), after the pending `BEGIN` if there is one and before `then` (a
    /// `COMMIT`) if given, in one round trip: its rows, or with `count`, how many rows it
    /// changed. The first failure is the answer: the server aborts the transaction at it, so
    /// nothing after it takes effect.
    fn pipelined(&mut self, sql: &str, p: &[Owned], then: Option<&str>, count: bool) -> Answer {
        // Prepared on the live connection (reconnected first when none is and no transaction
        // is open), and sent on that same one: never a statement of a connection replaced.
        let st = self.prepared(sql)?;
        let Some(c) = self.client.as_ref().filter(|c| !c.is_closed()) else {
            return Err(StoreError::Unavailable(
                "the connection to the database broke".into(),
            ));
        };
        let rt = &self.rt;
        let begin = self.pending.take();
        if begin.is_some() {
            // From here the server may have a transaction open: a failure is rolled back.
            self.in_tx = true;
        }
        let refs: Vec<&(dyn ToSql + Sync)> = p.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        let first = async {
            match begin {
                Some(b) => c.batch_execute(&b).await,
                None => Ok(()),
            }
        };
        // Set when `sql` failed; read by `then` when it is first polled, right after `sql`
        // was: a statement that failed before it was sent (its parameters could not be
        // encoded) left the transaction open and not aborted, so `then` is not sent
        // as it is: a ROLLBACK instead.
        let failed = std::cell::Cell::new(false);
        let main = async {
            let r = if count {
                c.execute(&st, &refs).await.map(Err)
            } else {
                c.query(&st, &refs).await.map(Ok)
            };
            if r.is_err() {
                failed.set(true);
            }
            r
        };
        let last = async {
            match then {
                Some(_) if failed.get() => c.batch_execute("ROLLBACK").await,
                Some(t) => c.batch_execute(t).await,
                None => Ok(()),
            }
        };
        // `biased`: first polled in this order, so sent in this order.
        let (b, out, t) = rt.block_on(async { tokio::join!(biased; first, main, last) });
        if then.is_some() {
            // The COMMIT (or ROLLBACK) was sent: the transaction is over, whatever came back.
            self.in_tx = false;
        }
        b.map_err(|e| fail(&e))?;
        let out = out.map_err(|e| fail(&e))?;
        t.map_err(|e| fail(&e))?;
        match out {
            Ok(rows) => rows
                .iter()
                .map(cells)
                .collect::<Result<Vec<_>, _>>()
                .map(Reply::Rows),
            Err(n) => Ok(Reply::Count(n)),
        }
    }

    fn simple(&mut self, sql: &str) -> Result<(), StoreError> {
        // A COMMIT or ROLLBACK on a connection that broke: the server rolled back already.
        if !sql.starts_with("BEGIN") && self.client.as_ref().is_none_or(Client::is_closed) {
            return Err(StoreError::Unavailable(
                "the connection broke inside a transaction (rolled back)".into(),
            ));
        }
        let (rt, c) = self.ensure()?;
        rt.block_on(c.batch_execute(sql)).map_err(|e| fail(&e))
    }

    /// The prepared statement of `sql` (as the store writes it), translated by [`dialect`]
    /// and prepared once per connection.
    fn prepared(&mut self, sql: &str) -> Result<Statement, StoreError> {
        self.ensure()?;
        if let Some(st) = self.stmts.get(sql) {
            return Ok(st.clone());
        }
        let (rt, c) = self.ensure()?;
        let st = rt
            .block_on(c.prepare(&dialect(sql)))
            .map_err(|e| fail(&e))?;
        self.stmts.insert(sql.to_string(), st.clone());
        Ok(st)
    }

    fn migrate(&mut self, migrations: &[&str]) -> Result<(), StoreError> {
        let (rt, c) = self.ensure()?;
        let db = |e: tokio_postgres::Error| fail(&e);
        rt.block_on(async {
            c.execute("SELECT pg_advisory_lock($1)", &[&MIGRATE_LOCK])
                .await
                .map_err(db)?;
            let r = async {
                c.batch_execute(
                    "CREATE TABLE IF NOT EXISTS keel_schema (version BIGINT NOT NULL);
                     INSERT INTO keel_schema (version)
                       SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM keel_schema);",
                )
                .await
                .map_err(db)?;
                let version: i64 = c
                    .query_one("SELECT version FROM keel_schema", &[])
                    .await
                    .map_err(db)?
                    .try_get(0)
                    .map_err(db)?;
                let known = i64::try_from(migrations.len()).unwrap_or(i64::MAX);
                if version > known {
                    return Err(StoreError::NewerSchema {
                        found: version,
                        supported: known,
                    });
                }
                for (i, m) in migrations
                    .iter()
                    .enumerate()
                    .skip(usize::try_from(version).unwrap_or(0))
                {
                    let v = i64::try_from(i + 1).unwrap_or(i64::MAX);
                    c.batch_execute("BEGIN").await.map_err(db)?;
                    let step = async {
                        c.batch_execute(m).await?;
                        c.execute("UPDATE keel_schema SET version = $1", &[&v])
                            .await?;
                        c.batch_execute("COMMIT").await
                    }
                    .await;
                    if let Err(e) = step {
                        let _ = c.batch_execute("ROLLBACK").await;
                        return Err(db(e));
                    }
                }
                Ok(())
            }
            .await;
            let unlock = c
                .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATE_LOCK])
                .await
                .map_err(db);
            r?;
            unlock.map(drop)
        })
    }
}

/// A PostgreSQL row as [`Cell`]s.
fn cells(r: &tokio_postgres::Row) -> Result<Row, StoreError> {
    let bad = |e: tokio_postgres::Error| StoreError::Shape(e.to_string());
    r.columns()
        .iter()
        .enumerate()
        .map(|(i, col)| {
            Ok(match *col.type_() {
                Type::INT8 => r.try_get::<_, Option<i64>>(i).map_err(bad)?.map(Cell::Int),
                Type::INT4 => r
                    .try_get::<_, Option<i32>>(i)
                    .map_err(bad)?
                    .map(|v| Cell::Int(v.into())),
                Type::INT2 => r
                    .try_get::<_, Option<i16>>(i)
                    .map_err(bad)?
                    .map(|v| Cell::Int(v.into())),
                Type::BOOL => r
                    .try_get::<_, Option<bool>>(i)
                    .map_err(bad)?
                    .map(|v| Cell::Int(v.into())),
                Type::VOID => None,
                _ => r
                    .try_get::<_, Option<String>>(i)
                    .map_err(bad)?
                    .map(Cell::Text),
            }
            .unwrap_or(Cell::Null))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Row)
}

/// The default timeouts of a fleet's connection: a dead server or network is noticed within
/// seconds, and no statement (a lock wait included) hangs a host forever.
pub fn harden(config: &mut tokio_postgres::Config) {
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(5));
    }
    config
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .tcp_user_timeout(Duration::from_secs(20))
        .application_name("keel")
        // The server's side of the session too: a host cut off by the network is noticed
        // within about 30 s (its session, and the identity's lock, then go). And every
        // statement planned for its parameters and the tables as they are now: a generic plan
        // made while a table was empty (a fresh fleet) scans the whole table once it is not.
        .options("-c statement_timeout=30000 -c lock_timeout=30000 -c idle_in_transaction_session_timeout=60000 -c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3 -c plan_cache_mode=force_custom_plan");
}

#[cfg(test)]
mod tests {
    use super::dialect;

    #[test]
    fn the_dialect_numbers_parameters_and_spells_insert_or_ignore() {
        assert_eq!(
            dialect("SELECT 1 FROM t WHERE a = ?1 AND b = '?2' AND c = ?12"),
            "SELECT 1 FROM t WHERE a = $1 AND b = '?2' AND c = $12"
        );
        assert_eq!(
            dialect("INSERT OR IGNORE INTO t (a) VALUES (?1)"),
            "INSERT INTO t (a) VALUES ($1) ON CONFLICT DO NOTHING"
        );
        assert_eq!(dialect("SELECT ? + 1"), "SELECT ? + 1");
        assert_eq!(
            dialect("INSERT OR IGNORE INTO t (a) VALUES (?1) RETURNING a;"),
            "INSERT INTO t (a) VALUES ($1) ON CONFLICT DO NOTHING RETURNING a"
        );
    }
}
