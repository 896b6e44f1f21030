//! Runs the built `keel` binary as a user would: `keel check --config`, `--format json`,
//! `keel eval --fail` and JSON lines on standard input, and missing paths (exit 2).
//! (host/tests/cli.rs holds the rest; split to keep files under 1000 lines.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Output;

mod run_keel;
use run_keel::{keel, keel_stdin, root, text};

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.to_string_lossy().into_owned()
}

fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn check_config_ok_names_the_file() {
    let out = keel(&["check", "--config", "host/examples/keel.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(s.starts_with("host/examples/keel.yaml: ok"), "{s}");
}

#[test]
fn check_config_needs_no_secrets_and_reports_positions() {
    let d = tempfile::tempdir().unwrap();
    let pol = root().join("policies/standard");
    // A token from an environment variable that is not set: `keel run` would refuse it,
    // `keel check` does not read it.
    let ok = format!(
        "policies: {}\nstate: state.db\nsources:\n  ingest:\n    token_env: KEEL_CHECK_TEST_UNSET_TOKEN\n",
        pol.display()
    );
    let cfg = write(d.path(), "keel.yaml", ok.as_bytes());
    let out = keel(&["check", "--config", &cfg]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("keel.yaml: ok"));
    // Nothing was started or written beside the configuration.
    let names: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("keel.yaml")]);

    let bad = write(
        d.path(),
        "bad.yaml",
        b"policies: /nonexistent/policies\nlisten: nowhere\n",
    );
    let out = keel(&["check", "--config", &bad]);
    assert_eq!(out.status.code(), Some(3));
    let err = text(&out.stderr);
    assert!(
        err.contains("bad.yaml:1:11: error: `/nonexistent/policies` does not exist"),
        "{err}"
    );
    assert!(
        err.contains("bad.yaml:2:9: error: expected an address"),
        "{err}"
    );
    assert!(err.contains("the configuration is invalid"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn check_config_loads_the_policy_set_it_names() {
    let d = tempfile::tempdir().unwrap();
    let bad = root().join("host/tests/data/bad-two-files");
    let cfg = write(
        d.path(),
        "keel.yaml",
        format!("policies: {}\n", bad.display()).as_bytes(),
    );
    let out = keel(&["check", "--config", &cfg]);
    assert_eq!(out.status.code(), Some(3));
    let err = text(&out.stderr);
    assert!(err.contains("a.yaml:6:16: error: unknown field"), "{err}");
}

#[test]
fn check_format_json_is_one_object_per_input() {
    let out = keel(&["check", "policies", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v = json_lines(&out);
    assert_eq!(v.len(), 1);
    assert_eq!(v[0]["path"], "policies");
    assert_eq!(v[0]["kind"], "policies");
    assert_eq!(v[0]["ok"], true);
    assert_eq!(v[0]["diagnostics"], serde_json::json!([]));

    let out = keel(&[
        "check",
        "host/tests/data/bad-two-files",
        "--config",
        "host/examples/keel.yaml",
        "--format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
    let v = json_lines(&out);
    assert_eq!(v.len(), 2);
    assert_eq!(v[0]["kind"], "config");
    assert_eq!(v[0]["ok"], true);
    assert_eq!(v[1]["kind"], "policies");
    assert_eq!(v[1]["ok"], false);
    let diags = v[1]["diagnostics"].as_array().unwrap();
    assert_eq!(diags.len(), 3);
    let first = &diags[0];
    assert_eq!(first["path"], "host/tests/data/bad-two-files/a.yaml");
    assert_eq!(first["line"], 6);
    assert_eq!(first["column"], 16);
    assert_eq!(first["message"], "unknown field `maintenence` in `event`");
    assert_eq!(first["help"], "did you mean `maintenance`?");
    // Every diagnostic has the five keys, null where there is nothing to say.
    for d in diags {
        let keys: Vec<&String> = d.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["column", "help", "line", "message", "path"], "{d}");
    }
}

#[test]
fn missing_paths_are_usage_errors_everywhere() {
    let cases: &[&[&str]] = &[
        &["check", "/nonexistent/keel"],
        &["check", "--config", "/nonexistent/keel.yaml"],
        &[
            "check",
            "--config",
            "/nonexistent/keel.yaml",
            "--format",
            "json",
        ],
        &[
            "eval",
            "--policies",
            "/nonexistent/keel",
            "--event",
            "x.json",
        ],
        &[
            "eval",
            "--policies",
            "policies",
            "--event",
            "/nonexistent/event.json",
        ],
        &[
            "eval",
            "--policies",
            "policies",
            "--event",
            "engine/tests/data/events/vm-agent-windows-2021-10-13.json",
            "--config",
            "/nonexistent/keel.yaml",
        ],
        &["test", "/nonexistent/keel"],
        &["run", "--config", "/nonexistent/keel.yaml"],
        &["demo", "--config", "/nonexistent/keel.yaml"],
        &["status", "--config", "/nonexistent/keel.yaml"],
        &[
            "pause",
            "all",
            "--reason",
            "x",
            "--config",
            "/nonexistent/keel.yaml",
        ],
        &["resume", "all", "--config", "/nonexistent/keel.yaml"],
        &["normalize", "--from", "azure.arm", "/nonexistent/doc.json"],
    ];
    for args in cases {
        let out = keel(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains("/nonexistent/"),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}

const WIN: &str = "engine/tests/data/events/vm-agent-windows-2021-10-13.json";
const NOW: &str = "2021-10-13T14:05:03Z";

/// The Windows 2021-10-13 event on one line.
fn win_line() -> String {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join(WIN)).unwrap()).unwrap();
    v.to_string()
}

#[test]
fn eval_fail_exits_1_when_a_policy_errors() {
    let d = tempfile::tempdir().unwrap();
    // `wrong-section` reads a section an operation failure lacks: an evaluation error.
    write(
        d.path(),
        "p.yaml",
        b"policies:\n  - name: wrong-section\n    on: [operation_failure]\n    when: event.maintenance.duration_s > 10\n    action: drain\n  - name: ok\n    on: [operation_failure]\n    when: \"!has(event.maintenance)\"\n    action: acknowledge\n",
    );
    let pol = d.path().to_str().unwrap();
    let base = ["eval", "--policies", pol, "--event", WIN, "--now", NOW];
    let out = keel(&base);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let with = |extra: &[&str]| keel(&[&base[..], extra].concat());
    let out = with(&["--fail"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    // The decision is printed all the same.
    let s = text(&out.stdout);
    assert!(s.contains("action:   acknowledge"), "{s}");
    assert!(
        s.contains("error:    wrong-section: No such key: maintenance"),
        "{s}"
    );
    assert!(
        text(&out.stderr).contains("--fail: 1 of 1 decision has errors"),
        "{}",
        text(&out.stderr)
    );
    let out = with(&["--fail", "--format", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let v = json_lines(&out);
    assert_eq!(v[0]["errors"][0]["policy"], "wrong-section");
    // A clean decision passes --fail.
    let out = keel(&[
        "eval",
        "--policies",
        "policies/standard",
        "--event",
        WIN,
        "--now",
        NOW,
        "--fail",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn normalize_pipes_into_eval_one_decision_per_event() {
    let doc = "policies/fixtures/azure-scheduled-events-freeze-live-migration-scheduled.json";
    let norm = keel(&[
        "normalize",
        "--from",
        "azure.scheduled_events",
        "--self",
        "WestNO_0",
        "--observed-at",
        NOW,
        doc,
    ]);
    assert_eq!(norm.status.code(), Some(0), "{}", text(&norm.stderr));
    assert_eq!(text(&norm.stdout).lines().count(), 2);
    let eval = |format: &str| {
        keel_stdin(
            &[
                "eval",
                "--policies",
                "policies/standard",
                "--event",
                "-",
                "--now",
                NOW,
                "--format",
                format,
            ],
            &norm.stdout,
        )
    };
    let out = eval("json");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v = json_lines(&out);
    let got: Vec<(&str, &str)> = v
        .iter()
        .map(|d| {
            (
                d["event_id"].as_str().unwrap(),
                d["action"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                "azure.scheduled_events:c7061bac-afdc-4513-b24b-aa5f13a16123/westno_0",
                "acknowledge"
            ),
            (
                "azure.scheduled_events:c7061bac-afdc-4513-b24b-aa5f13a16123/westno_1",
                "none"
            ),
        ]
    );
    let out = eval("text");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    let blocks: Vec<&str> = s.split("\n\n").collect();
    assert_eq!(blocks.len(), 2, "{s}");
    assert!(
        blocks[0].starts_with("event:    azure.scheduled_events:"),
        "{s}"
    );
    assert!(blocks[1].contains("westno_1\naction:   none"), "{s}");
}

#[test]
fn eval_reads_json_lines_from_a_file_and_names_the_bad_line() {
    let d = tempfile::tempdir().unwrap();
    let line = win_line();
    // Blank lines (and CRLF) are skipped; line 5 is cut short.
    let body = format!("\n{line}\r\n\n{line}\n{{\"id\":\n");
    let p = write(d.path(), "events.jsonl", body.as_bytes());
    let args = [
        "eval",
        "--policies",
        "policies/standard",
        "--event",
        &p,
        "--now",
        NOW,
        "--format",
        "json",
    ];
    let out = keel(&args);
    assert_eq!(out.status.code(), Some(2));
    // The events before the bad line are decided and printed.
    let v = json_lines(&out);
    assert_eq!(v.len(), 2);
    assert_eq!(v[0]["action"], "retry_without_agent");
    // The history holds the events and decisions before it, as in `keel run`: the same
    // failure again means the retry without the agent did not help.
    assert_eq!(v[1]["action"], "none");
    assert_eq!(
        v[1]["escalations"][0]["policy"],
        "azure.vm-agent-missing.retry-failed"
    );
    let err = text(&out.stderr);
    assert!(
        err.contains("events.jsonl:5:6: invalid event: EOF while parsing"),
        "{err}"
    );

    let p = write(
        d.path(),
        "unknown.jsonl",
        format!("{line}\n{{\"id\":\"x\",\"colour\":1}}\n").as_bytes(),
    );
    let out = keel(&[&args[..4], &[p.as_str()], &args[5..]].concat());
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("unknown.jsonl:2:") && err.contains("unknown field `colour`"),
        "{err}"
    );

    // A pretty-printed document is still one event, and an empty input is an error.
    let stdin_args = [&args[..4], &["-"], &args[5..]].concat();
    let out = keel_stdin(&stdin_args, &std::fs::read(root().join(WIN)).unwrap());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(json_lines(&out).len(), 1);
    let out = keel_stdin(&stdin_args, b"\n\n");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("<stdin>: invalid event"),
        "{}",
        text(&out.stderr)
    );
}

/// Warnings do not fail `keel check`: printed as `file:line:col: warning:` with the source
/// line (text, on stderr) or under `warnings` (JSON), and counted in the summary.
#[test]
fn check_prints_warnings_and_still_passes() {
    let dir = std::env::temp_dir().join(format!("keel-check-warn-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    write(
        &dir,
        "p.yaml",
        b"policies:\n  - name: drain-on-agent\n    on: [maintenance]\n    when: event.failure.category == \"vm_agent\"\n    action: drain\n",
    );
    write(&dir, "keel.yaml", b"state: ./keel.db\n");
    let d = dir.to_string_lossy().into_owned();
    let out = keel(&["check", &d]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "{d}/p.yaml:4:17: warning: policy `drain-on-agent` reads `event.failure.category`"
        )),
        "{err}"
    );
    assert!(
        err.contains("4 |     when: event.failure.category"),
        "{err}"
    );
    assert!(
        err.contains(&format!("{d}/keel.yaml: warning: not a policy file")),
        "{err}"
    );
    assert!(
        text(&out.stdout).contains("(2 warnings)"),
        "{}",
        text(&out.stdout)
    );
    let out = keel(&["check", &d, "--format", "json"]);
    assert_eq!(out.status.code(), Some(0));
    let v = json_lines(&out);
    assert_eq!(v[0]["ok"], true);
    assert_eq!(v[0]["diagnostics"], serde_json::json!([]));
    let w = v[0]["warnings"].as_array().unwrap();
    assert_eq!(w.len(), 2, "{w:?}");
    assert_eq!(
        (w[1]["line"].as_u64(), w[1]["column"].as_u64()),
        (Some(4), Some(17))
    );
    assert!(w[0]["line"].is_null());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `keel fmt`: --check lists what would change (exit 1) and writes nothing; without it the
/// file is rewritten with its comments, and a second run changes nothing; a file that does not
/// parse is reported with its position (exit 3) and left alone.
#[test]
fn fmt_checks_rewrites_and_refuses() {
    let d = tempfile::tempdir().unwrap();
    let messy = "# team policies\r\nversion: 1   \r\npolicies:\r\n\r\n\r\n  - action: drain   # why\r\n    name: team.drain\r\n    on: [maintenance]\r\n";
    let f = write(d.path(), "team.yaml", messy.as_bytes());
    let other = write(d.path(), "keel.yaml", b"state: x.db\n");
    let out = keel(&["fmt", "--check", d.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), f);
    assert_eq!(std::fs::read_to_string(&f).unwrap(), messy);

    let out = keel(&["fmt", d.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(&f).unwrap(),
        "# team policies\nversion: 1\npolicies:\n\n  - name: team.drain\n    on: [maintenance]\n    action: drain   # why\n"
    );
    assert_eq!(std::fs::read_to_string(&other).unwrap(), "state: x.db\n");
    let out = keel(&["fmt", "--check", &f]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(text(&out.stdout).is_empty());
    let out = keel(&["check", &f]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    let bad = write(d.path(), "bad.yaml", b"policies:\n  - name: [unclosed\n");
    let out = keel(&["fmt", &bad]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("bad.yaml:"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        std::fs::read(&bad).unwrap(),
        b"policies:\n  - name: [unclosed\n"
    );
    let out = keel(&["fmt", "no/such/dir"]);
    assert_eq!(out.status.code(), Some(2));
}

/// A `kubernetes` step is checked at its position: a node name Kubernetes would refuse (it
/// also goes into a field selector), a negative grace period; a keel built without the
/// feature refuses the step itself and says how to get one with it.
#[test]
fn kubernetes_steps_are_checked_with_positions() {
    let d = tempfile::tempdir().unwrap();
    let pol = root().join("policies/standard");
    let cfg = write(
        d.path(),
        "keel.yaml",
        format!(
            "policies: {}\nstate: s.db\nrunbooks:\n  drain:\n    - kubernetes: {{ node: 'Node_1,spec.x=y', grace_period_s: -1 }}\n",
            pol.display()
        )
        .as_bytes(),
    );
    let out = keel(&["check", "--config", &cfg]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    if cfg!(feature = "kubernetes") {
        assert!(
            err.contains("keel.yaml:5:") && err.contains("expected a node name"),
            "{err}"
        );
    } else {
        assert!(
            err.contains("keel.yaml:5:") && err.contains("--features kubernetes"),
            "{err}"
        );
    }
}
