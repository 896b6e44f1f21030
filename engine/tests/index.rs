//! The policy index changes no decision: random policy sets (conjunctions of indexable atoms
//! on fields and tags, `has()` guards, disjunctions on one key, and tests the index cannot
//! use, some erroring, some interpreted) decided on random events with and without the index
//! agree on everything but the policies the index proves false: those are absent from fast
//! mode's `not_evaluated` and traced `skipped_by_index` instead of `false` in full mode.
//! The indexed engine also decides a candidate by its residual (the `when` without the atoms
//! the index proved true) where the event has a value under every key those atoms test: a
//! residual used without that check fails these tests.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cell::Cell;
use std::collections::BTreeSet;

use keel_engine::{Ctx, Decision, Engine, Event, Mode, Outcome, Timestamp};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Map, Value};

fn pick(items: &'static [&'static str]) -> BoxedStrategy<&'static str> {
    proptest::sample::select(items).boxed()
}

/// A string field, and values for it (the events draw from the same pools).
const FIELDS: &[(&str, &[&str])] = &[
    ("event.maintenance.type", &["reboot", "freeze", "redeploy"]),
    ("event.maintenance.status", &["scheduled", "started"]),
    (
        "event.failure.code",
        &["ArtifactVersionNotFound", "AllocationFailed", ""],
    ),
    ("event.failure.category", &["vm_agent", "allocation"]),
    ("event.health.state", &["degraded", "unavailable"]),
    ("event.health.reason_type", &["planned", "unplanned"]),
    ("event.resource.os", &["windows", "linux", ""]),
    (
        "event.resource.region",
        &["eastus2", "westeurope", "uksouth"],
    ),
    ("event.resource.name", &["web-1", "db-2"]),
    ("event.source", &["ingest", "azure.arm"]),
    (
        "event.kind",
        &["maintenance", "health", "operation_failure"],
    ),
    ("event.resource.tags.env", &["prod", "dev", ""]),
    ("event.resource.tags.team", &["payments", "search"]),
];

fn quoted(v: &str) -> String {
    format!("\"{v}\"")
}

/// A conjunct: an atom the index can use, or a test it cannot.
fn conjunct() -> BoxedStrategy<String> {
    let field = proptest::sample::select(FIELDS);
    let values = |(f, vs): (&'static str, &'static [&'static str])| {
        proptest::sample::subsequence(vs, 0..=vs.len()).prop_map(move |s| (f, s))
    };
    prop_oneof![
        // f == "v" (either side)
        (
            field.clone(),
            any::<proptest::sample::Index>(),
            any::<bool>()
        )
            .prop_map(|((f, vs), i, flip)| {
                let v = quoted(vs[i.index(vs.len())]);
                if flip {
                    format!("{v} == {f}")
                } else {
                    format!("{f} == {v}")
                }
            }),
        // f in [...] (possibly empty)
        field.clone().prop_flat_map(values).prop_map(|(f, s)| {
            let l: Vec<String> = s.iter().map(|v| quoted(v)).collect();
            format!("{f} in [{}]", l.join(", "))
        }),
        // f == "a" || f == "b"
        field.clone().prop_flat_map(values).prop_map(|(f, s)| {
            if s.is_empty() {
                "true".to_string()
            } else {
                let parts: Vec<String> =
                    s.iter().map(|v| format!("{f} == {}", quoted(v))).collect();
                format!("({})", parts.join(" || "))
            }
        }),
        // has(f), "k" in tags
        field.clone().prop_map(|(f, _)| format!("has({f})")),
        pick(&["env", "team", "owner"]).prop_map(|k| format!("\"{k}\" in event.resource.tags")),
        // Not atoms: negations, other keys in a disjunction, ints, methods, errors.
        field
            .clone()
            .prop_map(|(f, vs)| format!("{f} != {}", quoted(vs[0]))),
        field
            .clone()
            .prop_map(|(f, vs)| format!("!({f} == {})", quoted(vs[0]))),
        (field.clone(), field.clone()).prop_map(|((f, vs), (g, ws))| format!(
            "({f} == {} || {g} == {})",
            quoted(vs[0]),
            quoted(ws[0])
        )),
        (0i64..4).prop_map(|n| format!("event.failure.attempt < {n}")),
        Just("event.resource.name.startsWith(\"web\")".to_string()),
        Just("event.resource.name.matches(\"^w\")".to_string()),
        Just("event.failure.attempt / 0 == 1".to_string()),
        Just(
            "(!has(event.maintenance.duration_s) || event.maintenance.duration_s > 10)".to_string()
        ),
    ]
    .boxed()
}

/// A `when`: one to five conjuncts, sometimes nested in parentheses.
fn when() -> BoxedStrategy<String> {
    (proptest::collection::vec(conjunct(), 1..=5), any::<bool>())
        .prop_map(|(cs, nest)| {
            if nest && cs.len() > 2 {
                format!("{} && ({})", cs[0], cs[1..].join(" && "))
            } else {
                cs.join(" && ")
            }
        })
        .boxed()
}

const KINDS: &[&str] = &["maintenance", "health", "operation_failure"];

fn policy_set() -> BoxedStrategy<String> {
    let policy = (
        when(),
        proptest::sample::subsequence(KINDS, 1..=3),
        pick(&["drain", "escalate", "retry", "acknowledge", "none", "defer"]),
        0i64..4,
    );
    proptest::collection::vec(policy, 1..24)
        .prop_map(|ps| {
            let mut y = String::from("policies:\n");
            for (i, (when, on, action, priority)) in ps.into_iter().enumerate() {
                let params = match action {
                    "defer" => "\n    params: { delay: 15m }",
                    "retry" => "\n    params: { max_attempts: 2 }",
                    _ => "",
                };
                y.push_str(&format!(
                    "  - name: p{i:02}\n    on: [{}]\n    when: '{}'\n    action: {action}\n    priority: {priority}{params}\n",
                    on.join(", "),
                    when.replace('\'', "''")
                ));
            }
            y
        })
        .boxed()
}

fn opt_str(vs: &'static [&'static str]) -> BoxedStrategy<Option<&'static str>> {
    proptest::option::weighted(0.75, proptest::sample::select(vs)).boxed()
}

fn insert(m: &mut Map<String, Value>, k: &str, v: Option<&str>) {
    if let Some(v) = v {
        m.insert(k.into(), v.into());
    }
}

/// An event of any kind, its sections and optional fields present or not.
fn event() -> BoxedStrategy<Event> {
    let resource = (
        opt_str(&["windows", "linux", ""]),
        opt_str(&["eastus2", "westeurope", "uksouth"]),
        opt_str(&["web-1", "db-2"]),
        opt_str(&["prod", "dev", ""]),
        opt_str(&["payments", "search"]),
        opt_str(&["alice"]),
    )
        .prop_map(|(os, region, name, env, team, owner)| {
            let mut r = Map::new();
            insert(&mut r, "os", os);
            insert(&mut r, "region", region);
            insert(&mut r, "name", name);
            let mut tags = Map::new();
            insert(&mut tags, "env", env);
            insert(&mut tags, "team", team);
            insert(&mut tags, "owner", owner);
            r.insert("tags".into(), Value::Object(tags));
            Value::Object(r)
        });
    let sections = (
        pick(&["reboot", "freeze", "redeploy"]),
        pick(&["scheduled", "started"]),
        proptest::option::of(0i64..60),
        pick(&["ArtifactVersionNotFound", "AllocationFailed", ""]),
        pick(&["vm_agent", "allocation"]),
        0i64..4,
        pick(&["degraded", "unavailable"]),
        opt_str(&["planned", "unplanned"]),
    );
    (
        pick(KINDS),
        pick(&["ingest", "azure.arm"]),
        resource,
        sections,
        proptest::sample::select(&[0u8, 1, 2, 3][..]),
    )
        .prop_map(|(kind, source, resource, s, extra)| {
            let (ty, status, dur, code, cat, attempt, state, reason) = s;
            let mut ev = json!({
                "id": "ingest:1", "time": "2026-04-20T22:26:58Z", "source": source,
                "kind": kind, "resource": resource,
            });
            let mut m = json!({"type": ty, "status": status});
            if let Some(d) = dur {
                m["duration_s"] = d.into();
            }
            let f =
                json!({"operation": "create", "code": code, "category": cat, "attempt": attempt});
            let mut h = json!({"state": state});
            if let Some(r) = reason {
                h["reason_type"] = r.into();
            }
            // The event's own section, and sometimes another kind's (which a kind-agnostic
            // policy reads as present).
            let own = match kind {
                "maintenance" => ("maintenance", m.clone()),
                "health" => ("health", h.clone()),
                _ => ("failure", f.clone()),
            };
            ev[own.0] = own.1;
            match extra {
                1 => ev["maintenance"] = m,
                2 => ev["failure"] = f,
                3 => ev["health"] = h,
                _ => {}
            }
            Event::from_json_str(&ev.to_string()).unwrap()
        })
        .boxed()
}

/// Compares one event's decisions with and without the index; returns how many policies
/// the index excluded that the unindexed engine found false.
fn agree(idx: &Engine, all: &Engine, ev: &Event, now: Timestamp) -> Result<usize, TestCaseError> {
    let full = Ctx::new(now).with_mode(Mode::Full);
    let (fi, fa) = (idx.decide(ev, &full), all.decide(ev, &full));
    let mut proved_false = BTreeSet::new();
    prop_assert_eq!(fi.trace.len(), fa.trace.len());
    for ((pa, a), (pb, b)) in fi.trace.iter().zip(fa.trace.iter()) {
        prop_assert_eq!(pa, pb);
        if a == Outcome::SkippedByIndex && b == Outcome::False {
            proved_false.insert(pa.to_string());
        } else {
            prop_assert_eq!(a, b, "policy {} on {:?}", pa, ev);
        }
    }
    let strip = |d: &Decision| {
        let mut d = d.clone();
        d.trace.clear();
        d.not_evaluated.clear();
        d
    };
    prop_assert_eq!(strip(&fi), strip(&fa), "full mode on {:?}", ev);

    let fast = Ctx::new(now);
    let (qi, qa) = (idx.decide(ev, &fast), all.decide(ev, &fast));
    prop_assert_eq!(strip(&qi), strip(&qa), "fast mode on {:?}", ev);
    let skipped: Vec<&str> = qa
        .not_evaluated
        .iter()
        .map(|p| p.as_str())
        .filter(|p| !proved_false.iter().any(|f| f == p))
        .collect();
    prop_assert_eq!(
        qi.not_evaluated
            .iter()
            .map(|p| p.as_str())
            .collect::<Vec<_>>(),
        skipped
    );
    Ok(proved_false.len())
}

#[test]
fn the_index_changes_no_decision() {
    let mut runner = TestRunner::new(Config {
        cases: 384,
        failure_persistence: None,
        ..Config::default()
    });
    let now: Timestamp = "2026-04-20T22:30:00Z".parse().unwrap();
    let excluded = Cell::new(0usize);
    let evaluated = Cell::new(0usize);
    runner
        .run(
            &(policy_set(), proptest::collection::vec(event(), 1..12)),
            |(yaml, events)| {
                let build = || {
                    Engine::builder()
                        .add_source("gen.yaml", yaml.clone())
                        .build()
                };
                let idx = match build() {
                    Ok(e) => e,
                    Err(e) => return Err(TestCaseError::fail(format!("{yaml}\n{e}"))),
                };
                let all = build().unwrap().__without_index();
                for ev in &events {
                    excluded.set(excluded.get() + agree(&idx, &all, ev, now)?);
                    evaluated.set(evaluated.get() + 1);
                }
                Ok(())
            },
        )
        .unwrap();
    // The property is not vacuous: the index did exclude policies, many times.
    assert!(
        excluded.get() > evaluated.get(),
        "the index excluded only {} policies over {} decisions",
        excluded.get(),
        evaluated.get()
    );
}

/// The index excludes on every atom, not only one: a policy with three atoms is a
/// candidate only for events all three admit; a `has()` atom excludes on an absent field,
/// but an equality atom does not (its error must be reported).
#[test]
fn every_atom_of_a_policy_narrows_its_candidacy() {
    let e = Engine::builder()
        .add_source(
            "p.yaml",
            r#"policies:
  - name: three
    on: [maintenance]
    when: event.maintenance.type in ["reboot", "redeploy"] && event.resource.region == "eastus2" && (event.resource.tags.env == "prod" || event.resource.tags.env == "dev")
    action: drain
  - name: guarded
    on: [maintenance]
    when: has(event.resource.os) && event.resource.os == "windows"
    action: acknowledge
  - name: unguarded
    on: [maintenance]
    when: event.resource.os == "windows"
    action: acknowledge
"#
            .to_string(),
        )
        .build()
        .unwrap();
    let now: Timestamp = "2026-04-20T22:30:00Z".parse().unwrap();
    let outcome = |ev: Value, policy: &str| {
        let ev = Event::from_json_str(&ev.to_string()).unwrap();
        let d = e.decide(&ev, &Ctx::new(now).with_mode(Mode::Full));
        d.trace.outcome(policy).unwrap()
    };
    let ev = |ty: &str, region: &str, env: &str| {
        json!({"id": "ingest:1", "time": "2026-04-20T22:26:58Z", "source": "ingest",
               "kind": "maintenance", "resource": {"region": region, "tags": {"env": env}},
               "maintenance": {"type": ty, "status": "scheduled"}})
    };
    assert_eq!(
        outcome(ev("reboot", "eastus2", "prod"), "three"),
        Outcome::Matched
    );
    for (ty, region, env) in [
        ("freeze", "eastus2", "prod"),
        ("reboot", "westus", "prod"),
        ("reboot", "eastus2", "staging"),
    ] {
        assert_eq!(
            outcome(ev(ty, region, env), "three"),
            Outcome::SkippedByIndex,
            "{ty} {region} {env}"
        );
    }
    // No `os`: the guarded policy is proved false, the unguarded one errs.
    assert_eq!(
        outcome(ev("reboot", "eastus2", "prod"), "guarded"),
        Outcome::SkippedByIndex
    );
    assert_eq!(
        outcome(ev("reboot", "eastus2", "prod"), "unguarded"),
        Outcome::Errored
    );
}

/// A set spanning several words of the index's bitsets: each value's policies sit in every
/// word, and exactly they are candidates.
#[test]
fn a_value_admits_its_policies_in_every_word_of_a_large_set() {
    let mut src = String::from("policies:\n");
    for i in 0..200 {
        src.push_str(&format!(
            "  - name: p{i:03}\n    on: [maintenance]\n    when: event.resource.region == \"r{}\"\n    action: drain\n    priority: {i}\n",
            i % 3
        ));
    }
    let e = Engine::builder().add_source("p.yaml", src).build().unwrap();
    let ev = Event::from_json_str(
        &json!({"id": "ingest:1", "time": "2026-04-20T22:26:58Z", "source": "ingest",
                "kind": "maintenance", "resource": {"region": "r1"},
                "maintenance": {"type": "reboot", "status": "scheduled"}})
        .to_string(),
    )
    .unwrap();
    let now: Timestamp = "2026-04-20T22:30:00Z".parse().unwrap();
    let d = e.decide(&ev, &Ctx::new(now).with_mode(Mode::Full));
    for (name, outcome) in d.trace.iter() {
        let i: usize = name[1..].parse().unwrap();
        let want = if i % 3 == 1 {
            Outcome::Matched
        } else {
            Outcome::SkippedByIndex
        };
        assert_eq!(outcome, want, "{name}");
    }
    assert_eq!(d.policy.as_deref(), Some("p199"));
}
