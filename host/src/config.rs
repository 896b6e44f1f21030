//! `keel.yaml`: the host's one configuration file, validated whole before anything starts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keel_engine::yaml::{self, YamlDoc};
use keel_engine::{Action, Diagnostic, LoadError};
use serde_json::Value;

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The policy directory.
    pub policies: PathBuf,
    /// The SQLite state database.
    pub state: PathBuf,
    /// Where /metrics, /healthz and /readyz listen (loopback by default).
    pub listen: SocketAddr,
    /// Plan steps without effects.
    pub dry_run: bool,
    /// This VM's name, as the platform lists it.
    pub self_name: Option<String>,
    /// The Azure Scheduled Events source, if configured.
    pub azure_scheduled_events: Option<SeSource>,
    /// Runbooks: the ordered steps of each action.
    pub runbooks: BTreeMap<Action, Vec<Step>>,
    /// A source that has failed for this long makes /readyz red.
    pub unready_after: Duration,
}

/// Azure Scheduled Events polling.
#[derive(Debug, Clone)]
pub struct SeSource {
    /// The IMDS URL, with api-version.
    pub url: String,
    /// Time between polls (Microsoft advises about one second).
    pub interval: Duration,
    /// Timeout of a poll.
    pub timeout: Duration,
    /// Timeout of the first poll (the service may take up to two minutes to start).
    pub first_timeout: Duration,
}

/// One runbook step.
#[derive(Debug, Clone)]
pub struct Step {
    /// Its name, unique in the runbook.
    pub name: String,
    /// What it does.
    pub kind: StepKind,
    /// How long one attempt may take.
    pub timeout: Duration,
    /// How many times a failed attempt is retried.
    pub retries: u32,
    /// The first retry's delay; it doubles, with jitter.
    pub backoff: Duration,
    /// Whether running it twice is harmless (after a crash, an idempotent step in doubt runs
    /// again with the same key; a non-idempotent one escalates instead).
    pub idempotent: bool,
}

/// What a step does.
#[derive(Debug, Clone)]
pub enum StepKind {
    /// Run a program (an argv list, never a shell); event fields reach it as `KEEL_*`
    /// environment variables.
    Exec(Vec<String>),
    /// POST a JSON body to a webhook.
    Http {
        /// The URL.
        url: String,
    },
    /// Approve the Scheduled Event (StartRequests).
    AzureAck,
    /// Write the decision to the log.
    Log,
}

fn secs(v: &Value) -> Option<Duration> {
    match v {
        Value::Number(n) => n.as_u64().map(Duration::from_secs),
        Value::String(s) => parse_duration(s),
        _ => None,
    }
}

/// `500ms`, `1s`, `5m`, `2h`, or a number of seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if let Some(ms) = s.strip_suffix("ms") {
        return ms.parse().ok().map(Duration::from_millis);
    }
    let (num, mul) = match s.chars().last()? {
        's' => (&s[..s.len() - 1], 1),
        'm' => (&s[..s.len() - 1], 60),
        'h' => (&s[..s.len() - 1], 3600),
        c if c.is_ascii_digit() => (s, 1),
        _ => return None,
    };
    num.parse::<u64>()
        .ok()
        .map(|n| Duration::from_secs(n.saturating_mul(mul)))
}

struct V<'a> {
    doc: &'a YamlDoc,
    diags: Vec<Diagnostic>,
}

impl V<'_> {
    fn err(&mut self, ptr: &str, msg: impl Into<String>) {
        self.diags.push(self.doc.diagnostic(ptr, msg));
    }

    fn key_err(&mut self, ptr: &str, msg: impl Into<String>) {
        self.diags.push(self.doc.key_diagnostic(ptr, msg));
    }

    fn keys(&mut self, ptr: &str, v: &Value, allowed: &[&str]) {
        if let Value::Object(m) = v {
            for k in m.keys() {
                if !allowed.contains(&k.as_str()) {
                    let hint = strsim_hint(k, allowed);
                    self.key_err(
                        &format!("{ptr}/{k}"),
                        format!(
                            "unknown key `{k}`{hint}; expected one of: {}",
                            allowed.join(", ")
                        ),
                    );
                }
            }
        } else {
            self.err(ptr, "expected a map");
        }
    }

    fn path(&mut self, base: &Path, ptr: &str, v: Option<&Value>, default: &str) -> PathBuf {
        match v {
            None => base.join(default),
            Some(Value::String(s)) => base.join(s),
            Some(_) => {
                self.err(ptr, "expected a path");
                base.join(default)
            }
        }
    }

    fn duration(&mut self, ptr: &str, v: Option<&Value>, default: Duration) -> Duration {
        match v {
            None => default,
            Some(v) => secs(v).unwrap_or_else(|| {
                self.err(ptr, "expected a duration such as 500ms, 1s, 5m");
                default
            }),
        }
    }
}

/// Reads and validates `keel.yaml`; every problem is reported with its position. Relative
/// paths are relative to the file.
pub fn load(path: &Path) -> Result<Config, LoadError> {
    let bytes = std::fs::read(path).map_err(|e| {
        LoadError::from_diagnostics(vec![Diagnostic::at(
            path,
            0,
            0,
            format!("cannot read: {e}"),
        )])
    })?;
    let doc = yaml::load(path, &bytes)?;
    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mut v = V {
        doc: &doc,
        diags: Vec::new(),
    };
    let root = doc.value.clone();
    v.keys(
        "",
        &root,
        &[
            "policies",
            "state",
            "listen",
            "dry_run",
            "self",
            "sources",
            "runbooks",
            "unready_after",
        ],
    );
    let policies = v.path(&base, "/policies", root.get("policies"), "policies");
    if !policies.exists() {
        v.err(
            "/policies",
            format!("`{}` does not exist", policies.display()),
        );
    }
    let state = v.path(&base, "/state", root.get("state"), ".keel/state.db");
    let listen = match root.get("listen") {
        None => SocketAddr::from(([127, 0, 0, 1], 9464)),
        Some(Value::String(s)) => s.parse().unwrap_or_else(|_| {
            v.err("/listen", "expected an address such as 127.0.0.1:9464");
            SocketAddr::from(([127, 0, 0, 1], 9464))
        }),
        Some(_) => {
            v.err("/listen", "expected an address such as 127.0.0.1:9464");
            SocketAddr::from(([127, 0, 0, 1], 9464))
        }
    };
    let dry_run = match root.get("dry_run") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            v.err("/dry_run", "expected true or false");
            false
        }
    };
    let self_name = match root.get("self") {
        None => None,
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(_) => {
            v.err("/self", "expected this VM's name");
            None
        }
    };
    let unready_after = v.duration(
        "/unready_after",
        root.get("unready_after"),
        Duration::from_secs(60),
    );
    let mut se = None;
    if let Some(sources) = root.get("sources") {
        v.keys("/sources", sources, &["azure_scheduled_events"]);
        if let Some(s) = sources.get("azure_scheduled_events") {
            let p = "/sources/azure_scheduled_events";
            v.keys(p, s, &["url", "interval", "timeout", "first_timeout"]);
            let url = match s.get("url") {
                Some(Value::String(u)) if u.starts_with("http://") || u.starts_with("https://") => {
                    u.clone()
                }
                None => {
                    "http://169.254.169.254/metadata/scheduledevents?api-version=2020-07-01".into()
                }
                Some(_) => {
                    v.err(&format!("{p}/url"), "expected an http:// URL");
                    String::new()
                }
            };
            se = Some(SeSource {
                url,
                interval: v.duration(
                    &format!("{p}/interval"),
                    s.get("interval"),
                    Duration::from_secs(1),
                ),
                timeout: v.duration(
                    &format!("{p}/timeout"),
                    s.get("timeout"),
                    Duration::from_secs(5),
                ),
                first_timeout: v.duration(
                    &format!("{p}/first_timeout"),
                    s.get("first_timeout"),
                    Duration::from_secs(125),
                ),
            });
        }
    }
    let mut runbooks = BTreeMap::new();
    if let Some(rb) = root.get("runbooks") {
        match rb {
            Value::Object(m) => {
                for (action, steps) in m {
                    let p = format!("/runbooks/{action}");
                    let Some(a) = Action::parse(action) else {
                        let names: Vec<&str> = Action::ALL.iter().map(|a| a.as_str()).collect();
                        let hint = strsim_hint(action, &names);
                        v.key_err(&p, format!("unknown action `{action}`{hint}"));
                        continue;
                    };
                    let Value::Array(items) = steps else {
                        v.err(&p, "expected a list of steps");
                        continue;
                    };
                    let mut list: Vec<Step> = Vec::new();
                    for (i, item) in items.iter().enumerate() {
                        if let Some(step) = parse_step(&mut v, &format!("{p}/{i}"), item) {
                            if list.iter().any(|s| s.name == step.name) {
                                v.err(
                                    &format!("{p}/{i}/name"),
                                    format!("duplicate step name `{}`", step.name),
                                );
                            }
                            list.push(step);
                        }
                    }
                    runbooks.insert(a, list);
                }
            }
            _ => v.err("/runbooks", "expected a map of action to steps"),
        }
    }
    let mut diags = v.diags;
    diags.sort_by_key(|d| (d.line(), d.column()));
    if diags.is_empty() {
        Ok(Config {
            policies,
            state,
            listen,
            dry_run,
            self_name,
            azure_scheduled_events: se,
            runbooks,
            unready_after,
        })
    } else {
        Err(LoadError::from_diagnostics(diags))
    }
}

/// ` (did you mean `x`?)` for a near miss.
fn strsim_hint(got: &str, names: &[&str]) -> String {
    names
        .iter()
        .map(|n| (strsim::damerau_levenshtein(got, n), *n))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, n)| format!(" (did you mean `{n}`?)"))
        .unwrap_or_default()
}

fn parse_step(v: &mut V<'_>, p: &str, item: &Value) -> Option<Step> {
    v.keys(
        p,
        item,
        &[
            "name",
            "exec",
            "http",
            "azure_ack",
            "log",
            "timeout",
            "retries",
            "backoff",
            "idempotent",
        ],
    );
    let kinds: Vec<&str> = ["exec", "http", "azure_ack", "log"]
        .into_iter()
        .filter(|k| item.get(*k).is_some())
        .collect();
    let kind = match kinds.as_slice() {
        ["exec"] => match item.get("exec") {
            Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_string) => {
                StepKind::Exec(
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect(),
                )
            }
            _ => {
                v.err(&format!("{p}/exec"), "`exec` is an argv list of strings (no shell), e.g. [\"/usr/bin/kubectl\", \"cordon\", \"node-1\"]");
                return None;
            }
        },
        ["http"] => match item
            .get("http")
            .and_then(|h| h.get("url"))
            .and_then(Value::as_str)
        {
            Some(u) if u.starts_with("http://") || u.starts_with("https://") => {
                StepKind::Http { url: u.to_string() }
            }
            _ => {
                v.err(&format!("{p}/http"), "`http` needs `url: http(s)://...`");
                return None;
            }
        },
        ["azure_ack"] => StepKind::AzureAck,
        ["log"] => StepKind::Log,
        [] => {
            v.err(p, "a step needs one of exec, http, azure_ack, log");
            return None;
        }
        _ => {
            v.err(
                p,
                format!("a step does one thing; found {}", kinds.join(", ")),
            );
            return None;
        }
    };
    let name = match item.get("name") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        None => kinds.first().map(|k| k.to_string()).unwrap_or_default(),
        Some(_) => {
            v.err(&format!("{p}/name"), "expected a name");
            String::new()
        }
    };
    let timeout = v.duration(
        &format!("{p}/timeout"),
        item.get("timeout"),
        Duration::from_secs(30),
    );
    let backoff = v.duration(
        &format!("{p}/backoff"),
        item.get("backoff"),
        Duration::from_secs(1),
    );
    let retries = match item.get("retries") {
        None => 2,
        Some(n) => match n.as_u64() {
            Some(r) if r <= 20 => r as u32,
            _ => {
                v.err(
                    &format!("{p}/retries"),
                    "expected a number of retries from 0 to 20",
                );
                0
            }
        },
    };
    let idempotent = match item.get("idempotent") {
        None => !matches!(kind, StepKind::Exec(_)),
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            v.err(&format!("{p}/idempotent"), "expected true or false");
            false
        }
    };
    Some(Step {
        name,
        kind,
        timeout,
        retries,
        backoff,
        idempotent,
    })
}
