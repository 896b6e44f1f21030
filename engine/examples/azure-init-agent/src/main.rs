//! `azure-init-agent`: a provisioning agent built on Azure's own library, `libazureinit`, that
//! asks Keel what to do when a provisioning step fails.
//!
//! The agent does what azure-init does at first boot: reads the instance's document from IMDS
//! (`/metadata/instance`, parsed with `libazureinit::imds`), fetches the goal state from the
//! wireserver (`/machine/?comp=goalstate`, libazureinit's `Goalstate`) and reports the VM
//! ready (`/machine/?comp=health`). When a step fails it turns the failure into a Keel event
//! (`operation_failure`, `operation: create`), decides it with the policy set, and acts on the
//! decision: `retry` waits the delay the policy gives and tries again, an escalation with no
//! other action stops (the decision line carries it), anything else stops. Its correlation `History` is saved after every
//! decision and restored at start, so a restarted agent (systemd restarting it after a crash,
//! or `--once` in the tests) keeps counting its retries: the standard library's retry budget
//! escalates on the fourth failure, restarts or not.
//!
//! libazureinit 0.1 fixes its endpoints (169.254.169.254, 168.63.129.16), so this agent makes
//! the HTTP calls itself against `--imds` and `--wireserver` (a loopback stub in the tests)
//! and uses libazureinit for what it parses. Its IMDS parsers panic on a document without the
//! fields they read, so the agent checks the shape first: a malformed document is a failure
//! to decide, never a crash.
//!
//! ```text
//! azure-init-agent --policies policies/standard --state /var/lib/azure-init-agent/history.json
//! ```
//!
//! Output: one JSON line per decision (`{"step", "error", "decision"}`), then `ready` or the
//! escalation. Exit codes: 0 ready, 1 stopped by a decision (none, or a --once retry), 2 usage,
//! 3 escalated.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use keel_engine::{Action, Ctx, Decision, Engine, Event, History};

/// The command line.
struct Args {
    imds: String,
    wireserver: String,
    policies: PathBuf,
    state: PathBuf,
    /// One attempt per run (as if restarted between attempts).
    once: bool,
    /// The longest a retry waits, in seconds (the policy's delay is capped to it).
    max_delay_s: u64,
}

const USAGE: &str = "usage: azure-init-agent --policies DIR --state FILE [--imds URL] [--wireserver URL] [--once] [--max-delay-s N]";

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        imds: "http://169.254.169.254".into(),
        wireserver: "http://168.63.129.16".into(),
        policies: PathBuf::new(),
        state: PathBuf::new(),
        once: false,
        max_delay_s: 300,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value\n{USAGE}"));
        match flag.as_str() {
            "--imds" => a.imds = value()?,
            "--wireserver" => a.wireserver = value()?,
            "--policies" => a.policies = value()?.into(),
            "--state" => a.state = value()?.into(),
            "--once" => a.once = true,
            "--max-delay-s" => {
                a.max_delay_s = value()?
                    .parse()
                    .map_err(|e| format!("--max-delay-s: {e}"))?
            }
            _ => return Err(format!("unknown argument {flag:?}\n{USAGE}")),
        }
    }
    if a.policies.as_os_str().is_empty() || a.state.as_os_str().is_empty() {
        return Err(USAGE.into());
    }
    Ok(a)
}

/// A provisioning step that failed, as Keel's failure fields.
#[derive(Debug)]
struct StepError {
    step: &'static str,
    code: String,
    category: &'static str,
    transient: bool,
    http_status: Option<u16>,
    message: String,
}

impl StepError {
    /// A failed HTTP exchange: no answer is the network (DNS, firewall, forced tunnelling);
    /// 429 and 5xx are the platform's transient errors; anything else is not retried.
    fn http(
        step: &'static str,
        r: Result<reqwest::Response, reqwest::Error>,
    ) -> Result<reqwest::Response, StepError> {
        match r {
            Err(e) => Err(StepError {
                step,
                code: "EndpointUnreachable".into(),
                category: "network",
                transient: false,
                http_status: None,
                message: e.to_string(),
            }),
            Ok(resp) if resp.status().is_success() => Ok(resp),
            Ok(resp) => {
                let s = resp.status();
                let (code, category, transient) = match s.as_u16() {
                    429 => ("TooManyRequests", "throttled", true),
                    500..=599 => ("InternalServerError", "internal", true),
                    _ => ("RequestRefused", "unknown", false),
                };
                Err(StepError {
                    step,
                    code: code.into(),
                    category,
                    transient,
                    http_status: Some(s.as_u16()),
                    message: format!("{step}: HTTP {s}"),
                })
            }
        }
    }

    fn malformed(step: &'static str, message: String) -> StepError {
        StepError {
            step,
            code: "MalformedResponse".into(),
            category: "unknown",
            transient: false,
            http_status: None,
            message,
        }
    }
}

/// What the instance document says, through libazureinit's parsers.
struct Instance {
    hostname: String,
    username: String,
    ssh_keys: usize,
}

/// The paths libazureinit's IMDS parsers read (they panic when one is missing or not a
/// string): checked before calling them.
fn check_imds_shape(doc: &serde_json::Value) -> Result<(), String> {
    let profile = &doc["compute"]["osProfile"];
    for key in [
        "adminUsername",
        "computerName",
        "disablePasswordAuthentication",
    ] {
        if !profile[key].is_string() {
            return Err(format!(
                "compute.osProfile.{key} is missing or not a string"
            ));
        }
    }
    let keys = doc["compute"]["publicKeys"].as_array();
    let keys_ok = keys.is_some_and(|k| {
        k.iter()
            .all(|k| k["keyData"].is_string() && k["path"].is_string())
    });
    if !keys_ok {
        return Err("compute.publicKeys is missing or not a list of {keyData, path}".into());
    }
    Ok(())
}

async fn read_instance(client: &reqwest::Client, imds: &str) -> Result<Instance, StepError> {
    let url = format!("{imds}/metadata/instance?api-version=2021-02-01");
    let resp = StepError::http(
        "imds",
        client.get(url).header("Metadata", "true").send().await,
    )?;
    let body = resp
        .text()
        .await
        .map_err(|e| StepError::malformed("imds", e.to_string()))?;
    let doc: serde_json::Value = serde_json::from_str(&body)
        .map_err(|e| StepError::malformed("imds", format!("instance document: {e}")))?;
    check_imds_shape(&doc).map_err(|m| StepError::malformed("imds", m))?;
    let parsed = (
        libazureinit::imds::get_hostname(body.clone()),
        libazureinit::imds::get_username(body.clone()),
        libazureinit::imds::get_ssh_keys(body.clone()),
        libazureinit::imds::get_provision_with_password(&body),
    );
    match parsed {
        (Ok(hostname), Ok(username), Ok(keys), Ok(_)) => Ok(Instance {
            hostname,
            username,
            ssh_keys: keys.len(),
        }),
        _ => Err(StepError::malformed(
            "imds",
            "libazureinit could not read the document".into(),
        )),
    }
}

/// Fetches the goal state and reports the VM ready: what `libazureinit::goalstate` does
/// against the fixed wireserver address.
async fn report_ready(client: &reqwest::Client, wireserver: &str) -> Result<String, StepError> {
    let resp = StepError::http(
        "goalstate",
        client
            .get(format!("{wireserver}/machine/?comp=goalstate"))
            .header("x-ms-agent-name", "azure-init")
            .header("x-ms-version", "2012-11-30")
            .send()
            .await,
    )?;
    let xml = resp
        .text()
        .await
        .map_err(|e| StepError::malformed("goalstate", e.to_string()))?;
    // libazureinit's `Goalstate` checks the document's shape (it is what its own
    // `get_goalstate` returns); its fields are private, so the three the report needs are read
    // from the XML, and only as plain identifiers (they go back into XML).
    let _checked: libazureinit::goalstate::Goalstate = serde_xml_rs::from_str(&xml)
        .map_err(|e| StepError::malformed("goalstate", format!("goal state: {e}")))?;
    let field = |tag| {
        xml_text(&xml, tag).ok_or_else(|| {
            StepError::malformed(
                "goalstate",
                format!("goal state: <{tag}> is not an identifier"),
            )
        })
    };
    let (incarnation, container, instance) = (
        field("Incarnation")?,
        field("ContainerId")?,
        field("InstanceId")?,
    );
    let report = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<Health xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\">\n  <GoalStateIncarnation>{incarnation}</GoalStateIncarnation>\n  <Container>\n    <ContainerId>{container}</ContainerId>\n    <RoleInstanceList>\n      <Role>\n        <InstanceId>{instance}</InstanceId>\n        <Health>\n          <State>Ready</State>\n        </Health>\n      </Role>\n    </RoleInstanceList>\n  </Container>\n</Health>"
    );
    StepError::http(
        "health",
        client
            .post(format!("{wireserver}/machine/?comp=health"))
            .header("x-ms-agent-name", "azure-init")
            .header("x-ms-version", "2012-11-30")
            .header("Content-Type", "text/xml;charset=utf-8")
            .body(report)
            .send()
            .await,
    )?;
    Ok(instance)
}

/// The text of the first `<tag>…</tag>` when it is a plain identifier (letters, digits, `-`,
/// `_`, `.`, at most 128): it came from the network and goes into the report's XML.
fn xml_text(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let rest = &xml[xml.find(&open)? + open.len()..];
    let text = rest[..rest.find(&close)?].trim();
    let plain = !text.is_empty()
        && text.len() <= 128
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    plain.then(|| text.to_string())
}

/// The Keel event for a failed step of attempt `attempt`.
fn event(
    e: &StepError,
    resource: &str,
    attempt: i64,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Event, String> {
    let doc = serde_json::json!({
        "id": format!("azure-init-agent:{resource}:{}:{attempt}", e.step),
        "time": now.to_rfc3339(),
        "source": "ingest",
        "kind": "operation_failure",
        "resource": { "name": resource, "is_self": true },
        "failure": {
            "operation": "create",
            "code": e.code,
            "message": e.message,
            "http_status": e.http_status,
            "attempt": attempt,
            "category": e.category,
            "transient": e.transient,
        }
    });
    Event::from_json_str(&doc.to_string()).map_err(|e| e.to_string())
}

/// Writes the history beside `path` and renames it into place: a crash leaves the old copy.
fn save(history: &History, path: &Path) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, history.to_json())?;
    std::fs::rename(&tmp, path)
}

fn restore(path: &Path) -> Result<History, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => History::from_json(&text).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(History::new()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// The decisions remembered (within the history's retention): the attempt number of the next
/// failure, carried across restarts with the history.
fn attempt_of(history: &History) -> i64 {
    let saved: serde_json::Value = serde_json::from_str(&history.to_json()).unwrap_or_default();
    let decided = saved["decisions"].as_array().map_or(0, Vec::len);
    decided as i64 + 1
}

async fn run(a: Args) -> Result<ExitCode, String> {
    let engine = Engine::from_dir(&a.policies).map_err(|e| e.to_string())?;
    let mut history = restore(&a.state)?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    loop {
        let result = match read_instance(&client, &a.imds).await {
            Ok(instance) => {
                println!(
                    "{}",
                    serde_json::json!({"step": "imds", "hostname": instance.hostname,
                        "username": instance.username, "ssh_keys": instance.ssh_keys})
                );
                match report_ready(&client, &a.wireserver).await {
                    Ok(id) => Ok((instance.hostname, id)),
                    Err(e) => Err((instance.hostname, e)),
                }
            }
            // No document, no name: the failure is this VM's all the same.
            Err(e) => Err(("self".to_string(), e)),
        };
        let (resource, err) = match result {
            Ok((host, id)) => {
                println!("{}", serde_json::json!({"ready": host, "instance": id}));
                return Ok(ExitCode::SUCCESS);
            }
            Err(failed) => failed,
        };
        let now = chrono::Utc::now();
        let ev = event(&err, &resource, attempt_of(&history), now)?;
        history.record(&ev);
        let d: Decision = engine.decide(&ev, &Ctx::new(now).with_history(&history));
        history.record_decision(&ev, &d);
        save(&history, &a.state).map_err(|e| format!("{}: {e}", a.state.display()))?;
        println!(
            "{}",
            serde_json::json!({"step": err.step, "error": err.message, "decision": d})
        );
        // An escalation is reported beside the action (the decision line carries it); with
        // nothing else to do, the agent stops and leaves the VM to the people paged.
        match d.action {
            Action::None if !d.escalations.is_empty() => return Ok(ExitCode::from(3)),
            Action::Retry | Action::RetryWithoutAgent if !a.once => {
                let delay = d
                    .params
                    .get("delay_s")
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(30);
                tokio::time::sleep(Duration::from_secs(delay.min(a.max_delay_s))).await;
            }
            _ => return Ok(ExitCode::from(1)),
        }
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", keel_engine::escape(&e));
            ExitCode::from(1)
        }
    }
}
