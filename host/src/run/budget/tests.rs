//! Budgets on a virtual clock: admission, leases (expiry, renewal, bake, takeover), and the
//! property that no arrival order or runbook duration makes the in-flight units exceed the
//! budget or lets a drain silently miss its deadline.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::needless_range_loop)]

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use keel_engine::{Action, Event, KeyExpr};
use proptest::prelude::*;

use super::*;
use crate::config::Budget;
use crate::run::store::{LeaseWant, Store};
use keel_engine::budget::Amount;

fn t(s: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap() + Duration::seconds(s)
}

fn r(s: i64) -> String {
    crate::run::rfc(t(s))
}

fn ud_budget(max: Amount, bake_s: i64) -> Budget {
    Budget {
        name: "ud".into(),
        key: Arc::new(KeyExpr::compile("event.resource.availability_set").unwrap()),
        per: Some(Arc::new(
            KeyExpr::compile("string(event.resource.update_domain)").unwrap(),
        )),
        actions: vec![Action::Drain],
        max_in_flight: max,
        group_size: None,
        min_healthy: None,
        bake_s,
        lease_ttl_s: 30,
    }
}

fn vm(name: &str, set: Option<&str>, ud: Option<u32>) -> Event {
    let mut e: Event = serde_json::from_value(serde_json::json!({
        "id": format!("x:{name}"), "time": "2026-03-01T12:00:00Z", "source": "ingest",
        "kind": "maintenance", "resource": {"name": name},
        "maintenance": {"type": "preempt", "status": "scheduled"},
    }))
    .unwrap();
    e.resource.availability_set = set.map(str::to_string);
    e.resource.update_domain = ud.map(i64::from);
    e
}

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("state.db")).unwrap();
    (dir, s)
}

/// Tries to take `b`'s slot for `decision` (event `ev`) at `now` as `holder`.
fn take(
    s: &Store,
    b: &Budget,
    decision: &str,
    ev: &Event,
    holder: &str,
    now: i64,
) -> Result<(), String> {
    let (key, unit) = key_and_unit(b, ev);
    let want = LeaseWant {
        budget: &b.name,
        key: &key,
        unit: &unit,
        bake_s: b.bake_s,
        max_in_flight: 1,
    };
    s.acquire_leases(
        decision,
        &[want],
        holder,
        || (r(now), r(now + b.lease_ttl_s)),
        |w, v| admit(b, w.key, w.unit, v),
    )
    .unwrap()
    .map_err(|d| d.reason)
}

#[test]
fn a_full_budget_holds_with_the_holder_and_expiry_and_the_same_unit_shares_its_slot() {
    let (_d, s) = store();
    let b = ud_budget(Amount::Count(1), 0);
    let (a, a2, c) = (
        vm("vm-a", Some("web"), Some(1)),
        vm("vm-a2", Some("web"), Some(1)),
        vm("vm-c", Some("web"), Some(2)),
    );
    take(&s, &b, "d-a", &a, "h1#00", 0).unwrap();
    // Another VM of update domain 1 shares its slot; update domain 2 waits.
    take(&s, &b, "d-a2", &a2, "h1#00", 1).unwrap();
    let why = take(&s, &b, "d-c", &c, "h1#00", 2).unwrap_err();
    assert!(
        why.starts_with(
            "budget ud/web full, 1/1 in flight, holder h1#00 until 2026-03-01T12:00:30"
        ),
        "{why}"
    );
    // Another availability set has its own slots.
    take(&s, &b, "d-x", &vm("vm-x", Some("db"), Some(2)), "h1#00", 2).unwrap();
    // Asking again for a slot it holds renews it, whatever the budget says.
    take(&s, &b, "d-a", &a, "h1#00", 3).unwrap();
    assert_eq!(s.lease("d-a", "ud").unwrap().unwrap().expires_at, r(33));
    assert_eq!(s.lease("d-a", "ud").unwrap().unwrap().acquired_at, r(0));
}

#[test]
fn a_lease_not_renewed_frees_its_slot_at_its_ttl_and_only_its_holder_releases_it() {
    let (_d, s) = store();
    let b = ud_budget(Amount::Count(1), 0);
    let (a, c) = (
        vm("vm-a", Some("web"), Some(1)),
        vm("vm-c", Some("web"), Some(2)),
    );
    take(&s, &b, "d-a", &a, "dead#01", 0).unwrap();
    // Another holder cannot release it.
    assert_eq!(s.release_leases("d-a", "other#02", t(5)).unwrap(), 0);
    assert!(take(&s, &b, "d-c", &c, "other#02", 29).is_err());
    // At the TTL (30 s, never renewed) the slot is free.
    take(&s, &b, "d-c", &c, "other#02", 30).unwrap();
    // Renewal keeps a live holder's slot past its first TTL.
    let (_d2, s2) = store();
    take(&s2, &b, "d-a", &a, "live#03", 0).unwrap();
    assert_eq!(
        s2.renew_leases("live#03", &["d-a".into()], &r(20), &r(50))
            .unwrap(),
        1
    );
    assert_eq!(
        s2.renew_leases("other#02", &["d-a".into()], &r(20), &r(90))
            .unwrap(),
        0,
        "only the holder renews"
    );
    assert!(take(&s2, &b, "d-c", &c, "other#02", 40).is_err());
    take(&s2, &b, "d-c", &c, "other#02", 50).unwrap();
}

#[test]
fn a_released_slot_bakes_before_the_next_unit_and_a_takeover_keeps_the_decision_s_slot() {
    let (_d, s) = store();
    let b = ud_budget(Amount::Count(1), 600);
    let (a, c) = (
        vm("vm-a", Some("web"), Some(1)),
        vm("vm-c", Some("web"), Some(2)),
    );
    take(&s, &b, "d-a", &a, "h#01", 0).unwrap();
    assert_eq!(s.release_leases("d-a", "h#01", t(100)).unwrap(), 1);
    assert_eq!(s.release_leases("d-a", "h#01", t(101)).unwrap(), 0, "once");
    let why = take(&s, &b, "d-c", &c, "h#01", 200).unwrap_err();
    assert!(
        why.contains("baking unit 1 until 2026-03-01T12:11:40"),
        "{why}"
    );
    take(&s, &b, "d-c", &c, "h#01", 700).unwrap();
    // A decision whose holder died before its first step is taken over by the next holder
    // (same slot, not a second one).
    let (_d2, s2) = store();
    take(&s2, &b, "d-a", &a, "dead#01", 0).unwrap();
    take(&s2, &b, "d-a", &a, "new#02", 5).unwrap();
    let l = s2.lease("d-a", "ud").unwrap().unwrap();
    assert_eq!(
        (l.holder.as_str(), l.acquired_at.as_str()),
        ("new#02", r(0).as_str())
    );
    assert_eq!(s2.leases(&r(5)).unwrap().len(), 1);
}

#[test]
fn percentages_of_the_group_and_min_healthy() {
    let (_d, s) = store();
    let mut b = ud_budget(Amount::Percent(50.0), 0);
    b.per = None;
    b.group_size = Some(4);
    let ev = |n: &str| vm(n, Some("web"), Some(0));
    take(&s, &b, "d1", &ev("vm1"), "h", 0).unwrap();
    take(&s, &b, "d2", &ev("vm2"), "h", 0).unwrap();
    let why = take(&s, &b, "d3", &ev("vm3"), "h", 0).unwrap_err();
    assert!(why.contains("2/2 in flight"), "{why}");
    // min_healthy over the observed group: 3 members, one unhealthy.
    let (_d2, s2) = store();
    let mut b = ud_budget(Amount::Count(5), 0);
    b.per = None;
    b.min_healthy = Some(Amount::Count(1));
    s2.batch(|db| {
        db.note_member("ud", "web", "vm1", Some(true), &r(0))?;
        db.note_member("ud", "web", "vm2", Some(true), &r(0))?;
        db.note_member("ud", "web", "vm3", Some(false), &r(0))?;
        Ok(())
    })
    .unwrap();
    take(&s2, &b, "d1", &ev("vm1"), "h", 0).unwrap();
    let why = take(&s2, &b, "d2", &ev("vm2"), "h", 0).unwrap_err();
    assert!(
        why.contains("would leave 0 of 3 healthy, fewer than min_healthy 1"),
        "{why}"
    );
    assert_eq!(Amount::Percent(10.0).of(5), 1, "at least one");
    assert_eq!(Amount::Percent(25.0).of(10), 2, "rounded down");
}

/// One drain of the simulation.
#[derive(Debug, Clone)]
struct Drain {
    arrive: i64,
    ud: u32,
    run_s: i64,
}

fn drains() -> impl Strategy<Value = Vec<Drain>> {
    proptest::collection::vec(
        (0i64..60, 0u32..5, 1i64..90).prop_map(|(arrive, ud, run_s)| Drain { arrive, ud, run_s }),
        50,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// 50 preemptions across 5 update domains of one availability set, arriving in any
    /// order, each drain taking any time, with 3 holders sharing the database: at every
    /// second, at most one update domain is in flight (or baking), and every drain either
    /// started before its deadline (arrival + 300 s) or escalated at it, never neither.
    #[test]
    fn in_flight_never_exceeds_the_budget_and_no_drain_misses_its_deadline_silently(
        ds in drains(), bake in 0i64..20,
    ) {
        let (_d, s) = store();
        let b = ud_budget(Amount::Count(1), bake);
        let deadline = 300;
        let evs: Vec<Event> = ds.iter().enumerate()
            .map(|(i, d)| vm(&format!("vm{i}"), Some("web"), Some(d.ud)))
            .collect();
        let holder = |i: usize| format!("h{}#00", i % 3);
        let mut started: Vec<Option<i64>> = vec![None; ds.len()];
        let mut escalated: Vec<Option<i64>> = vec![None; ds.len()];
        let mut done: BTreeSet<usize> = BTreeSet::new();
        for now in 0..=(60 + deadline + 100) {
            // Runbooks that end now give their slots back.
            for (i, d) in ds.iter().enumerate() {
                if started[i].is_some_and(|st| st + d.run_s == now) && done.insert(i) {
                    s.release_leases(&format!("d{i}"), &holder(i), t(now)).unwrap();
                }
            }
            // Those running renew (every 10 s, a third of the TTL).
            if now % 10 == 0 {
                for i in 0..ds.len() {
                    if started[i].is_some() && !done.contains(&i) {
                        s.renew_leases(&holder(i), &[format!("d{i}")], &r(now), &r(now + 30)).unwrap();
                    }
                }
            }
            // The waiting, oldest first: past the deadline escalate, else try for a slot.
            let mut waiting: Vec<usize> = (0..ds.len())
                .filter(|&i| ds[i].arrive <= now && started[i].is_none() && escalated[i].is_none())
                .collect();
            waiting.sort_by_key(|&i| (ds[i].arrive, i));
            for i in waiting {
                if now >= ds[i].arrive + deadline {
                    escalated[i] = Some(now);
                } else if take(&s, &b, &format!("d{i}"), &evs[i], &holder(i), now).is_ok() {
                    started[i] = Some(now);
                }
            }
            // The invariant, from the store's own leases.
            let units: BTreeSet<String> = s.leases(&r(now)).unwrap().into_iter().map(|l| l.unit).collect();
            prop_assert!(units.len() <= 1, "at {now}: {units:?} in flight");
        }
        for i in 0..ds.len() {
            match (started[i], escalated[i]) {
                (Some(st), None) => prop_assert!(st < ds[i].arrive + deadline),
                (None, Some(at)) => prop_assert_eq!(at, ds[i].arrive + deadline),
                other => prop_assert!(false, "drain {i}: {other:?}"),
            }
        }
    }
}

/// `keel test` gates a sequence with the same admission as the host: the reasons a test
/// reports are the ones the host's leases give at the same instants (a lease TTL equal to
/// the runbook's duration makes the host's "until" the runbook's end, as on the test clock).
#[test]
fn keel_test_reports_the_reasons_the_host_gives() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.yaml"),
        "policies:\n  - { name: d, on: [maintenance], when: 'true', action: drain }\n",
    )
    .unwrap();
    let ev = |name: &str, ud: u32, at: &str| {
        format!(
            "{{ at: {at}, runbook: 90s, event: {{ id: \"x:{name}\", time: \"2026-03-01T12:00:00Z\", resource: {{ name: {name}, availability_set: web, update_domain: {ud} }}, maintenance: {{ type: preempt, status: scheduled }} }}, expect: {{ action: drain }} }}"
        )
    };
    let file = format!(
        "budgets:\n  - {{ name: ud, key: event.resource.availability_set, per: string(event.resource.update_domain), max_in_flight: 1, bake: 10m }}\ncases:\n  - name: c\n    start: 2026-03-01T12:00:00Z\n    steps:\n      - {}\n      - {}\n      - {}\n",
        ev("vm-a", 1, "0s"),
        ev("vm-c", 2, "30s"),
        ev("vm-d", 3, "120s"),
    );
    std::fs::write(dir.path().join("p.test.yaml"), file).unwrap();
    let report =
        keel_engine::testing::run(dir.path(), &keel_engine::testing::TestOptions::default())
            .unwrap();
    let tested: Vec<String> = report
        .steps()
        .flat_map(|s| s.held.iter().map(|h| h.reason.clone()))
        .collect();

    let (_d, s) = store();
    let mut b = ud_budget(Amount::Count(1), 600);
    b.lease_ttl_s = 90;
    let (a, c, d) = (
        vm("vm-a", Some("web"), Some(1)),
        vm("vm-c", Some("web"), Some(2)),
        vm("vm-d", Some("web"), Some(3)),
    );
    take(&s, &b, "d-a", &a, "x:vm-a", 0).unwrap();
    let at_30 = take(&s, &b, "d-c", &c, "x:vm-a", 30).unwrap_err();
    assert_eq!(s.release_leases("d-a", "x:vm-a", t(90)).unwrap(), 1);
    let at_120 = take(&s, &b, "d-d", &d, "x:vm-a", 120).unwrap_err();
    assert_eq!(
        tested,
        vec![format!("held: {at_30}"), format!("held: {at_120}")]
    );
    assert!(at_120.contains("baking unit 1"), "{at_120}");
}
