//! Limits checked before and after the `cel` parser runs: text length, bracket and unary
//! nesting, AST depth.

use cel::common::ast::Expr as Ast;
use cel::IdedExpr;

use super::*;

/// The longest expression accepted, in characters.
pub(crate) const MAX_EXPR_CHARS: usize = 4096;
/// The deepest bracket nesting accepted before parsing (the `cel` parser recurses per level).
pub(crate) const MAX_BRACKET_DEPTH: usize = 24;
/// The deepest AST accepted after parsing (evaluation recurses per level).
pub(crate) const MAX_AST_DEPTH: usize = 48;
pub(super) const MAX_UNARY_RUN: usize = 8;

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
///
/// Returns whether the text avoids the few constructs on which the `cel` crate's Pratt parser
/// and its ANTLR parser disagree (found by `engine/tests/parser_parity.rs`): a `0X` hex prefix
/// (only `0x` is CEL; the Pratt parser takes both), a quote right after an identifier other
/// than a string prefix (the Pratt parser reads `rb"…"` as raw bytes, the grammar as the
/// identifier `rb` and a string) and a run of unary operators holding a `-`
/// (`!-x`, `-!x`, `- -3`: the ANTLR grammar takes a run of `!` or of `-` only, and folds a
/// negated literal differently). Such text is parsed with the ANTLR parser alone.
pub(super) fn precheck(text: &str) -> Result<bool, ExprProblem> {
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
    let mut unary_minus = false;
    let mut pratt_safe = true;
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
            if matches!(chars.get(i), Some('"' | '\'')) {
                pratt_safe = false;
            }
            unary = 0;
            continue;
        }
        if c.is_ascii_digit() {
            if c == '0' && chars.get(i + 1) == Some(&'X') {
                pratt_safe = false;
            }
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
                if unary == 0 {
                    unary_minus = false;
                }
                unary += 1;
                unary_minus |= c == '-';
                if unary > 1 && unary_minus {
                    pratt_safe = false;
                }
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
    Ok(pratt_safe)
}

/// If a string or bytes literal starts at `i`: the index of its first quote and whether it is
/// raw. The grammar's prefixes are `r`/`R` (raw), `b`/`B` (bytes) and `b` then `r` (raw
/// bytes); `rb"…"` is the identifier `rb` followed by a plain string. A prefix letter counts
/// only at the start of a token (`xr"…"` is the identifier `xr` and a plain string); callers
/// skip identifiers and numbers whole, so `i` is a token start.
pub(super) fn string_start(chars: &[char], i: usize) -> Option<(usize, bool)> {
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
pub(super) fn skip_string(chars: &[char], q: usize, raw: bool) -> Option<usize> {
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
pub(super) fn escape_len(chars: &[char], i: usize) -> Option<usize> {
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
pub(super) fn skip_number(chars: &[char], mut i: usize) -> usize {
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
pub(super) fn ast_depth(e: &IdedExpr) -> usize {
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

pub(super) fn strip_syntax_prefix(msg: &str) -> &str {
    msg.strip_prefix("Syntax error: ").unwrap_or(msg)
}

/// Converts the `cel` parser's 1-based (line, column) to a character offset.
pub(super) fn line_col_to_offset(text: &str, line: isize, col: isize) -> usize {
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
    fn the_constructs_the_two_parsers_disagree_on_leave_the_fast_parser_out() {
        for text in [
            "0XaB == 1",
            "!-x",
            "-!x",
            "! -2.5",
            "a - -3",
            "!(-1 < x)",
            "rb'x'",
            "x == Rb\"y\"",
        ] {
            assert_eq!(precheck(text).ok(), Some(false), "{text:?}");
        }
        for text in [
            "0xaB == 1 && !has(event.a) && -1 < x && !!y",
            "x - 3 > -1 || b'\\xff' == br'x' || r\"a\" == R'b'",
            "'0X' == \"!-\" // 0X !- rb'\n&& true",
        ] {
            assert_eq!(precheck(text).ok(), Some(true), "{text:?}");
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
