//! [`KeyExpr`]: a CEL expression over one event that yields a string key, for callers that
//! group events by an operator-written expression (the host's concurrency budgets key their
//! slots by one: a zone, an update domain, a tag, any field).
//!
//! It is checked against the event schema like a policy's `when` (unknown paths are errors
//! with a did-you-mean), runs natively where its shape allows and in the `cel` interpreter
//! otherwise, with the same cost budget. It reads `event` and `now`, never `history`.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::compile::{compile, Compiled, Interp, Ty, V};
use crate::diag::Pos;
use crate::event::{Event, Timestamp};
use crate::expr::Expr;

/// A compiled key expression. Cheap to share (`Send + Sync`): evaluation keeps no state.
pub struct KeyExpr {
    text: String,
    compiled: Compiled,
    env: Arc<cel::Env>,
}

impl std::fmt::Debug for KeyExpr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyExpr").field("text", &self.text).finish()
    }
}

/// Why a key expression was rejected at load.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct KeyExprError {
    /// The character offset in the expression the problem is at (0: the whole expression).
    pub offset: usize,
    /// What is wrong.
    pub message: String,
    /// How to fix it, when there is a likely fix.
    pub help: Option<String>,
}

/// Why a key expression did not give a key for an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The evaluation failed (a field the event does not carry, a type mismatch, the cost
    /// budget): the message, as CEL reports it.
    #[error("{0}")]
    Eval(String),
    /// It evaluated to something other than a string, integer or boolean.
    #[error("the key evaluated to {0}, not a string")]
    NotAString(String),
}

impl KeyExpr {
    /// Compiles `text`: CEL syntax, the event paths it reads, its static type (a string,
    /// integer or boolean where known), and the same size and nesting limits as policies.
    ///
    /// ```
    /// use keel_engine::KeyExpr;
    /// let k = KeyExpr::compile(r#"event.resource.availability_set + "/ud-" + string(event.resource.update_domain)"#)?;
    /// assert!(KeyExpr::compile("event.resource.zonee").is_err());
    /// assert!(KeyExpr::compile("history.count(duration(\"1h\")) > 1").is_err());
    /// # let _ = k;
    /// # Ok::<(), keel_engine::KeyExprError>(())
    /// ```
    pub fn compile(text: &str) -> Result<KeyExpr, KeyExprError> {
        let expr = Expr {
            text: text.to_string(),
            positions: Arc::from(vec![Pos::FILE; text.chars().count() + 1]),
        };
        let compiled = compile(&expr).map_err(|problems| {
            let first = problems.into_iter().next();
            first.map_or_else(
                || KeyExprError {
                    offset: 0,
                    message: "invalid expression".into(),
                    help: None,
                },
                |p| KeyExprError {
                    offset: p.offset,
                    message: p.message,
                    help: p.help,
                },
            )
        })?;
        if compiled.uses_history {
            return Err(KeyExprError {
                offset: 0,
                message: "a key expression cannot query `history`: it reads `event` and `now`"
                    .into(),
                help: None,
            });
        }
        if let Some(ty) = compiled.ty {
            if !matches!(ty, Ty::Str | Ty::Int | Ty::UInt | Ty::Bool) {
                return Err(KeyExprError {
                    offset: 0,
                    message: format!(
                        "a key must be a string, but this expression is a {}",
                        ty.name()
                    ),
                    help: Some("convert it with string(...)".into()),
                });
            }
        }
        Ok(KeyExpr {
            text: text.to_string(),
            compiled,
            env: Arc::new(cel::Env::stdlib()),
        })
    }

    /// The expression's text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The key of `ev` at `now`: a string as is, an integer or boolean in its decimal or
    /// `true`/`false` form.
    pub fn eval(&self, ev: &Event, now: Timestamp) -> Result<String, KeyError> {
        let reads: &BTreeSet<_> = &self.compiled.reads;
        let mut interp = Interp::new(&self.env, None, reads);
        match interp.eval(&self.compiled, ev, now) {
            Ok(V::Str(s)) => Ok(s.into_owned()),
            Ok(V::Int(i)) => Ok(i.to_string()),
            Ok(V::UInt(u)) => Ok(u.to_string()),
            Ok(V::Bool(b)) => Ok(b.to_string()),
            Ok(other) => Err(KeyError::NotAString(format!("{other:?}"))),
            Err(e) => Err(KeyError::Eval(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ev() -> Event {
        serde_json::from_value(serde_json::json!({
            "id": "x:1", "time": "2026-01-01T00:00:00Z", "source": "ingest",
            "kind": "maintenance",
            "resource": {"name": "vm1", "availability_set": "web", "update_domain": 3,
                         "tags": {"tier": "front"}},
            "maintenance": {"type": "reboot", "status": "scheduled"},
        }))
        .unwrap()
    }

    #[test]
    fn keys_are_strings_of_native_and_interpreted_expressions() {
        let e = ev();
        let now = e.time;
        let k = |s: &str| KeyExpr::compile(s).unwrap().eval(&e, now);
        assert_eq!(k("event.resource.availability_set").unwrap(), "web");
        assert_eq!(
            k(r#"event.resource.availability_set + "/ud-" + string(event.resource.update_domain)"#)
                .unwrap(),
            "web/ud-3"
        );
        assert_eq!(k("event.resource.update_domain").unwrap(), "3");
        assert_eq!(k(r#"event.resource.tags["tier"]"#).unwrap(), "front");
        assert_eq!(k("has(event.resource.zone)").unwrap(), "false");
        assert!(matches!(k("event.resource.zone"), Err(KeyError::Eval(_))));
        // A timestamp is refused at compile time (its static type is known).
        assert!(KeyExpr::compile("event.time").is_err());
    }

    #[test]
    fn load_errors_name_the_problem() {
        let e = KeyExpr::compile("event.resource.zonee").unwrap_err();
        assert!(e.message.contains("zonee"), "{e}");
        let e = KeyExpr::compile("event.resource.name +").unwrap_err();
        assert!(e.message.contains("syntax"), "{e}");
        let e = KeyExpr::compile(r#"history.count("1h") > 2"#).unwrap_err();
        assert!(e.message.contains("history"), "{e}");
        let e = KeyExpr::compile("event.time").unwrap_err();
        assert!(e.message.contains("must be a string"), "{e}");
        assert_eq!(
            KeyExpr::compile("event.resource.name").unwrap().text(),
            "event.resource.name"
        );
    }
}
