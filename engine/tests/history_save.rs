//! Saving a History and restoring it (`History::to_json`, `History::from_json`): an agent that
//! restarts mid-incident decides exactly as one that never stopped.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use chrono::Duration;
use keel_engine::{Ctx, Decision, Engine, Event, History, HistoryLoadError, Timestamp};

fn t0() -> Timestamp {
    "2021-10-13T14:00:00Z".parse().unwrap()
}

/// A failed operation of `vm` (Windows VMs fail on the VM agent, Linux ones time out).
fn failure(vm: usize, region: &str, attempt: u32, at: Timestamp) -> Event {
    let (os, code, category) = if vm.is_multiple_of(3) {
        ("linux", "OSProvisioningTimedOut", "provisioning_timeout")
    } else {
        ("windows", "ArtifactVersionNotFound", "vm_agent")
    };
    Event::from_json_str(&format!(
        r#"{{"id":"azure.arm:vm-{vm}-{a}-{ts}","time":"{time}","source":"azure.arm","kind":"operation_failure",
        "resource":{{"id":"/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm-{vm}","name":"vm-{vm}","os":"{os}","region":"{region}"}},
        "failure":{{"operation":"create","code":"{code}","category":"{category}","attempt":{attempt}}}}}"#,
        a = attempt,
        ts = at.timestamp(),
        time = at.to_rfc3339()
    ))
    .unwrap()
}

fn standard() -> Engine {
    Engine::from_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/standard")).unwrap()
}

/// Records, decides and records the decision, as a host would.
fn step(engine: &Engine, h: &mut History, ev: &Event) -> Decision {
    h.record(ev);
    let d = engine.decide(ev, &Ctx::new(ev.time).with_history(h));
    h.record_decision(ev, &d);
    d
}

/// An incident: twelve VMs in two regions failing again and again for an hour.
fn incident() -> Vec<Event> {
    let mut out = Vec::new();
    for i in 0..72 {
        let vm: usize = (i * 7) % 12;
        let region = if vm.is_multiple_of(2) {
            "eastus2"
        } else {
            "westeurope"
        };
        out.push(failure(
            vm,
            region,
            1 + (i as u32 / 12) % 3,
            t0() + Duration::seconds(50 * i as i64),
        ));
    }
    out
}

#[test]
fn a_restart_at_any_point_decides_as_if_there_was_none() {
    let engine = standard();
    let events = incident();
    let mut h = History::new();
    let straight: Vec<Decision> = events.iter().map(|ev| step(&engine, &mut h, ev)).collect();
    // The incident exercises what the history carries: retries counted per resource,
    // escalations (and their repeats), guards holding.
    let actions: std::collections::BTreeSet<String> =
        straight.iter().map(|d| d.action.to_string()).collect();
    assert!(actions.len() >= 2, "{actions:?}");
    assert!(
        straight
            .iter()
            .any(|d| d.escalations.iter().any(|e| e.repeat)),
        "no repeat"
    );
    for cut in [1, 10, 25, 40, 71] {
        let mut h = History::new();
        let mut got: Vec<Decision> = Vec::new();
        for (i, ev) in events.iter().enumerate() {
            if i == cut {
                let saved = h.to_json();
                h = History::from_json(&saved).unwrap();
                assert_eq!(h.to_json(), saved, "a restored history saves the same");
            }
            got.push(step(&engine, &mut h, ev));
        }
        for (i, (a, b)) in straight.iter().zip(&got).enumerate() {
            assert_eq!(
                serde_json::to_value(a).unwrap(),
                serde_json::to_value(b).unwrap(),
                "event {i}, restarted before event {cut}"
            );
        }
    }
}

#[test]
fn bounds_and_plugin_quarantines_are_restored() {
    let mut h = History::with_limits(5, 3600);
    for i in 0..3 {
        h.record(&failure(1, "eastus2", 1, t0() + Duration::seconds(i)));
    }
    let mut v: serde_json::Value = serde_json::from_str(&h.to_json()).unwrap();
    assert_eq!(v["format"], "keel.history/1");
    assert_eq!(v["max_events"], 5);
    assert_eq!(v["retention_s"], 3600);
    // A file edited to hold more than its bound is trimmed to it, keeping the newest.
    let one = v["events"][0].clone();
    let mut many = Vec::new();
    for i in 0..20 {
        let mut e = one.clone();
        e["time"] = serde_json::json!((t0() + Duration::seconds(100 + i)).to_rfc3339());
        many.push(e);
    }
    v["events"] = serde_json::Value::Array(many);
    v["plugin_faults"] =
        serde_json::json!({"team.plugin": {"consecutive": 3, "quarantined": true}});
    let r = History::from_json(&v.to_string()).unwrap();
    assert_eq!(r.len(), 5);
    assert_eq!(r.quarantined(), vec!["team.plugin".to_string()]);
    assert_eq!(r.plugin_faults("team.plugin"), 3);
    // An event older than the retention is forgotten at the next record, on the caller's
    // clock, not at load: the newest entry may be an event dated ahead of the clock, and
    // the retention before it would forget the whole incident before it.
    let mut v: serde_json::Value = serde_json::from_str(&h.to_json()).unwrap();
    v["events"][0]["time"] = serde_json::json!((t0() - Duration::hours(2)).to_rfc3339());
    let mut r = History::from_json(&v.to_string()).unwrap();
    assert_eq!(r.len(), 3);
    let at = t0() + Duration::seconds(3);
    r.record_at(&failure(1, "eastus2", 1, at), at);
    assert_eq!(r.len(), 3, "the old one forgotten, the new one remembered");
    let mut v: serde_json::Value = serde_json::from_str(&h.to_json()).unwrap();
    v["events"][2]["time"] = serde_json::json!((t0() + Duration::days(3)).to_rfc3339());
    assert_eq!(
        History::from_json(&v.to_string()).unwrap().len(),
        3,
        "an event dated three days ahead makes nothing before it look old"
    );
}

#[test]
fn what_is_not_a_saved_history_is_refused_with_its_position() {
    match History::from_json(
        "{\"format\": \"keel.history/2\", \"max_events\": 1, \"retention_s\": 1, \"events\": []}",
    ) {
        Err(HistoryLoadError::Format { found }) => assert_eq!(found, "keel.history/2"),
        other => panic!("{other:?}"),
    }
    let e =
        History::from_json("{\n  \"format\": \"keel.history/1\",\n  \"bogus\": 1\n}").unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("bogus") && msg.contains("line 3"), "{msg}");
    assert!(History::from_json("").is_err());
    assert!(History::from_json("[]").is_err());
    // A field a later version does not have any more is skipped, not an error.
    let h = History::new();
    let mut v: serde_json::Value = serde_json::from_str(&h.to_json()).unwrap();
    v["events"] = serde_json::json!([{"time": "2021-10-13T14:00:00Z", "values": {"no.such.field": "x", "failure.category": "vm_agent"}}]);
    let r = History::from_json(&v.to_string()).unwrap();
    assert_eq!(r.len(), 1);
    let saved: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
    assert_eq!(
        saved["events"][0]["values"],
        serde_json::json!({"failure.category": "vm_agent"})
    );
}

#[test]
fn each_decision_of_a_resource_keeps_its_own_action() {
    let engine = standard();
    let mut h = History::new();
    // The same VM: a transient failure retried, then one that is not retried.
    let a = failure(1, "eastus2", 1, t0());
    let mut b = failure(1, "eastus2", 2, t0() + Duration::seconds(30));
    b.failure.as_mut().unwrap().code = "QuotaExceeded".into();
    let da = step(&engine, &mut h, &a);
    let db = step(&engine, &mut h, &b);
    assert_ne!(da.action, db.action, "{:?} {:?}", da.action, db.action);
    let saved: serde_json::Value = serde_json::from_str(&h.to_json()).unwrap();
    let actions: Vec<&str> = saved["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, vec![da.action.as_str(), db.action.as_str()]);
    let restored = History::from_json(&h.to_json()).unwrap();
    assert_eq!(restored.to_json(), h.to_json());
}
