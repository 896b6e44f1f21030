//! The committed JSON Schemas must match the Rust types. Regenerate with
//! `KEEL_BLESS=1 cargo test -p keel-engine --test schema`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

fn check(name: &str, generated: String) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("schema")
        .join(name);
    if std::env::var_os("KEEL_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is stale: the types changed. Regenerate it with \
         `KEEL_BLESS=1 cargo test -p keel-engine --test schema` and commit it.",
        path.display()
    );
}

#[test]
fn event_schema_is_current() {
    check("event.schema.json", keel_engine::schema::event_schema());
}

#[test]
fn decision_schema_is_current() {
    check(
        "decision.schema.json",
        keel_engine::schema::decision_schema(),
    );
}

/// Every leaf path of the event schema is readable by policies (or deliberately not), and
/// every readable path exists in the schema: the field table and the types cannot drift.
#[test]
fn field_table_matches_schema() {
    let schema: serde_json::Value =
        serde_json::from_str(&keel_engine::schema::event_schema()).unwrap();
    let defs = schema["$defs"].clone();
    let mut paths = Vec::new();
    collect(&schema, &defs, "", &mut paths, 0);
    paths.sort();
    let unreadable = ["raw", "failure.request"];
    let mut table: Vec<String> = keel_engine::fields::FIELDS
        .iter()
        .map(|f| f.path.to_string())
        .collect();
    table.sort();
    let expected: Vec<String> = paths
        .iter()
        .filter(|p| !unreadable.contains(&p.as_str()))
        .cloned()
        .collect();
    assert_eq!(table, expected);
}

fn resolve<'a>(v: &'a serde_json::Value, defs: &'a serde_json::Value) -> &'a serde_json::Value {
    if let Some(r) = v.get("$ref").and_then(|r| r.as_str()) {
        let name = r.rsplit('/').next().unwrap();
        return &defs[name];
    }
    // `Option<T>` of a struct is `anyOf: [{$ref}, {type: null}]`.
    if let Some(any) = v.get("anyOf").and_then(|a| a.as_array()) {
        for a in any {
            if a.get("$ref").is_some() {
                return resolve(a, defs);
            }
        }
    }
    v
}

fn collect(
    v: &serde_json::Value,
    defs: &serde_json::Value,
    prefix: &str,
    out: &mut Vec<String>,
    depth: usize,
) {
    assert!(depth < 8);
    let v = resolve(v, defs);
    let Some(props) = v.get("properties").and_then(|p| p.as_object()) else {
        return;
    };
    for (k, sub) in props {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        out.push(path.clone());
        let r = resolve(sub, defs);
        // Recurse into objects with fixed properties (not maps like `tags`, nor lists).
        if r.get("properties").is_some() {
            collect(sub, defs, &path, out, depth + 1);
        }
    }
}
