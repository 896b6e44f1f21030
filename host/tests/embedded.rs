//! The standard library, its tests and fixtures, and the demo configuration embedded in the
//! `keel` binary (issue 15), through the binary run from directories outside the repository.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::Keel;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `keel args…` run in `dir`.
fn keel_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .current_dir(dir)
        .env_remove("KEEL_FAILPOINT")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Every file under `dir`, relative to it, sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

fn copy_tree(from: &Path, to: &Path) {
    for rel in files_under(from) {
        let dest = to.join(&rel);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(from.join(&rel), dest).unwrap();
    }
}

/// The full digest `keel check` prints the first 12 digits of.
fn checked_digest(out: &Output) -> String {
    let s = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{s}{}", text(&out.stderr));
    let (_, rest) = s.split_once(", set ").expect("a digest");
    rest[..12].to_string()
}

#[test]
fn check_with_no_path_checks_the_embedded_library_and_an_export_has_its_digest() {
    let d = tempfile::tempdir().unwrap();
    let out = keel_in(d.path(), &["check"]);
    assert!(
        text(&out.stdout).contains("(the embedded library)"),
        "{}",
        text(&out.stdout)
    );
    let embedded = checked_digest(&out);
    // The repository's library, checked as a directory of the same layout, is the same set.
    let repo = tempfile::tempdir().unwrap();
    copy_tree(
        &root().join("policies/standard"),
        &repo.path().join("standard"),
    );
    assert_eq!(
        checked_digest(&keel_in(
            d.path(),
            &["check", repo.path().to_str().unwrap()]
        )),
        embedded
    );

    let out = keel_in(d.path(), &["policies", "export", "lib"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("wrote "),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(
        checked_digest(&keel_in(d.path(), &["check", "lib"])),
        embedded
    );
    // A change to the exported copy is another set.
    let vm_agent = d.path().join("lib/standard/azure/vm-agent.yaml");
    let changed = std::fs::read_to_string(&vm_agent).unwrap() + "\n# edited\n";
    std::fs::write(&vm_agent, changed).unwrap();
    assert_ne!(
        checked_digest(&keel_in(d.path(), &["check", "lib"])),
        embedded
    );
}

/// `--force` overwrites the library's files in place, never through a symbolic link planted
/// in the directory (which would send the overwrite anywhere the user can write).
#[cfg(unix)]
#[test]
fn export_never_writes_through_a_symbolic_link() {
    let d = tempfile::tempdir().unwrap();
    let elsewhere = d.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let victim = elsewhere.join("vm-agent.yaml");
    std::fs::write(&victim, "# not the library's\n").unwrap();
    let lib = d.path().join("lib");
    std::fs::create_dir_all(lib.join("standard")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, lib.join("standard/azure")).unwrap();
    let out = keel_in(d.path(), &["policies", "export", "lib", "--force"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("a symbolic link: not written through"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "# not the library's\n"
    );
}

#[test]
fn export_writes_the_library_as_in_the_repository_and_refuses_a_non_empty_directory() {
    let d = tempfile::tempdir().unwrap();
    let out = keel_in(d.path(), &["policies", "export", "lib"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let lib = d.path().join("lib");
    let files = files_under(&lib);
    // Every file of policies/standard, byte for byte, and the fixtures its tests read.
    for rel in files_under(&root().join("policies/standard")) {
        let rel = Path::new("standard").join(rel);
        assert!(files.contains(&rel), "{} not exported", rel.display());
    }
    for rel in &files {
        assert_eq!(
            std::fs::read(lib.join(rel)).unwrap(),
            std::fs::read(root().join("policies").join(rel)).unwrap(),
            "{}",
            rel.display()
        );
        assert!(
            rel.starts_with("standard") || rel.starts_with("fixtures"),
            "{}",
            rel.display()
        );
    }
    assert!(files.contains(&PathBuf::from("fixtures/SOURCES.md")));
    assert!(!files.contains(&PathBuf::from("fixtures/cases.json")));

    // Not into a directory that holds something, unless forced; nothing is written.
    let mine = lib.join("standard/azure/vm-agent.yaml");
    std::fs::write(&mine, "# mine\n").unwrap();
    let out = keel_in(d.path(), &["policies", "export", "lib"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("`lib` is not empty (use --force"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&mine).unwrap(), "# mine\n");
    let out = keel_in(d.path(), &["policies", "export", "lib", "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_ne!(std::fs::read_to_string(&mine).unwrap(), "# mine\n");

    // The exported copy's tests pass, run from elsewhere.
    let out = keel_in(&root(), &["test", lib.to_str().unwrap()]);
    let s = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{s}{}", text(&out.stderr));
    assert!(s.contains(" passed, 0 failed"), "{s}");
}

#[test]
fn test_standard_runs_the_embedded_tests_from_any_directory() {
    let d = tempfile::tempdir().unwrap();
    let out = keel_in(
        d.path(),
        &["test", "--standard", "--json-out", "report.json"],
    );
    let s = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{s}{}", text(&out.stderr));
    assert!(s.contains("standard/azure/vm-agent.test.yaml"), "{s}");
    // As many cases as the repository's copy has.
    let repo = keel_in(&root(), &["test", "policies/standard"]);
    let last = |s: &str| s.lines().last().unwrap_or_default().to_string();
    assert_eq!(last(&s), last(&text(&repo.stdout)));
    assert!(last(&s).ends_with(" passed, 0 failed"), "{s}");
    // The report went where it was asked, relative to the caller's directory.
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.path().join("report.json")).unwrap()).unwrap();
    assert!(
        report["files"].as_array().is_some_and(|f| !f.is_empty()),
        "{report}"
    );
    let out = keel_in(d.path(), &["test", "--standard", "policies"]);
    assert_eq!(out.status.code(), Some(2), "--standard takes no PATH");
}

#[test]
fn a_copy_of_policies_outside_the_repository_passes_its_tests() {
    let d = tempfile::tempdir().unwrap();
    let copy = d.path().join("policies");
    copy_tree(&root().join("policies"), &copy);
    let out = keel_in(d.path(), &["test", "policies"]);
    let s = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{s}{}", text(&out.stderr));
    let repo = keel_in(&root(), &["test", "policies"]);
    assert_eq!(
        s.lines().last(),
        text(&repo.stdout).lines().last(),
        "the copy runs every case the repository's runs"
    );
    // No test file reaches outside `policies/`.
    for rel in files_under(&copy) {
        if rel.to_string_lossy().ends_with(".test.yaml") {
            let t = std::fs::read_to_string(copy.join(&rel)).unwrap();
            assert!(!t.contains("engine/tests"), "{}", rel.display());
        }
    }
}

#[test]
fn demo_runs_from_any_directory_with_the_embedded_configuration() {
    let d = tempfile::tempdir().unwrap();
    let out = keel_in(d.path(), &["demo", "--timeout", "60"]);
    let s = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{s}{}", text(&out.stderr));
    assert!(
        s.contains("keel demo: ok: the Reboot was drained, approved with StartRequests"),
        "{s}"
    );
    assert!(
        d.path().join(".keel/demo.db").is_file(),
        "fresh state under the directory"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn run_without_policies_decides_with_the_embedded_library() {
    let d = tempfile::tempdir().unwrap();
    let embedded = checked_digest(&keel_in(d.path(), &["check"]));
    let payload: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root().join("policies/fixtures/aws-spot-instance-action-terminate.json"))
            .unwrap(),
    )
    .unwrap();
    std::fs::write(d.path().join("events.jsonl"), format!("{payload}\n")).unwrap();
    let cfg = d.path().join("keel.yaml");
    std::fs::write(&cfg, "state: state.db\nlisten: 127.0.0.1:0\n").unwrap();
    let events = d.path().join("events.jsonl");
    let mut k = Keel::start(
        &cfg,
        &[
            "--dry-run",
            "--replay",
            events.to_str().unwrap(),
            "--normalizer",
            "aws.imds",
        ],
        &[],
    );
    let line = k
        .wait_line("a decision", Duration::from_secs(20), |l| {
            l.get("decision").is_some()
        })
        .await;
    assert_eq!(
        line["decision"]["policy"], "aws.spot.interruption.drain",
        "{line}"
    );
    let digest = line["policy_set_digest"].as_str().unwrap();
    assert!(digest.starts_with(&embedded), "{digest} vs {embedded}");
    k.kill();
}

#[test]
fn eval_without_policies_decides_with_the_embedded_library() {
    let d = tempfile::tempdir().unwrap();
    let event = root().join("engine/tests/data/events/vm-agent-windows-2021-10-13.json");
    let out = keel_in(
        d.path(),
        &[
            "eval",
            "--event",
            event.to_str().unwrap(),
            "--now",
            "2021-10-13T14:05:03Z",
            "--format",
            "json",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let decision: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(decision["action"], "retry_without_agent", "{decision}");
}
