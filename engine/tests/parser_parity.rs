//! The engine parses expressions with the `cel` crate's hand-written (Pratt) parser and, only
//! where a diagnostic needs positions, parses them again with the crate's ANTLR parser,
//! relying on both giving the same tree. These tests hold the two
//! parsers to that (but for the node ids, which the engine never carries from one parse to
//! the other): every string of every YAML file in the repository (policies, tests,
//! deploy files: expressions and much that is not), every expression of the benchmark's
//! generated 1000-policy set, random expressions over the whole grammar, and random edits of
//! them. Both must accept the same texts, and build identical trees from them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../benches/common/mod.rs"]
mod bench_common;

use std::path::{Path, PathBuf};

use cel::parser::Parser;
use keel_engine::__private::fast_parse;
use proptest::prelude::*;
use saphyr::{LoadableYamlNode, Yaml};

/// A tree's debug form without its node ids: the parsers number nodes differently (the
/// Pratt parser gives a map or a message its id before its entries), and the engine never
/// mixes one parser's ids with the other's.
fn shape(e: &cel::IdedExpr) -> String {
    let s = format!("{e:?}");
    let mut out = String::with_capacity(s.len());
    let mut rest = s.as_str();
    while let Some(i) = rest.find("id: ") {
        out.push_str(&rest[..i + 4]);
        rest = rest[i + 4..].trim_start_matches(|c: char| c.is_ascii_digit());
        out.push('_');
    }
    out.push_str(rest);
    out
}

/// The engine's fast path and the ANTLR parser on `text`: `Ok(true)` when the fast path
/// took it and built the ANTLR parser's tree, `Ok(false)` when it left it to the ANTLR parser,
/// `Err` with a description when it took a text the ANTLR parser rejects or built another
/// tree.
fn agree(text: &str) -> Result<bool, String> {
    let Some(fast) = fast_parse(text) else {
        return Ok(false);
    };
    match Parser::default().parse(text) {
        Ok(a) if shape(&a) == shape(&fast) => Ok(true),
        Ok(a) => Err(format!(
            "{text:?}: different trees\nANTLR: {a:?}\nPratt: {fast:?}"
        )),
        Err(e) => Err(format!("{text:?}: only Pratt accepts it; ANTLR: {e}")),
    }
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name();
        if name == "target" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        if p.is_dir() {
            yaml_files(&p, out);
        } else if matches!(p.extension().and_then(|x| x.to_str()), Some("yaml" | "yml")) {
            out.push(p);
        }
    }
}

fn strings(y: &Yaml, out: &mut Vec<String>) {
    match y {
        Yaml::Sequence(items) => items.iter().for_each(|i| strings(i, out)),
        Yaml::Mapping(m) => m.iter().for_each(|(k, v)| {
            strings(k, out);
            strings(v, out);
        }),
        other => {
            if let Some(s) = other.as_str() {
                out.push(s.to_string());
            }
        }
    }
}

#[test]
fn every_string_of_the_repositorys_yaml_files_parses_alike() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    yaml_files(&root, &mut files);
    assert!(files.len() >= 40, "found only {} YAML files", files.len());
    let (mut texts, mut accepted) = (0, 0);
    for f in files {
        let Ok(src) = std::fs::read_to_string(&f) else {
            continue;
        };
        // A YAML test file that is deliberately broken is skipped; its strings are elsewhere.
        let Ok(docs) = Yaml::load_from_str(&src) else {
            continue;
        };
        let mut all = Vec::new();
        docs.iter().for_each(|d| strings(d, &mut all));
        for s in all {
            texts += 1;
            match agree(&s) {
                Ok(ok) => accepted += usize::from(ok),
                Err(why) => panic!("{}: {why}", f.display()),
            }
        }
    }
    // The corpus holds the standard and compatibility policies: hundreds of expressions.
    assert!(accepted >= 200, "{accepted} of {texts} strings parsed");
}

#[test]
fn every_expression_of_the_generated_benchmark_set_parses_alike() {
    let yaml = bench_common::policies(1000);
    let docs = Yaml::load_from_str(&yaml).expect("the generator's YAML");
    let mut all = Vec::new();
    docs.iter().for_each(|d| strings(d, &mut all));
    let mut expressions = 0;
    for s in all {
        if agree(&s).unwrap_or_else(|why| panic!("{why}")) && s.contains("event.") {
            expressions += 1;
        }
    }
    assert!(expressions >= 1000, "{expressions} expressions");
}

/// A random CEL expression over the whole grammar, with random spacing.
fn expr() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![prop::sample::select(vec![
        "event",
        "now",
        "history",
        "x",
        "d",
        "a_b",
        "in_",
        "_x",
        "null",
        "true",
        "false",
        "0",
        "7",
        "-3",
        "0x1F",
        "0XaB",
        "9223372036854775807",
        "9223372036854775808",
        "18446744073709551615u",
        "1u",
        "0x10U",
        "1.5",
        "1e3",
        "2.5E-3",
        ".5",
        "1.",
        "\"s\"",
        "'t'",
        "\"\"",
        "\"a\\nb\"",
        "'\\x41'",
        "\"\\u00e9\"",
        "\"\\U0001F600\"",
        "\"\\101\"",
        "r\"raw\\n\"",
        "R'x'",
        "'''tri\nple'''",
        "\"\"\"t\"\"\"",
        "b\"ab\"",
        "B'\\xff'",
        "br'x'",
        "\"é\"",
        "\"\\q\"",
        "'unterminated",
        "1x",
        "0x",
        "`q`",
        "rb'x'",
        "Rb\"y\"",
        "xr'z'",
        "BR'\\'",
        "as",
        "break",
        "while",
        "NaN",
    ]),]
    .prop_map(str::to_string);
    leaf.prop_recursive(5, 48, 4, |inner| {
        let ident = prop::sample::select(vec!["x", "d", "e", "code", "tags", "in"]);
        let field = prop::sample::select(vec!["a", "code", "failure", "resource", "tags", "in"]);
        let op = prop::sample::select(vec![
            "&&", "||", "==", "!=", "<", "<=", ">", ">=", "+", "-", "*", "/", "%", "in", "=", "&",
            "|", "!",
        ]);
        let macro_ = prop::sample::select(vec![
            "all",
            "exists",
            "exists_one",
            "map",
            "filter",
            "size",
            "matches",
            "startsWith",
        ]);
        prop_oneof![
            (inner.clone(), field.clone()).prop_map(|(e, f)| format!("{e}.{f}")),
            (inner.clone(), field.clone()).prop_map(|(e, f)| format!("{e}.?{f}")),
            (inner.clone(), field).prop_map(|(e, f)| format!("has({e}.{f})")),
            inner.clone().prop_map(|e| format!("has({e})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a}[{b}]")),
            (inner.clone(), op, inner.clone()).prop_map(|(a, o, b)| format!("{a} {o} {b}")),
            (inner.clone(), inner.clone(), inner.clone())
                .prop_map(|(a, b, c)| format!("{a} ? {b} : {c}")),
            inner.clone().prop_map(|e| format!("({e})")),
            inner.clone().prop_map(|e| format!("!{e}")),
            inner.clone().prop_map(|e| format!("-{e}")),
            inner.clone().prop_map(|e| format!("!!{e}")),
            prop::collection::vec(inner.clone(), 0..3).prop_map(|v| format!("[{}]", v.join(", "))),
            prop::collection::vec(inner.clone(), 1..3).prop_map(|v| format!("[{},]", v.join(", "))),
            prop::collection::vec((inner.clone(), inner.clone()), 0..3).prop_map(|v| {
                let e: Vec<String> = v.into_iter().map(|(k, v)| format!("{k}: {v}")).collect();
                format!("{{{}}}", e.join(", "))
            }),
            (inner.clone(), macro_.clone(), ident.clone(), inner.clone())
                .prop_map(|(r, m, v, b)| format!("{r}.{m}({v}, {b})")),
            (
                inner.clone(),
                macro_.clone(),
                ident.clone(),
                inner.clone(),
                inner.clone()
            )
                .prop_map(|(r, m, v, b, c)| format!("{r}.{m}({v}, {b}, {c})")),
            (macro_.clone(), prop::collection::vec(inner.clone(), 0..3))
                .prop_map(|(m, a)| format!("{m}({})", a.join(", "))),
            (
                inner.clone(),
                macro_,
                prop::collection::vec(inner.clone(), 0..2)
            )
                .prop_map(|(r, m, a)| format!("{r}.{m}({})", a.join(","))),
            (ident, inner.clone()).prop_map(|(f, e)| format!("{f}{{a: {e}}}")),
            inner.clone().prop_map(|e| format!(".{e}")),
            inner.prop_map(|e| format!("  {e}\t// note\n")),
        ]
    })
}

/// An edit of a text: delete, insert or replace one character.
fn edit() -> impl Strategy<Value = (u8, usize, char)> {
    (
        0u8..3,
        any::<usize>(),
        prop::sample::select(vec![
            '(', ')', '[', ']', '{', '}', '.', ',', '"', '\'', '\\', '?', ':', '!', '=', '&', '|',
            '<', '>', '-', '+', '*', '/', '%', ' ', '\n', 'u', 'x', 'e', '0', '9', 'b', 'r', '`',
            'é', '\u{0}', 'X',
        ]),
    )
}

fn apply(text: &str, edits: &[(u8, usize, char)]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for &(kind, at, c) in edits {
        let i = if chars.is_empty() {
            0
        } else {
            at % (chars.len() + 1)
        };
        match kind {
            0 if i < chars.len() => {
                chars.remove(i);
            }
            1 if i < chars.len() => chars[i] = c,
            _ => chars.insert(i, c),
        }
    }
    chars.into_iter().collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_expressions_parse_alike(e in expr()) {
        if let Err(why) = agree(&e) {
            prop_assert!(false, "{}", why);
        }
    }

    #[test]
    fn edited_expressions_parse_alike(e in expr(), edits in prop::collection::vec(edit(), 1..4)) {
        let text = apply(&e, &edits);
        if let Err(why) = agree(&text) {
            prop_assert!(false, "{}", why);
        }
    }
}
