//! End-to-end benchmarks of the real `keel run` binary (`cargo bench -p keel-host --bench
//! host`), with durable state (SQLite WAL, `synchronous=FULL`):
//!
//! 1. **ingest throughput**: concurrent clients `POST /ingest` (the 2021-10-13 VM-agent failure,
//!    a new idempotency key and VM each time); an event counts when its `202` arrives, which
//!    the host sends only after the transaction holding the decision committed. Measured with
//!    group commit (`commit_batch_max: 256`, the default) and without (`1`) in the same run;
//!    the ratio is the figure to compare.
//! 2. **latency from poll to first step**: a loopback Scheduled Events stub announces a Spot
//!    Preempt; the drain runbook's first step is an `http` step to a receiver in this process.
//!    Latency = the receiver's arrival time − the time the stub first served a document holding
//!    the event. p50, p99 and max over the samples.
//!
//! 3. **ingest flood** (loopback only): 500 connections post 40 bodies each (a new key each)
//!    as fast as they are answered, against an ingest queue of 64: the 202 and 503 counts, the
//!    host's peak RSS (`VmHWM`) before and after, and a check (asserted) that every accepted
//!    body is decided exactly once and no refused body at all (decision-log lines counted per
//!    event id).
//!
//! With budgets: the ingest throughput again with a budget on every remediation (its members
//! noted per event), and the latency again with a budget whose slot the drain takes before its
//! first step (one more committed transaction); each printed beside the figure without, and
//! as a ratio.
//!
//! Timing figures are printed, not asserted (BENCHMARKS.md records them). Environment:
//! `KEEL_BENCH_SECONDS` (default 5) per throughput run, `KEEL_BENCH_CLIENTS` (default 64),
//! `KEEL_BENCH_CONCURRENT` (the host's `sources.ingest.concurrent_requests` in the ingest
//! and A/B parts; its default, 64, when unset: set it with more clients, or they get 503s),
//! `KEEL_BENCH_SAMPLES` (default 200) latency samples, `KEEL_BENCH_FLOOD_CLIENTS` (default
//! 500) and `KEEL_BENCH_FLOOD_PER_CLIENT` (default 40) for the flood; `KEEL_BENCH_PARTS`
//! (default `ingest,flood,latency,fleet,fleet-latency`) runs only the named parts, in that order (`fleet`
//! compares with the SQLite ingest figure when `ingest` ran; `KEEL_BENCH_FLEET=0` is the
//! same as leaving `fleet` out). `KEEL_BENCH_PARTS=ab KEEL_BENCH_BASELINE=/path/to/keel`
//! compares an older build's group-commit ingest with this one's, in turns
//! (`KEEL_BENCH_ROUNDS`, default 3), and prints the ratio of the medians; `fleet-ab` does
//! the same with the fleet's ingest, 1 and 3 hosts on one PostgreSQL. `KEEL_BENCH_PG_STATS=1`
//! prints, after each fleet ingest run, the statements the server spent the most time on
//! (`pg_stat_statements`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

const TOKEN: &str = "keel-bench-token-0123456789abcdef";
const VM: &str = "bench-vm";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Whether `KEEL_BENCH_PARTS` (all parts when unset) names `part`.
fn part(part: &str) -> bool {
    std::env::var("KEEL_BENCH_PARTS").map_or(true, |v| v.split(',').any(|p| p.trim() == part))
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A running `keel run`; its listen address, read from its first log line, and how many
/// decision lines the log held per event id (counted only when asked: parsing costs CPU).
struct Keel {
    child: Child,
    base: String,
    decided: Arc<Mutex<HashMap<String, u32>>>,
}

impl Keel {
    fn start(config: &Path) -> Keel {
        Keel::start_counting(config, false)
    }

    fn start_counting(config: &Path, count: bool) -> Keel {
        Keel::start_bin(config, count, Path::new(env!("CARGO_BIN_EXE_keel")))
    }

    /// `keel run` from the binary `bin` (the A/B part runs an older build beside this one).
    fn start_bin(config: &Path, count: bool, bin: &Path) -> Keel {
        let mut child = Command::new(bin)
            .args(["run", "--config"])
            .arg(config)
            .env("KEEL_BENCH_TOKEN", TOKEN)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let mut lines = BufReader::new(out).lines();
        let first = lines.next().unwrap().unwrap();
        let v: Value = serde_json::from_str(&first).unwrap();
        let base = format!("http://{}", v["listen"].as_str().unwrap());
        // Keep draining the decision log so that the host never blocks on a full pipe.
        let decided = Arc::new(Mutex::new(HashMap::new()));
        let d = decided.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if !count || !line.contains("\"decision\":") {
                    continue;
                }
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if let Some(id) = v["event_id"].as_str() {
                        *d.lock().unwrap().entry(id.to_string()).or_insert(0) += 1;
                    }
                }
            }
        });
        Keel {
            child,
            base,
            decided,
        }
    }

    /// The process's peak resident set (`VmHWM`), in KiB.
    fn peak_rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Keel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `keel.yaml` in `dir`: the policies, a SQLite state in `dir` (unless `body` gives its own
/// `state`), loopback, and `body`.
fn write_config(dir: &Path, policies: &Path, body: &str) -> PathBuf {
    let config = dir.join("keel.yaml");
    let state = if body.starts_with("state:") || body.contains("\nstate:") {
        String::new()
    } else {
        format!("state: {}\n", dir.join("state.db").display())
    };
    std::fs::write(
        &config,
        format!(
            "policies: {}\n{state}listen: 127.0.0.1:0\nself: {VM}\n{body}",
            policies.display(),
        ),
    )
    .unwrap();
    config
}

// ------------------------------------------------------------------------------------------
// 1. Ingest throughput.

/// A budget on every remediation, keyed by region (its group members are noted for every
/// event decided, in the batch's transaction).
const INGEST_BUDGET: &str = r#"budgets:
  - name: per-region
    key: 'has(event.resource.region) ? event.resource.region : "-"'
    actions: [drain, retry, retry_without_agent]
    max_in_flight: "50%"
"#;

/// A budget the drain takes a slot of before its first step (a lease written and committed).
const DRAIN_BUDGET: &str = r#"budgets:
  - name: one-at-a-time
    key: '"fleet"'
    per: event.resource.name
    max_in_flight: 1
"#;

async fn ingest_run(batch: usize, clients: usize, secs: u64, extra: &str) -> (f64, u64) {
    ingest_run_bin(
        batch,
        clients,
        secs,
        extra,
        Path::new(env!("CARGO_BIN_EXE_keel")),
    )
    .await
}

async fn ingest_run_bin(
    batch: usize,
    clients: usize,
    secs: u64,
    extra: &str,
    bin: &Path,
) -> (f64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &root().join("policies/standard"),
        &format!(
            "commit_batch_max: {batch}\nsources:\n  ingest:\n    token_env: KEEL_BENCH_TOKEN\n{extra}"
        ),
    );
    let keel = Keel::start_bin(&config, false, bin);
    let r = ingest_load(
        std::slice::from_ref(&keel.base),
        &[keel.child.id()],
        clients,
        secs,
        "",
    )
    .await;
    drop(keel);
    r
}

/// CPU time (user + system, in clock ticks) a process has used: fields 14 and 15 of
/// `/proc/<pid>/stat` (after the command name, which may hold spaces). 0 when unreadable.
fn cpu_ticks(pid: &str) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (the state).
    let field = |n: usize| {
        f.get(n - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(14) + field(15)
}

/// The CPU per accepted body of the last [`ingest_load`]: the hosts', the whole machine's,
/// the hosts' deciding threads' (µs), for the A/B part's medians.
static LAST_COST: std::sync::Mutex<(f64, f64, f64)> = std::sync::Mutex::new((0.0, 0.0, 0.0));

/// The whole machine's busy CPU time (every process, the kernel's own threads, interrupts),
/// in clock ticks: the `cpu` line of `/proc/stat` less its idle and I/O-wait columns.
fn machine_ticks() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0;
    };
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0;
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is counted in user).
    v.iter().take(8).sum::<u64>() - v.get(3).copied().unwrap_or(0) - v.get(4).copied().unwrap_or(0)
}

/// CPU time (ns) the threads of process `pid` named `name` have run (the first field of
/// `/proc/<pid>/task/<tid>/schedstat`).
fn thread_run_ns(pid: &str, name: &str) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name))
        .filter_map(|t| {
            std::fs::read_to_string(t.path().join("schedstat"))
                .ok()
                .and_then(|s| {
                    s.split_whitespace()
                        .next()
                        .and_then(|v| v.parse::<u64>().ok())
                })
        })
        .sum()
}

/// Bytes a process caused to be written to storage (`write_bytes` of `/proc/<pid>/io`).
fn written_bytes(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|l| l.strip_prefix("write_bytes:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// CPU ticks of every running `postgres` process (the benchmark's server and its backends).
fn postgres_ticks() -> u64 {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
        })
        .map(|pid| cpu_ticks(&pid))
        .sum()
}

/// `clients` keep-alive connections post the 2021-10-13 failure (a new key and VM each time,
/// `tag` in both) for `secs` seconds after one of warm-up, spread over the hosts at `bases`
/// in turn: accepted (202) bodies per second, and how many other answers came. Prints the
/// CPU time each accepted body cost the hosts (`pids`), the load generator (this process)
/// and any PostgreSQL server running, over the counted seconds.
async fn ingest_load(
    bases: &[String],
    pids: &[u32],
    clients: usize,
    secs: u64,
    tag: &str,
) -> (f64, u64) {
    let template: Value = serde_json::from_str(
        &std::fs::read_to_string(
            root().join("engine/tests/data/ingest/vm-agent-windows-2021-10-13.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let other = Arc::new(AtomicU64::new(0));
    let seq = Arc::new(AtomicU64::new(0));
    let counting = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The body with a placeholder for the request's number; a minimal HTTP/1.1 keep-alive
    // client (like wrk) so that the load generator takes as little of the 2 cores as it can.
    let mut body = template.clone();
    body["idempotency_key"] = json!(format!("bench-{tag}@N@"));
    body["resource"]["name"] = json!(format!("web-win-{tag}@N@"));
    body["resource"]["id"] = json!(format!(
        "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/web/providers/Microsoft.Compute/virtualMachines/web-win-{tag}@N@"
    ));
    let body = Arc::new(body.to_string());
    let mut tasks = Vec::new();
    for c in 0..clients {
        let addr = bases[c % bases.len()]
            .trim_start_matches("http://")
            .to_string();
        let body = body.clone();
        let (accepted, other, seq) = (accepted.clone(), other.clone(), seq.clone());
        let (counting, stop) = (counting.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
            let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
            stream.set_nodelay(true).unwrap();
            let mut stream = tokio::io::BufReader::new(stream);
            let mut line = String::new();
            while !stop.load(Ordering::Relaxed) {
                let n = seq.fetch_add(1, Ordering::Relaxed);
                let b = body.replace("@N@", &n.to_string());
                let req = format!(
                    "POST /ingest HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
                    b.len()
                );
                stream.get_mut().write_all(req.as_bytes()).await.unwrap();
                line.clear();
                stream.read_line(&mut line).await.unwrap();
                let ok = line.starts_with("HTTP/1.1 202");
                let mut len = 0usize;
                loop {
                    line.clear();
                    stream.read_line(&mut line).await.unwrap();
                    if line == "\r\n" || line.is_empty() {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut sink = vec![0u8; len];
                stream.read_exact(&mut sink).await.unwrap();
                if counting.load(Ordering::Relaxed) {
                    if ok {
                        accepted.fetch_add(1, Ordering::Relaxed);
                    } else {
                        other.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    // One second of warm-up, then count.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ticks = || {
        let hosts: u64 = pids.iter().map(|p| cpu_ticks(&p.to_string())).sum();
        let written: u64 = pids.iter().map(|p| written_bytes(&p.to_string())).sum();
        let deciding: u64 = pids
            .iter()
            .map(|p| thread_run_ns(&p.to_string(), "keel-decide"))
            .sum();
        (
            hosts,
            cpu_ticks("self"),
            postgres_ticks(),
            machine_ticks(),
            written,
            deciding,
        )
    };
    let before = ticks();
    counting.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    counting.store(false, Ordering::Relaxed);
    let elapsed = t0.elapsed().as_secs_f64();
    let after = ticks();
    let n = accepted.load(Ordering::Relaxed).max(1) as f64;
    // Clock ticks are 1/100 s on Linux (`getconf CLK_TCK`).
    let per = |a: u64, b: u64| (b.saturating_sub(a)) as f64 * 1e4 / n;
    println!(
        "    CPU per accepted body: hosts {:.0} µs, load generator {:.0} µs, PostgreSQL {:.0} µs",
        per(before.0, after.0),
        per(before.1, after.1),
        per(before.2, after.2),
    );
    let deciding = after.5.saturating_sub(before.5) as f64 / n / 1000.0;
    println!(
        "    the whole machine's busy CPU per body {:.0} µs (with the kernel's threads), the deciding thread's {deciding:.1} µs ({:.0}% of the time); the hosts wrote {:.1} KB a body to storage",
        per(before.3, after.3),
        after.5.saturating_sub(before.5) as f64 / 1e7 / elapsed / pids.len().max(1) as f64,
        after.4.saturating_sub(before.4) as f64 / n / 1000.0,
    );
    if let Ok(mut last) = LAST_COST.lock() {
        *last = (per(before.0, after.0), per(before.3, after.3), deciding);
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    (
        accepted.load(Ordering::Relaxed) as f64 / elapsed,
        other.load(Ordering::Relaxed),
    )
}

// ------------------------------------------------------------------------------------------
// 3. A bounded flood: many more bodies at once than the ingest queue holds.

/// What a flood produced.
struct Flood {
    accepted: u64,
    refused: u64,
    other: u64,
    rss_before_kib: u64,
    rss_after_kib: u64,
    /// Accepted bodies not decided exactly once, and refused ones decided.
    wrong: Vec<String>,
}

/// `clients` connections each post `per_client` bodies (a new key each) as fast as they are
/// answered, against `queue: 64`; every accepted body must be decided exactly once, and no
/// refused one at all. Loopback only.
async fn flood(clients: usize, per_client: usize) -> Flood {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &root().join("policies/standard"),
        "sources:\n  ingest:\n    token_env: KEEL_BENCH_TOKEN\n    queue: 64\n    concurrent_requests: 256\nlimits:\n  connections: 4096\n",
    );
    let keel = Keel::start_counting(&config, true);
    let addr = keel.base.trim_start_matches("http://").to_string();
    let template = std::fs::read_to_string(
        root().join("engine/tests/data/ingest/vm-agent-windows-2021-10-13.json"),
    )
    .unwrap();
    let mut body: Value = serde_json::from_str(&template).unwrap();
    body["idempotency_key"] = json!("flood-@N@");
    body["resource"]["name"] = json!("web-win-@N@");
    body["resource"]["id"] = json!(
        "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/web/providers/Microsoft.Compute/virtualMachines/web-win-@N@"
    );
    let body = Arc::new(body.to_string());
    let rss_before_kib = keel.peak_rss_kib();
    let outcomes = Arc::new(Mutex::new(Vec::<(u64, u16)>::new()));
    let seq = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (addr, body, outcomes, seq) =
            (addr.clone(), body.clone(), outcomes.clone(), seq.clone());
        tasks.push(tokio::spawn(async move {
            use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
            let Ok(stream) = tokio::net::TcpStream::connect(&addr).await else {
                return;
            };
            let mut stream = tokio::io::BufReader::new(stream);
            let mut line = String::new();
            for _ in 0..per_client {
                let n = seq.fetch_add(1, Ordering::Relaxed);
                let b = body.replace("@N@", &n.to_string());
                let req = format!(
                    "POST /ingest HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
                    b.len()
                );
                if stream.get_mut().write_all(req.as_bytes()).await.is_err() {
                    outcomes.lock().unwrap().push((n, 0));
                    return;
                }
                line.clear();
                if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                    outcomes.lock().unwrap().push((n, 0));
                    return;
                }
                let status: u16 = line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
                let mut len = 0usize;
                loop {
                    line.clear();
                    if stream.read_line(&mut line).await.unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut sink = vec![0u8; len];
                let _ = stream.read_exact(&mut sink).await;
                outcomes.lock().unwrap().push((n, status));
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    // Every answer is in: a 202 was sent after its decision was committed and logged; give
    // the log reader a moment to catch up before counting.
    let outcomes = outcomes.lock().unwrap().clone();
    let accepted_ids: Vec<String> = outcomes
        .iter()
        .filter(|(_, s)| *s == 202)
        .map(|(n, _)| format!("azure.arm:flood-{n}"))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let all = {
            let d = keel.decided.lock().unwrap();
            accepted_ids.iter().all(|id| d.contains_key(id))
        };
        if all {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rss_after_kib = keel.peak_rss_kib();
    let decided = keel.decided.lock().unwrap().clone();
    let mut wrong = Vec::new();
    for (n, status) in &outcomes {
        let id = format!("azure.arm:flood-{n}");
        let times = decided.get(&id).copied().unwrap_or(0);
        if (*status == 202 && times != 1) || (*status != 202 && times != 0) {
            wrong.push(format!("{id}: HTTP {status}, decided {times} times"));
        }
    }
    drop(keel);
    Flood {
        accepted: outcomes.iter().filter(|(_, s)| *s == 202).count() as u64,
        refused: outcomes.iter().filter(|(_, s)| *s == 503).count() as u64,
        other: outcomes
            .iter()
            .filter(|(_, s)| *s != 202 && *s != 503)
            .count() as u64,
        rss_before_kib,
        rss_after_kib,
        wrong,
    }
}

// ------------------------------------------------------------------------------------------
// 2. Latency from the poll response that first holds an event to the runbook's first step.

#[derive(Default)]
struct Stub {
    incarnation: i64,
    events: Vec<Value>,
    /// EventId (lower case) → when a served document first held it.
    first_served: HashMap<String, Instant>,
    /// EventId (lower case) → when the first step's request arrived.
    arrived: HashMap<String, Instant>,
}

type St = Arc<Mutex<Stub>>;

async fn se_get(State(st): State<St>) -> Json<Value> {
    let mut s = st.lock().unwrap();
    let now = Instant::now();
    let ids: Vec<String> = s
        .events
        .iter()
        .map(|e| e["EventId"].as_str().unwrap().to_lowercase())
        .collect();
    for id in ids {
        s.first_served.entry(id).or_insert(now);
    }
    Json(json!({"DocumentIncarnation": s.incarnation, "Events": s.events}))
}

async fn hook(State(st): State<St>, _h: HeaderMap, Json(body): Json<Value>) -> StatusCode {
    let now = Instant::now();
    // `event_id` is `azure.scheduled_events:<eventid>/<vm>`.
    if let Some(id) = body["event_id"]
        .as_str()
        .and_then(|s| s.split(':').nth(1))
        .and_then(|s| s.split('/').next())
    {
        st.lock()
            .unwrap()
            .arrived
            .entry(id.to_string())
            .or_insert(now);
    }
    StatusCode::OK
}

/// One host polling its own Scheduled Events stub, with `extra` in its configuration.
struct LatencyRig {
    st: St,
    _keel: Keel,
    _dir: tempfile::TempDir,
}

async fn latency_rig(extra: &str) -> LatencyRig {
    let st: St = Arc::default();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/metadata/scheduledevents", get(se_get))
        .route("/hook", post(hook))
        .with_state(st.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &root().join("policies/standard"),
        &format!(
            r#"sources:
  azure_scheduled_events:
    url: http://{addr}/metadata/scheduledevents?api-version=2020-07-01
    interval: 20ms
    timeout: 2s
    first_timeout: 5s
runbooks:
  drain:
    - name: notify
      http: {{ url: "http://{addr}/hook" }}
      timeout: 5s
{extra}"#
        ),
    );
    let keel = Keel::start(&config);
    LatencyRig {
        st,
        _keel: keel,
        _dir: dir,
    }
}

/// Announces event `i` on `rig`'s stub and waits for its first step: the latency.
async fn latency_sample(rig: &LatencyRig, i: usize) -> Duration {
    let st = &rig.st;
    let id = format!("0d7b3d39-6a5b-4f0e-8e3a-{i:012x}");
    let not_before = (chrono::Utc::now() + chrono::Duration::seconds(60))
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    {
        let mut s = st.lock().unwrap();
        s.events = vec![json!({
            "EventId": id.to_uppercase(), "EventStatus": "Scheduled", "EventType": "Preempt",
            "ResourceType": "VirtualMachine", "Resources": [VM], "NotBefore": not_before,
            "Description": "", "EventSource": "Platform", "DurationInSeconds": -1,
        })];
        s.incarnation += 1;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        {
            let s = st.lock().unwrap();
            if let (Some(a), Some(f)) = (s.arrived.get(&id), s.first_served.get(&id)) {
                return a.saturating_duration_since(*f);
            }
        }
        assert!(Instant::now() < deadline, "no first step for event {i}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Latency samples of two hosts side by side, without and with `extra`, taken in turns (the
/// order swapped every round), so that a change of the machine's load hits both alike. The
/// first few of each warm the hosts up (first poll, first connection) and are not kept.
async fn latency_pair(samples: usize, extra: &str) -> (Vec<Duration>, Vec<Duration>) {
    let (a, b) = (latency_rig("").await, latency_rig(extra).await);
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for i in 0..samples + 5 {
        let (x, y) = if i % 2 == 0 {
            let x = latency_sample(&a, i).await;
            (x, latency_sample(&b, i).await)
        } else {
            let y = latency_sample(&b, i).await;
            (latency_sample(&a, i).await, y)
        };
        if i >= 5 {
            without.push(x);
            with.push(y);
        }
    }
    (without, with)
}

// ------------------------------------------------------------------------------------------
// 4. Fleet mode: the same figures with the hosts on one PostgreSQL server (started here, as
// the fleet tests do: Debian's `postgresql`, initdb in a temporary directory, loopback).

#[path = "../tests/common/pg.rs"]
#[allow(dead_code)]
mod pg;

/// The `keel.yaml` lines of fleet mode on `url` as `identity`.
fn fleet_state(url: &str, pw: &Path, identity: &str) -> String {
    format!(
        "state: {url}\npostgres:\n  password_file: {}\n  identity: {identity}\n",
        pw.display()
    )
}

/// Ingest throughput of `hosts` hosts of the `keel` binary `bin` (the fleet A/B part runs an
/// older build) on one fresh database of `pg`, the clients spread over them.
async fn fleet_ingest(
    pg: &pg::PgServer,
    db: &str,
    hosts: usize,
    clients: usize,
    secs: u64,
    bin: &Path,
) -> (f64, u64) {
    let url = pg.create_db(db);
    let stats = std::env::var("KEEL_BENCH_PG_STATS").as_deref() == Ok("1");
    if stats {
        pg.with_client(db, |c| {
            c.batch_execute(
                "CREATE EXTENSION IF NOT EXISTS pg_stat_statements; SELECT pg_stat_statements_reset()",
            )
        })
        .unwrap()
        .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let pw = pg.password_file(dir.path());
    let keels: Vec<Keel> = (0..hosts)
        .map(|h| {
            let d = dir.path().join(format!("host-{h}"));
            std::fs::create_dir_all(&d).unwrap();
            let config = write_config(
                &d,
                &root().join("policies/standard"),
                &format!(
                    "{}commit_batch_max: 256\nsources:\n  ingest:\n    token_env: KEEL_BENCH_TOKEN\n",
                    fleet_state(&url, &pw, &format!("host-{h}"))
                ),
            );
            Keel::start_bin(&config, false, bin)
        })
        .collect();
    let bases: Vec<String> = keels.iter().map(|k| k.base.clone()).collect();
    let pids: Vec<u32> = keels.iter().map(|k| k.child.id()).collect();
    let r = ingest_load(&bases, &pids, clients, secs, db).await;
    if stats {
        // The statements the server spent the most time on: calls, ms, rows, the text.
        for row in pg.texts(
            db,
            "SELECT calls::text, round(total_exec_time)::text, rows::text,
                    left(regexp_replace(query, '\\s+', ' ', 'g'), 80)
               FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 6",
        ) {
            let [calls, ms, rows, text] = [0, 1, 2, 3].map(|i| row[i].clone().unwrap_or_default());
            println!("    statement: {calls} calls, {ms} ms, {rows} rows: {text}");
        }
    }
    drop(keels);
    pg.drop_db(db);
    r
}

/// A budget every host of the fleet takes a slot of before its drain's first step (never
/// full here: the figure is the lease's cost, under the fleet's write lock).
const FLEET_BUDGET: &str = r#"budgets:
  - name: fleet-wide
    key: '"fleet"'
    per: event.resource.name
    max_in_flight: 1000
"#;

/// Poll-to-first-step latency with a budget lease on PostgreSQL: `rigs` hosts on one fresh
/// database, each announcing its own events, sampled together (every round announces one
/// event on each host at once, so their leases contend for the write lock).
async fn fleet_latency(pg: &pg::PgServer, db: &str, rigs: usize, samples: usize) -> Vec<Duration> {
    let url = pg.create_db(db);
    let dir = tempfile::tempdir().unwrap();
    let pw = pg.password_file(dir.path());
    let mut all = Vec::new();
    for r in 0..rigs {
        all.push(
            latency_rig(&format!(
                "{}{FLEET_BUDGET}",
                fleet_state(&url, &pw, &format!("rig-{r}"))
            ))
            .await,
        );
    }
    let mut lat = Vec::new();
    for i in 0..samples + 5 {
        let round = futures_join(
            all.iter()
                .enumerate()
                .map(|(r, rig)| latency_sample(rig, i + (r << 32))),
        )
        .await;
        if i >= 5 {
            lat.extend(round);
        }
    }
    lat.sort();
    lat
}

/// Awaits every future, concurrently, in order.
async fn futures_join<F: std::future::Future>(fs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in fs {
        set.push(Box::pin(f));
    }
    let mut out = Vec::with_capacity(set.len());
    let mut pending: Vec<Option<std::pin::Pin<Box<F>>>> = set.into_iter().map(Some).collect();
    let mut results: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (slot, res) in pending.iter_mut().zip(results.iter_mut()) {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        *res = Some(v);
                        *slot = None;
                    }
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.extend(results.into_iter().flatten());
    out
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo test --benches` runs bench targets with `--bench`-less args; only run for real
    // under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        println!("host benchmarks: run with `cargo bench -p keel-host --bench host`");
        return;
    }
    let secs = env_num("KEEL_BENCH_SECONDS", 5);
    let clients = env_num("KEEL_BENCH_CLIENTS", 64) as usize;
    let samples = env_num("KEEL_BENCH_SAMPLES", 200) as usize;
    // `KEEL_BENCH_CONCURRENT`: the host's `sources.ingest.concurrent_requests` (and room for as
    // many connections) in the ingest and A/B parts; the host's default (64) when unset.
    let concurrent = std::env::var("KEEL_BENCH_CONCURRENT")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map(|n| {
            format!(
                "    concurrent_requests: {n}\nlimits:\n  connections: {}\n",
                n + 64
            )
        })
        .unwrap_or_default();
    let mut grouped = 0.0;
    if part("ingest") {
        println!("durability: SQLite WAL, synchronous=FULL (survives power loss)");
        println!("ingest throughput, {clients} clients, {secs} s each, 202 = committed decision:");
        let (g, e1) = ingest_run(256, clients, secs, &concurrent).await;
        grouped = g;
        println!("  group commit (commit_batch_max 256): {grouped:>8.0} events/s  (non-202: {e1})");
        let (single, e2) = ingest_run(1, clients, secs, &concurrent).await;
        println!("  one commit per event (1):            {single:>8.0} events/s  (non-202: {e2})");
        println!("  ratio grouped/single: {:.2}x", grouped / single.max(1.0));
        let (budgeted, e3) =
            ingest_run(256, clients, secs, &format!("{concurrent}{INGEST_BUDGET}")).await;
        println!(
            "  group commit with a budget:          {budgeted:>8.0} events/s  (non-202: {e3})"
        );
        println!(
            "  ratio with/without the budget: {:.2}x",
            budgeted / grouped.max(1.0)
        );
    }
    if let (true, Ok(base)) = (part("ab"), std::env::var("KEEL_BENCH_BASELINE")) {
        // Group commit, an older build (`KEEL_BENCH_BASELINE`, a `keel` binary) and this one
        // in turns, the order swapped every round: the machine's load hits both alike.
        let rounds = env_num("KEEL_BENCH_ROUNDS", 3);
        let this = Path::new(env!("CARGO_BIN_EXE_keel"));
        println!("A/B, group commit, {rounds} rounds: {base} (A) against this build (B)");
        // Per build: events/s, the host's CPU per body, the machine's CPU per body.
        let (mut a, mut b) = (
            [vec![], vec![], vec![], vec![]],
            [vec![], vec![], vec![], vec![]],
        );
        for r in 0..rounds {
            for first in [r % 2 == 0, r % 2 != 0] {
                let (bin, out) = if first {
                    (Path::new(&base), &mut a)
                } else {
                    (this, &mut b)
                };
                let (rate, other) = ingest_run_bin(256, clients, secs, &concurrent, bin).await;
                println!(
                    "  {}: {rate:>8.0} events/s ({other} answers other than 202)",
                    if first { "A" } else { "B" }
                );
                let (host, machine, deciding) = LAST_COST.lock().map(|c| *c).unwrap_or_default();
                for (v, x) in out.iter_mut().zip([rate, host, machine, deciding]) {
                    v.push(x);
                }
            }
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let [ma, ha, ca, da] = a.each_mut().map(median);
        let [mb, hb, cb, db] = b.each_mut().map(median);
        println!(
            "  median A {ma:.0}, B {mb:.0} events/s: B/A {:.2}x; CPU per body, host A {ha:.0} B {hb:.0} µs ({:.2}x), machine A {ca:.0} B {cb:.0} µs ({:.2}x), deciding thread A {da:.1} B {db:.1} µs",
            mb / ma.max(1.0),
            hb / ha.max(1.0),
            cb / ca.max(1.0),
        );
    }
    if part("flood") {
        let flood_clients = env_num("KEEL_BENCH_FLOOD_CLIENTS", 500) as usize;
        let per_client = env_num("KEEL_BENCH_FLOOD_PER_CLIENT", 40) as usize;
        println!(
            "ingest flood, {flood_clients} connections x {per_client} bodies, queue 64 (loopback):"
        );
        let f = flood(flood_clients, per_client).await;
        println!(
            "  accepted (202) {}, refused (503 + Retry-After) {}, other {}; peak RSS {} MiB after (at start {} MiB)",
            f.accepted,
            f.refused,
            f.other,
            f.rss_after_kib / 1024,
            f.rss_before_kib / 1024
        );
        assert!(
            f.wrong.is_empty(),
            "bodies not decided exactly once: {:?}",
            &f.wrong[..f.wrong.len().min(20)]
        );
        println!("  every accepted body decided exactly once, no refused body decided");
    }
    let mut p50s = vec![0.0, 0.0];
    if part("latency") {
        let (mut without, mut with) = latency_pair(samples, DRAIN_BUDGET).await;
        p50s.clear();
        for (label, lat) in [
            ("without a budget", &mut without),
            ("with a budget   ", &mut with),
        ] {
            lat.sort();
            p50s.push(pct(lat, 0.50).as_secs_f64());
            println!(
                "poll response -> first step, {label} ({} samples, taken in turns): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                lat.len(),
                pct(lat, 0.50).as_secs_f64() * 1e3,
                pct(lat, 0.99).as_secs_f64() * 1e3,
                lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
            );
        }
        println!(
            "  p50 ratio with/without the budget: {:.2}x",
            p50s[1] / p50s[0].max(1e-9)
        );
    }
    if let (true, Ok(base)) = (part("fleet-ab"), std::env::var("KEEL_BENCH_BASELINE")) {
        // The fleet's ingest, 1 and 3 hosts on one PostgreSQL (a fresh database each run), an
        // older build and this one in turns, the order swapped every round.
        let rounds = env_num("KEEL_BENCH_ROUNDS", 3);
        let this = Path::new(env!("CARGO_BIN_EXE_keel"));
        println!("fleet A/B, {rounds} rounds: {base} (A) against this build (B)");
        let pg = pg::PgServer::start();
        for hosts in [1, 3] {
            let (mut a, mut b) = (vec![], vec![]);
            for r in 0..rounds {
                for first in [r % 2 == 0, r % 2 != 0] {
                    let bin = if first { Path::new(&base) } else { this };
                    let db = format!("ab{hosts}_{r}_{}", u8::from(first));
                    let (rate, other) = fleet_ingest(&pg, &db, hosts, clients, secs, bin).await;
                    println!(
                        "  {hosts} host(s), {}: {rate:>8.0} events/s ({other} answers other than 202)",
                        if first { "A" } else { "B" }
                    );
                    if first { &mut a } else { &mut b }.push(rate);
                }
            }
            a.sort_by(f64::total_cmp);
            b.sort_by(f64::total_cmp);
            let (ma, mb) = (a[a.len() / 2], b[b.len() / 2]);
            println!(
                "  {hosts} host(s): median A {ma:.0}, B {mb:.0} events/s: B/A {:.2}x",
                mb / ma.max(1.0)
            );
        }
    }
    if std::env::var("KEEL_BENCH_FLEET").as_deref() == Ok("0") || !part("fleet") {
        return;
    }
    println!("fleet mode: hosts on one PostgreSQL (loopback, fsync off: the server's durability is its own)");
    let pg = pg::PgServer::start();
    let this = Path::new(env!("CARGO_BIN_EXE_keel"));
    let (one, f1) = fleet_ingest(&pg, "ingest1", 1, clients, secs, this).await;
    println!("  ingest, 1 host on PostgreSQL:        {one:>8.0} events/s  (non-202: {f1})");
    let (three, f3) = fleet_ingest(&pg, "ingest3", 3, clients, secs, this).await;
    println!("  ingest, 3 hosts on one PostgreSQL:   {three:>8.0} events/s  (non-202: {f3})");
    println!(
        "  ratios: 3 PostgreSQL hosts / 1 SQLite host {:.2}x, 1 PostgreSQL host / 1 SQLite host {:.2}x",
        three / grouped.max(1.0),
        one / grouped.max(1.0)
    );
    if !part("fleet-latency") {
        return;
    }
    let fleet_samples = (samples / 2).max(10);
    for (label, rigs) in [("1 host ", 1), ("3 hosts", 3)] {
        let lat = fleet_latency(&pg, &format!("lease{rigs}"), rigs, fleet_samples).await;
        println!(
            "  poll response -> first step with a budget lease, {label} on PostgreSQL ({} samples): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (p50 / SQLite's {:.2}x)",
            lat.len(),
            pct(&lat, 0.50).as_secs_f64() * 1e3,
            pct(&lat, 0.99).as_secs_f64() * 1e3,
            lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
            pct(&lat, 0.50).as_secs_f64() / p50s[1].max(1e-9),
        );
    }
}
