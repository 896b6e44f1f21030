//! A fleet's batch in a few round trips.
//!
//! On PostgreSQL every statement is a round trip to the server (and a hop to the connection's
//! thread), where SQLite runs the same statement in-process; a decision's reads (its ingest
//! key, its attempt count, whether its event was seen) and writes (the decision, the ingest
//! key, the attempt count) cost four of them. So inside a batch a fleet's store
//! reads what the batch will look up in one query, before deciding ([`Db::prefetch`]), and
//! keeps the decisions it records in memory until the batch commits, writing them then in one
//! statement ([`Db::flush`]): a batch of 64 ingest bodies takes a handful of round trips
//! instead of 256.
//!
//! What the batch read is exact, not a guess: a batch holds the fleet's write lock from its
//! first statement to its commit, and every statement that writes decisions, ingest keys and
//! attempt counts runs under that lock; the only other writer, the garbage collector, only
//! deletes rows older than what a batch reads. The batch's own writes update the cache as
//! they are recorded, so a second body with the same key in one batch is a duplicate, as it
//! is on SQLite. A look-up the prefetch did not cover reads the database and is cached too.
//!
//! Order is kept: any other statement of the batch (an outbox entry, a deferral, a budget
//! member, the normalizer state) first writes the decisions recorded before it, so the
//! database sees the statements in the order the host made them. A rolled-back batch drops
//! its cache and its unwritten decisions with it.

use std::cell::RefCell;
use std::collections::HashMap;

use super::sql::{p, Val};
use super::{Db, NewDecision, StoreError};

/// What a batch will look up, known before it decides (see [`Db::prefetch`]). A look-up
/// missing from it still works (one more round trip); one given but never made costs a row.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Prefetch {
    /// Ingest idempotency keys.
    pub keys: Vec<String>,
    /// Events, with the status they would be recorded in.
    pub events: Vec<(String, String)>,
    /// Attempt counts, by resource and operation.
    pub attempts: Vec<(String, String)>,
}

impl Prefetch {
    /// Whether there is nothing to look up.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.events.is_empty() && self.attempts.is_empty()
    }
}

/// A fleet batch's cache and unwritten decisions (see the module documentation).
#[derive(Default)]
pub struct Overlay(RefCell<Inner>);

#[derive(Default)]
struct Inner {
    /// Whether an event was seen in a status.
    seen: HashMap<(String, String), bool>,
    /// The event an ingest key was accepted as (`None`: never).
    keys: HashMap<String, Option<String>>,
    /// The attempt count of a resource and operation, with its time (`None`: none).
    attempts: HashMap<(String, String), Option<(i64, String)>>,
    /// Decisions recorded and not yet written, in order.
    writes: Vec<Write>,
}

/// One recorded decision, not yet written.
struct Write {
    event_id: String,
    now: String,
    decision_id: String,
    mode: String,
    policy_set: String,
    action: String,
    event_json: String,
    decision_json: String,
    runbook: String,
    /// The event was not seen before: the decision (and the attempt count) is written.
    new: bool,
    key: Option<String>,
    counted: Option<(String, String)>,
    attempt: i64,
}

/// The first text of each pair, as a list parameter.
fn first(pairs: &[(String, String)]) -> Vec<Option<&str>> {
    pairs.iter().map(|(a, _)| Some(a.as_str())).collect()
}

/// One row of the prefetch query: which look-up (0 key, 1 decision, 2 attempts), two texts,
/// a count and a time. Each look-up is an index scan on the leading column of its table's
/// primary key, one per value: the `OFFSET 0` keeps the planner from turning the list into a
/// join, which it may plan as a scan of the whole table (its costs assume a cold disk, and
/// the scan grows with the table). The rows of a resource's other operations come along, and
/// are cached as the facts they are.
const PREFETCH: &str = "
    SELECT 0, f.key, f.event_id, CAST(NULL AS BIGINT), CAST(NULL AS TEXT)
      FROM unnest(CAST(?1 AS TEXT[])) AS w(key)
      CROSS JOIN LATERAL (SELECT key, event_id FROM ingest_keys
                           WHERE key = w.key OFFSET 0) AS f
    UNION ALL
    SELECT 1, f.decision_id, f.event_id, CAST(NULL AS BIGINT), CAST(NULL AS TEXT)
      FROM unnest(CAST(?2 AS TEXT[])) AS w(id)
      CROSS JOIN LATERAL (SELECT decision_id, event_id FROM decisions
                           WHERE decision_id = w.id OFFSET 0) AS f
    UNION ALL
    SELECT 2, f.resource, f.operation, f.count, f.last_at
      FROM unnest(CAST(?3 AS TEXT[])) AS w(resource)
      CROSS JOIN LATERAL (SELECT resource, operation, count, last_at FROM attempts
                           WHERE resource = w.resource OFFSET 0) AS f";

/// Every unwritten decision of a batch in one statement: the decisions of the events that
/// were new (a decision already there fails the statement: see [`Db::flush`]), the ingest keys,
/// and the attempt counts (the last one per resource and operation, as one upsert after the
/// other would leave it). Decisions get their `seq` in the order they were recorded.
const FLUSH: &str = "
    WITH input AS (
      SELECT * FROM unnest(
        CAST(?1 AS TEXT[]), CAST(?2 AS TEXT[]), CAST(?3 AS TEXT[]), CAST(?4 AS TEXT[]),
        CAST(?5 AS TEXT[]), CAST(?6 AS TEXT[]), CAST(?7 AS TEXT[]), CAST(?8 AS TEXT[]),
        CAST(?9 AS TEXT[]), CAST(?10 AS BIGINT[]), CAST(?11 AS TEXT[]), CAST(?12 AS TEXT[]),
        CAST(?13 AS TEXT[]), CAST(?14 AS BIGINT[])
      ) WITH ORDINALITY AS x(event_id, now, decision_id, mode, policy_set, action,
                             event_json, decision_json, runbook, new, key, resource,
                             operation, attempt, ord)
    ), dec AS (
      INSERT INTO decisions (decision_id, time, event_id, mode, policy_set, action,
                             event_json, decision_json, runbook, host)
      SELECT decision_id, now, event_id, mode, policy_set, action, event_json,
             decision_json, runbook, CAST(?15 AS TEXT)
        FROM input WHERE new = 1 ORDER BY ord
      RETURNING 1
    ), ik AS (
      INSERT INTO ingest_keys (key, received_at, event_id)
      SELECT key, now, event_id FROM input WHERE key IS NOT NULL ORDER BY ord
      ON CONFLICT DO NOTHING RETURNING 1
    ), att AS (
      INSERT INTO attempts (resource, operation, count, last_at)
      SELECT DISTINCT ON (resource, operation) resource, operation, attempt, now
        FROM input WHERE new = 1 AND key IS NOT NULL AND resource IS NOT NULL
       ORDER BY resource, operation, ord DESC
      ON CONFLICT (resource, operation) DO UPDATE
        SET count = excluded.count, last_at = excluded.last_at
      RETURNING 1
    )
    SELECT COUNT(*) FROM dec";

impl Db<'_> {
    /// In a fleet's batch, reads in one query what `want` names, so that the batch's look-ups
    /// ([`Db::seen`], [`Db::ingest_key`], [`Db::attempts`]) need no round trip of their own.
    /// Nothing to do on SQLite or outside a batch.
    pub fn prefetch(&self, want: &Prefetch) -> Result<(), StoreError> {
        let Some(o) = self.2 else {
            return Ok(());
        };
        if want.is_empty() {
            return Ok(());
        }
        let keys: Vec<Option<&str>> = want.keys.iter().map(|k| Some(k.as_str())).collect();
        // An event seen in a status is one whose decision exists (`SEEN`): looked up by the
        // decision's id, and taken only for the event it was asked for.
        let by_decision: HashMap<String, &(String, String)> = want
            .events
            .iter()
            .map(|e| (super::decision_key(&e.0, &e.1), e))
            .collect();
        let ids: Vec<Option<&str>> = by_decision.keys().map(|d| Some(d.as_str())).collect();
        let resources = first(&want.attempts);
        let rows = self.c()?.rows(
            PREFETCH,
            &[Val::Texts(&keys), Val::Texts(&ids), Val::Texts(&resources)],
        )?;
        let mut inner = o.0.borrow_mut();
        // What was asked and not found is known absent.
        for k in &want.keys {
            inner.keys.entry(k.clone()).or_insert(None);
        }
        for e in &want.events {
            inner.seen.entry(e.clone()).or_insert(false);
        }
        for a in &want.attempts {
            inner.attempts.entry(a.clone()).or_insert(None);
        }
        for r in rows {
            let (a, b): (String, String) = (r.get(1)?, r.get(2)?);
            match r.get::<i64>(0)? {
                0 => {
                    inner.keys.insert(a, Some(b));
                }
                1 => {
                    if let Some(e) = by_decision.get(&a).filter(|e| e.0 == b) {
                        inner.seen.insert((*e).clone(), true);
                    }
                }
                _ => {
                    let found = (r.get::<i64>(3)?, r.get::<String>(4)?);
                    inner.attempts.insert((a, b), Some(found));
                }
            }
        }
        Ok(())
    }

    /// [`Db::seen`] in a fleet's batch: from the cache, else read and cached.
    pub(super) fn seen_cached(
        &self,
        o: &Overlay,
        decision_id: &str,
        id: &str,
        status: &str,
    ) -> Result<bool, StoreError> {
        let k = (id.to_string(), status.to_string());
        if let Some(&s) = o.0.borrow().seen.get(&k) {
            return Ok(s);
        }
        let s = self.c()?.exists(super::SEEN, p![decision_id, id])?;
        o.0.borrow_mut().seen.insert(k, s);
        Ok(s)
    }

    /// [`Db::ingest_key`] in a fleet's batch: from the cache, else read and cached.
    pub(super) fn ingest_key_cached(
        &self,
        o: &Overlay,
        key: &str,
    ) -> Result<Option<String>, StoreError> {
        if let Some(v) = o.0.borrow().keys.get(key) {
            return Ok(v.clone());
        }
        let v = self
            .c()?
            .one("SELECT event_id FROM ingest_keys WHERE key = ?1", p![key])?
            .map(|r| r.get(0))
            .transpose()?;
        o.0.borrow_mut().keys.insert(key.to_string(), v.clone());
        Ok(v)
    }

    /// [`Db::attempts`] in a fleet's batch: the count (and its time) from the cache, else
    /// read and cached; 0 when the last attempt is older than `since` (compared byte-wise,
    /// as the columns' `C` collation does).
    pub(super) fn attempts_cached(
        &self,
        o: &Overlay,
        resource: &str,
        operation: &str,
        since: &str,
    ) -> Result<i64, StoreError> {
        let k = (resource.to_string(), operation.to_string());
        let cached = o.0.borrow().attempts.get(&k).cloned();
        let found = match cached {
            Some(f) => f,
            None => {
                let f = self
                    .c()?
                    .one(
                        "SELECT count, last_at FROM attempts WHERE resource = ?1 AND operation = ?2",
                        p![resource, operation],
                    )?
                    .map(|r| Ok::<_, StoreError>((r.get::<i64>(0)?, r.get::<String>(1)?)))
                    .transpose()?;
                o.0.borrow_mut().attempts.insert(k, f.clone());
                f
            }
        };
        Ok(found
            .filter(|(_, at)| at.as_str() >= since)
            .map_or(0, |(n, _)| n))
    }

    /// [`Db::record`] in a fleet's batch: decides whether the event is new from the cache,
    /// updates the cache with what the decision writes, and keeps the decision for
    /// [`Db::flush`]. The outbox entries and a normalizer state are written at once (after
    /// the decisions before them).
    pub(super) fn record_cached(
        &self,
        o: &Overlay,
        r: &NewDecision<'_>,
    ) -> Result<bool, StoreError> {
        let new = !self.seen_cached(o, r.decision_id, r.event_id, r.status)?;
        let (key, counted, attempt) = match &r.ingest {
            Some(i) => (
                Some(i.key.to_string()),
                i.counted.map(|(a, b)| (a.to_string(), b.to_string())),
                i.attempt,
            ),
            None => (None, None, 0),
        };
        {
            let mut inner = o.0.borrow_mut();
            inner
                .seen
                .insert((r.event_id.to_string(), r.status.to_string()), true);
            if let Some(k) = &key {
                let slot = inner.keys.entry(k.clone()).or_insert(None);
                if slot.is_none() {
                    *slot = Some(r.event_id.to_string());
                }
            }
            if let (true, true, Some(c)) = (new, key.is_some(), &counted) {
                inner
                    .attempts
                    .insert(c.clone(), Some((attempt, r.now.to_string())));
            }
            if new || key.is_some() {
                inner.writes.push(Write {
                    event_id: r.event_id.into(),
                    now: r.now.into(),
                    decision_id: r.decision_id.into(),
                    mode: r.mode.into(),
                    policy_set: r.policy_set.into(),
                    action: r.action.into(),
                    event_json: r.event_json.into(),
                    decision_json: r.decision_json.into(),
                    runbook: r.runbook.into(),
                    new,
                    key,
                    counted,
                    attempt,
                });
            }
        }
        if let Some(state) = r.normalizer_state {
            self.save_normalizer_state(state)?;
        }
        if new {
            for o in r.outbox {
                super::insert_outbox(self.c()?, o, r.now)?;
            }
        }
        Ok(new)
    }

    /// Writes the decisions a fleet's batch recorded and has not written yet, in one
    /// statement. Refused by the server (and so the batch rolled back) if an event taken as
    /// new was there after all, which only a writer outside the fleet's write lock could
    /// cause: its decision's primary key. Never a decision answered as recorded and not
    /// written.
    pub(super) fn flush(&self) -> Result<(), StoreError> {
        self.write_recorded(|sql, p| self.0.one(sql, p).map(drop))
    }

    /// Ends a fleet's batch: writes the decisions it recorded and commits, in one round trip.
    /// When the write is refused (see [`Db::flush`]), nothing is committed.
    pub(super) fn flush_and_commit(&self) -> Result<(), StoreError> {
        let mut committed = false;
        self.write_recorded(|sql, p| {
            committed = true;
            self.0.commit_with(sql, p)
        })?;
        if !committed {
            self.0.commit()?;
        }
        Ok(())
    }

    /// Runs [`FLUSH`] with `run` over the decisions recorded and not written yet (if any).
    fn write_recorded(
        &self,
        run: impl FnOnce(&str, &[Val<'_>]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let Some(o) = self.2 else {
            return Ok(());
        };
        let writes = std::mem::take(&mut o.0.borrow_mut().writes);
        if writes.is_empty() {
            return Ok(());
        }
        let col =
            |f: fn(&Write) -> Option<&str>| -> Vec<Option<&str>> { writes.iter().map(f).collect() };
        let event_id = col(|w| Some(&w.event_id));
        let now = col(|w| Some(&w.now));
        let decision_id = col(|w| Some(&w.decision_id));
        let mode = col(|w| Some(&w.mode));
        let policy_set = col(|w| Some(&w.policy_set));
        let action = col(|w| Some(&w.action));
        let event_json = col(|w| Some(&w.event_json));
        let decision_json = col(|w| Some(&w.decision_json));
        let runbook = col(|w| Some(&w.runbook));
        let key = col(|w| w.key.as_deref());
        let resource = col(|w| w.counted.as_ref().map(|c| c.0.as_str()));
        let operation = col(|w| w.counted.as_ref().map(|c| c.1.as_str()));
        let new: Vec<i64> = writes.iter().map(|w| i64::from(w.new)).collect();
        let attempt: Vec<i64> = writes.iter().map(|w| w.attempt).collect();
        run(
            FLUSH,
            &[
                Val::Texts(&event_id),
                Val::Texts(&now),
                Val::Texts(&decision_id),
                Val::Texts(&mode),
                Val::Texts(&policy_set),
                Val::Texts(&action),
                Val::Texts(&event_json),
                Val::Texts(&decision_json),
                Val::Texts(&runbook),
                Val::Ints(&new),
                Val::Texts(&key),
                Val::Texts(&resource),
                Val::Texts(&operation),
                Val::Ints(&attempt),
                Val::Text(self.1),
            ],
        )
    }
}
