//! The state store's unit tests.

use super::*;

/// One-statement wrappers of the [`Db`] methods, for the tests only.
impl Store {
    /// The event an ingest idempotency key was accepted as, if it was.
    pub(super) fn ingest_key(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.with(|db| db.ingest_key(key))
    }

    /// See [`Db::attempts`].
    pub(super) fn attempts(
        &self,
        resource: &str,
        operation: &str,
        since: &str,
    ) -> Result<i64, StoreError> {
        self.with(|db| db.attempts(resource, operation, since))
    }

    /// See [`Db::record`]; one transaction.
    pub(super) fn record(&self, r: &NewDecision<'_>) -> Result<bool, StoreError> {
        self.with(|db| db.record(r))
    }

    /// Remembers that `event` must be decided again at `due`.
    pub(super) fn defer(
        &self,
        event_id: &str,
        due: &str,
        event_json: &str,
    ) -> Result<(), StoreError> {
        self.with(|db| db.defer(event_id, due, event_json))
    }

    /// Records a step's outcome.
    pub(super) fn finish_step(
        &self,
        key: &str,
        outcome: &str,
        now: &str,
    ) -> Result<(), StoreError> {
        self.finish_step_approving(key, outcome, None, now)
    }

    /// Takes the deferrals due at `now` (RFC 3339, compared as text in UTC), in one
    /// transaction.
    pub(super) fn take_due(&self, now: &str) -> Result<Vec<(String, String)>, StoreError> {
        self.with(|db| db.0.atomic(|| db.take_due(now)))
    }
}

#[test]
fn a_store_error_keeps_its_source() {
    use std::error::Error as _;
    let io = StoreError::Files(
        "/x/state.db".into(),
        std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied"),
    );
    assert_eq!(io.to_string(), "state database: /x/state.db: denied");
    assert_eq!(
        io.source().map(|s| s.to_string()).as_deref(),
        Some("denied")
    );
    let sql = StoreError::from(rusqlite::Error::QueryReturnedNoRows);
    assert!(sql.source().is_some_and(|s| s.is::<rusqlite::Error>()));
    assert!(StoreError::Poisoned.source().is_none());
}

/// The id the host gives the decision of `event_id` in `status` ([`decision_key`]: how the
/// store knows the event was seen), kept for the test's lifetime.
pub(super) fn did(event_id: &str, status: &str) -> &'static str {
    Box::leak(decision_key(event_id, status).into_boxed_str())
}

fn rec<'a>(event_id: &'a str, ingest: Option<IngestRecord<'a>>) -> NewDecision<'a> {
    NewDecision {
        event_id,
        status: "-",
        now: "2026-01-01T00:00:00.000Z",
        normalizer_state: Some("{}"),
        decision_id: did(event_id, "-"),
        mode: "live",
        policy_set: "digest",
        action: "none",
        event_json: "{}",
        decision_json: "{}",
        runbook: "done",
        ingest,
        outbox: &[],
    }
}

#[test]
fn a_version_1_database_is_migrated_and_keeps_its_rows() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(|_| StoreError::Poisoned)?;
    let path = dir.path().join("state.db");
    {
        let c = Connection::open(&path)?;
        c.execute_batch(&format!(
            "BEGIN; {}; PRAGMA user_version = 1; COMMIT;",
            MIGRATIONS[0]
        ))?;
        // An event and its decision, as version 1 wrote them (both or neither).
        c.execute(
            "INSERT INTO events (id, status, first_seen) VALUES ('old', '-', 'then')",
            [],
        )?;
        c.execute(
            "INSERT INTO decisions (decision_id, time, event_id, mode, policy_set, action,
                                    event_json, decision_json, runbook)
             VALUES (?1, 'then', 'old', 'live', 'p', 'none', '{}', '{}', 'done')",
            [decision_key("old", "-")],
        )?;
    }
    let s = Store::open(&path)?;
    let version: i64 = s.schema_version()?;
    assert_eq!(version, MIGRATIONS.len() as i64);
    assert!(s.seen("old", "-")?, "seen: its decision is there");
    assert!(!s.seen("old", "completed")?, "not in another status");
    assert_eq!(s.ingest_key("k")?, None);
    let r = IngestRecord {
        key: "k",
        counted: Some(("/subscriptions/x/vm", "create")),
        attempt: 1,
    };
    assert!(s.record(&rec("azure.arm:k", Some(r)))?);
    assert_eq!(s.ingest_key("k")?.as_deref(), Some("azure.arm:k"));
    assert_eq!(
        s.attempts("/subscriptions/x/vm", "create", "2025-12-31T00:00:00.000Z")?,
        1
    );
    // Outside the window, the count starts again.
    assert_eq!(
        s.attempts("/subscriptions/x/vm", "create", "2026-01-02T00:00:00.000Z")?,
        0
    );
    // Reopening runs no migration twice.
    drop(s);
    let s = Store::open(&path)?;
    assert!(s.seen("azure.arm:k", "-")?);
    Ok(())
}

#[test]
fn a_newer_database_is_refused_and_left_unchanged() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(|_| StoreError::Poisoned)?;
    let path = dir.path().join("state.db");
    drop(Store::open(&path)?);
    {
        let c = Connection::open(&path)?;
        c.pragma_update(None, "user_version", SCHEMA_VERSION + 1)?;
    }
    let before = std::fs::read(&path).map_err(|_| StoreError::Poisoned)?;
    let err = Store::open(&path).err();
    let msg = err.as_ref().map(ToString::to_string).unwrap_or_default();
    assert!(
        matches!(err, Some(StoreError::NewerSchema { found, supported })
            if found == SCHEMA_VERSION + 1 && supported == SCHEMA_VERSION),
        "{msg}"
    );
    assert!(msg.contains(&format!("is {}", SCHEMA_VERSION + 1)), "{msg}");
    assert!(msg.contains(&format!("({SCHEMA_VERSION})")), "{msg}");
    let after = std::fs::read(&path).map_err(|_| StoreError::Poisoned)?;
    assert!(before == after, "the database changed");
    Ok(())
}

#[cfg(unix)]
#[test]
fn the_state_directory_and_files_are_private_whatever_the_umask() -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().map_err(|_| StoreError::Poisoned)?;
    let state_dir = dir.path().join("a/state");
    let path = state_dir.join("state.db");
    let s = Store::open(&path)?;
    s.record(&rec("e1", None))?;
    let mode = |p: &std::path::Path| {
        std::fs::metadata(p)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0)
    };
    assert_eq!(mode(&state_dir), 0o700);
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&state_dir.join("state.db-wal")), 0o600);
    assert_eq!(mode(&state_dir.join("state.db-shm")), 0o600);
    drop(s);
    // A database left world-readable by an older Keel is tightened.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
        .map_err(|_| StoreError::Poisoned)?;
    drop(Store::open(&path)?);
    assert_eq!(mode(&path), 0o600);
    Ok(())
}

/// Every store in `stores` begins the same 300 steps at once, each on its own thread; for
/// each step, what each got, sorted (`["InDoubt", "New"]` for two stores when a step is
/// begun once).
pub(super) fn race_to_begin(stores: &[Store]) -> Vec<(String, Vec<String>)> {
    let keys: Vec<String> = (0..300).map(|i| format!("key-{i}")).collect();
    let results: Vec<Vec<String>> = std::thread::scope(|s| {
        let handles: Vec<_> = stores
            .iter()
            .map(|st| {
                let keys = &keys;
                s.spawn(move || {
                    keys.iter()
                        .map(|k| match st.begin_step(k, "d", 0, "cordon", false, "now") {
                            Ok(rec) => format!("{rec:?}"),
                            Err(e) => format!("error: {e}"),
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    keys.into_iter()
        .enumerate()
        .map(|(i, key)| {
            let mut got: Vec<String> = results
                .iter()
                .map(|r| r.get(i).cloned().unwrap_or_else(|| "missing".into()))
                .collect();
            got.sort();
            (key, got)
        })
        .collect()
}

#[test]
fn begin_step_is_one_transaction_so_two_writers_never_both_begin_a_step() -> Result<(), StoreError>
{
    let dir = tempfile::tempdir().map_err(|_| StoreError::Poisoned)?;
    let path = dir.path().join("state.db");
    for (key, got) in race_to_begin(&[Store::open(&path)?, Store::open(&path)?]) {
        assert_eq!(got, ["InDoubt", "New"], "{key}");
    }
    Ok(())
}

#[test]
fn decisions_since_gives_the_newest_within_the_window_oldest_first() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(|_| StoreError::Poisoned)?;
    let s = Store::open(&dir.path().join("state.db"))?;
    for (id, now) in [
        ("a", "2026-01-01T00:00:00.000Z"),
        ("b", "2026-01-02T00:00:00.000Z"),
        ("c", "2026-01-03T00:00:00.000Z"),
        ("d", "2026-01-04T00:00:00.000Z"),
    ] {
        let json = format!("\"{id}\"");
        s.record(&NewDecision {
            now,
            event_json: &json,
            ..rec(id, None)
        })?;
    }
    let got = s.decisions_since("2026-01-02T00:00:00.000Z", 2)?;
    let ids: Vec<&str> = got.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(ids, ["\"c\"", "\"d\""]);
    assert_eq!(s.decisions_since("2026-01-02T00:00:00.000Z", 10)?.len(), 3);
    Ok(())
}

#[test]
fn every_gc_delete_but_the_steps_one_finds_its_rows_through_an_index_or_the_open_ones(
) -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(|_| StoreError::Poisoned)?;
    let s = Store::open(&dir.path().join("state.db"))?;
    let guard = s.c()?;
    let super::Conn::Lite(c) = &*guard else {
        unreachable!("a SQLite store")
    };
    for sql in GC_DELETES {
        let mut st = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
        let detail = |r: &rusqlite::Row<'_>| r.get::<_, String>(3);
        let plan: Vec<String> = if sql.contains("?1") {
            st.query_map(["2026-01-01T00:00:00.000Z"], detail)?
                .collect::<Result<_, _>>()?
        } else {
            st.query_map([], detail)?.collect::<Result<_, _>>()?
        };
        // The open decisions' partial index is read whole: it holds only the decisions
        // pending or held, not the history.
        let scans: Vec<&String> = plan
            .iter()
            .filter(|l| {
                l.starts_with("SCAN")
                    && !l.starts_with("SCAN steps")
                    && *l != "SCAN decisions USING INDEX decisions_open"
            })
            .collect();
        assert!(scans.is_empty(), "{sql}\nscans: {plan:?}");
    }
    Ok(())
}

#[test]
fn gc_deletes_old_finished_history_and_never_pending_work() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(|_| StoreError::Poisoned)?;
    let s = Store::open(&dir.path().join("state.db"))?;
    let old = "2026-01-01T00:00:00.000Z";
    let new = "2026-03-01T00:00:00.000Z";
    let undelivered = [NewOutbox {
        key: "esc-1",
        decision_id: did("old-escalating", "-"),
        body: "{}",
    }];
    let key = |k| {
        Some(IngestRecord {
            key: k,
            counted: Some(("vm", "create")),
            attempt: 1,
        })
    };
    s.record(&NewDecision {
        now: old,
        ..rec("old-done", key("k-old"))
    })?;
    s.record(&NewDecision {
        now: old,
        runbook: "pending",
        ..rec("old-pending", None)
    })?;
    s.record(&NewDecision {
        now: old,
        outbox: &undelivered,
        ..rec("old-escalating", None)
    })?;
    s.record(&NewDecision {
        now: new,
        ..rec("new-done", key("k-new"))
    })?;
    // An event decided twice, both long ago: its drain still pending, then canceled (that
    // decision finished). Both stay while the drain is pending: it checks the cancel.
    s.record(&NewDecision {
        now: old,
        runbook: "pending",
        ..rec("drained", None)
    })?;
    s.record(&NewDecision {
        now: old,
        status: "canceled",
        decision_id: did("drained", "canceled"),
        ..rec("drained", None)
    })?;
    s.begin_step("step-old", did("old-done", "-"), 0, "cordon", false, old)?;
    s.finish_step("step-old", "ok", old)?;
    s.begin_step(
        "step-pending",
        did("old-pending", "-"),
        0,
        "cordon",
        false,
        old,
    )?;
    s.defer("deferred", old, "{}")?;
    let got = s.gc("2026-02-01T00:00:00.000Z")?;
    assert_eq!(
        got,
        GcCounts {
            decisions: 1,
            steps: 1,
            outbox: 0,
            ingest_keys: 1,
            attempts: 0,
            approvals: 0,
            leases: 0,
            budget_members: 0,
        }
    );
    assert!(!s.seen("old-done", "-")?);
    assert!(s.seen("old-pending", "-")?);
    assert!(s.seen("drained", "canceled")? && s.seen("drained", "-")?);
    assert!(s.seen("old-escalating", "-")?);
    assert!(s.seen("new-done", "-")?);
    assert_eq!(s.pending()?.len(), 2);
    assert_eq!(s.ingest_key("k-old")?, None);
    assert!(s.ingest_key("k-new")?.is_some());
    assert_eq!(s.outbox_depth()?, 1);
    assert_eq!(s.take_due(new)?.len(), 1, "a deferral is never collected");
    // Once delivered and old, the escalation and its decision go too.
    s.outbox_delivered("esc-1", old)?;
    let got = s.gc("2026-02-01T00:00:00.000Z")?;
    assert_eq!((got.decisions, got.outbox), (1, 1));
    // The drain done: its event's two decisions go together.
    s.finish_runbook_escalating(did("drained", "-"), "done", None, old)?;
    assert_eq!(s.gc("2026-02-01T00:00:00.000Z")?.decisions, 2);
    assert!(!s.seen("drained", "canceled")?);
    assert!(
        !s.seen("old-escalating", "-")?,
        "its decision gone, its event is new again"
    );
    assert_eq!(s.gc("2026-02-01T00:00:00.000Z")?.total(), 0);
    Ok(())
}

#[test]
fn a_held_decision_outlives_gc_and_is_released_or_expired_once() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(|_| StoreError::Poisoned)?;
    let s = Store::open(&dir.path().join("state.db"))?;
    let old = "2026-01-01T00:00:00.000Z";
    let held = |id: &str| HeldRow {
        decision_id: did(id, "-").into(),
        event_id: id.into(),
        action: "drain".into(),
        event_json: "{}".into(),
        by: "pause".into(),
        scope: "all".into(),
        reason: "r".into(),
        since: old.into(),
        deadline: None,
    };
    for id in ["a", "b"] {
        s.record(&NewDecision {
            now: old,
            runbook: "pending",
            decision_json: "{\"d\":1}",
            ..rec(id, None)
        })?;
        s.hold(&held(id))?;
    }
    assert!(s.pending()?.is_empty(), "a held decision is not pending");
    assert_eq!(s.gc("2026-02-01T00:00:00.000Z")?.decisions, 0);
    assert_eq!(s.held()?.len(), 2);
    assert_eq!(s.status(old)?.held.len(), 2);
    // Released once: pending again, with its decision.
    assert_eq!(s.release(did("a", "-"))?.as_deref(), Some("{\"d\":1}"));
    assert_eq!(s.release(did("a", "-"))?, None);
    assert_eq!(s.pending()?.len(), 1);
    // Expired once: one escalation in the outbox.
    let esc = NewOutbox {
        key: "late",
        decision_id: did("b", "-"),
        body: "{}",
    };
    s.expire_held(did("b", "-"), &esc, old)?;
    s.expire_held(did("b", "-"), &esc, old)?;
    assert_eq!(s.outbox_depth()?, 1);
    assert!(s.held()?.is_empty());
    assert_eq!(
        s.release(did("b", "-"))?,
        None,
        "an expired decision never runs"
    );
    // Pauses: replaced by scope, lifted by scope or all at once.
    assert!(s.pause("all", "x", "me", old)?);
    assert!(!s.pause("all", "y", "me", old)?);
    assert!(s.pause("region:eastus", "z", "me", old)?);
    assert_eq!(s.pauses()?.len(), 2);
    assert_eq!(s.resume(Some("region:westus"))?, Vec::<String>::new());
    assert_eq!(s.resume(Some("all"))?, ["all"]);
    assert_eq!(s.resume(None)?, ["region:eastus"]);
    Ok(())
}

#[test]
fn lease_writes_leave_the_connection_synchronous_full() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(|_| StoreError::Poisoned)?;
    let s = Store::open(&dir.path().join("state.db"))?;
    let sync = |s: &Store| -> Result<i64, StoreError> {
        match &*s.c()? {
            super::Conn::Lite(c) => Ok(c.pragma_query_value(None, "synchronous", |r| r.get(0))?),
            super::Conn::Pg(_) => unreachable!("a SQLite store"),
        }
    };
    assert_eq!(sync(&s)?, 2, "FULL");
    let want = super::LeaseWant {
        budget: "b",
        key: "k",
        unit: "u",
        bake_s: 0,
        max_in_flight: 1,
    };
    let now = "2026-01-01T00:00:00.000Z";
    let later = "2026-01-01T00:01:00.000Z";
    s.acquire_leases(
        "d",
        std::slice::from_ref(&want),
        "h",
        || (now.into(), later.into()),
        |_, _| Ok(()),
    )?
    .map_err(|_| StoreError::Poisoned)?;
    assert_eq!(sync(&s)?, 2, "FULL again after a lease is taken");
    // Refused: nothing written, and FULL again too.
    let refused = s.acquire_leases(
        "e",
        &[want],
        "h",
        || (now.into(), later.into()),
        |_, _| Err("full".into()),
    )?;
    assert!(refused.is_err());
    assert_eq!(sync(&s)?, 2);
    s.renew_leases("h", &["d".into()], now, later)?;
    assert_eq!(sync(&s)?, 2);
    let at = chrono::DateTime::parse_from_rfc3339(now)
        .map_err(|_| StoreError::Poisoned)?
        .with_timezone(&chrono::Utc);
    assert_eq!(s.release_leases("d", "h", at)?, 1);
    assert_eq!(sync(&s)?, 2);
    Ok(())
}

#[test]
fn a_background_checkpoint_copies_committed_batches_into_the_database_file(
) -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(|e| StoreError::Files("tmp".into(), e))?;
    let path = dir.path().join("state.db");
    let s = Store::open(&path)?;
    s.checkpoint_in_background()?;
    // Called again: no second thread, no error.
    s.checkpoint_in_background()?;
    let size = || std::fs::metadata(&path).map_or(0, |m| m.len());
    let before = size();
    let big = "x".repeat(4000);
    let ids: Vec<String> = (0..200).map(|i| format!("ev-{i}")).collect();
    s.batch(|db| {
        for id in &ids {
            let mut r = rec(id, None);
            r.event_json = &big;
            db.record(&r)?;
        }
        Ok(())
    })?;
    // The batch's pages are in the log; below the fallback, only the thread copies them into
    // the database file.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while size() < before + 200 * 4000 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        size() >= before + 200 * 4000,
        "the database file was not checkpointed: {} bytes (from {before})",
        size()
    );
    if let Conn::Lite(c) = &*s.c()? {
        let pages: i64 = c.pragma_query_value(None, "wal_autocheckpoint", |r| r.get(0))?;
        assert_eq!(pages, WAL_FALLBACK_PAGES);
    }
    assert!(s.seen("ev-199", "-")?);
    // A write outside any batch (as a runbook step's record) is checkpointed too.
    let before = size();
    s.record(&{
        let mut r = rec("outside", None);
        r.event_json = &big;
        r
    })?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while size() <= before && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        size() > before,
        "a write outside a batch was not checkpointed"
    );
    Ok(())
}

/// `synchronous` on the batches' connection (2: FULL).
fn synchronous(s: &Store) -> Result<i64, StoreError> {
    match &*s.c()? {
        Conn::Lite(c) => Ok(c.pragma_query_value(None, "synchronous", |r| r.get(0))?),
        Conn::Pg(_) => Err(StoreError::Shape("a SQLite store".into())),
    }
}

#[test]
fn an_unsynced_batch_is_committed_at_once_and_one_sync_covers_every_batch_before_it(
) -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(|e| StoreError::Files("tmp".into(), e))?;
    let path = dir.path().join("state.db");
    let s = Store::open(&path)?;
    let ((), first) = s.batch_unsynced(|db| db.record(&rec("a", None)).map(drop))?;
    assert_eq!(synchronous(&s)?, 2, "the connection is FULL again after it");
    let ((), second) = s.batch_unsynced(|db| db.record(&rec("b", None)).map(drop))?;
    assert!(first.0 < second.0, "numbered in commit order");
    // Committed: another connection (`keel status`, another process) reads both already.
    let other = Store::open(&path)?;
    assert!(other.seen("a", "-")? && other.seen("b", "-")?);
    assert_eq!(s.sync.synced.lock().map_err(|_| StoreError::Poisoned)?.0, 0);
    // Syncing the first covers the second, committed before the sync began.
    s.sync(first)?;
    assert!(s.sync.synced.lock().map_err(|_| StoreError::Poisoned)?.0 >= second.0);
    s.sync(second)?;
    // A batch that fails commits nothing and leaves the connection FULL.
    let failed = s.batch_unsynced(|db| {
        db.record(&rec("c", None))?;
        Err::<(), _>(StoreError::Shape("refused".into()))
    });
    assert!(matches!(failed, Err(StoreError::Shape(_))));
    assert!(!s.seen("c", "-")?);
    assert_eq!(synchronous(&s)?, 2);
    s.sync(Unsynced(0))?;
    Ok(())
}

#[test]
fn a_log_that_cannot_be_synced_fails_the_batch_and_the_store_refuses_everything_after_it(
) -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(|e| StoreError::Files("tmp".into(), e))?;
    let path = dir.path().join("state.db");
    let s = Store::open(&path)?;
    let ((), first) = s.batch_unsynced(|db| db.record(&rec("a", None)).map(drop))?;
    s.sync(first)?;
    let ((), second) = s.batch_unsynced(|db| db.record(&rec("b", None)).map(drop))?;
    // The log is not where it was any more: the file kept open is not trusted blindly.
    let wal = dir.path().join("state.db-wal");
    std::fs::rename(&wal, dir.path().join("moved"))
        .map_err(|e| StoreError::Files(wal.clone(), e))?;
    assert!(matches!(s.sync(second), Err(StoreError::Unsynced(_))));
    assert!(matches!(s.seen("a", "-"), Err(StoreError::Unsynced(_))));
    assert!(matches!(
        s.batch_unsynced(|_| Ok(())),
        Err(StoreError::Unsynced(_))
    ));
    assert!(matches!(s.sync(second), Err(StoreError::Unsynced(_))));
    Ok(())
}

#[test]
fn the_outbox_hands_out_no_entry_of_a_batch_not_yet_on_the_disk() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(|e| StoreError::Files("tmp".into(), e))?;
    let s = Store::open(&dir.path().join("state.db"))?;
    let outbox = [NewOutbox {
        key: "storm:eastus2",
        decision_id: "a",
        body: "{}",
    }];
    let ((), batch) = s.batch_unsynced(|db| {
        let mut r = rec("a", None);
        r.outbox = &outbox;
        db.record(&r).map(drop)
    })?;
    assert!(s.sync.synced.lock().map_err(|_| StoreError::Poisoned)?.0 < batch.0);
    let due = s.outbox_due("2100-01-01T00:00:00.000Z", "2100-01-01T00:00:00.000Z", 8)?;
    assert_eq!(due.len(), 1);
    // Handed out only once the log holding it was synced.
    assert!(s.sync.synced.lock().map_err(|_| StoreError::Poisoned)?.0 >= batch.0);
    Ok(())
}

/// With the filters kept (`keel run`), what a batch records is seen by the next batch, and
/// by a store opened again on the file (its filters built from the tables); what was never
/// recorded is not.
#[test]
fn with_key_filters_recorded_decisions_and_ingest_keys_are_found_again_after_a_reopen(
) -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(|_| StoreError::Poisoned)?;
    let path = dir.path().join("state.db");
    let key = |k: &'static str| IngestRecord {
        key: k,
        counted: None,
        attempt: 1,
    };
    {
        let s = Store::open(&path)?;
        s.track_keys();
        s.batch(|db| {
            assert!(!db.seen("ev-0", "-")?);
            db.record(&rec("ev-0", Some(key("k-0"))))?;
            Ok(())
        })?;
        s.batch(|db| {
            assert!(db.seen("ev-0", "-")?);
            assert_eq!(db.ingest_key("k-0")?.as_deref(), Some("ev-0"));
            assert!(!db.seen("ev-1", "-")?);
            assert_eq!(db.ingest_key("k-1")?, None);
            // Recorded earlier in the same batch: found too.
            db.record(&rec("ev-1", Some(key("k-1"))))?;
            assert!(db.seen("ev-1", "-")?);
            assert_eq!(db.ingest_key("k-1")?.as_deref(), Some("ev-1"));
            Ok(())
        })?;
    }
    let s = Store::open(&path)?;
    s.track_keys();
    s.batch(|db| {
        for (ev, k) in [("ev-0", "k-0"), ("ev-1", "k-1")] {
            assert!(db.seen(ev, "-")?, "{ev}");
            assert_eq!(db.ingest_key(k)?.as_deref(), Some(ev));
        }
        assert!(!db.seen("ev-2", "-")? && db.ingest_key("k-2")?.is_none());
        Ok(())
    })?;
    Ok(())
}
