//! CEL expressions: parsed once, checked against the event schema, and lowered to a native
//! evaluator where their shape allows, with the `cel` interpreter as the fallback.
//!
//! The native form covers what policies mostly are: field reads, literals, `has()`, `==`,
//! `!=`, `<`…`>=`, `in` over literal lists, `&&`, `||`, `!`, `? :`, `startsWith`,
//! `endsWith`, `contains`, tag lookups, `now`, `duration("…")`/`timestamp("…")` literals and
//! simple time and integer arithmetic. It reads the typed event in place and has the `cel`
//! crate's semantics (tested for parity), including errors absorbed by `&&` and `||`.
//! Anything else (macros, `matches`, `size`, conversions, ...) runs in the interpreter on a
//! CEL value holding only the event fields some fallback policy reads.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::Arc;

use cel::common::ast::{operators, CallExpr, Expr as Ast, LiteralValue};
use cel::objects::{Key, Map, Value};
use cel::IdedExpr;
use chrono::{DateTime, Datelike, Duration, FixedOffset, Utc};

use crate::decision::Action;
use crate::event::{Event, Timestamp};
use crate::fields::{self, did_you_mean, FieldId, FieldType, FieldValue};
use crate::history::{self, History, Val as HVal};
use crate::policy::Expr;

/// A runtime value of the native evaluator.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum V<'e> {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Double(f64),
    Str(Cow<'e, str>),
    Time(Timestamp),
    Dur(Duration),
}

/// The static type of an expression, where known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ty {
    Null,
    Bool,
    Int,
    UInt,
    Double,
    Str,
    Time,
    Dur,
}

impl Ty {
    fn name(self) -> &'static str {
        match self {
            Ty::Null => "null",
            Ty::Bool => "bool",
            Ty::Int => "int",
            Ty::UInt => "uint",
            Ty::Double => "double",
            Ty::Str => "string",
            Ty::Time => "timestamp",
            Ty::Dur => "duration",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arith {
    Add,
    Sub,
    Mul,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StrOp {
    StartsWith,
    EndsWith,
    Contains,
}

/// A natively evaluable expression.
#[derive(Debug, Clone)]
pub(crate) enum Native {
    Lit(V<'static>),
    Field(FieldId),
    Tag(String),
    HasTag(String),
    Now,
    Has(FieldId),
    Not(Box<Native>),
    And(Box<Native>, Box<Native>),
    Or(Box<Native>, Box<Native>),
    Cond(Box<Native>, Box<Native>, Box<Native>),
    Cmp(Cmp, Box<Native>, Box<Native>),
    Arith(Arith, Box<Native>, Box<Native>),
    In(Box<Native>, Vec<V<'static>>),
    StrFn(StrOp, Box<Native>, Box<Native>),
    /// `history.count(filter, window)` or `history.resources(filter, window)`.
    History {
        distinct: bool,
        filter: Vec<(FieldId, Native)>,
        window: Box<Native>,
        /// Count at most this many (set when the count is compared with a constant `k`:
        /// `k + 1` decides every comparison), so a query stops early in a dense window.
        cap: Option<i64>,
    },
    /// `history.actions(resource, action, window)`, counted up to the cap (see `History`).
    Actions(Box<Native>, Action, Box<Native>, Option<i64>),
    /// `string(x)` of an int or a string.
    ToString(Box<Native>),
}

/// An evaluation error (recorded in `Decision.errors`).
pub(crate) type EvalResult<'e> = Result<V<'e>, String>;

fn no_such_key(k: &str) -> String {
    format!("No such key: {k}")
}

impl Native {
    pub(crate) fn eval<'e>(
        &self,
        ev: &'e Event,
        now: Timestamp,
        h: Option<&History>,
    ) -> EvalResult<'e> {
        match self {
            Native::Lit(v) => Ok(v.clone()),
            Native::Now => Ok(V::Time(now)),
            Native::Field(id) => match fields::read(ev, *id) {
                Ok(Some(v)) => Ok(from_field(v)),
                Ok(None) => {
                    let path = fields::field(*id).path;
                    Err(no_such_key(path.rsplit('.').next().unwrap_or(path)))
                }
                Err(parent) => Err(no_such_key(parent)),
            },
            Native::Tag(k) => ev
                .resource
                .tags
                .get(k)
                .map(|v| V::Str(Cow::Borrowed(v.as_str())))
                .ok_or_else(|| no_such_key(k)),
            Native::HasTag(k) => Ok(V::Bool(ev.resource.tags.contains_key(k))),
            Native::Has(id) => match fields::read(ev, *id) {
                Ok(v) => Ok(V::Bool(v.is_some())),
                Err(parent) => Err(no_such_key(parent)),
            },
            Native::Not(a) => match a.eval(ev, now, h)? {
                V::Bool(b) => Ok(V::Bool(!b)),
                other => Err(format!("no such overload: !{}", vname(&other))),
            },
            Native::And(a, b) => logic(a.eval(ev, now, h), || b.eval(ev, now, h), false),
            Native::Or(a, b) => logic(a.eval(ev, now, h), || b.eval(ev, now, h), true),
            Native::Cond(c, a, b) => match c.eval(ev, now, h)? {
                V::Bool(true) => a.eval(ev, now, h),
                V::Bool(false) => b.eval(ev, now, h),
                other => Err(format!("no such overload: {} ? _ : _", vname(&other))),
            },
            Native::Cmp(op, a, b) => {
                let (a, b) = (a.eval(ev, now, h)?, b.eval(ev, now, h)?);
                compare(*op, &a, &b).map(V::Bool)
            }
            Native::Arith(op, a, b) => arith(*op, a.eval(ev, now, h)?, b.eval(ev, now, h)?),
            Native::In(a, list) => {
                let a = a.eval(ev, now, h)?;
                Ok(V::Bool(list.contains(&a)))
            }
            Native::History {
                distinct,
                filter,
                window,
                cap,
            } => {
                let window = duration_of(window.eval(ev, now, h)?)?;
                let mut f = Vec::with_capacity(filter.len());
                for (id, n) in filter {
                    f.push((*id, history_val(n.eval(ev, now, h)?)?));
                }
                Ok(V::Int(match h {
                    None => 0,
                    Some(h) if *distinct => h.resources(&f, ev.time, window, *cap),
                    Some(h) => h.count(&f, ev.time, window, *cap),
                }))
            }
            Native::Actions(resource, action, window, cap) => {
                let window = duration_of(window.eval(ev, now, h)?)?;
                let V::Str(r) = resource.eval(ev, now, h)? else {
                    return Err("history.actions: the resource must be a string".into());
                };
                Ok(V::Int(h.map_or(0, |h| {
                    h.actions(&r, *action, ev.time, window, *cap)
                })))
            }
            Native::ToString(a) => match a.eval(ev, now, h)? {
                V::Int(i) => Ok(V::Str(Cow::Owned(i.to_string()))),
                V::Str(s) => Ok(V::Str(s)),
                other => Err(format!("no such overload: string({})", vname(&other))),
            },
            Native::StrFn(op, a, b) => match (a.eval(ev, now, h)?, b.eval(ev, now, h)?) {
                (V::Str(a), V::Str(b)) => Ok(V::Bool(match op {
                    StrOp::StartsWith => a.starts_with(b.as_ref()),
                    StrOp::EndsWith => a.ends_with(b.as_ref()),
                    StrOp::Contains => a.contains(b.as_ref()),
                })),
                (a, b) => Err(format!(
                    "no such overload for {op:?}({}, {})",
                    vname(&a),
                    vname(&b)
                )),
            },
        }
    }
}

/// A history count compared with a constant `k >= 0` needs counting only up to `k + 1`: every
/// comparison (`==`, `!=`, `<`, `<=`, `>`, `>=`) of `min(n, k + 1)` with `k` has the truth
/// value of the same comparison of `n` with `k`.
fn cap_history(query: &mut Native, other: &Native) {
    let Native::Lit(V::Int(k)) = other else {
        return;
    };
    let Some(cap) = (*k >= 0).then(|| k.saturating_add(1)) else {
        return;
    };
    match query {
        Native::History { cap: c, .. } | Native::Actions(_, _, _, c) => *c = Some(cap),
        _ => {}
    }
}

fn duration_of(v: V<'_>) -> Result<Duration, String> {
    match v {
        V::Dur(d) if d > Duration::zero() => Ok(d),
        V::Dur(_) => Err("a history window must be positive".into()),
        other => Err(format!(
            "a history window must be a duration, not {}",
            vname(&other)
        )),
    }
}

fn history_val(v: V<'_>) -> Result<HVal, String> {
    match v {
        V::Str(s) => Ok(HVal::Str(Arc::from(s.as_ref()))),
        V::Int(i) => Ok(HVal::Int(i)),
        V::Bool(b) => Ok(HVal::Bool(b)),
        other => Err(format!(
            "a history filter value must be a string, int or bool, not {}",
            vname(&other)
        )),
    }
}

/// `&&` and `||` as the `cel` crate has them: the absorbing value wins over an error on
/// either side; otherwise errors propagate.
fn logic<'e>(
    left: EvalResult<'e>,
    right: impl FnOnce() -> EvalResult<'e>,
    absorbing: bool,
) -> EvalResult<'e> {
    let left = match left {
        Ok(V::Bool(b)) => Ok(b),
        Ok(other) => Err(format!(
            "no such overload: logical operator on {}",
            vname(&other)
        )),
        Err(e) => Err(e),
    };
    if left == Ok(absorbing) {
        return Ok(V::Bool(absorbing));
    }
    let right = right()?;
    match (left, right) {
        (Ok(_), V::Bool(r)) => Ok(V::Bool(r)),
        (Err(_), V::Bool(r)) if r == absorbing => Ok(V::Bool(absorbing)),
        (Err(e), _) => Err(e),
        (Ok(_), other) => Err(format!(
            "no such overload: logical operator on {}",
            vname(&other)
        )),
    }
}

fn vname(v: &V<'_>) -> &'static str {
    match v {
        V::Null => "null",
        V::Bool(_) => "bool",
        V::Int(_) => "int",
        V::UInt(_) => "uint",
        V::Double(_) => "double",
        V::Str(_) => "string",
        V::Time(_) => "timestamp",
        V::Dur(_) => "duration",
    }
}

fn from_field(v: FieldValue<'_>) -> V<'_> {
    match v {
        FieldValue::Str(s) => V::Str(Cow::Borrowed(s)),
        FieldValue::Int(i) => V::Int(i),
        FieldValue::Bool(b) => V::Bool(b),
        FieldValue::Time(t) => V::Time(t),
        // Never lowered natively: the lowering only reads scalar fields.
        FieldValue::StrMap(_) | FieldValue::Details(_) | FieldValue::Object => V::Null,
    }
}

fn compare(op: Cmp, a: &V<'_>, b: &V<'_>) -> Result<bool, String> {
    use std::cmp::Ordering;
    if matches!(op, Cmp::Eq | Cmp::Ne) {
        let eq = a == b;
        return Ok(if op == Cmp::Eq { eq } else { !eq });
    }
    let ord: Option<Ordering> = match (a, b) {
        (V::Int(x), V::Int(y)) => Some(x.cmp(y)),
        (V::UInt(x), V::UInt(y)) => Some(x.cmp(y)),
        (V::Double(x), V::Double(y)) => x.partial_cmp(y),
        (V::Str(x), V::Str(y)) => Some(x.cmp(y)),
        (V::Time(x), V::Time(y)) => Some(x.cmp(y)),
        (V::Dur(x), V::Dur(y)) => Some(x.cmp(y)),
        (V::Bool(x), V::Bool(y)) => Some(x.cmp(y)),
        _ => return Err(format!("{} can not be compared to {}", vname(a), vname(b))),
    };
    let Some(ord) = ord else {
        return Ok(false);
    };
    Ok(match op {
        Cmp::Lt => ord == Ordering::Less,
        Cmp::Le => ord != Ordering::Greater,
        Cmp::Gt => ord == Ordering::Greater,
        Cmp::Ge => ord != Ordering::Less,
        Cmp::Eq | Cmp::Ne => false,
    })
}

/// Whether `t` is within CEL's timestamp range, 0001-01-01T00:00:00Z to
/// 9999-12-31T23:59:59.999999999Z; the `cel` crate fails arithmetic whose result is not.
fn cel_time(t: Timestamp) -> Option<Timestamp> {
    (1..=9999).contains(&t.year()).then_some(t)
}

/// A CEL duration must fit an `i64` count of nanoseconds, as in the `cel` crate.
fn cel_dur(d: Duration) -> Option<Duration> {
    d.num_nanoseconds().map(|_| d)
}

fn arith<'e>(op: Arith, a: V<'e>, b: V<'e>) -> EvalResult<'e> {
    let overflow = || "overflow".to_string();
    match (op, a, b) {
        (Arith::Add, V::Int(x), V::Int(y)) => x.checked_add(y).map(V::Int).ok_or_else(overflow),
        (Arith::Sub, V::Int(x), V::Int(y)) => x.checked_sub(y).map(V::Int).ok_or_else(overflow),
        (Arith::Mul, V::Int(x), V::Int(y)) => x.checked_mul(y).map(V::Int).ok_or_else(overflow),
        (Arith::Add, V::Str(x), V::Str(y)) => Ok(V::Str(Cow::Owned(format!("{x}{y}")))),
        (Arith::Sub, V::Time(x), V::Time(y)) => cel_dur(x.signed_duration_since(y))
            .map(V::Dur)
            .ok_or_else(overflow),
        (Arith::Add, V::Time(x), V::Dur(y)) | (Arith::Add, V::Dur(y), V::Time(x)) => x
            .checked_add_signed(y)
            .and_then(cel_time)
            .map(V::Time)
            .ok_or_else(overflow),
        (Arith::Sub, V::Time(x), V::Dur(y)) => x
            .checked_sub_signed(y)
            .and_then(cel_time)
            .map(V::Time)
            .ok_or_else(overflow),
        (Arith::Add, V::Dur(x), V::Dur(y)) => x
            .checked_add(&y)
            .and_then(cel_dur)
            .map(V::Dur)
            .ok_or_else(overflow),
        (Arith::Sub, V::Dur(x), V::Dur(y)) => x
            .checked_sub(&y)
            .and_then(cel_dur)
            .map(V::Dur)
            .ok_or_else(overflow),
        (op, a, b) => Err(format!(
            "no such overload: {op:?}({}, {})",
            vname(&a),
            vname(&b)
        )),
    }
}

/// A load-time problem in an expression: a character offset into it and a message.
#[derive(Debug, Clone)]
pub(crate) struct ExprProblem {
    pub offset: usize,
    pub message: String,
    pub help: Option<String>,
}

/// An equality or `in` test on a discrete field at the top level of a conjunction: the
/// policy can only match events whose field has one of `values`.
#[derive(Debug, Clone)]
pub(crate) struct IndexAtom {
    pub field: FieldId,
    pub values: Vec<String>,
}

/// A compiled expression.
#[derive(Debug)]
pub(crate) struct Compiled {
    pub native: Option<Native>,
    pub program: cel::Program,
    /// Static result type, where known.
    pub ty: Option<Ty>,
    pub atoms: Vec<IndexAtom>,
    /// Event paths the interpreter needs (only when `native` is `None`); `None` entries mean
    /// "the whole event".
    pub reads: BTreeSet<Option<FieldId>>,
    /// Whether the expression queries the correlation history.
    pub uses_history: bool,
    /// The constant history windows it uses (for truncation warnings).
    pub windows: Vec<Duration>,
    /// For an interpreted expression with comprehensions: the same expression with every
    /// comprehension range and operand passed through [`COST_FN`], which charges the
    /// evaluation's cost budget (see [`meter`]). The interpreter runs this form instead.
    pub metered: Option<IdedExpr>,
}

/// Variables an expression may use.
const VARIABLES: &[&str] = &["event", "now", "history"];

/// Functions and macros of the CEL standard library as the `cel` crate ships it, used only to
/// suggest a fix for a likely typo.
const KNOWN_FUNCTIONS: &[&str] = &[
    "size",
    "has",
    "all",
    "exists",
    "exists_one",
    "map",
    "filter",
    "matches",
    "contains",
    "startsWith",
    "endsWith",
    "int",
    "uint",
    "double",
    "string",
    "bytes",
    "bool",
    "timestamp",
    "duration",
    "type",
    "dyn",
    "max",
    "min",
    "getFullYear",
    "getMonth",
    "getDayOfYear",
    "getDayOfMonth",
    "getDate",
    "getDayOfWeek",
    "getHours",
    "getMinutes",
    "getSeconds",
    "getMilliseconds",
    "lowerAscii",
    "upperAscii",
    "trim",
    "split",
    "join",
    "replace",
    "indexOf",
    "lastIndexOf",
    "substring",
    "charAt",
];

/// Parses, checks and lowers one expression. Problems are returned with offsets into the
/// expression's text.
pub(crate) fn compile(expr: &Expr) -> Result<Compiled, Vec<ExprProblem>> {
    precheck(&expr.text).map_err(|p| vec![p])?;
    let program = match cel::Program::compile(&expr.text) {
        Ok(p) => p,
        Err(errs) => {
            return Err(errs
                .errors
                .iter()
                .map(|e| ExprProblem {
                    offset: line_col_to_offset(&expr.text, e.pos.0, e.pos.1),
                    message: format!("CEL syntax error: {}", strip_syntax_prefix(&e.msg)),
                    help: None,
                })
                .collect())
        }
    };
    let depth = ast_depth(program.expression());
    if depth > MAX_AST_DEPTH {
        return Err(vec![ExprProblem {
            offset: 0,
            message: format!(
                "expression nests {depth} operations deep; the limit is {MAX_AST_DEPTH}"
            ),
            help: Some(
                "split it into several policies, or use `in [...]` instead of long chains".into(),
            ),
        }]);
    }
    let mut ck = Checker {
        program: &program,
        problems: Vec::new(),
        reads: BTreeSet::new(),
        uses_history: false,
        windows: Vec::new(),
    };
    ck.check(program.expression(), &mut Vec::new());
    let lowered = ck.lower(program.expression());
    if !ck.problems.is_empty() {
        return Err(ck.problems);
    }
    let (native, ty) = match lowered {
        Lowered::Native(n, t) => (Some(n), Some(t)),
        Lowered::Fallback(t) => (None, t),
    };
    if ck.uses_history && native.is_none() {
        return Err(vec![ExprProblem {
            offset: 0,
            message: "an expression that queries `history` must be evaluable natively, and this one uses constructs only the CEL interpreter runs".into(),
            help: Some("keep history queries in expressions of field tests, comparisons, `in` lists, `&&`, `||`, `!` and `has()`; move `matches`, `size` or macros into another policy".into()),
        }]);
    }
    let metered = if native.is_none() && has_comprehension(program.expression()) {
        let n = literal_iterations(program.expression());
        if n > MAX_EVAL_COST {
            return Err(vec![ExprProblem {
                offset: 0,
                message: format!(
                    "the comprehensions of this expression visit {n} elements of literal lists; the evaluation cost budget is {MAX_EVAL_COST}"
                ),
                help: Some("nest fewer comprehensions, or over shorter lists".into()),
            }]);
        }
        let mut m = program.expression().clone();
        meter(&mut m, &mut Vec::new());
        Some(m)
    } else {
        None
    };
    let mut atoms = Vec::new();
    collect_atoms(program.expression(), &mut atoms);
    let uses_history = ck.uses_history;
    let windows = std::mem::take(&mut ck.windows);
    let reads = if native.is_some() {
        BTreeSet::new()
    } else {
        ck.reads
    };
    Ok(Compiled {
        native,
        program,
        ty,
        atoms,
        reads,
        uses_history,
        windows,
        metered,
    })
}

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

/// Whether `e` holds a comprehension (a macro: `all`, `exists`, `exists_one`, `map`,
/// `filter`).
fn has_comprehension(e: &IdedExpr) -> bool {
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
fn literal_iterations(e: &IdedExpr) -> u64 {
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
fn meter(e: &mut IdedExpr, accus: &mut Vec<String>) {
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
fn charge(e: &mut IdedExpr) {
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

/// The longest expression accepted, in characters.
pub(crate) const MAX_EXPR_CHARS: usize = 4096;
/// The deepest bracket nesting accepted before parsing (the `cel` parser recurses per level).
pub(crate) const MAX_BRACKET_DEPTH: usize = 24;
/// The deepest AST accepted after parsing (evaluation recurses per level).
pub(crate) const MAX_AST_DEPTH: usize = 48;
const MAX_UNARY_RUN: usize = 8;

/// Rejects, before the `cel` parser sees it, text that would exhaust the stack: the parser
/// recurses once per bracket level, per nested `? :` and per unary operator.
///
/// The text is lexed as the CEL lexical grammar defines it, so that a bracket counts exactly
/// when the parser would see it: `//` comments run to the end of the line; strings and bytes
/// are quoted with `"`, `'`, `"""` or `'''`, optionally prefixed by `r`/`R` (raw: a backslash
/// is an ordinary character), `b`/`B` (bytes) or both (`br`); outside raw strings a backslash
/// starts one of the grammar's escape sequences; single-quoted strings end at a newline. A
/// literal that does not end, or holds an undefined escape, is rejected here: the parser
/// would reject it too, but its lexer would first skip a character and read the rest of the
/// literal as code.
fn precheck(text: &str) -> Result<(), ExprProblem> {
    let n = text.chars().count();
    if n > MAX_EXPR_CHARS {
        return Err(ExprProblem {
            offset: 0,
            message: format!("expression is {n} characters long; the limit is {MAX_EXPR_CHARS}"),
            help: None,
        });
    }
    let chars: Vec<char> = text.chars().collect();
    let too_deep = |offset: usize| {
        ExprProblem {
        offset,
        message: format!(
            "brackets nested more than {MAX_BRACKET_DEPTH} levels deep (each `? :` counts as a level)"
        ),
        help: Some("split the expression into several policies".into()),
    }
    };
    // One entry per open bracket: how many `?` were seen directly inside it (each nests the
    // rest of the bracket one level deeper).
    let mut frames: Vec<usize> = vec![0];
    let mut depth = 0usize;
    let mut unary = 0usize;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        // A string or bytes literal, with its optional prefix.
        if let Some((start, raw)) = string_start(&chars, i) {
            i = skip_string(&chars, start, raw).ok_or_else(|| ExprProblem {
                offset: i,
                message: "string literal is not terminated or holds an invalid escape sequence"
                    .into(),
                help: None,
            })?;
            unary = 0;
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            unary = 0;
            continue;
        }
        if c.is_ascii_digit() {
            i = skip_number(&chars, i);
            unary = 0;
            continue;
        }
        if c == '/' && chars.get(i + 1) == Some(&'/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
            continue;
        }
        match c {
            '(' | '[' | '{' => {
                depth += 1;
                frames.push(0);
                if depth > MAX_BRACKET_DEPTH {
                    return Err(too_deep(i));
                }
            }
            ')' | ']' | '}' if frames.len() > 1 => {
                let q = frames.pop().unwrap_or(0);
                depth = depth.saturating_sub(q + 1);
            }
            '?' => {
                depth += 1;
                if let Some(f) = frames.last_mut() {
                    *f += 1;
                }
                if depth > MAX_BRACKET_DEPTH {
                    return Err(too_deep(i));
                }
            }
            _ => {}
        }
        match c {
            '!' | '-' => {
                unary += 1;
                if unary > MAX_UNARY_RUN {
                    return Err(ExprProblem {
                        offset: i,
                        message: format!("more than {MAX_UNARY_RUN} `!` or `-` in a row"),
                        help: None,
                    });
                }
            }
            c if c.is_whitespace() || c == '(' => {}
            _ => unary = 0,
        }
        i += 1;
    }
    Ok(())
}

/// If a string or bytes literal starts at `i`: the index of its first quote and whether it is
/// raw. The grammar's prefixes are `r`/`R` (raw), `b`/`B` (bytes) and `b` then `r` (raw
/// bytes); `rb"…"` is the identifier `rb` followed by a plain string. A prefix letter counts
/// only at the start of a token (`xr"…"` is the identifier `xr` and a plain string); callers
/// skip identifiers and numbers whole, so `i` is a token start.
fn string_start(chars: &[char], i: usize) -> Option<(usize, bool)> {
    let is_quote = |j: usize| matches!(chars.get(j), Some('"' | '\''));
    match (chars.get(i), chars.get(i + 1)) {
        (Some('"' | '\''), _) => Some((i, false)),
        (Some('r' | 'R'), _) if is_quote(i + 1) => Some((i + 1, true)),
        (Some('b' | 'B'), _) if is_quote(i + 1) => Some((i + 1, false)),
        (Some('b' | 'B'), Some('r' | 'R')) if is_quote(i + 2) => Some((i + 2, true)),
        _ => None,
    }
}

/// Skips the literal whose opening quote is at `q`; returns the index after its closing quote,
/// or `None` if it never closes or holds an escape the grammar does not define (the lexer
/// would then drop characters and read the rest of the literal as code).
fn skip_string(chars: &[char], q: usize, raw: bool) -> Option<usize> {
    let quote = *chars.get(q)?;
    let triple = chars.get(q + 1) == Some(&quote) && chars.get(q + 2) == Some(&quote);
    let mut i = if triple { q + 3 } else { q + 1 };
    while i < chars.len() {
        let c = chars[i];
        if c == '\\' && !raw {
            i += escape_len(chars, i)?;
            continue;
        }
        if triple {
            if c == quote && chars.get(i + 1) == Some(&quote) && chars.get(i + 2) == Some(&quote) {
                return Some(i + 3);
            }
        } else if c == quote {
            return Some(i + 1);
        } else if c == '\n' || c == '\r' {
            return None;
        }
        i += 1;
    }
    None
}

/// The length of the escape sequence at `i` (a backslash), if the grammar defines it:
/// `\\[abfnrtv"'\\?`]`, `\\[0-3][0-7][0-7]`, `\\[xX]HH`, `\\uHHHH`, `\\UHHHHHHHH`.
fn escape_len(chars: &[char], i: usize) -> Option<usize> {
    let hex = |from: usize, n: usize| {
        (from..from + n).all(|j| chars.get(j).is_some_and(char::is_ascii_hexdigit))
    };
    let oct = |j: usize, max: char| chars.get(j).is_some_and(|c| ('0'..=max).contains(c));
    match chars.get(i + 1)? {
        'a' | 'b' | 'f' | 'n' | 'r' | 't' | 'v' | '"' | '\'' | '\\' | '?' | '`' => Some(2),
        '0'..='3' if oct(i + 2, '7') && oct(i + 3, '7') => Some(4),
        'x' | 'X' if hex(i + 2, 2) => Some(4),
        'u' if hex(i + 2, 4) => Some(6),
        'U' if hex(i + 2, 8) => Some(10),
        _ => None,
    }
}

/// Skips a numeric literal starting at the digit at `i`, as the lexer reads it: `0x`
/// hexadecimal or decimal digits, then either a `u`/`U` suffix or an optional fraction and
/// exponent.
fn skip_number(chars: &[char], mut i: usize) -> usize {
    let digit = |j: usize, hex: bool| {
        chars.get(j).is_some_and(|c| {
            if hex {
                c.is_ascii_hexdigit()
            } else {
                c.is_ascii_digit()
            }
        })
    };
    if chars.get(i) == Some(&'0') && chars.get(i + 1) == Some(&'x') && digit(i + 2, true) {
        i += 2;
        while digit(i, true) {
            i += 1;
        }
        if matches!(chars.get(i), Some('u' | 'U')) {
            i += 1;
        }
        return i;
    }
    while digit(i, false) {
        i += 1;
    }
    if matches!(chars.get(i), Some('u' | 'U')) {
        return i + 1;
    }
    if chars.get(i) == Some(&'.') && digit(i + 1, false) {
        i += 1;
        while digit(i, false) {
            i += 1;
        }
    }
    if matches!(chars.get(i), Some('e' | 'E')) {
        let j = if matches!(chars.get(i + 1), Some('+' | '-')) {
            i + 2
        } else {
            i + 1
        };
        if digit(j, false) {
            i = j;
            while digit(i, false) {
                i += 1;
            }
        }
    }
    i
}

/// The depth of an AST, computed without recursion.
fn ast_depth(e: &IdedExpr) -> usize {
    let mut max = 0;
    let mut stack = vec![(e, 1usize)];
    while let Some((e, d)) = stack.pop() {
        max = max.max(d);
        if d > MAX_AST_DEPTH {
            break;
        }
        match &e.expr {
            Ast::Call(c) => {
                stack.extend(c.args.iter().map(|a| (a, d + 1)));
                if let Some(t) = &c.target {
                    stack.push((t, d + 1));
                }
            }
            Ast::Select(s) => stack.push((&s.operand, d + 1)),
            Ast::List(l) => stack.extend(l.elements.iter().map(|a| (a, d + 1))),
            Ast::Map(m) => {
                for entry in &m.entries {
                    if let cel::common::ast::EntryExpr::MapEntry(me) = &entry.expr {
                        stack.push((&me.key, d + 1));
                        stack.push((&me.value, d + 1));
                    }
                }
            }
            Ast::Struct(st) => {
                for entry in &st.entries {
                    if let cel::common::ast::EntryExpr::StructField(f) = &entry.expr {
                        stack.push((&f.value, d + 1));
                    }
                }
            }
            Ast::Comprehension(c) => {
                for x in [
                    &c.iter_range,
                    &c.accu_init,
                    &c.loop_cond,
                    &c.loop_step,
                    &c.result,
                ] {
                    stack.push((x, d + 1));
                }
            }
            Ast::Ident(_) | Ast::Literal(_) | Ast::Unspecified => {}
        }
    }
    max
}

fn strip_syntax_prefix(msg: &str) -> &str {
    msg.strip_prefix("Syntax error: ").unwrap_or(msg)
}

/// Converts the `cel` parser's 1-based (line, column) to a character offset.
fn line_col_to_offset(text: &str, line: isize, col: isize) -> usize {
    let line = usize::try_from(line.max(1)).unwrap_or(1);
    let col = usize::try_from(col.max(1)).unwrap_or(1);
    let mut offset = 0;
    for (n, l) in text.split('\n').enumerate() {
        let len = l.chars().count();
        if n + 1 == line {
            return offset + (col - 1).min(len);
        }
        offset += len + 1;
    }
    text.chars().count()
}

enum Lowered {
    Native(Native, Ty),
    Fallback(Option<Ty>),
}

struct Checker<'p> {
    program: &'p cel::Program,
    problems: Vec<ExprProblem>,
    reads: BTreeSet<Option<FieldId>>,
    uses_history: bool,
    windows: Vec<Duration>,
}

/// `event.a.b` as ["a", "b"] with the id of each select, if `e` is a select chain on `event`.
fn event_path(e: &IdedExpr) -> Option<Vec<(&str, u64)>> {
    let mut segs = Vec::new();
    let mut cur = e;
    loop {
        match &cur.expr {
            Ast::Select(s) if !s.test => {
                segs.push((s.field.as_str(), cur.id));
                cur = &s.operand;
            }
            Ast::Ident(name) if name == "event" => {
                segs.reverse();
                return Some(segs);
            }
            _ => return None,
        }
    }
}

impl Checker<'_> {
    /// The character offset of node `id`. The parser points a selection at its dot, a `has()`
    /// at its parenthesis and a method call at its parenthesis, so when the node names
    /// something, step onto the nearest occurrence of that name.
    fn offset(&self, id: u64, name: Option<&str>) -> usize {
        let info = self.program.source_info();
        let at = info.offset_for(id).map(|(s, _)| s as usize).unwrap_or(0);
        let Some(name) = name.filter(|n| !n.is_empty()) else {
            return at;
        };
        let chars: Vec<char> = info.source.chars().collect();
        let needle: Vec<char> = name.chars().collect();
        let matches_at = |i: usize| chars.get(i..i + needle.len()) == Some(&needle[..]);
        let after = (at..chars.len().min(at + 256)).find(|&i| matches_at(i));
        let before = (at.saturating_sub(256)..at).rev().find(|&i| matches_at(i));
        match (before, after) {
            (Some(b), Some(a)) if at - b < a - at => b,
            (_, Some(a)) => a,
            (Some(b), None) => b,
            (None, None) => at,
        }
    }

    fn problem(&mut self, id: u64, message: String, help: Option<String>) {
        self.problem_at(id, None, message, help)
    }

    fn problem_at(&mut self, id: u64, name: Option<&str>, message: String, help: Option<String>) {
        let offset = self.offset(id, name);
        self.problems.push(ExprProblem {
            offset,
            message,
            help,
        });
    }

    /// Validates a path below `event`; returns the deepest known field it names.
    fn check_path(&mut self, segs: &[(&str, u64)]) -> Option<FieldId> {
        let mut path = String::new();
        let mut last = None;
        for (i, (seg, id)) in segs.iter().enumerate() {
            let parent = path.clone();
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(seg);
            if let Some((_, why)) = fields::UNREADABLE.iter().find(|(p, _)| *p == path) {
                self.problem_at(
                    *id,
                    Some(seg),
                    format!("`event.{path}` cannot be read by policies: {why}"),
                    None,
                );
                return None;
            }
            match fields::lookup(&path) {
                Some(f) => {
                    last = Some(f);
                    match fields::field(f).ty {
                        FieldType::Object => continue,
                        // `event.resource.tags.<key>` is a map lookup.
                        FieldType::StrMap if i + 1 < segs.len() => {
                            if i + 2 < segs.len() {
                                self.problem_at(
                                    segs[i + 2].1,
                                    Some(segs[i + 2].0),
                                    format!("`event.{path}.{}` is a string", segs[i + 1].0),
                                    None,
                                );
                            }
                            return last;
                        }
                        ty if i + 1 < segs.len() => {
                            self.problem_at(
                                segs[i + 1].1,
                                Some(segs[i + 1].0),
                                format!(
                                    "`event.{path}` is a {}, it has no field `{}`",
                                    ty.name(),
                                    segs[i + 1].0
                                ),
                                None,
                            );
                            return None;
                        }
                        _ => return last,
                    }
                }
                None => {
                    let within = if parent.is_empty() {
                        "`event`".to_string()
                    } else {
                        format!("`event.{parent}`")
                    };
                    let help = did_you_mean(seg, fields::children(&parent))
                        .map(|s| format!("did you mean `{s}`?"))
                        .or_else(|| {
                            Some(format!(
                                "fields of {within}: {}",
                                fields::children(&parent).collect::<Vec<_>>().join(", ")
                            ))
                        });
                    self.problem_at(
                        *id,
                        Some(seg),
                        format!("unknown field `{seg}` in {within}"),
                        help,
                    );
                    return None;
                }
            }
        }
        last
    }

    /// Walks the whole expression: paths, variables, function names, enum literals.
    fn check(&mut self, e: &IdedExpr, scope: &mut Vec<String>) {
        if let Some(segs) = event_path(e) {
            let f = self.check_path(&segs);
            self.reads.insert(f);
            return;
        }
        match &e.expr {
            Ast::Ident(name) => {
                if name == "event" {
                    self.reads.insert(None);
                } else if name == "history" {
                    self.problem_at(
                        e.id,
                        Some(name),
                        "`history` is only used as history.count(filter, window), history.resources(filter, window) or history.actions(resource, action, window)".into(),
                        None,
                    );
                } else if !VARIABLES.contains(&name.as_str()) && !scope.iter().any(|s| s == name) {
                    let help = did_you_mean(name, VARIABLES.iter().copied())
                        .map(|s| format!("did you mean `{s}`?"))
                        .or_else(|| Some("policies can read `event` and `now`".into()));
                    self.problem_at(e.id, Some(name), format!("unknown variable `{name}`"), help);
                }
            }
            Ast::Select(s) => {
                if s.test {
                    if let Some(segs) = event_path(&s.operand) {
                        let mut all = segs.clone();
                        all.push((s.field.as_str(), e.id));
                        let f = self.check_path(&all);
                        self.reads.insert(f);
                        return;
                    }
                }
                self.check(&s.operand, scope)
            }
            Ast::Call(c) if is_history_call(c) => {
                self.uses_history = true;
                self.check_history(e.id, c, scope);
            }
            Ast::Call(c) => {
                self.check_call(e.id, c);
                if let Some(t) = &c.target {
                    self.check(t, scope);
                }
                for a in &c.args {
                    self.check(a, scope);
                }
            }
            Ast::List(l) => {
                for x in &l.elements {
                    self.check(x, scope);
                }
            }
            Ast::Map(m) => {
                for entry in &m.entries {
                    if let cel::common::ast::EntryExpr::MapEntry(me) = &entry.expr {
                        self.check(&me.key, scope);
                        self.check(&me.value, scope);
                    }
                }
            }
            Ast::Comprehension(c) => {
                self.check(&c.iter_range, scope);
                self.check(&c.accu_init, scope);
                let n = scope.len();
                scope.push(c.iter_var.clone());
                if let Some(v2) = &c.iter_var2 {
                    scope.push(v2.clone());
                }
                scope.push(c.accu_var.clone());
                self.check(&c.loop_cond, scope);
                self.check(&c.loop_step, scope);
                self.check(&c.result, scope);
                scope.truncate(n);
            }
            Ast::Struct(_) => self.problem(
                e.id,
                "message construction is not supported in Keel policies".into(),
                None,
            ),
            Ast::Literal(_) | Ast::Unspecified => {}
        }
    }

    fn check_call(&mut self, id: u64, c: &CallExpr) {
        let name = c.func_name.as_str();
        if name.starts_with('_')
            || name.starts_with('@')
            || name.starts_with('!')
            || name.starts_with('-')
        {
            // Operators; enum literal checks for == / != / in.
            match name {
                operators::EQUALS | operators::NOT_EQUALS if c.args.len() == 2 => {
                    self.check_enum_literal(&c.args[0], &c.args[1]);
                    self.check_enum_literal(&c.args[1], &c.args[0]);
                }
                operators::IN if c.args.len() == 2 => {
                    if let Ast::List(l) = &c.args[1].expr {
                        for x in &l.elements {
                            self.check_enum_literal(&c.args[0], x);
                        }
                    }
                }
                _ => {}
            }
            return;
        }
        if !KNOWN_FUNCTIONS.contains(&name) {
            if let Some(s) = did_you_mean(name, KNOWN_FUNCTIONS.iter().copied()) {
                self.problem_at(
                    id,
                    Some(name),
                    format!("unknown function `{name}`"),
                    Some(format!("did you mean `{s}`?")),
                );
            }
        }
    }

    /// Checks `history.count/resources(filter, window)` and `history.actions(resource,
    /// action, window)`: the function, the filter's paths and the action.
    fn check_history(&mut self, id: u64, c: &CallExpr, scope: &mut Vec<String>) {
        let name = c.func_name.as_str();
        let want = 3 - usize::from(name != "actions");
        if !matches!(name, "count" | "resources" | "actions") {
            let help = did_you_mean(name, ["count", "resources", "actions"])
                .map(|s| format!("did you mean `history.{s}`?"));
            self.problem_at(
                id,
                Some(name),
                format!("unknown history function `history.{name}`"),
                help,
            );
            return;
        }
        if c.args.len() != want {
            self.problem_at(
                id,
                Some(name),
                format!(
                    "`history.{name}` takes {want} arguments, not {}",
                    c.args.len()
                ),
                None,
            );
            return;
        }
        if name == "actions" {
            match &c.args[1].expr {
                Ast::Literal(LiteralValue::String(a)) if Action::parse(a.inner()).is_some() => {}
                _ => self.problem(
                    c.args[1].id,
                    "the second argument of `history.actions` is an action name in quotes, e.g. \"drain\"".into(),
                    None,
                ),
            }
            self.check(&c.args[0], scope);
        } else {
            let Ast::Map(m) = &c.args[0].expr else {
                self.problem(
                    c.args[0].id,
                    format!("the filter of `history.{name}` is a map of event paths to values, e.g. {{\"failure.category\": \"vm_agent\"}}"),
                    None,
                );
                return;
            };
            for entry in &m.entries {
                let cel::common::ast::EntryExpr::MapEntry(me) = &entry.expr else {
                    continue;
                };
                match &me.key.expr {
                    Ast::Literal(LiteralValue::String(k)) => {
                        let k: &str = k.inner();
                        let path = k.strip_prefix("event.").unwrap_or(k);
                        match fields::lookup(path) {
                            Some(f) if history::correlatable(f) => {
                                if let (FieldType::Enum(names), Ast::Literal(LiteralValue::String(v))) =
                                    (fields::field(f).ty, &me.value.expr)
                                {
                                    let v: &str = v.inner();
                                    if !names.contains(&v) {
                                        let help = did_you_mean(v, names.iter().copied())
                                            .map(|n| format!("did you mean \"{n}\"?"));
                                        self.problem(me.value.id, format!("\"{v}\" is not a value of `event.{path}`"), help);
                                    }
                                }
                            }
                            Some(_) => self.problem(
                                me.key.id,
                                format!("`{path}` cannot be used in a history filter: use a discrete field (kind, source, region, os, code, category, type, status, ...) or the resource's id, name, availability set, scale set, fault or update domain"),
                                None,
                            ),
                            None => {
                                let last = path.rsplit('.').next().unwrap_or(path);
                                let parent = path.rsplit_once('.').map(|(a, _)| a).unwrap_or("");
                                let help = did_you_mean(last, fields::children(parent))
                                    .map(|s| format!("did you mean `{}{s}`?", if parent.is_empty() { String::new() } else { format!("{parent}.") }));
                                self.problem(me.key.id, format!("unknown event path `{path}` in a history filter"), help);
                            }
                        }
                    }
                    _ => self.problem(
                        me.key.id,
                        "history filter keys are event paths in quotes".into(),
                        None,
                    ),
                }
                self.check(&me.value, scope);
            }
        }
        self.check(&c.args[want - 1], scope);
    }

    fn lower_history(&mut self, c: &CallExpr) -> Lowered {
        use Lowered::{Fallback, Native as N};
        let name = c.func_name.as_str();
        let last = c.args.len().saturating_sub(1);
        let Some(N(window, Ty::Dur)) = c.args.get(last).map(|w| self.lower(w)) else {
            return Fallback(Some(Ty::Int));
        };
        if let Native::Lit(V::Dur(d)) = &window {
            self.windows.push(*d);
        }
        if name == "actions" {
            let (Some(N(resource, Ty::Str)), Some(Ast::Literal(LiteralValue::String(a)))) = (
                c.args.first().map(|r| self.lower(r)),
                c.args.get(1).map(|a| &a.expr),
            ) else {
                return Fallback(Some(Ty::Int));
            };
            let Some(action) = Action::parse(a.inner()) else {
                return Fallback(Some(Ty::Int));
            };
            return N(
                Native::Actions(Box::new(resource), action, Box::new(window), None),
                Ty::Int,
            );
        }
        let Some(Ast::Map(m)) = c.args.first().map(|f| &f.expr) else {
            return Fallback(Some(Ty::Int));
        };
        let mut filter = Vec::new();
        for entry in &m.entries {
            let cel::common::ast::EntryExpr::MapEntry(me) = &entry.expr else {
                return Fallback(Some(Ty::Int));
            };
            let Ast::Literal(LiteralValue::String(k)) = &me.key.expr else {
                return Fallback(Some(Ty::Int));
            };
            let k: &str = k.inner();
            let Some(f) = fields::lookup(k.strip_prefix("event.").unwrap_or(k)) else {
                return Fallback(Some(Ty::Int));
            };
            match self.lower(&me.value) {
                N(v, Ty::Str | Ty::Int | Ty::Bool) => filter.push((f, v)),
                _ => return Fallback(Some(Ty::Int)),
            }
        }
        N(
            Native::History {
                distinct: name == "resources",
                filter,
                window: Box::new(window),
                cap: None,
            },
            Ty::Int,
        )
    }

    fn check_enum_literal(&mut self, field: &IdedExpr, lit: &IdedExpr) {
        let Some(segs) = event_path(field) else {
            return;
        };
        let path: Vec<&str> = segs.iter().map(|(s, _)| *s).collect();
        let Some(f) = fields::lookup(&path.join(".")) else {
            return;
        };
        let FieldType::Enum(names) = fields::field(f).ty else {
            return;
        };
        if let Ast::Literal(LiteralValue::String(s)) = &lit.expr {
            let s: &str = s.inner();
            if !names.contains(&s) {
                let help = did_you_mean(s, names.iter().copied())
                    .map(|n| format!("did you mean \"{n}\"?"))
                    .or_else(|| Some(format!("values: {}", names.join(", "))));
                self.problem(
                    lit.id,
                    format!(
                        "\"{s}\" is not a value of `event.{}`, so this test never holds",
                        path.join(".")
                    ),
                    help,
                );
            }
        }
    }

    fn lower(&mut self, e: &IdedExpr) -> Lowered {
        use Lowered::{Fallback, Native as N};
        if let Some(segs) = event_path(e) {
            let path: Vec<&str> = segs.iter().map(|(s, _)| *s).collect();
            // `event.resource.tags.<key>`
            if path.len() == 3 && path[0] == "resource" && path[1] == "tags" {
                return N(Native::Tag(path[2].to_string()), Ty::Str);
            }
            let Some(f) = fields::lookup(&path.join(".")) else {
                return Fallback(None);
            };
            return match fields::field(f).ty {
                FieldType::Str | FieldType::Enum(_) => N(Native::Field(f), Ty::Str),
                FieldType::Int => N(Native::Field(f), Ty::Int),
                FieldType::Bool => N(Native::Field(f), Ty::Bool),
                FieldType::Time => N(Native::Field(f), Ty::Time),
                _ => Fallback(None),
            };
        }
        match &e.expr {
            Ast::Literal(l) => match literal(l) {
                Some(v) => {
                    let t = type_of(&v);
                    N(Native::Lit(v), t)
                }
                None => Fallback(None),
            },
            Ast::Ident(n) if n == "now" => N(Native::Now, Ty::Time),
            Ast::Select(s) if s.test => {
                let Some(mut segs) = event_path(&s.operand) else {
                    return Fallback(Some(Ty::Bool));
                };
                segs.push((s.field.as_str(), e.id));
                let path: Vec<&str> = segs.iter().map(|(s, _)| *s).collect();
                if path.len() == 3 && path[0] == "resource" && path[1] == "tags" {
                    return N(Native::HasTag(path[2].to_string()), Ty::Bool);
                }
                match fields::lookup(&path.join(".")) {
                    Some(f) => N(Native::Has(f), Ty::Bool),
                    None => Fallback(Some(Ty::Bool)),
                }
            }
            Ast::Call(c) => self.lower_call(e.id, c),
            _ => Fallback(None),
        }
    }

    fn lower_call(&mut self, id: u64, c: &CallExpr) -> Lowered {
        use Lowered::{Fallback, Native as N};
        let name = c.func_name.as_str();
        let args = &c.args;
        let bx = Box::new;
        if is_history_call(c) {
            return self.lower_history(c);
        }
        match (name, &c.target, args.len()) {
            (operators::LOGICAL_NOT, None, 1) => match self.lower(&args[0]) {
                N(a, Ty::Bool) => N(Native::Not(bx(a)), Ty::Bool),
                _ => Fallback(Some(Ty::Bool)),
            },
            (operators::LOGICAL_AND | operators::LOGICAL_OR, None, 2) => {
                match (self.lower(&args[0]), self.lower(&args[1])) {
                    (N(a, Ty::Bool), N(b, Ty::Bool)) => {
                        let n = if name == operators::LOGICAL_AND {
                            Native::And(bx(a), bx(b))
                        } else {
                            Native::Or(bx(a), bx(b))
                        };
                        N(n, Ty::Bool)
                    }
                    _ => Fallback(Some(Ty::Bool)),
                }
            }
            (operators::CONDITIONAL, None, 3) => {
                match (
                    self.lower(&args[0]),
                    self.lower(&args[1]),
                    self.lower(&args[2]),
                ) {
                    (N(c, Ty::Bool), N(a, ta), N(b, tb)) if ta == tb => {
                        N(Native::Cond(bx(c), bx(a), bx(b)), ta)
                    }
                    _ => Fallback(None),
                }
            }
            (
                operators::EQUALS
                | operators::NOT_EQUALS
                | operators::LESS
                | operators::LESS_EQUALS
                | operators::GREATER
                | operators::GREATER_EQUALS,
                None,
                2,
            ) => {
                let op = match name {
                    operators::EQUALS => Cmp::Eq,
                    operators::NOT_EQUALS => Cmp::Ne,
                    operators::LESS => Cmp::Lt,
                    operators::LESS_EQUALS => Cmp::Le,
                    operators::GREATER => Cmp::Gt,
                    _ => Cmp::Ge,
                };
                match (self.lower(&args[0]), self.lower(&args[1])) {
                    (N(mut a, ta), N(mut b, tb)) if ta == tb && comparable(op, ta) => {
                        cap_history(&mut a, &b);
                        cap_history(&mut b, &a);
                        N(Native::Cmp(op, bx(a), bx(b)), Ty::Bool)
                    }
                    (N(_, ta), N(_, tb))
                        if ta != tb && !numeric(ta, tb) && ta != Ty::Null && tb != Ty::Null =>
                    {
                        let what = if matches!(op, Cmp::Eq | Cmp::Ne) {
                            "is never equal to"
                        } else {
                            "cannot be ordered against"
                        };
                        self.problem(
                            id,
                            format!("type mismatch: a {} {what} a {}", ta.name(), tb.name()),
                            None,
                        );
                        Fallback(Some(Ty::Bool))
                    }
                    _ => Fallback(Some(Ty::Bool)),
                }
            }
            (operators::ADD | operators::SUBSTRACT | operators::MULTIPLY, None, 2) => {
                let op = match name {
                    operators::ADD => Arith::Add,
                    operators::SUBSTRACT => Arith::Sub,
                    _ => Arith::Mul,
                };
                match (self.lower(&args[0]), self.lower(&args[1])) {
                    (N(a, ta), N(b, tb)) => match arith_type(op, ta, tb) {
                        Some(t) => N(Native::Arith(op, bx(a), bx(b)), t),
                        None => Fallback(None),
                    },
                    _ => Fallback(None),
                }
            }
            (operators::IN, None, 2) => {
                // `"key" in event.resource.tags`
                if let (Some(segs), Ast::Literal(LiteralValue::String(k))) =
                    (event_path(&args[1]), &args[0].expr)
                {
                    let path: Vec<&str> = segs.iter().map(|(s, _)| *s).collect();
                    if path == ["resource", "tags"] {
                        let k: &str = k.inner();
                        return N(Native::HasTag(k.to_string()), Ty::Bool);
                    }
                }
                let Ast::List(l) = &args[1].expr else {
                    return Fallback(Some(Ty::Bool));
                };
                let N(a, ta) = self.lower(&args[0]) else {
                    return Fallback(Some(Ty::Bool));
                };
                let mut vals = Vec::new();
                for x in &l.elements {
                    match &x.expr {
                        Ast::Literal(lit) => match literal(lit) {
                            Some(v) if type_of(&v) == ta => vals.push(v),
                            _ => return Fallback(Some(Ty::Bool)),
                        },
                        _ => return Fallback(Some(Ty::Bool)),
                    }
                }
                if !l.optional_indices.is_empty() {
                    return Fallback(Some(Ty::Bool));
                }
                N(Native::In(bx(a), vals), Ty::Bool)
            }
            ("startsWith" | "endsWith" | "contains", Some(t), 1) => {
                let op = match name {
                    "startsWith" => StrOp::StartsWith,
                    "endsWith" => StrOp::EndsWith,
                    _ => StrOp::Contains,
                };
                match (self.lower(t), self.lower(&args[0])) {
                    (N(a, Ty::Str), N(b, Ty::Str)) => N(Native::StrFn(op, bx(a), bx(b)), Ty::Bool),
                    _ => Fallback(Some(Ty::Bool)),
                }
            }
            ("duration", None, 1) => match &args[0].expr {
                Ast::Literal(LiteralValue::String(s)) => match parse_cel_duration(s.inner()) {
                    Some(d) => N(Native::Lit(V::Dur(d)), Ty::Dur),
                    None => {
                        self.problem(
                            args[0].id,
                            format!("invalid duration \"{}\"", s.inner()),
                            Some("write durations like \"90s\", \"15m\", \"1h30m\"".into()),
                        );
                        Fallback(Some(Ty::Dur))
                    }
                },
                _ => Fallback(Some(Ty::Dur)),
            },
            ("timestamp", None, 1) => match &args[0].expr {
                Ast::Literal(LiteralValue::String(s)) => {
                    match DateTime::parse_from_rfc3339(s.inner()) {
                        Ok(t) if cel_time(t.with_timezone(&Utc)).is_some() => {
                            N(Native::Lit(V::Time(t.with_timezone(&Utc))), Ty::Time)
                        }
                        Ok(_) => {
                            self.problem(
                                args[0].id,
                                format!(
                                    "invalid timestamp \"{}\": out of range (years 0001 to 9999)",
                                    s.inner()
                                ),
                                None,
                            );
                            Fallback(Some(Ty::Time))
                        }
                        Err(_) => {
                            self.problem(
                                args[0].id,
                                format!("invalid timestamp \"{}\": expected RFC 3339", s.inner()),
                                None,
                            );
                            Fallback(Some(Ty::Time))
                        }
                    }
                }
                _ => Fallback(Some(Ty::Time)),
            },
            ("size", _, _) | ("int", None, 1) => Fallback(Some(Ty::Int)),
            ("string", None, 1) => match self.lower(&args[0]) {
                N(a, Ty::Int | Ty::Str) => N(Native::ToString(bx(a)), Ty::Str),
                _ => Fallback(Some(Ty::Str)),
            },
            ("matches", _, _) | ("exists", _, _) | ("all", _, _) | ("exists_one", _, _) => {
                Fallback(Some(Ty::Bool))
            }
            _ => Fallback(None),
        }
    }
}

fn is_history_call(c: &CallExpr) -> bool {
    matches!(c.target.as_deref().map(|t| &t.expr), Some(Ast::Ident(n)) if n == "history")
}

fn comparable(op: Cmp, t: Ty) -> bool {
    match op {
        Cmp::Eq | Cmp::Ne => true,
        _ => !matches!(t, Ty::Null),
    }
}

fn numeric(a: Ty, b: Ty) -> bool {
    matches!(a, Ty::Int | Ty::UInt | Ty::Double) && matches!(b, Ty::Int | Ty::UInt | Ty::Double)
}

fn arith_type(op: Arith, a: Ty, b: Ty) -> Option<Ty> {
    match (op, a, b) {
        (_, Ty::Int, Ty::Int) => Some(Ty::Int),
        (Arith::Add, Ty::Str, Ty::Str) => Some(Ty::Str),
        (Arith::Sub, Ty::Time, Ty::Time) => Some(Ty::Dur),
        (Arith::Add, Ty::Time, Ty::Dur) | (Arith::Add, Ty::Dur, Ty::Time) => Some(Ty::Time),
        (Arith::Sub, Ty::Time, Ty::Dur) => Some(Ty::Time),
        (Arith::Add | Arith::Sub, Ty::Dur, Ty::Dur) => Some(Ty::Dur),
        _ => None,
    }
}

fn literal(l: &LiteralValue) -> Option<V<'static>> {
    Some(match l {
        LiteralValue::Boolean(b) => V::Bool(*b.inner()),
        LiteralValue::Int(i) => V::Int(*i.inner()),
        LiteralValue::UInt(u) => V::UInt(*u.inner()),
        LiteralValue::Double(d) => V::Double(*d.inner()),
        LiteralValue::String(s) => V::Str(Cow::Owned(s.inner().to_string())),
        LiteralValue::Null => V::Null,
        LiteralValue::Bytes(_) => return None,
    })
}

fn type_of(v: &V<'_>) -> Ty {
    match v {
        V::Null => Ty::Null,
        V::Bool(_) => Ty::Bool,
        V::Int(_) => Ty::Int,
        V::UInt(_) => Ty::UInt,
        V::Double(_) => Ty::Double,
        V::Str(_) => Ty::Str,
        V::Time(_) => Ty::Time,
        V::Dur(_) => Ty::Dur,
    }
}

/// A CEL duration string: a sequence of `<number><unit>` with units h, m, s, ms, us, ns
/// (e.g. `1h30m`, `90s`, `1.5h`), optionally negative.
pub(crate) fn parse_cel_duration(s: &str) -> Option<Duration> {
    let (neg, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    if rest == "0" {
        // A bare zero needs no unit, as in the `cel` crate (and Go).
        return Some(Duration::zero());
    }
    if rest.is_empty() {
        return None;
    }
    let mut total_ns: i128 = 0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let (unit_ns, unit_len): (f64, usize) = if rest.starts_with("ms") {
            (1e6, 2)
        } else if rest.starts_with("us") {
            (1e3, 2)
        } else if rest.starts_with("ns") {
            (1.0, 2)
        } else if rest.starts_with('h') {
            (3.6e12, 1)
        } else if rest.starts_with('m') {
            (6e10, 1)
        } else if rest.starts_with('s') {
            (1e9, 1)
        } else {
            return None;
        };
        rest = &rest[unit_len..];
        let part = num * unit_ns;
        if !part.is_finite() || part.abs() > 1e20 {
            return None;
        }
        total_ns = total_ns.checked_add(part as i128)?;
    }
    let ns = i64::try_from(if neg { -total_ns } else { total_ns }).ok()?;
    Some(Duration::nanoseconds(ns))
}

/// Collects index atoms from the top-level conjunction.
fn collect_atoms(e: &IdedExpr, out: &mut Vec<IndexAtom>) {
    let Ast::Call(c) = &e.expr else {
        return;
    };
    match (c.func_name.as_str(), c.args.len()) {
        (operators::LOGICAL_AND, 2) => {
            collect_atoms(&c.args[0], out);
            collect_atoms(&c.args[1], out);
        }
        (operators::EQUALS, 2) => {
            for (f, l) in [(&c.args[0], &c.args[1]), (&c.args[1], &c.args[0])] {
                if let (Some(field), Ast::Literal(LiteralValue::String(s))) =
                    (discrete_field(f), &l.expr)
                {
                    out.push(IndexAtom {
                        field,
                        values: vec![s.inner().to_string()],
                    });
                }
            }
        }
        (operators::IN, 2) => {
            let (Some(field), Ast::List(l)) = (discrete_field(&c.args[0]), &c.args[1].expr) else {
                return;
            };
            let mut values = Vec::new();
            for x in &l.elements {
                match &x.expr {
                    Ast::Literal(LiteralValue::String(s)) => values.push(s.inner().to_string()),
                    _ => return,
                }
            }
            out.push(IndexAtom { field, values });
        }
        _ => {}
    }
}

fn discrete_field(e: &IdedExpr) -> Option<FieldId> {
    let segs = event_path(e)?;
    let path: Vec<&str> = segs.iter().map(|(s, _)| *s).collect();
    let f = fields::lookup(&path.join("."))?;
    fields::field(f).discrete.then_some(f)
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

fn build_object(ev: &Event, prefix: &str, wanted: &dyn Fn(&str) -> bool) -> Value {
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

fn to_cel(v: FieldValue<'_>) -> Value {
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

/// The outcome of [`parity_check`]: native and interpreter results, each `Ok(value)` in a
/// printable form or `Err(message)`.
pub type ParityOutcome = (Result<String, String>, Result<String, String>);

/// Evaluates `expr` both natively and in the `cel` interpreter (on the whole event) and
/// returns both outcomes; `None` when the expression does not compile or is not lowered
/// natively. For the engine's parity tests; not a stable API.
pub fn parity_check(expr: &str, ev: &Event, now: Timestamp) -> Option<ParityOutcome> {
    let e = Expr {
        text: expr.to_string(),
        positions: Arc::from(Vec::new()),
    };
    let c = compile(&e).ok()?;
    let native = c.native.as_ref()?;
    let n = native.eval(ev, now, None).map(|v| format!("{v:?}"));
    let mut ctx = cel::Context::with_env(Arc::new(cel::Env::stdlib()));
    let mut all = BTreeSet::new();
    all.insert(None);
    ctx.add_variable_from_value("event", event_value(ev, &all));
    ctx.add_variable_from_value("now", Value::Timestamp(to_fixed(now)));
    let i = match c.program.execute(&ctx) {
        Ok(v) => from_cel(&v)
            .map(|v| format!("{v:?}"))
            .ok_or_else(|| format!("unsupported {v:?}")),
        Err(e) => Err(e.to_string()),
    };
    Some((n, i))
}

/// Runs the load-time checks of one expression (pre-check, parse, schema check, lowering) on
/// the calling thread, without the loader's large-stack thread. For the engine's own tests,
/// which prove that the pre-check alone keeps the parser within a small stack.
pub fn check_expression_here(text: &str) -> Result<(), String> {
    let expr = Expr {
        text: text.to_string(),
        positions: Arc::from(vec![crate::diag::Pos::FILE; text.chars().count() + 1]),
    };
    compile(&expr).map(|_| ()).map_err(|problems| {
        problems
            .into_iter()
            .map(|p| p.message)
            .collect::<Vec<_>>()
            .join("; ")
    })
}

#[cfg(test)]
mod precheck_tests {
    use super::precheck;

    fn deep(n: usize) -> String {
        format!("{}true{}", "(".repeat(n), ")".repeat(n))
    }

    #[test]
    fn brackets_inside_every_string_form_do_not_count() {
        let open = "(".repeat(100);
        for lit in [
            format!("\"{open}\""),
            format!("'{open}'"),
            format!("r\"{open}\\\""),
            format!("R'{open}\\'"),
            format!("\"\"\"{open}\"\"\""),
            format!("'''{open}\n'''"),
            format!("b\"{open}\""),
            format!("B'{open}'"),
            format!("br\"{open}\\\""),
            format!("BR'''{open}\\'''"),
            format!("\"\\\"{open}\\\\\""),
            format!("'\\x41\\u00e9\\U0001F600\\101\\`{open}'"),
        ] {
            assert!(precheck(&format!("x == {lit}")).is_ok(), "{lit}");
        }
    }

    #[test]
    fn brackets_after_a_string_count_whatever_its_form() {
        // Each literal ends before the brackets; a lexer that mis-reads it (a raw string's
        // backslash as an escape, `rb` as a prefix, a triple quote as three strings) hides
        // them.
        let tail = format!(" + {}", deep(30));
        for lit in [
            r#"r"\""#,
            r#"R'\'"#,
            r#"br"\""#,
            r#"bR'''\'''"#,
            r#"r"""\""""#,
            r#"'''a'b''c'''"#,
            r#""""a"b""c""""#,
            r#""\\""#,
            r#"'\\'"#,
            r#"b"\x41""#,
            "x // \" '\n",
            "1r\"\\\"",
            "0x1fu",
            "1.5e-3",
        ] {
            let text = format!("{lit}{tail}");
            let err = precheck(&text).expect_err(&text);
            assert!(
                err.message.contains("nested more than"),
                "{text}: {}",
                err.message
            );
        }
        // `rb"…"` is the identifier `rb` and a plain string, in which `\"` is an escape: the
        // brackets are inside it.
        assert!(precheck(&format!("rb\"\\\"{}\"", "(".repeat(30))).is_ok());
    }

    #[test]
    fn unterminated_literals_and_bad_escapes_are_rejected() {
        for text in [
            "\"abc",
            "'abc\n((((('",
            "r\"abc\n\"",
            "\"\"\"abc\"\"",
            "'\\q((((('",
            "\"\\x4\"",
            "\"\\u12\"",
            "\"\\400\"",
            "'\\\n'",
        ] {
            let err = precheck(text).expect_err(text);
            assert!(
                err.message.contains("not terminated"),
                "{text:?}: {}",
                err.message
            );
        }
    }

    #[test]
    fn ternaries_count_as_levels_and_close_with_their_bracket() {
        let chain = format!("{}1", "true ? 1 : ".repeat(30));
        assert!(precheck(&chain)
            .unwrap_err()
            .message
            .contains("nested more than"));
        let flat = vec!["(true ? 1 : 2)"; 100].join(" + ");
        assert!(precheck(&flat).is_ok());
        assert!(precheck(&format!("{}1", "true ? 1 : ".repeat(24))).is_ok());
    }

    #[test]
    fn comments_hide_brackets_and_quotes_to_the_end_of_the_line() {
        assert!(precheck(&format!("true // {}\n&& true", "(".repeat(50))).is_ok());
        assert!(precheck(&format!("true // '\n&& {}", deep(30))).is_err());
    }
}
