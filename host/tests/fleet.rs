//! Issue 14, fleet mode: several real `keel run` processes share one real PostgreSQL server
//! (started here: `common::pg`), and the fleet behaves as one host would: the 2021-10-13
//! storm split across three hosts pages once and resubmits at most a tenth of the failed
//! creates fleet-wide. And `state:` values that look like URLs are understood or refused,
//! never taken as file names.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;

use common::pg::PgServer;
use common::{metric, root, Keel};

use common::azure::{
    outage_body as body, post_ingest as post, post_ingest_reply, INGEST_TOKEN as TOKEN,
};

/// `keel check --config` on a configuration whose text is `yaml`: (success, stderr).
fn check_config(dir: &Path, yaml: &str) -> (bool, String) {
    let cfg = dir.join("keel.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["check", "--config"])
        .arg(&cfg)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A URL in `state` is understood (postgres) or refused with its position, and never
/// becomes a file: no file named after a URL appears beside the configuration.
#[test]
fn a_state_url_is_understood_or_refused_never_a_file_name() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (yaml, want) in [
        ("state: mysql://db/keel\n", "keel.yaml:1:8: error: `mysql://` is not a state store Keel knows"),
        ("state: sqlite:///var/lib/keel.db\n", "`sqlite://` is not a state store"),
        (
            "state: postgres://keel:hunter2@db.example.com/keel\n",
            "a password in the URL would sit in keel.yaml",
        ),
        (
            "state: postgres://keel@db.example.com/keel?sslmode=disable\n",
            "`sslmode=disable` is refused off loopback",
        ),
        (
            "state: postgres://keel@db.example.com/keel?sslmode=prefer\n",
            "`sslmode=prefer` is not supported",
        ),
        (
            "state: postgres://keel@db.example.com/keel?application_name=x\n",
            "unknown URL parameter `application_name`",
        ),
        ("state: postgres:///keel\n", "the URL names no host"),
        (
            "state: postgres://keel@127.0.0.1/keel\npostgres:\n  password_env: KEEL_TEST_NO_SUCH_VARIABLE\n",
            "keel.yaml:3:17: error: the environment variable `KEEL_TEST_NO_SUCH_VARIABLE` is not set",
        ),
        (
            "state: postgres://keel@127.0.0.1/keel\npostgres:\n  password_file: missing\n",
            "postgres/password_file",
        ),
        (
            "state: state.db\npostgres:\n  password_env: X\n",
            "`postgres` only applies with `state: postgres://…`",
        ),
    ] {
        let (ok, text) = check_config(d, yaml);
        assert!(!ok, "{yaml} passed:\n{text}");
        let text = text.replace(&format!("{}/", d.display()), "");
        if want.contains("postgres/password_file") {
            assert!(text.contains("cannot read"), "{yaml}:\n{text}");
        } else {
            assert!(text.contains(want), "{yaml}: want {want:?}:\n{text}");
        }
        let files: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "keel.yaml")
            .collect();
        assert!(files.is_empty(), "{yaml} made files: {files:?}");
    }
    // Understood: on loopback without TLS, off loopback with verified TLS.
    for yaml in [
        "state: postgres://keel@127.0.0.1:5432/keel\n",
        "state: postgresql://keel@localhost/keel?connect_timeout=3\n",
        "state: postgres://keel@db.example.com/keel?sslmode=verify-full\n",
        "state: postgres://keel@db.example.com/keel\npostgres:\n  password_env: PATH\n",
    ] {
        let (ok, text) = check_config(d, yaml);
        assert!(ok, "{yaml} refused:\n{text}");
    }
}

/// Three hosts' `keel.yaml`: the same `state: postgres://…` (password from a file), the
/// standard policies, an ingest endpoint each, and one escalation webhook.
fn fleet_configs(
    dir: &Path,
    url: &str,
    pw: &Path,
    hook_url: &str,
    extra: &str,
) -> Vec<std::path::PathBuf> {
    (0..3)
        .map(|h| {
            let cfg = dir.join(format!("host-{h}.yaml"));
            std::fs::write(
                &cfg,
                format!(
                    r#"policies: {policies}
state: {url}
postgres:
  password_file: {pw}
plugin_cache: {cache}
listen: 127.0.0.1:0
self: host-{h}
sources:
  ingest:
    token_env: KEEL_TEST_INGEST_TOKEN
runbooks:
  escalate:
    - name: page
      http: {{ url: "{hook_url}" }}
      timeout: 5s
      backoff: 100ms
{extra}"#,
                    policies = root().join("policies/standard").display(),
                    pw = pw.display(),
                    cache = dir.join(format!("cache-{h}")).display(),
                ),
            )
            .unwrap();
            cfg
        })
        .collect()
}

/// Three ingest hosts (see [`fleet_configs`]) on a fresh database `db` of a server of their
/// own, listening; their escalation webhook, and a client for them.
struct IngestFleet {
    pg: PgServer,
    url: String,
    dir: tempfile::TempDir,
    pw: std::path::PathBuf,
    hook: common::Hook,
    hook_url: String,
    hosts: Vec<Keel>,
    bases: Vec<String>,
    client: reqwest::Client,
}

async fn ingest_fleet(db: &str) -> IngestFleet {
    let pg = PgServer::start();
    let url = pg.create_db(db);
    let (hook, hook_url) = common::webhook().await;
    let dir = tempfile::tempdir().unwrap();
    let pw = pg.password_file(dir.path());
    let env = [("KEEL_TEST_INGEST_TOKEN", TOKEN)];
    let mut hosts: Vec<Keel> = fleet_configs(dir.path(), &url, &pw, &hook_url, "")
        .iter()
        .map(|c| Keel::start(c, &[], &env))
        .collect();
    let mut bases = Vec::new();
    for k in &mut hosts {
        k.wait_listen(Duration::from_secs(60)).await;
        bases.push(k.base());
    }
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    IngestFleet {
        pg,
        url,
        dir,
        pw,
        hook,
        hook_url,
        hosts,
        bases,
        client,
    }
}

/// The 2021-10-13 replay split across three hosts on one PostgreSQL: 300 Windows VM creates
/// failing with the missing VM-agent artifact (and 15 Linux VMs), posted to the hosts in
/// turn. The fleet resubmits at most a tenth of them in all (each host alone would have
/// resubmitted its first ones up to its own budget), every body is decided once, and exactly
/// one page reaches the webhook for the whole fleet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_2021_10_13_storm_split_across_three_hosts_pages_once_and_retries_a_tenth() {
    let IngestFleet {
        pg,
        url,
        dir,
        pw,
        hook,
        hook_url,
        mut hosts,
        bases,
        client,
    } = ingest_fleet("storm").await;

    const WINDOWS: usize = 300;
    const LINUX: usize = 15;
    let bodies = common::azure::outage_bodies(WINDOWS, LINUX);
    let total = bodies.len();
    // Three at a time, one to each host.
    for (n, chunk) in bodies.chunks(3).enumerate() {
        let tasks: Vec<_> = chunk
            .iter()
            .enumerate()
            .map(|(j, b)| {
                let base = bases[(n + j) % 3].clone();
                let (client, b) = (client.clone(), b.clone());
                tokio::spawn(async move { post(&client, &base, b).await })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), 202);
        }
    }

    // Every body decided once, by one of the hosts.
    let deadline = Instant::now() + Duration::from_secs(90);
    let decisions = loop {
        let d: Vec<Value> = hosts
            .iter()
            .flat_map(|k| k.json_lines())
            .filter(|l| l.get("decision").is_some())
            .map(|l| l["decision"].clone())
            .collect();
        if d.len() >= total || Instant::now() > deadline {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(decisions.len(), total, "{}", hosts[0].dump());
    let per_host: Vec<usize> = hosts
        .iter()
        .map(|k| {
            k.json_lines()
                .iter()
                .filter(|l| l.get("decision").is_some())
                .count()
        })
        .collect();
    assert!(per_host.iter().all(|&n| n >= total / 3 - 1), "{per_host:?}");

    let count = |f: &dyn Fn(&Value) -> bool| decisions.iter().filter(|d| f(d)).count();
    let resubmitted = count(&|d| d["action"] == "retry_without_agent" || d["action"] == "retry");
    assert!(resubmitted >= 1, "the first VMs are still retried");
    assert!(
        resubmitted * 10 <= WINDOWS,
        "{resubmitted} of {WINDOWS} failed creates resubmitted across the fleet"
    );
    assert_eq!(count(&|d| d["action"] == "none"), LINUX);
    // Guards held on every host, not only the first: each saw the others' failures.
    for k in &hosts {
        let guarded = k
            .json_lines()
            .iter()
            .filter(|l| l["decision"].get("guard").is_some())
            .count();
        assert!(
            guarded > 0,
            "a host decided without the fleet's history:\n{}",
            k.dump()
        );
    }

    for k in &hosts {
        common::assert_log_shape(&k.json_lines());
    }
    // The database holds each decision once, by the host that made it.
    let by_host = pg.rows(
        "storm",
        "SELECT host, COUNT(*) FROM decisions GROUP BY host ORDER BY host",
    );
    assert_eq!(by_host.len(), 3, "{by_host:?}");
    assert_eq!(
        by_host.iter().map(|r| r.1).sum::<i64>(),
        total as i64,
        "{by_host:?}"
    );

    // `keel history` on the fleet's database: every host's decisions, each with its host.
    let cfgs = fleet_configs(dir.path(), &url, &pw, &hook_url, "");
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args([
            "history",
            "--json",
            "--limit",
            "1000",
            "--since",
            "2000-01-01T00:00:00Z",
            "--config",
        ])
        .arg(&cfgs[1])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let past: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(past.len(), total);
    let hosts_seen: std::collections::BTreeSet<&str> =
        past.iter().filter_map(|d| d["host"].as_str()).collect();
    assert_eq!(hosts_seen.len(), 3, "{hosts_seen:?}");
    // One page for the fleet: wait until the shared outbox is empty.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pending = pg.count(
            "storm",
            "SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL",
        );
        if pending == 0 && !hook.lock().unwrap().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "outbox not drained");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pages: std::collections::HashSet<Option<String>> =
        hook.lock().unwrap().iter().cloned().collect();
    assert_eq!(
        pages.len(),
        1,
        "one page for the fleet: {:?}",
        hook.lock().unwrap()
    );
    // Delivered once: by one host, with one attempt.
    let delivered = pg.count(
        "storm",
        "SELECT COUNT(*) FROM outbox WHERE delivered_at IS NOT NULL",
    );
    assert_eq!(delivered, 1);
    assert_eq!(hook.lock().unwrap().len(), 1, "delivered exactly once");

    for k in &hosts {
        let m = k.metrics().await;
        assert!(metric(&m, "keel_outbox_depth").is_some(), "{m}");
    }
    for k in &mut hosts {
        k.kill();
    }
}

/// Issue 14: ingest keys and attempt counts are the fleet's. Each of 30 failures is reported
/// to all three hosts at once (90 requests in flight): each is accepted once for the fleet
/// (one 202, two `duplicate`), whichever host's batch takes the write lock first; then each
/// VM's next failure (a new key, no `attempt`), reported to another host than before, is
/// stamped as its second attempt. The database holds one decision per failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_reported_to_every_host_is_accepted_once_and_attempts_count_across_hosts() {
    // Bound, not `..`: the directory and the webhook live as long as the hosts.
    let IngestFleet {
        pg,
        dir: _dir,
        hook: _hook,
        mut hosts,
        bases,
        client,
        ..
    } = ingest_fleet("keys").await;
    const VMS: usize = 30;
    let mut tasks = Vec::new();
    for i in 0..VMS {
        let b = body(&format!("web-win-{i}"), "windows", i);
        for base in &bases {
            let (client, base, b) = (client.clone(), base.clone(), b.clone());
            tasks.push(tokio::spawn(async move {
                (i, post_ingest_reply(&client, &base, b).await)
            }));
        }
    }
    let mut replies: Vec<Vec<(u16, Value)>> = vec![Vec::new(); VMS];
    for t in tasks {
        let (i, r) = t.await.unwrap();
        replies[i].push(r);
    }
    for (i, r) in replies.iter().enumerate() {
        let mut statuses: Vec<u16> = r.iter().map(|(s, _)| *s).collect();
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 200, 202], "web-win-{i}: {r:?}");
        for (s, j) in r {
            match s {
                202 => assert_eq!(j["attempt"], 1, "{j}"),
                _ => assert_eq!(j["status"], "duplicate", "{j}"),
            }
        }
    }
    for i in 0..VMS {
        let mut b: Value =
            serde_json::from_str(&body(&format!("web-win-{i}"), "windows", i)).unwrap();
        b["idempotency_key"] = json!(format!("deploy-2021-10-13/web-win-{i}/create/2"));
        let (s, j) = post_ingest_reply(&client, &bases[(i + 1) % 3], b.to_string()).await;
        assert_eq!(s, 202, "{j}");
        assert_eq!(j["attempt"], 2, "web-win-{i}'s second failure: {j}");
    }
    assert_eq!(
        pg.count("keys", "SELECT COUNT(*) FROM decisions"),
        2 * VMS as i64
    );
    assert_eq!(
        pg.count("keys", "SELECT COUNT(*) FROM ingest_keys"),
        2 * VMS as i64
    );
    assert_eq!(
        pg.count("keys", "SELECT COUNT(*) FROM attempts WHERE count = 2"),
        VMS as i64
    );
    for k in &mut hosts {
        k.kill();
    }
}

/// The fleet's write lock (`pg_advisory_xact_lock` of this key in every deciding batch).
const WRITE_LOCK: i64 = 0x6b65_656c_0001;

/// Bodies that arrive while a host waits for the fleet's write lock are decided in the batch
/// that waited for it: under contention each hold of the lock
/// decides more, instead of one batch per wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_arriving_while_the_write_lock_is_awaited_join_the_waiting_batch() {
    // Kept whole: the directory and the webhook live as long as the hosts.
    let mut fleet = ingest_fleet("gather").await;
    let pg = &fleet.pg;
    // Another session holds the write lock until told.
    let (held_tx, held_rx) = std::sync::mpsc::channel::<()>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let port = pg.port;
    let holder = std::thread::spawn(move || {
        let mut c = postgres::Config::new()
            .host("127.0.0.1")
            .port(port)
            .user("keel")
            .password(common::pg::PASSWORD)
            .dbname("gather")
            .connect(postgres::NoTls)
            .unwrap();
        c.execute("SELECT pg_advisory_lock($1)", &[&WRITE_LOCK])
            .unwrap();
        held_tx.send(()).unwrap();
        release_rx.recv().unwrap();
        c.execute("SELECT pg_advisory_unlock($1)", &[&WRITE_LOCK])
            .unwrap();
    });
    held_rx.recv().unwrap();
    let post = |i: usize| {
        let (client, base) = (fleet.client.clone(), fleet.bases[0].clone());
        tokio::spawn(async move {
            post_ingest_reply(&client, &base, body(&format!("web-win-{i}"), "windows", i)).await
        })
    };
    // The first body's batch waits for the lock; the others arrive meanwhile.
    let mut replies = vec![post(0)];
    tokio::time::sleep(Duration::from_millis(500)).await;
    replies.extend((1..20).map(post));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        pg.count("gather", "SELECT COUNT(*) FROM decisions"),
        0,
        "decided without the write lock"
    );
    release_tx.send(()).unwrap();
    for r in replies {
        let (s, j) = r.await.unwrap();
        assert_eq!(s, 202, "{j}");
    }
    holder.join().unwrap();
    assert_eq!(pg.count("gather", "SELECT COUNT(*) FROM decisions"), 20);
    // One batch decided them all.
    let m = fleet.hosts[0].metrics().await;
    assert_eq!(
        metric(&m, "keel_commit_batches_total"),
        Some(1.0),
        "{}",
        m.lines()
            .filter(|l| l.starts_with("keel_commit"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    for k in &mut fleet.hosts {
        k.kill();
    }
}

/// One host of a drain fleet: its own Scheduled Events stub announcing a Preempt of `vms`
/// (`self` names the host, and a test policy drains every VM named), the fleet's database under
/// `postgres.identity`, the budget `budget`, and a drain runbook `steps`.
async fn drain_host(
    dir: &Path,
    name: &str,
    url: &str,
    pw: &Path,
    vms: &[String],
    budget: &str,
    steps: &str,
) -> std::path::PathBuf {
    let se = std::sync::Arc::new(std::sync::Mutex::new(common::Se {
        incarnation: 1,
        events: vec![json!({
            // One event per host, its id derived from the host's name.
            "EventId": format!("5D1B0C2A-0000-4000-8000-{:012X}", name.bytes().map(u64::from).product::<u64>() % (1 << 48)),
            "EventStatus": "Scheduled", "EventType": "Preempt",
            "ResourceType": "VirtualMachine", "Resources": vms,
            "NotBefore": common::not_before_in_15_minutes(),
            "Description": "The VM is being preempted.", "EventSource": "Platform",
            "DurationInSeconds": -1,
        })],
        ..common::Se::default()
    }));
    let se_url = common::se_stub(se).await;
    let cfg = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &cfg,
        format!(
            r#"policies: {policies}
state: {url}
postgres:
  password_file: {pw}
  identity: {name}
plugin_cache: {cache}
listen: 127.0.0.1:0
self: {name}
sources:
  azure_scheduled_events:
    url: {se_url}
    interval: 200ms
    timeout: 2s
    first_timeout: 5s
limits:
  concurrent_drains: 8
{budget}runbooks:
  drain:
{steps}"#,
            policies = root().join("host/tests/data/drain-every-vm").display(),
            pw = pw.display(),
            cache = dir.join(format!("cache-{name}")).display(),
        ),
    )
    .unwrap();
    cfg
}

/// RFC 3339 UTC with milliseconds, as the store writes it (compared as text).
type Stamp = String;

/// The most units of budget `budget` ever in flight at once, from the lease rows: each lease
/// occupies its unit from `acquired_at` until `released_at` (no bake here), or `expires_at`
/// when it was never released.
fn most_in_flight(pg: &PgServer, db: &str, budget: &str) -> (usize, usize) {
    let rows = pg.texts(
        db,
        &format!(
            "SELECT unit, acquired_at, COALESCE(released_at, expires_at), holder FROM leases
             WHERE budget = '{budget}'"
        ),
    );
    let leases: Vec<(String, Stamp, Stamp)> = rows
        .iter()
        .map(|r| {
            (
                r[0].clone().unwrap(),
                r[1].clone().unwrap(),
                r[2].clone().unwrap(),
            )
        })
        .collect();
    let holders: std::collections::HashSet<String> = rows
        .iter()
        .map(|r| r[3].clone().unwrap().split('#').next().unwrap().to_string())
        .collect();
    let mut most = 0;
    for (_, t, _) in &leases {
        let units: std::collections::HashSet<&str> = leases
            .iter()
            .filter(|(_, a, e)| a <= t && t < e)
            .map(|(u, _, _)| u.as_str())
            .collect();
        most = most.max(units.len());
    }
    (most, holders.len())
}

/// Issue 14: three hosts × 50 preempted VMs across 5 update domains (`h<host>-ud<n>-vm<i>`),
/// one fleet budget of 2 update domains at a time. Every VM is drained exactly once, and the
/// database's own lease rows show at most 2 update domains in flight at any moment, taken by
/// all three hosts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_draining_150_vms_never_exceed_the_fleet_budget() {
    let pg = PgServer::start();
    let url = pg.create_db("budget");
    let dir = tempfile::tempdir().unwrap();
    let pw = pg.password_file(dir.path());
    let log = dir.path().join("drains.log");
    let budget = r#"budgets:
  - name: ud
    key: '"fleet"'
    per: event.resource.name.split("-")[1]
    max_in_flight: 2
    lease_ttl: 10s
"#;
    let steps = format!(
        "    - name: work\n      exec: [/bin/sh, -c, 'echo \"$KEEL_RESOURCE_NAME\" >> \"$0\"; sleep 0.2', {}]\n      timeout: 30s\n",
        log.display()
    );
    let mut hosts = Vec::new();
    for h in 0..3 {
        let vms: Vec<String> = (0..50).map(|i| format!("h{h}-ud{}-vm{i}", i % 5)).collect();
        let cfg = drain_host(
            dir.path(),
            &format!("host-{h}"),
            &url,
            &pw,
            &vms,
            budget,
            &steps,
        )
        .await;
        hosts.push(Keel::start(&cfg, &[], &[]));
    }
    let deadline = Instant::now() + Duration::from_secs(240);
    let drained = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if lines.len() >= 150 || Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let unique: std::collections::HashSet<&String> = drained.iter().collect();
    assert_eq!(drained.len(), 150, "{}", hosts[0].dump());
    assert_eq!(unique.len(), 150, "a VM drained twice");
    // Each host drained its own VMs.
    for (h, k) in hosts.iter().enumerate() {
        let mine = drained
            .iter()
            .filter(|v| v.starts_with(&format!("h{h}-")))
            .count();
        assert_eq!(mine, 50, "{}", k.dump());
    }
    let (most, holders) = most_in_flight(&pg, "budget", "ud");
    assert!(most <= 2, "{most} update domains in flight at once");
    assert_eq!(most, 2, "the budget's two slots were used together");
    assert_eq!(holders, 3, "every host took slots");
    let leases = pg.count("budget", "SELECT COUNT(*) FROM leases WHERE budget = 'ud'");
    assert_eq!(leases, 150);
    for k in &mut hosts {
        k.kill();
    }
}

/// Issue 14: a host killed (SIGKILL) while its drain holds the fleet's one slot: the slot is
/// free at the lease's TTL, and another host's drain, held by the budget until then, takes
/// it and runs (not before the dead lease expired).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_hosts_slot_frees_at_its_ttl_and_another_host_takes_the_waiting_drain() {
    let pg = PgServer::start();
    let url = pg.create_db("takeover");
    let dir = tempfile::tempdir().unwrap();
    let pw = pg.password_file(dir.path());
    let log = dir.path().join("drains.log");
    let budget = r#"budgets:
  - name: one
    key: '"fleet"'
    max_in_flight: 1
    lease_ttl: 3s
"#;
    // A drain that never ends on its own (it waits for a file nobody writes).
    let steps = format!(
        "    - name: work\n      exec: [/bin/sh, -c, 'echo \"start $KEEL_RESOURCE_NAME\" >> \"$0\"; while [ ! -e \"$0.never\" ]; do sleep 0.1; done', {}]\n      timeout: 600s\n",
        log.display()
    );
    let started = |vm: &str| {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .any(|l| l == format!("start {vm}"))
    };
    let start = |name: &'static str, vm: &'static str| {
        let (dir, url, pw, steps) = (dir.path(), url.clone(), pw.clone(), steps.clone());
        async move {
            let cfg = drain_host(dir, name, &url, &pw, &[vm.into()], budget, &steps).await;
            Keel::start(&cfg, &[], &[])
        }
    };
    let mut ka = start("host-a", "vm-a").await;
    ka.wait_until("host-a's drain started", Duration::from_secs(60), || {
        started("vm-a")
    })
    .await;
    let mut kb = start("host-b", "vm-b").await;
    kb.wait_line(
        "host-b's drain held by the budget",
        Duration::from_secs(60),
        |l| l["held"]["by"] == "budget",
    )
    .await;
    assert!(!started("vm-b"));
    ka.kill();
    let killed = chrono::Utc::now();
    kb.wait_until("host-b's drain started", Duration::from_secs(60), || {
        started("vm-b")
    })
    .await;
    let rows = pg.texts(
        "takeover",
        "SELECT holder, acquired_at, expires_at FROM leases WHERE budget = 'one' ORDER BY acquired_at",
    );
    assert_eq!(rows.len(), 2, "{rows:?}");
    let (dead, taken) = (&rows[0], &rows[1]);
    assert!(
        dead[0].as_deref().unwrap().starts_with("host-a#"),
        "{rows:?}"
    );
    assert!(
        taken[0].as_deref().unwrap().starts_with("host-b#"),
        "{rows:?}"
    );
    // host-b took the slot only once host-a's lease had expired, within a few seconds of it.
    assert!(
        taken[1] >= dead[2],
        "taken at {:?} before the dead lease expired at {:?}",
        taken[1],
        dead[2]
    );
    let expired = chrono::DateTime::parse_from_rfc3339(dead[2].as_deref().unwrap()).unwrap();
    assert!(
        expired <= killed + chrono::Duration::seconds(4),
        "the dead lease outlived its TTL"
    );
    kb.kill();
}

/// Issue 14: the database restarted in the middle of a run (stopped at once, as a crash
/// would, and started again seconds later) while two hosts take ingest bodies whose runbook
/// has an effect: `/readyz` is red while it is away, bodies refused meanwhile are accepted
/// once it is back, and in the end every body has exactly one decision and its effect ran
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_mid_run_loses_no_decision_and_runs_no_effect_twice() {
    let mut pg = PgServer::start();
    let url = pg.create_db("restart");
    let (_hook, hook_url) = common::webhook().await;
    let dir = tempfile::tempdir().unwrap();
    let pw = pg.password_file(dir.path());
    let effects = dir.path().join("effects.log");
    // No guards: every failed create is retried (one effect each).
    let extra = format!(
        r#"  retry_without_agent:
    - name: resubmit
      exec: [/bin/sh, -c, 'echo "$KEEL_IDEMPOTENCY_KEY" >> "$0"', {}]
      timeout: 10s
guards:
  retry_budget: {{ enabled: false }}
  storm: {{ enabled: false }}
  flap: {{ enabled: false }}
"#,
        effects.display()
    );
    let env = [("KEEL_TEST_INGEST_TOKEN", TOKEN)];
    let mut hosts: Vec<Keel> = fleet_configs(dir.path(), &url, &pw, &hook_url, &extra)
        .iter()
        .take(2)
        .map(|c| Keel::start(c, &[], &env))
        .collect();
    let mut bases = Vec::new();
    for k in &mut hosts {
        k.wait_listen(Duration::from_secs(60)).await;
        bases.push(k.base());
    }
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    const N: usize = 60;
    // A body is posted until it is accepted (202), as a deployment tool would.
    let accept = |i: usize| {
        let (client, base) = (client.clone(), bases[i % 2].clone());
        let b = body(&format!("app-win-{i}"), "windows", i * 50);
        async move {
            for _ in 0..600 {
                let r = client
                    .post(format!("{base}/ingest"))
                    .bearer_auth(TOKEN)
                    .header("content-type", "application/json")
                    .body(b.clone())
                    .timeout(Duration::from_secs(30))
                    .send()
                    .await;
                if r.is_ok_and(|r| r.status().as_u16() == 202) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("body {i} never accepted");
        }
    };
    for i in 0..N / 3 {
        accept(i).await;
    }
    pg.stop();
    // While it is away: the hosts say so on /readyz, and new bodies are not accepted.
    // A probe posts a body (its batch fails) and reads /readyz: whether it is red.
    let probe = |name: String| {
        let (client, base) = (client.clone(), bases[0].clone());
        async move {
            let _ = client
                .post(format!("{base}/ingest"))
                .bearer_auth(TOKEN)
                .header("content-type", "application/json")
                .body(body(&name, "linux", 0))
                .send()
                .await;
            let r = client.get(format!("{base}/readyz")).send().await.unwrap();
            let status = r.status().as_u16();
            let report: Value = r.json().await.unwrap();
            (
                status == 503 && report["state"]["reachable"] == false,
                report,
            )
        }
    };
    let mut red = false;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !red && Instant::now() < deadline {
        red = probe("probe".into()).await.0;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(red, "/readyz stayed green with the database away");
    // And it stays red while batches keep failing on the unreachable database.
    for i in 0..5 {
        let (red, report) = probe(format!("probe-{i}")).await;
        assert!(
            red,
            "probe {i}: /readyz turned green with the database still away: {report}"
        );
    }
    let during: Vec<_> = (N / 3..2 * N / 3)
        .map(|i| tokio::spawn(accept(i)))
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    pg.start_server();
    for t in during {
        t.await.unwrap();
    }
    for i in 2 * N / 3..N {
        accept(i).await;
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    let keys = loop {
        let text = std::fs::read_to_string(&effects).unwrap_or_default();
        let keys: Vec<String> = text.lines().map(str::to_string).collect();
        if keys.len() >= N || Instant::now() > deadline {
            break keys;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let keys_now = std::fs::read_to_string(&effects).unwrap_or_default();
    let unique: std::collections::HashSet<&str> = keys_now.lines().collect();
    assert_eq!(keys.len(), N, "{}\n{}", hosts[0].dump(), hosts[1].dump());
    assert_eq!(
        unique.len(),
        keys_now.lines().count(),
        "an effect ran twice: {keys_now}"
    );
    let decided = pg.count(
        "restart",
        "SELECT COUNT(*) FROM decisions WHERE event_id LIKE '%app-win-%'",
    );
    let events = pg.count(
        "restart",
        "SELECT COUNT(DISTINCT event_id) FROM decisions WHERE event_id LIKE '%app-win-%'",
    );
    assert_eq!((decided, events), (N as i64, N as i64));
    let done = pg.count(
        "restart",
        "SELECT COUNT(*) FROM decisions WHERE event_id LIKE '%app-win-%' AND runbook = 'done'",
    );
    assert_eq!(done, N as i64, "every runbook finished and was recorded");
    for k in &mut hosts {
        k.kill();
    }
}

/// `keel <args> --config <config>`: (success, stdout, stderr).
fn keel_cli(args: &[&str], config: &Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Issue 14, "TLS with certificate verification": a server with a certificate for
/// `localhost` signed by a CA of its own. With that CA as `postgres.ca_file` the fleet's
/// database works (`keel pause` writes, `keel status` reads it back); with another CA, or the
/// default roots, the connection is refused for its certificate (so TLS was in use), and
/// nothing falls back to plain text.
#[test]
fn over_tls_the_servers_certificate_is_verified_against_the_ca_file() {
    let pg = PgServer::start_tls();
    pg.create_db("tls");
    let dir = tempfile::tempdir().unwrap();
    let pw = pg.password_file(dir.path());
    let other_ca = dir.path().join("other-ca.pem");
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=another-ca", "-keyout"])
        .arg(dir.path().join("other-ca.key"))
        .arg("-out")
        .arg(&other_ca)
        .output()
        .unwrap();
    assert!(out.status.success());
    let config = |name: &str, ca: Option<&Path>| {
        let cfg = dir.path().join(format!("{name}.yaml"));
        let ca = ca.map_or(String::new(), |c| format!("  ca_file: {}\n", c.display()));
        std::fs::write(
            &cfg,
            format!(
                "state: postgres://keel@localhost:{}/tls?sslmode=verify-full\npostgres:\n  password_file: {}\n{ca}self: tls-host\n",
                pg.port,
                pw.display()
            ),
        )
        .unwrap();
        cfg
    };
    let good = config("good", pg.ca.as_deref());
    let (ok, _, err) = keel_cli(&["pause", "--reason", "over tls"], &good);
    assert!(ok, "{err}");
    let (ok, out, err) = keel_cli(&["status", "--json"], &good);
    assert!(ok, "{err}");
    let status: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["pauses"][0]["reason"], "over tls", "{status}");
    for (name, ca) in [("other", Some(other_ca.as_path())), ("roots", None)] {
        let (ok, _, err) = keel_cli(&["status"], &config(name, ca));
        assert!(!ok, "{name}: connected");
        assert!(
            err.contains("certificate") || err.contains("UnknownIssuer"),
            "{name}: {err}"
        );
    }
}

/// Issue 14: TLS asked of a server that does not speak it is refused, never carried on in
/// plain text (a downgrade anyone in between could force).
#[test]
fn a_server_without_tls_is_refused_not_used_in_plain_text() {
    let pg = PgServer::start();
    pg.create_db("plain");
    let dir = tempfile::tempdir().unwrap();
    let pw = pg.password_file(dir.path());
    let cfg = dir.path().join("keel.yaml");
    std::fs::write(
        &cfg,
        format!(
            "state: postgres://keel@localhost:{}/plain?sslmode=verify-full\npostgres:\n  password_file: {}\nself: plain-host\n",
            pg.port,
            pw.display()
        ),
    )
    .unwrap();
    let (ok, _, err) = keel_cli(&["pause", "--reason", "x"], &cfg);
    assert!(!ok, "connected without TLS");
    assert!(err.contains("TLS") || err.contains("SSL"), "{err}");
    assert_eq!(
        pg.count(
            "plain",
            "SELECT COUNT(*) FROM pg_tables WHERE tablename = 'pauses'"
        ),
        0
    );
}
