//! The host under load, through the real `keel run` binary: the run loop never stalls the
//! runtime (a batch of slow plugin calls does not delay `/healthz`), and the ingest endpoint
//! sheds a flood (503 with `Retry-After` once its queue is full, slowloris connections closed
//! after the header timeout) while deciding every accepted body exactly once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;

use common::{root, Keel};

const TOKEN: &str = "keel-test-token-0123456789abcdef";

fn hostile() -> PathBuf {
    let p = root().join("wasm-plugins/dist/hostile.wasm");
    assert!(
        p.exists(),
        "{} is missing: run `cargo run -p xtask -- build-plugins` first",
        p.display()
    );
    p
}

/// A policy directory whose only policy is the hostile plugin spinning on every operation
/// failure until its deadline (twice: the engine retries a deadline once on a fresh instance),
/// until the engine quarantines it after three consecutive faults: with `plugins` of them,
/// the first three decisions take `plugins` x 2 x `deadline_ms` each.
fn spinning_policies(dir: &Path, plugins: usize, deadline_ms: u64) -> PathBuf {
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    let mut yaml = String::from("policies:\n");
    for i in 0..plugins {
        yaml.push_str(&format!(
            "  - name: hostile-{i}\n    on: [operation_failure]\n    plugin:\n      path: {}\n      config: {{ mode: spin }}\n      limits: {{ deadline_ms: {deadline_ms}, memory_mib: 4 }}\n",
            hostile().display()
        ));
    }
    std::fs::write(policies.join("hostile.yaml"), yaml).unwrap();
    policies
}

/// Waits until every event of `keys` has a decision line; then the count per event id.
async fn wait_decided(k: &Keel, keys: &[String]) -> HashMap<String, usize> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let decided = decisions_per_event(k);
        if keys
            .iter()
            .all(|key| decided.contains_key(&format!("azure.arm:{key}")))
            || Instant::now() > deadline
        {
            return decided;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts `keel run` with `policies` and `rest` of the configuration (sources, limits, ...)
/// and waits until it listens. `TOKIO_WORKER_THREADS=2`: the runtime of a two-core VM, whose
/// workers a blocked run loop would stall.
async fn start(dir: tempfile::TempDir, policies: &Path, rest: &str) -> Keel {
    let cfg = dir.path().join("keel.yaml");
    std::fs::write(
        &cfg,
        format!(
            "policies: {}\nstate: {}\nlisten: 127.0.0.1:0\nself: test-vm\n{rest}",
            policies.display(),
            dir.path().join("state.db").display(),
        ),
    )
    .unwrap();
    let mut k = Keel::start(
        &cfg,
        &[],
        &[
            ("KEEL_TEST_INGEST_TOKEN", TOKEN),
            ("TOKIO_WORKER_THREADS", "2"),
        ],
    )
    .keep_dir(dir);
    k.wait_listen(Duration::from_secs(20)).await;
    k
}

fn ingest_body(key: &str) -> String {
    let mut body: Value = serde_json::from_str(
        &std::fs::read_to_string(
            root().join("engine/tests/data/ingest/vm-agent-windows-2021-10-13.json"),
        )
        .unwrap(),
    )
    .unwrap();
    body["idempotency_key"] = json!(key);
    body.to_string()
}

/// One `POST /ingest`: its status, `Retry-After` and JSON reply.
async fn post(client: &reqwest::Client, base: &str, key: &str) -> (u16, Option<String>, Value) {
    let r = client
        .post(format!("{base}/ingest"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(ingest_body(key))
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let retry_after = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (status, retry_after, r.json().await.unwrap_or(Value::Null))
}

/// How many decision lines the log holds per event id.
fn decisions_per_event(k: &Keel) -> HashMap<String, usize> {
    let mut n = HashMap::new();
    for l in k.json_lines() {
        if l.get("decision").is_some() {
            *n.entry(l["event_id"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
    }
    n
}

/// Posts `keys` all at once; the answers, in the order of `keys`.
async fn burst(base: &str, keys: &[String]) -> Vec<(u16, Option<String>, Value)> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let tasks: Vec<_> = keys
        .iter()
        .map(|key| {
            let (client, base, key) = (client.clone(), base.to_string(), key.clone());
            tokio::spawn(async move { post(&client, &base, &key).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// Issue 11, item 9: 256 events queued behind two plugins that take their full deadline (1 s,
/// twice, until their quarantine after three faults) make a batch of about 12 s; `/healthz` keeps
/// answering at once all along. Before the fix the
/// batch held the state database (and the run loop) on the runtime, and the outbox and the
/// garbage collector, waiting for the database on the runtime's two workers, stalled every
/// request for the length of the batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn healthz_answers_within_100ms_while_a_plugin_spends_its_deadline_on_256_events() {
    let dir = tempfile::tempdir().unwrap();
    let policies = spinning_policies(dir.path(), 2, 1000);
    let mut k = start(
        dir,
        &policies,
        "gc_interval: 200ms\nsources:\n  ingest:\n    token_env: KEEL_TEST_INGEST_TOKEN\n    queue: 512\n    concurrent_requests: 512\n    request_timeout: 10m\nlimits:\n  connections: 1024\n",
    )
    .await;
    let base = k.base();
    // The probe's connection is open before the flood's 256 connect at once: the probes
    // measure the runtime, not the listener's accept queue.
    let probe = common::http();
    let r = probe.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let keys: Vec<String> = (0..256).map(|i| format!("flood/{i}")).collect();
    let flood = {
        let (base, keys) = (base.clone(), keys.clone());
        tokio::spawn(async move { burst(&base, &keys).await })
    };
    let t0 = Instant::now();
    let mut latencies = Vec::new();
    while !flood.is_finished() {
        let t = Instant::now();
        let r = probe
            .get(format!("{base}/healthz"))
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        latencies.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let batch = t0.elapsed();
    let answers = flood.await.unwrap();
    for (status, _, reply) in &answers {
        assert_eq!(*status, 202, "{reply}");
    }
    // The batch did spend the plugins' deadlines (3 events x 2 plugins x 2 x 1 s).
    assert!(
        batch >= Duration::from_secs(8),
        "the batch took only {batch:?}: the plugin did not spin"
    );
    // The bound, 100 ms, holds for 99 % of the probes; a scheduling hiccup of the
    // shared test machine may delay one or two, so the slowest is held to 1 s, which a stalled
    // runtime (blocked for a plugin call of 2 x 1 s at least, or for the whole batch) exceeds.
    let slow: Vec<(usize, Duration)> = latencies
        .iter()
        .enumerate()
        .filter(|(_, l)| **l >= Duration::from_millis(50))
        .map(|(i, l)| (i, *l))
        .collect();
    eprintln!("slow probes (index, latency): {slow:?}");
    latencies.sort_unstable();
    let worst = latencies.last().copied().unwrap_or_default();
    let p99 = latencies[(latencies.len() * 99 / 100).min(latencies.len().saturating_sub(1))];
    eprintln!(
        "/healthz: {} probes during a batch of {batch:?}, p99 {p99:?}, the slowest {worst:?}",
        latencies.len()
    );
    assert!(
        worst < Duration::from_secs(1),
        "/healthz took {worst:?} at worst over {} probes during a batch of {batch:?}",
        latencies.len()
    );
    assert!(
        p99 < Duration::from_millis(100),
        "/healthz took {p99:?} or more for 1 % of {} probes during a batch of {batch:?}",
        latencies.len()
    );
    assert!(
        latencies.len() >= 50,
        "only {} probes in {batch:?}",
        latencies.len()
    );
    let decided = wait_decided(&k, &keys).await;
    for key in &keys {
        assert_eq!(decided.get(&format!("azure.arm:{key}")), Some(&1), "{key}");
    }
    k.kill();
}

/// Issue 11, item 10: with a queue of 2 and a slow run loop, a burst of 40 bodies gets 503s
/// with `Retry-After` at once (before the fix, every request waited for room in the queue);
/// every body answered 202 is decided exactly once, and no refused body is decided.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_over_a_tiny_queue_gets_503_with_retry_after_and_each_accepted_body_is_decided_once(
) {
    let dir = tempfile::tempdir().unwrap();
    let policies = spinning_policies(dir.path(), 1, 1000);
    let mut k = start(
        dir,
        &policies,
        "commit_batch_max: 1\nsources:\n  ingest:\n    token_env: KEEL_TEST_INGEST_TOKEN\n    queue: 2\n",
    )
    .await;
    let base = k.base();
    let client = common::http();
    let (status, _, reply) = post(&client, &base, "warm-up").await;
    assert_eq!(status, 202, "{reply}");

    let keys: Vec<String> = (0..40).map(|i| format!("burst/{i}")).collect();
    let t0 = Instant::now();
    let answers = burst(&base, &keys).await;
    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    for (key, (status, retry_after, reply)) in keys.iter().zip(&answers) {
        match status {
            202 => accepted.push(key.clone()),
            503 => {
                assert_eq!(retry_after.as_deref(), Some("1"), "{reply}");
                assert!(
                    reply["error"].as_str().unwrap().contains("queue is full"),
                    "{reply}"
                );
                refused.push(key.clone());
            }
            other => panic!("{key}: HTTP {other}: {reply}"),
        }
    }
    assert!(!refused.is_empty(), "no 503 in {answers:?}");
    assert!(!accepted.is_empty(), "nothing accepted: {answers:?}");
    // The first two decisions of the burst cost the plugin 2 s each (then it is quarantined):
    // meanwhile the queue was full, and the refused bodies were answered at once.
    let took = t0.elapsed();
    let decided = wait_decided(&k, &accepted).await;
    for key in &accepted {
        assert_eq!(
            decided.get(&format!("azure.arm:{key}")),
            Some(&1),
            "{key} accepted and not decided once ({took:?})"
        );
    }
    for key in &refused {
        assert_eq!(decided.get(&format!("azure.arm:{key}")), None, "{key}");
    }
    // A refused body posted again later, when the queue has room, is accepted and decided.
    let again = &refused[0];
    let (status, _, reply) = post(&client, &base, again).await;
    assert_eq!(status, 202, "{reply}");
    k.wait_line(
        "the retried body's decision",
        Duration::from_secs(20),
        |l| l["event_id"] == format!("azure.arm:{again}").as_str() && l.get("decision").is_some(),
    )
    .await;
    let m = k.metrics().await;
    assert_eq!(
        common::metric(&m, "keel_ingest_requests_total{status=\"503\"}"),
        Some(refused.len() as f64),
        "{m}"
    );
    k.kill();
}

/// Issue 11, item 10: a client that opens a connection and sends half of its headers, then
/// holds it (slowloris), is disconnected after `limits.header_timeout`; meanwhile the others
/// are served. Before the fix the connection stayed open for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_connection_is_closed_after_the_header_timeout_and_blocks_no_one() {
    let dir = tempfile::tempdir().unwrap();
    let k = start(
        dir,
        &root().join("policies/standard"),
        "sources:\n  ingest:\n    token_env: KEEL_TEST_INGEST_TOKEN\nlimits:\n  header_timeout: 1s\n",
    )
    .await;
    let base = k.base();
    let addr = base.trim_start_matches("http://").to_string();
    let mut slow = Vec::new();
    for _ in 0..8 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(
            format!("POST /ingest HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer ").as_bytes(),
        )
        .await
        .unwrap();
        slow.push(s);
    }
    // The others are served meanwhile.
    let client = common::http();
    let r = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (status, _, reply) = post(&client, &base, "while-slowloris").await;
    assert_eq!(status, 202, "{reply}");
    // Every slow connection is closed by the server (EOF, or a reset); well within the wait
    // below, which only bounds a hang.
    for mut s in slow {
        let mut buf = [0u8; 1024];
        let closed = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    // hyper may answer 408 before closing.
                    Ok(_) => continue,
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "a connection with half its headers is still open after 30 s"
        );
    }
}

/// Issue 11, item 10: runbooks other than drains run at most `limits.concurrent_runbooks` at
/// once; the others wait for a slot and all of them run. Six VM-agent failures of six VMs are
/// each decided `retry_without_agent`, whose runbook's one step marks its start and end in a
/// file around a short sleep; the marks never show more than two at once (before the fix, all
/// six overlapped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runbooks_other_than_drains_run_at_most_concurrent_runbooks_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let marks = dir.path().join("marks");
    let rest = format!(
        // Six retries of one region at once: past the default retry budget (10% + 3), which
        // this test of runbook concurrency turns off.
        "guards:\n  retry_budget: {{ enabled: false }}\nsources:\n  ingest:\n    token_env: KEEL_TEST_INGEST_TOKEN\nlimits:\n  concurrent_runbooks: 2\nrunbooks:\n  retry_without_agent:\n    - name: work\n      exec: [\"/bin/sh\", \"-c\", \"echo + >> {m}; /bin/sleep 0.5; echo - >> {m}\"]\n      timeout: 30s\n      retries: 0\n",
        m = marks.display()
    );
    let mut k = start(dir, &root().join("policies/standard"), &rest).await;
    let base = k.base();
    let client = common::http();
    for i in 0..6 {
        let mut body: Value = serde_json::from_str(&ingest_body(&format!("rb/{i}"))).unwrap();
        body["resource"]["name"] = json!(format!("web-win-{i}"));
        body["resource"]["id"] = json!(format!(
            "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/web/providers/Microsoft.Compute/virtualMachines/web-win-{i}"
        ));
        let r = client
            .post(format!("{base}/ingest"))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let reply: Value = r.json().await.unwrap();
        assert_eq!(status, 202, "{reply}");
        assert_eq!(reply["action"], "retry_without_agent", "{reply}");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = k
            .json_lines()
            .iter()
            .filter(|l| l["step"] == "work" && l["outcome"] == "ok")
            .count();
        if done == 6 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{done} of 6 runbooks done\n{}",
            k.dump()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = std::fs::read_to_string(&marks).unwrap();
    let (mut now, mut most) = (0i32, 0i32);
    for m in text.lines() {
        now += if m == "+" { 1 } else { -1 };
        most = most.max(now);
    }
    assert_eq!(text.lines().count(), 12, "{text}");
    assert_eq!(most, 2, "{text}");
    k.kill();
}

/// Issue 11, item 10: at most `sources.ingest.concurrent_requests` requests are handled at
/// once; one beyond gets 503 with `Retry-After` at once instead of waiting. Two bodies posted
/// together while the first decision takes the plugin 2 s: one is accepted, the other refused
/// (before the fix both waited and were accepted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingest_request_beyond_concurrent_requests_gets_503_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let policies = spinning_policies(dir.path(), 1, 1000);
    let k = start(
        dir,
        &policies,
        "sources:\n  ingest:\n    token_env: KEEL_TEST_INGEST_TOKEN\n    concurrent_requests: 1\n",
    )
    .await;
    let keys = vec!["pair/a".to_string(), "pair/b".to_string()];
    let answers = burst(&k.base(), &keys).await;
    let mut statuses: Vec<u16> = answers.iter().map(|a| a.0).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [202, 503], "{answers:?}");
    let refused = answers.iter().find(|a| a.0 == 503).unwrap();
    assert_eq!(refused.1.as_deref(), Some("1"), "{answers:?}");
    assert!(
        refused.2["error"]
            .as_str()
            .unwrap()
            .contains("too many ingest requests"),
        "{answers:?}"
    );
}

/// Issue 11, item 10: a request that is not decided within `sources.ingest.request_timeout`
/// gets 503 with `Retry-After` instead of holding the client; the body was queued and is
/// decided once, so the client's retry with the same idempotency key answers `duplicate`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_its_timeout_gets_503_and_its_retry_answers_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let policies = spinning_policies(dir.path(), 1, 1000);
    let mut k = start(
        dir,
        &policies,
        "sources:\n  ingest:\n    token_env: KEEL_TEST_INGEST_TOKEN\n    request_timeout: 500ms\n",
    )
    .await;
    let client = common::http();
    let base = k.base();
    let (status, retry_after, reply) = post(&client, &base, "slow/1").await;
    assert_eq!(status, 503, "{reply}");
    assert_eq!(retry_after.as_deref(), Some("1"), "{reply}");
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("not decided in time"),
        "{reply}"
    );
    k.wait_line("the slow body's decision", Duration::from_secs(30), |l| {
        l["event_id"] == "azure.arm:slow/1" && l.get("decision").is_some()
    })
    .await;
    let (status, _, reply) = post(&client, &base, "slow/1").await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["status"], "duplicate", "{reply}");
    assert_eq!(decisions_per_event(&k).get("azure.arm:slow/1"), Some(&1));
}
