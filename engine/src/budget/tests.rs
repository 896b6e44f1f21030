//! The budget model: keys and units, admission and its reasons, deadlines, the reader.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use chrono::TimeZone;

use super::*;

fn t(s: i64) -> Timestamp {
    Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap() + chrono::Duration::seconds(s)
}

fn ud_budget(max: Amount, bake_s: i64) -> BudgetSpec {
    BudgetSpec {
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

fn vm(name: &str, set: Option<&str>, ud: Option<i64>) -> Event {
    let mut e: Event = serde_json::from_value(serde_json::json!({
        "id": format!("x:{name}"), "time": "2026-03-01T12:00:00Z", "source": "ingest",
        "kind": "maintenance", "resource": {"name": name},
        "maintenance": {"type": "reboot", "status": "scheduled"},
    }))
    .unwrap();
    e.resource.availability_set = set.map(str::to_string);
    e.resource.update_domain = ud;
    e
}

fn lease(unit: &str, holder: &str, until: i64, released: bool) -> Lease {
    Lease {
        unit: unit.into(),
        holder: holder.into(),
        expires_at: t(until),
        released,
    }
}

#[test]
fn keys_and_units_come_from_the_expressions_and_unknowns_share_a_group() {
    let b = ud_budget(Amount::Count(1), 0);
    assert_eq!(
        key_and_unit(&b, &vm("vm1", Some("web"), Some(3))),
        ("web".to_string(), "3".to_string())
    );
    // An unknown key is the shared group `?`; an unknown `per` is the resource itself.
    assert_eq!(
        key_and_unit(&b, &vm("vm1", None, None)),
        (UNKNOWN.to_string(), "vm1".to_string())
    );
    let mut per_vm = b.clone();
    per_vm.per = None;
    assert_eq!(
        key_and_unit(&per_vm, &vm("vm1", Some("web"), Some(3))).1,
        "vm1"
    );
}

#[test]
fn admission_reasons_name_the_holder_or_the_baking_unit_and_a_unit_shares_its_slot() {
    let b = ud_budget(Amount::Count(1), 300);
    let held = KeyView {
        live: vec![lease("1", "h1#00", 30, false)],
        members: Vec::new(),
    };
    assert_eq!(admit(&b, "web", "1", &held), Ok(()), "same unit");
    assert_eq!(
        admit(&b, "web", "2", &held).unwrap_err(),
        "budget ud/web full, 1/1 in flight, holder h1#00 until 2026-03-01T12:00:30.000Z"
    );
    let baking = KeyView {
        live: vec![lease("1", "h1#00", 700, true)],
        members: Vec::new(),
    };
    assert_eq!(
        admit(&b, "web", "2", &baking).unwrap_err(),
        "budget ud/web full, 1/1 in flight, baking unit 1 until 2026-03-01T12:11:40.000Z"
    );
    assert_eq!(admit(&b, "web", "2", &KeyView::default()), Ok(()));
    // Untrusted text is escaped.
    let why = admit(&b, "w\u{1b}[31m", "2", &held).unwrap_err();
    assert!(!why.contains('\u{1b}'), "{why}");
}

#[test]
fn percentages_of_the_group_and_min_healthy() {
    let mut b = ud_budget(Amount::Percent(50.0), 0);
    b.group_size = Some(4);
    let two = KeyView {
        live: vec![lease("a", "h", 9, false), lease("b", "h", 9, false)],
        members: Vec::new(),
    };
    let why = admit(&b, "web", "c", &two).unwrap_err();
    assert!(why.contains("2/2 in flight"), "{why}");
    let mut b = ud_budget(Amount::Count(5), 0);
    b.min_healthy = Some(Amount::Count(1));
    let m = |n: &str, healthy| Member {
        member: n.into(),
        healthy,
    };
    let view = KeyView {
        live: vec![lease("vm1", "h", 9, false)],
        members: vec![m("vm1", true), m("vm2", true), m("vm3", false)],
    };
    assert_eq!(
        admit(&b, "web", "vm2", &view).unwrap_err(),
        "budget ud/web: taking a slot would leave 0 of 3 healthy, fewer than min_healthy 1 \
         (1 in flight, 1 unhealthy)"
    );
    assert_eq!(Amount::Percent(10.0).of(5), 1, "at least one");
    assert_eq!(Amount::Percent(25.0).of(10), 2, "rounded down");
    assert_eq!(Amount::Percent(25.0).to_string(), "25%");
}

fn decision(id: &str, action: &str) -> Decision {
    serde_json::from_value(serde_json::json!({"event_id": id, "action": action})).unwrap()
}

#[test]
fn deadlines_are_the_drain_s_and_else_not_before_when_ahead() {
    let mut e = vm("vm1", Some("web"), Some(0));
    e.maintenance.as_mut().unwrap().not_before = Some(t(900));
    let mut d = decision(&e.id, "drain");
    d.params.insert("deadline_s".into(), serde_json::json!(600));
    assert_eq!(runbook_deadline(&e, &d, t(0)), Some(t(600)));
    assert_eq!(runbook_deadline(&e, &d, t(400)), Some(t(900)));
    assert_eq!(hold_deadline(&e, &d, t(400)), Some(t(900)));
    // Past NotBefore: only deadline_s.
    assert_eq!(runbook_deadline(&e, &d, t(1000)), Some(t(1600)));
    let ack = decision(&e.id, "acknowledge");
    assert_eq!(runbook_deadline(&e, &ack, t(0)), None);
    assert_eq!(hold_deadline(&e, &ack, t(0)), Some(t(900)));
    assert_eq!(hold_deadline(&e, &ack, t(900)), None);
}

fn read(text: &str) -> (Vec<BudgetSpec>, Vec<String>) {
    let doc = crate::yaml::load(Path::new("keel.yaml"), text.as_bytes()).unwrap();
    let (b, d) = read_budgets(&doc, "/budgets");
    let shown = d
        .iter()
        .map(|d| format!("{}:{}: {}", d.line(), d.column(), d.message()))
        .collect();
    (b, shown)
}

#[test]
fn the_reader_takes_every_key_with_defaults() {
    let (b, d) = read(
        "budgets:\n  - name: ud\n    key: event.resource.availability_set\n    per: string(event.resource.update_domain)\n    actions: [drain, acknowledge]\n    max_in_flight: \"20%\"\n    group_size: 10\n    min_healthy: 0\n    bake: 5m\n    lease_ttl: 30\n  - { name: one, key: event.resource.zone, max_in_flight: 1 }\n",
    );
    assert!(d.is_empty(), "{d:?}");
    assert_eq!(b.len(), 2);
    assert_eq!(b[0].actions, vec![Action::Drain, Action::Acknowledge]);
    assert_eq!(b[0].max_in_flight, Amount::Percent(20.0));
    assert_eq!(
        (b[0].group_size, b[0].min_healthy),
        (Some(10), Some(Amount::Count(0)))
    );
    assert_eq!((b[0].bake_s, b[0].lease_ttl_s), (300, 30));
    assert_eq!(b[1].actions, vec![Action::Drain]);
    assert!(b[1].per.is_none());
    assert_eq!((b[1].bake_s, b[1].lease_ttl_s), (0, 60));
    assert!(read("other: 1\n").0.is_empty(), "absent: none");
}

#[test]
fn the_reader_names_every_problem_at_its_position() {
    let (b, d) = read(
        "budgets:\n  - name: ud\n    key: event.resource.zonee\n    max_in_flight: 0\n    bake: soon\n    actoins: [drain]\n  - { name: ud, key: event.resource.zone, max_in_flight: 1, actions: [escalate] }\n  - { key: event.resource.zone }\n",
    );
    assert!(b.is_empty());
    let all = d.join("\n");
    for want in [
        "3:10: unknown field",
        "4:20: expected a whole number from 1 to 1000000",
        "5:11: expected a duration",
        "6:5: unknown key `actoins` (did you mean `actions`?)",
        "7:13: budget `ud` is declared twice",
        "7:71: expected one of: drain, retry",
        "8:5: expected a name",
    ] {
        assert!(all.contains(want), "{want} in:\n{all}");
    }
    let (_, d) = read("budgets: {}\n");
    assert_eq!(d, vec!["1:10: expected a list of budgets".to_string()]);
}
