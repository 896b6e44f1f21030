//! Load-time validation: every problem in a policy set is reported with its file, line and
//! column, and a set with any problem is never built.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use keel_engine::{
    is_policy_file, Action, Diagnostic, Engine, Kind, LoadError, MAX_POLICY_DEPTH,
    MAX_POLICY_FILE_BYTES,
};

/// Loads one in-memory source named `p.yaml` and expects it to fail.
fn load_err(src: &str) -> LoadError {
    match Engine::builder().add_source("p.yaml", src).build() {
        Ok(e) => panic!("expected a load error, got {e:?}"),
        Err(e) => e,
    }
}

/// Expects exactly one diagnostic and returns it.
fn only(src: &str) -> Diagnostic {
    let err = load_err(src);
    let d = err.diagnostics();
    assert_eq!(d.len(), 1, "expected exactly one diagnostic, got:\n{err}");
    d[0].clone()
}

/// Asserts a diagnostic's position and that its message contains `msg`.
#[track_caller]
fn assert_diag(d: &Diagnostic, line: usize, column: usize, msg: &str) {
    assert_eq!(
        (d.line(), d.column()),
        (line, column),
        "wrong position for {:?}",
        d.message()
    );
    assert!(
        d.message().contains(msg),
        "message {:?} does not contain {msg:?}",
        d.message()
    );
}

/// The 1-based column of `needle` on 1-based line `line` of `src`.
fn col_of(src: &str, line: usize, needle: &str) -> usize {
    let l = src.lines().nth(line - 1).unwrap();
    l[..l.find(needle).unwrap()].chars().count() + 1
}

/// A fresh, empty directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "keel-load-test-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn write(&self, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let p = self.0.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const VALID: &str = r#"
version: 1
policies:
  - name: windows-agent
    on: [operation_failure]
    when: event.failure.category == "vm_agent" && event.resource.os == "windows"
    action: retry_without_agent
    priority: 100
  - name: details-scan
    on: [operation_failure]
    when: event.failure.details.exists(d, d.code == "X")
    action: escalate
  - name: ack-everything
    on: [maintenance, health]
    action: acknowledge
"#;

// ---------------------------------------------------------------------------------------
// YAML and CEL syntax
// ---------------------------------------------------------------------------------------

#[test]
fn yaml_syntax_error_has_position() {
    let src = "policies:\n  - name: a\n    on: [maintenance\n    action: none\n";
    let d = only(src);
    // The stray `:` after `action` inside the unclosed flow sequence.
    assert_diag(&d, 4, 11, "YAML syntax error");
    assert_eq!(d.file(), Path::new("p.yaml"));
}

#[test]
fn yaml_bad_indentation_has_position() {
    let d = only("policies:\n  - name: a\n   on: x\n");
    assert_diag(&d, 3, 4, "YAML syntax error");
}

#[test]
fn cel_syntax_error_in_single_line_when() {
    let src = "policies:\n  - name: a\n    on: [maintenance]\n    when: 'event.maintenance.type == \"reboot\" &&& true'\n    action: none\n";
    let d = only(src);
    // `&&&`: the lexer rejects the third `&`.
    let col = col_of(src, 4, "&&&") + 2;
    assert_diag(&d, 4, col, "CEL syntax error");
    assert_eq!(col, 49);
}

/// Positions count characters, not bytes: text before the expression, and inside it, that is
/// not ASCII moves no diagnostic.
#[test]
fn positions_after_non_ascii_text_count_characters() {
    let src = "policies:\n  - name: a\n    description: Redémarrage de l’hôte — planifié\n    on: [maintenance]\n    when: 'event.resource.name == \"hôte—1\" && event.maintenance.typo == \"reboot\"'\n    action: none\n";
    let d = only(src);
    assert_diag(&d, 5, col_of(src, 5, "typo"), "typo");
}

#[test]
fn cel_syntax_error_at_end_of_expression() {
    let src = "policies:\n  - name: a\n    on: [maintenance]\n    when: event.maintenance.type ==\n    action: none\n";
    let d = only(src);
    // One past `==`, where the right operand is missing.
    assert_diag(&d, 4, col_of(src, 4, "==") + 2, "CEL syntax error");
}

#[test]
fn cel_syntax_error_in_folded_block_points_into_the_second_line() {
    let src = "policies:
  - name: a
    on: [operation_failure]
    when: >
      event.failure.category == \"vm_agent\"
      && event.resource.os == \"windows\" )
    action: none
";
    let d = only(src);
    assert_diag(&d, 6, col_of(src, 6, ")"), "CEL syntax error");
    assert_eq!(d.column(), 41);
    assert!(d.message().contains("')'"), "{}", d.message());
}

#[test]
fn unknown_field_in_folded_block_points_at_the_typo() {
    let src = "policies:
  - name: a
    on: [operation_failure]
    when: >
      event.failure.category == \"vm_agent\"
      && event.resource.oss == \"windows\"
    action: none
";
    let d = only(src);
    assert_diag(
        &d,
        6,
        col_of(src, 6, "oss"),
        "unknown field `oss` in `event.resource`",
    );
    assert_eq!(d.column(), 25);
    assert_eq!(d.help(), Some("did you mean `os`?"));
}

#[test]
fn unknown_field_position_in_literal_block_and_plain_multiline_and_quoted() {
    // Literal block (`|`), more-indented second line.
    let lit = "policies:
  - name: a
    on: [operation_failure]
    when: |
      event.failure.category == \"vm_agent\"
        && event.resource.oss == \"windows\"
    action: none
";
    assert_diag(&only(lit), 6, col_of(lit, 6, "oss"), "unknown field `oss`");

    // A plain scalar continued on the next line.
    let plain = "policies:
  - name: a
    on: [operation_failure]
    when: event.failure.category == \"vm_agent\"
      && event.resource.oss == \"windows\"
    action: none
";
    assert_diag(
        &only(plain),
        5,
        col_of(plain, 5, "oss"),
        "unknown field `oss`",
    );

    // A double-quoted scalar with escapes before the typo.
    let dq = "policies:
  - name: a
    on: [operation_failure]
    when: \"event.resource.os == \\\"windows\\\" && event.resource.oss == \\\"x\\\"\"
    action: none
";
    assert_diag(&only(dq), 4, col_of(dq, 4, "oss"), "unknown field `oss`");
}

#[test]
fn crlf_line_endings_keep_positions() {
    let src = "policies:\r\n  - name: a\r\n    on: [operation_failure]\r\n    when: >\r\n      event.failure.category == \"vm_agent\"\r\n      && event.resource.oss == \"windows\"\r\n    action: none\r\n";
    let d = only(src);
    assert_diag(&d, 6, 25, "unknown field `oss`");
}

// ---------------------------------------------------------------------------------------
// Event paths
// ---------------------------------------------------------------------------------------

#[test]
fn unknown_event_section_has_did_you_mean() {
    let src = "policies:\n  - name: a\n    on: [maintenance]\n    when: event.maintenence.type == \"reboot\"\n    action: none\n";
    let d = only(src);
    assert_diag(
        &d,
        4,
        col_of(src, 4, "maintenence"),
        "unknown field `maintenence` in `event`",
    );
    assert_eq!(d.help(), Some("did you mean `maintenance`?"));
}

#[test]
fn reading_event_raw_is_rejected() {
    let src = "policies:\n  - name: a\n    on: [maintenance]\n    when: event.raw.x == 1\n    action: none\n";
    let d = only(src);
    assert_diag(
        &d,
        4,
        col_of(src, 4, "raw"),
        "`event.raw` cannot be read by policies",
    );

    // Also inside has().
    let d = only(
        "policies:\n  - name: a\n    on: [maintenance]\n    when: has(event.raw)\n    action: none\n",
    );
    assert_eq!(d.line(), 4);
    assert!(d.message().contains("`event.raw` cannot be read"), "{d}");
}

#[test]
fn reading_failure_request_is_rejected() {
    let d = only("policies:\n  - name: a\n    on: [operation_failure]\n    when: event.failure.request.x == 1\n    action: none\n");
    assert!(
        d.message()
            .contains("`event.failure.request` cannot be read by policies"),
        "{d}"
    );
}

#[test]
fn field_below_a_scalar_or_tag_is_rejected() {
    let src = "policies:\n  - name: a\n    on: [operation_failure]\n    when: event.failure.code.x == \"a\"\n    action: none\n";
    let d = only(src);
    assert_diag(&d, 4, col_of(src, 4, "x =="), "has no field `x`");

    let src = "policies:\n  - name: a\n    on: [maintenance]\n    when: event.resource.tags.team.x == \"a\"\n    action: none\n";
    let d = only(src);
    assert_diag(
        &d,
        4,
        col_of(src, 4, "x =="),
        "`event.resource.tags.team` is a string",
    );
}

#[test]
fn unknown_variable_and_function_have_did_you_mean() {
    let src = "policies:\n  - name: a\n    on: [maintenance]\n    when: evnt.resource.name == \"x\"\n    action: none\n";
    let d = only(src);
    assert_diag(&d, 4, 11, "unknown variable `evnt`");
    assert_eq!(d.help(), Some("did you mean `event`?"));

    let d = only("policies:\n  - name: a\n    on: [maintenance]\n    when: event.resource.name.startWith(\"x\")\n    action: none\n");
    assert_eq!(d.line(), 4);
    assert!(d.message().contains("unknown function `startWith`"), "{d}");
    assert_eq!(d.help(), Some("did you mean `startsWith`?"));
}

#[test]
fn enum_literal_typo_is_rejected_with_help() {
    let src = "policies:\n  - name: a\n    on: [maintenance]\n    when: event.maintenance.type == \"reboo\"\n    action: none\n";
    let d = only(src);
    assert_diag(
        &d,
        4,
        col_of(src, 4, "\"reboo\""),
        "\"reboo\" is not a value of `event.maintenance.type`",
    );
    assert!(d.help().unwrap().contains("reboot"), "{:?}", d.help());

    // Also in `in` lists and on the left-hand side.
    let err = load_err("policies:\n  - name: a\n    on: [maintenance]\n    when: event.maintenance.type in [\"reboot\", \"fraeze\"] || \"redploy\" == event.maintenance.type\n    action: none\n");
    let msgs: Vec<&str> = err.diagnostics().iter().map(|d| d.message()).collect();
    assert_eq!(msgs.len(), 2, "{err}");
    assert!(msgs[0].contains("\"fraeze\""), "{msgs:?}");
    assert!(msgs[1].contains("\"redploy\""), "{msgs:?}");
}

#[test]
fn type_mismatch_is_rejected() {
    let src = "policies:\n  - name: a\n    on: [operation_failure]\n    when: event.failure.attempt == \"2\"\n    action: none\n";
    let d = only(src);
    assert_diag(
        &d,
        4,
        col_of(src, 4, "=="),
        "type mismatch: a int is never equal to a string",
    );

    let d = only("policies:\n  - name: a\n    on: [maintenance]\n    when: event.maintenance.not_before < 5\n    action: none\n");
    assert!(d.message().contains("cannot be ordered against"), "{d}");
}

#[test]
fn when_must_be_a_bool() {
    let src = "policies:\n  - name: a\n    on: [maintenance]\n    when: event.resource.name\n    action: none\n";
    let d = only(src);
    assert_diag(&d, 4, 11, "`when` must be a bool");
}

// ---------------------------------------------------------------------------------------
// Policy shape
// ---------------------------------------------------------------------------------------

#[test]
fn unknown_policy_key_has_did_you_mean() {
    let d =
        only("policies:\n  - name: a\n    on: [maintenance]\n    whn: 'true'\n    action: none\n");
    assert_diag(&d, 4, 5, "unknown key `whn` in a policy");
    assert_eq!(d.help(), Some("did you mean `when`?"));
}

#[test]
fn unknown_top_level_key_is_rejected() {
    // The typo'd key, and the then missing `policies:` list.
    let err = load_err("polices:\n  - name: a\n");
    let d = err.diagnostics();
    assert_eq!(d.len(), 2, "{err}");
    assert_diag(&d[0], 1, 1, "unknown key `polices` in the policy file");
    assert_eq!(d[0].help(), Some("did you mean `policies`?"));
    assert!(d[1].message().contains("missing `policies:` list"), "{err}");
}

#[test]
fn duplicate_key_in_a_policy_is_rejected() {
    let d = only("policies:\n  - name: a\n    name: b\n    on: [maintenance]\n    action: none\n");
    assert_eq!((d.line(), d.column()), (3, 5));
    assert!(d.message().contains("duplicate"), "{d}");
}

#[test]
fn duplicate_policy_names_across_two_sources() {
    let a = "policies:\n  - name: shared\n    on: [maintenance]\n    action: none\n";
    let b = "policies:\n  - name: other\n    on: [health]\n    action: none\n  - name: shared\n    on: [health]\n    action: none\n";
    let err = Engine::builder()
        .add_source("a.yaml", a)
        .add_source("b.yaml", b)
        .build()
        .unwrap_err();
    let d = err.diagnostics();
    assert_eq!(d.len(), 1, "{err}");
    // The duplicate is reported where it is, naming the first definition too.
    assert_eq!(d[0].file(), Path::new("b.yaml"));
    assert_eq!((d[0].line(), d[0].column()), (5, 5));
    assert!(
        d[0].message().contains("duplicate policy name `shared`"),
        "{err}"
    );
    assert!(d[0].message().contains("a.yaml:2:5"), "{err}");
    let text = err.to_string();
    assert!(text.contains("b.yaml:5:5"), "{text}");
    assert!(text.contains("a.yaml:2:5"), "{text}");
}

#[test]
fn unknown_action_has_did_you_mean() {
    let d = only("policies:\n  - name: a\n    on: [maintenance]\n    action: dran\n");
    assert_diag(&d, 4, 13, "unknown action `dran`");
    assert_eq!(d.help(), Some("did you mean `drain`?"));
}

#[test]
fn escalate_cannot_be_the_default_action() {
    let err = Engine::builder()
        .add_source(
            "p.yaml",
            "policies:\n  - name: a\n    on: [maintenance]\n    action: none\n",
        )
        .default_action(Action::Escalate)
        .build()
        .unwrap_err();
    assert_eq!(err.diagnostics().len(), 1);
    assert!(err.diagnostics()[0]
        .message()
        .contains("the default action cannot be `escalate`"));
}

#[test]
fn unknown_on_kind_has_did_you_mean() {
    let d = only("policies:\n  - name: a\n    on: [maintenence]\n    action: none\n");
    assert_diag(&d, 3, 10, "unknown event kind `maintenence` in `on`");
    assert_eq!(d.help(), Some("did you mean `maintenance`?"));

    let d = only("policies:\n  - name: a\n    on: []\n    action: none\n");
    assert_diag(&d, 3, 9, "`on` must list at least one event kind");
}

#[test]
fn missing_on_is_rejected() {
    let d = only("policies:\n  - name: a\n    action: none\n");
    assert_diag(&d, 2, 5, "policy without `on`");
    assert!(d.help().unwrap().contains("on: [maintenance]"));
}

#[test]
fn missing_name_and_action_are_rejected() {
    let err = load_err("policies:\n  - on: [maintenance]\n");
    let msgs: Vec<&str> = err.diagnostics().iter().map(|d| d.message()).collect();
    assert_eq!(msgs.len(), 2, "{err}");
    assert!(msgs.iter().any(|m| m.contains("policy without `name`")));
    assert!(msgs.iter().any(|m| m.contains("policy without `action`")));
}

#[test]
fn bad_policy_name_is_rejected() {
    let d = only("policies:\n  - name: 'has space'\n    on: [maintenance]\n    action: none\n");
    assert_diag(&d, 2, 11, "a policy `name` is 1 to 128 characters");
}

#[test]
fn reason_expr_must_be_a_string() {
    let src =
        "policies:\n  - name: a\n    on: [maintenance]\n    action: none\n    reason_expr: 1 + 2\n";
    let d = only(src);
    assert_diag(
        &d,
        5,
        18,
        "`reason_expr` must be a string, but this expression is a int",
    );

    let d = only("policies:\n  - name: a\n    on: [maintenance]\n    action: none\n    reason: x\n    reason_expr: '\"y\"'\n");
    assert!(d.message().contains("not both"), "{d}");
}

#[test]
fn params_not_allowed_for_the_action_are_rejected() {
    let src = "policies:\n  - name: a\n    on: [operation_failure]\n    action: retry\n    params: { deadline_s: 10 }\n";
    let d = only(src);
    assert_diag(
        &d,
        5,
        col_of(src, 5, "deadline_s"),
        "unknown key `deadline_s` in `params` of a `retry` policy",
    );
    assert!(d.help().unwrap().contains("delay_s"), "{:?}", d.help());

    // And the other way round: retry's params on a drain.
    let d = only("policies:\n  - name: a\n    on: [maintenance]\n    action: drain\n    params:\n      max_attempts: 2\n");
    assert_diag(
        &d,
        6,
        7,
        "unknown key `max_attempts` in `params` of a `drain` policy",
    );
}

#[test]
fn bad_param_values_are_rejected() {
    let err = load_err(
        "policies:
  - name: a
    on: [operation_failure]
    action: retry
    params: { delay_s: -1, max_attempts: 0, backoff: linear }
  - name: b
    on: [maintenance]
    action: escalate
    params: { severity: urgent, dedup: { by: [resource.region], window: soon } }
",
    );
    let msgs: Vec<String> = err
        .diagnostics()
        .iter()
        .map(|d| format!("{}:{} {}", d.line(), d.column(), d.message()))
        .collect();
    assert_eq!(msgs.len(), 5, "{msgs:#?}");
    for want in [
        "`delay_s` must be at least 0",
        "`max_attempts` must be at least 1",
        "unknown backoff `linear`",
        "unknown severity `urgent`",
        "`dedup.window` must be a positive duration",
    ] {
        assert!(msgs.iter().any(|m| m.contains(want)), "{want}: {msgs:#?}");
    }

    // `dedup.by` paths are checked against the event schema.
    let src = "policies:\n  - name: a\n    on: [maintenance]\n    action: escalate\n    params: { dedup: { by: [resource.regon] } }\n";
    let d = only(src);
    assert_diag(
        &d,
        5,
        col_of(src, 5, "resource.regon"),
        "unknown event path `resource.regon` in `dedup.by`",
    );
    assert_eq!(d.help(), Some("did you mean `resource.region`?"));
}

/// Policy durations use `keel_engine::parse_duration`'s grammar at a second's resolution:
/// compound values and milliseconds that make whole seconds load; anything else is an error
/// at the value's position that names it.
#[test]
fn policy_durations_take_the_one_grammar_in_whole_seconds() {
    for (delay, window) in [("1m30s", "1h"), ("2000ms", "1d12h"), ("90", "5000ms")] {
        let src = format!(
            "policies:\n  - name: a\n    on: [maintenance]\n    action: defer\n    params: {{ delay: {delay} }}\n  - name: b\n    on: [maintenance]\n    action: escalate\n    params: {{ dedup: {{ window: {window} }} }}\n"
        );
        let built = Engine::builder().add_source("p.yaml", src.as_str()).build();
        assert!(built.is_ok(), "{delay} / {window}: {:?}", built.err());
    }
    for (value, why) in [
        ("1500ms", "`1500ms` is not a whole number of seconds"),
        ("0s", "must be a positive duration, not zero"),
        ("0", "must be a positive duration, not zero"),
        ("1m30", "`1m30`: `30` needs a unit"),
        (
            "30s1m",
            "`30s1m`: units go from the largest to the smallest",
        ),
        ("1.5h", "`1.5h`: fractions are not supported"),
        ("-5s", "`-5s` is negative"),
        ("''", "a duration cannot be empty"),
        (
            "9223372036854775808s",
            "`9223372036854775808s` is too large",
        ),
    ] {
        let src = format!(
            "policies:\n  - name: a\n    on: [maintenance]\n    action: defer\n    params: {{ delay: {value} }}\n"
        );
        let d = only(&src);
        assert_diag(&d, 5, col_of(&src, 5, value), why);
        assert!(
            d.message()
                .starts_with("`delay` must be a positive duration"),
            "{}",
            d.message()
        );
    }
}

#[test]
fn defer_needs_until_or_delay() {
    let d = only("policies:\n  - name: a\n    on: [maintenance]\n    action: defer\n");
    assert_diag(
        &d,
        2,
        5,
        "a `defer` policy needs `params.until` or `params.delay`",
    );

    let d = only("policies:\n  - name: a\n    on: [maintenance]\n    action: defer\n    params: { delay: 15m, until: 'now' }\n");
    assert!(d.message().contains("not both"), "{d}");

    let d = only("policies:\n  - name: a\n    on: [maintenance]\n    action: defer\n    params: { until: '1' }\n");
    assert!(
        d.message()
            .contains("`params.until` must be a timestamp, but this expression is a int"),
        "{d}"
    );
}

#[test]
fn newer_format_version_is_rejected() {
    let d = only("version: 2\npolicies:\n  - name: a\n    on: [maintenance]\n    action: none\n");
    assert_diag(
        &d,
        1,
        10,
        "policy format version 2 is newer than this Keel reads (1)",
    );

    let d = only("version: 0\npolicies: []\n");
    assert_diag(&d, 1, 10, "`version` must be at least 1");
}

#[test]
fn yaml_aliases_are_rejected() {
    let d = only("x: &a [maintenance]\npolicies:\n  - name: a\n    on: *a\n    action: none\n");
    assert_diag(&d, 4, 9, "YAML aliases (`*name`) are not allowed");
}

#[test]
fn nesting_deeper_than_the_limit_is_rejected() {
    assert_eq!(MAX_POLICY_DEPTH, 32);
    let mut src = String::from(
        "policies:\n  - name: a\n    on: [maintenance]\n    action: none\n    params:\n      vars: ",
    );
    src.push_str(&"[".repeat(40));
    src.push_str(&"]".repeat(40));
    src.push('\n');
    let d = only(&src);
    // Depth 33 is reached at the 29th `[` (file map, list, policy, params are 1 to 4).
    assert_diag(&d, 6, 13 + 28, "YAML nested deeper than 32 levels");

    // Exactly at the limit is fine.
    let mut ok = String::from(
        "policies:\n  - name: a\n    on: [maintenance]\n    action: none\n    params:\n      vars: { x: ",
    );
    ok.push_str(&"[".repeat(27));
    ok.push_str(&"]".repeat(27));
    ok.push_str(" }\n");
    let e = Engine::builder().add_source("p.yaml", ok).build().unwrap();
    assert_eq!(e.len(), 1);
}

#[test]
fn absurdly_deep_nesting_is_rejected_without_stack_overflow() {
    for (open, close) in [("[", "]"), ("{a: ", "}"), ("- ", "")] {
        let src = if open == "- " {
            // Block sequences nested by indentation.
            (0..2000)
                .map(|i| format!("{}- ", " ".repeat(i * 2)))
                .collect::<Vec<_>>()
                .join("\n")
        } else {
            format!("{}{}", open.repeat(100_000), close.repeat(100_000))
        };
        let err = load_err(&src);
        assert_eq!(err.diagnostics().len(), 1, "{err}");
        let d = &err.diagnostics()[0];
        assert!(
            d.message().contains("nested deeper than 32")
                || d.message().contains("recursion limit"),
            "{d}"
        );
    }
}

/// A policy directory's files are read only where they resolve inside it: a link to a file
/// elsewhere is an error (its content is never read or quoted); a link within it, as a
/// Kubernetes ConfigMap mounts every file, is read.
#[cfg(unix)]
#[test]
fn a_policy_file_linking_outside_its_directory_is_not_read() {
    let outside = TempDir::new("outside");
    let secret = outside.0.join("secret.yaml");
    std::fs::write(&secret, "root:$6$hash-that-must-not-be-shown\n").unwrap();
    let dir = TempDir::new("confined");
    // A ConfigMap's layout: `p.yaml -> ..data/p.yaml`, `..data -> ..2026_12_04`.
    std::fs::create_dir_all(dir.0.join("..2026_12_04")).unwrap();
    std::fs::write(
        dir.0.join("..2026_12_04/p.yaml"),
        "policies:\n  - name: a\n    on: [maintenance]\n    action: drain\n",
    )
    .unwrap();
    std::os::unix::fs::symlink("..2026_12_04", dir.0.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/p.yaml", dir.0.join("p.yaml")).unwrap();
    let e = Engine::builder().add_path(&dir.0).build().unwrap();
    assert_eq!(e.policies().count(), 1);
    std::os::unix::fs::symlink(&secret, dir.0.join("x.yaml")).unwrap();
    let err = Engine::builder().add_path(&dir.0).build().unwrap_err();
    let text = err.to_string();
    assert!(text.contains("x.yaml"), "{text}");
    assert!(text.contains("a symbolic link to a file outside"), "{text}");
    assert!(!text.contains("hash-that-must-not-be-shown"), "{text}");
}

/// Only regular files are read, and no more of them than the limit: a FIFO named like a
/// policy file would block the load (a reload: the host), `/dev/zero` would never end (and a
/// link to it leaves the directory, which is refused first).
#[cfg(unix)]
#[test]
fn a_policy_file_that_is_not_a_regular_file_is_an_error_not_a_hang() {
    let dir = TempDir::new("special");
    std::fs::write(dir.0.join("ok.yaml"), "policies: []\n").unwrap();
    std::os::unix::fs::symlink("/dev/zero", dir.0.join("zero.yaml")).unwrap();
    let fifo = dir.0.join("fifo.yaml");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .is_ok_and(|s| s.success());
    let err = Engine::builder().add_path(&dir.0).build().unwrap_err();
    let text = err.to_string();
    // The link to `/dev/zero` leaves the directory: refused as such, before any read.
    assert!(text.contains("zero.yaml"), "{text}");
    assert!(text.contains("a symbolic link to a file outside"), "{text}");
    if made {
        assert!(text.contains("fifo.yaml"), "{text}");
        assert!(text.contains("not a regular file"), "{text}");
    }
    // A regular file past the limit is read only to one byte past it.
    let big = dir.0.join("big.yaml");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(1 << 40).unwrap();
    std::fs::remove_file(dir.0.join("zero.yaml")).unwrap();
    if made {
        std::fs::remove_file(&fifo).unwrap();
    }
    let err = Engine::builder().add_path(&dir.0).build().unwrap_err();
    assert!(err.to_string().contains("big.yaml"), "{err}");
    assert!(err.to_string().contains("too large"), "{err}");
}

#[test]
fn oversized_source_is_rejected() {
    let mut src = String::from("policies: []\n");
    src.push_str(&"#".repeat(MAX_POLICY_FILE_BYTES + 1 - src.len()));
    assert_eq!(src.len(), MAX_POLICY_FILE_BYTES + 1);
    let d = only(&src);
    assert_eq!((d.line(), d.column()), (0, 0));
    assert!(
        d.message().contains("the limit is 8388608 bytes (8 MiB)"),
        "{d}"
    );
}

#[test]
fn non_utf8_file_is_reported_with_a_line() {
    let dir = TempDir::new("utf8");
    let mut bytes = b"policies:\n  - name: a\n    on: [maint".to_vec();
    bytes.extend_from_slice(&[0xff, 0xfe]);
    bytes.extend_from_slice(b"enance]\n    action: none\n");
    let file = dir.write("bad.yaml", &bytes);
    let err = Engine::builder().add_path(dir.path()).build().unwrap_err();
    let d = err.diagnostics();
    assert_eq!(d.len(), 1, "{err}");
    assert_eq!(d[0].file(), file.as_path());
    assert_diag(&d[0], 3, 15, "not valid UTF-8");
}

#[test]
fn empty_and_missing_directories_are_errors() {
    let dir = TempDir::new("empty");
    let err = Engine::from_dir(dir.path()).unwrap_err();
    assert_eq!(err.diagnostics().len(), 1, "{err}");
    assert!(err.diagnostics()[0].message().contains("no policy files"));
    assert_eq!(err.diagnostics()[0].file(), dir.path());

    let missing = dir.path().join("does-not-exist");
    let err = Engine::from_dir(&missing).unwrap_err();
    assert_eq!(err.diagnostics().len(), 1, "{err}");
    assert!(
        err.diagnostics()[0]
            .message()
            .contains("cannot read policy path"),
        "{err}"
    );
    assert_eq!(err.diagnostics()[0].file(), missing.as_path());

    // A builder with no inputs at all.
    let err = Engine::builder().build().unwrap_err();
    assert!(err.diagnostics()[0].message().contains("no policies given"));
}

#[test]
fn empty_and_non_map_files_are_rejected() {
    let d = only("");
    assert_diag(&d, 0, 0, "empty policy file");
    let d = only("~\n");
    assert_diag(&d, 1, 1, "must be a map, found null");
    let d = only("policies: 3\n");
    assert_diag(&d, 1, 11, "`policies` must be a list, found an integer");
    let d = only("version: 1\n");
    assert!(d.message().contains("missing `policies:` list"), "{d}");
    let d = only("policies: []\n---\npolicies: []\n");
    assert!(d.message().contains("one YAML document"), "{d}");
}

#[test]
#[cfg(not(feature = "plugins"))]
fn plugins_are_rejected_in_this_build() {
    let d = only("policies:\n  - name: a\n    on: [maintenance]\n    plugin: x.wasm\n");
    assert_diag(
        &d,
        4,
        13,
        "Wasm plugin policies need the engine's `plugins` feature",
    );
}

// ---------------------------------------------------------------------------------------
// Whole sets
// ---------------------------------------------------------------------------------------

#[test]
fn every_problem_in_a_set_is_reported_and_nothing_is_built() {
    let one = "policies:
  - name: fine
    on: [maintenance]
    action: acknowledge
  - name: a
    on: [maintenence]
    action: dran
  - name: b
    on: [maintenance]
    whn: 'true'
    action: none
  - name: c
    on: [maintenance]
    when: event.maintenance.type == \"reboo\"
    action: none
";
    let two = "policies:
  - name: d
    on: [operation_failure]
    action: retry
    params: { deadline_s: 5 }
  - name: e
    on: [operation_failure]
    when: event.failure.attempt == \"2\"
    action: none
";
    let err = Engine::builder()
        .add_source("one.yaml", one)
        .add_source("two.yaml", two)
        .build()
        .unwrap_err();
    let got: Vec<(String, usize, usize)> = err
        .diagnostics()
        .iter()
        .map(|d| (d.file().display().to_string(), d.line(), d.column()))
        .collect();
    let want: Vec<(String, usize, usize)> = [
        ("one.yaml", 6, 10),  // maintenence
        ("one.yaml", 7, 13),  // dran
        ("one.yaml", 10, 5),  // whn
        ("one.yaml", 14, 37), // "reboo"
        ("two.yaml", 5, 15),  // deadline_s
        ("two.yaml", 8, 33),  // == "2"
    ]
    .iter()
    .map(|(f, l, c)| (f.to_string(), *l, *c))
    .collect();
    assert_eq!(got, want, "{err}");
    // A single policy with several independent expression problems reports each of them.
    let err = load_err(
        "policies:
  - name: e
    on: [operation_failure]
    when: event.failure.attempt == \"2\" && event.resource.oss == \"x\"
    reason_expr: '1'
    action: none
",
    );
    let got: Vec<(usize, usize, &str)> = err
        .diagnostics()
        .iter()
        .map(|d| (d.line(), d.column(), d.message()))
        .collect();
    assert_eq!(got.len(), 3, "{err}");
    assert_eq!((got[0].0, got[0].1), (4, 33));
    assert!(got[0].2.contains("type mismatch"), "{err}");
    assert_eq!((got[1].0, got[1].1), (4, 58));
    assert!(got[1].2.contains("unknown field `oss`"), "{err}");
    assert_eq!((got[2].0, got[2].1), (5, 19));
    assert!(got[2].2.contains("`reason_expr` must be a string"), "{err}");
}

#[test]
fn test_yaml_files_are_skipped_by_directory_loading() {
    assert!(is_policy_file("a.yaml"));
    assert!(is_policy_file("a.yml"));
    assert!(!is_policy_file("a.test.yaml"));
    assert!(!is_policy_file("a.test.yml"));
    assert!(!is_policy_file("a.json"));

    let dir = TempDir::new("skip");
    dir.write(
        "azure/good.yaml",
        "policies:\n  - name: good\n    on: [maintenance]\n    action: acknowledge\n",
    );
    // Would fail to load if it were read.
    dir.write("azure/good.test.yaml", "this: [is not a policy file\n");
    dir.write("other.test.yml", "\u{0}garbage");
    dir.write("notes.txt", "not yaml at all: [");
    dir.write(".hidden.yaml", "policies: 3\n");
    let e = Engine::from_dir(dir.path()).unwrap();
    let names: Vec<String> = e.policies().map(|p| p.name).collect();
    assert_eq!(names, ["good"]);

    // A directory holding only test files has no policy files.
    let only_tests = TempDir::new("only-tests");
    only_tests.write("x.test.yaml", "policies: []\n");
    let err = Engine::from_dir(only_tests.path()).unwrap_err();
    assert!(err.diagnostics()[0].message().contains("no policy files"));

    // A test file named explicitly is read like any file.
    let explicit = only_tests.path().join("x.test.yaml");
    let e = Engine::builder().add_path(&explicit).build().unwrap();
    assert!(e.is_empty());
}

#[test]
fn directory_errors_name_the_file() {
    let dir = TempDir::new("named");
    dir.write(
        "a.yaml",
        "policies:\n  - name: a\n    on: [maintenance]\n    action: none\n",
    );
    let bad = dir.write(
        "sub/b.yml",
        "policies:\n  - name: b\n    on: [maintenance]\n    action: nope\n",
    );
    let err = Engine::from_dir(dir.path()).unwrap_err();
    assert_eq!(err.diagnostics().len(), 1, "{err}");
    assert_eq!(err.diagnostics()[0].file(), bad.as_path());
    assert_eq!(err.diagnostics()[0].line(), 4);
}

#[test]
fn valid_set_loads_and_reports_native_lowering() {
    let e = Engine::builder()
        .add_source("v.yaml", VALID)
        .build()
        .unwrap();
    assert_eq!(e.len(), 3);
    assert!(!e.is_empty());
    assert_eq!(e.digest().len(), 64);
    let infos: Vec<_> = e.policies().collect();
    // Rank order: priority desc, then severity, then name.
    let names: Vec<&str> = infos.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["windows-agent", "ack-everything", "details-scan"]);

    let agent = &infos[0];
    assert!(agent.native, "a simple conjunction runs natively");
    assert_eq!(agent.action, Action::RetryWithoutAgent);
    assert_eq!(agent.priority, 100);
    assert_eq!(agent.on, [Kind::OperationFailure]);
    assert_eq!(agent.file, PathBuf::from("v.yaml"));
    assert_eq!(agent.line, 4);

    let details = infos.iter().find(|p| p.name == "details-scan").unwrap();
    assert!(details.native, "exists() over the details runs natively");
    assert_eq!(details.action, Action::Escalate);

    let ack = infos.iter().find(|p| p.name == "ack-everything").unwrap();
    assert!(ack.native, "a policy without `when` counts as native");
    assert_eq!(ack.on, [Kind::Maintenance, Kind::Health]);

    // The same text gives the same digest; a change gives another.
    let again = Engine::builder()
        .add_source("v.yaml", VALID)
        .build()
        .unwrap();
    assert_eq!(again.digest(), e.digest());
    let changed = Engine::builder()
        .add_source("v.yaml", VALID.replace("100", "101"))
        .build()
        .unwrap();
    assert_ne!(changed.digest(), e.digest());
}

#[test]
fn native_flag_for_various_shapes() {
    let cases = [
        ("event.resource.os == \"windows\"", true),
        (
            "has(event.resource.os) && event.resource.os.startsWith(\"win\")",
            true,
        ),
        (
            "event.failure.attempt < 3 || event.failure.code in [\"A\", \"B\"]",
            true,
        ),
        ("now - event.time > duration(\"1h\")", true),
        (
            "\"team\" in event.resource.tags && event.resource.tags.team == \"x\"",
            true,
        ),
        ("event.failure.details.exists(d, d.code == \"X\")", true),
        (
            "event.failure.details.all(d, has(d.target) && d.target.endsWith(\"/agent\"))",
            true,
        ),
        ("event.failure.details.exists(d, size(d.code) > 1)", false),
        (
            "event.failure.details.map(d, d.code).exists(c, c == \"X\")",
            false,
        ),
        ("event.failure.code.matches(\"^Artifact\")", true),
        ("event.failure.code.matches(event.resource.os)", false),
        ("size(event.failure.details) > 0", false),
    ];
    let mut src = String::from("policies:\n");
    for (i, (when, _)) in cases.iter().enumerate() {
        src.push_str(&format!(
            "  - name: p{i}\n    on: [operation_failure]\n    when: '{when}'\n    action: none\n"
        ));
    }
    let e = Engine::builder().add_source("n.yaml", src).build().unwrap();
    for (i, (when, native)) in cases.iter().enumerate() {
        let info = e.policies().find(|p| p.name == format!("p{i}")).unwrap();
        assert_eq!(info.native, *native, "{when}");
    }
}

#[test]
fn standard_policies_load() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/standard");
    let e = Engine::from_dir(&dir).unwrap();
    assert!(e.len() >= 2);
    // The standard library is written so that every policy runs natively.
    let interpreted: Vec<String> = e.policies().filter(|p| !p.native).map(|p| p.name).collect();
    assert!(interpreted.is_empty(), "{interpreted:?}");
}

/// A tree held in memory loads like the same tree on disk: the same policies, the same digest
/// wherever the copy lives, its files named `root/<path>` in diagnostics, test files and other
/// files left out.
#[test]
fn a_tree_in_memory_has_the_digest_of_its_copy_on_disk() {
    let files = [
        (
            "b/two.yaml",
            VALID
                .replace("windows-agent", "windows-agent-2")
                .replace("ack-everything", "ack-2")
                .replace("details-scan", "scan-2"),
        ),
        ("a.yaml", VALID.to_string()),
        ("a.test.yaml", "cases: []\n".to_string()),
        ("fixtures/x.json", "{}".to_string()),
        (".hidden/c.yaml", "not: [valid".to_string()),
    ];
    let mem = Engine::builder()
        .add_tree("<mem>", files.iter().map(|(p, t)| (*p, t.clone())))
        .build()
        .unwrap();
    assert_eq!(mem.len(), 6);
    let mut digests = Vec::new();
    for _ in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        for (p, t) in &files {
            let path = dir.path().join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, t).unwrap();
        }
        let disk = Engine::from_dir(dir.path()).unwrap();
        digests.push(disk.digest().to_string());
    }
    assert_eq!(digests[0], mem.digest());
    assert_eq!(digests[1], mem.digest());
    let bad = Engine::builder()
        .add_tree("<mem>", [("x/bad.yaml", "policies: [{name: 1}]\n")])
        .build()
        .unwrap_err();
    assert!(bad
        .diagnostics()
        .iter()
        .all(|d| d.file() == Path::new("<mem>/x/bad.yaml")));
}

/// A policy file loaded on its own is named by its file name in the digest: the same file in
/// two directories has one digest, and a renamed copy another (the name is part of the set).
#[test]
fn a_single_file_s_digest_names_it_by_its_file_name() {
    let digest_of = |dir: &str, name: &str| {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join(dir);
        std::fs::create_dir_all(&d).unwrap();
        let f = d.join(name);
        std::fs::write(&f, VALID).unwrap();
        Engine::from_dir(&f).unwrap().digest().to_string()
    };
    assert_eq!(digest_of("x", "a.yaml"), digest_of("y/z", "a.yaml"));
    assert_ne!(digest_of("x", "a.yaml"), digest_of("x", "b.yaml"));
}

#[test]
fn an_invalid_regular_expression_is_refused_at_load_with_its_position() {
    let src = "policies:\n  - name: a\n    on: [maintenance]\n    when: event.resource.name.matches(\"web-(\")\n    action: none\n";
    let d = only(src);
    assert_diag(
        &d,
        4,
        col_of(src, 4, "\"web-(\""),
        "invalid regular expression",
    );
    assert!(!d.message().contains('\n'), "{d}");
    // The function form too.
    let d = only("policies:\n  - name: a\n    on: [maintenance]\n    when: matches(event.resource.name, \"[\")\n    action: none\n");
    assert!(d.message().contains("invalid regular expression"), "{d}");
}

/// A set large enough to be compiled on several threads reports every problem, at its
/// position, and loads the same policies as one compiled in place.
#[test]
fn a_large_set_compiled_in_parallel_reports_every_problem_in_order() {
    let mut src = String::from("policies:\n");
    let bad = [3usize, 70, 149];
    for i in 0..150 {
        let when = if bad.contains(&i) {
            "event.resource.regoin == \"x\"".to_string()
        } else {
            format!("event.resource.name == \"vm-{i}\"")
        };
        src.push_str(&format!(
            "  - name: p{i}\n    on: [maintenance]\n    when: '{when}'\n    action: drain\n"
        ));
    }
    let err = load_err(&src);
    let lines: Vec<usize> = err.diagnostics().iter().map(|d| d.line()).collect();
    assert_eq!(
        lines,
        bad.iter().map(|i| 4 + 4 * i).collect::<Vec<_>>(),
        "{err}"
    );
    for d in err.diagnostics() {
        assert!(d.message().contains("regoin"), "{d}");
    }
    let good = src.replace("regoin", "region");
    let e = Engine::builder()
        .add_source("p.yaml", good)
        .build()
        .unwrap();
    let names: Vec<String> = e.policies().map(|p| p.name).collect();
    assert_eq!(names.len(), 150);
    assert!(e.policies().all(|p| p.native));
}

// ------------------------------------------------------------------------------------------
// Warnings: what loading notices without refusing the set.

/// A policy reading `event.failure` under `on: [maintenance]` is almost surely a policy
/// written for another kind: the read is always absent there. Warned at the read, once per
/// path; a policy on every kind, or on the section's kind, is not.
#[test]
fn a_read_of_a_section_the_policys_kinds_never_have_is_a_warning_at_the_read() {
    let src = "policies:\n  - name: wrong-kind\n    on: [maintenance, health]\n    when: >\n      event.failure.category == \"vm_agent\" && has(event.failure.code)\n      && event.failure.category != \"quota\"\n    action: drain\n    reason_expr: '\"down \" + event.health.state'\n  - name: right-kind\n    on: [operation_failure]\n    when: event.failure.category == \"vm_agent\"\n    action: retry\n  - name: every-kind\n    on: [maintenance, health, operation_failure]\n    when: has(event.maintenance) && event.maintenance.type == \"reboot\"\n    action: drain\n";
    let engine = Engine::builder().add_source("p.yaml", src).build().unwrap();
    let w = engine.warnings();
    assert_eq!(w.len(), 2, "{w:#?}");
    assert_diag(
        &w[0],
        5,
        col_of(src, 5, "failure"),
        "reads `event.failure.category`",
    );
    assert!(
        w[0].message()
            .contains("only `operation_failure` events have"),
        "{w:?}"
    );
    assert!(
        w[0].message().contains("`on: [maintenance, health]`"),
        "{w:?}"
    );
    assert!(w[0].message().contains("policy `wrong-kind`"), "{w:?}");
    assert_eq!(
        w[0].help(),
        Some("add `operation_failure` to `on:`, or read a field the policy's kinds have")
    );
    // has(event.failure.code): a different path, the same warning kind.
    assert_diag(
        &w[1],
        5,
        col_of(src, 5, "failure.code"),
        "`event.failure.code`",
    );
    // The reason expression reads event.health under `on: [maintenance, health]`: fine.
    assert_eq!(engine.len(), 3);
    // Under `on: [maintenance]` alone, the reason's `event.health.state` is warned too.
    let src = src.replace("on: [maintenance, health]", "on: [maintenance]");
    let engine = Engine::builder()
        .add_source("p.yaml", &src)
        .build()
        .unwrap();
    assert!(
        engine
            .warnings()
            .iter()
            .any(|d| d.line() == 8 && d.message().contains("`event.health.state`")),
        "{:#?}",
        engine.warnings()
    );
    // Each kind's section: `event.maintenance` under `on: [health]` too.
    let src = "policies:\n  - name: p\n    on: [health]\n    when: event.maintenance.type == \"reboot\"\n    action: drain\n";
    let engine = Engine::builder().add_source("p.yaml", src).build().unwrap();
    let w = engine.warnings();
    assert_eq!(w.len(), 1, "{w:#?}");
    assert_diag(
        &w[0],
        4,
        col_of(src, 4, "maintenance"),
        "only `maintenance` events have",
    );
    // A valid set without such reads has none.
    let clean = Engine::builder()
        .add_source("p.yaml", VALID)
        .build()
        .unwrap();
    assert!(clean.warnings().is_empty(), "{:#?}", clean.warnings());
}

/// A `keel.yaml` or a Kubernetes manifest kept beside the policies is skipped with a warning
/// instead of failing the whole set, and left out of the digest; a near miss of `policies:`
/// is still an error, and so is a directory with no policy file at all.
#[test]
fn yaml_that_is_not_a_policy_file_is_skipped_in_a_directory_with_a_warning() {
    let dir = TempDir::new("foreign");
    dir.write("a/p.yaml", VALID);
    dir.write(
        "a/keel.yaml",
        "sources:\n  azure_scheduled_events: {}\nstate: ./keel.db\n",
    );
    dir.write(
        "a/z/daemonset.yaml",
        "apiVersion: apps/v1\nkind: DaemonSet\n",
    );
    let engine = Engine::from_dir(dir.path().join("a")).unwrap();
    assert_eq!(engine.len(), 3);
    let w = engine.warnings();
    assert_eq!(w.len(), 2, "{w:#?}");
    assert!(w[0].file().ends_with("a/keel.yaml"), "{w:?}");
    assert!(w[1].file().ends_with("a/z/daemonset.yaml"), "{w:?}");
    assert!(w
        .iter()
        .all(|d| d.line() == 0 && d.message().contains("not a policy file")));
    // The skipped files are not part of the set's identity.
    let alone = TempDir::new("foreign-alone");
    alone.write("a/p.yaml", VALID);
    assert_eq!(
        engine.digest(),
        Engine::from_dir(alone.path().join("a")).unwrap().digest()
    );
    // A near miss of `policies:` is a mistake, not another kind of file.
    dir.write("a/typo.yaml", "polices:\n  - name: x\n");
    let err = Engine::from_dir(dir.path().join("a")).unwrap_err();
    assert!(
        err.diagnostics().iter().any(
            |d| d.file().ends_with("typo.yaml") && d.help() == Some("did you mean `policies`?")
        ),
        "{err}"
    );
    // Given by name, a file is meant to be a policy file.
    let err = Engine::from_dir(dir.path().join("a/keel.yaml")).unwrap_err();
    assert!(
        err.to_string().contains("missing `policies:` list"),
        "{err}"
    );
    // A directory where nothing is a policy file.
    let none = TempDir::new("foreign-only");
    none.write("keel.yaml", "sources: {}\n");
    none.write("k.yaml", "kind: Pod\n");
    let err = Engine::from_dir(none.path()).unwrap_err();
    assert_eq!(err.diagnostics().len(), 1, "{err}");
    assert!(
        err.to_string()
            .contains("the 2 YAML files here are not policy files"),
        "{err}"
    );
    none.write("only/keel.yaml", "sources: {}\n");
    let err = Engine::from_dir(none.path().join("only")).unwrap_err();
    assert!(
        err.to_string()
            .contains("the YAML file here is not a policy file"),
        "{err}"
    );
    // An empty map, a list or a scalar is not "plainly another file": still an error.
    for text in ["{}\n", "- a\n", "hello\n"] {
        let d = TempDir::new("foreign-odd");
        d.write("p.yaml", VALID);
        d.write("odd.yaml", text);
        assert!(Engine::from_dir(d.path()).is_err(), "{text:?} was skipped");
    }
    // A tree held in memory reads the same way.
    let engine = Engine::builder()
        .add_tree("<mem>", [("p.yaml", VALID), ("keel.yaml", "state: x\n")])
        .build()
        .unwrap();
    assert_eq!(engine.len(), 3);
    assert_eq!(engine.warnings().len(), 1);
    assert_eq!(
        engine.digest(),
        Engine::from_dir(alone.path().join("a")).unwrap().digest()
    );
}
