//! The `cel` interpreter fallback: the cost metering of comprehensions, the conversion of the
//! event to and from CEL values, and [`Interp`], which evaluates a compiled expression natively
//! or in the interpreter.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::Arc;

use cel::common::ast::{operators, CallExpr, Expr as Ast};
use cel::objects::{Key, Map, Value};
use cel::IdedExpr;
use chrono::{DateTime, FixedOffset, Utc};

use crate::event::{Event, Timestamp};
use crate::fields::{self, FieldId, FieldValue};
use crate::history::History;

use super::*;

/// The most work one evaluation of an interpreted expression with comprehensions may do, in
/// cost units: each time a comprehension starts, one unit per element of its range, and each
/// time an operator or function reads an operand, one unit plus the operand's size (elements
/// of a list or map; a unit per 64 characters of a string or bytes). A `when` over a list of a hundred
/// thousand elements fits; a comprehension nested in another over it does not. Exceeding it
/// stops the evaluation with an error in `Decision.errors`.
pub const MAX_EVAL_COST: u64 = 1_000_000;

/// The function through which a metered expression passes comprehension ranges and operands:
/// it charges the evaluation's budget and returns its argument unchanged. No CEL source can
/// name it (`@` cannot start an identifier).
pub(crate) const COST_FN: &str = "@keel_cost";

/// The function every `s.replace(from, to)` and `s.replace(from, to, n)` of an interpreted
/// expression calls instead of the `cel` crate's ([`bound_replace`]): the same result, refused
/// past [`MAX_STRING_BYTES`]. No CEL source can name it.
pub(crate) const REPLACE_FN: &str = "@keel_replace";

/// The longest string a `replace` may grow to (one longer already may shrink or keep its
/// length). Each call multiplies its receiver's length by up to the replacement's plus one (an
/// empty pattern matches between every two characters), so three calls in a 4 KB expression
/// asked for a terabyte; past this it is an evaluation error.
pub const MAX_STRING_BYTES: usize = 64 * 1024;

/// Rewrites every member call `s.replace(...)` of `e` into a call of [`REPLACE_FN`] with the
/// receiver first. Recursion is bounded by the AST depth limit.
pub(super) fn bound_replace(e: &mut IdedExpr) {
    if let Ast::Call(call) = &mut e.expr {
        if call.func_name == "replace" && matches!(call.args.len(), 2 | 3) {
            if let Some(t) = call.target.take() {
                call.func_name = REPLACE_FN.to_string();
                call.args.insert(0, *t);
            }
        }
    }
    for child in children_mut(e) {
        bound_replace(child);
    }
}

/// The direct subexpressions of `e`.
fn children_mut(e: &mut IdedExpr) -> Vec<&mut IdedExpr> {
    match &mut e.expr {
        Ast::Comprehension(c) => vec![
            &mut c.iter_range,
            &mut c.accu_init,
            &mut c.loop_cond,
            &mut c.loop_step,
            &mut c.result,
        ],
        Ast::Call(call) => call
            .args
            .iter_mut()
            .chain(call.target.as_deref_mut())
            .collect(),
        Ast::Select(s) => vec![&mut s.operand],
        Ast::List(l) => l.elements.iter_mut().collect(),
        Ast::Map(m) => m
            .entries
            .iter_mut()
            .filter_map(|entry| match &mut entry.expr {
                cel::common::ast::EntryExpr::MapEntry(me) => Some([&mut me.key, &mut me.value]),
                cel::common::ast::EntryExpr::StructField(_) => None,
            })
            .flatten()
            .collect(),
        Ast::Struct(st) => st
            .entries
            .iter_mut()
            .filter_map(|entry| match &mut entry.expr {
                cel::common::ast::EntryExpr::StructField(f) => Some(&mut f.value),
                cel::common::ast::EntryExpr::MapEntry(_) => None,
            })
            .collect(),
        Ast::Ident(_) | Ast::Literal(_) | Ast::Unspecified => Vec::new(),
    }
}

/// `this.replace(from, to)` (all matches) or with `n` (the first `n`, all when negative), as
/// the `cel` crate's strings extension computes it, or `None` when the result would be longer
/// than [`MAX_STRING_BYTES`] and than `this`.
pub(crate) fn replace_bounded(this: &str, from: &str, to: &str, n: Option<i64>) -> Option<String> {
    let limit = n.and_then(|n| usize::try_from(n).ok());
    let matches = if from.is_empty() {
        this.chars().count().saturating_add(1)
    } else {
        this.matches(from).count()
    };
    let replaced = limit.map_or(matches, |l| l.min(matches));
    let len = (this.len() - replaced.saturating_mul(from.len()).min(this.len()))
        .saturating_add(replaced.saturating_mul(to.len()));
    // A string already longer (a long error message from the event) may be edited, not grown.
    if len > MAX_STRING_BYTES.max(this.len()) {
        return None;
    }
    Some(match limit {
        Some(l) => this.replacen(from, to, l),
        None => this.replace(from, to),
    })
}

/// The interpreter function [`REPLACE_FN`].
#[allow(clippy::type_complexity)]
pub(crate) fn replace_function() -> Box<
    dyn for<'c, 'k> Fn(
            &mut cel::FunctionContext<'c, 'k>,
        ) -> Result<cel::common::value::CowVal<'c, 'k>, cel::ExecutionError>
        + Send
        + Sync,
> {
    use cel::common::types::{CelInt, CelString};
    Box::new(|ftx| {
        let args = std::mem::take(&mut ftx.args);
        let text = |i: usize| {
            args.get(i)
                .and_then(|v| v.as_ref().downcast_ref::<CelString>())
                .map(|s| s.inner().to_string())
                .ok_or_else(|| {
                    cel::ExecutionError::function_error("replace", "expected string arguments")
                })
        };
        let n = match args.get(3) {
            None => None,
            Some(v) => Some(
                *v.as_ref()
                    .downcast_ref::<CelInt>()
                    .ok_or_else(|| {
                        cel::ExecutionError::function_error("replace", "expected an int count")
                    })?
                    .inner(),
            ),
        };
        let (this, from, to) = (text(0)?, text(1)?, text(2)?);
        let out = replace_bounded(&this, &from, &to, n).ok_or_else(|| {
            cel::ExecutionError::function_error(
                "replace",
                format!("the result would be longer than {MAX_STRING_BYTES} bytes"),
            )
        })?;
        Ok(cel::common::value::CowVal::owned(CelString::from(out)))
    })
}

/// Whether `e` holds a comprehension (a macro: `all`, `exists`, `exists_one`, `map`,
/// `filter`).
pub(super) fn has_comprehension(e: &IdedExpr) -> bool {
    let mut stack = vec![e];
    while let Some(e) = stack.pop() {
        match &e.expr {
            Ast::Comprehension(_) => return true,
            Ast::Call(c) => {
                stack.extend(c.args.iter());
                stack.extend(c.target.as_deref());
            }
            Ast::Select(s) => stack.push(&s.operand),
            Ast::List(l) => stack.extend(l.elements.iter()),
            Ast::Map(m) => {
                for entry in &m.entries {
                    if let cel::common::ast::EntryExpr::MapEntry(me) = &entry.expr {
                        stack.push(&me.key);
                        stack.push(&me.value);
                    }
                }
            }
            Ast::Struct(st) => {
                for entry in &st.entries {
                    if let cel::common::ast::EntryExpr::StructField(f) = &entry.expr {
                        stack.push(&f.value);
                    }
                }
            }
            Ast::Ident(_) | Ast::Literal(_) | Ast::Unspecified => {}
        }
    }
    false
}

/// How many elements the comprehensions of `e` visit at least, counting only ranges written
/// as list or map literals (others may be empty). Recursion is bounded by the AST depth limit.
pub(super) fn literal_iterations(e: &IdedExpr) -> u64 {
    let sum = |es: &mut dyn Iterator<Item = &IdedExpr>| {
        es.fold(0u64, |acc, e| acc.saturating_add(literal_iterations(e)))
    };
    match &e.expr {
        Ast::Comprehension(c) => {
            let n = match &c.iter_range.expr {
                Ast::List(l) => l.elements.len() as u64,
                Ast::Map(m) => m.entries.len() as u64,
                _ => 0,
            };
            let body = literal_iterations(&c.loop_cond)
                .saturating_add(literal_iterations(&c.loop_step))
                .saturating_add(1);
            n.saturating_mul(body).saturating_add(sum(&mut [
                &c.iter_range,
                &c.accu_init,
                &c.result,
            ]
            .into_iter()))
        }
        Ast::Call(c) => sum(&mut c.args.iter().chain(c.target.as_deref())),
        Ast::Select(s) => literal_iterations(&s.operand),
        Ast::List(l) => sum(&mut l.elements.iter()),
        Ast::Map(m) => sum(&mut m.entries.iter().filter_map(|en| match &en.expr {
            cel::common::ast::EntryExpr::MapEntry(me) => Some(&me.value),
            cel::common::ast::EntryExpr::StructField(_) => None,
        })),
        _ => 0,
    }
}

/// Rewrites `e` so that its evaluation is charged to a budget: every comprehension range, and
/// every non-literal operand of an operator or function and element of a list or map literal,
/// is wrapped in a call of [`COST_FN`].
/// Left alone, so that the interpreter keeps its fast paths and error absorption: the operands
/// of `&&`, `||`, `? :` and `@not_strictly_false`, and calls on a comprehension's accumulator
/// (the loop steps of the macros). `accus` holds the accumulators in scope. Recursion is
/// bounded by the AST depth limit.
pub(super) fn meter(e: &mut IdedExpr, accus: &mut Vec<String>) {
    match &mut e.expr {
        Ast::Comprehension(c) => {
            accus.push(c.accu_var.clone());
            for x in [
                &mut c.iter_range,
                &mut c.accu_init,
                &mut c.loop_cond,
                &mut c.loop_step,
                &mut c.result,
            ] {
                meter(x, accus);
            }
            accus.pop();
            charge(&mut c.iter_range);
        }
        Ast::Call(call) => {
            for a in call.args.iter_mut() {
                meter(a, accus);
            }
            if let Some(t) = call.target.as_mut() {
                meter(t, accus);
            }
            let control = matches!(
                call.func_name.as_str(),
                operators::LOGICAL_AND
                    | operators::LOGICAL_OR
                    | operators::CONDITIONAL
                    | operators::NOT_STRICTLY_FALSE
            );
            let on_accu = call
                .args
                .iter()
                .any(|a| matches!(&a.expr, Ast::Ident(n) if accus.contains(n)));
            if !control && !on_accu {
                for a in call.args.iter_mut() {
                    if !matches!(a.expr, Ast::Literal(_)) {
                        charge(a);
                    }
                }
                if let Some(t) = call.target.as_mut() {
                    if !matches!(t.expr, Ast::Literal(_)) {
                        charge(t);
                    }
                }
            }
        }
        Ast::Select(s) => meter(&mut s.operand, accus),
        // Elements and values are charged too: a loop step that copies a whole list into
        // every element of its result (`l.map(x, l)`) pays for each copy.
        Ast::List(l) => {
            for x in l.elements.iter_mut() {
                meter(x, accus);
                if !matches!(x.expr, Ast::Literal(_)) {
                    charge(x);
                }
            }
        }
        Ast::Map(m) => {
            for entry in m.entries.iter_mut() {
                if let cel::common::ast::EntryExpr::MapEntry(me) = &mut entry.expr {
                    meter(&mut me.key, accus);
                    meter(&mut me.value, accus);
                    if !matches!(me.value.expr, Ast::Literal(_)) {
                        charge(&mut me.value);
                    }
                }
            }
        }
        Ast::Struct(st) => {
            for entry in st.entries.iter_mut() {
                if let cel::common::ast::EntryExpr::StructField(f) = &mut entry.expr {
                    meter(&mut f.value, accus);
                }
            }
        }
        Ast::Ident(_) | Ast::Literal(_) | Ast::Unspecified => {}
    }
}

/// Wraps `e` in a call of [`COST_FN`].
pub(super) fn charge(e: &mut IdedExpr) {
    let inner = std::mem::replace(
        e,
        IdedExpr {
            id: 0,
            expr: Ast::Unspecified,
        },
    );
    *e = IdedExpr {
        id: inner.id,
        expr: Ast::Call(CallExpr {
            func_name: COST_FN.to_string(),
            target: None,
            args: vec![inner],
        }),
    };
}

/// The cost of one evaluation so far, shared by [`cost_function`] and the caller that resets
/// and reads it around each evaluation.
pub(crate) type CostMeter = Arc<std::sync::atomic::AtomicU64>;

/// The interpreter function [`COST_FN`]: charges one unit plus its argument's size to `meter`
/// and returns the argument; fails once the budget is spent.
#[allow(clippy::type_complexity)]
pub(crate) fn cost_function(
    meter: CostMeter,
) -> Box<
    dyn for<'c, 'k> Fn(
            &mut cel::FunctionContext<'c, 'k>,
        ) -> Result<cel::common::value::CowVal<'c, 'k>, cel::ExecutionError>
        + Send
        + Sync,
> {
    Box::new(move |ftx| {
        let v = ftx
            .args
            .pop()
            .ok_or_else(|| cel::ExecutionError::function_error(COST_FN, "no argument"))?;
        let size = v
            .as_sizer()
            .map_or(0, |s| u64::try_from(*s.size().inner()).unwrap_or(0));
        // Strings and bytes are compared and searched a machine word at a time.
        let size = match v.get_type().name() {
            "string" | "bytes" => size / 64,
            _ => size,
        };
        let spent = meter
            .fetch_add(1 + size, std::sync::atomic::Ordering::Relaxed)
            .saturating_add(1 + size);
        if spent > MAX_EVAL_COST {
            return Err(cel::ExecutionError::function_error(
                "cost",
                budget_exceeded(),
            ));
        }
        Ok(v)
    })
}

/// The error of an evaluation that exceeded [`MAX_EVAL_COST`].
pub(crate) fn budget_exceeded() -> String {
    format!(
        "evaluation cost budget exceeded: the expression's comprehensions and operators read more than {MAX_EVAL_COST} elements"
    )
}

/// Builds the CEL value of `event` holding only `reads` (all fields when `reads` has `None`).
pub(crate) fn event_value(ev: &Event, reads: &BTreeSet<Option<FieldId>>) -> Value {
    let all = reads.contains(&None);
    let wanted = |path: &str| {
        all || reads.iter().flatten().any(|&f| {
            let p = fields::field(f).path;
            p == path
                || path.starts_with(p) && path.as_bytes().get(p.len()) == Some(&b'.')
                || p.starts_with(path) && p.as_bytes().get(path.len()) == Some(&b'.')
        })
    };
    build_object(ev, "", &wanted)
}

pub(super) fn build_object(ev: &Event, prefix: &str, wanted: &dyn Fn(&str) -> bool) -> Value {
    let mut map = std::collections::HashMap::new();
    for child in fields::children(prefix) {
        let path = if prefix.is_empty() {
            child.to_string()
        } else {
            format!("{prefix}.{child}")
        };
        if !wanted(&path) {
            continue;
        }
        let Some(id) = fields::lookup(&path) else {
            continue;
        };
        let v = match fields::read(ev, id) {
            Ok(Some(FieldValue::Object)) => build_object(ev, &path, wanted),
            Ok(Some(v)) => to_cel(v),
            Ok(None) | Err(_) => continue,
        };
        map.insert(Key::String(Arc::new(child.to_string())), v);
    }
    Value::Map(Map { map: Arc::new(map) })
}

pub(super) fn to_cel(v: FieldValue<'_>) -> Value {
    match v {
        FieldValue::Str(s) => Value::String(Arc::new(s.to_string())),
        FieldValue::Int(i) => Value::Int(i),
        FieldValue::Bool(b) => Value::Bool(b),
        FieldValue::Time(t) => Value::Timestamp(to_fixed(t)),
        FieldValue::StrMap(m) => {
            let map = m
                .iter()
                .map(|(k, v)| {
                    (
                        Key::String(Arc::new(k.clone())),
                        Value::String(Arc::new(v.clone())),
                    )
                })
                .collect();
            Value::Map(Map { map: Arc::new(map) })
        }
        FieldValue::Details(d) => Value::List(Arc::new(
            d.iter()
                .map(|d| {
                    let mut m = std::collections::HashMap::new();
                    m.insert(
                        Key::String(Arc::new("code".into())),
                        Value::String(Arc::new(d.code.clone())),
                    );
                    if let Some(msg) = &d.message {
                        m.insert(
                            Key::String(Arc::new("message".into())),
                            Value::String(Arc::new(msg.clone())),
                        );
                    }
                    if let Some(t) = &d.target {
                        m.insert(
                            Key::String(Arc::new("target".into())),
                            Value::String(Arc::new(t.clone())),
                        );
                    }
                    Value::Map(Map { map: Arc::new(m) })
                })
                .collect(),
        )),
        FieldValue::Object => Value::Null,
    }
}

/// A UTC time as the `cel` crate's timestamp.
pub(crate) fn to_fixed(t: Timestamp) -> DateTime<FixedOffset> {
    t.fixed_offset()
}

/// Converts an interpreter result into a native value, for parity and for `reason_expr` and
/// `until`.
pub(crate) fn from_cel(v: &Value) -> Option<V<'static>> {
    Some(match v {
        Value::Null => V::Null,
        Value::Bool(b) => V::Bool(*b),
        Value::Int(i) => V::Int(*i),
        Value::UInt(u) => V::UInt(*u),
        Value::Float(f) => V::Double(*f),
        Value::String(s) => V::Str(Cow::Owned(s.to_string())),
        Value::Timestamp(t) => V::Time(t.with_timezone(&Utc)),
        Value::Duration(d) => V::Dur(*d),
        _ => return None,
    })
}

/// The interpreter fallback, with its CEL context built at most once per decision.
pub(crate) struct Interp<'a> {
    env: &'a Arc<cel::Env>,
    pub(crate) history: Option<&'a History>,
    reads: &'a BTreeSet<Option<FieldId>>,
    /// The CEL context and the cost meter of its metered evaluations (see `MAX_EVAL_COST`),
    /// both made only when a policy of this decision needs the interpreter.
    ctx: Option<(cel::Context<'a, 'a>, CostMeter)>,
}

impl<'a> Interp<'a> {
    /// An interpreter for one decision: `reads` are the event paths the fallback policies of
    /// the event's kind need.
    pub(crate) fn new(
        env: &'a Arc<cel::Env>,
        history: Option<&'a History>,
        reads: &'a BTreeSet<Option<FieldId>>,
    ) -> Interp<'a> {
        Interp {
            env,
            history,
            reads,
            ctx: None,
        }
    }

    /// Evaluates `c` on `ev` at `now`: natively when it was lowered, else in the interpreter.
    pub(crate) fn eval<'e>(
        &mut self,
        c: &'e Compiled,
        ev: &'e Event,
        now: Timestamp,
    ) -> Result<V<'e>, String> {
        if let Some(n) = &c.native {
            return n.eval(ev, now, self.history);
        }
        let Some(tree) = &c.interpreted else {
            return Err(
                "internal error: an expression with neither a native form nor a tree".into(),
            );
        };
        let (ctx, cost) = self.ctx.get_or_insert_with(|| {
            let cost = CostMeter::default();
            let mut cx = cel::Context::with_env(self.env.clone());
            cx.add_variable_from_value("event", event_value(ev, self.reads));
            cx.add_variable_from_value("now", cel::Value::Timestamp(to_fixed(now)));
            // The name cannot clash with the standard library's (it starts with `@`); were
            // it refused, metered expressions would fail as undeclared, never run unbounded.
            let _ = cx.add_function(COST_FN, cost_function(cost.clone()));
            // Likewise: were it refused, `replace` would fail as undeclared, never run
            // unbounded.
            let _ = cx.add_function(REPLACE_FN, replace_function());
            (cx, cost)
        });
        // The `cel` interpreter can panic on inputs it does not guard (chrono overflow in
        // time arithmetic, for one): a policy error, never a crash of the caller.
        let ctx = &*ctx;
        cost.store(0, std::sync::atomic::Ordering::Relaxed);
        let run = || ctx.resolve(tree);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run));
        // Over budget is an error even where `||`, `&&` or a macro absorbed the failure.
        if cost.load(std::sync::atomic::Ordering::Relaxed) > MAX_EVAL_COST {
            return Err(budget_exceeded());
        }
        match result {
            Ok(Ok(v)) => from_cel(&v).ok_or_else(|| format!("unsupported result value {v:?}")),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("the CEL interpreter failed on this input".to_string()),
        }
    }
}
