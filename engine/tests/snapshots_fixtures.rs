//! Every vendor fixture in `policies/fixtures/` as a snapshot case: the normalized events (or the
//! typed error) each payload gives, reviewed once and kept in `tests/snapshots/`. Sequences of
//! documents for the stateful normalizers are manifests in `policies/fixtures/sequences/`.
//!
//! How a fixture is read (which normalizer, the observation time, `--self`, `--operation`, ...)
//! comes from its file-name prefix and, where a case needs more, its entry in
//! `policies/fixtures/cases.json`; see `policies/fixtures/README.md` for the workflow.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::Path;

use keel_engine::normalize::{normalize, Input, NormalizerState};
use keel_engine::{Operation, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[path = "common/owners.rs"]
mod owners;

/// The observation time of a case that does not set one.
const DEFAULT_OBSERVED_AT: &str = "2026-01-01T00:00:00Z";

/// How one payload is read; every field is optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    /// The normalizer, where the prefix does not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    normalizer: Option<String>,
    /// Not a normalizer input (a request body, ...): no snapshot; says why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    skip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    observed_at: Option<Timestamp>,
    #[serde(default, rename = "self", skip_serializing_if = "Option::is_none")]
    self_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    operation: Option<Operation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    http_status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retry_after_s: Option<i64>,
    /// Scheduled Events: EventIds marked approved (StartRequests sent) before this document.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    approved: Vec<String>,
}

/// A sequence of documents read with one state, as a poller reads them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sequence {
    /// What the sequence shows.
    #[allow(dead_code)]
    about: String,
    /// Options for every step (a step's own options win).
    #[serde(default)]
    defaults: Options,
    steps: Vec<Step>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Step {
    /// A fixture file in `policies/fixtures/`.
    file: String,
    #[serde(flatten)]
    options: Options,
}

fn fixtures() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/fixtures"))
}

fn cases() -> BTreeMap<String, Options> {
    let text = std::fs::read_to_string(fixtures().join("cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// `step` over `base`: a field set in `step` wins.
fn merged(base: &Options, step: &Options) -> Options {
    Options {
        normalizer: step.normalizer.clone().or(base.normalizer.clone()),
        skip: step.skip.clone().or(base.skip.clone()),
        observed_at: step.observed_at.or(base.observed_at),
        self_name: step.self_name.clone().or(base.self_name.clone()),
        operation: step.operation.or(base.operation),
        http_status: step.http_status.or(base.http_status),
        retry_after_s: step.retry_after_s.or(base.retry_after_s),
        approved: if step.approved.is_empty() {
            base.approved.clone()
        } else {
            step.approved.clone()
        },
    }
}

fn normalizer_of(file: &str, o: &Options) -> String {
    o.normalizer.clone().unwrap_or_else(|| {
        owners::owner(file)
            .unwrap_or_else(|| {
                panic!("{file}: no normalizer for this prefix; set one in fixtures/cases.json")
            })
            .to_string()
    })
}

/// Normalizes `file` with `o` against `state`: what the snapshot shows of it.
fn run(file: &str, o: &Options, state: &mut NormalizerState) -> Value {
    let name = normalizer_of(file, o);
    for id in &o.approved {
        state.azure_scheduled_events.mark_approved(id);
    }
    let bytes = std::fs::read(fixtures().join(file)).unwrap();
    let at = o
        .observed_at
        .unwrap_or_else(|| DEFAULT_OBSERVED_AT.parse().unwrap());
    let mut input = Input::new(&bytes, at);
    if let Some(s) = &o.self_name {
        input = input.self_name(s);
    }
    if let Some(op) = o.operation {
        input = input.operation(op);
    }
    if let Some(s) = o.http_status {
        input = input.http_status(s);
    }
    if let Some(s) = o.retry_after_s {
        input = input.retry_after_s(s);
    }
    let mut options = serde_json::to_value(o).unwrap();
    if let Some(m) = options.as_object_mut() {
        m.insert("normalizer".into(), Value::String(name.clone()));
        m.insert("observed_at".into(), json!(at));
    }
    let outcome = match normalize(&name, &input, state) {
        Ok(events) => json!({ "events": events }),
        Err(e) => {
            let debug = format!("{e:?}");
            let kind = debug
                .split(|c: char| !c.is_alphanumeric())
                .next()
                .unwrap_or("")
                .to_string();
            json!({ "error": { "kind": kind, "message": e.to_string() } })
        }
    };
    json!({ "file": file, "read_with": options, "outcome": outcome })
}

/// What the normalizers keep in the state after the case: only the parts that are not empty
/// (absent when none is).
fn state_value(state: &NormalizerState) -> Option<Value> {
    let Value::Object(mut parts) = serde_json::to_value(state).unwrap() else {
        panic!("the state serializes to an object");
    };
    parts.retain(|_, v| v.as_object().is_none_or(|o| !o.is_empty()));
    (!parts.is_empty()).then_some(Value::Object(parts))
}

#[test]
fn payload() {
    let cases = cases();
    insta::glob!(
        "../../policies/fixtures",
        "*.{json,txt,http,html}",
        |path| {
            let file = path.file_name().unwrap().to_str().unwrap();
            if file == "cases.json" {
                return;
            }
            let o = cases.get(file).cloned().unwrap_or_default();
            if o.skip.is_some() {
                return;
            }
            let mut state = NormalizerState::default();
            let mut snap = run(file, &o, &mut state);
            if let Some(s) = state_value(&state) {
                snap["state_after"] = s;
            }
            insta::assert_json_snapshot!(snap);
        }
    );
}

#[test]
fn sequence() {
    insta::glob!("../../policies/fixtures/sequences", "*.json", |path| {
        let text = std::fs::read_to_string(path).unwrap();
        let seq: Sequence = serde_json::from_str(&text).unwrap();
        let mut state = NormalizerState::default();
        let steps: Vec<Value> = seq
            .steps
            .iter()
            .map(|s| run(&s.file, &merged(&seq.defaults, &s.options), &mut state))
            .collect();
        let mut snap = json!({ "steps": steps });
        if let Some(s) = state_value(&state) {
            snap["state_after"] = s;
        }
        insta::assert_json_snapshot!(snap);
    });
}

/// Every fixture file is a case or says why it is not, and every manifest entry names a file.
#[test]
fn the_manifest_names_real_files() {
    for (file, o) in cases() {
        assert!(
            fixtures().join(&file).is_file(),
            "cases.json: no file {file}"
        );
        if o.skip.is_none() {
            normalizer_of(&file, &o);
        }
    }
}
