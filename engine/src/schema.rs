//! JSON Schemas of the event and decision, generated from the Rust types.
//!
//! The committed copies live in `engine/schema/`; a test fails when they are stale
//! (regenerate with `KEEL_BLESS=1 cargo test -p keel-engine --test schema`).

use crate::decision::Decision;
use crate::event::Event;

/// The JSON Schema of [`Event`], pretty-printed.
pub fn event_schema() -> String {
    pretty(schemars::schema_for!(Event))
}

/// The JSON Schema of [`Decision`], pretty-printed.
pub fn decision_schema() -> String {
    pretty(schemars::schema_for!(Decision))
}

fn pretty(schema: schemars::Schema) -> String {
    let mut s = serde_json::to_string_pretty(&schema).unwrap_or_default();
    s.push('\n');
    s
}
