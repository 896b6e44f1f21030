//! Untrusted input never panics: event JSON (arbitrary bytes, mutated documents, absurd
//! nesting) and policy YAML (arbitrary strings, mutated files). Whatever loads also decides
//! without panicking.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::OnceLock;

use keel_engine::{Ctx, Engine, Event, EventError, LoadError, Mode, Timestamp, MAX_EVENT_BYTES};
use proptest::prelude::*;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn now() -> Timestamp {
    "2021-10-13T14:05:03Z".parse().unwrap()
}

fn data(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/events")
            .join(name),
    )
    .unwrap()
}

const MAINTENANCE_EVENT: &str = r#"{
  "id": "azure.scheduled_events:ev-1",
  "time": "2021-10-13T14:00:00Z",
  "source": "azure.scheduled_events",
  "kind": "maintenance",
  "resource": {"id": "vm-1", "name": "web-1", "os": "linux", "region": "westeurope",
               "tags": {"team": "a"}, "fault_domain": 1, "is_self": true},
  "maintenance": {"type": "reboot", "status": "scheduled",
                  "not_before": "2021-10-13T14:15:00Z", "duration_s": 300,
                  "initiator": "platform", "incarnation": 3},
  "raw": {"Events": [{"EventId": "ev-1", "EventType": "Reboot"}]}
}"#;

const HEALTH_EVENT: &str = r#"{
  "id": "azure.resource_health:h-1",
  "time": "2021-10-13T14:00:00Z",
  "source": "azure.resource_health",
  "kind": "health",
  "health": {"state": "degraded", "previous_state": "available", "reason_type": "unplanned",
             "occurred_at": "2021-10-13T13:59:00Z"}
}"#;

fn sample_events() -> Vec<String> {
    vec![
        data("vm-agent-windows-2021-10-13.json"),
        data("vm-agent-linux-2021-10-13.json"),
        MAINTENANCE_EVENT.to_string(),
        HEALTH_EVENT.to_string(),
    ]
}

/// Native and interpreter policies for every kind, exercising reads of every section, time
/// arithmetic, escalation keys and defer/retry timing.
const FUZZ_POLICIES: &str = r#"policies:
  - name: win-agent
    on: [operation_failure]
    when: event.failure.category == "vm_agent" && event.resource.os == "windows"
    action: retry_without_agent
    priority: 100
    params: { max_attempts: 2, delay_s: 5, backoff: exponential }
  - name: retry-after
    on: [operation_failure]
    when: has(event.failure.retry_after_s) && event.failure.retry_after_s > 0
    action: retry
    priority: 90
  - name: details
    on: [operation_failure]
    when: event.failure.details.exists(d, d.code.startsWith("Artifact"))
    action: drain
    reason_expr: '"detail " + event.failure.details[0].code'
  - name: old-failure
    on: [operation_failure, health]
    when: event.failure.message.matches("not found") || now - event.time > duration("1h")
    action: acknowledge
  - name: escalate-region
    on: [operation_failure, maintenance, health]
    action: escalate
    reason_expr: 'has(event.resource.region) ? event.resource.region : "unknown"'
    params: { severity: critical, dedup: { by: [resource.region, failure.code], window: 1h } }
  - name: defer-reboot
    on: [maintenance]
    when: event.maintenance.type == "reboot" && event.maintenance.duration_s < 600
    action: defer
    params: { until: 'event.maintenance.not_before - duration("5m")' }
  - name: defer-interp
    on: [maintenance]
    when: size(event.resource.tags) > 0 && event.time + duration("1h") > now
    action: defer
    priority: -1
    params: { delay: 15m }
  - name: health-interp
    on: [health]
    when: string(event.health.state) == "degraded" && event.health.occurred_at + duration("1m") < now
    action: drain
"#;

fn fuzz_engine() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| {
        match Engine::builder()
            .add_source("fuzz.yaml", FUZZ_POLICIES)
            .build()
        {
            Ok(e) => e,
            Err(e) => panic!("{e}"),
        }
    })
}

/// Decides in both modes; checks what must hold of any decision.
fn decide_all(e: &Engine, ev: &Event) {
    let fast = e.decide(ev, &Ctx::new(now()));
    let full = e.decide(ev, &Ctx::new(now()).with_mode(Mode::Full));
    // Fast mode only skips work: the winner is the same.
    assert_eq!(fast.action, full.action);
    assert_eq!(fast.policy, full.policy);
    assert_eq!(fast.escalations, full.escalations);
    assert_eq!(full.trace.len(), e.len());
    assert_eq!(fast.event_id, ev.id);
    // The decision always serializes.
    serde_json::to_string(&full).unwrap();
}

fn check_event_error(bytes: &[u8], err: &EventError) {
    match err {
        EventError::NotUtf8 {
            offset,
            line,
            column,
        } => {
            assert!(*offset < bytes.len(), "{err}");
            assert!(std::str::from_utf8(&bytes[..*offset]).is_ok(), "{err}");
            assert!(*line >= 1 && *column >= 1, "{err}");
        }
        EventError::Json { line, column, .. } => {
            assert!(*line >= 1, "{err}");
            let _ = column;
        }
        EventError::TooLarge { size } => assert!(*size > MAX_EVENT_BYTES),
        other => panic!("unexpected error {other:?}"),
    }
    assert!(!err.to_string().is_empty());
}

/// Parses `bytes`; a parsed event round-trips and decides without panicking.
fn parse_and_decide(bytes: &[u8]) {
    match Event::from_json_bytes(bytes) {
        Ok(ev) => {
            let text = serde_json::to_string(&ev).unwrap();
            let again = Event::from_json_str(&text).unwrap();
            assert_eq!(again, ev, "round trip of {text}");
            decide_all(fuzz_engine(), &ev);
        }
        Err(err) => check_event_error(bytes, &err),
    }
}

#[derive(Debug, Clone)]
enum Edit {
    Insert(usize, u8),
    Delete(usize),
    Replace(usize, u8),
}

fn json_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        4 => proptest::sample::select(
            b"{}[]\":,0123456789-+.eE truefalsnl\\/uxyzT:Z".to_vec()
        ),
        1 => any::<u8>(),
    ]
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    proptest::collection::vec(
        prop_oneof![
            (any::<usize>(), json_byte()).prop_map(|(i, b)| Edit::Insert(i, b)),
            any::<usize>().prop_map(Edit::Delete),
            (any::<usize>(), json_byte()).prop_map(|(i, b)| Edit::Replace(i, b)),
        ],
        1..8,
    )
}

fn apply(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        match *e {
            Edit::Insert(i, b) => {
                let i = i % (bytes.len() + 1);
                bytes.insert(i, b);
            }
            Edit::Delete(i) if !bytes.is_empty() => {
                let i = i % bytes.len();
                bytes.remove(i);
            }
            Edit::Replace(i, b) if !bytes.is_empty() => {
                let i = i % bytes.len();
                bytes[i] = b;
            }
            _ => {}
        }
    }
    bytes
}

// ---------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn event_from_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        parse_and_decide(&bytes);
    }

    #[test]
    fn event_from_json_like_bytes_never_panics(bytes in proptest::collection::vec(json_byte(), 0..256)) {
        parse_and_decide(&bytes);
    }

    #[test]
    fn mutated_valid_events_never_panic(which in 0usize..4, edits in edits()) {
        let base = sample_events()[which].clone().into_bytes();
        let bytes = apply(base, &edits);
        parse_and_decide(&bytes);
    }
}

#[test]
fn sample_events_parse_and_decide() {
    for text in sample_events() {
        let ev = Event::from_json_str(&text).unwrap();
        decide_all(fuzz_engine(), &ev);
    }
}

/// A `raw` payload `depth` arrays deep.
fn deep_raw(open: &str, close: &str, depth: usize) -> String {
    format!(
        r#"{{"id": "ingest:x", "time": "2021-10-13T14:00:00Z", "source": "ingest", "kind": "health",
            "health": {{"state": "degraded"}}, "raw": {}1{}}}"#,
        open.repeat(depth),
        close.repeat(depth)
    )
}

#[test]
fn deeply_nested_raw_is_rejected_without_overflow() {
    for depth in [10_000usize, 100_000] {
        for (open, close) in [("[", "]"), (r#"{"a":"#, "}")] {
            let text = deep_raw(open, close, depth);
            match Event::from_json_bytes(text.as_bytes()) {
                Err(EventError::Json { message, line, .. }) => {
                    assert!(message.contains("recursion limit exceeded"), "{message}");
                    assert_eq!(line, 2);
                }
                other => panic!("depth {depth}: expected a JSON error, got {other:?}"),
            }
        }
    }
    // The same nesting in the request body policies cannot read is rejected too.
    let deep_request = data("vm-agent-windows-2021-10-13.json").replace(
        "\"transient\": true",
        &format!(
            "\"transient\": true, \"request\": {}{}",
            "[".repeat(10_000),
            "]".repeat(10_000)
        ),
    );
    assert!(deep_request.contains("[[[[["), "the replacement must apply");
    assert!(matches!(
        Event::from_json_str(&deep_request),
        Err(EventError::Json { .. })
    ));
    // Moderate nesting is accepted and kept.
    let ev = Event::from_json_str(&deep_raw("[", "]", 100)).unwrap();
    assert!(ev.raw.is_some());
}

#[test]
fn oversized_and_non_utf8_events_are_rejected() {
    let big = vec![b' '; MAX_EVENT_BYTES + 1];
    assert!(matches!(
        Event::from_json_bytes(&big),
        Err(EventError::TooLarge { size }) if size == MAX_EVENT_BYTES + 1
    ));

    let mut bytes = b"{\n  \"id\": \"a".to_vec();
    bytes.push(0xff);
    bytes.extend_from_slice(b"\"}");
    match Event::from_json_bytes(&bytes) {
        Err(EventError::NotUtf8 {
            offset,
            line,
            column,
        }) => assert_eq!((offset, line, column), (12, 2, 11)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn extreme_but_parseable_timestamps_never_panic() {
    // chrono reads years far outside RFC 3339's four digits; time arithmetic on them must
    // fail cleanly in policies, natively and in the interpreter.
    let times = [
        "0000-01-01T00:00:00Z",
        "9999-12-31T23:59:59.999999999Z",
        "+10000-01-01T00:00:00Z",
        "+262142-12-31T23:59:59Z",
        "-262143-01-01T00:00:00Z",
    ];
    for t in times {
        let ev = MAINTENANCE_EVENT
            .replace(
                "\"time\": \"2021-10-13T14:00:00Z\"",
                &format!("\"time\": \"{t}\""),
            )
            .replace(
                "\"not_before\": \"2021-10-13T14:15:00Z\"",
                &format!("\"not_before\": \"{t}\""),
            );
        parse_and_decide(ev.as_bytes());
        let health = HEALTH_EVENT.replace("2021-10-13T13:59:00Z", t);
        parse_and_decide(health.as_bytes());
        let fail =
            data("vm-agent-windows-2021-10-13.json").replace("2021-10-13T07:02:14.233945500Z", t);
        assert!(fail.contains(t), "the replacement must apply");
        parse_and_decide(fail.as_bytes());
        // Years RFC 3339 cannot write are rejected with a position, in every time field.
        let far = t.starts_with("+262") || t.starts_with("-262");
        for text in [&ev, &health, &fail] {
            match Event::from_json_str(text) {
                Ok(_) => assert!(!far, "{t} accepted"),
                Err(EventError::Json { message, line, .. }) => {
                    assert!(far, "{t} rejected: {message}");
                    assert!(message.contains("out of range"), "{message}");
                    assert!(line >= 2, "{line}");
                }
                Err(other) => panic!("{other:?}"),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Policies
// ---------------------------------------------------------------------------------------

fn check_load(result: Result<Engine, LoadError>) {
    match result {
        Ok(engine) => {
            for text in sample_events() {
                let ev = Event::from_json_str(&text).unwrap();
                decide_all(&engine, &ev);
            }
        }
        Err(err) => {
            let diags = err.diagnostics();
            assert!(!diags.is_empty(), "an error without diagnostics");
            for d in diags {
                if d.line() > 0 {
                    assert!(d.column() > 0, "line without column: {d}");
                } else {
                    assert_eq!(d.column(), 0, "{d}");
                }
                assert!(!d.message().is_empty());
                assert_eq!(d.file(), Path::new("f.yaml"));
            }
            assert!(!err.to_string().is_empty());
        }
    }
}

fn load(text: &str) {
    check_load(Engine::builder().add_source("f.yaml", text).build());
}

fn yaml_char() -> impl Strategy<Value = char> {
    prop_oneof![
        6 => proptest::sample::select(
            " \n\t-:?[]{},#&*!|>'\"%@`abcdefghijklmnopqrstuvwxyz0123456789._()=<\\"
                .chars()
                .collect::<Vec<_>>()
        ),
        1 => any::<char>(),
    ]
}

/// Pieces of policy files, so that random text often gets past the YAML parser.
fn policy_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("policies:\n".to_string()),
        Just("  - name: p\n".to_string()),
        Just("    on: [maintenance, operation_failure]\n".to_string()),
        Just("    action: drain\n".to_string()),
        Just("    action: defer\n".to_string()),
        Just("    params: { delay: 15m }\n".to_string()),
        Just("    when: ".to_string()),
        Just("event.maintenance.type == \"reboot\"".to_string()),
        Just("has(event.resource.os) && ".to_string()),
        Just("now - event.time > duration(\"1h\")".to_string()),
        Just("\n".to_string()),
        proptest::collection::vec(yaml_char(), 0..12).prop_map(|v| v.into_iter().collect()),
    ]
}

const VALID_POLICY: &str = r#"version: 1
policies:
  - name: windows-agent
    description: >
      folded description
    on: [operation_failure]
    when: >
      event.failure.category == "vm_agent" && event.resource.os == "windows"
      && event.failure.attempt < 2
    action: retry_without_agent
    priority: 100
    params: { max_attempts: 1, delay_s: 10, backoff: exponential }
  - name: escalate
    on: [operation_failure]
    when: 'event.failure.details.exists(d, d.code == "X")'
    action: escalate
    reason_expr: '"code " + event.failure.code'
    params:
      severity: critical
      dedup: { by: [resource.region], window: 1h }
  - name: defer
    on: [maintenance]
    when: "event.maintenance.type in [\"reboot\", \"freeze\"] && now < event.maintenance.not_before"
    action: defer
    params: { until: 'event.maintenance.not_before - duration("5m")' }
"#;

fn valid_policy(which: usize) -> String {
    match which {
        0 => VALID_POLICY.to_string(),
        _ => std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/standard/azure/vm-agent.yaml"),
        )
        .unwrap(),
    }
}

#[derive(Debug, Clone)]
enum CharEdit {
    Insert(usize, char),
    Delete(usize),
}

fn char_edits() -> impl Strategy<Value = Vec<CharEdit>> {
    proptest::collection::vec(
        prop_oneof![
            (any::<usize>(), yaml_char()).prop_map(|(i, c)| CharEdit::Insert(i, c)),
            any::<usize>().prop_map(CharEdit::Delete),
        ],
        1..6,
    )
}

fn apply_chars(text: &str, edits: &[CharEdit]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for e in edits {
        match *e {
            CharEdit::Insert(i, c) => {
                let i = i % (chars.len() + 1);
                chars.insert(i, c);
            }
            CharEdit::Delete(i) if !chars.is_empty() => {
                let i = i % chars.len();
                chars.remove(i);
            }
            CharEdit::Delete(_) => {}
        }
    }
    chars.into_iter().collect()
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn loader_on_arbitrary_strings_never_panics(text in "(?s).{0,300}") {
        load(&text);
    }

    #[test]
    fn loader_on_yaml_like_strings_never_panics(chars in proptest::collection::vec(yaml_char(), 0..300)) {
        let text: String = chars.into_iter().collect();
        load(&text);
    }

    #[test]
    fn loader_on_policy_fragments_never_panics(pieces in proptest::collection::vec(policy_piece(), 0..20)) {
        load(&pieces.concat());
    }

    #[test]
    fn loader_on_mutated_valid_files_never_panics(which in 0usize..2, edits in char_edits()) {
        let text = apply_chars(&valid_policy(which), &edits);
        load(&text);
    }

    #[test]
    fn arbitrary_when_expressions_never_panic(when in "[ -~]{0,80}") {
        // Any printable ASCII as the CEL text of a `when`, quoted for YAML.
        let src = format!(
            "policies:\n  - name: p\n    on: [operation_failure, maintenance]\n    when: {}\n    action: drain\n",
            serde_json::to_string(&when).unwrap()
        );
        load(&src);
    }
}

#[test]
fn unmutated_valid_files_load() {
    for which in 0..2 {
        let e = Engine::builder()
            .add_source("f.yaml", valid_policy(which))
            .build()
            .unwrap();
        assert!(e.len() >= 2);
    }
}
