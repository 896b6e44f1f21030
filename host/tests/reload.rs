//! Policy reload in `keel run`: a broken policy file is rejected with its errors and the old
//! set keeps deciding; a fixed one is loaded and its digest logged.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{not_before_in_15_minutes, Scenario};
use serde_json::{json, Value};

fn policy(reason: &str) -> String {
    format!(
        r#"version: 1
policies:
  - name: test.reboot.drain
    description: Every announced Reboot is drained.
    on: [maintenance]
    when: event.maintenance.type == "reboot" && event.maintenance.status == "scheduled"
    action: drain
    reason: {reason}
"#
    )
}

fn announce(sc: &Scenario, id: &str) {
    let mut s = sc.se.lock().unwrap();
    s.incarnation += 1;
    s.events.push(json!({
        "EventId": id, "EventStatus": "Scheduled", "EventType": "Reboot",
        "ResourceType": "VirtualMachine", "Resources": [common::VM],
        "NotBefore": not_before_in_15_minutes(), "Description": "maintenance",
        "EventSource": "Platform", "DurationInSeconds": -1,
    }));
}

fn decision_for<'a>(lines: &'a [Value], id: &str) -> Option<&'a Value> {
    lines.iter().find(|l| {
        l.get("decision").is_some()
            && l["event_id"]
                .as_str()
                .is_some_and(|e| e.to_lowercase().contains(&id.to_lowercase()))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_policy_is_rejected_and_a_fixed_one_is_loaded() {
    let sc = Scenario::new(false, &not_before_in_15_minutes()).await;
    let old = std::fs::read_to_string(&sc.config).unwrap();
    let se_url = old
        .lines()
        .find_map(|l| l.trim().strip_prefix("url: "))
        .unwrap()
        .to_string();
    let policies = sc.dir.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    let file = policies.join("reboot.yaml");
    std::fs::write(&file, policy("first")).unwrap();
    std::fs::write(
        &sc.config,
        format!(
            "policies: {}\nstate: {}\nlisten: 127.0.0.1:0\nself: {}\npolicy_reload_interval: 100ms\n\
             sources:\n  azure_scheduled_events:\n    url: {se_url}\n    interval: 100ms\n    timeout: 2s\n    first_timeout: 5s\n",
            policies.display(),
            sc.state.display(),
            common::VM
        ),
    )
    .unwrap();
    let mut k = sc.keel(&[], &[]);
    k.wait_line("the first decision", Duration::from_secs(20), |l| {
        l.get("decision").is_some()
    })
    .await;
    let lines = k.json_lines();
    let first = decision_for(&lines, common::EVENT_ID).unwrap();
    let digest = first["policy_set_digest"].as_str().unwrap().to_string();
    assert_eq!(first["decision"]["reason"], "first");

    // Broken: rejected with its errors (escaped), the old set keeps deciding.
    std::fs::write(
        &file,
        "version: 1\npolicies:\n  - name: \"bad\u{1b}[31m\"\n    actoin: drain\n",
    )
    .unwrap();
    k.wait_line("the rejection", Duration::from_secs(20), |l| {
        l["policy_reload"] == "rejected"
    })
    .await;
    let lines = k.json_lines();
    let rej = lines
        .iter()
        .find(|l| l["policy_reload"] == "rejected")
        .unwrap();
    let errors = rej["errors"].as_array().unwrap();
    assert!(!errors.is_empty(), "{rej}");
    assert!(
        errors
            .iter()
            .all(|e| !e.as_str().unwrap().contains('\u{1b}')),
        "unescaped: {rej}"
    );
    assert_eq!(rej["policy_set_digest"], digest.as_str());
    announce(&sc, "SECOND-EVENT");
    k.wait_line("the second decision", Duration::from_secs(20), |l| {
        l.get("decision").is_some()
            && l["event_id"]
                .as_str()
                .is_some_and(|e| e.to_lowercase().contains("second-event"))
    })
    .await;
    let lines = k.json_lines();
    let second = decision_for(&lines, "SECOND-EVENT").unwrap();
    assert_eq!(second["policy_set_digest"], digest.as_str());
    assert_eq!(second["decision"]["reason"], "first");

    // Fixed: loaded, its digest logged, and used.
    std::fs::write(&file, policy("second")).unwrap();
    k.wait_line("the reload", Duration::from_secs(20), |l| {
        l["policy_reload"] == "loaded"
    })
    .await;
    let lines = k.json_lines();
    let loaded = lines
        .iter()
        .find(|l| l["policy_reload"] == "loaded")
        .unwrap();
    let new_digest = loaded["policy_set_digest"].as_str().unwrap().to_string();
    // The digest of the policy set now on disk, as the engine computes it.
    let want = keel_engine::Engine::builder()
        .add_path(&policies)
        .build()
        .unwrap();
    assert_eq!(new_digest, want.digest());
    assert_ne!(new_digest, digest, "the set changed");
    // `/metrics` names the new set only.
    let m = k.metrics().await;
    assert_eq!(
        common::metric(
            &m,
            &format!("keel_policy_set_info{{digest=\"{new_digest}\"}}")
        ),
        Some(1.0),
        "{m}"
    );
    assert!(!m.contains(&digest), "the old digest's series is gone: {m}");
    announce(&sc, "THIRD-EVENT");
    k.wait_line("the third decision", Duration::from_secs(20), |l| {
        l.get("decision").is_some()
            && l["event_id"]
                .as_str()
                .is_some_and(|e| e.to_lowercase().contains("third-event"))
    })
    .await;
    let lines = k.json_lines();
    let third = decision_for(&lines, "THIRD-EVENT").unwrap();
    assert_eq!(third["policy_set_digest"], new_digest.as_str());
    assert_eq!(third["decision"]["reason"], "second");
}

/// A policy whose `when` nests deeper than the loader accepts, hidden from a naive lexer by a
/// raw string, a triple-quoted string, a comment or a chain of ternaries.
fn deep_policy(n: usize, variant: usize) -> String {
    let deep = format!("{}true{}", "(".repeat(n), ")".repeat(n));
    let when = match variant {
        0 => format!("event.maintenance.type == r\"\\\" && {deep}"),
        1 => format!("event.maintenance.type == '''a'b''' && {deep}"),
        2 => format!("event.maintenance.type == br'\\' && {deep}"),
        3 => format!("event.maintenance.type == \"reboot\" // \"\n  && {deep}"),
        _ => format!("{}true", "false ? false : ".repeat(n)),
    };
    let when: String = when.lines().map(|l| format!("      {l}\n")).collect();
    format!(
        "version: 1\npolicies:\n  - name: test.deep\n    on: [maintenance]\n    action: drain\n    when: |-\n{when}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_policies_are_rejected_on_reload_and_the_daemon_keeps_running() {
    let sc = Scenario::new(false, &not_before_in_15_minutes()).await;
    let old = std::fs::read_to_string(&sc.config).unwrap();
    let se_url = old
        .lines()
        .find_map(|l| l.trim().strip_prefix("url: "))
        .unwrap()
        .to_string();
    let policies = sc.dir.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(policies.join("reboot.yaml"), policy("first")).unwrap();
    std::fs::write(
        &sc.config,
        format!(
            "policies: {}\nstate: {}\nlisten: 127.0.0.1:0\nself: {}\npolicy_reload_interval: 100ms\n\
             sources:\n  azure_scheduled_events:\n    url: {se_url}\n    interval: 100ms\n    timeout: 2s\n    first_timeout: 5s\n",
            policies.display(),
            sc.state.display(),
            common::VM
        ),
    )
    .unwrap();
    let mut k = sc.keel(&[], &[]);
    k.wait_line("the first decision", Duration::from_secs(20), |l| {
        l.get("decision").is_some()
    })
    .await;
    let mut previous: Option<std::path::PathBuf> = None;
    for (i, (n, variant)) in [(60, 0), (60, 1), (60, 2), (60, 3), (200, 4), (1000, 0)]
        .into_iter()
        .enumerate()
    {
        // A new file each time, so that its rejection names it.
        let name = format!("deep{i}.yaml");
        if let Some(p) = previous.take() {
            std::fs::remove_file(p).unwrap();
        }
        let file = policies.join(&name);
        std::fs::write(&file, deep_policy(n, variant)).unwrap();
        previous = Some(file);
        let rejection = k
            .wait_line("the rejection", Duration::from_secs(30), |l| {
                l["policy_reload"] == "rejected" && l["errors"].to_string().contains(&name)
            })
            .await;
        let errors = rejection["errors"].to_string();
        assert!(
            errors.contains("nested more than 24 levels deep"),
            "variant {variant}: {errors}"
        );
        let health = common::http()
            .get(format!("{}/healthz", k.base()))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status().as_u16(), 200, "{}", k.dump());
    }
    assert!(
        !k.json_lines()
            .iter()
            .any(|l| l["policy_reload"] == "loaded"),
        "{}",
        k.dump()
    );
}
