//! The run loop's unit tests.

use super::*;

/// A Scheduled Events document with `events` (EventId, for VM `vm-1`) at `incarnation`.
fn se_doc(incarnation: i64, events: &[&str]) -> Inbox {
    se_doc_acked(incarnation, events).0
}

/// [`se_doc`], and where the run loop's answer to it arrives.
fn se_doc_acked(
    incarnation: i64,
    events: &[&str],
) -> (Inbox, oneshot::Receiver<Result<(), String>>) {
    let nb = (now() + chrono::Duration::minutes(15))
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    let evs: Vec<serde_json::Value> = events
        .iter()
        .map(|id| {
            serde_json::json!({
                "EventId": id, "EventStatus": "Scheduled", "EventType": "Reboot",
                "ResourceType": "VirtualMachine", "Resources": ["vm-1"], "NotBefore": nb,
                "Description": "", "EventSource": "Platform", "DurationInSeconds": -1,
            })
        })
        .collect();
    let doc = serde_json::json!({"DocumentIncarnation": incarnation, "Events": evs});
    let (ack, answer) = oneshot::channel();
    let inbox = Inbox::Poll(
        Payload {
            normalizer: sources::SE,
            bytes: doc.to_string().into_bytes(),
            observed_at: now(),
        },
        ack,
    );
    (inbox, answer)
}

#[test]
fn a_batch_is_answered_and_its_runbooks_released_only_once_it_is_on_the_disk(
) -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let host = drain_host(dir.path(), "note\n      log: {}")?;
    let (doc, mut answer) = se_doc_acked(1, &["E1"]);
    let committed = host.commit(vec![doc]);
    // Committed, not yet synced: the source has no answer, and the drain, pending in the
    // store, is no orphan for the scan to start a second time.
    assert!(matches!(
        answer.try_recv(),
        Err(oneshot::error::TryRecvError::Empty)
    ));
    assert_eq!(host.store.pending()?.len(), 1);
    assert!(host.orphans().is_empty());
    let delivered = host.deliver(committed);
    assert_eq!(answer.try_recv()?, Ok(()));
    assert_eq!(delivered.work.len(), 1, "the drain");
    assert!(host.orphans().is_empty(), "reserved until started");
    // Dropped on the way instead of started: the scan finds it.
    drop(delivered);
    assert_eq!(host.orphans().len(), 1);
    Ok(())
}

#[test]
fn a_batch_whose_log_cannot_be_synced_is_answered_as_failed(
) -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let host = drain_host(dir.path(), "note\n      log: {}")?;
    let (doc, mut answer) = se_doc_acked(1, &["E1"]);
    let committed = host.commit(vec![doc]);
    std::fs::rename(
        dir.path().join("state.db-wal"),
        dir.path().join("moved-away"),
    )?;
    let delivered = host.deliver(committed);
    assert!(
        delivered.work.is_empty(),
        "no runbook for a batch not on the disk"
    );
    let why = answer.try_recv()?.err().ok_or("answered as accepted")?;
    assert!(why.contains("could not be synced"), "{why}");
    // Nothing after it is accepted either.
    let (doc, mut answer) = se_doc_acked(2, &["E2"]);
    assert!(host.process(vec![doc]).is_empty());
    assert!(answer.try_recv()?.is_err());
    Ok(())
}

/// A host in `dir` on the standard policies whose `drain` runbook is the one step `step`
/// (`name\n      kind: {…}`).
fn drain_host(
    dir: &std::path::Path,
    step: &str,
) -> Result<std::sync::Arc<Host>, Box<dyn std::error::Error>> {
    let path = dir.join("keel.yaml");
    let policies = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/standard");
    std::fs::write(
        &path,
        format!(
            "policies: {}\nstate: state.db\nself: vm-1\nrunbooks:\n  drain:\n    - name: {step}\n",
            policies.display()
        ),
    )?;
    let cfg = crate::config::load(&path).map_err(|e| format!("{e:?}"))?;
    Ok(Host::new(cfg, Box::new(std::io::sink()))?)
}

#[test]
fn an_approval_survives_a_batch_rolled_back() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let host = drain_host(dir.path(), "approve\n      azure_ack: {}")?;
    let id = "azure.scheduled_events:e1/vm-1";
    assert_eq!(host.process(vec![se_doc(1, &["E1"])]).len(), 1, "a drain");
    // StartRequests is about to be sent: the approval is in the store.
    host.store.approval_before_send("E1", "d", &rfc(now()))?;
    // A batch marks the approval in the normalizer state, then rolls back (its state
    // restored to what it was before it).
    let before = host.nstate.lock().map_err(|_| "poisoned")?.clone();
    assert!(host.process(vec![se_doc(1, &["E1"])]).is_empty());
    host.roll_back(Some(before));
    // The platform drops the approved event from the next document: not a cancellation.
    host.process(vec![se_doc(2, &[])]);
    assert!(host.store.seen(id, "ended")?);
    assert!(!host.store.seen(id, "canceled")?);
    Ok(())
}

#[test]
fn short_hash_is_the_lowercase_hex_of_a_sha256_prefix() {
    // SHA-256("abc") = ba7816bf 8f01cfea 414140de 5dae2223 ...
    assert_eq!(short_hash("abc", 8), "ba7816bf8f01cfea");
    assert_eq!(short_hash("abc", 16), "ba7816bf8f01cfea414140de5dae2223");
    assert_eq!(short_hash("abc", 99).len(), 64);
}

#[test]
fn a_deferral_deferred_again_keeps_one_suffix() {
    let t1 = DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default();
    let t2 = DateTime::from_timestamp(1_700_000_600, 0).unwrap_or_default();
    let once = redecision_id("azure.scheduled_events:e/vm", t1);
    assert_eq!(
        once,
        "azure.scheduled_events:e/vm#deferred@2023-11-14T22:13:20.000Z"
    );
    let twice = redecision_id(&once, t2);
    assert_eq!(
        twice,
        "azure.scheduled_events:e/vm#deferred@2023-11-14T22:23:20.000Z"
    );
}

#[test]
fn every_log_line_gets_a_time_a_level_and_a_type() {
    use serde_json::json;
    let cases = [
        (json!({"listen": "127.0.0.1:9464"}), "info", "host"),
        (json!({"warning": "plugin cache"}), "warn", "host"),
        (json!({"error": "disk full"}), "error", "host"),
        (
            json!({"decision_id": "d", "step": "cordon", "outcome": "ok"}),
            "info",
            "step",
        ),
        (
            json!({"decision_id": "d", "step": "cordon", "outcome": "failed: exit 1"}),
            "warn",
            "step",
        ),
        (
            json!({"decision_id": "d", "step": "cordon", "outcome": "planned"}),
            "info",
            "step",
        ),
        (
            json!({"decision_id": "d", "step": "x", "outcome": "skipped: canceled"}),
            "info",
            "step",
        ),
        (
            json!({"decision_id": "d", "held": {"by": "budget"}}),
            "info",
            "decision",
        ),
        (
            json!({"decision_id": "d", "released": true}),
            "info",
            "decision",
        ),
        (
            json!({"decision_id": "d", "waiting": "no drain slot"}),
            "warn",
            "decision",
        ),
        (
            json!({"outbox": "error", "error": "503"}),
            "error",
            "escalation",
        ),
        (
            json!({"decision_id": "d", "outbox": "k", "log": {"kind": "storm"}}),
            "info",
            "escalation",
        ),
        (
            json!({"decision_id": "d", "log": "drain for vm-1"}),
            "info",
            "step",
        ),
        (
            json!({"source": "imds", "error": "timeout"}),
            "warn",
            "source",
        ),
        (
            json!({"source": "imds", "recovered": true}),
            "info",
            "source",
        ),
        (json!("bare"), "info", "host"),
    ];
    for (line, level, kind) in cases {
        let v = stamp(&line);
        assert_eq!(v["level"], level, "{line}");
        assert_eq!(v["type"], kind, "{line}");
        assert!(LOG_TYPES.contains(&v["type"].as_str().unwrap_or("")));
        let t = v["time"].as_str().unwrap_or("");
        assert!(chrono::DateTime::parse_from_rfc3339(t).is_ok(), "{v}");
    }
    // A line's own time, level and type are kept.
    let v = stamp(&json!({"time": "2026-01-01T00:00:00.000Z", "level": "debug", "type": "x"}));
    assert_eq!(
        (v["time"].as_str(), v["level"].as_str(), v["type"].as_str()),
        (Some("2026-01-01T00:00:00.000Z"), Some("debug"), Some("x"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_runbook_no_task_runs_is_found_and_one_that_runs_is_not(
) -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let host = drain_host(dir.path(), "note\n      log: {}")?;
    // A drain decided and committed, its runbook never started (as when a store error stopped
    // it, or a commit's answer was lost): pending in the store, running nowhere.
    let work = host.process(vec![se_doc(1, &["E1"])]);
    assert_eq!(work.len(), 1, "a drain");
    let orphans = host.orphans();
    assert_eq!(orphans.len(), 1);
    assert_eq!(orphans[0].0, work[0].0);
    // Started: no longer an orphan while it runs, and done once it ended.
    let mut set = tokio::task::JoinSet::new();
    spawn_runbook(
        &mut set,
        &host,
        orphans.into_iter().next().ok_or("no orphan")?,
    );
    assert!(
        host.orphans().is_empty(),
        "a running runbook is not started twice"
    );
    while set.join_next().await.is_some() {}
    assert!(host.running.lock().map_err(|_| "poisoned")?.is_empty());
    assert!(host.orphans().is_empty(), "done: not pending any more");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deciding_thread_runs_jobs_in_order_and_outlives_one_that_panics(
) -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let host = drain_host(dir.path(), "note\n      log: {}")?;
    let decider = Decider::start()?;
    // A batch that panics (a bug, a plugin host's) answers nothing: its caller logs it.
    let none = off_runtime(&decider, &host, |_| {
        std::panic::resume_unwind(Box::new("a bug in a batch"))
    })
    .await;
    assert!(none.is_empty());
    assert_eq!(
        panicked(&"a bug in a batch"),
        "it panicked: a bug in a batch"
    );
    assert_eq!(
        panicked(&String::from("formatted")),
        "it panicked: formatted"
    );
    // The next one runs, on the same named thread, inside the runtime (it may spawn on it),
    // and its work comes back.
    let work = off_runtime(&decider, &host, |h| {
        assert_eq!(std::thread::current().name(), Some("keel-decide"));
        assert!(tokio::runtime::Handle::try_current().is_ok());
        h.process(vec![se_doc(1, &["E1"])])
    })
    .await;
    assert_eq!(work.len(), 1, "a drain decided on the deciding thread");
    // Jobs run in the order they were sent.
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (a, b) = (order.clone(), order.clone());
    let first = off_runtime(&decider, &host, move |_| {
        std::thread::sleep(Duration::from_millis(20));
        a.lock().map(|mut v| v.push(1)).ok();
        Vec::new()
    });
    let second = off_runtime(&decider, &host, move |_| {
        b.lock().map(|mut v| v.push(2)).ok();
        Vec::new()
    });
    tokio::join!(first, second);
    assert_eq!(*order.lock().map_err(|_| "poisoned")?, vec![1, 2]);
    tokio::task::spawn_blocking(move || decider.stop()).await?;
    Ok(())
}

#[test]
fn the_deciding_thread_gathers_polled_payloads_first_and_no_more_than_the_batch_holds() {
    let (ptx, prx) = mpsc::channel::<Inbox>(8);
    let (itx, irx) = mpsc::channel::<Inbox>(8);
    let ingest = |i: u8| {
        let (reply, _) = oneshot::channel();
        let p = Payload {
            normalizer: sources::ingest::NORMALIZER,
            bytes: vec![i],
            observed_at: now(),
        };
        Inbox::Ingest(p, reply, None)
    };
    for i in 0..5 {
        assert!(itx.try_send(ingest(i)).is_ok());
    }
    for i in 0..3 {
        assert!(ptx.try_send(se_doc(i, &["e"])).is_ok());
    }
    let queues = Queues {
        polls: tokio::sync::Mutex::new(prx),
        ingest: tokio::sync::Mutex::new(irx),
    };
    let mut msgs = Vec::new();
    queues.gather(&mut msgs, 6);
    let kinds: Vec<&str> = msgs
        .iter()
        .map(|m| match m {
            Inbox::Poll(..) => "poll",
            Inbox::Ingest(p, ..) => ["i0", "i1", "i2", "i3", "i4"][usize::from(p.bytes[0])],
        })
        .collect();
    assert_eq!(kinds, ["poll", "poll", "poll", "i0", "i1", "i2"]);
    // The rest waits for the next batch, in order.
    let mut rest = Vec::new();
    queues.gather(&mut rest, 6);
    assert_eq!(rest.len(), 2);
    assert!(matches!(&rest[0], Inbox::Ingest(p, ..) if p.bytes == [3]));
}
