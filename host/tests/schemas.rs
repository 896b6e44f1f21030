//! The JSON Schemas of host/schemas/ (policy files, `keel test` files, `keel.yaml`), for editors
//! (yaml-language-server): every shipped file of each kind is valid, documents Keel's readers
//! reject are invalid, and `keel.yaml`'s root keys are the host's.
//!
//! Files are read with the engine's own YAML loader (YAML 1.2: `on:` is a string, not `true`),
//! so the schemas see exactly the values the readers see.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use serde_json::Value;

mod run_keel;
use run_keel::{keel, root, text};

const POLICY: &str = "policy-file.schema.json";
const TEST: &str = "test-file.schema.json";
const KEEL: &str = "keel.schema.json";

/// The root keys of `keel.yaml` (host/src/config/mod.rs, `ROOT_KEYS`).
const ROOT_KEYS: &[&str] = &[
    "policies",
    "state",
    "postgres",
    "log",
    "plugin_cache",
    "listen",
    "dry_run",
    "self",
    "sources",
    "runbooks",
    "arm",
    "kubernetes",
    "unready_after",
    "policy_reload_interval",
    "limits",
    "retention",
    "gc_interval",
    "commit_batch_max",
    "azure_identity",
    "guards",
    "budgets",
    "windows",
    "blockers",
];

fn schema(name: &str) -> Value {
    let path = root().join("host/schemas").join(name);
    let s = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&s).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn validator(name: &str) -> jsonschema::Validator {
    jsonschema::validator_for(&schema(name))
        .unwrap_or_else(|e| panic!("{name} is not a usable schema: {e}"))
}

/// A YAML document as the engine's loader gives it to the readers.
fn load(name: &Path, bytes: &[u8]) -> Value {
    keel_engine::yaml::load(name, bytes)
        .unwrap_or_else(|e| panic!("{}: {e}", name.display()))
        .value
}

fn load_file(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    load(path, &bytes)
}

/// Every problem of `doc` under the schema, one line each, named by `what`.
fn problems(v: &jsonschema::Validator, what: &str, doc: &Value) -> Vec<String> {
    v.iter_errors(doc)
        .map(|e| format!("{what}: at `{}`: {e}", e.instance_path))
        .collect()
}

/// The files under `dir`, recursively and sorted; hidden entries and `target/` are skipped.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        let name = file_name(&p);
        if name.starts_with('.') || name == "target" {
            continue;
        }
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn is_test_file(p: &Path) -> bool {
    let n = file_name(p);
    n.ends_with(".test.yaml") || n.ends_with(".test.yml")
}

fn is_yaml(p: &Path) -> bool {
    let n = file_name(p);
    n.ends_with(".yaml") || n.ends_with(".yml")
}

/// The YAML files under policies/ and wasm-plugins/examples/.
fn shipped_yaml() -> Vec<PathBuf> {
    let mut files = Vec::new();
    walk(&root().join("policies"), &mut files);
    walk(&root().join("wasm-plugins/examples"), &mut files);
    files.retain(|p| is_yaml(p));
    files
}

/// A policy file: a top-level `policies:` list and no `cases:`.
fn is_policy_doc(doc: &Value) -> bool {
    doc.get("policies").is_some_and(Value::is_array) && doc.get("cases").is_none()
}

/// Validates every document, asserting none has a problem; returns how many there were.
fn assert_all_valid(schema_name: &str, docs: &[(String, Value)]) -> usize {
    let v = validator(schema_name);
    let mut all = Vec::new();
    for (what, doc) in docs {
        all.extend(problems(&v, what, doc));
    }
    assert!(
        all.is_empty(),
        "{} problem(s) under {schema_name}:\n{}",
        all.len(),
        all.join("\n")
    );
    docs.len()
}

#[test]
fn the_schemas_are_draft_2020_12_schemas() {
    for name in [POLICY, TEST, KEEL] {
        let s = schema(name);
        assert_eq!(
            s["$schema"], "https://json-schema.org/draft/2020-12/schema",
            "{name}"
        );
        assert!(
            jsonschema::meta::is_valid(&s),
            "{name} is not a valid schema"
        );
        validator(name);
    }
}

#[test]
fn every_shipped_policy_file_is_valid() {
    let docs: Vec<(String, Value)> = shipped_yaml()
        .into_iter()
        .filter(|p| !is_test_file(p))
        .map(|p| (p.display().to_string(), load_file(&p)))
        .filter(|(_, doc)| is_policy_doc(doc))
        .collect();
    let n = assert_all_valid(POLICY, &docs);
    // policies/standard, policies/compat and the Wasm examples: a walk that finds a handful
    // has gone wrong.
    assert!(n >= 10, "only {n} policy files found");
}

#[test]
fn every_shipped_test_file_is_valid() {
    let docs: Vec<(String, Value)> = shipped_yaml()
        .into_iter()
        .filter(|p| is_test_file(p))
        .map(|p| (p.display().to_string(), load_file(&p)))
        .collect();
    let n = assert_all_valid(TEST, &docs);
    assert!(n >= 10, "only {n} test files found");
}

#[test]
fn the_shipped_configurations_are_valid() {
    let mut docs = Vec::new();
    let example = root().join("host/examples/keel.yaml");
    docs.push((example.display().to_string(), load_file(&example)));
    let mut deploy = Vec::new();
    walk(&root().join("host/deploy"), &mut deploy);
    for p in deploy {
        if file_name(&p) == "keel.yaml" {
            docs.push((p.display().to_string(), load_file(&p)));
        }
    }
    // The Kubernetes ConfigMap carries a keel.yaml as a string.
    let cm = root().join("host/deploy/kubernetes/configmap.yaml");
    if cm.exists() {
        let map = load_file(&cm);
        let inner = map["data"]["keel.yaml"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: no data.\"keel.yaml\"", cm.display()));
        let name = format!("{} (data.\"keel.yaml\")", cm.display());
        docs.push((name.clone(), load(Path::new(&name), inner.as_bytes())));
    }
    assert_all_valid(KEEL, &docs);
}

/// The ```yaml blocks of README.md that are whole files: a test file (`cases:`), a policy
/// file (a `policies:` list), or a `keel.yaml` (its first key is one of the root keys).
/// Sketches with `{...}` placeholders, and blocks that are neither, are left out.
#[test]
fn the_readme_examples_are_valid() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let (mut policies, mut tests, mut configs) = (Vec::new(), Vec::new(), Vec::new());
    let mut block: Option<(usize, String)> = None;
    for (i, line) in readme.lines().enumerate() {
        let line = line.trim_end();
        if block.is_none() {
            if line == "```yaml" {
                // Its first line is the next one, numbered from 1.
                block = Some((i + 2, String::new()));
            }
            continue;
        }
        if line != "```" {
            if let Some((_, body)) = block.as_mut() {
                body.push_str(line);
                body.push('\n');
            }
            continue;
        }
        let Some((first_line, body)) = block.take() else {
            continue;
        };
        if body.contains("{...}") {
            continue;
        }
        let name = format!("README.md:{first_line}");
        let Ok(doc) = keel_engine::yaml::load(Path::new(&name), body.as_bytes()) else {
            eprintln!("{name}: not a YAML document, skipped");
            continue;
        };
        let doc = doc.value;
        let first_key = body
            .lines()
            .find(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .and_then(|l| l.split_once(':'))
            .map(|(k, _)| k.to_string())
            .unwrap_or_default();
        if doc.get("cases").is_some() {
            tests.push((name, doc));
        } else if is_policy_doc(&doc) {
            policies.push((name, doc));
        } else if ROOT_KEYS.contains(&first_key.as_str()) {
            configs.push((name, doc));
        }
    }
    assert_all_valid(POLICY, &policies);
    assert_all_valid(TEST, &tests);
    let n = assert_all_valid(KEEL, &configs);
    assert!(n >= 3, "only {n} keel.yaml examples found in README.md");
}

/// Pairs of documents: the first valid, the second the same with one mistake Keel rejects.
const PAIRS: &[(&str, &str, &str, &str)] = &[
    (
        POLICY,
        "unknown root key",
        "policies: []\n",
        "policies: []\ncolour: red\n",
    ),
    (
        POLICY,
        "unknown key in a policy",
        "policies:\n  - { name: p, on: [maintenance], action: drain }\n",
        "policies:\n  - { name: p, on: [maintenance], action: drain, colour: red }\n",
    ),
    (
        POLICY,
        "unknown action",
        "policies:\n  - { name: p, on: maintenance, action: drain }\n",
        "policies:\n  - { name: p, on: maintenance, action: reboot }\n",
    ),
    (
        POLICY,
        "unknown event kind",
        "policies:\n  - { name: p, on: [health], action: drain }\n",
        "policies:\n  - { name: p, on: [reboot], action: drain }\n",
    ),
    (
        POLICY,
        "bad duration",
        "policies:\n  - { name: p, on: [health], action: defer, params: { delay: 1m30s } }\n",
        "policies:\n  - { name: p, on: [health], action: defer, params: { delay: 30s1m } }\n",
    ),
    (
        POLICY,
        "duration with a fraction",
        "policies:\n  - { name: p, on: [health], action: defer, params: { delay: 90m } }\n",
        "policies:\n  - { name: p, on: [health], action: defer, params: { delay: 1.5h } }\n",
    ),
    (
        POLICY,
        "param of another action",
        "policies:\n  - { name: p, on: [health], action: drain, params: { deadline_s: 600 } }\n",
        "policies:\n  - { name: p, on: [health], action: drain, params: { delay_s: 600 } }\n",
    ),
    (
        TEST,
        "unknown root key",
        "cases:\n  - { name: c, event: { maintenance: {} }, expect: { action: drain } }\n",
        "cases:\n  - { name: c, event: { maintenance: {} }, expect: { action: drain } }\nguards: {}\n",
    ),
    (
        TEST,
        "unknown expect key in a step",
        "cases:\n  - name: c\n    start: 2021-10-13T14:00:00Z\n    steps:\n      - { at: 0s, event: { maintenance: {} }, expect: { action: drain } }\n",
        "cases:\n  - name: c\n    start: 2021-10-13T14:00:00Z\n    steps:\n      - { at: 0s, event: { maintenance: {} }, expect: { actoin: drain } }\n",
    ),
    (
        TEST,
        "bad step offset",
        "cases:\n  - name: c\n    start: 2021-10-13T14:00:00Z\n    steps:\n      - { at: +15m, event: { health: {} }, expect: { action: none } }\n",
        "cases:\n  - name: c\n    start: 2021-10-13T14:00:00Z\n    steps:\n      - { at: 15 minutes, event: { health: {} }, expect: { action: none } }\n",
    ),
    (
        KEEL,
        "unknown root key",
        "dry_run: true\n",
        "dry_run: true\ncolour: red\n",
    ),
    (
        KEEL,
        "bad duration",
        "retention: 30d\n",
        "retention: forever\n",
    ),
    (
        KEEL,
        "zero where a duration must be positive",
        "gc_interval: 1h\n",
        "gc_interval: 0s\n",
    ),
    (
        KEEL,
        "unknown runbook action",
        "runbooks:\n  drain:\n    - { name: announce, log: {} }\n",
        "runbooks:\n  drian:\n    - { name: announce, log: {} }\n",
    ),
];

#[test]
fn documents_keel_rejects_are_invalid() {
    let mut wrong = Vec::new();
    for (schema_name, what, good, bad) in PAIRS {
        let v = validator(schema_name);
        let good_doc = load(Path::new("good.yaml"), good.as_bytes());
        let found = problems(
            &v,
            &format!("{schema_name}, {what}, the valid twin"),
            &good_doc,
        );
        wrong.extend(found);
        let bad_doc = load(Path::new("bad.yaml"), bad.as_bytes());
        if v.is_valid(&bad_doc) {
            wrong.push(format!("{schema_name}: {what}: accepted {bad:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_root_keys_of_the_schema_are_the_hosts() {
    let s = schema(KEEL);
    let mut in_schema: Vec<String> = s["properties"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    in_schema.sort();
    let mut listed: Vec<String> = ROOT_KEYS.iter().map(|k| k.to_string()).collect();
    listed.sort();
    assert_eq!(in_schema, listed);

    // The host names its root keys when it meets an unknown one: they are the same.
    let d = tempfile::tempdir().unwrap();
    let bad = d.path().join("keel.yaml");
    std::fs::write(&bad, "colour: red\n").unwrap();
    let out = keel(&["check", "--config", &bad.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.contains("unknown key `colour`"))
        .unwrap_or_else(|| panic!("no unknown-key error for `colour`:\n{err}"));
    let (_, keys) = line
        .split_once("expected one of: ")
        .unwrap_or_else(|| panic!("the error does not list the root keys: {line}"));
    let mut from_host: Vec<String> = keys
        .trim()
        .trim_end_matches('.')
        .split(", ")
        .map(|k| k.trim().to_string())
        .collect();
    from_host.sort();
    assert_eq!(from_host, listed, "{line}");

    // And a file the schema accepts, the host accepts.
    let ok = d.path().join("ok.yaml");
    std::fs::write(&ok, "dry_run: true\nretention: 7d\n").unwrap();
    assert!(validator(KEEL).is_valid(&load_file(&ok)));
    let out = keel(&["check", "--config", &ok.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}
