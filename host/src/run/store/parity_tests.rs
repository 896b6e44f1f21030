//! The two backends give the same answers: one script of store operations, run on SQLite and
//! on a real PostgreSQL server (started here, as `host/tests/fleet.rs` does), compared call by
//! call. And PostgreSQL's write lock keeps a step from being begun twice by two hosts.

use super::*;

#[path = "../../../tests/common/pg.rs"]
#[allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod server;

fn pg_store(pg: &server::PgServer, db: &str, host: &str) -> Result<Store, StoreError> {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(pg.port)
        .user("keel")
        .password(server::PASSWORD)
        .dbname(db);
    pg::harden(&mut config);
    Store::open_postgres(pg::Settings {
        config,
        tls: None,
        host: host.into(),
    })
}

const T0: &str = "2026-01-01T00:00:00.000Z";
const T1: &str = "2026-01-01T00:01:00.000Z";
const T2: &str = "2026-01-01T00:02:00.000Z";

fn decision<'a>(
    id: &'a str,
    now: &'a str,
    runbook: &'a str,
    outbox: &'a [NewOutbox<'a>],
) -> NewDecision<'a> {
    NewDecision {
        event_id: id,
        status: "Scheduled",
        now,
        normalizer_state: Some(r#"{"n":1}"#),
        decision_id: super::tests::did(id, "Scheduled"),
        mode: "live",
        policy_set: "digest",
        action: "drain",
        event_json: r#"{"id":"x"}"#,
        decision_json: r#"{"action":"drain"}"#,
        runbook,
        ingest: None,
        outbox,
    }
}

/// Every store operation the host uses, in an order that exercises their interplay; each
/// answer as a line.
fn script(s: &Store) -> Vec<String> {
    let mut out = Vec::new();
    let mut say = |what: &str, v: String| out.push(format!("{what}: {v}"));
    let outbox = [NewOutbox {
        key: "storm:eastus2",
        decision_id: "d2",
        body: r#"{"kind":"storm"}"#,
    }];
    say(
        "record d1",
        format!("{:?}", s.record(&decision("d1", T0, "pending", &[]))),
    );
    say(
        "record d1 again",
        format!("{:?}", s.record(&decision("d1", T0, "pending", &[]))),
    );
    say(
        "record d2",
        format!("{:?}", s.record(&decision("d2", T1, "done", &outbox))),
    );
    // The same dedup key from another decision: one entry.
    let again = [NewOutbox {
        key: "storm:eastus2",
        decision_id: "d3",
        body: "{}",
    }];
    say(
        "record d3",
        format!("{:?}", s.record(&decision("d3", T1, "done", &again))),
    );
    let ingest = IngestRecord {
        key: "k-1",
        counted: Some(("/subscriptions/s/vm1", "create")),
        attempt: 2,
    };
    say(
        "record ingest",
        format!(
            "{:?}",
            s.record(&NewDecision {
                ingest: Some(ingest),
                ..decision("d4", T1, "done", &[])
            })
        ),
    );
    say("ingest key", format!("{:?}", s.ingest_key("k-1")));
    say("unknown key", format!("{:?}", s.ingest_key("k-2")));
    say(
        "attempts",
        format!("{:?}", s.attempts("/subscriptions/s/vm1", "create", T0)),
    );
    say(
        "attempts later",
        format!("{:?}", s.attempts("/subscriptions/s/vm1", "create", T2)),
    );
    say("seen", format!("{:?}", s.seen("d1", "Scheduled")));
    say("not seen", format!("{:?}", s.seen("d1", "Started")));
    say("normalizer", format!("{:?}", s.normalizer_state()));
    say(
        "pending",
        format!(
            "{:?}",
            s.pending()
                .map(|p| p.iter().map(|p| p.decision_id.clone()).collect::<Vec<_>>())
        ),
    );
    say("since", format!("{:?}", s.decisions_since(T0, 10)));
    say("decided at", format!("{:?}", s.decided_at("d2")));
    say("decision json", format!("{:?}", s.decision_json("d2")));
    // Deferrals.
    say("defer", format!("{:?}", s.defer("d5", T1, "{}")));
    say(
        "defer again",
        format!("{:?}", s.defer("d5", T2, r#"{"v":2}"#)),
    );
    say("take early", format!("{:?}", s.take_due(T1)));
    say("take due", format!("{:?}", s.take_due(T2)));
    // Steps and approvals.
    say(
        "begin",
        format!("{:?}", s.begin_step("s1", "d1", 0, "cordon", false, T0)),
    );
    say(
        "begin again",
        format!("{:?}", s.begin_step("s1", "d1", 0, "cordon", false, T0)),
    );
    say("begun", format!("{:?}", s.step_begun("s1")));
    say(
        "approve before",
        format!("{:?}", s.approval_before_send("ABC-def", "d1", T0)),
    );
    say(
        "finish",
        format!(
            "{:?}",
            s.finish_step_approving("s1", "ok", Some(("abc-DEF", "d1")), T1)
        ),
    );
    say(
        "approved",
        format!("{:?}", s.with(|db| db.approved("ABC-DEF"))),
    );
    say(
        "begin done",
        format!("{:?}", s.begin_step("s1", "d1", 0, "cordon", false, T0)),
    );
    say("outcomes", format!("{:?}", s.step_outcomes()));
    // The outbox.
    say("depth", format!("{:?}", s.outbox_depth()));
    let due = s.outbox_due(T2, T2, 10);
    say(
        "due",
        format!(
            "{:?}",
            due.as_ref().map(|r| r
                .iter()
                .map(|o| (o.key.clone(), o.attempts))
                .collect::<Vec<_>>())
        ),
    );
    say(
        "retry",
        format!("{:?}", s.outbox_retry("storm:eastus2", T2, "503")),
    );
    say(
        "delivered",
        format!("{:?}", s.outbox_delivered("storm:eastus2", T2)),
    );
    say("depth after", format!("{:?}", s.outbox_depth()));
    say(
        "escalate",
        format!(
            "{:?}",
            s.finish_runbook_escalating(
                "d1",
                "failed",
                Some(&NewOutbox {
                    key: "runbook_failed:d1",
                    decision_id: "d1",
                    body: "{}"
                }),
                T1
            )
        ),
    );
    // Pauses and held decisions.
    say(
        "pause",
        format!("{:?}", s.pause("region:eastus2", "incident", "ops", T0)),
    );
    say(
        "pause again",
        format!("{:?}", s.pause("region:eastus2", "still", "ops", T1)),
    );
    say(
        "pause all",
        format!("{:?}", s.pause("all", "freeze", "ops", T1)),
    );
    say("pauses", format!("{:?}", s.pauses()));
    let held = HeldRow {
        decision_id: "d2".into(),
        event_id: "d2".into(),
        action: "drain".into(),
        event_json: "{}".into(),
        by: "budget".into(),
        scope: "ud/web".into(),
        reason: "full".into(),
        since: T1.into(),
        deadline: Some(T2.into()),
    };
    say("hold", format!("{:?}", s.hold(&held)));
    say(
        "hold again",
        format!(
            "{:?}",
            s.hold(&HeldRow {
                reason: "still full".into(),
                ..held.clone()
            })
        ),
    );
    say("held", format!("{:?}", s.held()));
    say("release", format!("{:?}", s.release("d2")));
    say("release again", format!("{:?}", s.release("d2")));
    say(
        "hold d3",
        format!(
            "{:?}",
            s.hold(&HeldRow {
                decision_id: "d3".into(),
                ..held.clone()
            })
        ),
    );
    let esc = NewOutbox {
        key: "held:d3",
        decision_id: "d3",
        body: "{}",
    };
    say("expire", format!("{:?}", s.expire_held("d3", &esc, T2)));
    say(
        "resume one",
        format!("{:?}", s.resume(Some("region:eastus2"))),
    );
    say("resume all", format!("{:?}", s.resume(None)));
    // Budgets.
    let want = LeaseWant {
        budget: "ud",
        key: "web",
        unit: "ud-1",
        bake_s: 60,
        max_in_flight: 1,
    };
    let stamps = || (T0.to_string(), T1.to_string());
    say(
        "member",
        format!(
            "{:?}",
            s.with(|db| db.note_member("ud", "web", "vm1", None, T0))
        ),
    );
    say(
        "member sick",
        format!(
            "{:?}",
            s.with(|db| db.note_member("ud", "web", "vm2", Some(false), T0))
        ),
    );
    say(
        "member kept",
        format!(
            "{:?}",
            s.with(|db| db.note_member("ud", "web", "vm2", None, T0))
        ),
    );
    say(
        "acquire",
        format!(
            "{:?}",
            s.acquire_leases("d1", std::slice::from_ref(&want), "h#1", stamps, |_, v| {
                if v.live.is_empty() {
                    Ok(())
                } else {
                    Err("full".into())
                }
            })
        ),
    );
    say(
        "acquire other",
        format!(
            "{:?}",
            s.acquire_leases("d2", std::slice::from_ref(&want), "h#2", stamps, |_, v| {
                if v.live.is_empty() {
                    Ok(())
                } else {
                    Err("full".into())
                }
            })
        ),
    );
    say("view", format!("{:?}", s.key_view("ud", "web", T0)));
    say(
        "renew",
        format!("{:?}", s.renew_leases("h#1", &["d1".into()], T0, T2)),
    );
    let t1 = chrono::DateTime::parse_from_rfc3339(T1).map(|t| t.with_timezone(&chrono::Utc));
    say(
        "release lease",
        format!("{:?}", t1.map(|t| s.release_leases("d1", "h#1", t))),
    );
    say("leases", format!("{:?}", s.leases(T0)));
    say("lease", format!("{:?}", s.lease("d1", "ud")));
    // What `keel status` shows, then garbage collection.
    say(
        "status",
        format!(
            "{:?}",
            s.status(T0).map(|mut st| {
                st.schema_version = 0;
                st
            })
        ),
    );
    say("gc", format!("{:?}", s.gc("2026-01-01T00:01:30.000Z")));
    say("since after gc", format!("{:?}", s.decisions_since(T0, 10)));
    out
}

/// Runs `script` on a fresh SQLite store and on a fresh database `db` of a PostgreSQL server
/// of its own (as host `host-a`), and checks that they answered alike, line by line. The
/// answers, the server and the PostgreSQL store.
fn on_both_backends(
    db: &str,
    script: fn(&Store) -> Vec<String>,
) -> Result<(Vec<String>, server::PgServer, Store), StoreError> {
    let dir = tempfile::tempdir().map_err(|_| StoreError::Poisoned)?;
    let lite = Store::open(&dir.path().join("state.db"))?;
    let pg = server::PgServer::start();
    pg.create_db(db);
    let fleet = pg_store(&pg, db, "host-a")?;
    let (a, b) = (script(&lite), script(&fleet));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x, y);
    }
    Ok((a, pg, fleet))
}

#[test]
fn sqlite_and_postgres_answer_every_store_operation_alike() -> Result<(), StoreError> {
    let (a, _pg, fleet) = on_both_backends("parity", script)?;
    assert_eq!(fleet.schema_version()?, PG_MIGRATIONS.len() as i64);
    // Errors are answers too: none here.
    assert!(!a.iter().any(|l| l.contains(": Err(")), "{a:#?}");
    Ok(())
}

#[test]
fn on_postgres_two_hosts_never_both_begin_a_step_even_under_repeatable_read_and_one_identity_is_refused_twice(
) -> Result<(), StoreError> {
    let pg = server::PgServer::start();
    pg.create_db("steps");
    // Whatever the database's default isolation: the write lock must still serialize (a
    // transaction of REPEATABLE READ would read from before the lock's previous holder).
    pg.with_client("steps", |c| {
        c.batch_execute(
            "ALTER DATABASE steps SET default_transaction_isolation TO 'repeatable read'",
        )
    })
    .map_err(|e| StoreError::Pg(e.to_string()))?
    .map_err(|e| StoreError::Pg(e.to_string()))?;
    let stores = [
        pg_store(&pg, "steps", "host-a")?,
        pg_store(&pg, "steps", "host-b")?,
    ];
    assert!(matches!(
        pg_store(&pg, "steps", "host-a"),
        Err(StoreError::HostTaken(h)) if h == "host-a"
    ));
    for (key, got) in super::tests::race_to_begin(&stores) {
        assert_eq!(got, ["InDoubt", "New"], "{key}");
    }
    Ok(())
}

#[test]
fn hosts_starting_together_migrate_once() -> Result<(), StoreError> {
    let pg = server::PgServer::start();
    pg.create_db("migrate");
    let opened: Vec<Result<i64, StoreError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let pg = &pg;
                s.spawn(move || pg_store(pg, "migrate", &format!("host-{i}"))?.schema_version())
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(Err(StoreError::Poisoned)))
            .collect()
    });
    for v in opened {
        assert_eq!(v?, PG_MIGRATIONS.len() as i64);
    }
    // One row of version, and every table once.
    let versions = pg.count("migrate", "SELECT COUNT(*) FROM keel_schema");
    assert_eq!(versions, 1);
    // A database migrated by a newer keel is refused, untouched.
    pg.with_client("migrate", |c| {
        c.batch_execute("UPDATE keel_schema SET version = 99")
    })
    .map_err(|e| StoreError::Pg(e.to_string()))?
    .map_err(|e| StoreError::Pg(e.to_string()))?;
    assert!(matches!(
        pg_store(&pg, "migrate", "host-new"),
        Err(StoreError::NewerSchema { found: 99, .. })
    ));
    assert_eq!(pg.count("migrate", "SELECT version FROM keel_schema"), 99);
    Ok(())
}

#[test]
fn on_postgres_a_batch_with_a_failed_statement_commits_nothing() -> Result<(), StoreError> {
    let pg = server::PgServer::start();
    pg.create_db("abort");
    let s = pg_store(&pg, "abort", "host-a")?;
    let r = s.batch(|db| {
        db.record(&decision("x1", T0, "done", &[]))?;
        // A statement the server refuses, its error not passed on (as a read whose failure
        // is answered to one ingest client only): the transaction is aborted all the same.
        let failed = db.0.exec("SELECT 1 / 0", p![]);
        assert!(matches!(failed, Err(StoreError::Pg(_))), "{failed:?}");
        Ok(())
    });
    assert!(
        r.is_err(),
        "a commit of an aborted transaction must fail, not roll back silently"
    );
    assert!(!s.seen("x1", "Scheduled")?);
    // The connection is usable again, and a savepoint rolled back keeps its batch alive.
    s.batch(|db| {
        db.record(&decision("x2", T0, "done", &[]))?;
        let inner = db.0.atomic(|| db.0.exec("SELECT 1 / 0", p![]));
        assert!(inner.is_err());
        Ok(())
    })?;
    assert!(s.seen("x2", "Scheduled")?);
    Ok(())
}

#[test]
fn on_postgres_a_last_write_that_cannot_be_sent_commits_nothing() -> Result<(), StoreError> {
    let pg = server::PgServer::start();
    pg.create_db("unsent");
    let s = pg_store(&pg, "unsent", "host-a")?;
    {
        let c = s.c()?;
        c.begin(Begin::Exclusive)?;
        c.exec(
            "INSERT INTO normalizer_state (name, json) VALUES (?1, ?2)",
            p!["early", "{}"],
        )?;
        // Text for a BIGINT parameter: refused while the statement is encoded, before it is
        // sent. The COMMIT that would have followed it must not be sent either.
        let r = c.commit_with("SELECT CAST(?1 AS BIGINT)", p!["not a number"]);
        assert!(r.is_err(), "{r:?}");
        c.rollback();
    }
    assert_eq!(
        pg.count("unsent", "SELECT COUNT(*) FROM normalizer_state"),
        0
    );
    // The connection is usable again, and a batch commits.
    s.batch(|db| db.record(&decision("u1", T0, "done", &[])).map(drop))?;
    assert!(s.seen("u1", "Scheduled")?);
    Ok(())
}

#[test]
fn a_fleets_leases_are_stamped_by_the_database_clock() -> Result<(), StoreError> {
    let pg = server::PgServer::start();
    pg.create_db("clock");
    let s = pg_store(&pg, "clock", "host-a")?;
    s.use_database_clock();
    let want = LeaseWant {
        budget: "ud",
        key: "web",
        unit: "ud-1",
        bake_s: 30,
        max_in_flight: 1,
    };
    // A host whose clock says 2026-01-01 (far from the database's): its lease starts at the
    // database's time, 60 s long as asked.
    let before = chrono::Utc::now();
    s.acquire_leases(
        "d1",
        std::slice::from_ref(&want),
        "h#1",
        || (T0.into(), T1.into()),
        |_, _| Ok(()),
    )?
    .map_err(|d| StoreError::Pg(d.reason))?;
    let after = chrono::Utc::now();
    let l = s.lease("d1", "ud")?.ok_or(StoreError::Poisoned)?;
    let t = |x: &str| {
        chrono::DateTime::parse_from_rfc3339(x)
            .map(|t| t.with_timezone(&chrono::Utc))
            .map_err(|e| StoreError::Pg(e.to_string()))
    };
    let acquired = t(&l.acquired_at)?;
    let slack = chrono::Duration::seconds(5);
    assert!(
        acquired >= before - slack && acquired <= after + slack,
        "{l:?}"
    );
    assert_eq!(t(&l.expires_at)? - acquired, chrono::Duration::seconds(60));
    // Its live leases are judged by that clock too: the host's "2026-01-01 00:00:30" would
    // see the lease live, so would the database's now; a second unit is refused as full.
    let other = LeaseWant {
        unit: "ud-2",
        ..want.clone()
    };
    let refused = s.acquire_leases(
        "d2",
        &[other],
        "h#2",
        || (T0.into(), T1.into()),
        |_, v| {
            if v.live.is_empty() {
                Ok(())
            } else {
                Err("full".into())
            }
        },
    )?;
    assert!(refused.is_err());
    // Renewed and released at the database's time; the bake counts from there.
    assert_eq!(s.renew_leases("h#1", &["d1".into()], T0, T2)?, 1);
    let l = s.lease("d1", "ud")?.ok_or(StoreError::Poisoned)?;
    assert_eq!(
        t(&l.expires_at)? - t(&l.renewed_at)?,
        chrono::Duration::seconds(120)
    );
    assert!(t(&l.renewed_at)? >= acquired);
    let old = t(T0)?;
    assert_eq!(s.release_leases("d1", "h#1", old)?, 1);
    let l = s.lease("d1", "ud")?.ok_or(StoreError::Poisoned)?;
    let released = t(l.released_at.as_deref().unwrap_or(""))?;
    assert!(released >= acquired, "{l:?}");
    assert_eq!(t(&l.expires_at)? - released, chrono::Duration::seconds(30));
    Ok(())
}

/// An ingest decision (status `-`, as the host records failures), its decision JSON naming it.
fn ingested<'a>(
    id: &'a str,
    now: &'a str,
    key: &'a str,
    resource: &'a str,
    attempt: i64,
    outbox: &'a [NewOutbox<'a>],
) -> NewDecision<'a> {
    NewDecision {
        status: "-",
        decision_id: super::tests::did(id, "-"),
        normalizer_state: None,
        decision_json: id,
        ingest: Some(IngestRecord {
            key,
            counted: Some((resource, "create")),
            attempt,
        }),
        ..decision(id, now, "done", outbox)
    }
}

/// The decision path's look-ups and records inside batches, as the host makes them (on a
/// fleet: from the batch's cache, and written when the batch commits); each answer a line.
fn batch_script(s: &Store) -> Vec<String> {
    let mut out = Vec::new();
    let want = Prefetch {
        keys: vec!["k1".into(), "k2".into(), "k9".into()],
        events: vec![("e1".into(), "-".into()), ("e2".into(), "-".into())],
        attempts: vec![("vm1".into(), "create".into())],
    };
    let outbox = [NewOutbox {
        key: "storm:x",
        decision_id: super::tests::did("e5", "-"),
        body: "{}",
    }];
    let first = s.batch(|db| {
        let mut say = |what: &str, v: String| out.push(format!("{what}: {v}"));
        db.prefetch(&want)?;
        say("key k1", format!("{:?}", db.ingest_key("k1")?));
        say(
            "attempts",
            format!("{:?}", db.attempts("vm1", "create", T0)?),
        );
        say("seen e1", format!("{:?}", db.seen("e1", "-")?));
        let r = db.record(&ingested("e1", T0, "k1", "vm1", 1, &[]))?;
        say("record e1", format!("{r:?}"));
        say("key k1 after", format!("{:?}", db.ingest_key("k1")?));
        say("seen e1 after", format!("{:?}", db.seen("e1", "-")?));
        say(
            "attempts after",
            format!("{:?}", db.attempts("vm1", "create", T0)?),
        );
        // The same event under another key: not new, the key still remembered.
        let r = db.record(&ingested("e1", T0, "k2", "vm1", 5, &[]))?;
        say("record e1 again", format!("{r:?}"));
        say("key k2", format!("{:?}", db.ingest_key("k2")?));
        say(
            "attempts unchanged",
            format!("{:?}", db.attempts("vm1", "create", T0)?),
        );
        // Look-ups the prefetch did not name: read, then cached.
        say("key k3", format!("{:?}", db.ingest_key("k3")?));
        let r = db.record(&ingested("e3", T1, "k3", "vm1", 2, &[]))?;
        say("record e3", format!("{r:?}"));
        say("key k3 after", format!("{:?}", db.ingest_key("k3")?));
        say(
            "attempts at T1",
            format!("{:?}", db.attempts("vm1", "create", T1)?),
        );
        say(
            "attempts since T2",
            format!("{:?}", db.attempts("vm1", "create", T2)?),
        );
        say(
            "attempts vm2",
            format!("{:?}", db.attempts("vm2", "create", T0)?),
        );
        // Another statement after records: it sees them (a deferral, an outbox entry).
        db.defer("e3", T2, "{}")?;
        let r = db.record(&ingested("e5", T2, "k5", "vm2", 1, &outbox))?;
        say("record e5 with an escalation", format!("{r:?}"));
        say("due", format!("{:?}", db.take_due(T2)?));
        Ok(())
    });
    out.push(format!("first batch: {first:?}"));
    // Two failures of one resource written by one statement: the later count stays.
    let second = s.batch(|db| {
        db.prefetch(&Prefetch {
            keys: vec!["k6".into(), "k7".into()],
            events: vec![("e6".into(), "-".into()), ("e7".into(), "-".into())],
            attempts: vec![("vm1".into(), "create".into())],
        })?;
        db.record(&ingested("e6", T1, "k6", "vm1", 3, &[]))?;
        db.record(&ingested("e7", T2, "k7", "vm1", 4, &[]))
    });
    out.push(format!("second batch: {second:?}"));
    // A batch that fails writes nothing of what it recorded.
    let failed: Result<(), StoreError> = s.batch(|db| {
        db.record(&ingested("e4", T2, "k4", "vm1", 3, &[]))?;
        Err(StoreError::Poisoned)
    });
    out.push(format!("failed batch: {failed:?}"));
    let mut say = |what: &str, v: String| out.push(format!("{what}: {v}"));
    say("seen e4", format!("{:?}", s.seen("e4", "-")));
    say(
        "keys",
        format!(
            "{:?}",
            ["k1", "k2", "k3", "k4", "k5", "k6", "k7", "k9"].map(|k| s.with(|db| db.ingest_key(k)))
        ),
    );
    say(
        "attempts",
        format!("{:?}", s.with(|db| db.attempts("vm1", "create", T0))),
    );
    say("decisions", format!("{:?}", s.decisions_since(T0, 10)));
    say("outbox", format!("{:?}", s.outbox_depth()));
    out
}

#[test]
fn a_fleets_batch_reads_from_its_cache_and_writes_at_commit_what_sqlite_writes_at_once(
) -> Result<(), StoreError> {
    let (a, pg, fleet) = on_both_backends("batch", batch_script)?;
    assert!(a.contains(&"record e1 again: false".to_string()), "{a:#?}");
    assert!(a.contains(&"attempts at T1: 2".to_string()), "{a:#?}");
    assert!(a.contains(&"attempts: Ok(4)".to_string()), "{a:#?}");
    // The one statement wrote the decisions in the order they were recorded: another host
    // reads them in that order.
    let other = pg_store(&pg, "batch", "host-b")?;
    let seen: Vec<String> = other
        .with(|db| db.fleet_decisions(0, 10))?
        .into_iter()
        .filter_map(|(_, theirs)| theirs.map(|(_, d)| d))
        .collect();
    assert_eq!(seen, ["e1", "e3", "e5", "e6", "e7"]);
    // Its own are read as seq only.
    assert!(fleet
        .with(|db| db.fleet_decisions(0, 10))?
        .iter()
        .all(|(_, theirs)| theirs.is_none()));
    Ok(())
}

#[test]
fn a_fleets_batch_refuses_to_commit_an_event_another_writer_recorded_meanwhile(
) -> Result<(), StoreError> {
    let pg = server::PgServer::start();
    pg.create_db("race");
    let a = pg_store(&pg, "race", "host-a")?;
    let b = pg_store(&pg, "race", "host-b")?;
    let r = a.batch(|db| {
        assert!(db.record(&ingested("e1", T0, "k1", "vm1", 1, &[]))?);
        // A write outside the fleet's write lock (no batch): what only a broken writer does.
        b.with(|other| other.record(&ingested("e1", T0, "k2", "vm1", 1, &[])))?;
        Ok(())
    });
    assert!(
        matches!(&r, Err(StoreError::Pg(m)) if m.contains("outside the fleet's write lock")),
        "{r:?}"
    );
    // One decision for the event: the other writer's.
    assert_eq!(pg.count("race", "SELECT COUNT(*) FROM decisions"), 1);
    assert_eq!(a.with(|db| db.ingest_key("k1"))?, None);
    Ok(())
}
