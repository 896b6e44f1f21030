//! The one SQL interface the store is written against, with two backends: SQLite (one host,
//! the default) and PostgreSQL (a fleet, `state: postgres://…`). Statements are written once,
//! in the SQL both understand, with `?N` parameters; [`pg::dialect`](super::pg::dialect)
//! rewrites the few SQLite spellings PostgreSQL lacks. Values cross as [`Val`] (text, integer
//! or NULL) and rows come back owned ([`Row`]), so no backend type leaks into the store.

use rusqlite::types::{ToSqlOutput, ValueRef};

use super::pg::Pg;
use super::StoreError;

/// A statement parameter: the store only ever binds text, integers and NULL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Val<'a> {
    /// Text.
    Text(&'a str),
    /// A 64-bit integer (booleans are 0 and 1).
    Int(i64),
    /// NULL.
    Null,
    /// A list of texts (`None` is NULL), bound as one `TEXT[]`: PostgreSQL only (the
    /// statements that take lists are the fleet's, see [`batch`](super::batch)).
    Texts(&'a [Option<&'a str>]),
    /// A list of integers, bound as one `BIGINT[]`: PostgreSQL only.
    Ints(&'a [i64]),
}

impl<'a> From<&'a str> for Val<'a> {
    fn from(s: &'a str) -> Self {
        Val::Text(s)
    }
}
impl<'a> From<&'a String> for Val<'a> {
    fn from(s: &'a String) -> Self {
        Val::Text(s)
    }
}
impl<'a> From<&&'a str> for Val<'a> {
    fn from(s: &&'a str) -> Self {
        Val::Text(s)
    }
}
impl From<i64> for Val<'_> {
    fn from(i: i64) -> Self {
        Val::Int(i)
    }
}
impl From<&i64> for Val<'_> {
    fn from(i: &i64) -> Self {
        Val::Int(*i)
    }
}
impl From<bool> for Val<'_> {
    fn from(b: bool) -> Self {
        Val::Int(i64::from(b))
    }
}
impl<'a, T: Into<Val<'a>>> From<Option<T>> for Val<'a> {
    fn from(o: Option<T>) -> Self {
        o.map_or(Val::Null, Into::into)
    }
}
impl<'a> From<&'a Option<String>> for Val<'a> {
    fn from(o: &'a Option<String>) -> Self {
        o.as_deref().map_or(Val::Null, Val::Text)
    }
}

impl rusqlite::ToSql for Val<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match *self {
            Val::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Val::Int(i) => ToSqlOutput::Borrowed(ValueRef::Integer(i)),
            Val::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Val::Texts(_) | Val::Ints(_) => {
                return Err(rusqlite::Error::ToSqlConversionFailure(
                    "a list parameter is bound on PostgreSQL only".into(),
                ))
            }
        })
    }
}

/// The parameters of a statement, as [`Val`]s: `p![a, b]`.
macro_rules! p {
    ($($e:expr),* $(,)?) => { &[$($crate::run::store::sql::Val::from($e)),*][..] };
}
pub(crate) use p;

/// One value of a result row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cell {
    /// NULL.
    Null,
    /// An integer (a PostgreSQL boolean reads as 0 or 1).
    Int(i64),
    /// Text.
    Text(String),
}

/// A result row, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row(pub Vec<Cell>);

/// A Rust value read from a [`Cell`].
pub trait FromCell: Sized {
    /// The value, or why the cell cannot be one.
    fn from_cell(c: &Cell) -> Result<Self, String>;
}

impl FromCell for String {
    fn from_cell(c: &Cell) -> Result<Self, String> {
        match c {
            Cell::Text(s) => Ok(s.clone()),
            other => Err(format!("expected text, found {other:?}")),
        }
    }
}
impl FromCell for i64 {
    fn from_cell(c: &Cell) -> Result<Self, String> {
        match c {
            Cell::Int(i) => Ok(*i),
            other => Err(format!("expected an integer, found {other:?}")),
        }
    }
}
impl FromCell for bool {
    fn from_cell(c: &Cell) -> Result<Self, String> {
        i64::from_cell(c).map(|i| i != 0)
    }
}
impl FromCell for usize {
    fn from_cell(c: &Cell) -> Result<Self, String> {
        let i = i64::from_cell(c)?;
        usize::try_from(i).map_err(|_| format!("expected a count, found {i}"))
    }
}
impl<T: FromCell> FromCell for Option<T> {
    fn from_cell(c: &Cell) -> Result<Self, String> {
        match c {
            Cell::Null => Ok(None),
            c => T::from_cell(c).map(Some),
        }
    }
}

impl Row {
    /// Column `i` as a `T`.
    pub fn get<T: FromCell>(&self, i: usize) -> Result<T, StoreError> {
        let c = self
            .0
            .get(i)
            .ok_or_else(|| StoreError::Shape(format!("no column {i}")))?;
        T::from_cell(c).map_err(|e| StoreError::Shape(format!("column {i}: {e}")))
    }
}

/// How a transaction begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Begin {
    /// Reads, and writes that cannot conflict with another writer's.
    Plain,
    /// Read-then-write work that must see no other writer in between: SQLite's `BEGIN
    /// IMMEDIATE` (the one writer); on PostgreSQL, the store's write lock (an advisory lock
    /// for the transaction), which serializes these transactions across every host of the
    /// fleet.
    Exclusive,
    /// Reads that must see one consistent state (`keel status`): SQLite's deferred
    /// transaction; PostgreSQL's `REPEATABLE READ READ ONLY`.
    Snapshot,
}

/// A connection of either backend.
pub enum Conn {
    /// SQLite.
    Lite(rusqlite::Connection),
    /// PostgreSQL, through the store's own thread.
    Pg(Pg),
}

impl Conn {
    /// Executes one statement; how many rows it changed.
    pub fn exec(&self, sql: &str, p: &[Val<'_>]) -> Result<usize, StoreError> {
        match self {
            Conn::Lite(c) => Ok(c
                .prepare_cached(sql)?
                .execute(rusqlite::params_from_iter(p))?),
            Conn::Pg(pg) => pg.exec(sql, p),
        }
    }

    /// Runs a query; every row.
    pub fn rows(&self, sql: &str, p: &[Val<'_>]) -> Result<Vec<Row>, StoreError> {
        match self {
            Conn::Lite(c) => {
                let mut st = c.prepare_cached(sql)?;
                let n = st.column_count();
                let rows = st.query_map(rusqlite::params_from_iter(p), |r| {
                    (0..n)
                        .map(|i| {
                            Ok(match r.get_ref(i)? {
                                ValueRef::Null => Cell::Null,
                                ValueRef::Integer(i) => Cell::Int(i),
                                ValueRef::Text(t) => {
                                    Cell::Text(String::from_utf8_lossy(t).into_owned())
                                }
                                ValueRef::Real(f) => Cell::Text(f.to_string()),
                                ValueRef::Blob(b) => {
                                    Cell::Text(String::from_utf8_lossy(b).into_owned())
                                }
                            })
                        })
                        .collect::<rusqlite::Result<Vec<_>>>()
                        .map(Row)
                })?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            }
            Conn::Pg(pg) => pg.rows(sql, p),
        }
    }

    /// Runs a query; its first row, if any.
    pub fn one(&self, sql: &str, p: &[Val<'_>]) -> Result<Option<Row>, StoreError> {
        Ok(self.rows(sql, p)?.into_iter().next())
    }

    /// Whether a query returns a row.
    pub fn exists(&self, sql: &str, p: &[Val<'_>]) -> Result<bool, StoreError> {
        Ok(self.one(sql, p)?.is_some())
    }

    /// Runs `f` in a transaction: committed when it returns `Ok`, rolled back otherwise.
    pub fn tx<R>(
        &self,
        begin: Begin,
        f: impl FnOnce(&Conn) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        self.begin(begin)?;
        let r = f(self).and_then(|r| {
            self.commit()?;
            Ok(r)
        });
        if r.is_err() {
            self.rollback();
        }
        r
    }

    /// [`Conn::tx`] in a write transaction that, on SQLite, commits without waiting for the
    /// disk (`synchronous = NORMAL` for it alone, `FULL` again after it whatever its outcome):
    /// the caller makes it durable later, or relies on the next `FULL` commit, which syncs the
    /// log with every frame before it. On PostgreSQL, [`Conn::tx`] as it is.
    pub fn tx_unsynced<R>(
        &self,
        f: impl FnOnce(&Conn) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let Conn::Lite(lite) = self else {
            return self.tx(Begin::Exclusive, f);
        };
        lite.pragma_update(None, "synchronous", "NORMAL")?;
        let res = self.tx(Begin::Exclusive, f);
        let reset = lite.pragma_update(None, "synchronous", "FULL");
        let r = res?;
        reset?;
        Ok(r)
    }

    /// Begins a transaction (see [`Conn::tx`]; a batch spans several calls).
    pub fn begin(&self, begin: Begin) -> Result<(), StoreError> {
        match (self, begin) {
            (Conn::Lite(c), Begin::Plain | Begin::Snapshot) => Ok(c.execute_batch("BEGIN")?),
            (Conn::Lite(c), Begin::Exclusive) => Ok(c.execute_batch("BEGIN IMMEDIATE")?),
            (Conn::Pg(pg), b) => pg.begin(b),
        }
    }

    /// Commits the transaction.
    pub fn commit(&self) -> Result<(), StoreError> {
        match self {
            Conn::Lite(c) => Ok(c.execute_batch("COMMIT")?),
            Conn::Pg(pg) => pg.commit(),
        }
    }

    /// Runs `sql` and commits. On PostgreSQL in one round trip (see [`Pg::commit_with`]);
    /// nothing is committed when `sql` fails, and the transaction is then still to be rolled
    /// back on SQLite (as after any failed statement).
    pub fn commit_with(&self, sql: &str, p: &[Val<'_>]) -> Result<(), StoreError> {
        match self {
            Conn::Lite(_) => {
                self.rows(sql, p)?;
                self.commit()
            }
            Conn::Pg(pg) => pg.commit_with(sql, p),
        }
    }

    /// Rolls the transaction back, if one is open (errors are moot: the transaction ends
    /// either way).
    pub fn rollback(&self) {
        match self {
            Conn::Lite(c) => {
                if !c.is_autocommit() {
                    let _ = c.execute_batch("ROLLBACK");
                }
            }
            Conn::Pg(pg) => pg.rollback(),
        }
    }

    /// Whether a transaction is open on this connection.
    pub fn in_tx(&self) -> bool {
        match self {
            Conn::Lite(c) => !c.is_autocommit(),
            Conn::Pg(pg) => pg.in_tx(),
        }
    }

    /// Runs `f` atomically: a savepoint, which nests inside a batch's transaction and is a
    /// transaction of its own outside one.
    pub fn atomic<R>(&self, f: impl FnOnce() -> Result<R, StoreError>) -> Result<R, StoreError> {
        if !self.in_tx() {
            return self.tx(Begin::Plain, |_| f());
        }
        self.exec("SAVEPOINT keel_atomic", &[])?;
        match f() {
            Ok(r) => {
                self.exec("RELEASE SAVEPOINT keel_atomic", &[])?;
                Ok(r)
            }
            Err(e) => {
                let _ = self.exec("ROLLBACK TO SAVEPOINT keel_atomic", &[]);
                let _ = self.exec("RELEASE SAVEPOINT keel_atomic", &[]);
                Err(e)
            }
        }
    }

    /// Whether this is the PostgreSQL backend (a fleet's shared store).
    pub fn is_fleet(&self) -> bool {
        matches!(self, Conn::Pg(_))
    }
}
