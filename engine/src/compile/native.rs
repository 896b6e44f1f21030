//! The native evaluator: typed values, comparisons, arithmetic and field reads over the
//! typed event, with the `cel` crate's semantics.

use std::borrow::Cow;
use std::sync::Arc;

use chrono::{Datelike, Duration};

use crate::decision::Action;
use crate::event::{Event, FailureDetail, Timestamp};
use crate::fields::{self, FieldId, FieldValue};
use crate::history::{History, Val as HVal};

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
    /// The type's name in CEL, for messages.
    pub(crate) fn name(self) -> &'static str {
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
    /// `s.matches("…")` with a literal pattern, compiled once at load (the `cel` crate
    /// compiles it on every call).
    Matches(Box<Native>, std::sync::Arc<regex::Regex>),
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
    /// `event.failure.details.all(d, …)`, `.exists(d, …)` or `.exists_one(d, …)`: the body
    /// evaluated on each detail in turn, with the `cel` crate's handling of errors (see
    /// [`Quant`]).
    Quant(Quant, FieldId, Box<Native>),
    /// A field of the detail a [`Native::Quant`] body is evaluated on (`d.code`).
    Elem(DetailField),
    /// `has(d.message)` on that detail.
    ElemHas(DetailField),
}

/// A quantifier over a list, as the `cel` crate's macros expand and evaluate it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Quant {
    /// `all`: `false` if the body is false for some element, else the last error if the body
    /// failed for some element, else `true`.
    All,
    /// `exists`: `true` if the body is true for some element, else the last error if the body
    /// failed for some element, else `false`.
    Exists,
    /// `exists_one`: the first error if the body fails for any element, else whether it is
    /// true for exactly one.
    ExistsOne,
}

/// A field of a `failure.details` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DetailField {
    Code,
    Message,
    Target,
}

impl DetailField {
    /// The field named `name`, if a detail has it.
    pub(crate) fn named(name: &str) -> Option<DetailField> {
        match name {
            "code" => Some(DetailField::Code),
            "message" => Some(DetailField::Message),
            "target" => Some(DetailField::Target),
            _ => None,
        }
    }

    fn read(self, d: &FailureDetail) -> Result<&str, &'static str> {
        match self {
            DetailField::Code => Ok(&d.code),
            DetailField::Message => d.message.as_deref().ok_or("message"),
            DetailField::Target => d.target.as_deref().ok_or("target"),
        }
    }
}

/// An evaluation error (recorded in `Decision.errors`).
pub(crate) type EvalResult<'e> = Result<V<'e>, String>;

pub(super) fn no_such_key(k: &str) -> String {
    format!("No such key: {k}")
}

impl Native {
    pub(crate) fn eval<'e>(
        &'e self,
        ev: &'e Event,
        now: Timestamp,
        h: Option<&History>,
    ) -> EvalResult<'e> {
        self.eval_at(ev, now, h, None)
    }

    /// [`Native::eval`] inside a [`Native::Quant`] body, on the detail `el`.
    fn eval_at<'e>(
        &'e self,
        ev: &'e Event,
        now: Timestamp,
        h: Option<&History>,
        el: Option<&'e FailureDetail>,
    ) -> EvalResult<'e> {
        match self {
            // Borrowed from the policy: a string literal is not copied per evaluation.
            Native::Lit(V::Str(s)) => Ok(V::Str(Cow::Borrowed(s.as_ref()))),
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
            Native::Not(a) => match a.eval_at(ev, now, h, el)? {
                V::Bool(b) => Ok(V::Bool(!b)),
                other => Err(format!("no such overload: !{}", vname(&other))),
            },
            Native::And(a, b) => logic(
                a.eval_at(ev, now, h, el),
                || b.eval_at(ev, now, h, el),
                false,
            ),
            Native::Or(a, b) => logic(
                a.eval_at(ev, now, h, el),
                || b.eval_at(ev, now, h, el),
                true,
            ),
            Native::Cond(c, a, b) => match c.eval_at(ev, now, h, el)? {
                V::Bool(true) => a.eval_at(ev, now, h, el),
                V::Bool(false) => b.eval_at(ev, now, h, el),
                other => Err(format!("no such overload: {} ? _ : _", vname(&other))),
            },
            Native::Cmp(op, a, b) => {
                let (a, b) = (a.eval_at(ev, now, h, el)?, b.eval_at(ev, now, h, el)?);
                compare(*op, &a, &b).map(V::Bool)
            }
            Native::Arith(op, a, b) => {
                arith(*op, a.eval_at(ev, now, h, el)?, b.eval_at(ev, now, h, el)?)
            }
            Native::In(a, list) => {
                let a = a.eval_at(ev, now, h, el)?;
                Ok(V::Bool(list.contains(&a)))
            }
            Native::History {
                distinct,
                filter,
                window,
                cap,
            } => {
                let window = duration_of(window.eval_at(ev, now, h, el)?)?;
                let mut f = Vec::with_capacity(filter.len());
                for (id, n) in filter {
                    f.push((*id, history_val(n.eval_at(ev, now, h, el)?)?));
                }
                Ok(V::Int(match h {
                    None => 0,
                    Some(h) if *distinct => h.resources(&f, ev.time, window, *cap),
                    Some(h) => h.count(&f, ev.time, window, *cap),
                }))
            }
            Native::Actions(resource, action, window, cap) => {
                let window = duration_of(window.eval_at(ev, now, h, el)?)?;
                let V::Str(r) = resource.eval_at(ev, now, h, el)? else {
                    return Err("history.actions: the resource must be a string".into());
                };
                Ok(V::Int(h.map_or(0, |h| {
                    h.actions(&r, *action, ev.time, window, *cap)
                })))
            }
            Native::ToString(a) => match a.eval_at(ev, now, h, el)? {
                V::Int(i) => Ok(V::Str(Cow::Owned(i.to_string()))),
                V::Str(s) => Ok(V::Str(s)),
                other => Err(format!("no such overload: string({})", vname(&other))),
            },
            Native::Matches(a, re) => match a.eval_at(ev, now, h, el)? {
                V::Str(s) => Ok(V::Bool(re.is_match(&s))),
                other => Err(format!(
                    "no such overload: matches({}, string)",
                    vname(&other)
                )),
            },
            Native::Elem(f) => match el.map(|d| f.read(d)) {
                Some(Ok(s)) => Ok(V::Str(Cow::Borrowed(s))),
                Some(Err(k)) => Err(no_such_key(k)),
                None => Err("internal error: a detail field read outside its quantifier".into()),
            },
            Native::ElemHas(f) => match el {
                Some(d) => Ok(V::Bool(f.read(d).is_ok())),
                None => Err("internal error: a detail field read outside its quantifier".into()),
            },
            Native::Quant(q, list, body) => {
                let items = match fields::read(ev, *list) {
                    Ok(Some(FieldValue::Details(d))) => d,
                    Ok(Some(_)) => {
                        return Err("internal error: a quantifier over a non-list".into())
                    }
                    Ok(None) => {
                        let path = fields::field(*list).path;
                        return Err(no_such_key(path.rsplit('.').next().unwrap_or(path)));
                    }
                    Err(parent) => return Err(no_such_key(parent)),
                };
                quantify(*q, items, |d| body.eval_at(ev, now, h, Some(d)))
            }
            Native::StrFn(op, a, b) => {
                match (a.eval_at(ev, now, h, el)?, b.eval_at(ev, now, h, el)?) {
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
                }
            }
        }
    }
}

/// Folds `body` over `items` as the `cel` crate evaluates the expansion of `all`, `exists`
/// and `exists_one`: `@result && body` and `@result || body` keep an error pending until an
/// element decides the result or the loop ends, while `exists_one`'s `body ? @result + 1 :
/// @result` fails at the first error.
fn quantify<'e>(
    q: Quant,
    items: &'e [FailureDetail],
    mut body: impl FnMut(&'e FailureDetail) -> EvalResult<'e>,
) -> EvalResult<'e> {
    let mut pending: Option<String> = None;
    let mut count: i64 = 0;
    for d in items {
        match (q, body(d)) {
            (Quant::All, Ok(V::Bool(false))) => return Ok(V::Bool(false)),
            (Quant::Exists, Ok(V::Bool(true))) => return Ok(V::Bool(true)),
            (Quant::All | Quant::Exists, Ok(V::Bool(_))) => {}
            // (A body is lowered only when it is a bool: unreachable, kept total.)
            (Quant::All | Quant::Exists, Ok(other)) => {
                pending = Some(format!(
                    "no such overload: logical operator on {}",
                    vname(&other)
                ));
            }
            (Quant::All | Quant::Exists, Err(e)) => pending = Some(e),
            (Quant::ExistsOne, Ok(V::Bool(b))) => count += i64::from(b),
            (Quant::ExistsOne, Ok(other)) => {
                return Err(format!("no such overload: {} ? _ : _", vname(&other)))
            }
            (Quant::ExistsOne, Err(e)) => return Err(e),
        }
    }
    match (q, pending) {
        (Quant::ExistsOne, _) => Ok(V::Bool(count == 1)),
        (_, Some(e)) => Err(e),
        (Quant::All, None) => Ok(V::Bool(true)),
        (Quant::Exists, None) => Ok(V::Bool(false)),
    }
}

/// A history count compared with a constant `k >= 0` needs counting only up to `k + 1`: every
/// comparison (`==`, `!=`, `<`, `<=`, `>`, `>=`) of `min(n, k + 1)` with `k` has the truth
/// value of the same comparison of `n` with `k`.
pub(super) fn cap_history(query: &mut Native, other: &Native) {
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

pub(super) fn duration_of(v: V<'_>) -> Result<Duration, String> {
    match v {
        V::Dur(d) if d > Duration::zero() => Ok(d),
        V::Dur(_) => Err("a history window must be positive".into()),
        other => Err(format!(
            "a history window must be a duration, not {}",
            vname(&other)
        )),
    }
}

pub(super) fn history_val(v: V<'_>) -> Result<HVal, String> {
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
pub(super) fn logic<'e>(
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

pub(super) fn vname(v: &V<'_>) -> &'static str {
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

pub(super) fn from_field(v: FieldValue<'_>) -> V<'_> {
    match v {
        FieldValue::Str(s) => V::Str(Cow::Borrowed(s)),
        FieldValue::Int(i) => V::Int(i),
        FieldValue::Bool(b) => V::Bool(b),
        FieldValue::Time(t) => V::Time(t),
        // Never lowered natively: the lowering only reads scalar fields.
        FieldValue::StrMap(_) | FieldValue::Details(_) | FieldValue::Object => V::Null,
    }
}

pub(super) fn compare(op: Cmp, a: &V<'_>, b: &V<'_>) -> Result<bool, String> {
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
pub(super) fn cel_time(t: Timestamp) -> Option<Timestamp> {
    (1..=9999).contains(&t.year()).then_some(t)
}

/// A CEL duration must fit an `i64` count of nanoseconds, as in the `cel` crate.
pub(super) fn cel_dur(d: Duration) -> Option<Duration> {
    d.num_nanoseconds().map(|_| d)
}

pub(super) fn arith<'e>(op: Arith, a: V<'e>, b: V<'e>) -> EvalResult<'e> {
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
