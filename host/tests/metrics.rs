//! `/metrics` of a running `keel run`, after a platform Reboot was polled, decided and drained
//! (log, exec, http and azure_ack steps), parsed whole by a real exposition-format parser and
//! linter: `promtool check metrics`, from Debian's `prometheus` package (`test.sh` installs
//! it). Then the families the issue asks for: the histograms, `keel_build_info` and
//! `keel_policy_set_info`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{metric, Scenario, STEPS};

/// `promtool check metrics` on `text`: whether it passed, and what it said.
fn promtool(text: &str) -> (bool, String) {
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => panic!(
            "promtool not runnable ({e}): install Debian's `prometheus` package \
             (`apt-get install -y prometheus`, as test.sh does)"
        ),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

#[test]
fn promtool_rejects_a_broken_exposition() {
    // The check can fail: a family without HELP, and a malformed line.
    let (ok, said) = promtool("# TYPE x_total counter\nx_total 1\n");
    assert!(!ok, "{said}");
    assert!(said.contains("no help text"), "{said}");
    let (ok, said) = promtool("# HELP x_total x\n# TYPE x_total counter\nx_total{ 1\n");
    assert!(!ok, "{said}");
    let (ok, said) = promtool("# HELP x_total x\n# TYPE x_total counter\nx_total 1\n");
    assert!(ok, "{said}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_exposition_of_a_running_host_parses_and_has_the_histograms_and_info_series() {
    let sc = Scenario::new(false, &common::not_before_in_15_minutes()).await;
    let mut k = sc.keel(&[], &[]);
    let last = STEPS[STEPS.len() - 1];
    let step = k
        .wait_line(
            &format!("the `{last}` step"),
            Duration::from_secs(20),
            |l| l["step"] == last,
        )
        .await;
    assert_eq!(step["outcome"], "ok", "{step}");
    sc.wait_polls(&mut k, 2, Duration::from_secs(20)).await;
    let decision = k
        .json_lines()
        .into_iter()
        .find(|l| l.get("decision").is_some())
        .unwrap();
    let digest = decision["policy_set_digest"].as_str().unwrap().to_string();

    let r = common::http()
        .get(format!("{}/metrics", k.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let m = r.text().await.unwrap();

    // The whole exposition parses, and the linter finds nothing (HELP everywhere, counter
    // names, units, histogram series).
    let (ok, said) = promtool(&m);
    assert!(ok, "promtool check metrics: {said}\n{m}");
    assert!(said.trim().is_empty(), "{said}");

    // Every family has HELP then TYPE.
    let types: Vec<&str> = m.lines().filter(|l| l.starts_with("# TYPE ")).collect();
    assert!(types.len() >= 10, "{m}");
    for t in &types {
        let name = t.split(' ').nth(2).unwrap();
        assert!(m.contains(&format!("# HELP {name} ")), "{name}: {m}");
    }

    // Histograms, not sum/count gauges.
    for (name, series) in [
        ("keel_decide_seconds", "keel_decide_seconds_count"),
        (
            "keel_step_duration_seconds",
            "keel_step_duration_seconds_count{executor=\"exec\",outcome=\"ok\"}",
        ),
        (
            "keel_poll_duration_seconds",
            "keel_poll_duration_seconds_count{source=\"azure.scheduled_events\"}",
        ),
    ] {
        assert!(
            m.contains(&format!("# TYPE {name} histogram")),
            "{name}: {m}"
        );
        assert!(metric(&m, series).unwrap_or(0.0) >= 1.0, "{series}: {m}");
    }
    assert_eq!(
        metric(&m, "keel_decide_seconds_bucket{le=\"+Inf\"}"),
        metric(&m, "keel_decide_seconds_count"),
        "{m}"
    );
    assert!(
        m.contains("keel_decide_seconds_bucket{le=\"0.0001\"} "),
        "{m}"
    );
    assert!(m.contains("keel_decide_seconds_bucket{le=\"10\"} "), "{m}");
    for exec in ["log", "exec", "http", "azure_ack"] {
        let s = format!("keel_step_duration_seconds_count{{executor=\"{exec}\",outcome=\"ok\"}}");
        assert_eq!(metric(&m, &s), Some(1.0), "{s}: {m}");
    }
    assert!(!m.contains("keel_decide_seconds_sum{"), "{m}");

    // The info series.
    let build = m
        .lines()
        .find(|l| l.starts_with("keel_build_info{"))
        .unwrap_or_else(|| panic!("{m}"));
    assert!(
        build.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))),
        "{build}"
    );
    assert!(build.ends_with("} 1"), "{build}");
    assert_eq!(
        metric(&m, &format!("keel_policy_set_info{{digest=\"{digest}\"}}")),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        m.lines()
            .filter(|l| l.starts_with("keel_policy_set_info{"))
            .count(),
        1,
        "{m}"
    );
    // No id as a label value.
    assert!(!m.contains(common::EVENT_ID), "{m}");
}
