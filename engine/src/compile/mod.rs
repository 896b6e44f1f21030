//! CEL expressions: parsed once, checked against the event schema, and lowered to a native
//! evaluator where their shape allows, with the `cel` interpreter as the fallback.
//!
//! The native form covers what policies mostly are: field reads, literals, `has()`, `==`,
//! `!=`, `<`…`>=`, `in` over literal lists, `&&`, `||`, `!`, `? :`, `startsWith`,
//! `endsWith`, `contains`, `matches` with a literal pattern (compiled once, at load, where
//! the `cel` crate compiles it on every call), tag lookups, `now`, `duration("…")` and
//! `timestamp("…")` literals and simple time and integer arithmetic. It reads the typed event in place and has the `cel`
//! crate's semantics (tested for parity), including errors absorbed by `&&` and `||`.
//! Anything else (macros, `size`, conversions, ...) runs in the interpreter on a
//! CEL value holding only the event fields some fallback policy reads.

mod check;
mod interp;
mod limits;
mod native;

use std::collections::BTreeSet;
use std::sync::Arc;

use cel::common::ast::SourceInfo;
use cel::objects::Value;
use cel::IdedExpr;
use chrono::Duration;

use crate::event::{Event, Timestamp};
use crate::expr::Expr;
use crate::fields::FieldId;

pub(crate) use self::check::*;
pub(crate) use self::interp::*;
pub use self::interp::{MAX_EVAL_COST, MAX_STRING_BYTES};
pub(crate) use self::limits::*;
pub(crate) use self::native::*;

/// A load-time problem in an expression: a character offset into it and a message.
#[derive(Debug, Clone)]
pub(crate) struct ExprProblem {
    pub offset: usize,
    pub message: String,
    pub help: Option<String>,
}

/// A compiled expression.
#[derive(Debug)]
pub(crate) struct Compiled {
    pub native: Option<Native>,
    /// Static result type, where known.
    pub ty: Option<Ty>,
    /// The conjuncts the policy index decides (see the `index` module).
    pub atoms: Vec<crate::index::Atom>,
    /// The native form of the conjunction without those conjuncts (`true` if nothing else
    /// is left): what decides a candidate whose atoms the index proved true (the event has a
    /// value under each of their keys). `None` when not lowered, or no conjunct is an atom.
    pub residual: Option<Native>,
    /// Event paths the interpreter needs (only when `native` is `None`); `None` entries mean
    /// "the whole event".
    pub reads: BTreeSet<Option<FieldId>>,
    /// Whether the expression queries the correlation history.
    pub uses_history: bool,
    /// Its reads of a kind's own section (`event.failure.…`), for the `on:` warning.
    pub sections: Vec<check::SectionRead>,
    /// The constant history windows it uses (for truncation warnings).
    pub windows: Vec<Duration>,
    /// What the interpreter runs when `native` is `None` (and `None` when it is not: a
    /// lowered expression keeps no tree): the parsed expression or, where it has
    /// comprehensions, the same with every comprehension range and operand passed through
    /// [`COST_FN`], which charges the evaluation's cost budget (see [`meter`]).
    pub interpreted: Option<IdedExpr>,
}

/// The interpreter's environment: the CEL standard library and the strings extension
/// (`split`, `join`, `replace`, `substring`, `charAt`, `indexOf`, `lastIndexOf`,
/// `lowerAscii`, `upperAscii`, `trim`), which the checker accepts as known functions.
pub(crate) fn env() -> Arc<cel::Env> {
    let mut env = cel::Env::stdlib();
    // Declaring the extension on a fresh standard environment cannot clash; were it refused,
    // its functions would fail at evaluation as unknown, never silently succeed.
    let _ = cel::extensions::strings(&mut env);
    Arc::new(env)
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
///
/// The expression is parsed with the `cel` crate's hand-written (Pratt) parser, about fifteen
/// times faster than its ANTLR one, which was most of a load's time. That parser keeps no
/// positions, so where positions matter (a syntax error, a problem the checks find) the
/// expression is parsed again with the ANTLR parser, which gives the same tree (but for its
/// node ids: tested on every string of the repository's YAML files, the benchmark's policies
/// and random expressions), and checked again on that tree: a set that loads never pays for
/// positions, and every diagnostic is placed as the ANTLR parser's positions place it.
pub(crate) fn compile(expr: &Expr) -> Result<Compiled, Vec<ExprProblem>> {
    let pratt_safe = precheck(&expr.text).map_err(|p| vec![p])?;
    if let Some(ast) = pratt(&expr.text, pratt_safe) {
        if let Ok(c) = compile_ast(ast, None) {
            return Ok(c);
        }
    }
    let (ast, info) = parse_with_positions(&expr.text)?;
    compile_ast(ast, Some(&info))
}

/// The tree the engine's fast path parses `text` to, or `None` where it leaves `text` to the
/// ANTLR parser (the pre-check fails or flags a construct the parsers disagree on, or the
/// Pratt parser rejects it). For the engine's parity tests; not a stable API.
pub fn fast_parse(text: &str) -> Option<IdedExpr> {
    pratt(text, precheck(text).ok()?)
}

/// The Pratt parser's tree of `text`, where the pre-check found it safe for that parser.
fn pratt(text: &str, pratt_safe: bool) -> Option<IdedExpr> {
    pratt_safe
        .then(|| cel::parser::PrattParser::default().parse(text).ok())
        .flatten()
}

/// Parses `text` with the ANTLR parser, which records where each node is.
fn parse_with_positions(text: &str) -> Result<(IdedExpr, SourceInfo), Vec<ExprProblem>> {
    cel::parser::Parser::default()
        .parse_with_source_info(text)
        .map_err(|errs| {
            errs.errors
                .iter()
                .map(|e| ExprProblem {
                    offset: line_col_to_offset(text, e.pos.0, e.pos.1),
                    message: format!("CEL syntax error: {}", strip_syntax_prefix(&e.msg)),
                    help: None,
                })
                .collect::<Vec<_>>()
        })
}

/// The section reads of `text` with their offsets (for a warning): the expression is parsed
/// again with positions and checked again. Empty if it no longer compiles (it did).
pub(crate) fn placed_sections(text: &str) -> Vec<SectionRead> {
    parse_with_positions(text)
        .and_then(|(ast, info)| compile_ast(ast, Some(&info)))
        .map(|c| c.sections)
        .unwrap_or_default()
}

/// Checks and lowers a parsed expression; `info`, where given, places the problems.
fn compile_ast(ast: IdedExpr, info: Option<&SourceInfo>) -> Result<Compiled, Vec<ExprProblem>> {
    let depth = ast_depth(&ast);
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
        info,
        problems: Vec::new(),
        reads: BTreeSet::new(),
        uses_history: false,
        windows: Vec::new(),
        sections: Vec::new(),
        elem: None,
    };
    ck.check(&ast, &mut Vec::new());
    let lowered = ck.lower(&ast);
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
            help: Some("keep history queries in expressions of field tests, comparisons, `in` lists, `&&`, `||`, `!` and `has()`; move `size`, conversions or macros into another policy".into()),
        }]);
    }
    let atoms = collect_atoms(&ast);
    let residual = match &native {
        Some(n) if !atoms.is_empty() => residual(&ast, n),
        _ => None,
    };
    let interpreted = if native.is_some() {
        None
    } else if has_comprehension(&ast) {
        let n = literal_iterations(&ast);
        if n > MAX_EVAL_COST {
            return Err(vec![ExprProblem {
                offset: 0,
                message: format!(
                    "the comprehensions of this expression visit {n} elements of literal lists; the evaluation cost budget is {MAX_EVAL_COST}"
                ),
                help: Some("nest fewer comprehensions, or over shorter lists".into()),
            }]);
        }
        let mut m = ast;
        meter(&mut m, &mut Vec::new());
        interp::bound_replace(&mut m);
        Some(m)
    } else {
        let mut m = ast;
        interp::bound_replace(&mut m);
        Some(m)
    };
    let uses_history = ck.uses_history;
    let windows = std::mem::take(&mut ck.windows);
    let sections = std::mem::take(&mut ck.sections);
    let reads = if native.is_some() {
        BTreeSet::new()
    } else {
        ck.reads
    };
    Ok(Compiled {
        native,
        ty,
        atoms,
        residual,
        reads,
        uses_history,
        windows,
        sections,
        interpreted,
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
    // A lowered expression keeps no tree: the interpreter runs the ANTLR parser's.
    let (tree, _) = parse_with_positions(expr).ok()?;
    let n = native.eval(ev, now, None).map(|v| format!("{v:?}"));
    let mut ctx = cel::Context::with_env(env());
    let mut all = BTreeSet::new();
    all.insert(None);
    ctx.add_variable_from_value("event", event_value(ev, &all));
    ctx.add_variable_from_value("now", Value::Timestamp(to_fixed(now)));
    let i = match ctx.resolve(&tree) {
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
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn compiled(text: &str) -> Compiled {
        let e = Expr {
            text: text.to_string(),
            positions: Arc::from(vec![crate::diag::Pos::FILE; text.chars().count() + 1]),
        };
        compile(&e).unwrap_or_else(|p| panic!("{text}: {:?}", p[0].message))
    }

    proptest::proptest! {
        /// The bounded `replace` is the `cel` crate's (`str::replace`, or `replacen` for a
        /// count of zero or more), and refuses exactly the results past the bound.
        #[test]
        fn bounded_replace_is_the_crates_replace(
            this in "[ab\u{e9}-]{0,12}",
            from in "[ab]{0,2}",
            to in "[xy\u{e9}]{0,3}",
            n in proptest::option::of(-2i64..5),
        ) {
            let expected = match n.and_then(|n| usize::try_from(n).ok()) {
                Some(l) => this.replacen(from.as_str(), &to, l),
                None => this.replace(from.as_str(), &to),
            };
            proptest::prop_assert_eq!(replace_bounded(&this, &from, &to, n), Some(expected));
        }
    }

    #[test]
    fn bounded_replace_refuses_only_past_the_bound() {
        let quarter = "x".repeat(MAX_STRING_BYTES / 4);
        // Three insertions into two characters: under; four into three: over.
        let len = |r: Option<String>| r.map(|s| s.len());
        assert_eq!(
            len(replace_bounded("ab", "", &quarter, None)),
            Some(3 * MAX_STRING_BYTES / 4 + 2)
        );
        assert_eq!(replace_bounded("abc", "", &quarter, None), None);
        assert_eq!(
            len(replace_bounded("abc", "", &quarter, Some(3))),
            Some(3 * MAX_STRING_BYTES / 4 + 3)
        );
        let whole = "x".repeat(MAX_STRING_BYTES);
        assert_eq!(
            len(replace_bounded("", "", &whole, None)),
            Some(MAX_STRING_BYTES),
            "at the bound"
        );
        let long = "a".repeat(MAX_STRING_BYTES + 10);
        assert_eq!(replace_bounded(&long, "a", "", None), Some(String::new()));
        assert_eq!(
            replace_bounded(&long, "a", "b", None).map(|s| s.len()),
            Some(long.len()),
            "already past, not grown"
        );
        assert_eq!(
            replace_bounded(&long, "a", "bb", Some(1)),
            None,
            "grown past"
        );
    }

    /// The residual keeps exactly the conjuncts that are not atoms, in order.
    #[test]
    fn the_residual_is_the_conjunction_without_its_atoms() {
        let c = compiled(
            r#"event.failure.code == "A" && event.failure.attempt > 1 && has(event.resource.os) && event.resource.region in ["x", "y"] && event.failure.attempt < 5"#,
        );
        assert_eq!(c.atoms.len(), 3);
        let r = format!("{:?}", c.residual.expect("a residual"));
        assert!(r.starts_with("And(Cmp(Gt"), "{r}");
        assert!(r.contains("Cmp(Lt"), "{r}");
        for atom_part in ["Eq", "In(", "Has("] {
            assert!(!r.contains(atom_part), "{atom_part} in {r}");
        }
        // Only atoms: the residual is `true`.
        let c = compiled(r#"event.failure.code == "A" && has(event.resource.os)"#);
        assert_eq!(
            format!("{:?}", c.residual),
            format!("{:?}", Some(Native::Lit(V::Bool(true))))
        );
        // A disjunction of two keys is no atom: it stays, whole.
        let c = compiled(
            r#"event.failure.code == "A" && (event.resource.os == "x" || event.failure.attempt > 1)"#,
        );
        let r = format!("{:?}", c.residual.expect("a residual"));
        assert!(r.starts_with("Or("), "{r}");
        // No atom, no residual; a single atom, `true`.
        assert!(compiled("event.failure.attempt > 1").residual.is_none());
        assert!(compiled(r#"event.failure.code == "A""#).residual.is_some());
    }

    /// A history query runs at most once per expression and event, never once per detail
    /// (the ingest body chooses how many there are): inside a quantifier it is refused at
    /// load, as in any expression the interpreter would run.
    #[test]
    fn a_history_query_inside_a_quantifier_is_a_load_error() {
        let e = Expr {
            text: r#"event.failure.details.exists(d, history.count({"failure.code": d.code}, duration("1h")) > 3)"#.into(),
            positions: Arc::from(Vec::new()),
        };
        let problems = compile(&e).expect_err("refused");
        assert!(
            problems[0].message.contains("must be evaluable natively"),
            "{}",
            problems[0].message
        );
        // Beside a quantifier, it stays native.
        let c = compiled(
            r#"event.failure.details.exists(d, d.code == "X") && history.count({"failure.code": event.failure.code}, duration("1h")) > 3"#,
        );
        assert!(c.native.is_some());
    }

    /// Only the exact expansion of `all`, `exists` and `exists_one` over `failure.details`
    /// is lowered: the same comprehension with any part changed runs in the interpreter.
    #[test]
    fn only_the_standard_expansions_of_the_quantifiers_are_lowered() {
        use cel::common::ast::{Expr as Ast, LiteralValue};
        let base = |q: &str| {
            cel::parser::Parser::default()
                .parse(&format!(r#"event.failure.details.{q}(d, d.code == "X")"#))
                .unwrap()
        };
        let lowers = |ast: IdedExpr| compile_ast(ast, None).is_ok_and(|c| c.native.is_some());
        for q in ["all", "exists", "exists_one"] {
            assert!(lowers(base(q)), "{q}");
        }
        type Edit = fn(&mut cel::common::ast::ComprehensionExpr);
        let edits: &[(&str, Edit)] = &[
            // The accumulator's start swapped: `exists` folding with `&&`.
            ("exists", |c| {
                c.accu_init.expr = Ast::Literal(LiteralValue::Boolean(true.into()))
            }),
            // The result is not the accumulator.
            ("all", |c| c.result.expr = Ast::Ident("x".into())),
            ("exists", |c| c.result.expr = Ast::Ident("x".into())),
            // The step folds something other than the accumulator.
            ("all", |c| {
                if let Ast::Call(k) = &mut c.loop_step.expr {
                    k.args[0].expr = Ast::Ident("x".into());
                }
            }),
            ("exists_one", |c| {
                if let Ast::Call(k) = &mut c.loop_step.expr {
                    k.args[2].expr = Ast::Ident("x".into());
                }
            }),
            // `exists_one` counting by 2, or comparing the count with 2.
            ("exists_one", |c| {
                if let Ast::Call(k) = &mut c.loop_step.expr {
                    if let Ast::Call(plus) = &mut k.args[1].expr {
                        plus.args[1].expr = Ast::Literal(LiteralValue::Int(2.into()));
                    }
                }
            }),
            ("exists_one", |c| {
                if let Ast::Call(k) = &mut c.loop_step.expr {
                    if let Ast::Call(plus) = &mut k.args[1].expr {
                        plus.func_name = "_-_".into();
                    }
                }
            }),
            ("exists_one", |c| {
                if let Ast::Call(k) = &mut c.result.expr {
                    k.args[1].expr = Ast::Literal(LiteralValue::Int(2.into()));
                }
            }),
            ("exists_one", |c| {
                if let Ast::Call(k) = &mut c.result.expr {
                    k.args[0].expr = Ast::Ident("x".into());
                }
            }),
            ("exists_one", |c| {
                if let Ast::Call(k) = &mut c.result.expr {
                    k.func_name = "_!=_".into();
                }
            }),
            // A second iteration variable.
            ("exists", |c| c.iter_var2 = Some("e".into())),
        ];
        for (q, edit) in edits {
            let mut ast = base(q);
            let Ast::Comprehension(c) = &mut ast.expr else {
                panic!("{q} is not a comprehension");
            };
            edit(c);
            assert!(!lowers(ast), "{q}, edited");
        }
    }
}
