//! The `azure.arm` normalizer and the classification table beyond the fixtures' snapshots
//! (tests/snapshots_fixtures.rs): the vendor quirks of `docs/protocols.md` "Azure Resource
//! Manager operations", the error shapes the normalizer reads (with the nested-deployment and
//! activity-log payloads written here from the documented shapes), the `OperationNotAllowed`
//! pattern table, and fuzzing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;

use common::time_like;
use keel_engine::normalize::classify::{self, classify, classify_response, Codes, When, RULES};
use keel_engine::normalize::{azure_arm, normalize, Input, NormalizeError, NormalizerState};
use keel_engine::{
    Action, Category, Ctx, Engine, Event, FailureDetail, Kind, Operation, Resource, Source,
    Timestamp,
};
use proptest::prelude::*;
use serde_json::{json, Value};

// ----------------------------------------------------------------------------------------
// Helpers.

const OBSERVED: &str = "2026-05-01T10:00:00Z";

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn fixture(name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../policies/fixtures")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn fixture_json(name: &str) -> Value {
    serde_json::from_slice(&fixture(name)).unwrap()
}

/// The registry entry point, as `keel normalize --from azure.arm` calls it.
fn norm(bytes: &[u8]) -> Result<Vec<Event>, NormalizeError> {
    let mut st = NormalizerState::default();
    normalize("azure.arm", &Input::new(bytes, ts(OBSERVED)), &mut st)
}

fn norm_input(input: &Input<'_>) -> Result<Vec<Event>, NormalizeError> {
    let mut st = NormalizerState::default();
    normalize("azure.arm", input, &mut st)
}

/// With the operation known to the caller.
fn norm_op(bytes: &[u8], op: Operation) -> Vec<Event> {
    azure_arm::normalize_with_operation(&Input::new(bytes, ts(OBSERVED)), op).unwrap()
}

fn only(events: Vec<Event>) -> Event {
    assert_eq!(events.len(), 1, "{events:#?}");
    events.into_iter().next().unwrap()
}

fn is_hash_id(id: &str) -> bool {
    id.strip_prefix("azure.arm:")
        .is_some_and(|h| h.len() == 16 && h.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Every field of the failure, in one place so no test forgets one.
#[allow(clippy::too_many_arguments)]
fn assert_failure(
    e: &Event,
    operation: Operation,
    code: &str,
    message: Option<&str>,
    http_status: Option<i64>,
    attempt: i64,
    details: &[FailureDetail],
    retry_after_s: Option<i64>,
    category: Category,
    transient: bool,
) {
    assert_eq!(e.source, Source::AzureArm);
    assert_eq!(e.kind, Kind::OperationFailure);
    assert!(e.maintenance.is_none() && e.health.is_none());
    let f = e.failure.as_ref().expect("failure");
    assert_eq!(f.operation, operation, "operation");
    assert_eq!(f.code, code, "code");
    assert_eq!(f.message.as_deref(), message, "message");
    assert_eq!(f.http_status, http_status, "http_status");
    assert_eq!(f.attempt, attempt, "attempt");
    assert_eq!(f.details, details, "details");
    assert_eq!(f.retry_after_s, retry_after_s, "retry_after_s");
    assert_eq!(f.category, category, "category");
    assert_eq!(f.transient, transient, "transient");
}

fn detail(code: &str, message: Option<&str>, target: Option<&str>) -> FailureDetail {
    serde_json::from_value(json!({"code": code, "message": message, "target": target})).unwrap()
}

fn message_of(name: &str) -> String {
    let v = fixture_json(name);
    let e = v.get("error").unwrap_or(&v);
    let inner = e
        .get("details")
        .and_then(|d| d.get(0))
        .filter(|_| e["code"].as_str().is_some_and(classify::is_wrapper))
        .unwrap_or(e);
    inner["message"].as_str().unwrap().to_string()
}

const VM_ID: &str =
    "/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/resourceGroups/rg-web/providers/Microsoft.Compute/virtualMachines/web-1";

// ----------------------------------------------------------------------------------------
// The fixtures. What each one normalizes to, field by field, is its snapshot
// (tests/snapshots_fixtures.rs); here, what a snapshot does not show.

/// The classification rule each fixture's failure selects (the event carries only the
/// category and transience the rule gives).
#[test]
fn fixtures_select_their_classification_rule() {
    for (name, status, rule) in [
        (
            "arm-error-artifact-version-not-found-2021-10-13.json",
            None,
            "guest-agent-artifact-not-found",
        ),
        (
            "arm-error-osprovisioningclienterror-not-generalized.json",
            None,
            "os-provisioning-image-not-prepared",
        ),
        (
            "arm-error-operationnotallowed-marked-for-deletion.json",
            Some(409),
            "operation-not-allowed-marked-for-deletion",
        ),
    ] {
        let e = only(norm_op(&fixture(name), Operation::Create));
        let f = e.failure.unwrap();
        assert_eq!(
            f.message.as_deref(),
            Some(message_of(name).as_str()),
            "{name}"
        );
        let c = classify(&f.code, f.message.as_deref(), status, &f.details);
        assert_eq!(c.rule, rule, "{name}");
    }
}

/// A `Retry-After` the caller gives wins over the message's "try again after '372' seconds".
#[test]
fn the_callers_retry_after_wins_over_the_message() {
    let bytes = fixture("arm-error-429-arm-throttled.json");
    let input = Input::new(&bytes, ts(OBSERVED)).http_status(429);
    let e = only(azure_arm::normalize_with_operation(&input, Operation::Update).unwrap());
    assert_eq!(e.failure.unwrap().retry_after_s, Some(372));
    let input = Input::new(&bytes, ts(OBSERVED))
        .http_status(429)
        .retry_after_s(30);
    let e = only(azure_arm::normalize_with_operation(&input, Operation::Update).unwrap());
    assert_eq!(e.failure.unwrap().retry_after_s, Some(30));
}

/// An absurd Retry-After (here i64::MAX, which overflowed chrono in the engine) is clamped to
/// a day; one beyond i64 too; a negative one is ignored.
#[test]
fn fixture_429_with_an_absurd_retry_after_is_clamped_to_a_day() {
    let text = String::from_utf8(fixture("arm-error-429-throttled.http")).unwrap();
    assert!(text.contains("Retry-After: 1200\n"));
    for (header, want) in [
        ("9223372036854775807", Some(azure_arm::MAX_RETRY_AFTER_S)),
        ("99999999999999999999999999", Some(86_400)),
        ("86401", Some(86_400)),
        ("86400", Some(86_400)),
        ("0", Some(0)),
        ("-5", None),
        ("-9223372036854775808", None),
    ] {
        let edited = text.replace("Retry-After: 1200", &format!("Retry-After: {header}"));
        let e = only(norm_op(edited.as_bytes(), Operation::Start));
        let f = e.failure.as_ref().unwrap();
        assert_eq!(f.retry_after_s, want, "{header}");
        assert_eq!((f.category, f.transient), (Category::Throttled, true));
        // The same through the registry and an ingest body.
        let mut st = NormalizerState::default();
        let input = Input::new(edited.as_bytes(), ts(OBSERVED)).operation(Operation::Start);
        let e2 = only(normalize("azure.arm", &input, &mut st).unwrap());
        assert_eq!(e2.failure.unwrap().retry_after_s, want, "{header}");
        let body = json!({"idempotency_key": "k", "operation": "start", "error": edited});
        let e3 = only(norm(body.to_string().as_bytes()).unwrap());
        assert_eq!(e3.failure.unwrap().retry_after_s, want, "{header}");
    }
    // The caller's value is clamped too; a negative one falls back to the header.
    let bytes = text.replace("Retry-After: 1200", "Retry-After: 9223372036854775807");
    for (given, want) in [(i64::MAX, 86_400), (90_000, 86_400), (5, 5), (-1, 86_400)] {
        let input = Input::new(bytes.as_bytes(), ts(OBSERVED)).retry_after_s(given);
        let e = only(azure_arm::normalize_with_operation(&input, Operation::Start).unwrap());
        assert_eq!(e.failure.unwrap().retry_after_s, Some(want), "{given}");
    }
    // "try again after 'N' seconds" in a message, absurd N.
    let doc = json!({"error": {"code": "ResourceRequestsThrottled", "message": "Please try again after '9223372036854775807999' seconds."}});
    let e = only(norm_op(doc.to_string().as_bytes(), Operation::Update));
    assert_eq!(e.failure.unwrap().retry_after_s, Some(86_400));
    // The engine decides on it without trouble: a retry a day later.
    let edited = text.replace("Retry-After: 1200", "Retry-After: 9223372036854775807");
    let e = only(norm_op(edited.as_bytes(), Operation::Start));
    let yaml = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/standard/azure/provisioning.yaml"),
    )
    .unwrap();
    let engine = Engine::builder()
        .add_source("provisioning.yaml", yaml)
        .build()
        .unwrap();
    let now = ts(OBSERVED);
    let d = engine.decide(&e, &Ctx::new(now));
    assert_eq!(d.action, Action::Retry, "{d:?}");
    let not_before = d.retry.as_ref().and_then(|r| r.not_before);
    assert_eq!(not_before, Some(now + chrono::Duration::seconds(86_400)));
}

#[test]
fn the_429_body_without_the_http_envelope_is_throttled_by_its_detail() {
    let text = String::from_utf8(fixture("arm-error-429-throttled.http")).unwrap();
    let body = text.split("\n\n").nth(1).unwrap();
    let e = only(norm_op(body.as_bytes(), Operation::Start));
    let f = e.failure.unwrap();
    assert_eq!(f.http_status, None);
    assert_eq!(f.retry_after_s, None);
    assert_eq!(f.category, Category::Throttled);
    assert!(f.transient);
    let c = classify(&f.code, f.message.as_deref(), None, &f.details);
    assert_eq!(c.rule, "operation-not-allowed-throttle-detail");
}

#[test]
fn every_arm_fixture_is_covered_and_bare_bodies_need_an_operation() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/fixtures");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if !name.starts_with("arm-error-") {
            continue;
        }
        n += 1;
        // A bare error body does not say which operation failed: a typed refusal, never a guess.
        match norm(&fixture(&name)) {
            Err(NormalizeError::WrongPayload { reason, .. }) => {
                assert!(
                    reason.contains("does not say which operation failed"),
                    "{name}: {reason}"
                )
            }
            other => panic!("{name}: {other:?}"),
        }
        // With the operation, every one normalizes to one failure.
        let e = only(norm_op(&fixture(&name), Operation::Create));
        assert_eq!(e.kind, Kind::OperationFailure, "{name}");
        assert!(e.raw.is_some());
    }
    assert!(n >= 19, "{n} arm-error fixtures");
}

// ----------------------------------------------------------------------------------------
// The ingest body (`POST /ingest`, README "keel run and keel demo: the host").

fn windows_create_request() -> Value {
    json!({
        "location": "East US 2",
        "zones": ["2"],
        "tags": {"team": "web", "env": "prod"},
        "properties": {
            "hardwareProfile": {"vmSize": "Standard_D2s_v5"},
            "storageProfile": {
                "imageReference": {"publisher": "MicrosoftWindowsServer", "offer": "WindowsServer", "sku": "2019-datacenter-gensecond", "version": "latest"},
                "osDisk": {"createOption": "FromImage", "managedDisk": {"storageAccountType": "Premium_LRS"}}
            },
            "osProfile": {"computerName": "web-1", "adminUsername": "azureuser", "adminPassword": "<secret>",
                          "windowsConfiguration": {"enableAutomaticUpdates": true}},
            "networkProfile": {"networkInterfaces": [{"id": "/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/resourceGroups/rg-web/providers/Microsoft.Network/networkInterfaces/web-1-nic"}]}
        }
    })
}

#[test]
fn ingest_of_the_2021_10_13_failure_decides_retry_without_agent() {
    let body = json!({
        "idempotency_key": "deploy-42/web-1/create/1",
        "resource": VM_ID,
        "operation": "create",
        "attempt": 1,
        "request": windows_create_request(),
        "error": fixture_json("arm-error-artifact-version-not-found-2021-10-13.json"),
    });
    let bytes = body.to_string().into_bytes();
    let mut st = NormalizerState::default();
    let input = Input::new(&bytes, ts(OBSERVED)).self_name("WEB-1");
    let e = only(normalize("azure.arm", &input, &mut st).unwrap());
    assert_eq!(e.id, "azure.arm:deploy-42/web-1/create/1");
    assert_eq!(e.time, ts("2021-10-13T07:02:14.2339455Z"));
    let mut tags = std::collections::BTreeMap::new();
    tags.insert("env".to_string(), "prod".to_string());
    tags.insert("team".to_string(), "web".to_string());
    assert_eq!(
        e.resource,
        Resource {
            id: Some(VM_ID.into()),
            name: Some("web-1".into()),
            type_: Some("Microsoft.Compute/virtualMachines".into()),
            os: Some("windows".into()),
            region: Some("eastus2".into()),
            zone: Some("2".into()),
            tags,
            is_self: Some(true),
            ..Resource::default()
        }
    );
    assert_failure(
        &e,
        Operation::Create,
        "ArtifactVersionNotFound",
        Some(&message_of(
            "arm-error-artifact-version-not-found-2021-10-13.json",
        )),
        None,
        1,
        &[],
        None,
        Category::VmAgent,
        true,
    );
    assert_eq!(
        e.failure.as_ref().unwrap().request.as_ref(),
        Some(&windows_create_request())
    );
    assert_eq!(e.raw.as_ref(), Some(&body));

    // And the standard policy picks it up.
    let yaml = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/standard/azure/vm-agent.yaml"),
    )
    .unwrap();
    let engine = Engine::builder()
        .add_source("vm-agent.yaml", yaml)
        .build()
        .unwrap();
    let d = engine.decide(&e, &Ctx::new(ts("2021-10-13T07:02:20Z")));
    assert_eq!(d.action, Action::RetryWithoutAgent);
    // One VM is not yet a platform incident (that needs the correlation history).
    assert!(d.escalations.is_empty());
}

#[test]
fn ingest_of_the_extension_pin_does_not_retry_without_agent() {
    let body = json!({
        "idempotency_key": "k-2",
        "resource": {"id": VM_ID, "os": "Windows", "region": "westeurope"},
        "operation": "Microsoft.Compute/virtualMachines/write",
        "error": fixture_json("arm-error-artifact-not-found-extension.json"),
    });
    let e = only(norm(body.to_string().as_bytes()).unwrap());
    assert_eq!(e.failure.as_ref().unwrap().category, Category::Extension);
    assert_eq!(e.failure.as_ref().unwrap().operation, Operation::Create);
    assert_eq!(e.resource.os.as_deref(), Some("windows"));
    assert_eq!(e.resource.name.as_deref(), Some("web-1"));
    let yaml = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/standard/azure/vm-agent.yaml"),
    )
    .unwrap();
    let engine = Engine::builder()
        .add_source("vm-agent.yaml", yaml)
        .build()
        .unwrap();
    let d = engine.decide(&e, &Ctx::new(ts(OBSERVED)));
    assert_eq!(d.action, Action::None);
    assert!(d.escalations.is_empty());
}

#[test]
fn ingest_with_an_http_response_string_and_attempt() {
    let http = String::from_utf8(fixture("arm-error-429-throttled.http")).unwrap();
    let body = json!({
        "idempotency_key": "k-3",
        "resource": {"name": "web-2"},
        "operation": "start",
        "attempt": "2",
        "error": http,
    });
    let e = only(norm(body.to_string().as_bytes()).unwrap());
    assert_eq!(e.id, "azure.arm:k-3");
    let f = e.failure.unwrap();
    assert_eq!(
        (f.operation, f.attempt, f.http_status, f.retry_after_s),
        (Operation::Start, 2, Some(429), Some(1200))
    );
    assert_eq!(f.category, Category::Throttled);
    assert_eq!(e.resource.name.as_deref(), Some("web-2"));
    assert_eq!(e.resource.is_self, None, "no self name given");
}

#[test]
fn ingest_with_a_status_message_string() {
    let status_message = json!({"status": "Failed", "error": {"code": "ResourceOperationFailure",
        "message": "The resource operation completed with terminal provisioning state 'Failed'.",
        "details": [{"code": "ZonalAllocationFailed", "message": "Allocation failed. We do not have sufficient capacity for the requested VM size in this zone."}]}})
    .to_string();
    let body = json!({"idempotency_key": "k-4", "resource": "web-3", "operation": "start", "error": status_message});
    let e = only(norm(body.to_string().as_bytes()).unwrap());
    let f = e.failure.unwrap();
    assert_eq!(f.code, "ZonalAllocationFailed");
    assert_eq!(f.category, Category::Allocation);
    assert_eq!(e.resource.name.as_deref(), Some("web-3"));
    assert_eq!(e.resource.id, None);
}

#[test]
fn ingest_without_a_key_gets_a_hash_id_that_counts_the_attempt() {
    let mk = |attempt: i64| {
        json!({"resource": VM_ID, "operation": "create", "attempt": attempt,
               "error": fixture_json("arm-error-skunotavailable.json")})
        .to_string()
    };
    let a1 = only(norm(mk(1).as_bytes()).unwrap());
    let a1_again = only(norm(mk(1).as_bytes()).unwrap());
    let a2 = only(norm(mk(2).as_bytes()).unwrap());
    assert!(is_hash_id(&a1.id));
    assert_eq!(a1.id, a1_again.id, "a re-read is the same event");
    assert_ne!(a1.id, a2.id, "the next attempt is another event");
}

/// The correlation history remembers the resource's identifiers and the enum-like fields of
/// up to 50,000 events: a body giving a megabyte in one of them is refused (the state
/// unchanged), not remembered.
#[test]
fn ingest_fields_the_history_remembers_are_bounded() {
    let long = "x".repeat(keel_engine::normalize::MAX_FIELD_BYTES + 1);
    let ok = "y".repeat(keel_engine::normalize::MAX_FIELD_BYTES);
    let body = |resource: &str, code: &str, key: &str| {
        json!({
            "idempotency_key": key,
            "resource": resource,
            "operation": "create",
            "error": {"error": {"code": code, "message": "m"}},
        })
        .to_string()
        .into_bytes()
    };
    let long_id = format!("{VM_ID}{long}");
    for (bytes, field) in [
        (body(&long_id, "X", "k"), "resource.id"),
        (body(VM_ID, &long, "k"), "failure.code"),
        (body(&format!("{VM_ID}\0"), "X", "k"), "resource.id"),
        (body(VM_ID, "X", "k\0"), "id"),
    ] {
        let mut st = NormalizerState::default();
        let err = normalize("azure.arm", &Input::new(&bytes, ts(OBSERVED)), &mut st).unwrap_err();
        match &err {
            NormalizeError::Shape { path, expected, .. } => {
                assert_eq!(path, field, "{err}");
                assert!(
                    expected.contains("at most 2048 bytes") || expected.contains("without NUL"),
                    "{err}"
                );
            }
            other => panic!("{field}: {other}"),
        }
        assert_eq!(
            st,
            NormalizerState::default(),
            "{field}: the state is unchanged"
        );
    }
    let mut st = NormalizerState::default();
    let evs = normalize(
        "azure.arm",
        &Input::new(&body(VM_ID, &ok, "k"), ts(OBSERVED)),
        &mut st,
    )
    .unwrap();
    assert_eq!(evs[0].failure.as_ref().unwrap().code, ok);
}

#[test]
fn ingest_errors_name_the_field() {
    let cases = [
        (
            json!({"idempotency_key": "k", "operation": "resize", "error": {"error": {"code": "X", "message": "m"}}}),
            "operation",
        ),
        (
            json!({"idempotency_key": "k", "operation": 7, "error": {"error": {"code": "X"}}}),
            "operation",
        ),
        (
            json!({"idempotency_key": "k", "operation": "create", "attempt": 0, "error": {"error": {"code": "X"}}}),
            "attempt",
        ),
        (
            json!({"idempotency_key": "k", "operation": "create", "attempt": "two", "error": {"error": {"code": "X"}}}),
            "attempt",
        ),
        (
            json!({"idempotency_key": "k", "operation": "create"}),
            "error",
        ),
        (
            json!({"idempotency_key": "k", "operation": "create", "error": 5}),
            "error",
        ),
        (
            json!({"idempotency_key": "k", "operation": "create", "error": "Allocation failed"}),
            "error",
        ),
        (
            json!({"idempotency_key": "k", "operation": "create", "error": "{\"code\": "}),
            "error",
        ),
        (
            json!({"idempotency_key": 5, "operation": "create", "error": {"error": {"code": "X"}}}),
            "idempotency_key",
        ),
        (
            json!({"idempotency_key": "k", "operation": "create", "request": "PUT", "error": {"error": {"code": "X"}}}),
            "request",
        ),
        (
            json!({"idempotency_key": "k", "operation": "create", "resource": 5, "error": {"error": {"code": "X"}}}),
            "resource",
        ),
        (
            json!({"idempotency_key": "k", "operation": "create", "resource": {"regoin": "eastus"}, "error": {"error": {"code": "X"}}}),
            "resource.regoin",
        ),
        (
            json!({"idempotency_key": "k", "operation": "create", "resource": {"tags": {"a": 1}}, "error": {"error": {"code": "X"}}}),
            "resource.tags.a",
        ),
        (
            json!({"idempotency_key": "k", "operation": "create", "error": {"error": {"code": 12}}}),
            "error.error.code",
        ),
    ];
    for (body, path) in cases {
        match norm(body.to_string().as_bytes()) {
            Err(NormalizeError::Shape { path: p, .. }) => assert_eq!(p, path, "{body}"),
            other => panic!("{body}: {other:?}"),
        }
    }
    // The did-you-mean for a misspelled resource field.
    let body = json!({"operation": "create", "resource": {"regoin": "eastus"}, "error": {"error": {"code": "X"}}});
    let e = norm(body.to_string().as_bytes()).unwrap_err().to_string();
    assert!(e.contains("did you mean `region`"), "{e}");
}

// ----------------------------------------------------------------------------------------
// Shapes 4 and 5 of the module documentation of `azure_arm`, written from the documented shapes.

/// Shape 4 (template deployment) as deployments report it: the Conflict's message is a JSON string (with
/// `\r\n`) of shape 3, whose detail's message is itself JSON of a plain error.
fn nested_deployment() -> Value {
    let innermost = json!({"error": {"code": "OSProvisioningTimedOut",
        "message": "OS Provisioning for VM 'vm-app-0' did not finish in the allotted time. The VM may still finish provisioning successfully. Please check provisioning state later.",
        "details": [{"code": "Hint", "target": "osProfile", "message": "Check the image.",
                     "details": [{"code": "SubHint", "message": "Nested."}]}]}});
    let shape3 = json!({"status": "Failed", "error": {"code": "ResourceDeploymentFailure",
        "message": "The resource operation completed with terminal provisioning state 'Failed'.",
        "details": [{"code": "BadRequest", "message": serde_json::to_string(&innermost).unwrap()}]}});
    let shape3_text = serde_json::to_string_pretty(&shape3)
        .unwrap()
        .replace('\n', "\r\n");
    json!({"code": "DeploymentFailed",
           "message": "At least one resource deployment operation failed. Please list deployment operations for details. Please see https://aka.ms/DeployOperations for usage details.",
           "details": [{"code": "Conflict", "message": shape3_text}]})
}

#[test]
fn deployment_wrapper_with_json_strings_at_two_levels() {
    let doc = nested_deployment();
    let e = only(norm_op(doc.to_string().as_bytes(), Operation::Create));
    assert!(is_hash_id(&e.id));
    assert_failure(
        &e,
        Operation::Create,
        "OSProvisioningTimedOut",
        Some("OS Provisioning for VM 'vm-app-0' did not finish in the allotted time. The VM may still finish provisioning successfully. Please check provisioning state later."),
        None,
        1,
        &[
            detail("Hint", Some("Check the image."), Some("osProfile")),
            detail("SubHint", Some("Nested."), None),
        ],
        None,
        Category::ProvisioningTimeout,
        false,
    );
    assert_eq!(e.raw.as_ref(), Some(&doc));
    // Never classified on a wrapper.
    for w in [
        "DeploymentFailed",
        "Conflict",
        "ResourceDeploymentFailure",
        "BadRequest",
    ] {
        assert_ne!(e.failure.as_ref().unwrap().code, w);
    }
}

#[test]
fn nesting_beyond_the_limit_is_a_typed_error() {
    // Wrappers in details (JSON strings double their escaping per level, so the payload size
    // limit stops that kind of nesting first).
    let mut v = json!({"code": "AllocationFailed", "message": "Allocation failed."});
    for _ in 0..(azure_arm::MAX_NESTING + 2) {
        v = json!({"code": "DeploymentFailed", "message": "m", "details": [v]});
    }
    let bytes = v.to_string().into_bytes();
    match azure_arm::normalize_with_operation(&Input::new(&bytes, ts(OBSERVED)), Operation::Create)
    {
        Err(NormalizeError::Shape { expected, path, .. }) => {
            assert!(expected.contains("nested at most"), "{expected}");
            assert!(path.starts_with("details[0].details[0]"), "{path}");
        }
        other => panic!("{other:?}"),
    }
    // Within the limit it unwraps.
    let mut v = json!({"code": "AllocationFailed", "message": "Allocation failed."});
    for _ in 0..8 {
        v = json!({"code": "Conflict", "message": v.to_string()});
    }
    let e = only(norm_op(v.to_string().as_bytes(), Operation::Create));
    assert_eq!(e.failure.unwrap().code, "AllocationFailed");
}

const OP_ID: &str = "7b7d0f36-6f28-4a8b-9c0e-2f6a4c1e9d55";
const EVENT_DATA_ID: &str = "e2f1c6a4-0d3b-4f51-8b0c-6a9d2e7f1b33";

fn capz_vm_id() -> String {
    "/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/resourceGroups/capz-e2e/providers/Microsoft.Compute/virtualMachines/capz-md-0-x7k2p".into()
}

/// Shape 5: an activity-log Administrative event in its REST form (operationName, status,
/// category ... as `{"value", "localizedValue"}`, as the REST API returns them) whose
/// `properties.statusMessage` is a JSON string of shape 3.
fn activity_event(status: &str) -> Value {
    let status_message = json!({"status": "Failed", "error": {"code": "ResourceOperationFailure",
        "message": "The resource operation completed with terminal provisioning state 'Failed'.",
        "details": [{"code": "VMExtensionProvisioningError",
                     "message": "VM has reported a failure when processing extension 'CustomScriptExtension'. Error message: \"Error downloading https://capzartifacts.blob.core.windows.net/scripts/bootstrap.ps1 after 29 attempts: The remote name could not be resolved: 'capzartifacts.blob.core.windows.net'\"."}]}});
    json!({
        "authorization": {"action": "Microsoft.Compute/virtualMachines/write", "scope": capz_vm_id()},
        "caller": "4d5e8a1c-2b3f-4c6d-9e8f-0a1b2c3d4e5f",
        "channels": "Operation",
        "correlationId": "1c8f2a9e-3d4b-4e6f-8a0b-2c4d6e8f0a1b",
        "description": "",
        "eventDataId": EVENT_DATA_ID,
        "eventName": {"value": "EndRequest", "localizedValue": "End request"},
        "category": {"value": "Administrative", "localizedValue": "Administrative"},
        "eventTimestamp": "2024-07-29T14:03:21.5512345Z",
        "id": format!("{}/events/{EVENT_DATA_ID}/ticks/638578370015512345", capz_vm_id()),
        "level": "Error",
        "operationId": OP_ID,
        "operationName": {"value": "Microsoft.Compute/virtualMachines/write", "localizedValue": "Create or Update Virtual Machine"},
        "resourceGroupName": "capz-e2e",
        "resourceProviderName": {"value": "Microsoft.Compute", "localizedValue": "Microsoft.Compute"},
        "resourceType": {"value": "Microsoft.Compute/virtualMachines", "localizedValue": "Microsoft.Compute/virtualMachines"},
        "resourceId": capz_vm_id(),
        "status": {"value": status, "localizedValue": status},
        "subStatus": {"value": "Conflict", "localizedValue": "Conflict (HTTP Status Code: 409)"},
        "submissionTimestamp": "2024-07-29T14:05:02.0000000Z",
        "subscriptionId": "0b1f6471-1bf0-4dda-aec3-cb9272f09590",
        "tenantId": "72f988bf-86f1-41af-91ab-2d7cd011db47",
        "properties": {
            "statusCode": "Conflict",
            "statusMessage": status_message.to_string(),
            "eventCategory": "Administrative",
            "entity": capz_vm_id(),
            "message": "Microsoft.Compute/virtualMachines/write",
            "hierarchy": "72f988bf-86f1-41af-91ab-2d7cd011db47/0b1f6471-1bf0-4dda-aec3-cb9272f09590"
        },
        "relatedEvents": []
    })
}

#[test]
fn activity_log_event_with_a_status_message_string() {
    let ev = activity_event("Failed");
    let input_bytes = ev.to_string().into_bytes();
    let input = Input::new(&input_bytes, ts(OBSERVED)).self_name("capz-md-0-x7k2p");
    let e = only(norm_input(&input).unwrap());
    assert_eq!(e.id, format!("azure.arm:{OP_ID}"));
    assert_eq!(e.time, ts("2024-07-29T14:03:21.5512345Z"));
    assert_eq!(
        e.resource,
        Resource {
            id: Some(capz_vm_id()),
            name: Some("capz-md-0-x7k2p".into()),
            type_: Some("Microsoft.Compute/virtualMachines".into()),
            is_self: Some(true),
            ..Resource::default()
        }
    );
    let msg = "VM has reported a failure when processing extension 'CustomScriptExtension'. Error message: \"Error downloading https://capzartifacts.blob.core.windows.net/scripts/bootstrap.ps1 after 29 attempts: The remote name could not be resolved: 'capzartifacts.blob.core.windows.net'\".";
    assert_failure(
        &e,
        Operation::Create,
        "VMExtensionProvisioningError",
        Some(msg),
        Some(409),
        1,
        &[],
        None,
        Category::Network,
        false,
    );
    assert_eq!(e.raw.as_ref(), Some(&ev));
}

#[test]
fn activity_log_lists_keep_only_failures() {
    let mut started = activity_event("Started");
    started["properties"] = json!({"eventCategory": "Administrative"});
    let succeeded = activity_event("Succeeded");
    let failed = activity_event("Failed");
    let mut policy = activity_event("Failed");
    policy["operationName"] = json!({"value": "Microsoft.Authorization/policies/audit/action", "localizedValue": "'audit' Policy action."});
    let mut no_message = activity_event("Failed");
    no_message["properties"] = json!({"statusCode": "Conflict"});
    let list = json!({"value": [started, succeeded, failed.clone(), policy, no_message]});
    let e = only(norm(list.to_string().as_bytes()).unwrap());
    assert_eq!(e.raw.as_ref(), Some(&failed));
    // `az monitor activity-log list` prints a bare array.
    let arr = json!([activity_event("Succeeded"), activity_event("Failed")]);
    assert_eq!(norm(arr.to_string().as_bytes()).unwrap().len(), 1);
    assert!(norm(b"[]").unwrap().is_empty());
    assert!(norm(br#"{"value": []}"#).unwrap().is_empty());
    // A single event that is not a failure gives nothing.
    assert!(norm(activity_event("Succeeded").to_string().as_bytes())
        .unwrap()
        .is_empty());
    // A single event whose operation cannot be told is refused, not guessed.
    let mut p = activity_event("Failed");
    p["operationName"] = json!("Microsoft.Authorization/policies/audit/action");
    assert!(matches!(
        norm(p.to_string().as_bytes()),
        Err(NormalizeError::WrongPayload { .. })
    ));
}

#[test]
fn activity_log_flat_form_and_alert_envelopes() {
    // Flat strings (webhook / export form), operationName a start action, eventDataId only.
    let flat = json!({
        "eventDataId": EVENT_DATA_ID, "eventTimestamp": "2024-07-29T14:03:21Z",
        "operationName": "Microsoft.Compute/virtualMachines/start/action", "status": "Failed",
        "resourceId": capz_vm_id(),
        "properties": {"statusCode": "Conflict", "statusMessage": "{\"error\":{\"code\":\"AllocationFailed\",\"message\":\"Allocation failed. Please try reducing the VM size or number of VMs, retry later, or try deploying to a different Availability Set or different Azure location.\"}}"}
    });
    let e = only(norm(flat.to_string().as_bytes()).unwrap());
    assert_eq!(e.id, format!("azure.arm:{EVENT_DATA_ID}"));
    let f = e.failure.as_ref().unwrap();
    assert_eq!(
        (f.operation, f.category, f.http_status),
        (Operation::Start, Category::Allocation, Some(409))
    );

    // Legacy activity-log alert webhook.
    let webhook = json!({"schemaId": "Microsoft.Insights/activityLogs",
                         "data": {"status": "Activated", "context": {"activityLog": flat}}});
    let w = only(norm(webhook.to_string().as_bytes()).unwrap());
    assert_eq!(w.failure, e.failure);
    assert_eq!(w.raw.as_ref(), Some(&webhook));

    // Common alert schema: no resourceId in alertContext, the target comes from essentials.
    let mut ctx = flat.clone();
    ctx.as_object_mut().unwrap().remove("resourceId");
    let common = json!({"schemaId": "azureMonitorCommonAlertSchema",
        "data": {"essentials": {"alertTargetIDs": [capz_vm_id().to_lowercase()], "monitorCondition": "Fired"},
                 "alertContext": ctx}});
    let c = only(norm(common.to_string().as_bytes()).unwrap());
    assert_eq!(c.resource.name.as_deref(), Some("capz-md-0-x7k2p"));
    assert_eq!(c.failure.as_ref().unwrap().code, "AllocationFailed");
}

#[test]
fn activity_log_plain_text_status_message_uses_the_status_code() {
    let ev = json!({"operationId": "op-9", "eventTimestamp": "2024-07-29T14:03:21Z",
        "operationName": {"value": "Microsoft.Compute/virtualMachines/delete"}, "status": {"value": "Failed"},
        "properties": {"statusCode": "Conflict", "statusMessage": "The operation failed."}});
    let e = only(norm(ev.to_string().as_bytes()).unwrap());
    assert_failure(
        &e,
        Operation::Delete,
        "Conflict",
        Some("The operation failed."),
        Some(409),
        1,
        &[],
        None,
        Category::Conflict,
        false,
    );
    // Without statusMessage there is nothing to read.
    let ev = json!({"operationId": "op-9", "operationName": "Microsoft.Compute/virtualMachines/delete", "status": "Failed", "properties": {}});
    match norm(ev.to_string().as_bytes()) {
        Err(NormalizeError::Shape { path, .. }) => assert_eq!(path, "properties.statusMessage"),
        other => panic!("{other:?}"),
    }
}

// ----------------------------------------------------------------------------------------
// Other shapes and edge cases.

#[test]
fn async_status_that_did_not_fail_gives_nothing() {
    for s in ["Succeeded", "InProgress", "Canceled"] {
        let doc = json!({"status": s, "name": "op", "startTime": "2024-01-01T00:00:00Z"});
        assert!(norm(doc.to_string().as_bytes()).unwrap().is_empty(), "{s}");
    }
    // A failure with an error and a numeric status (the Compute error format).
    let doc = json!({"status": "409", "error": {"code": "Conflict", "message": "m"}});
    let e = only(norm_op(doc.to_string().as_bytes(), Operation::Update));
    assert_eq!(e.failure.unwrap().http_status, Some(409));
}

#[test]
fn resource_health_flat_error_body() {
    // Resource Health's own error body: {code, message, details} with `details` a string.
    let doc = json!({"code": "InternalServerError", "message": "Encountered internal server error. Diagnostic information: timestamp '20240101T000000Z'.", "details": "Retry the request."});
    let e = only(norm_op(doc.to_string().as_bytes(), Operation::Start));
    assert_failure(
        &e,
        Operation::Start,
        "InternalServerError",
        Some(doc["message"].as_str().unwrap()),
        None,
        1,
        &[],
        None,
        Category::Internal,
        true,
    );
}

#[test]
fn odata_v3_message_object() {
    let doc = json!({"odata.error": {"code": "AnotherOperationInProgress", "message": {"lang": "en-US", "value": "Another operation is in progress."}}});
    let e = only(norm_op(doc.to_string().as_bytes(), Operation::Update));
    let f = e.failure.unwrap();
    assert_eq!(
        (
            f.code.as_str(),
            f.message.as_deref(),
            f.category,
            f.transient
        ),
        (
            "AnotherOperationInProgress",
            Some("Another operation is in progress."),
            Category::Conflict,
            true
        )
    );
}

#[test]
fn wrappers_without_an_inner_error_and_a_plain_conflict() {
    let doc = json!({"error": {"code": "DeploymentFailed", "message": "At least one resource deployment operation failed."}});
    let f = only(norm_op(doc.to_string().as_bytes(), Operation::Create))
        .failure
        .unwrap();
    assert_eq!(
        (f.code.as_str(), f.category, f.transient),
        ("DeploymentFailed", Category::Unknown, false)
    );
    let doc = json!({"error": {"code": "Conflict", "message": "Disk resizing is allowed only when creating a VM or when the VM is deallocated.", "details": [{"message": "no code here"}]}});
    let f = only(norm_op(doc.to_string().as_bytes(), Operation::Update))
        .failure
        .unwrap();
    assert_eq!(
        (f.code.as_str(), f.category),
        ("Conflict", Category::Conflict)
    );
}

#[test]
fn http_response_with_date_and_request_id() {
    let text = "HTTP/1.1 409 Conflict\r\nDate: Wed, 13 Oct 2021 07:02:15 GMT\r\nx-ms-request-id: 5d1e0a42-7a3e-4c3b-9a3a-1f2e3d4c5b6a\r\nRetry-After: Wed, 13 Oct 2021 07:03:15 GMT\r\n\r\n{\"error\":{\"code\":\"SkuNotAvailable\",\"message\":\"The requested VM size is currently not available in location 'eastus'.\"}}";
    let e = only(norm_op(text.as_bytes(), Operation::Create));
    assert_eq!(e.id, "azure.arm:5d1e0a42-7a3e-4c3b-9a3a-1f2e3d4c5b6a");
    assert_eq!(e.time, ts("2021-10-13T07:02:15Z"));
    let f = e.failure.unwrap();
    assert_eq!(
        (f.http_status, f.retry_after_s, f.category),
        (Some(409), None, Category::Allocation),
        "an HTTP-date Retry-After is not seconds"
    );
}

#[test]
fn malformed_http_and_json_are_typed_errors() {
    for (bytes, want) in [
        (&b"HTTP/1.1 abc Nope\r\n\r\n{}"[..], "HTTP status line"),
        (
            &b"HTTP/1.1 429 Too Many\r\nno colon here\r\n\r\n{}"[..],
            "HTTP header line 2",
        ),
    ] {
        match norm(bytes) {
            Err(NormalizeError::Shape { path, .. }) => assert_eq!(path, want),
            other => panic!("{other:?}"),
        }
    }
    assert!(matches!(
        norm(b"HTTP/1.1 429 Too Many\r\n\r\n"),
        Err(NormalizeError::WrongPayload { .. })
    ));
    match norm(b"HTTP/1.1 429 Too Many\r\nA: b\r\n\r\n{\"code\": ") {
        Err(NormalizeError::Json { line, .. }) => assert_eq!(line, 4),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        norm(b"{\"error\": "),
        Err(NormalizeError::Json { .. })
    ));
    assert!(matches!(
        norm(b"\xff\xfe"),
        Err(NormalizeError::NotUtf8 { .. })
    ));
    assert!(matches!(
        norm(b"42"),
        Err(NormalizeError::WrongPayload { .. })
    ));
    assert!(matches!(
        norm(b"{}"),
        Err(NormalizeError::WrongPayload { .. })
    ));
    match norm(br#"{"status":"Failed","endTime":"yesterday","error":{"code":"X"}}"#) {
        Err(NormalizeError::Time { path, .. }) => assert_eq!(path, "endTime"),
        other => panic!("{other:?}"),
    }
    match norm(br#"{"error":{"code":"X","details":[{"code":"Y","target":{"a":1}}]}}"#) {
        Err(NormalizeError::Shape { path, .. }) => assert_eq!(path, "error.details[0].target"),
        other => panic!("{other:?}"),
    }
    match norm(br#"{"error":{"message":"no code"}}"#) {
        Err(NormalizeError::Shape { path, .. }) => assert_eq!(path, "error.code"),
        other => panic!("{other:?}"),
    }
    // Untrusted text in errors is escaped.
    let e = norm(b"{\"idempotency_key\":\"k\",\"operation\":\"\\u001b[31mred\",\"error\":{}}")
        .unwrap_err()
        .to_string();
    assert!(!e.contains('\u{1b}'), "{e}");
}

#[test]
fn hash_ids_use_the_payload_time_not_the_observation_time() {
    let with_time = fixture("arm-error-vmextensionprovisioningtimeout.json");
    let mut doc: Value = serde_json::from_slice(&with_time).unwrap();
    doc["endTime"] = json!("2017-10-10T21:00:44Z");
    let bytes = doc.to_string().into_bytes();
    let a =
        azure_arm::normalize_with_operation(&Input::new(&bytes, ts(OBSERVED)), Operation::Create)
            .unwrap();
    let b = azure_arm::normalize_with_operation(
        &Input::new(&bytes, ts("2026-06-01T00:00:00Z")),
        Operation::Create,
    )
    .unwrap();
    assert_eq!(a[0].id, b[0].id);
    assert_eq!(a[0].time, ts("2017-10-10T21:00:44Z"));
    // Without a payload time and without state (normalize_with_operation keeps none),
    // observed_at is the only epoch there is: the same bytes at another moment are another
    // report. With a persisted state they are not (next test).
    let bare = fixture("arm-error-skunotavailable.json");
    let a =
        azure_arm::normalize_with_operation(&Input::new(&bare, ts(OBSERVED)), Operation::Create)
            .unwrap();
    let a2 =
        azure_arm::normalize_with_operation(&Input::new(&bare, ts(OBSERVED)), Operation::Create)
            .unwrap();
    let b = azure_arm::normalize_with_operation(
        &Input::new(&bare, ts("2026-06-01T00:00:00Z")),
        Operation::Create,
    )
    .unwrap();
    assert_eq!(a[0].id, a2[0].id);
    assert_ne!(a[0].id, b[0].id);
}

/// Without an id or a time of its own, a failure's id and time come from when its content was
/// first seen (kept in the normalizer state), never from the observation time of a re-read.
#[test]
fn hash_ids_use_the_first_seen_time_kept_in_the_state() {
    let bare = fixture("arm-error-skunotavailable.json");
    let mut st = NormalizerState::default();
    let at = |when: &str, st: &mut NormalizerState| {
        let input = Input::new(&bare, ts(when)).operation(Operation::Create);
        only(normalize("azure.arm", &input, st).unwrap())
    };
    let first = at(OBSERVED, &mut st);
    assert!(is_hash_id(&first.id));
    assert_eq!(first.time, ts(OBSERVED));
    assert_eq!(st.azure_arm.first_seen.len(), 1);
    // A re-read an hour (or a month) later: the same event.
    let again = at("2026-05-01T11:00:00Z", &mut st);
    assert_eq!(again.id, first.id);
    assert_eq!(again.time, ts(OBSERVED));
    assert_eq!(again, first);
    // The state survives a round trip through JSON (the host's state file).
    let mut st: NormalizerState =
        serde_json::from_str(&serde_json::to_string(&st).unwrap()).unwrap();
    assert_eq!(at("2026-06-01T00:00:00Z", &mut st).id, first.id);
    // Other content, or another attempt, is another event with its own first-seen time.
    let body = |attempt: i64| {
        json!({"resource": VM_ID, "operation": "create", "attempt": attempt,
               "error": fixture_json("arm-error-skunotavailable.json")})
        .to_string()
    };
    let run = |b: &str, when: &str, st: &mut NormalizerState| {
        only(normalize("azure.arm", &Input::new(b.as_bytes(), ts(when)), st).unwrap())
    };
    let a1 = run(&body(1), "2026-05-01T12:00:00Z", &mut st);
    let a1_later = run(&body(1), "2026-05-02T12:00:00Z", &mut st);
    let a2 = run(&body(2), "2026-05-02T12:00:00Z", &mut st);
    assert_eq!(a1.id, a1_later.id);
    assert_eq!(a1_later.time, ts("2026-05-01T12:00:00Z"));
    assert_ne!(a1.id, a2.id);
    assert_ne!(a1.id, first.id);
    assert_eq!(st.azure_arm.first_seen.len(), 3);
    // Payloads with an id or a time of their own leave the state alone.
    let before = st.clone();
    run(
        &activity_event("Failed").to_string(),
        "2026-05-03T00:00:00Z",
        &mut st,
    );
    let with_id = fixture("arm-error-vmextensionprovisioningerror.json");
    let input = Input::new(&with_id, ts("2026-05-03T00:00:00Z")).operation(Operation::Extension);
    only(normalize("azure.arm", &input, &mut st).unwrap());
    assert_eq!(st, before);
    // A payload that fails leaves the state alone, even after an entry that would have been
    // recorded (a list: the first entry is fine, the second is not).
    let list = json!([
        {"error": {"code": "NewCode", "message": "m"}},
        {"error": {"code": 5}}
    ]);
    let bytes = list.to_string().into_bytes();
    let input = Input::new(&bytes, ts(OBSERVED)).operation(Operation::Create);
    assert!(normalize("azure.arm", &input, &mut st).is_err());
    assert_eq!(st, before);
}

/// The state is bounded: at most MAX_TRACKED first-seen times, the oldest dropped.
#[test]
fn first_seen_state_is_bounded() {
    let mut st = NormalizerState::default();
    let base = ts(OBSERVED);
    let n = azure_arm::MAX_TRACKED + 5;
    let mut ids = Vec::new();
    for i in 0..n {
        let doc = json!({"error": {"code": format!("Code{i}"), "message": "m"}}).to_string();
        let when = base + chrono::Duration::seconds(i as i64);
        let input = Input::new(doc.as_bytes(), when).operation(Operation::Create);
        ids.push(only(normalize("azure.arm", &input, &mut st).unwrap()).id);
    }
    assert_eq!(st.azure_arm.first_seen.len(), azure_arm::MAX_TRACKED);
    // The newest are kept: a re-read much later is the same event.
    let doc = json!({"error": {"code": format!("Code{}", n - 1), "message": "m"}}).to_string();
    let input =
        Input::new(doc.as_bytes(), base + chrono::Duration::days(30)).operation(Operation::Create);
    assert_eq!(
        only(normalize("azure.arm", &input, &mut st).unwrap()).id,
        ids[n - 1]
    );
    // The oldest was dropped: read again, it is a new first sighting.
    let doc = json!({"error": {"code": "Code0", "message": "m"}}).to_string();
    let input =
        Input::new(doc.as_bytes(), base + chrono::Duration::days(30)).operation(Operation::Create);
    assert_ne!(
        only(normalize("azure.arm", &input, &mut st).unwrap()).id,
        ids[0]
    );
    assert_eq!(st.azure_arm.first_seen.len(), azure_arm::MAX_TRACKED);
}

/// AWS scheduled events have a `Code` too: an ARM error object has `code` and `message`, and
/// a bare object without a message is another vendor's payload, even with the operation given.
#[test]
fn aws_scheduled_events_are_not_arm_failures() {
    for f in [
        "aws-scheduled-events-history-canceled-completed.json",
        "aws-scheduled-events-instance-reboot.json",
        "aws-scheduled-events-instance-retirement.json",
        "aws-scheduled-events-system-maintenance.json",
        "aws-scheduled-events-system-reboot-active.json",
    ] {
        let bytes = fixture(f);
        for r in [
            norm(&bytes),
            azure_arm::normalize_with_operation(
                &Input::new(&bytes, ts(OBSERVED)),
                Operation::Create,
            ),
        ] {
            match r {
                Err(NormalizeError::WrongPayload { reason, .. }) => {
                    assert!(reason.contains("AWS scheduled event"), "{f}: {reason}")
                }
                other => panic!("{f}: {other:?}"),
            }
        }
    }
    // A bare object needs both; with the `error` wrapper the code alone is enough.
    let r = norm_op(br#"{"error": {"code": "X"}}"#, Operation::Create);
    assert_eq!(only(r).failure.unwrap().code, "X");
    for doc in [
        &br#"{"code": "X"}"#[..],
        br#"{"Code": "X", "Description": "d"}"#,
    ] {
        let r =
            azure_arm::normalize_with_operation(&Input::new(doc, ts(OBSERVED)), Operation::Create);
        assert!(
            matches!(r, Err(NormalizeError::WrongPayload { .. })),
            "{r:?}"
        );
    }
    let e = only(norm_op(
        br#"{"code": "X", "message": ""}"#,
        Operation::Create,
    ));
    assert_eq!(e.failure.unwrap().message, None);
}

#[test]
fn oversized_payloads_are_refused_on_every_entry_point() {
    let big = vec![b' '; keel_engine::normalize::MAX_PAYLOAD_BYTES + 1];
    assert!(matches!(norm(&big), Err(NormalizeError::TooLarge { .. })));
    let r = azure_arm::normalize_with_operation(&Input::new(&big, ts(OBSERVED)), Operation::Create);
    assert!(matches!(r, Err(NormalizeError::TooLarge { .. })));
}

#[test]
fn the_callers_operation_wins() {
    let ev = activity_event("Failed");
    let e = only(norm_op(ev.to_string().as_bytes(), Operation::Update));
    assert_eq!(e.failure.unwrap().operation, Operation::Update);
}

// ----------------------------------------------------------------------------------------
// Which layer wins: ids, times and statuses (cargo-mutants survivors).

/// An `Azure-AsyncOperation` poll as the host captured it: the HTTP envelope (its own `Date`
/// and `x-ms-request-id`) around the operation status of the fixture.
fn polled_async_status(request_id: &str, date: &str) -> String {
    let status = String::from_utf8(fixture("arm-error-vmextensionprovisioningerror.json")).unwrap();
    format!("HTTP/1.1 200 OK\r\nDate: {date}\r\nx-ms-request-id: {request_id}\r\nContent-Type: application/json; charset=utf-8\r\n\r\n{status}")
}

/// The operation's `name` identifies the failure; a request id only one poll of it, so a
/// second poll of the same failed operation must be the same event, not a new one.
#[test]
fn an_async_operation_name_wins_over_a_request_id() {
    let first = polled_async_status(
        "5d1e0a42-7a3e-4c3b-9a3a-1f2e3d4c5b6a",
        "Tue, 10 Oct 2017 21:01:10 GMT",
    );
    let again = polled_async_status(
        "9a4b2c1d-0e8f-4a7b-8c6d-5e4f3a2b1c0d",
        "Tue, 10 Oct 2017 21:01:40 GMT",
    );
    let a = only(norm_op(first.as_bytes(), Operation::Extension));
    let b = only(norm_op(again.as_bytes(), Operation::Extension));
    assert_eq!(a.id, "azure.arm:c87e56e6-7d73-4863-8ae1-daa0cb9073f2");
    assert_eq!(a.id, b.id);
}

/// The operation's `endTime` is when it failed; the HTTP `Date` only when it was polled, which
/// would move the event (and a re-poll would disagree with the first).
#[test]
fn an_async_operations_end_time_wins_over_the_http_date() {
    let text = polled_async_status(
        "5d1e0a42-7a3e-4c3b-9a3a-1f2e3d4c5b6a",
        "Tue, 10 Oct 2017 21:01:10 GMT",
    );
    let e = only(norm_op(text.as_bytes(), Operation::Extension));
    assert_eq!(e.time, ts("2017-10-10T21:00:44.4626192Z"));
}

/// Both spellings of an activity event's time are read, `eventTimestamp` first: a `time` beside
/// it must not move the event to another moment.
#[test]
fn an_activity_events_event_timestamp_wins_over_its_time() {
    let ev = json!({
        "eventDataId": EVENT_DATA_ID, "operationName": "Microsoft.Compute/virtualMachines/start/action",
        "status": "Failed", "resourceId": capz_vm_id(),
        "eventTimestamp": "2024-07-29T14:03:21Z", "time": "2024-07-29T14:05:02Z",
        "properties": {"statusCode": "Conflict", "statusMessage": "{\"error\":{\"code\":\"AllocationFailed\",\"message\":\"Allocation failed.\"}}"}
    });
    let e = only(norm(ev.to_string().as_bytes()).unwrap());
    assert_eq!(e.time, ts("2024-07-29T14:03:21Z"));
    // Either alone is the event's time.
    let mut only_time = ev.clone();
    only_time.as_object_mut().unwrap().remove("eventTimestamp");
    let e = only(norm(only_time.to_string().as_bytes()).unwrap());
    assert_eq!(e.time, ts("2024-07-29T14:05:02Z"));
}

/// The caller saw the HTTP response and is read first: a status inside the payload never
/// overrides it (classification depends on the status); and a number outside 100-599 is no
/// HTTP status at all.
#[test]
fn the_callers_http_status_wins_and_out_of_range_statuses_are_ignored() {
    let bytes = activity_event("Failed").to_string().into_bytes();
    let e = only(norm_input(&Input::new(&bytes, ts(OBSERVED)).http_status(429)).unwrap());
    assert_eq!(
        e.failure.unwrap().http_status,
        Some(429),
        "not the event's 409"
    );
    let e = only(norm(&bytes).unwrap());
    assert_eq!(e.failure.unwrap().http_status, Some(409));
    for status in ["0", "99", "600", "1000"] {
        let doc = json!({"status": status, "error": {"code": "Conflict", "message": "m"}});
        let e = only(norm_op(doc.to_string().as_bytes(), Operation::Update));
        assert_eq!(e.failure.unwrap().http_status, None, "{status}");
    }
}

/// Only `operationName` together with an activity-log field makes an activity event: an error
/// body that carries one of the two (say the correlation id a host logged beside it) is still
/// read as the error body it is, not refused for lacking `properties.statusMessage`.
#[test]
fn an_error_body_with_one_activity_log_field_is_still_an_error_body() {
    let error = fixture_json("arm-error-zonalallocationfailed.json");
    for (key, value) in [
        (
            "correlationId",
            json!("1c8f2a9e-3d4b-4e6f-8a0b-2c4d6e8f0a1b"),
        ),
        (
            "operationName",
            json!("Microsoft.Compute/virtualMachines/write"),
        ),
    ] {
        let mut doc = error.clone();
        doc[key] = value;
        let e = only(norm_op(doc.to_string().as_bytes(), Operation::Create));
        assert_eq!(e.failure.unwrap().category, Category::Allocation, "{key}");
    }
}

/// A `name` is the async operation's id only in an operation status; an operation status is
/// told by its `status` or by either of its times (a host may log one without the others), and
/// a re-read of it must keep that id rather than a content hash.
#[test]
fn a_name_beside_an_operation_time_is_the_operations_id() {
    let error = json!({"code": "VMExtensionProvisioningError", "message": "VM has reported a failure when processing extension 'customScript'."});
    for time in ["startTime", "endTime"] {
        let doc = json!({"name": "c87e56e6-7d73-4863-8ae1-daa0cb9073f2", time: "2017-10-10T21:00:44Z", "error": error});
        let e = only(norm_op(doc.to_string().as_bytes(), Operation::Extension));
        assert_eq!(
            e.id, "azure.arm:c87e56e6-7d73-4863-8ae1-daa0cb9073f2",
            "{time}"
        );
    }
    let doc = json!({"name": "c87e56e6-7d73-4863-8ae1-daa0cb9073f2", "error": error});
    let e = only(norm_op(doc.to_string().as_bytes(), Operation::Extension));
    assert!(
        is_hash_id(&e.id),
        "a plain error body's name is no id: {}",
        e.id
    );
}

/// Removing an extension is an extension operation (its failures are the extension's, with the
/// extension transforms), not a delete of the VM.
#[test]
fn deleting_an_extension_is_an_extension_operation() {
    let ev = json!({
        "eventDataId": EVENT_DATA_ID, "eventTimestamp": "2024-07-29T14:03:21Z",
        "operationName": {"value": "Microsoft.Compute/virtualMachines/extensions/delete", "localizedValue": "Delete Virtual Machine Extension"},
        "status": {"value": "Failed"}, "resourceId": format!("{}/extensions/CustomScriptExtension", capz_vm_id()),
        "properties": {"statusCode": "Conflict", "statusMessage": "{\"error\":{\"code\":\"VMExtensionProvisioningError\",\"message\":\"VM has reported a failure when processing extension 'CustomScriptExtension'.\"}}"}
    });
    let e = only(norm(ev.to_string().as_bytes()).unwrap());
    assert_eq!(e.failure.unwrap().operation, Operation::Extension);
    let body = json!({"idempotency_key": "k-ext", "resource": VM_ID,
        "operation": "Microsoft.Compute/virtualMachines/extensions/delete",
        "error": {"error": {"code": "VMExtensionProvisioningError", "message": "m"}}});
    let e = only(norm(body.to_string().as_bytes()).unwrap());
    assert_eq!(e.failure.unwrap().operation, Operation::Extension);
}

// ----------------------------------------------------------------------------------------
// Nesting limits, empty fields and the request body (cargo-mutants survivors).

/// An async status that is not `Failed` but carries an error is still a failure (ARM cancels a
/// PUT preempted by a newer one with `Canceled` and `OperationPreempted`); `Failed` without
/// an error is not an error body at all.
#[test]
fn a_canceled_status_with_an_error_is_a_failure_and_failed_without_one_is_refused() {
    // A dropped failure is a failure the engine never decides on.
    let doc = json!({"name": "op-7", "status": "Canceled", "startTime": "2024-03-01T09:00:00Z",
        "endTime": "2024-03-01T09:00:04Z",
        "error": {"code": "OperationPreempted", "message": "Operation execution has been preempted by a more recent operation."}});
    let e = only(norm_op(doc.to_string().as_bytes(), Operation::Update));
    assert_eq!(e.id, "azure.arm:op-7");
    assert_eq!(e.failure.unwrap().code, "OperationPreempted");
    let doc = json!({"name": "op-8", "status": "Failed", "startTime": "2024-03-01T09:00:00Z"});
    let r = azure_arm::normalize_with_operation(
        &Input::new(doc.to_string().as_bytes(), ts(OBSERVED)),
        Operation::Update,
    );
    match r {
        Err(NormalizeError::WrongPayload { reason, .. }) => {
            assert!(reason.contains("no `error` object"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

/// `wrappers` deployment wrappers around a `Conflict` whose message is JSON of an error member
/// that is itself a JSON string of the cause: every kind of hop (a wrapper's detail, a message
/// holding JSON, an `error` member, a string holding JSON) on the way in, the cause
/// `wrappers + 3` levels deep.
fn nested_through_every_hop(wrappers: usize) -> Value {
    let cause = json!({"code": "AllocationFailed", "message": "Allocation failed. We do not have sufficient capacity for the requested VM size in this region."});
    let in_a_string = json!({"error": cause.to_string()});
    let mut v = json!({"code": "Conflict", "message": in_a_string.to_string()});
    for _ in 0..wrappers {
        v = json!({"code": "DeploymentFailed",
            "message": "At least one resource deployment operation failed. Please list deployment operations for details.",
            "details": [v]});
    }
    v
}

/// Every hop counts towards `MAX_NESTING`, and the limit itself is allowed: a hop that did not
/// count would let a hostile payload nest without bound, an off-by-one would refuse a real one.
#[test]
fn every_kind_of_hop_counts_towards_the_nesting_limit_and_the_limit_itself_is_allowed() {
    let at_limit = nested_through_every_hop(azure_arm::MAX_NESTING - 3);
    let e = only(norm_op(at_limit.to_string().as_bytes(), Operation::Create));
    assert_eq!(e.failure.unwrap().code, "AllocationFailed");
    let past = nested_through_every_hop(azure_arm::MAX_NESTING - 2);
    let bytes = past.to_string().into_bytes();
    match azure_arm::normalize_with_operation(&Input::new(&bytes, ts(OBSERVED)), Operation::Create)
    {
        Err(NormalizeError::Shape { expected, path, .. }) => {
            assert_eq!(
                expected,
                format!(
                    "errors nested at most {} levels deep",
                    azure_arm::MAX_NESTING
                )
            );
            let wrappers = "details[0].".repeat(azure_arm::MAX_NESTING - 2);
            assert_eq!(path, format!("{wrappers}message(JSON).error(JSON)"));
        }
        other => panic!("{other:?}"),
    }
}

/// An error whose `details[]` nest `levels` deep, one `Hint` per level.
fn error_with_hints(levels: usize) -> Value {
    let mut details = Value::Null;
    for i in (1..=levels).rev() {
        let mut d = json!({"code": "Hint", "message": format!("level {i}")});
        if !details.is_null() {
            d["details"] = json!([details]);
        }
        details = d;
    }
    json!({"error": {"code": "OSProvisioningTimedOut",
        "message": "OS Provisioning for VM 'web-1' did not finish in the allotted time.",
        "details": [details]}})
}

/// `details[]` nest at most `MAX_NESTING` levels counted from the root, the error's own
/// level included: under `{"error": ...}`, `MAX_NESTING - 1` levels of details are kept whole
/// and one more is refused.
#[test]
fn details_nest_to_the_limit_and_no_deeper() {
    // Details are flattened recursively: the bound is what keeps a hostile body cheap, and an
    // off-by-one would refuse (or truncate) a real one.
    let allowed = azure_arm::MAX_NESTING - 1;
    let at_limit = error_with_hints(allowed);
    let e = only(norm_op(at_limit.to_string().as_bytes(), Operation::Create));
    let want: Vec<FailureDetail> = (1..=allowed)
        .map(|i| detail("Hint", Some(&format!("level {i}")), None))
        .collect();
    assert_eq!(e.failure.unwrap().details, want);
    let past = error_with_hints(allowed + 1);
    let bytes = past.to_string().into_bytes();
    match azure_arm::normalize_with_operation(&Input::new(&bytes, ts(OBSERVED)), Operation::Create)
    {
        Err(NormalizeError::Shape { expected, path, .. }) => {
            assert_eq!(
                expected,
                format!(
                    "details nested at most {} levels deep",
                    azure_arm::MAX_NESTING
                )
            );
            assert_eq!(
                path,
                format!("error.{}details", "details[0].".repeat(allowed + 1))
            );
        }
        other => panic!("{other:?}"),
    }
}

/// An empty or blank `code` is no code: beside an `error` member the error is read from it,
/// alone it is a typed error rather than a failure classified on "".
#[test]
fn a_blank_code_is_no_code() {
    // A failure with an empty code would match no rule and hide the real one.
    let doc = json!({"code": " ", "message": "", "error": {"code": "SkuNotAvailable",
        "message": "The requested VM size Standard_D2s_v5 is currently not available in location 'eastus'."}});
    let f = only(norm_op(doc.to_string().as_bytes(), Operation::Create))
        .failure
        .unwrap();
    assert_eq!(
        (f.code.as_str(), f.category),
        ("SkuNotAvailable", Category::Allocation)
    );
    let doc = json!({"error": {"code": "", "message": "Something went wrong."}});
    let r = azure_arm::normalize_with_operation(
        &Input::new(doc.to_string().as_bytes(), ts(OBSERVED)),
        Operation::Create,
    );
    match r {
        Err(NormalizeError::Shape { path, expected, .. }) => {
            assert_eq!(path, "error.code");
            assert!(expected.contains("non-empty"), "{expected}");
        }
        other => panic!("{other:?}"),
    }
}

/// A wrapper's cause is the first detail that carries an error: one with a `code` and a plain
/// message (the usual `DeploymentFailed`), or one that holds an `error` member.
#[test]
fn a_wrapper_descends_into_a_detail_with_a_code_or_an_error_member() {
    // Classified on the wrapper, the failure would be Unknown instead of its real class.
    let sku = json!({"code": "SkuNotAvailable",
        "message": "The requested VM size Standard_D2s_v5 is currently not available in location 'eastus'."});
    for d in [sku.clone(), json!({"error": sku.clone()})] {
        let doc = json!({"error": {"code": "DeploymentFailed",
            "message": "At least one resource deployment operation failed. Please list deployment operations for details.",
            "details": [d]}});
        let f = only(norm_op(doc.to_string().as_bytes(), Operation::Create))
            .failure
            .unwrap();
        assert_eq!(
            (f.code.as_str(), f.message.as_deref(), f.category),
            (
                "SkuNotAvailable",
                sku["message"].as_str(),
                Category::Allocation
            ),
            "{doc}"
        );
    }
}

/// `details` given as a string holding a JSON array is read as the array: a wrapper descends
/// into it, a plain error flattens it.
#[test]
fn details_in_a_json_string_are_read_as_an_array() {
    // Some services serialize `details` once more; dropping it loses the cause.
    let inner = json!([{"code": "ZonalAllocationFailed",
        "message": "Allocation failed. We do not have sufficient capacity for the requested VM size in this zone."}]);
    let doc = json!({"error": {"code": "ResourceDeploymentFailure",
        "message": "The resource operation completed with terminal provisioning state 'Failed'.",
        "details": format!(" {inner} ")}});
    let f = only(norm_op(doc.to_string().as_bytes(), Operation::Create))
        .failure
        .unwrap();
    assert_eq!(
        (f.code.as_str(), f.category),
        ("ZonalAllocationFailed", Category::Allocation)
    );
    let doc = json!({"code": "InternalServerError",
        "message": "Encountered internal server error.",
        "details": inner.to_string()});
    let f = only(norm_op(doc.to_string().as_bytes(), Operation::Start))
        .failure
        .unwrap();
    assert_eq!(
        f.details,
        [detail(
            "ZonalAllocationFailed",
            inner[0]["message"].as_str(),
            None
        )]
    );
}

/// Blank strings are "not given" everywhere: an OData message value, a detail's code (the
/// detail is dropped: a detail needs a code) and a detail's target.
#[test]
fn blank_messages_detail_codes_and_targets_are_not_given() {
    // Policies test `message` and `details[].target` for presence; "" must not look present.
    let doc = json!({"odata.error": {"code": "InternalError", "message": {"lang": "en-US", "value": "  "}}});
    let f = only(norm_op(doc.to_string().as_bytes(), Operation::Update))
        .failure
        .unwrap();
    assert_eq!((f.code.as_str(), f.message), ("InternalError", None));
    let doc = json!({"error": {"code": "InvalidParameter", "message": "One or more parameters are invalid.",
        "details": [{"code": "", "message": "no code"},
                    {"code": "InvalidParameter", "target": " ", "message": "The value of parameter imageReference is invalid."}]}});
    let f = only(norm_op(doc.to_string().as_bytes(), Operation::Create))
        .failure
        .unwrap();
    assert_eq!(
        f.details,
        [detail(
            "InvalidParameter",
            Some("The value of parameter imageReference is invalid."),
            None
        )]
    );
}

/// A failed operation on an availability set: the resource id says which set.
#[test]
fn an_availability_set_id_names_the_availability_set() {
    // Correlation of failures per availability set keys on this field.
    let id = "/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/resourceGroups/rg-web/providers/Microsoft.Compute/availabilitySets/as-web";
    let body = json!({"idempotency_key": "k-as", "resource": id, "operation": "update",
        "error": fixture_json("arm-error-internalexecutionerror.json")});
    let e = only(norm(body.to_string().as_bytes()).unwrap());
    assert_eq!(
        e.resource,
        Resource {
            id: Some(id.into()),
            name: Some("as-web".into()),
            type_: Some("Microsoft.Compute/availabilitySets".into()),
            availability_set: Some("as-web".into()),
            ..Resource::default()
        }
    );
}

/// An ingest resource object may give its zone as a number, as ARM's own `zones` sometimes do.
#[test]
fn a_numeric_zone_in_a_resource_object_is_read() {
    // A refused zone would drop the whole failure.
    let body = json!({"idempotency_key": "k-z", "resource": {"id": VM_ID, "zone": 2}, "operation": "create",
        "error": fixture_json("arm-error-zonalallocationfailed.json")});
    let e = only(norm(body.to_string().as_bytes()).unwrap());
    assert_eq!(e.resource.zone.as_deref(), Some("2"));
}

/// Without a `resource`, the request body tells the VM: its name, type, region, the OS of an
/// attached disk (`osDisk.osType`, no `osProfile`) and its availability set.
#[test]
fn the_request_body_gives_name_type_os_and_availability_set() {
    // These are what policies match on when the caller sent only the request.
    let request = json!({
        "name": "web-7",
        "type": "Microsoft.Compute/virtualMachines",
        "location": "West Europe",
        "properties": {
            "hardwareProfile": {"vmSize": "Standard_D2s_v5"},
            "availabilitySet": {"id": "/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/resourceGroups/rg-web/providers/Microsoft.Compute/availabilitySets/as-web"},
            "storageProfile": {"osDisk": {"osType": "Linux", "createOption": "Attach",
                "managedDisk": {"id": "/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/resourceGroups/rg-web/providers/Microsoft.Compute/disks/web-7-os"}}}
        }
    });
    let body = json!({"idempotency_key": "k-req", "operation": "create", "request": request,
        "error": fixture_json("arm-error-allocationfailed.json")});
    let e = only(norm(body.to_string().as_bytes()).unwrap());
    assert_eq!(
        e.resource,
        Resource {
            name: Some("web-7".into()),
            type_: Some("Microsoft.Compute/virtualMachines".into()),
            os: Some("linux".into()),
            region: Some("westeurope".into()),
            availability_set: Some("as-web".into()),
            ..Resource::default()
        }
    );
}

/// A template's request body: template expressions (`[parameters('vmName')]`) are not values,
/// and a `linuxConfiguration` alone says Linux.
#[test]
fn template_expressions_in_the_request_are_not_values_and_linux_configuration_says_linux() {
    // A name "[parameters('vmName')]" would never match the VM's real name.
    let request = json!({
        "name": "[parameters('vmName')]",
        "location": "[resourceGroup().location]",
        "properties": {
            "availabilitySet": {"id": "[resourceId('Microsoft.Compute/availabilitySets', 'as-web')]"},
            "osProfile": {"computerName": "web-8", "adminUsername": "azureuser",
                          "linuxConfiguration": {"disablePasswordAuthentication": true}}
        }
    });
    let body = json!({"idempotency_key": "k-tpl", "operation": "create", "request": request,
        "error": fixture_json("arm-error-allocationfailed.json")});
    let e = only(norm(body.to_string().as_bytes()).unwrap());
    assert_eq!(
        e.resource,
        Resource {
            os: Some("linux".into()),
            ..Resource::default()
        }
    );
}

// ----------------------------------------------------------------------------------------
// Vendor quirks of ARM errors (docs/protocols.md, "Azure Resource Manager operations").

/// `OperationNotAllowed` needs a message-pattern table; one test per pattern.
#[test]
fn every_operation_not_allowed_pattern_selects_its_row() {
    let mut n = 0;
    for (pattern, row) in classify::operation_not_allowed_patterns() {
        n += 1;
        let msg = format!(
            "Operation 'x' failed: {} (upper: {})",
            pattern,
            pattern.to_uppercase()
        );
        let c = classify("OperationNotAllowed", Some(&msg), Some(409), &[]);
        assert_eq!(c.rule, row.name, "{pattern}");
        assert_eq!(
            (c.category, c.transient),
            (row.category, row.transient),
            "{pattern}"
        );
    }
    assert_eq!(n, 11, "{n} patterns: update this count with the table");
}

#[test]
fn operation_not_allowed_verbatim_messages() {
    let cases: &[(&str, Category, bool, &str)] = &[
        ("Operation could not be completed as it results in exceeding approved standardDASv5Family Cores quota. Additional details - Deployment Model: Resource Manager, Location: eastus, Current Limit: 10, Current Usage: 8, Additional Required: 4, (Minimum) New Limit Required: 12.", Category::Quota, false, "operation-not-allowed-quota"),
        ("Operation results in exceeding quota limits of Core. Maximum allowed: 10, Current in use: 10, Additional requested: 2.", Category::Quota, false, "operation-not-allowed-quota"),
        ("Operation 'start' is not allowed on VM 'vm1' since the VM is marked for deletion. You can only retry the Delete operation (or wait for an ongoing one to complete).", Category::Conflict, false, "operation-not-allowed-marked-for-deletion"),
        ("Operation 'attachDisk' is not allowed on VM 'vm1' since the VM is either deallocated or marked to be deallocated.", Category::Conflict, false, "operation-not-allowed-deallocated"),
        ("Operation 'convertToManagedDisks' is not allowed on VM 'vm1' since the VM is not deallocated.", Category::Conflict, false, "operation-not-allowed-deallocated"),
        ("Operation 'restart' is not allowed on VM 'vm1' since another operation is in progress.", Category::Conflict, true, "operation-not-allowed-another-operation"),
        ("An ongoing operation is changing power state of Virtual Machine vm1 to Running. Please perform operation deallocate after some time.", Category::Conflict, true, "operation-not-allowed-after-some-time"),
        ("Unable to resize the VM because the requested size Standard_E64s_v3 is not available in the cluster where the VM is currently allocated. To resize your VM to Standard_E64s_v3 please deallocate (this is Stop operation in the Azure portal) and try the resize operation again. Read more on VM resizing strategy at https://aka.ms/azure-resizevm.", Category::Allocation, true, "operation-not-allowed-size-not-in-cluster"),
        ("Operation 'capture' is not allowed on VM 'vm1' since the VM is running. Please power off explicitly in case you shut down the VM from inside the guest operating system.", Category::Conflict, false, "operation-not-allowed-power-state"),
        ("The server rejected the request because too many requests have been received for this subscription.", Category::Throttled, true, "operation-not-allowed-throttling"),
        // A localized message matches no en-US pattern: the safe default.
        ("Der Vorgang konnte nicht abgeschlossen werden, da das genehmigte Kontingent überschritten wird.", Category::Conflict, false, "operation-not-allowed-default"),
    ];
    for (msg, cat, transient, rule) in cases {
        let c = classify("OperationNotAllowed", Some(msg), Some(409), &[]);
        assert_eq!(
            (c.category, c.transient, c.rule),
            (*cat, *transient, *rule),
            "{msg}"
        );
    }
    // No message at all: the default.
    assert_eq!(
        classify("OperationNotAllowed", None, None, &[]).rule,
        "operation-not-allowed-default"
    );
    // A localized message with HTTP 429 is still throttling.
    let c = classify(
        "OperationNotAllowed",
        Some("Zu viele Anforderungen."),
        Some(429),
        &[],
    );
    assert_eq!(
        (c.category, c.rule),
        (Category::Throttled, "operation-not-allowed-http-429")
    );
}

/// Error-code tables match case-insensitively.
#[test]
fn codes_match_in_any_case() {
    for code in [
        "OverConstrainedAllocationRequest",
        "OverconstrainedAllocationRequest",
        "overconstrainedallocationrequest",
        "OverconstrainedZonalAllocationRequest",
        "OverConstrainedZonalAllocationRequest",
    ] {
        let c = classify(code, None, None, &[]);
        assert_eq!(
            (c.category, c.transient, c.rule),
            (Category::Allocation, false, "overconstrained-allocation"),
            "{code}"
        );
    }
    for code in ["operationnotallowed", "OPERATIONNOTALLOWED"] {
        assert_eq!(
            classify(code, Some("quota"), None, &[]).category,
            Category::Quota
        );
    }
    for code in ["artifactversionnotfound", "ARTIFACTNOTFOUND"] {
        let m = "The VM extension with publisher 'Microsoft.WindowsAzure.GuestAgent', and type 'CRPProd', could not be found in location 'westus'.";
        assert_eq!(
            classify(code, Some(m), None, &[]).category,
            Category::VmAgent,
            "{code}"
        );
    }
    // Through the normalizer, the code is kept as sent.
    let mut doc = fixture_json("arm-error-overconstrainedallocationrequest.json");
    doc["error"]["details"][0]["code"] = json!("OverConstrainedAllocationRequest");
    let f = only(norm_op(doc.to_string().as_bytes(), Operation::Create))
        .failure
        .unwrap();
    assert_eq!(
        (f.code.as_str(), f.category),
        ("OverConstrainedAllocationRequest", Category::Allocation)
    );
}

/// `throttled` only on 429 with a throttling code or exhausted rate-limit headers;
/// Retry-After alone is not throttling.
#[test]
fn status_429_is_not_always_throttling() {
    let c = classify(
        "RetryableErrorDueToAnotherOperation",
        Some("Operation is locked."),
        Some(429),
        &[],
    );
    assert_eq!((c.category, c.transient), (Category::Conflict, true));
    let c = classify("SomeNewCode", None, Some(429), &[]);
    assert_eq!(
        (c.category, c.transient, c.rule),
        (Category::Unknown, true, "http-429-not-throttling")
    );
    let c = classify_response("SomeNewCode", None, Some(429), &[], true);
    assert_eq!(
        (c.category, c.rule),
        (Category::Throttled, "http-429-rate-limit-headers")
    );
    for code in [
        "TooManyRequests",
        "ResourceRequestsThrottled",
        "subscriptionrequeststhrottled",
    ] {
        let c = classify(code, None, None, &[]);
        assert_eq!(
            (c.category, c.transient),
            (Category::Throttled, true),
            "{code}"
        );
    }
    // A 202-style Retry-After on a non-429 failure is honoured but not throttling.
    let text = "HTTP/1.1 500 Internal Server Error\r\nRetry-After: 60\r\nx-ms-ratelimit-remaining-subscription-writes: 1199\r\n\r\n{\"error\":{\"code\":\"SomeNewCode\",\"message\":\"m\"}}";
    let f = only(norm_op(text.as_bytes(), Operation::Create))
        .failure
        .unwrap();
    assert_eq!(
        (f.category, f.transient, f.retry_after_s),
        (Category::Unknown, false, Some(60))
    );
    // An exhausted bucket on a 429 with an unknown code: throttled.
    let text = "HTTP/1.1 429 Too Many Requests\r\nx-ms-ratelimit-remaining-resource: Microsoft.Compute/PutVM3Min;0\r\n\r\n{\"error\":{\"code\":\"SomeNewCode\",\"message\":\"m\"}}";
    let f = only(norm_op(text.as_bytes(), Operation::Create))
        .failure
        .unwrap();
    assert_eq!(f.category, Category::Throttled);
    // A bucket with requests left is no throttling signal.
    let text = "HTTP/1.1 429 Too Many Requests\r\nx-ms-ratelimit-remaining-subscription-reads: 11999\r\n\r\n{\"error\":{\"code\":\"SomeNewCode\",\"message\":\"m\"}}";
    let f = only(norm_op(text.as_bytes(), Operation::Create))
        .failure
        .unwrap();
    assert_eq!((f.category, f.transient), (Category::Unknown, true));
}

/// The image-not-generalized text under either provisioning code is `image`.
#[test]
fn image_not_generalized_under_both_codes() {
    let m = "OS Provisioning for VM 'vm1' did not finish in the allotted time. However, the VM guest agent was detected running. This suggests the guest OS has not been properly prepared to be used as a VM image (with CreateOption=FromImage).";
    for code in ["OSProvisioningTimedOut", "OSProvisioningClientError"] {
        let c = classify(code, Some(m), None, &[]);
        assert_eq!(
            (c.category, c.transient),
            (Category::Image, false),
            "{code}"
        );
    }
    let c = classify("OSProvisioningClientError", Some("Username specified for the VM is invalid for this Linux distribution. Error details: x."), None, &[]);
    assert_eq!(c.category, Category::Image);
    let c = classify("OSProvisioningTimedOut", Some("OS Provisioning for VM 'vm1' did not finish in the allotted time. The VM may still finish provisioning successfully. Please check provisioning state later."), None, &[]);
    assert_eq!(c.category, Category::ProvisioningTimeout);
}

/// The transient Compute codes.
#[test]
fn transient_compute_codes() {
    let cases = [
        ("VMRedeploymentFailed", Category::Internal),
        ("VMRedeploymentTimedOut", Category::Internal),
        ("VMStartTimedOut", Category::Internal),
        ("TooManyVMRedeploymentRequests", Category::Throttled),
        ("ResourceUpdateBlockedOnPlatformUpdate", Category::Conflict),
        ("OSProvisioningInternalError", Category::Internal),
        ("VMExtensionManagementInternalError", Category::Internal),
        ("NetworkingInternalOperationError", Category::Internal),
        ("StorageAccountTooBusy", Category::Internal),
        ("DiskImageNotReady", Category::Image),
    ];
    for (code, cat) in cases {
        let c = classify(code, None, None, &[]);
        assert_eq!((c.category, c.transient), (cat, true), "{code}");
    }
    let c = classify("AllocationFailed", Some("The VM allocation failed due to an internal error. Please retry later or try deploying to a different location."), None, &[]);
    assert_eq!(
        (c.category, c.transient, c.rule),
        (Category::Internal, true, "allocation-internal-error")
    );
}

/// Other codes for the same classes.
#[test]
fn other_codes_for_the_same_classes() {
    for code in ["QuotaExceeded", "ResourceQuotaExceeded"] {
        assert_eq!(
            classify(code, None, None, &[]).category,
            Category::Quota,
            "{code}"
        );
    }
    let c = classify(
        "ExtensionNotFoundForCPUArchitecture",
        Some("Extension 'x' with publisher 'Contoso' is not available for Arm64."),
        None,
        &[],
    );
    assert_eq!((c.category, c.transient), (Category::Extension, false));
    let c = classify("InvalidTemplateDeployment", Some("The template deployment 'vm' is not valid according to the validation procedure. The requested VM size for resource 'Following SKUs have failed for Capacity Restrictions: Standard_B2s' is currently not available in location 'eastus'."), None, &[]);
    assert_eq!(c.category, Category::Allocation);
    // With structured details the normalizer unwraps InvalidTemplateDeployment instead.
    let doc = json!({"error": {"code": "InvalidTemplateDeployment", "message": "The template deployment 'vm' is not valid according to the validation procedure. See inner errors for details.",
        "details": [{"code": "SkuNotAvailable", "message": "The requested VM size is not available."}]}});
    let f = only(norm_op(doc.to_string().as_bytes(), Operation::Create))
        .failure
        .unwrap();
    assert_eq!(
        (f.code.as_str(), f.category),
        ("SkuNotAvailable", Category::Allocation)
    );
}

/// The guest-agent artifact is classified on publisher/type, not on one code; an ordinary
/// extension pin never is `vm_agent`.
#[test]
fn guest_agent_artifact_on_publisher_not_code() {
    let ga = "The VM extension with publisher 'Microsoft.WindowsAzure.GuestAgent', and type 'CRPProd', could not be found in location 'westus'.";
    for code in [
        "ArtifactNotFound",
        "ArtifactVersionNotFound",
        "ExtensionNotFoundForCPUArchitecture",
        "SomeFutureArtifactCode",
    ] {
        let c = classify(code, Some(ga), None, &[]);
        assert_eq!(
            (c.category, c.transient),
            (Category::VmAgent, true),
            "{code}"
        );
    }
    // Named only in a detail.
    let d = [detail("Artifact", Some(ga), None)];
    assert_eq!(
        classify("ArtifactNotFound", Some("Artifact not found."), None, &d).category,
        Category::VmAgent
    );
    // Ordinary extension pins.
    for (code, m) in [
        ("ArtifactNotFound", "Extension with publisher 'Microsoft.Compute', type 'CustomScriptExtension', and type handler version '9.9' could not be found in the extension repository."),
        ("ArtifactVersionNotFound", "No version found in the artifact repository that satisfies the requested version '9.9' for VM extension with publisher 'Microsoft.Azure.Monitor' and type 'AzureMonitorWindowsAgent'."),
        ("ArtifactVersionNotFound", "No version found in the artifact repository that satisfies the requested version '1.0'."),
    ] {
        let c = classify(code, Some(m), None, &[]);
        assert_eq!((c.category, c.transient), (Category::Extension, false), "{m}");
    }
    // A guest-agent mention in an unrelated success-path message is not an artifact failure.
    assert_eq!(
        classify(
            "SomeCode",
            Some("Installed Microsoft.WindowsAzure.GuestAgent."),
            None,
            &[]
        )
        .category,
        Category::Unknown
    );
}

#[test]
fn extension_network_failures_are_network() {
    for m in [
        "VM has reported a failure when processing extension 'cse'. Error message: \"Error downloading https://x.blob.core.windows.net/s.ps1 after 29 attempts: The remote name could not be resolved: 'x.blob.core.windows.net'\".",
        "VM has reported a failure when processing extension 'cse'. Error message: \"Unable to connect to the remote server\".",
    ] {
        for code in ["VMExtensionProvisioningError", "vmextensionprovisioningtimeout", "VMExtensionHandlerNonTransientError"] {
            assert_eq!(classify(code, Some(m), None, &[]).category, Category::Network, "{code}");
        }
    }
    assert_eq!(
        classify("VMExtensionSomethingNew", None, None, &[]).category,
        Category::Extension
    );
}

#[test]
fn the_rest_of_the_catalog() {
    let cases = [
        (
            "VMArtifactRepositoryInternalError",
            Category::Internal,
            true,
        ),
        ("VMAgentStatusCommunicationError", Category::VmAgent, false),
        ("SkuNotAvailable", Category::Allocation, false),
        ("ZonalAllocationFailed", Category::Allocation, true),
        ("AllocationFailed", Category::Allocation, true),
        ("RetryableError", Category::Internal, true),
        ("InternalExecutionError", Category::Internal, true),
        ("InternalServerError", Category::Internal, true),
        ("Conflict", Category::Conflict, false),
        ("AnotherOperationInProgress", Category::Conflict, true),
        ("DeploymentQuotaExceeded", Category::Quota, false),
        ("NeverHeardOfIt", Category::Unknown, false),
        ("", Category::Unknown, false),
    ];
    for (code, cat, transient) in cases {
        let c = classify(code, None, Some(409), &[]);
        assert_eq!((c.category, c.transient), (cat, transient), "{code}");
    }
}

#[test]
fn the_table_is_public_documented_and_consistent() {
    let mut names: Vec<&str> = RULES.iter().map(|r| r.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), RULES.len());
    for r in RULES {
        assert!(!r.source.is_empty(), "{}", r.name);
        assert_eq!(classify::rule(r.name), Some(r));
        // Wrappers never classify to anything but unknown.
        if let Codes::AnyOf(codes) = r.codes {
            if codes.iter().any(|c| classify::is_wrapper(c)) {
                assert!(
                    r.name == "wrapper-without-inner-error"
                        || r.name == "invalid-template-sku-not-available",
                    "{}",
                    r.name
                );
            }
        }
        // Patterns are stored lower-case-insensitively: a pattern must match itself.
        if let When::MessageContains(p) = r.when {
            assert!(p.iter().all(|s| !s.is_empty()), "{}", r.name);
        }
    }
    assert_eq!(RULES.last().unwrap().name, "unknown-code");
}

// ----------------------------------------------------------------------------------------
// Fuzzing: no panic on any input, typed errors only.

fn all_fixture_bytes() -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/fixtures");
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("arm-error-")
        })
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    out.push(nested_deployment().to_string().into_bytes());
    out.push(activity_event("Failed").to_string().into_bytes());
    out.push(
        json!({"idempotency_key": "k", "resource": VM_ID, "operation": "create", "request": windows_create_request(),
               "error": fixture_json("arm-error-allocationfailed.json")})
        .to_string()
        .into_bytes(),
    );
    out
}

fn check(bytes: &[u8]) {
    for r in [
        norm(bytes),
        azure_arm::normalize_with_operation(
            &Input::new(bytes, ts(OBSERVED))
                .self_name("web-1")
                .http_status(429),
            Operation::Create,
        ),
    ] {
        match r {
            Ok(events) => {
                for e in events {
                    assert!(e.id.starts_with("azure.arm:"));
                    assert_eq!(e.kind, Kind::OperationFailure);
                    let f = e.failure.as_ref().unwrap();
                    assert!(f.attempt >= 1);
                    assert!(!f.code.is_empty());
                    // The event serializes and reads back, unchanged.
                    let back = Event::from_json_str(&serde_json::to_string(&e).unwrap()).unwrap();
                    assert_eq!(back, e);
                    // A day at most.
                    assert!(f.retry_after_s.is_none_or(|s| (0..=86_400).contains(&s)));
                }
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
}

/// JSON built from the keys and values the normalizer looks for.
fn arb_json() -> impl Strategy<Value = Value> {
    let keys = prop::sample::select(vec![
        "error",
        "code",
        "message",
        "details",
        "status",
        "name",
        "startTime",
        "endTime",
        "target",
        "properties",
        "statusMessage",
        "statusCode",
        "operationName",
        "eventTimestamp",
        "operationId",
        "eventDataId",
        "resourceId",
        "value",
        "idempotency_key",
        "resource",
        "operation",
        "attempt",
        "request",
        "data",
        "context",
        "activityLog",
        "alertContext",
        "odata.error",
        "id",
        "os",
        "region",
    ]);
    let strings = prop::sample::select(vec![
        "Failed",
        "Succeeded",
        "Conflict",
        "DeploymentFailed",
        "ResourceDeploymentFailure",
        "OperationNotAllowed",
        "ArtifactNotFound",
        "Microsoft.WindowsAzure.GuestAgent",
        "create",
        "Microsoft.Compute/virtualMachines/write",
        "2021-10-13T07:02:14Z",
        "not a time",
        "",
        "{\"code\":\"X\",\"message\":\"{\\\"error\\\":{\\\"code\\\":\\\"Y\\\"}}\"}",
        "{",
        "HTTP/1.1 429 x\r\nRetry-After: 5\r\n\r\n{\"code\":\"TooManyRequests\"}",
        "/subscriptions/s/resourceGroups/r/providers/Microsoft.Compute/virtualMachines/v",
        "try again after '5' seconds",
        "é\u{1b}",
    ]);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        strings.prop_map(|s| Value::String(s.to_string())),
    ];
    leaf.prop_recursive(6, 64, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((keys.clone(), inner.clone()), 0..6).prop_map(|kv| {
                Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
            // A JSON value as a string, as statusMessage and nested messages carry it.
            inner.prop_map(|v| Value::String(v.to_string())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Every time field the normalizer reads, with arbitrary values, and absurd Retry-After
    /// values: every event round-trips (check).
    #[test]
    fn arbitrary_times_and_retry_after_round_trip(
        end in time_like(), start in time_like(), stamp in time_like(), date in time_like(),
        retry in "-?[0-9]{1,30}", msg_retry in "[0-9]{1,30}", given in any::<i64>(),
    ) {
        check(json!({"status": "Failed", "name": "op", "endTime": end, "startTime": start,
                     "error": {"code": "AllocationFailed", "message": format!("try again after '{msg_retry}' seconds")}})
            .to_string().as_bytes());
        check(json!({"status": "Failed", "startTime": start,
                     "error": {"code": "AllocationFailed", "message": "m"}}).to_string().as_bytes());
        let mut ev = activity_event("Failed");
        ev["eventTimestamp"] = json!(stamp);
        check(ev.to_string().as_bytes());
        let http = format!("HTTP/1.1 429 Too Many\r\nDate: {date}\r\nRetry-After: {retry}\r\n\r\n{{\"code\":\"TooManyRequests\",\"message\":\"m\"}}");
        check(http.as_bytes());
        let bytes = fixture("arm-error-429-arm-throttled.json");
        let input = Input::new(&bytes, ts(OBSERVED)).retry_after_s(given);
        let e = only(azure_arm::normalize_with_operation(&input, Operation::Update).unwrap());
        let r = e.failure.unwrap().retry_after_s.unwrap();
        prop_assert!((0..=86_400).contains(&r));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check(&bytes);
        let mut http = b"HTTP/1.1 429 Too Many Requests\r\n".to_vec();
        http.extend_from_slice(&bytes);
        check(&http);
    }

    #[test]
    fn mutated_fixtures_never_panic(
        which in any::<prop::sample::Index>(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let all = all_fixture_bytes();
        let mut bytes = all[which.index(all.len())].clone();
        for (at, b) in edits {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        check(&bytes);
    }

    #[test]
    fn structured_json_never_panics(v in arb_json()) {
        check(v.to_string().as_bytes());
        check(json!({"error": v.clone()}).to_string().as_bytes());
        check(json!({"idempotency_key": "k", "operation": "create", "error": v}).to_string().as_bytes());
    }

    #[test]
    fn classify_never_panics(code in ".{0,40}", message in proptest::option::of(".{0,80}"), status in proptest::option::of(0i64..700)) {
        let c = classify(&code, message.as_deref(), status, &[]);
        prop_assert!(classify::rule(c.rule).is_some());
    }
}

/// An error body with neither an id nor a time is dated by its first sight, kept in the
/// state; one refused for a field the history could not keep leaves no first sight behind.
#[test]
fn a_body_refused_for_a_field_s_size_records_no_first_sight() {
    let long = "x".repeat(keel_engine::normalize::MAX_FIELD_BYTES + 1);
    let bare = |code: &str| json!({"error": {"code": code, "message": "m"}}).to_string();
    let mut st = NormalizerState::default();
    let input_at = |body: &str, at: &str, st: &mut NormalizerState| {
        normalize(
            "azure.arm",
            &Input::new(body.as_bytes(), ts(at)).operation(Operation::Create),
            st,
        )
    };
    input_at(&bare("First"), OBSERVED, &mut st).unwrap();
    let before = st.clone();
    assert_eq!(before.azure_arm.first_seen.len(), 1);
    let err = input_at(&bare(&long), OBSERVED, &mut st).unwrap_err();
    assert!(err.to_string().contains("at most 2048 bytes"), "{err}");
    assert_eq!(st, before);
    let ok = input_at(&bare("Second"), OBSERVED, &mut st).unwrap();
    assert_eq!(ok.len(), 1);
    assert_eq!(st.azure_arm.first_seen.len(), 2);
}
