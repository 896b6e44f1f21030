//! Runs the built `keel` binary as a user would.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

mod run_keel;
use run_keel::{keel, keel_stdin, root, text};

const WIN: &str = "engine/tests/data/events/vm-agent-windows-2021-10-13.json";
const LIN: &str = "engine/tests/data/events/vm-agent-linux-2021-10-13.json";
const NOW: &str = "2021-10-13T14:05:03Z";

fn validate_decision(json: &str) -> serde_json::Value {
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("engine/schema/decision.schema.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let value: serde_json::Value = serde_json::from_str(json).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&value)
        .map(|e| e.to_string())
        .collect();
    assert!(
        errors.is_empty(),
        "decision does not match the schema: {errors:?}"
    );
    value
}

#[test]
fn eval_2021_10_13_windows_retries_without_agent() {
    let out = keel(&[
        "eval",
        "--policies",
        "policies/standard",
        "--event",
        WIN,
        "--now",
        NOW,
        "--format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let d = validate_decision(&text(&out.stdout));
    assert_eq!(d["action"], "retry_without_agent");
    assert_eq!(d["policy"], "azure.vm-agent-missing.retry-without-agent");
    // One VM alone is not a platform incident: no page.
    assert_eq!(d["escalations"].as_array().unwrap().len(), 0);
}

#[test]
fn eval_2021_10_13_linux_twin_gets_none() {
    let out = keel(&[
        "eval",
        "--policies",
        "policies/standard",
        "--event",
        LIN,
        "--now",
        NOW,
        "--format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let d = validate_decision(&text(&out.stdout));
    assert_eq!(d["action"], "none");
    assert!(d.get("policy").is_none());
}

#[test]
fn eval_reads_stdin_and_explains() {
    let ev = std::fs::read(root().join(WIN)).unwrap();
    let out = keel_stdin(
        &[
            "eval",
            "--policies",
            "policies/standard",
            "--event",
            "-",
            "--now",
            NOW,
            "--explain",
        ],
        &ev,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(s.contains("action:   retry_without_agent"), "{s}");
    assert!(s.contains("explain:"), "{s}");
    assert!(
        s.contains("matched                azure.vm-agent-missing.retry-without-agent  <- wins"),
        "{s}"
    );
}

#[test]
fn eval_explain_json_has_trace() {
    let out = keel(&[
        "eval",
        "--policies",
        "policies/standard",
        "--event",
        LIN,
        "--now",
        NOW,
        "--format",
        "json",
        "--explain",
    ]);
    let d = validate_decision(&text(&out.stdout));
    let trace = d["trace"].as_array().unwrap();
    // A Windows-only policy on a Linux VM's failure: the index proves it false.
    assert!(
        trace.iter().any(
            |t| t["policy"] == "azure.vm-agent-missing.retry-without-agent"
                && t["outcome"] == "skipped_by_index"
        ),
        "{trace:?}"
    );
    assert!(trace.iter().any(|t| t["outcome"] == "false"), "{trace:?}");
}

#[test]
fn check_reports_three_errors_in_two_files_with_positions() {
    let out = keel(&["check", "host/tests/data/bad-two-files"]);
    assert_eq!(out.status.code(), Some(3));
    let err = text(&out.stderr);
    // The typo sits on the second line of a folded `when: >` block: folding joins the lines,
    // yet the position is the one in the file.
    assert!(
        err.contains("host/tests/data/bad-two-files/a.yaml:6:16: error: unknown field `maintenence` in `event`"),
        "{err}"
    );
    assert!(err.contains("help: did you mean `maintenance`?"), "{err}");
    assert!(
        err.contains(
            "host/tests/data/bad-two-files/a.yaml:11:13: error: unknown action `acknowlege`"
        ),
        "{err}"
    );
    assert!(
        err.contains("host/tests/data/bad-two-files/b.yaml:4:85: error: CEL syntax error"),
        "{err}"
    );
    assert!(err.contains("3 problems in 2 files"), "{err}");
}

#[test]
fn check_valid_set_exits_zero() {
    let out = keel(&["check", "policies"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("ok: "));
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.to_string_lossy().into_owned()
}

#[test]
fn check_bad_inputs_exit_nonzero_with_file_and_position() {
    let d = tmp();
    // Malformed YAML.
    write(
        d.path(),
        "a.yaml",
        b"policies:\n  - name: x\n    on: [maintenance\n",
    );
    let out = keel(&["check", d.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out.stderr).contains("a.yaml:"),
        "{}",
        text(&out.stderr)
    );

    // Non-UTF-8.
    let d = tmp();
    write(d.path(), "b.yaml", b"policies:\n  - name: \xff\xfe\n");
    let out = keel(&["check", d.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out.stderr).contains("b.yaml:2:11: error: policy file is not valid UTF-8"),
        "{}",
        text(&out.stderr)
    );

    // Empty and missing directories.
    let d = tmp();
    let out = keel(&["check", d.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
    assert!(text(&out.stderr).contains("no policy files"));
    // A path that does not exist is a usage error, as the README's exit-code table says.
    let out = keel(&["check", "/nonexistent/keel/policies"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("PATH /nonexistent/keel/policies: no such file or directory"),
        "{}",
        text(&out.stderr)
    );

    // A 50 MB policy file.
    let d = tmp();
    let mut big = b"policies:\n".to_vec();
    big.resize(50 << 20, b'#');
    write(d.path(), "big.yaml", &big);
    let out = keel(&["check", d.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out.stderr)
            .contains("big.yaml: error: policy file is too large: the limit is 8388608 bytes"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn eval_bad_events_exit_2_with_position() {
    let d = tmp();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("trunc.json", br#"{"id": "x", "time": "#.to_vec(), "line 1"),
        ("unknown-field.json", br#"{"id":"x","time":"2021-10-13T14:05:00Z","source":"ingest","kind":"health","colour":1}"#.to_vec(), "unknown field `colour`"),
        ("bad-enum.json", br#"{"id":"x","time":"2021-10-13T14:05:00Z","source":"ingest","kind":"weather"}"#.to_vec(), "unknown variant `weather`"),
        ("bad-type.json", br#"{"id":"x","time":"2021-10-13T14:05:00Z","source":"ingest","kind":"operation_failure","failure":{"operation":"create","code":"X","category":"vm_agent","attempt":"one"}}"#.to_vec(), "invalid type"),
        ("non-utf8.json", b"{\"id\": \"\xff\"}".to_vec(), "not UTF-8"),
    ];
    for (name, bytes, want) in cases {
        let p = write(d.path(), name, &bytes);
        let out = keel(&[
            "eval",
            "--policies",
            "policies/standard",
            "--event",
            &p,
            "--now",
            NOW,
        ]);
        assert_eq!(out.status.code(), Some(2), "{name}");
        let err = text(&out.stderr);
        assert!(err.contains(name) && err.contains(want), "{name}: {err}");
    }
    // A 10,000-deep nested event.
    let mut deep = String::from(
        r#"{"id":"x","time":"2021-10-13T14:05:00Z","source":"ingest","kind":"health","raw":"#,
    );
    deep.push_str(&"[".repeat(10_000));
    deep.push_str(&"]".repeat(10_000));
    deep.push('}');
    let p = write(d.path(), "deep.json", deep.as_bytes());
    let out = keel(&[
        "eval",
        "--policies",
        "policies/standard",
        "--event",
        &p,
        "--now",
        NOW,
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("recursion limit"),
        "{}",
        text(&out.stderr)
    );

    let out = keel(&[
        "eval",
        "--policies",
        "policies/standard",
        "--event",
        WIN,
        "--now",
        "yesterday",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--now yesterday: not an RFC 3339 time"));
}

#[test]
fn help_shows_examples() {
    for cmd in [&["--help"][..], &["eval", "--help"], &["check", "--help"]] {
        let out = keel(cmd);
        assert_eq!(out.status.code(), Some(0));
        assert!(text(&out.stdout).contains("Examples:"), "{cmd:?}");
    }
}

const FX: &str = "policies/fixtures";

#[test]
fn normalize_lists_sources() {
    let out = keel(&["normalize", "--list"]);
    assert_eq!(out.status.code(), Some(0));
    let s = text(&out.stdout);
    for n in [
        "azure.scheduled_events",
        "azure.maintenance_v1",
        "azure.resource_health",
        "azure.arm",
        "aws.imds",
        "gcp.metadata",
    ] {
        assert!(s.contains(n), "{n}: {s}");
    }
}

#[test]
fn normalize_state_file_carries_the_lifecycle() {
    let d = tmp();
    let state = d.path().join("se.json");
    let state = state.to_str().unwrap();
    let steps = [
        (
            "azure-scheduled-events-empty.json",
            "2026-04-11T22:00:00Z",
            vec![],
        ),
        (
            "azure-scheduled-events-freeze-live-migration-scheduled.json",
            "2026-04-11T22:11:58Z",
            vec!["scheduled", "scheduled"],
        ),
        (
            "azure-scheduled-events-freeze-live-migration-scheduled.json",
            "2026-04-11T22:12:58Z",
            vec![],
        ),
        (
            "azure-scheduled-events-freeze-live-migration-started.json",
            "2026-04-11T22:27:00Z",
            vec!["started", "started"],
        ),
        (
            "azure-scheduled-events-freeze-live-migration-completed.json",
            "2026-04-11T22:37:00Z",
            vec!["completed", "completed"],
        ),
    ];
    for (file, at, want) in steps {
        let path = format!("{FX}/{file}");
        let out = keel(&[
            "normalize",
            "--from",
            "azure.scheduled_events",
            "--state",
            state,
            "--self",
            "WestNO_0",
            "--observed-at",
            at,
            &path,
        ]);
        assert_eq!(out.status.code(), Some(0), "{file}: {}", text(&out.stderr));
        let lines: Vec<serde_json::Value> = text(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let got: Vec<&str> = lines
            .iter()
            .map(|e| e["maintenance"]["status"].as_str().unwrap())
            .collect();
        assert_eq!(got, want, "{file}");
        if let Some(first) = lines.first() {
            assert_eq!(first["resource"]["is_self"], true);
        }
    }
}

#[test]
fn normalize_previous_document() {
    let out = keel(&[
        "normalize",
        "--from",
        "azure.scheduled_events",
        "--observed-at",
        "2026-04-11T22:37:00Z",
        "--previous",
        &format!("{FX}/azure-scheduled-events-freeze-live-migration-started.json"),
        &format!("{FX}/azure-scheduled-events-freeze-live-migration-completed.json"),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert_eq!(s.lines().count(), 2);
    assert!(s.contains(r#""status":"completed""#), "{s}");
}

/// `--approved EVENT_ID` records that StartRequests was sent: the event vanishing at the next
/// incarnation, before NotBefore, is then not a cancellation.
#[test]
fn normalize_approved_marks_the_event_in_the_state() {
    let d = tmp();
    // The redeploy fixture is incarnation 7, NotBefore 09:40; incarnation 8 has it gone.
    let gone = write(
        d.path(),
        "gone.json",
        br#"{"DocumentIncarnation": 8, "Events": []}"#,
    );
    let first = format!("{FX}/azure-scheduled-events-redeploy-platform.json");
    let run = |state: &str, extra: &[&str], file: &str, at: &str| {
        let mut args = vec![
            "normalize",
            "--from",
            "azure.scheduled_events",
            "--state",
            state,
            "--observed-at",
            at,
        ];
        args.extend_from_slice(extra);
        args.push(file);
        keel(&args)
    };
    let statuses = |out: &Output| -> Vec<String> {
        text(&out.stdout)
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["maintenance"]["status"].as_str().unwrap().to_string()
            })
            .collect()
    };
    for (approved, want) in [
        (None, "canceled"),
        (Some("9e4c2a41-3F0B-4B8E-9C5D-2D7A1F6E8B30"), "ended"),
    ] {
        let state = d.path().join(format!("se-{}.json", approved.is_some()));
        let state = state.to_str().unwrap();
        let out = run(state, &[], &first, "2021-10-13T09:30:00Z");
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert_eq!(statuses(&out), ["scheduled"]);
        let extra: Vec<&str> = approved.iter().flat_map(|id| ["--approved", *id]).collect();
        let out = run(state, &extra, &gone, "2021-10-13T09:35:00Z");
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert_eq!(statuses(&out), [want], "approved: {approved:?}");
        assert!(
            !text(&out.stderr).contains("warning"),
            "{}",
            text(&out.stderr)
        );
    }
    // The approval is kept in the state file between runs.
    let state = d.path().join("se-kept.json");
    let state = state.to_str().unwrap();
    let out = run(state, &[], &first, "2021-10-13T09:30:00Z");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let same = write(
        d.path(),
        "same.json",
        &std::fs::read(root().join(&first)).unwrap(),
    );
    let out = run(
        state,
        &[
            "--approved",
            "9E4C2A41-3F0B-4B8E-9C5D-2D7A1F6E8B30",
            "--approved",
            "other-id",
        ],
        &same,
        "2021-10-13T09:31:00Z",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(statuses(&out).is_empty());
    assert!(
        text(&out.stderr).contains("--approved other-id: no Scheduled Event"),
        "{}",
        text(&out.stderr)
    );
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(state).unwrap()).unwrap();
    let tracked = &saved["azure_scheduled_events"]["events"];
    assert_eq!(
        tracked["azure.scheduled_events:9e4c2a41-3f0b-4b8e-9c5d-2d7a1f6e8b30/vmss_vm1"]["approved"],
        true,
        "{saved}"
    );
    let out = run(state, &[], &gone, "2021-10-13T09:35:00Z");
    assert_eq!(statuses(&out), ["ended"]);
    // With --previous: the previous document is read, then the approval applies.
    let out = keel(&[
        "normalize",
        "--from",
        "azure.scheduled_events",
        "--observed-at",
        "2021-10-13T09:35:00Z",
        "--previous",
        &first,
        "--approved",
        "9E4C2A41-3F0B-4B8E-9C5D-2D7A1F6E8B30",
        &gone,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(statuses(&out), ["ended"]);
    // Only for Scheduled Events.
    let out = keel(&[
        "normalize",
        "--from",
        "azure.arm",
        "--approved",
        "x",
        &format!("{FX}/arm-error-retryableerror.json"),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--approved applies to azure.scheduled_events only"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn normalize_errors_are_clear() {
    let out = keel(&["normalize", "--from", "azure.sheduled_events", "x.json"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("did you mean `azure.scheduled_events`?"),
        "{}",
        text(&out.stderr)
    );
    let out = keel(&[
        "normalize",
        "--from",
        "azure.scheduled_events",
        "/nonexistent.json",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("/nonexistent.json: cannot read"),
        "{}",
        text(&out.stderr)
    );
    let out = keel(&[
        "normalize",
        "--from",
        "azure.scheduled_events",
        &format!("{FX}/aws-rebalance-recommendation.json"),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("not a payload `azure.scheduled_events` reads"),
        "{}",
        text(&out.stderr)
    );
    let out = keel(&["normalize", "--from", "azure.scheduled_events"]);
    assert_eq!(out.status.code(), Some(2));
}

const TESTING: &str = "engine/tests/data/testing";

#[test]
fn test_exit_codes_and_diffs() {
    let out = keel(&["test", "policies"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains("coverage: "));

    let out = keel(&["test", &format!("{TESTING}/failing")]);
    assert_eq!(out.status.code(), Some(1));
    let s = text(&out.stdout);
    assert!(
        s.contains("FAIL  wrong action  (engine/tests/data/testing/failing/p.test.yaml:5)\n        - action: acknowledge\n        + action: drain"),
        "{s}"
    );
    assert!(s.contains("FAILED: 3 passed, 8 failed"), "{s}");

    let out = keel(&["test", &format!("{TESTING}/invalid")]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out.stderr).contains("p.test.yaml:4:13: error: `expect` is empty"),
        "{}",
        text(&out.stderr)
    );

    let out = keel(&["test", &format!("{TESTING}/uncovered")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("error: no case reaches any policy of"),
        "{}",
        text(&out.stdout)
    );

    let out = keel(&["test", "/nonexistent/keel"]);
    assert_eq!(out.status.code(), Some(2));

    let out = keel(&["test", "policies", "--format", "yaml"]);
    assert_eq!(out.status.code(), Some(2));

    let out = keel(&["test", "policies", "--run", "no such case"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no case matches --run"));
}

#[test]
fn test_writes_human_json_and_junit_from_one_run() {
    let d = tmp();
    let (j, x) = (d.path().join("r.json"), d.path().join("r.xml"));
    let out = keel(&[
        "test",
        &format!("{TESTING}/failing"),
        "--json-out",
        j.to_str().unwrap(),
        "--junit-out",
        x.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("FAIL  wrong action"));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&j).unwrap()).unwrap();
    assert_eq!(v["files"][0]["cases"].as_array().unwrap().len(), 9);
    assert!(std::fs::read_to_string(&x)
        .unwrap()
        .contains("failures=\"8\""));
}

#[test]
fn test_run_selects_cases_and_json_reports_them() {
    let out = keel(&[
        "test",
        &format!("{TESTING}/failing"),
        "--run",
        "wrong action",
        "--format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cases = v["files"][0]["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 1);
    assert_eq!(cases[0]["name"], "wrong action");
    assert_eq!(cases[0]["steps"][0]["failures"][0]["what"], "action");
}

#[test]
fn test_mutation_check_passes_on_the_standard_library() {
    let out = keel(&["test", "policies", "--mutate"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("were caught by at least one failing case"));
    // A set whose cases do not notice a policy's absence is reported.
    let out = keel(&["test", &format!("{TESTING}/vacuous"), "--mutate"]);
    assert_eq!(out.status.code(), Some(1));
    let s = text(&out.stdout);
    assert!(s.contains("4 of 4 mutations survived"), "{s}");
    assert!(s.contains("drain-reboots-too (when forced false)"), "{s}");
    // A failing suite cannot be mutation-checked.
    let out = keel(&["test", &format!("{TESTING}/failing"), "--mutate"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("fail without any mutation"));
}

#[test]
fn junit_output_validates_against_the_published_xsd() {
    let d = tmp();
    for set in ["failing", "uncovered", "budgets/failing"] {
        let out = keel(&["test", &format!("{TESTING}/{set}"), "--format", "junit"]);
        assert_eq!(out.status.code(), Some(1));
        let xml = text(&out.stdout);
        assert!(
            xml.contains("<testcase name=\"engine/tests/data/testing/"),
            "{xml}"
        );
        if set.starts_with("budgets") {
            assert!(xml.contains("<system-out>held test:"), "{xml}");
        }
        let report = write(
            d.path(),
            &format!("{}.xml", set.replace('/', "-")),
            xml.as_bytes(),
        );
        let v = Command::new("python3")
            .arg(root().join("host/tests/validate_junit.py"))
            .arg(&report)
            .arg(Path::new(env!("CARGO_TARGET_TMPDIR")).join("junit-xsd"))
            .output()
            .expect("python3 runs the JUnit schema validation");
        assert_eq!(v.status.code(), Some(0), "{}", text(&v.stderr));
    }
    // Stable names: file::case and file::case::step.
    let out = keel(&["test", &format!("{TESTING}/failing"), "--format", "junit"]);
    let xml = text(&out.stdout);
    assert!(
        xml.contains("name=\"engine/tests/data/testing/failing/p.test.yaml::sequence::step 2\""),
        "{xml}"
    );
    // A failure is located (file:line of its case), and every step is timed.
    assert!(
        xml.contains("<failure message=\"engine/tests/data/testing/failing/p.test.yaml:5: action: expected acknowledge, got drain"),
        "{xml}"
    );
    let times: Vec<f64> = xml
        .split("<testcase ")
        .skip(1)
        .map(|t| {
            let t = &t[t.find("time=\"").unwrap() + 6..];
            t[..t.find('"').unwrap()].parse().unwrap()
        })
        .collect();
    assert!(times.len() > 3 && times.iter().any(|&t| t > 0.0), "{xml}");
}

#[test]
fn eval_as_test_round_trips_through_keel_test() {
    let d = tmp();
    let mut file = format!(
        "policies: {}\ncases:\n",
        root().join("policies/standard").display()
    );
    for ev in [WIN, LIN] {
        let out = keel(&[
            "eval",
            "--policies",
            "policies/standard",
            "--event",
            ev,
            "--now",
            NOW,
            "--as-test",
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        file.push_str(&text(&out.stdout));
    }
    let path = write(d.path(), "pinned.test.yaml", file.as_bytes());
    let out = keel(&["test", &path]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the case passes, but the set's other files are unreached from here"
    );
    let s = text(&out.stdout);
    assert!(
        s.contains("ok: ") || s.contains("2 passed, 0 failed"),
        "{s}"
    );
    assert!(s.contains("2 passed, 0 failed"), "{s}");
}

#[test]
fn demo_plays_a_reboot_through_drain_to_start_requests() {
    let out = keel(&["demo", "--timeout", "60"]);
    let s = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{s}{}", text(&out.stderr));
    assert!(
        s.contains(
            "StartRequests received by the stub: [\"6C0C4BD8-5B2B-4B6E-9C36-4E4B2C1D0A11\"]"
        ),
        "{s}"
    );
    // The decision log links event, decision and steps, one JSON object per line.
    let lines: Vec<serde_json::Value> = s
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let drain = lines
        .iter()
        .find(|l| l["decision"]["action"] == "drain")
        .expect("a drain decision");
    let id = drain["decision_id"].as_str().unwrap();
    let steps: Vec<&str> = lines
        .iter()
        .filter(|l| l["decision_id"] == id && l.get("step").is_some())
        .map(|l| l["step"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["announce", "cordon", "approve"]);
}

#[test]
fn run_validates_the_whole_configuration_first() {
    let d = tmp();
    let cfg = write(
        d.path(),
        "keel.yaml",
        b"policies: /nonexistent/policies\nlisten: nowhere\nsourcez: {}\nrunbooks:\n  drian: []\n  drain:\n    - name: x\n      exec: \"kubectl cordon\"\n",
    );
    let out = keel(&["run", "--config", &cfg]);
    assert_eq!(out.status.code(), Some(3));
    let err = text(&out.stderr);
    for want in [
        "keel.yaml:1:11: error: `/nonexistent/policies` does not exist",
        "keel.yaml:2:9: error: expected an address",
        "keel.yaml:3:1: error: unknown key `sourcez` (did you mean `sources`?)",
        "keel.yaml:5:3: error: unknown action `drian` (did you mean `drain`?)",
        "keel.yaml:8:13: error: `exec` is an argv list",
    ] {
        assert!(err.contains(want), "{want}\n{err}");
    }
}

#[test]
fn limits_retention_and_group_commit_are_validated_with_positions() {
    let d = tmp();
    let policies = root().join("policies/standard");
    let cfg = write(
        d.path(),
        "keel.yaml",
        format!(
            "policies: {}\nlimits:\n  concurrent_drains: 0\n  concurent: 2\nretention: forever\ngc_interval: 0s\ncommit_batch_max: 100000\n",
            policies.display()
        )
        .as_bytes(),
    );
    let out = keel(&["run", "--config", &cfg]);
    assert_eq!(out.status.code(), Some(3));
    let err = text(&out.stderr);
    for want in [
        "keel.yaml:3:22: error: expected how many drains may run at once, from 1 to 10000",
        "keel.yaml:4:3: error: unknown key `concurent`",
        "keel.yaml:5:12: error:",
        "keel.yaml:6:14: error: must be longer than zero",
        "keel.yaml:7:19: error: expected a number from 1 to 10000",
    ] {
        assert!(err.contains(want), "{want}\n{err}");
    }
    // The same keys, valid (`30d` is a duration): the one error left is the bad `listen`.
    let ok = write(
        d.path(),
        "ok.yaml",
        format!(
            "policies: {}\nlisten: nowhere\nlimits: {{ concurrent_drains: 4 }}\nretention: 30d\ngc_interval: 10m\ncommit_batch_max: 1\n",
            policies.display()
        )
        .as_bytes(),
    );
    let out = keel(&["run", "--config", &ok]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert_eq!(
        err.matches(": error:").count(),
        1,
        "only `listen` is wrong\n{err}"
    );
}

#[test]
fn run_with_an_unwritable_state_exits_4_not_invalid_policy() {
    let d = tmp();
    let policies = root().join("policies/standard");
    // The state's directory is a regular file: no user, root included, can create it.
    write(d.path(), "file", b"not a directory");
    let state = d.path().join("file/state.db");
    let cfg = write(
        d.path(),
        "keel.yaml",
        format!(
            "policies: {}\nstate: {}\nlisten: 127.0.0.1:0\nsources:\n  azure_scheduled_events:\n    url: http://127.0.0.1:9/metadata/scheduledevents?api-version=2020-07-01\n",
            policies.display(),
            state.display()
        )
        .as_bytes(),
    );
    let out = keel(&["run", "--config", &cfg]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(
        err.contains("error: cannot lock the state database: "),
        "{err}"
    );
    assert!(err.contains(&state.display().to_string()), "{err}");
    assert!(!err.contains("invalid"), "{err}");
    let out = keel(&["demo", "--config", &cfg, "--timeout", "5"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
}

#[test]
fn run_on_an_invalid_policy_set_exits_3_with_positions() {
    let d = tmp();
    let policies = root().join("host/tests/data/bad-two-files");
    let cfg = write(
        d.path(),
        "keel.yaml",
        format!(
            "policies: {}\nstate: {}\nlisten: 127.0.0.1:0\n",
            policies.display(),
            d.path().join("state.db").display()
        )
        .as_bytes(),
    );
    let out = keel(&["run", "--config", &cfg]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    // Each diagnostic with its position and the help, as `keel check` renders them.
    assert!(
        err.contains("bad-two-files/a.yaml:11:13: error: unknown action `acknowlege`"),
        "{err}"
    );
    assert!(err.contains("help: did you mean `maintenance`?"), "{err}");
    assert!(
        err.contains("error: the policy set is invalid; nothing was started"),
        "{err}"
    );
}

/// Policies, `keel test` files and `keel.yaml` read durations with one grammar
/// (`keel_engine::parse_duration`): compound `1m30s` and `ms` load in a policy, a test's `+1m30s`
/// is an offset, and a bad value is reported at its position, naming it.
#[test]
fn durations_have_one_grammar_in_policies_tests_and_config() {
    let d = tmp();
    write(
        d.path(),
        "p.yaml",
        br#"policies:
  - name: t.defer
    on: [maintenance]
    when: event.maintenance.status == "scheduled"
    action: defer
    reason: wait and a half
    params: { delay: 1m30s }
  - name: t.page
    on: [maintenance]
    action: escalate
    reason: page
    params: { severity: warning, dedup: { by: [resource.name], window: 5000ms } }
"#,
    );
    write(
        d.path(),
        "p.test.yaml",
        br#"cases:
  - name: deferred by a minute and a half
    now: 2021-10-13T14:00:00Z
    event: { resource: { name: vm-1 }, maintenance: { type: reboot, status: scheduled } }
    expect: { action: defer, policy: t.defer, due: +1m30s, escalations: [{ policy: t.page }] }
  - name: the same page twice in one window is one page
    start: 2021-10-13T14:00:00Z
    steps:
      - { at: 0s, event: { resource: { name: vm-1 }, maintenance: { type: reboot, status: started } }, expect: { escalations: [{ policy: t.page }] } }
      - { at: 4000ms, event: { resource: { name: vm-1 }, maintenance: { type: reboot, status: started } }, expect: { escalations: [] } }
"#,
    );
    let dir = d.path().to_str().unwrap();
    let out = keel(&["check", dir]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = keel(&["test", dir]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    // A bad duration keeps its position, and the message names the value and why.
    let bad = tmp();
    write(
        bad.path(),
        "p.yaml",
        b"policies:\n  - name: t.defer\n    on: [maintenance]\n    action: defer\n    params: { delay: 1m30 }\n  - name: t.page\n    on: [maintenance]\n    action: escalate\n    params: { dedup: { window: -5s } }\n",
    );
    let out = keel(&["check", bad.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
    let err = text(&out.stderr);
    for want in [
        "p.yaml:5:22: error: `delay` must be a positive duration: `1m30`: `30` needs a unit",
        "p.yaml:9:32: error: `dedup.window` must be a positive duration: `-5s` is negative",
    ] {
        assert!(err.contains(want), "{want}\n{err}");
    }

    // `keel.yaml`: the same grammar, the same messages, at the value's position.
    let policies = root().join("policies/standard");
    let cfg = write(
        d.path(),
        "keel.yaml",
        format!(
            "policies: {}\nlisten: nowhere\nretention: 1d12h\ngc_interval: 1m30s\nlimits: {{ header_timeout: 1.5s }}\n",
            policies.display()
        )
        .as_bytes(),
    );
    let out = keel(&["run", "--config", &cfg]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("keel.yaml:5:27: error: expected a duration such as 500ms, 1s, 5m, 1m30s: `1.5s`: fractions are not supported"),
        "{err}"
    );
    assert_eq!(
        err.matches(": error:").count(),
        2,
        "only `listen` and `header_timeout` are wrong\n{err}"
    );
}
