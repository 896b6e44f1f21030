//! The checker: an expression's event paths against the schema, its types, and its lowering
//! to the native evaluator; and the index atoms.

use std::borrow::Cow;
use std::collections::BTreeSet;

use cel::common::ast::{operators, CallExpr, Expr as Ast, LiteralValue};
use cel::IdedExpr;
use chrono::{DateTime, Duration, Utc};

use crate::decision::Action;
use crate::fields::{self, did_you_mean, FieldId, FieldType};
use crate::history::{self};
use crate::index::{Atom, Key, Test};

use super::*;

pub(super) enum Lowered {
    Native(Native, Ty),
    Fallback(Option<Ty>),
}

pub(super) struct Checker<'p> {
    /// Where each node is, when the expression was parsed with positions (see `compile`):
    /// without, problems are found but not placed, and the caller parses again to place them.
    pub(super) info: Option<&'p SourceInfo>,
    pub(super) problems: Vec<ExprProblem>,
    pub(super) reads: BTreeSet<Option<FieldId>>,
    pub(super) uses_history: bool,
    pub(super) windows: Vec<Duration>,
    /// Reads of a kind's own section (`event.failure.…`): the kind, the offset, the path.
    pub(super) sections: Vec<SectionRead>,
    /// While lowering a quantifier's body: the name of its iteration variable.
    pub(super) elem: Option<String>,
}

/// A read of `event.maintenance`, `event.health` or `event.failure` (or below): only events
/// of one kind have that section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SectionRead {
    /// The kind whose events have the section.
    pub kind: crate::event::Kind,
    /// Where the read is, in characters of the expression (0 when parsed without positions:
    /// see [`super::placed_sections`]).
    pub offset: usize,
    /// The path read, below `event`.
    pub path: String,
}

/// `event.a.b` as ["a", "b"] with the id of each select, if `e` is a select chain on `event`.
pub(super) fn event_path(e: &IdedExpr) -> Option<Vec<(&str, u64)>> {
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

/// The character offset of node `id`. The parser points a selection at its dot, a `has()`
/// at its parenthesis and a method call at its parenthesis, so when the node names
/// something, step onto the nearest occurrence of that name.
pub(super) fn offset_in(info: &SourceInfo, id: u64, name: Option<&str>) -> usize {
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

impl Checker<'_> {
    /// The character offset of node `id` (see [`offset_in`]); 0 when parsed without positions.
    fn offset(&self, id: u64, name: Option<&str>) -> usize {
        self.info.map_or(0, |info| offset_in(info, id, name))
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
    /// Notes a read of a kind's own section.
    fn note_section(&mut self, segs: &[(&str, u64)]) {
        use crate::event::Kind;
        let Some((first, id)) = segs.first() else {
            return;
        };
        let kind = match *first {
            "maintenance" => Kind::Maintenance,
            "health" => Kind::Health,
            "failure" => Kind::OperationFailure,
            _ => return,
        };
        let path = segs.iter().map(|(s, _)| *s).collect::<Vec<_>>().join(".");
        if self.sections.iter().any(|r| r.path == path) {
            return;
        }
        let offset = self.offset(*id, Some(first));
        self.sections.push(SectionRead { kind, offset, path });
    }

    pub(super) fn check(&mut self, e: &IdedExpr, scope: &mut Vec<String>) {
        if let Some(segs) = event_path(e) {
            let f = self.check_path(&segs);
            self.reads.insert(f);
            self.note_section(&segs);
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
                        self.note_section(&all);
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

    pub(super) fn lower(&mut self, e: &IdedExpr) -> Lowered {
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
            Ast::Select(s) if self.is_elem(&s.operand) => match DetailField::named(&s.field) {
                Some(f) if s.test => N(Native::ElemHas(f), Ty::Bool),
                Some(f) => N(Native::Elem(f), Ty::Str),
                None => Fallback(None),
            },
            Ast::Comprehension(c) => self.lower_quantifier(c),
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

    /// Whether `e` is the iteration variable of the quantifier whose body is being lowered.
    fn is_elem(&self, e: &IdedExpr) -> bool {
        matches!((&e.expr, &self.elem), (Ast::Ident(n), Some(v)) if n == v)
    }

    /// `event.failure.details.all(d, body)`, `.exists(d, body)` or `.exists_one(d, body)`, as
    /// the `cel` parser expands them (see its macros), with a body lowered natively in which
    /// `d` is read only as `d.code`, `d.message`, `d.target` or `has()` of them.
    fn lower_quantifier(&mut self, c: &cel::common::ast::ComprehensionExpr) -> Lowered {
        use Lowered::{Fallback, Native as N};
        let accu = c.accu_var.as_str();
        let is_accu = |e: &IdedExpr| matches!(&e.expr, Ast::Ident(n) if n == accu);
        let call = |e: &'_ IdedExpr, name: &str, n: usize| -> bool {
            matches!(&e.expr, Ast::Call(k) if k.func_name == name && k.target.is_none() && k.args.len() == n)
        };
        fn args(e: &IdedExpr) -> &[IdedExpr] {
            match &e.expr {
                Ast::Call(k) => &k.args,
                _ => &[],
            }
        }
        let lit = |e: &IdedExpr| match &e.expr {
            Ast::Literal(l) => literal(l),
            _ => None,
        };
        if c.iter_var2.is_some() || VARIABLES.contains(&c.iter_var.as_str()) || self.elem.is_some()
        {
            return Fallback(None);
        }
        let Some(list) = event_path(&c.iter_range).and_then(|segs| {
            let path: Vec<&str> = segs.iter().map(|(s, _)| *s).collect();
            fields::lookup(&path.join("."))
        }) else {
            return Fallback(None);
        };
        if fields::field(list).ty != FieldType::DetailList {
            return Fallback(None);
        }
        let (q, body) = match (lit(&c.accu_init), args(&c.loop_step)) {
            (Some(V::Bool(init)), [a, body])
                if is_accu(a)
                    && is_accu(&c.result)
                    && call(
                        &c.loop_step,
                        if init {
                            operators::LOGICAL_AND
                        } else {
                            operators::LOGICAL_OR
                        },
                        2,
                    ) =>
            {
                (if init { Quant::All } else { Quant::Exists }, body)
            }
            (Some(V::Int(0)), [body, plus, same])
                if call(&c.loop_step, operators::CONDITIONAL, 3)
                    && is_accu(same)
                    && call(plus, operators::ADD, 2)
                    && matches!(args(plus), [a, one] if is_accu(a) && lit(one) == Some(V::Int(1)))
                    && call(&c.result, operators::EQUALS, 2)
                    && matches!(args(&c.result), [a, one] if is_accu(a) && lit(one) == Some(V::Int(1))) =>
            {
                (Quant::ExistsOne, body)
            }
            _ => return Fallback(None),
        };
        self.elem = Some(c.iter_var.clone());
        let lowered = self.lower(body);
        self.elem = None;
        match lowered {
            N(b, Ty::Bool) => N(Native::Quant(q, list, Box::new(b)), Ty::Bool),
            _ => Fallback(Some(Ty::Bool)),
        }
    }

    fn lower_call(&mut self, id: u64, c: &CallExpr) -> Lowered {
        use Lowered::{Fallback, Native as N};
        let name = c.func_name.as_str();
        let args = &c.args;
        let bx = Box::new;
        if is_history_call(c) {
            // Not once per detail: a body with a history query runs in the interpreter, which
            // refuses history queries at load (an ingest body chooses how many details).
            if self.elem.is_some() {
                return Fallback(None);
            }
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
            ("matches", Some(_), 1) | ("matches", None, 2) => {
                let (subject, pattern) = match &c.target {
                    Some(t) => (&**t, &args[0]),
                    None => (&args[0], &args[1]),
                };
                let Ast::Literal(LiteralValue::String(p)) = &pattern.expr else {
                    return Fallback(Some(Ty::Bool));
                };
                let re = match regex::Regex::new(p.inner()) {
                    Ok(re) => std::sync::Arc::new(re),
                    Err(e) => {
                        self.problem(
                            pattern.id,
                            format!("invalid regular expression: {}", one_line(&e.to_string())),
                            Some("`matches` takes RE2 syntax (the `regex` crate's)".into()),
                        );
                        return Fallback(Some(Ty::Bool));
                    }
                };
                match self.lower(subject) {
                    N(a, Ty::Str) => N(Native::Matches(bx(a), re), Ty::Bool),
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

pub(super) fn is_history_call(c: &CallExpr) -> bool {
    matches!(c.target.as_deref().map(|t| &t.expr), Some(Ast::Ident(n)) if n == "history")
}

pub(super) fn comparable(op: Cmp, t: Ty) -> bool {
    match op {
        Cmp::Eq | Cmp::Ne => true,
        _ => !matches!(t, Ty::Null),
    }
}

pub(super) fn numeric(a: Ty, b: Ty) -> bool {
    matches!(a, Ty::Int | Ty::UInt | Ty::Double) && matches!(b, Ty::Int | Ty::UInt | Ty::Double)
}

pub(super) fn arith_type(op: Arith, a: Ty, b: Ty) -> Option<Ty> {
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

pub(super) fn literal(l: &LiteralValue) -> Option<V<'static>> {
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

pub(super) fn type_of(v: &V<'_>) -> Ty {
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

/// The conjuncts of `e`'s top-level conjunction (`e` itself if it is not one), in order.
pub(super) fn conjuncts(e: &IdedExpr) -> Vec<&IdedExpr> {
    fn walk<'a>(e: &'a IdedExpr, out: &mut Vec<&'a IdedExpr>) {
        if let Ast::Call(c) = &e.expr {
            if c.func_name == operators::LOGICAL_AND && c.args.len() == 2 && c.target.is_none() {
                walk(&c.args[0], out);
                walk(&c.args[1], out);
                return;
            }
        }
        out.push(e);
    }
    let mut out = Vec::new();
    walk(e, &mut out);
    out
}

/// The index atom a conjunct is, if it is one.
fn atom(e: &IdedExpr) -> Option<Atom> {
    if let Some((key, values)) = one_of(e) {
        return Some(Atom {
            key,
            test: Test::OneOf(values),
        });
    }
    presence(e).map(|key| Atom {
        key,
        test: Test::Present,
    })
}

/// Collects the index atoms (see the `index` module) of the top-level conjunction.
pub(super) fn collect_atoms(e: &IdedExpr) -> Vec<Atom> {
    conjuncts(e).into_iter().filter_map(atom).collect()
}

/// The conjunction `e`, lowered natively as `native`, without its atoms (see
/// [`collect_atoms`]), in the order of its conjuncts: `true` if only atoms. CEL's `&&` is
/// commutative over errors, and a true conjunct changes no result, so where the atoms hold
/// this decides exactly as `e` does. Taken from `native` (lowering maps each `&&` to a
/// [`Native::And`]); `None` if its conjuncts do not line up with `e`'s.
pub(super) fn residual(e: &IdedExpr, native: &Native) -> Option<Native> {
    fn walk<'a>(n: &'a Native, out: &mut Vec<&'a Native>) {
        if let Native::And(a, b) = n {
            walk(a, out);
            walk(b, out);
        } else {
            out.push(n);
        }
    }
    let parts = conjuncts(e);
    let mut lowered = Vec::with_capacity(parts.len());
    walk(native, &mut lowered);
    if lowered.len() != parts.len() {
        return None;
    }
    let rest = parts
        .into_iter()
        .zip(lowered)
        .filter(|(c, _)| atom(c).is_none())
        .map(|(_, n)| n.clone())
        .reduce(|prev, n| Native::And(Box::new(prev), Box::new(n)));
    Some(rest.unwrap_or(Native::Lit(V::Bool(true))))
}

/// What an index may key on: a string field (`event.failure.code`) or a resource tag
/// (`event.resource.tags.env`).
fn index_key(e: &IdedExpr) -> Option<Key> {
    let segs = event_path(e)?;
    let path: Vec<&str> = segs.iter().map(|(s, _)| *s).collect();
    if let ["resource", "tags", tag] = path[..] {
        return Some(Key::Tag(tag.to_string()));
    }
    let f = fields::lookup(&path.join("."))?;
    matches!(fields::field(f).ty, FieldType::Str | FieldType::Enum(_)).then_some(Key::Field(f))
}

/// `key == "v"`, `key in ["a", "b"]`, or a disjunction of those on one key: the values the
/// key must have.
fn one_of(e: &IdedExpr) -> Option<(Key, Vec<String>)> {
    let Ast::Call(c) = &e.expr else {
        return None;
    };
    if c.target.is_some() || c.args.len() != 2 {
        return None;
    }
    let string = |x: &IdedExpr| match &x.expr {
        Ast::Literal(LiteralValue::String(s)) => Some(s.inner().to_string()),
        _ => None,
    };
    match c.func_name.as_str() {
        operators::EQUALS => {
            let (a, b) = (&c.args[0], &c.args[1]);
            index_key(a)
                .zip(string(b))
                .or_else(|| index_key(b).zip(string(a)))
                .map(|(k, v)| (k, vec![v]))
        }
        operators::IN => {
            let key = index_key(&c.args[0])?;
            let Ast::List(l) = &c.args[1].expr else {
                return None;
            };
            let values = l.elements.iter().map(string).collect::<Option<Vec<_>>>()?;
            Some((key, values))
        }
        // `a == x || a == y` fails exactly when both sides do, errs exactly when `a` is
        // absent (both sides err): the same as `a in [x, y]`.
        operators::LOGICAL_OR => {
            let (ka, mut va) = one_of(&c.args[0])?;
            let (kb, vb) = one_of(&c.args[1])?;
            (ka == kb).then(|| {
                va.extend(vb);
                (ka, va)
            })
        }
        _ => None,
    }
}

/// `has(event.x.y)` on a field or tag, or `"k" in event.resource.tags`.
fn presence(e: &IdedExpr) -> Option<Key> {
    match &e.expr {
        Ast::Select(s) if s.test => {
            let mut segs = event_path(&s.operand)?;
            segs.push((s.field.as_str(), e.id));
            let path: Vec<&str> = segs.iter().map(|(s, _)| *s).collect();
            if let ["resource", "tags", tag] = path[..] {
                return Some(Key::Tag(tag.to_string()));
            }
            fields::lookup(&path.join(".")).map(Key::Field)
        }
        Ast::Call(c) if c.func_name == operators::IN && c.args.len() == 2 && c.target.is_none() => {
            let Ast::Literal(LiteralValue::String(k)) = &c.args[0].expr else {
                return None;
            };
            let segs = event_path(&c.args[1])?;
            let path: Vec<&str> = segs.iter().map(|(s, _)| *s).collect();
            (path == ["resource", "tags"]).then(|| Key::Tag(k.inner().to_string()))
        }
        _ => None,
    }
}

/// A multi-line message (the `regex` crate draws a caret under the pattern) on one line.
fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}
