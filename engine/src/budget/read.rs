//! Reading `budgets:` (a list) from a YAML document with positions: one reader for
//! `keel.yaml` and test files, so both accept exactly the same keys.

use std::sync::Arc;

use serde_json::Value;

use super::{Amount, BudgetSpec};
use crate::decision::Action;
use crate::diag::Diagnostic;
use crate::key::KeyExpr;
use crate::yaml::YamlDoc;

/// The most budgets a configuration may declare.
pub const MAX_BUDGETS: usize = 64;

/// The keys of a budget.
const KEYS: &[&str] = &[
    "name",
    "key",
    "per",
    "actions",
    "max_in_flight",
    "group_size",
    "min_healthy",
    "bake",
    "lease_ttl",
];

struct R<'a> {
    doc: &'a YamlDoc,
    diags: Vec<Diagnostic>,
}

impl R<'_> {
    fn err(&mut self, ptr: &str, msg: impl Into<String>) {
        self.diags.push(self.doc.diagnostic(ptr, msg));
    }

    fn keys(&mut self, ptr: &str, v: &Value, allowed: &[&str]) {
        let Value::Object(m) = v else {
            self.err(ptr, "expected a map");
            return;
        };
        for k in m.keys() {
            if !allowed.contains(&k.as_str()) {
                let hint = crate::fields::did_you_mean(k, allowed.iter().copied())
                    .map(|h| format!(" (did you mean `{h}`?)"))
                    .unwrap_or_default();
                let msg = format!(
                    "unknown key `{}`{hint}; expected one of: {}",
                    crate::escape(k),
                    allowed.join(", ")
                );
                let d = self.doc.key_diagnostic(&format!("{ptr}/{k}"), msg);
                self.diags.push(d);
            }
        }
    }

    /// A duration at `ptr`: a number of seconds, or a string in
    /// [`crate::parse_duration`]'s grammar; `default` when absent.
    fn duration(&mut self, ptr: &str, v: Option<&Value>, default: i64) -> i64 {
        let parsed = match v {
            None => return default,
            Some(Value::Number(n)) => crate::parse_duration(&n.to_string()),
            Some(Value::String(s)) => crate::parse_duration(s),
            Some(_) => {
                self.err(
                    ptr,
                    "expected a duration such as 500ms, 1s, 5m, 1m30s: not a number or a string",
                );
                return default;
            }
        };
        match parsed {
            Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            Err(e) => {
                self.err(
                    ptr,
                    format!("expected a duration such as 500ms, 1s, 5m, 1m30s: {e}"),
                );
                default
            }
        }
    }
}

/// Reads the list of budgets at JSON pointer `ptr` of `doc` (`"/budgets"` in `keel.yaml`;
/// absent: none). Every problem is a diagnostic at its position; a budget with a problem is
/// left out of the list.
pub fn read_budgets(doc: &YamlDoc, ptr: &str) -> (Vec<BudgetSpec>, Vec<Diagnostic>) {
    let mut r = R {
        doc,
        diags: Vec::new(),
    };
    let out = match doc.value.pointer(ptr) {
        None => Vec::new(),
        Some(b) => parse(&mut r, ptr, b),
    };
    (out, r.diags)
}

fn parse(v: &mut R<'_>, ptr: &str, b: &Value) -> Vec<BudgetSpec> {
    let Some(list) = b.as_array() else {
        v.err(ptr, "expected a list of budgets");
        return Vec::new();
    };
    if list.len() > MAX_BUDGETS {
        v.err(
            ptr,
            format!("at most {MAX_BUDGETS} budgets may be declared"),
        );
        return Vec::new();
    }
    let mut out: Vec<BudgetSpec> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let p = format!("{ptr}/{i}");
        v.keys(&p, item, KEYS);
        if !item.is_object() {
            continue;
        }
        let name = match item.get("name").and_then(Value::as_str) {
            Some(n) if name_ok(n) => n.to_string(),
            _ => {
                v.err(
                    &format!("{p}/name"),
                    "expected a name of 1 to 64 letters, digits, `-` and `_`",
                );
                continue;
            }
        };
        if names.contains(&name) {
            v.err(
                &format!("{p}/name"),
                format!("budget `{name}` is declared twice"),
            );
        }
        names.push(name.clone());
        let key = match item.get("key") {
            None => {
                v.err(
                    &p,
                    "a budget needs a `key`: a CEL expression over the event",
                );
                None
            }
            Some(k) => expr(v, &format!("{p}/key"), k),
        };
        let per = item
            .get("per")
            .and_then(|k| expr(v, &format!("{p}/per"), k));
        let actions = actions(v, &format!("{p}/actions"), item.get("actions"));
        let max_in_flight = match item.get("max_in_flight") {
            None => {
                v.err(&p, "a budget needs `max_in_flight`: a count such as 1, or a percentage such as \"25%\"");
                Amount::Count(1)
            }
            Some(m) => amount(v, &format!("{p}/max_in_flight"), m, false),
        };
        let group_size = item.get("group_size").and_then(|g| {
            match g.as_u64().and_then(|n| u32::try_from(n).ok()) {
                Some(n) if (1..=1_000_000).contains(&n) => Some(n),
                _ => {
                    v.err(
                        &format!("{p}/group_size"),
                        "expected a whole number from 1 to 1000000",
                    );
                    None
                }
            }
        });
        let min_healthy = item
            .get("min_healthy")
            .map(|m| amount(v, &format!("{p}/min_healthy"), m, true));
        let bake_s = v.duration(&format!("{p}/bake"), item.get("bake"), 0);
        let ttl_ptr = format!("{p}/lease_ttl");
        let mut ttl = v.duration(&ttl_ptr, item.get("lease_ttl"), 60);
        if item.get("lease_ttl").is_some() && ttl < 3 {
            v.err(
                &ttl_ptr,
                "a lease must last at least 3s (it is renewed every third of it)",
            );
            ttl = 3;
        }
        if let (Some(key), Some(actions)) = (key, actions) {
            out.push(BudgetSpec {
                name,
                key,
                per,
                actions,
                max_in_flight,
                group_size,
                min_healthy,
                bake_s,
                lease_ttl_s: ttl,
            });
        }
    }
    out
}

/// A name made of ASCII letters, digits, `-` and `_`, 1 to 64 characters.
fn name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.chars().count() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// A CEL key expression; its problems at the expression's position.
fn expr(v: &mut R<'_>, ptr: &str, val: &Value) -> Option<Arc<KeyExpr>> {
    let Some(text) = val.as_str() else {
        v.err(ptr, "expected a CEL expression (a string)");
        return None;
    };
    match KeyExpr::compile(text) {
        Ok(k) => Some(Arc::new(k)),
        Err(e) => {
            let help = e.help.map_or_else(String::new, |h| format!(" (help: {h})"));
            v.err(
                ptr,
                format!(
                    "{} (at character {} of the expression){help}",
                    e.message,
                    e.offset + 1
                ),
            );
            None
        }
    }
}

/// The actions a budget applies to (default `[drain]`): any but `escalate` and `none`.
fn actions(v: &mut R<'_>, ptr: &str, val: Option<&Value>) -> Option<Vec<Action>> {
    let Some(val) = val else {
        return Some(vec![Action::Drain]);
    };
    let list = val.as_array().filter(|l| !l.is_empty());
    let Some(list) = list else {
        v.err(ptr, "expected a non-empty list of actions, such as [drain]");
        return None;
    };
    let mut out = Vec::new();
    for (i, a) in list.iter().enumerate() {
        match a.as_str().and_then(Action::parse) {
            Some(Action::Escalate | Action::None) | None => {
                v.err(
                    &format!("{ptr}/{i}"),
                    "expected one of: drain, retry, retry_without_agent, defer, acknowledge",
                );
                return None;
            }
            Some(a) => out.push(a),
        }
    }
    Some(out)
}

/// A count (a whole number; 0 allowed only for `min_healthy`) or a percentage `"N%"`.
fn amount(v: &mut R<'_>, ptr: &str, val: &Value, zero_ok: bool) -> Amount {
    let min = u64::from(!zero_ok);
    if let Some(n) = val.as_u64() {
        if (min..=1_000_000).contains(&n) {
            return Amount::Count(u32::try_from(n).unwrap_or(1));
        }
    }
    if let Some(p) = val
        .as_str()
        .and_then(|s| s.trim().strip_suffix('%'))
        .and_then(|s| s.trim().parse::<f64>().ok())
    {
        if p.is_finite() && p > 0.0 && p <= 100.0 {
            return Amount::Percent(p);
        }
    }
    v.err(
        ptr,
        format!(
            "expected a whole number from {min} to 1000000, or a percentage of the group such as \"25%\""
        ),
    );
    Amount::Count(1)
}
