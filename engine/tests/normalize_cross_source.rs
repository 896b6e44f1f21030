//! Every fixture fed to every normalizer but its own: another vendor's payload is refused (or
//! yields nothing), never turned into events, and never changes the normalizer state.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use keel_engine::normalize::{normalize, Input, NormalizeError, NormalizerState, NORMALIZERS};
use keel_engine::{Operation, Timestamp};

#[path = "common/owners.rs"]
mod owners;

/// (fixture, normalizer) pairs where a normalizer that is not the owner legitimately reads
/// the payload. There are none today: each entry needs a reason.
const EXCEPTIONS: &[(&str, &str, &str)] = &[];

/// Fixtures that are not notices: their own normalizer refuses them, saying why.
const NOT_NOTICES: &[(&str, &str)] = &[
    // IMDS's answer to a request without api-version.
    (
        "azure-imds-error-no-api-version.json",
        "IMDS answered with an error",
    ),
    // The StartRequests body Keel sends: a request, not a response.
    (
        "azure-scheduled-events-ack-startrequests.json",
        "no `DocumentIncarnation` or `Events`",
    ),
    // The metadata server's refusal of a request without Metadata-Flavor.
    ("gcp-metadata-403-missing-flavor.txt", "Metadata-Flavor"),
];

fn fixtures() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/fixtures");
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        // SOURCES.md and README.md say where each fixture comes from, cases.json and
        // sequences/ how the snapshot test reads them; none is a payload.
        .filter(|n| !n.ends_with(".md") && n != "cases.json" && dir.join(n).is_file())
        .map(|n| {
            let bytes = std::fs::read(dir.join(&n)).unwrap();
            (n, bytes)
        })
        .collect();
    out.sort();
    out
}

fn owner(name: &str) -> &'static str {
    owners::owner(name)
        .unwrap_or_else(|| panic!("{name}: no owner; add it to OWNERS in common/owners.rs"))
}

fn observed() -> Timestamp {
    "2026-05-01T10:00:00Z".parse().unwrap()
}

/// The inputs a foreign payload is tried with: bare, and with everything a caller may add
/// (the operation that `azure.arm` otherwise refuses to guess, a self name, a 200 status).
fn inputs(bytes: &[u8]) -> [Input<'_>; 3] {
    [
        Input::new(bytes, observed()),
        Input::new(bytes, observed())
            .operation(Operation::Create)
            .self_name("vm-1"),
        Input::new(bytes, observed())
            .operation(Operation::Start)
            .http_status(200),
    ]
}

#[test]
fn every_fixture_has_an_owner_that_reads_it() {
    let all = fixtures();
    assert!(all.len() > 60, "{}", all.len());
    for (name, bytes) in &all {
        let own = owner(name);
        // Its own normalizer reads it, except the fixtures that are not notices.
        let mut st = NormalizerState::default();
        let r = normalize(
            own,
            &Input::new(bytes, observed()).operation(Operation::Create),
            &mut st,
        );
        match (NOT_NOTICES.iter().find(|(f, _)| f == name), r) {
            (Some((_, why)), Err(NormalizeError::WrongPayload { reason, .. })) => {
                assert!(reason.contains(why), "{name}: {reason}")
            }
            (None, Ok(_)) => {}
            (_, r) => panic!("{name} -> {own}: {r:?}"),
        }
    }
}

#[test]
fn foreign_payloads_are_refused_or_yield_nothing() {
    let mut failures = Vec::new();
    for (name, bytes) in fixtures() {
        let own = owner(&name);
        for n in NORMALIZERS.iter().filter(|n| n.name != own) {
            if EXCEPTIONS
                .iter()
                .any(|(f, nn, _)| *f == name && *nn == n.name)
            {
                continue;
            }
            for input in inputs(&bytes) {
                let mut st = NormalizerState::default();
                match normalize(n.name, &input, &mut st) {
                    Ok(evs) if !evs.is_empty() => failures.push(format!(
                        "{name} -> {}: {} event(s), first {}",
                        n.name,
                        evs.len(),
                        evs[0].id
                    )),
                    Ok(_) | Err(_) => {}
                }
                if st != NormalizerState::default() {
                    failures.push(format!("{name} -> {}: changed the state: {st:?}", n.name));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The payloads the reviewer found crossing over are refused with `WrongPayload`, saying why.
#[test]
fn the_known_crossings_are_wrong_payload_errors() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "azure-scheduled-events-freeze-live-migration-scheduled.json",
            "aws.imds",
            "DocumentIncarnation",
        ),
        (
            "azure-scheduled-events-empty.json",
            "aws.imds",
            "DocumentIncarnation",
        ),
        (
            "aws-scheduled-events-instance-reboot.json",
            "azure.arm",
            "AWS scheduled event",
        ),
        (
            "aws-scheduled-events-history-canceled-completed.json",
            "azure.arm",
            "AWS scheduled event",
        ),
        (
            "azure-resource-health-degraded-hardware.json",
            "azure.maintenance_v1",
            "exactly ID/UD/FD",
        ),
        (
            "azure-eventgrid-health-resource-annotated.json",
            "azure.maintenance_v1",
            "exactly ID/UD/FD",
        ),
    ];
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/fixtures");
    for (f, n, why) in cases {
        let bytes = std::fs::read(dir.join(f)).unwrap();
        for input in inputs(&bytes) {
            let mut st = NormalizerState::default();
            match normalize(n, &input, &mut st) {
                Err(NormalizeError::WrongPayload { reason, .. }) => {
                    assert!(reason.contains(why), "{f} -> {n}: {reason}")
                }
                other => panic!("{f} -> {n}: {other:?}"),
            }
            assert_eq!(st, NormalizerState::default(), "{f} -> {n}");
        }
    }
}

/// One VM of a uniform scale set, as ARM, Resource Health and Scheduled Events report it,
/// gets one name (`{scaleSet}_{instanceId}`) and one scale set, so correlation and dedup keys
/// agree; ids in other casings and with trailing slashes name it alike.
#[test]
fn one_scale_set_vm_has_one_name_across_azure_sources() {
    let id = "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/ss/virtualMachines/7";
    let mut state = NormalizerState::default();
    let mut names = Vec::new();
    for vm_id in [
        id.to_string(),
        id.to_lowercase(),
        format!("{}/", id.to_uppercase().replace("SS/", "ss/")),
    ] {
        let arm = serde_json::json!({
            "idempotency_key": "k",
            "resource": {"id": vm_id},
            "operation": "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/start/action",
            "error": {"code": "AllocationFailed", "message": "no capacity"},
        })
        .to_string();
        let health = serde_json::json!({
            "id": format!("{vm_id}/providers/Microsoft.ResourceHealth/availabilityStatuses/current"),
            "name": "current",
            "type": "Microsoft.ResourceHealth/AvailabilityStatuses",
            "location": "eastus",
            "properties": {"availabilityState": "Unavailable", "occuredTime": "2026-05-01T09:59:00Z"},
        })
        .to_string();
        for (normalizer, body) in [("azure.arm", arm), ("azure.resource_health", health)] {
            let events = normalize(
                normalizer,
                &Input::new(body.as_bytes(), observed()),
                &mut state,
            )
            .unwrap_or_else(|e| panic!("{normalizer}: {e}"));
            let r = &events[0].resource;
            assert_eq!(r.scale_set.as_deref(), Some("ss"), "{normalizer} {vm_id}");
            names.push((normalizer, r.name.clone()));
        }
    }
    let se = br#"{"DocumentIncarnation": 1, "Events": [{"EventId": "E1", "EventType": "Reboot",
        "ResourceType": "VirtualMachine", "Resources": ["ss_7"], "EventStatus": "Scheduled",
        "NotBefore": "", "Description": "", "EventSource": "Platform", "DurationInSeconds": -1}]}"#;
    let events = normalize(
        "azure.scheduled_events",
        &Input::new(se, observed()),
        &mut state,
    )
    .unwrap();
    names.push(("azure.scheduled_events", events[0].resource.name.clone()));
    for (normalizer, name) in names {
        assert_eq!(name.as_deref(), Some("ss_7"), "{normalizer}");
    }
}

/// Every normalizer refuses a payload over `MAX_PAYLOAD_BYTES` before reading it, and reads
/// one of exactly that size (whatever it then makes of it).
#[test]
fn every_normalizer_refuses_a_payload_over_the_size_limit_and_reads_one_at_it() {
    use keel_engine::normalize::MAX_PAYLOAD_BYTES;
    // A JSON string of exactly the limit: valid JSON, so no normalizer fails before the size
    // is known for any reason but the size.
    let mut at_limit = vec![b'"'];
    at_limit.resize(MAX_PAYLOAD_BYTES - 1, b'a');
    at_limit.push(b'"');
    let mut over = at_limit.clone();
    over.insert(1, b'a');
    assert_eq!(
        (at_limit.len(), over.len()),
        (MAX_PAYLOAD_BYTES, MAX_PAYLOAD_BYTES + 1)
    );
    for n in NORMALIZERS {
        let r = normalize(
            n.name,
            &Input::new(&over, observed()),
            &mut NormalizerState::default(),
        );
        assert_eq!(
            r,
            Err(NormalizeError::TooLarge {
                size: MAX_PAYLOAD_BYTES + 1
            }),
            "{}",
            n.name
        );
        let r = normalize(
            n.name,
            &Input::new(&at_limit, observed()),
            &mut NormalizerState::default(),
        );
        assert!(
            !matches!(r, Err(NormalizeError::TooLarge { .. })),
            "{}: {r:?}",
            n.name
        );
    }
}

/// An unknown normalizer's name is refused with the closest known name, when there is one.
#[test]
fn an_unknown_normalizer_is_named_with_a_suggestion() {
    let mut st = NormalizerState::default();
    let e = normalize("aws.imd", &Input::new(b"{}", observed()), &mut st).unwrap_err();
    assert_eq!(
        e.to_string(),
        "unknown normalizer `aws.imd` (did you mean `aws.imds`?)"
    );
    let e = normalize("zzzzzzzz", &Input::new(b"{}", observed()), &mut st).unwrap_err();
    assert_eq!(e.to_string(), "unknown normalizer `zzzzzzzz`");
}
