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
    /// The AWS IMDSv2 source, if configured.
    pub aws_imds: Option<AwsImdsSource>,
    /// The GCP metadata server source, if configured.
    pub gcp_metadata: Option<GcpMetadataSource>,
    /// The HTTP ingest endpoint (`POST /ingest` on `listen`), if configured.
    pub ingest: Option<IngestSource>,
    /// The legacy Azure maintenance endpoint (`/metadata/v1/maintenance`), if configured.
    pub azure_maintenance_v1: Option<AzureMaintenanceV1Source>,
    /// Azure Resource Health for this VM, if configured.
    pub azure_resource_health: Option<ResourceHealthSource>,
    /// Files (or standard input) replayed through a normalizer.
    pub files: Vec<FileSource>,
    /// The managed identity that Resource Health and `arm` steps take their tokens from.
    pub azure_identity: AzureIdentity,
    /// Where `arm` steps may act (`arm.scopes`): subscriptions or resource groups. Required
    /// when a runbook has an `arm` step; a resource outside every scope is never written.
    pub arm_scopes: Vec<ArmScope>,
    /// Runbooks: the ordered steps of each action.
    pub runbooks: BTreeMap<Action, Vec<Step>>,
    /// A source that has failed for this long makes /readyz red.
    pub unready_after: Duration,
    /// How often the policy files are checked for changes (`policy_reload_interval`).
    pub reload_interval: Duration,
    /// Limits on what runs at once.
    pub limits: Limits,
    /// How long finished history (decisions and their steps, seen events, delivered
    /// escalations, ingest keys) is kept; pending work is never collected.
    pub retention: Duration,
    /// How often the garbage collector runs.
    pub gc_interval: Duration,
    /// Where compiled Wasm plugins are cached (`plugin_cache`; default `plugin-cache/` beside
    /// the state database). Only Keel may write it.
    #[cfg_attr(not(feature = "plugins"), allow(dead_code))]
    pub plugin_cache: PathBuf,
    /// Group commit: at most this many waiting payloads and ingest bodies are decided and
    /// committed in one transaction (default 256; 1 commits each on its own).
    pub commit_batch_max: usize,
}

/// Limits on what runs at once (`limits:`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How many `drain` runbooks run at the same time (default 1); the others wait for a slot
    /// until their deadline.
    pub concurrent_drains: usize,
    /// How many runbooks other than drains run at the same time (default 16); the others
    /// wait for a slot, in the order they were decided.
    pub concurrent_runbooks: usize,
    /// How many connections to `listen` are open at once (default 256); a connection beyond
    /// them is closed at once.
    pub connections: usize,
    /// How long a client may take to send a request's headers, or keep a connection idle
    /// between requests (default 10 s); the connection is closed after it.
    pub header_timeout: Duration,
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

/// AWS EC2 instance metadata, IMDSv2: a session token from `PUT /latest/api/token`, then
/// polls of `spot/instance-action`, `events/recommendations/rebalance` and
/// `events/maintenance/scheduled` (404 means no notice).
#[derive(Debug, Clone)]
pub struct AwsImdsSource {
    /// The IMDS base URL, without a trailing slash (`http://169.254.169.254`).
    pub url: String,
    /// Time between polls (AWS advises five seconds).
    pub interval: Duration,
    /// Timeout of one request.
    pub timeout: Duration,
    /// The lifetime asked for each session token (1 s to 6 h); the token is renewed before it
    /// expires, and at once when IMDS answers 401.
    pub token_ttl: Duration,
    /// The longest wait between retries after failures.
    pub max_backoff: Duration,
}

/// The GCP Compute Engine metadata server: `instance/maintenance-event` and
/// `instance/preempted`, each with a hanging `wait_for_change=true&last_etag=...` request
/// always open, and the `Metadata-Flavor: Google` header.
#[derive(Debug, Clone)]
pub struct GcpMetadataSource {
    /// The metadata base URL, without a trailing slash
    /// (`http://metadata.google.internal/computeMetadata/v1`).
    pub url: String,
    /// How long the server may hold a hanging request (`timeout_sec`, whole seconds, at least 1).
    pub wait_timeout: Duration,
    /// Timeout of a plain read, and the grace beyond `wait_timeout` for a hanging one.
    pub timeout: Duration,
    /// The least time between two requests when the server does not hang (no `ETag`, or an
    /// unchanged value returned early).
    pub interval: Duration,
    /// The longest wait between retries after failures.
    pub max_backoff: Duration,
}

/// The HTTP ingest endpoint for operation failures reported by deployment tools:
/// `POST /ingest` with DESIGN.md's body, a bearer token, a body size limit.
#[derive(Debug, Clone)]
pub struct IngestSource {
    /// The bearer token, read when the configuration is loaded from the environment
    /// variable that `token_env` names (the host refuses to start without it). `listen` must
    /// be a loopback address unless `allow_remote: true`.
    pub token: Secret,
    /// The largest body accepted (larger ones get 413).
    pub max_body_bytes: usize,
    /// Failures of one (resource, operation) within this window count as attempts 1, 2, ...;
    /// after a quiet window the count starts again at 1.
    pub attempt_window: Duration,
    /// How many bodies wait for the run loop at most (default 256); a body beyond them gets
    /// 503 with `Retry-After` at once.
    pub queue: usize,
    /// How many ingest requests are handled at once (default 64); a request beyond them gets
    /// 503 with `Retry-After` at once.
    pub concurrent_requests: usize,
    /// How long one request may take, from its headers to its decision (default 30 s); past it
    /// the client gets 503 with `Retry-After` (a retry with the same idempotency key answers
    /// `duplicate` if the body was decided meanwhile).
    pub request_timeout: Duration,
}

/// A secret read from the environment; its `Debug` form never shows it.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(s: String) -> Secret {
        Secret(s)
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The default body limit of the ingest endpoint (1 MiB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;

/// The shortest bearer token the ingest endpoint accepts.
pub const MIN_TOKEN_CHARS: usize = 16;

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
    /// `exec` only: the names of Keel's own environment variables the child gets besides
    /// the allowlist (`env`; never a `KEEL_*` name).
    pub env: Vec<String>,
}

/// The body format of an `http` step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpFormat {
    /// Keel's own JSON body (the default).
    Generic,
    /// PagerDuty Events v2 (`routing_key`, `event_action: trigger`, `dedup_key`, `payload`).
    PagerDuty,
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
        /// The body's format.
        format: HttpFormat,
        /// PagerDuty's routing (integration) key, read from the environment variable that
        /// `routing_key_env` names when the configuration is loaded.
        routing_key: Option<Secret>,
    },
    /// Approve the Scheduled Event (StartRequests).
    AzureAck,
    /// Resubmit the request in `Decision.retry` to Azure Resource Manager with a
    /// managed-identity token.
    Arm {
        /// The ARM base URL, without a trailing slash (`https://management.azure.com`).
        endpoint: String,
        /// The `api-version` of the resubmitted request (unless the body names its own
        /// `apiVersion`, as an ARM template resource does).
        api_version: String,
        /// Follow ARM's long-running operation (`Azure-AsyncOperation`, `Location`, or a
        /// non-terminal `provisioningState`) until it succeeds or fails (`follow_operation`,
        /// default true); the step's `timeout` bounds the wait.
        follow: bool,
        /// Time between polls of the operation when ARM gives no `Retry-After`.
        poll_interval: Duration,
    },
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

/// `500ms`, `1s`, `5m`, `2h`, `30d`, or a number of seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if let Some(ms) = s.strip_suffix("ms") {
        return ms.parse().ok().map(Duration::from_millis);
    }
    let (num, mul) = match s.chars().last()? {
        's' => (&s[..s.len() - 1], 1),
        'm' => (&s[..s.len() - 1], 60),
        'h' => (&s[..s.len() - 1], 3600),
        'd' => (&s[..s.len() - 1], 86_400),
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

    /// An `http(s)://` base URL without a trailing slash.
    fn url(&mut self, ptr: &str, v: Option<&Value>, default: &str) -> String {
        match v {
            None => default.to_string(),
            Some(Value::String(u))
                if (u.starts_with("http://") || u.starts_with("https://"))
                    && !u.chars().any(|c| c.is_whitespace() || c.is_control()) =>
            {
                u.trim_end_matches('/').to_string()
            }
            Some(_) => {
                self.err(ptr, "expected an http:// or https:// URL");
                default.to_string()
            }
        }
    }

    /// [`V::url`] for an endpoint that a bearer token (or the request for one) is sent to:
    /// plain `http://` is refused unless [`token_url_ok`] allows it.
    fn token_url(&mut self, ptr: &str, v: Option<&Value>, default: &str, imds: bool) -> String {
        let u = self.url(ptr, v, default);
        if v.is_some() && u.starts_with("http://") && !token_url_ok(&u, imds) {
            let also = if imds {
                ", or IMDS's 169.254.169.254"
            } else {
                ""
            };
            self.err(
                ptr,
                format!(
                    "a token would travel in clear to {}: use https:// (plain http:// only on \
                     a loopback address: 127.0.0.0/8, ::1, localhost{also})",
                    keel_engine::escape(&u)
                ),
            );
        }
        u
    }

    /// A duration that must not be zero.
    /// [`V::positive`] of key `key` of the map `s` at `p`.
    fn positive_at(&mut self, p: &str, s: &Value, key: &str, default: Duration) -> Duration {
        self.positive(&format!("{p}/{key}"), s.get(key), default)
    }

    /// [`V::duration`] of key `key` of the map `s` at `p`.
    fn duration_at(&mut self, p: &str, s: &Value, key: &str, default: Duration) -> Duration {
        self.duration(&format!("{p}/{key}"), s.get(key), default)
    }

    /// A whole number from 1 to 10000 at `ptr` (`default` when absent; `msg` when wrong).
    fn count(&mut self, ptr: &str, v: Option<&Value>, default: usize, msg: &str) -> usize {
        match v {
            None => default,
            Some(n) => match n.as_u64().and_then(|n| usize::try_from(n).ok()) {
                Some(c) if (1..=10_000).contains(&c) => c,
                _ => {
                    self.err(ptr, msg);
                    default
                }
            },
        }
    }

    fn positive(&mut self, ptr: &str, v: Option<&Value>, default: Duration) -> Duration {
        let d = self.duration(ptr, v, default);
        if d.is_zero() {
            self.err(ptr, "must be longer than zero");
            return default;
        }
        d
    }

    fn boolean(&mut self, ptr: &str, v: Option<&Value>, default: bool) -> bool {
        match v {
            None => default,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                self.err(ptr, "expected true or false");
                default
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
            "plugin_cache",
            "listen",
            "dry_run",
            "self",
            "sources",
            "runbooks",
            "arm",
            "unready_after",
            "policy_reload_interval",
            "limits",
            "retention",
            "gc_interval",
            "commit_batch_max",
            "azure_identity",
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
    let plugin_cache = match root.get("plugin_cache") {
        None => state
            .parent()
            .unwrap_or(Path::new("."))
            .join("plugin-cache"),
        Some(_) => v.path(&base, "/plugin_cache", root.get("plugin_cache"), ""),
    };
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
    let reload_interval = v.positive(
        "/policy_reload_interval",
        root.get("policy_reload_interval"),
        Duration::from_secs(3),
    );
    let limits = parse_limits(&mut v, root.get("limits"));
    let retention = v.positive(
        "/retention",
        root.get("retention"),
        Duration::from_secs(30 * 86_400),
    );
    let gc_interval = v.positive(
        "/gc_interval",
        root.get("gc_interval"),
        Duration::from_secs(3_600),
    );
    let commit_batch_max = match root.get("commit_batch_max") {
        None => 256,
        Some(n) => match n.as_u64() {
            Some(c) if (1..=10_000).contains(&c) => c as usize,
            _ => {
                v.err("/commit_batch_max", "expected a number from 1 to 10000");
                256
            }
        },
    };
    let mut se = None;
    let mut aws = None;
    let mut gcp = None;
    let mut ingest = None;
    let mut mv1 = None;
    let mut rh = None;
    let mut files = Vec::new();
    let azure_identity = parse_identity(&mut v, root.get("azure_identity"));
    let arm_scopes = parse_arm_scopes(&mut v, root.get("arm"));
    if let Some(sources) = root.get("sources") {
        v.keys(
            "/sources",
            sources,
            &[
                "azure_scheduled_events",
                "aws_imds",
                "gcp_metadata",
                "ingest",
                "azure_maintenance_v1",
                "azure_resource_health",
                "files",
            ],
        );
        if let Some(s) = sources.get("azure_maintenance_v1") {
            mv1 = Some(parse_maintenance_v1(&mut v, s));
        }
        if let Some(s) = sources.get("azure_resource_health") {
            rh = parse_resource_health(&mut v, s, self_name.as_deref());
        }
        if let Some(s) = sources.get("files") {
            files = parse_files(&mut v, &base, s);
        }
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
                interval: v.duration_at(p, s, "interval", Duration::from_secs(1)),
                timeout: v.duration_at(p, s, "timeout", Duration::from_secs(5)),
                first_timeout: v.duration_at(p, s, "first_timeout", Duration::from_secs(125)),
            });
        }
        if let Some(s) = sources.get("aws_imds") {
            aws = Some(parse_aws(&mut v, s));
        }
        if let Some(s) = sources.get("gcp_metadata") {
            gcp = Some(parse_gcp(&mut v, s));
        }
        if let Some(s) = sources.get("ingest") {
            ingest = parse_ingest(&mut v, s);
        }
    }
    let remote_ingest = root
        .get("sources")
        .and_then(|s| s.get("ingest"))
        .and_then(|i| i.get("allow_remote"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let has_ingest = root.get("sources").and_then(|s| s.get("ingest")).is_some();
    if has_ingest && !remote_ingest && !listen.ip().is_loopback() {
        let ptr = if root.get("listen").is_some() {
            "/listen"
        } else {
            "/sources/ingest"
        };
        v.err(
            ptr,
            format!(
                "`listen` is {listen}, not a loopback address, and the ingest endpoint listens there; \
                 set `sources.ingest.allow_remote: true` to accept reports from other machines \
                 (and put TLS in front: the bearer token travels in clear)"
            ),
        );
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
    if let (None, Some(rb)) = (root.get("arm"), root.get("runbooks")) {
        require_arm_scopes(&mut v, rb);
    }
    if let Some(rb) = root.get("runbooks") {
        refuse_secret_env(&mut v, &root, rb);
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
            aws_imds: aws,
            gcp_metadata: gcp,
            ingest,
            azure_maintenance_v1: mv1,
            azure_resource_health: rh,
            files,
            azure_identity,
            arm_scopes,
            runbooks,
            unready_after,
            reload_interval,
            limits,
            retention,
            gc_interval,
            commit_batch_max,
            plugin_cache,
        })
    } else {
        Err(LoadError::from_diagnostics(diags))
    }
}

fn parse_limits(v: &mut V<'_>, l: Option<&Value>) -> Limits {
    let mut limits = Limits {
        concurrent_drains: 1,
        concurrent_runbooks: DEFAULT_CONCURRENT_RUNBOOKS,
        connections: DEFAULT_CONNECTIONS,
        header_timeout: DEFAULT_HEADER_TIMEOUT,
    };
    let Some(l) = l else { return limits };
    v.keys(
        "/limits",
        l,
        &[
            "concurrent_drains",
            "concurrent_runbooks",
            "connections",
            "header_timeout",
        ],
    );
    limits.concurrent_drains = v.count(
        "/limits/concurrent_drains",
        l.get("concurrent_drains"),
        1,
        "expected how many drains may run at once, from 1 to 10000",
    );
    limits.concurrent_runbooks = v.count(
        "/limits/concurrent_runbooks",
        l.get("concurrent_runbooks"),
        DEFAULT_CONCURRENT_RUNBOOKS,
        "expected how many runbooks other than drains may run at once, from 1 to 10000",
    );
    limits.connections = v.count(
        "/limits/connections",
        l.get("connections"),
        DEFAULT_CONNECTIONS,
        "expected how many connections may be open at once, from 1 to 10000",
    );
    limits.header_timeout = v.positive_at("/limits", l, "header_timeout", DEFAULT_HEADER_TIMEOUT);
    limits
}

/// `limits.concurrent_runbooks` when not given.
pub const DEFAULT_CONCURRENT_RUNBOOKS: usize = 16;
/// `limits.connections` when not given.
pub const DEFAULT_CONNECTIONS: usize = 256;
/// `limits.header_timeout` when not given.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// `sources.ingest.queue` when not given.
pub const DEFAULT_INGEST_QUEUE: usize = 256;
/// `sources.ingest.concurrent_requests` when not given.
pub const DEFAULT_INGEST_CONCURRENT: usize = 64;
/// `sources.ingest.request_timeout` when not given.
pub const DEFAULT_INGEST_TIMEOUT: Duration = Duration::from_secs(30);

fn parse_aws(v: &mut V<'_>, s: &Value) -> AwsImdsSource {
    let p = "/sources/aws_imds";
    v.keys(
        p,
        s,
        &["url", "interval", "timeout", "token_ttl", "max_backoff"],
    );
    let token_ttl = v.positive_at(p, s, "token_ttl", Duration::from_secs(21_600));
    let token_ttl = if token_ttl.as_secs() < 1 || token_ttl.as_secs() > 21_600 {
        v.err(
            &format!("{p}/token_ttl"),
            "IMDSv2 tokens live from 1s to 6h (21600s), in whole seconds",
        );
        Duration::from_secs(21_600)
    } else {
        Duration::from_secs(token_ttl.as_secs())
    };
    AwsImdsSource {
        url: v.url(&format!("{p}/url"), s.get("url"), "http://169.254.169.254"),
        interval: v.positive_at(p, s, "interval", Duration::from_secs(5)),
        timeout: v.positive_at(p, s, "timeout", Duration::from_secs(2)),
        token_ttl,
        max_backoff: v.positive_at(p, s, "max_backoff", Duration::from_secs(30)),
    }
}

fn parse_gcp(v: &mut V<'_>, s: &Value) -> GcpMetadataSource {
    let p = "/sources/gcp_metadata";
    v.keys(
        p,
        s,
        &["url", "wait_timeout", "timeout", "interval", "max_backoff"],
    );
    let wait_timeout = v.positive_at(p, s, "wait_timeout", Duration::from_secs(60));
    let wait_timeout = if wait_timeout.as_secs() < 1 {
        v.err(
            &format!("{p}/wait_timeout"),
            "the metadata server counts `timeout_sec` in whole seconds: at least 1s",
        );
        Duration::from_secs(60)
    } else {
        Duration::from_secs(wait_timeout.as_secs())
    };
    GcpMetadataSource {
        url: v.url(
            &format!("{p}/url"),
            s.get("url"),
            "http://metadata.google.internal/computeMetadata/v1",
        ),
        wait_timeout,
        timeout: v.positive_at(p, s, "timeout", Duration::from_secs(5)),
        interval: v.positive_at(p, s, "interval", Duration::from_secs(1)),
        max_backoff: v.positive_at(p, s, "max_backoff", Duration::from_secs(30)),
    }
}

/// The ingest endpoint; `None` (with an error reported) when its token cannot be had.
fn parse_ingest(v: &mut V<'_>, s: &Value) -> Option<IngestSource> {
    let p = "/sources/ingest";
    v.keys(
        p,
        s,
        &[
            "token_env",
            "max_body_bytes",
            "allow_remote",
            "attempt_window",
            "queue",
            "concurrent_requests",
            "request_timeout",
        ],
    );
    let max = keel_engine::normalize::MAX_PAYLOAD_BYTES;
    let max_body_bytes = match s.get("max_body_bytes") {
        None => DEFAULT_MAX_BODY_BYTES,
        Some(n) => match n.as_u64().and_then(|n| usize::try_from(n).ok()) {
            Some(n) if (1..=max).contains(&n) => n,
            _ => {
                v.err(
                    &format!("{p}/max_body_bytes"),
                    format!("expected a number of bytes from 1 to {max}"),
                );
                DEFAULT_MAX_BODY_BYTES
            }
        },
    };
    // Only its type is checked here; `load` checks it against `listen`.
    v.boolean(&format!("{p}/allow_remote"), s.get("allow_remote"), false);
    let attempt_window = v.positive_at(p, s, "attempt_window", Duration::from_secs(24 * 3600));
    let queue = v.count(
        &format!("{p}/queue"),
        s.get("queue"),
        DEFAULT_INGEST_QUEUE,
        "expected how many bodies may wait for the run loop, from 1 to 10000",
    );
    let concurrent_requests = v.count(
        &format!("{p}/concurrent_requests"),
        s.get("concurrent_requests"),
        DEFAULT_INGEST_CONCURRENT,
        "expected how many ingest requests may be handled at once, from 1 to 10000",
    );
    let request_timeout = v.positive_at(p, s, "request_timeout", DEFAULT_INGEST_TIMEOUT);
    let tp = format!("{p}/token_env");
    let token_env = match s.get("token_env") {
        Some(Value::String(name))
            if !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
        {
            name.clone()
        }
        None => {
            v.err(
                p,
                "the ingest endpoint needs `token_env`: the environment variable that holds its bearer token",
            );
            return None;
        }
        Some(_) => {
            v.err(
                &tp,
                "expected the name of an environment variable, such as KEEL_INGEST_TOKEN",
            );
            return None;
        }
    };
    let token = match std::env::var(&token_env) {
        Ok(t) if t.chars().count() < MIN_TOKEN_CHARS => {
            v.err(
                &tp,
                format!(
                    "the environment variable `{token_env}` holds a token shorter than {MIN_TOKEN_CHARS} characters"
                ),
            );
            return None;
        }
        Ok(t) if !t.chars().all(|c| c.is_ascii_graphic()) => {
            v.err(
                &tp,
                format!(
                    "the token in `{token_env}` must be printable ASCII without spaces (it travels in an HTTP header)"
                ),
            );
            return None;
        }
        Ok(t) => t,
        Err(std::env::VarError::NotPresent) => {
            v.err(
                &tp,
                format!(
                    "the environment variable `{token_env}` is not set; the ingest endpoint refuses to start without its bearer token"
                ),
            );
            return None;
        }
        Err(std::env::VarError::NotUnicode(_)) => {
            v.err(
                &tp,
                format!("the environment variable `{token_env}` is not valid UTF-8"),
            );
            return None;
        }
    };
    Some(IngestSource {
        token: Secret::new(token),
        max_body_bytes,
        attempt_window,
        queue,
        concurrent_requests,
        request_timeout,
    })
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

/// An `http` step: `{ url, format?: generic | pagerduty, routing_key_env? }`.
fn parse_http(v: &mut V<'_>, p: &str, h: Option<&Value>) -> Option<StepKind> {
    let Some(h @ Value::Object(_)) = h else {
        v.err(p, "`http` needs `url: http(s)://...`");
        return None;
    };
    v.keys(p, h, &["url", "format", "routing_key_env"]);
    let url = match h.get("url").and_then(Value::as_str) {
        Some(u)
            if (u.starts_with("http://") || u.starts_with("https://"))
                && !u.chars().any(|c| c.is_whitespace() || c.is_control()) =>
        {
            u.to_string()
        }
        Some(_) => {
            v.err(&format!("{p}/url"), "expected an http:// or https:// URL");
            return None;
        }
        None => {
            v.err(p, "`http` needs `url: http(s)://...`");
            return None;
        }
    };
    let format = match h.get("format") {
        None => HttpFormat::Generic,
        Some(Value::String(f)) if f == "generic" => HttpFormat::Generic,
        Some(Value::String(f)) if f == "pagerduty" => HttpFormat::PagerDuty,
        Some(f) => {
            let got = f.as_str().unwrap_or("");
            let hint = strsim_hint(got, &["generic", "pagerduty"]);
            v.err(
                &format!("{p}/format"),
                format!("expected `generic` or `pagerduty`{hint}"),
            );
            return None;
        }
    };
    let rp = format!("{p}/routing_key_env");
    let routing_key = match (format, h.get("routing_key_env")) {
        (HttpFormat::Generic, None) => None,
        (HttpFormat::Generic, Some(_)) => {
            v.err(&rp, "`routing_key_env` only applies to `format: pagerduty`");
            return None;
        }
        (HttpFormat::PagerDuty, None) => {
            v.err(
                p,
                "`format: pagerduty` needs `routing_key_env`: the environment variable that holds the routing key",
            );
            return None;
        }
        (HttpFormat::PagerDuty, Some(Value::String(name)))
            if !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
        {
            match std::env::var(name) {
                Ok(k) if !k.is_empty() && k.chars().all(|c| c.is_ascii_graphic()) => {
                    Some(Secret::new(k))
                }
                Ok(_) => {
                    v.err(
                        &rp,
                        format!("the environment variable `{name}` holds no printable routing key"),
                    );
                    return None;
                }
                Err(_) => {
                    v.err(
                        &rp,
                        format!("the environment variable `{name}` is not set (or not UTF-8)"),
                    );
                    return None;
                }
            }
        }
        (HttpFormat::PagerDuty, Some(_)) => {
            v.err(
                &rp,
                "expected the name of an environment variable, such as PAGERDUTY_ROUTING_KEY",
            );
            return None;
        }
    };
    Some(StepKind::Http {
        url,
        format,
        routing_key,
    })
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
            "arm",
            "log",
            "timeout",
            "retries",
            "backoff",
            "idempotent",
            "env",
        ],
    );
    let kinds: Vec<&str> = ["exec", "http", "azure_ack", "arm", "log"]
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
        ["http"] => parse_http(v, &format!("{p}/http"), item.get("http"))?,
        ["azure_ack"] => StepKind::AzureAck,
        ["arm"] => parse_arm(v, &format!("{p}/arm"), item.get("arm"))?,
        ["log"] => StepKind::Log,
        [] => {
            v.err(p, "a step needs one of exec, http, azure_ack, arm, log");
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
    let idempotent = match item.get("idempotent") {
        None => !matches!(kind, StepKind::Exec(_)),
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            v.err(&format!("{p}/idempotent"), "expected true or false");
            false
        }
    };
    let retries = match item.get("retries") {
        // A non-idempotent step is not retried unless asked: an attempt that may have acted
        // is never repeated anyway, only one that certainly failed before any effect.
        None if idempotent => 2,
        None => 0,
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
    let env = parse_exec_env(v, &format!("{p}/env"), item.get("env"), &kind);
    Some(Step {
        name,
        kind,
        timeout,
        retries,
        backoff,
        idempotent,
        env,
    })
}

/// An `exec` step's `env`: names of variables passed through from Keel's environment.
fn parse_exec_env(v: &mut V<'_>, p: &str, item: Option<&Value>, kind: &StepKind) -> Vec<String> {
    let Some(item) = item else {
        return Vec::new();
    };
    if !matches!(kind, StepKind::Exec(_)) {
        v.err(p, "`env` applies to `exec` steps only");
        return Vec::new();
    }
    let Value::Array(a) = item else {
        v.err(
            p,
            "`env` is a list of variable names passed through from Keel's environment, e.g. [KUBECONFIG]",
        );
        return Vec::new();
    };
    let mut names = Vec::new();
    for (i, x) in a.iter().enumerate() {
        let name = x.as_str().unwrap_or("");
        let valid = !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !name.as_bytes()[0].is_ascii_digit();
        if !valid {
            v.err(
                &format!("{p}/{i}"),
                "expected an environment variable name (letters, digits, `_`)",
            );
        } else if name.to_ascii_uppercase().starts_with("KEEL_") {
            v.err(
                &format!("{p}/{i}"),
                format!("`{name}`: `KEEL_*` variables are the event's, set by Keel; Keel's own are never passed on"),
            );
        } else {
            names.push(name.to_string());
        }
    }
    names
}

// ------------------------------------------------------------------------------------------
// Azure: the legacy maintenance endpoint, Resource Health, the managed identity, `arm` steps,
// and files replayed through a normalizer.

/// The legacy Azure in-VM maintenance endpoint (2015 preview, DOMAIN.md 1.6):
/// `GET {url}/metadata/v1/maintenance`, and `/metadata/v1/InstanceInfo` for the VM's name,
/// update and fault domain.
#[derive(Debug, Clone)]
pub struct AzureMaintenanceV1Source {
    /// The IMDS base URL, without a trailing slash (`http://169.254.169.254`).
    pub url: String,
    /// Time between polls (the endpoint gives about five minutes of notice).
    pub interval: Duration,
    /// Timeout of one request.
    pub timeout: Duration,
    /// The longest wait between retries after failures.
    pub max_backoff: Duration,
    /// Whether `InstanceInfo` is read (until it has been read once, or answers 404).
    pub instance_info: bool,
}

/// The managed identity of the VM: tokens from IMDS's
/// `GET {endpoint}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=...`.
#[derive(Debug, Clone)]
pub struct AzureIdentity {
    /// The IMDS base URL, without a trailing slash (`http://169.254.169.254`).
    pub endpoint: String,
    /// The client id of a user-assigned identity; the system-assigned one when absent.
    pub client_id: Option<String>,
    /// The resource the token is for (`https://management.azure.com/`).
    pub resource: String,
    /// Timeout of a token request.
    pub timeout: Duration,
}

impl Default for AzureIdentity {
    fn default() -> AzureIdentity {
        AzureIdentity {
            endpoint: "http://169.254.169.254".into(),
            client_id: None,
            resource: DEFAULT_TOKEN_RESOURCE.into(),
            timeout: Duration::from_secs(10),
        }
    }
}

/// The resource of managed-identity tokens for Azure Resource Manager.
pub const DEFAULT_TOKEN_RESOURCE: &str = "https://management.azure.com/";
/// Azure Resource Manager's public endpoint.
pub const DEFAULT_ARM_ENDPOINT: &str = "https://management.azure.com";
/// The Resource Health api-version polled (the newest stable one, DOMAIN.md 2.1).
pub const DEFAULT_RESOURCE_HEALTH_API_VERSION: &str = "2025-04-01";
/// The Compute api-version of resubmitted VM requests.
pub const DEFAULT_COMPUTE_API_VERSION: &str = "2024-07-01";

/// Azure Resource Health for one VM: `GET {arm_endpoint}{resource_id}/providers/
/// Microsoft.ResourceHealth/availabilityStatuses/current?api-version=...` with a
/// managed-identity bearer token.
#[derive(Debug, Clone)]
pub struct ResourceHealthSource {
    /// The ARM base URL, without a trailing slash.
    pub arm_endpoint: String,
    /// The VM's resource id (`/subscriptions/{sub}/resourceGroups/{rg}/providers/
    /// Microsoft.Compute/virtualMachines/{vm}`); `None`: read from IMDS's instance metadata
    /// (`/metadata/instance/compute`) at start.
    pub resource_id: Option<String>,
    /// The Resource Health api-version.
    pub api_version: String,
    /// Time between polls.
    pub interval: Duration,
    /// Timeout of one request.
    pub timeout: Duration,
    /// The longest wait between retries after failures.
    pub max_backoff: Duration,
}

/// How a replayed file is cut into payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// JSON lines: every non-blank line is one payload (the default).
    Lines,
    /// The whole file is one payload (a pretty-printed document, a fixture).
    Document,
}

/// A file (or standard input) whose payloads are replayed through a normalizer.
#[derive(Debug, Clone)]
pub struct FileSource {
    /// The file; `None` for standard input (`path: "-"`).
    pub path: Option<PathBuf>,
    /// The normalizer (a name of `keel normalize --list`).
    pub normalizer: &'static str,
    /// How the file is cut into payloads.
    pub format: FileFormat,
}

impl FileSource {
    /// The path as written in messages (`-` for standard input).
    pub fn display(&self) -> String {
        self.path
            .as_ref()
            .map_or_else(|| "-".to_string(), |p| p.display().to_string())
    }
}

/// The normalizer called `name` (its static name), if there is one.
pub fn normalizer_name(name: &str) -> Option<&'static str> {
    keel_engine::normalize::NORMALIZERS
        .iter()
        .find(|n| n.name == name)
        .map(|n| n.name)
}

fn parse_maintenance_v1(v: &mut V<'_>, s: &Value) -> AzureMaintenanceV1Source {
    let p = "/sources/azure_maintenance_v1";
    v.keys(
        p,
        s,
        &["url", "interval", "timeout", "max_backoff", "instance_info"],
    );
    AzureMaintenanceV1Source {
        url: v.url(&format!("{p}/url"), s.get("url"), "http://169.254.169.254"),
        interval: v.positive_at(p, s, "interval", Duration::from_secs(5)),
        timeout: v.positive_at(p, s, "timeout", Duration::from_secs(5)),
        max_backoff: v.positive_at(p, s, "max_backoff", Duration::from_secs(30)),
        instance_info: v.boolean(&format!("{p}/instance_info"), s.get("instance_info"), true),
    }
}

/// A name made of ASCII letters, digits and `extra`, 1 to `max` characters.
fn name_ok(s: &str, max: usize, extra: &str) -> bool {
    !s.is_empty()
        && s.chars().count() <= max
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || extra.contains(c))
}

/// An api-version such as `2025-04-01` or `2023-10-01-preview`.
pub fn api_version_ok(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 10
        && b.len() <= 32
        && b[..10].iter().enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                *c == b'-'
            } else {
                c.is_ascii_digit()
            }
        })
        && s[10..]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
}

fn parse_api_version(v: &mut V<'_>, ptr: &str, val: Option<&Value>, default: &str) -> String {
    match val {
        None => default.to_string(),
        Some(Value::String(s)) if api_version_ok(s) => s.clone(),
        Some(_) => {
            v.err(ptr, "expected an api-version such as 2025-04-01");
            default.to_string()
        }
    }
}

/// An ARM resource id: `/subscriptions/...`, no query, fragment, whitespace or `..`.
pub fn resource_id_ok(id: &str) -> bool {
    id.len() <= 1024
        && id
            .get(..15)
            .is_some_and(|p| p.eq_ignore_ascii_case("/subscriptions/"))
        && !id.contains("//")
        && !id.split('/').any(|seg| seg == "." || seg == "..")
        && id
            .chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && !matches!(c, '?' | '#' | '%' | '\\'))
}

/// A scope that `arm` steps may act in (`arm.scopes`): a whole subscription
/// (`/subscriptions/<id>`) or one resource group of it
/// (`/subscriptions/<id>/resourceGroups/<rg>`). Names compare case-insensitively, as ARM
/// compares them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArmScope {
    /// The subscription id.
    pub subscription: String,
    /// The resource group; `None`: the whole subscription.
    pub resource_group: Option<String>,
}

impl ArmScope {
    /// Parses `/subscriptions/<id>` or `/subscriptions/<id>/resourceGroups/<rg>` (the fixed
    /// words in any case; no trailing slash, nothing more).
    pub fn parse(s: &str) -> Option<ArmScope> {
        let parts: Vec<&str> = s.split('/').collect();
        let sub_ok = |x: &str| name_ok(x, 64, "-");
        let rg_ok = |x: &str| name_ok(x, 90, "-_.()") && !x.ends_with('.');
        match parts.as_slice() {
            ["", subs, sub] if subs.eq_ignore_ascii_case("subscriptions") && sub_ok(sub) => {
                Some(ArmScope {
                    subscription: (*sub).to_string(),
                    resource_group: None,
                })
            }
            ["", subs, sub, rgs, rg]
                if subs.eq_ignore_ascii_case("subscriptions")
                    && rgs.eq_ignore_ascii_case("resourceGroups")
                    && sub_ok(sub)
                    && rg_ok(rg) =>
            {
                Some(ArmScope {
                    subscription: (*sub).to_string(),
                    resource_group: Some((*rg).to_string()),
                })
            }
            _ => None,
        }
    }

    /// Whether a resource of `subscription` and `resource_group` is inside this scope.
    pub fn contains(&self, subscription: &str, resource_group: &str) -> bool {
        self.subscription.eq_ignore_ascii_case(subscription)
            && self
                .resource_group
                .as_deref()
                .is_none_or(|rg| rg.eq_ignore_ascii_case(resource_group))
    }
}

impl std::fmt::Display for ArmScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "/subscriptions/{}", self.subscription)?;
        if let Some(rg) = &self.resource_group {
            write!(f, "/resourceGroups/{rg}")?;
        }
        Ok(())
    }
}

/// `arm: { scopes: [...] }`: where `arm` steps may act. An empty list is an error (it could
/// only make every `arm` step fail); a missing one is checked against the runbooks by
/// [`require_arm_scopes`].
fn parse_arm_scopes(v: &mut V<'_>, a: Option<&Value>) -> Vec<ArmScope> {
    let Some(a) = a else {
        return Vec::new();
    };
    v.keys("/arm", a, &["scopes"]);
    let what = "expected a list of scopes: /subscriptions/<id> or /subscriptions/<id>/resourceGroups/<name>";
    match a.get("scopes") {
        None if a.is_object() => {
            v.err("/arm", format!("`arm` needs `scopes`: {what}"));
            Vec::new()
        }
        None => Vec::new(),
        Some(Value::Array(items)) if items.is_empty() => {
            v.err("/arm/scopes", format!("no scope given; {what}"));
            Vec::new()
        }
        Some(Value::Array(items)) => {
            let mut out = Vec::new();
            for (i, item) in items.iter().enumerate() {
                match item.as_str().and_then(ArmScope::parse) {
                    Some(s) => out.push(s),
                    None => v.err(
                        &format!("/arm/scopes/{i}"),
                        "expected a scope: /subscriptions/<id> or /subscriptions/<id>/resourceGroups/<name>",
                    ),
                }
            }
            out
        }
        Some(_) => {
            v.err("/arm/scopes", what);
            Vec::new()
        }
    }
}

/// Without `arm.scopes`, every `arm` step is a configuration error at its position: an
/// `arm` step may write only inside scopes the operator named, and there is no default that
/// allows everything.
/// An `exec` step's `env` must not pass on a secret Keel itself reads: the ingest token
/// (`sources.ingest.token_env`) or a PagerDuty routing key (`routing_key_env`).
fn refuse_secret_env(v: &mut V<'_>, root: &Value, runbooks: &Value) {
    let Value::Object(m) = runbooks else { return };
    let mut secrets: Vec<&str> = Vec::new();
    if let Some(t) = root
        .get("sources")
        .and_then(|s| s.get("ingest"))
        .and_then(|i| i.get("token_env"))
        .and_then(Value::as_str)
    {
        secrets.push(t);
    }
    for steps in m.values() {
        let Value::Array(items) = steps else { continue };
        for item in items {
            if let Some(k) = item
                .get("http")
                .and_then(|h| h.get("routing_key_env"))
                .and_then(Value::as_str)
            {
                secrets.push(k);
            }
        }
    }
    for (action, steps) in m {
        let Value::Array(items) = steps else { continue };
        for (i, item) in items.iter().enumerate() {
            let Some(Value::Array(names)) = item.get("env") else {
                continue;
            };
            for (j, n) in names.iter().enumerate() {
                if let Some(n) = n.as_str().filter(|n| secrets.contains(n)) {
                    v.err(
                        &format!("/runbooks/{action}/{i}/env/{j}"),
                        format!("`{n}` holds a secret Keel uses (the ingest token or a routing key); it is never passed on to a runbook"),
                    );
                }
            }
        }
    }
}

fn require_arm_scopes(v: &mut V<'_>, runbooks: &Value) {
    let Value::Object(m) = runbooks else { return };
    for (action, steps) in m {
        let Value::Array(items) = steps else { continue };
        for (i, item) in items.iter().enumerate() {
            if item.get("arm").is_some() {
                v.key_err(
                    &format!("/runbooks/{action}/{i}/arm"),
                    "an `arm` step needs `arm.scopes` (top level): the subscriptions \
                     (/subscriptions/<id>) or resource groups \
                     (/subscriptions/<id>/resourceGroups/<name>) whose VMs it may write",
                );
            }
        }
    }
}

/// Whether `url` may carry a bearer token, or the request for one: `https://`, or plain
/// `http://` only on a loopback address (127.0.0.0/8, `::1`, `localhost`: the traffic never
/// leaves the machine), and, with `imds`, on Azure IMDS's link-local 169.254.169.254 (which
/// speaks only HTTP; the host intercepts that address, so the traffic never leaves the
/// physical host, and any process on the VM may ask it for the same token anyway).
pub fn token_url_ok(url: &str, imds: bool) -> bool {
    let Ok(u) = reqwest::Url::parse(url) else {
        return false;
    };
    match u.scheme() {
        "https" => true,
        "http" => {
            // The URL parser has normalized the host: `127.1` is `127.0.0.1`, IPv6 is
            // bracketed.
            let host = u.host_str().unwrap_or("");
            if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
                v6.parse::<std::net::Ipv6Addr>()
                    .is_ok_and(|ip| ip.is_loopback())
            } else if let Ok(ip) = host.parse::<std::net::Ipv4Addr>() {
                ip.is_loopback() || (imds && ip == std::net::Ipv4Addr::new(169, 254, 169, 254))
            } else {
                host.eq_ignore_ascii_case("localhost") || host.eq_ignore_ascii_case("localhost.")
            }
        }
        _ => false,
    }
}

fn parse_identity(v: &mut V<'_>, s: Option<&Value>) -> AzureIdentity {
    let Some(s) = s else {
        return AzureIdentity::default();
    };
    let p = "/azure_identity";
    v.keys(p, s, &["endpoint", "client_id", "resource", "timeout"]);
    let d = AzureIdentity::default();
    let client_id = match s.get("client_id") {
        None => None,
        Some(Value::String(c)) if name_ok(c, 64, "-") => Some(c.clone()),
        Some(_) => {
            v.err(
                &format!("{p}/client_id"),
                "expected the client id (a GUID) of a user-assigned identity",
            );
            None
        }
    };
    let resource = match s.get("resource") {
        None => d.resource.clone(),
        Some(Value::String(r))
            if r.starts_with("https://")
                && !r.chars().any(|c| c.is_whitespace() || c.is_control()) =>
        {
            r.clone()
        }
        Some(_) => {
            v.err(
                &format!("{p}/resource"),
                "expected the token's resource, such as https://management.azure.com/",
            );
            d.resource.clone()
        }
    };
    AzureIdentity {
        endpoint: v.token_url(
            &format!("{p}/endpoint"),
            s.get("endpoint"),
            &d.endpoint,
            true,
        ),
        client_id,
        resource,
        timeout: v.positive(&format!("{p}/timeout"), s.get("timeout"), d.timeout),
    }
}

/// Resource Health; `None` (with an error reported) when the VM cannot be named.
fn parse_resource_health(
    v: &mut V<'_>,
    s: &Value,
    self_name: Option<&str>,
) -> Option<ResourceHealthSource> {
    let p = "/sources/azure_resource_health";
    v.keys(
        p,
        s,
        &[
            "arm_endpoint",
            "resource_id",
            "subscription_id",
            "resource_group",
            "vm_name",
            "api_version",
            "interval",
            "timeout",
            "max_backoff",
        ],
    );
    let text =
        |v: &mut V<'_>, key: &str, ok: &dyn Fn(&str) -> bool, what: &str| -> Option<String> {
            match s.get(key) {
                None => None,
                Some(Value::String(x)) if ok(x) => Some(x.clone()),
                Some(_) => {
                    v.err(&format!("{p}/{key}"), format!("expected {what}"));
                    None
                }
            }
        };
    let arm_endpoint = v.token_url(
        &format!("{p}/arm_endpoint"),
        s.get("arm_endpoint"),
        DEFAULT_ARM_ENDPOINT,
        false,
    );
    let api_version = parse_api_version(
        v,
        &format!("{p}/api_version"),
        s.get("api_version"),
        DEFAULT_RESOURCE_HEALTH_API_VERSION,
    );
    let interval = v.positive_at(p, s, "interval", Duration::from_secs(60));
    let timeout = v.positive_at(p, s, "timeout", Duration::from_secs(10));
    let max_backoff = v.positive_at(p, s, "max_backoff", Duration::from_secs(300));
    let parts = ["subscription_id", "resource_group", "vm_name"];
    let resource_id = if s.get("resource_id").is_none() && parts.iter().all(|k| s.get(*k).is_none())
    {
        // Nothing says which VM: this one, as IMDS's instance metadata names it.
        None
    } else if s.get("resource_id").is_some() {
        if let Some(k) = parts.iter().find(|k| s.get(**k).is_some()) {
            v.err(
                &format!("{p}/{k}"),
                "give either `resource_id` or `subscription_id`/`resource_group`/`vm_name`, not both",
            );
        }
        text(
            v,
            "resource_id",
            &resource_id_ok,
            "the VM's resource id, /subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{vm}",
        )
        .map(Some)?
    } else {
        let sub = text(
            v,
            "subscription_id",
            &|x| name_ok(x, 64, "-"),
            "a subscription id (a GUID)",
        );
        let rg = text(
            v,
            "resource_group",
            &|x| name_ok(x, 90, "-_.()") && !x.ends_with('.'),
            "a resource group name (letters, digits, - _ . ( ), at most 90)",
        );
        let vm = text(
            v,
            "vm_name",
            &|x| name_ok(x, 64, "-_."),
            "a VM name (letters, digits, - _ ., at most 64)",
        )
        .or_else(|| {
            self_name
                .filter(|n| name_ok(n, 64, "-_."))
                .map(str::to_string)
        });
        match (sub, rg, vm) {
            (Some(sub), Some(rg), Some(vm)) => Some(format!(
                "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{vm}"
            )),
            _ => {
                if s.get("subscription_id").is_none() || s.get("resource_group").is_none() {
                    v.err(
                        p,
                        "Resource Health needs the whole VM: `resource_id`, or `subscription_id` and `resource_group` (and `vm_name`, which defaults to `self`); or none of them, to read this VM's from IMDS",
                    );
                } else if s.get("vm_name").is_none() {
                    v.err(p, "Resource Health needs `vm_name` (or a top-level `self`)");
                }
                return None;
            }
        }
    };
    Some(ResourceHealthSource {
        arm_endpoint,
        resource_id,
        api_version,
        interval,
        timeout,
        max_backoff,
    })
}

/// `files: [{path, normalizer, format?}]`; `path: "-"` is standard input (at most once).
fn parse_files(v: &mut V<'_>, base: &Path, s: &Value) -> Vec<FileSource> {
    let p = "/sources/files";
    let Value::Array(items) = s else {
        v.err(p, "expected a list of {path, normalizer, format?}");
        return Vec::new();
    };
    let names: Vec<&str> = keel_engine::normalize::NORMALIZERS
        .iter()
        .map(|n| n.name)
        .collect();
    let mut out = Vec::new();
    let mut stdin = false;
    for (i, item) in items.iter().enumerate() {
        let ip = format!("{p}/{i}");
        v.keys(&ip, item, &["path", "normalizer", "format"]);
        let path = match item.get("path") {
            Some(Value::String(x)) if x == "-" => {
                if stdin {
                    v.err(
                        &format!("{ip}/path"),
                        "standard input can be read only once",
                    );
                }
                stdin = true;
                None
            }
            Some(Value::String(x)) if !x.is_empty() => {
                let full = base.join(x);
                if !full.exists() || full.is_dir() {
                    v.err(
                        &format!("{ip}/path"),
                        format!("`{}` is not a readable file", full.display()),
                    );
                }
                Some(full)
            }
            Some(_) => {
                v.err(
                    &format!("{ip}/path"),
                    "expected a file path, or \"-\" for standard input",
                );
                continue;
            }
            None => {
                v.err(
                    &ip,
                    "a replayed file needs `path` (\"-\" for standard input)",
                );
                continue;
            }
        };
        let normalizer = match item.get("normalizer") {
            Some(Value::String(n)) => match normalizer_name(n) {
                Some(n) => n,
                None => {
                    let hint = strsim_hint(n, &names);
                    v.err(
                        &format!("{ip}/normalizer"),
                        format!(
                            "unknown normalizer `{}`{hint}; expected one of: {}",
                            keel_engine::escape(n),
                            names.join(", ")
                        ),
                    );
                    continue;
                }
            },
            Some(_) => {
                v.err(&format!("{ip}/normalizer"), "expected a normalizer name");
                continue;
            }
            None => {
                v.err(
                    &ip,
                    format!(
                        "a replayed file needs `normalizer`: one of {}",
                        names.join(", ")
                    ),
                );
                continue;
            }
        };
        let format = match item.get("format") {
            None => FileFormat::Lines,
            Some(Value::String(f)) if f == "lines" => FileFormat::Lines,
            Some(Value::String(f)) if f == "document" => FileFormat::Document,
            Some(f) => {
                let hint = strsim_hint(f.as_str().unwrap_or(""), &["lines", "document"]);
                v.err(
                    &format!("{ip}/format"),
                    format!("expected `lines` or `document`{hint}"),
                );
                FileFormat::Lines
            }
        };
        out.push(FileSource {
            path,
            normalizer,
            format,
        });
    }
    out
}

/// An `arm` step: `{ endpoint?, api_version?, follow_operation?, poll_interval? }`.
fn parse_arm(v: &mut V<'_>, p: &str, a: Option<&Value>) -> Option<StepKind> {
    let a = match a {
        Some(a @ Value::Object(_)) => a,
        Some(Value::Null) | None => &Value::Object(serde_json::Map::new()),
        Some(_) => {
            v.err(
                p,
                "`arm` is a map: { endpoint?, api_version?, follow_operation?, poll_interval? }",
            );
            return None;
        }
    };
    v.keys(
        p,
        a,
        &[
            "endpoint",
            "api_version",
            "follow_operation",
            "poll_interval",
        ],
    );
    let follow = v.boolean(
        &format!("{p}/follow_operation"),
        a.get("follow_operation"),
        true,
    );
    let poll_interval = v.positive_at(p, a, "poll_interval", Duration::from_secs(5));
    Some(StepKind::Arm {
        follow,
        poll_interval,
        endpoint: v.token_url(
            &format!("{p}/endpoint"),
            a.get("endpoint"),
            DEFAULT_ARM_ENDPOINT,
            false,
        ),
        api_version: parse_api_version(
            v,
            &format!("{p}/api_version"),
            a.get("api_version"),
            DEFAULT_COMPUTE_API_VERSION,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_non_idempotent_step_is_not_retried_by_default() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("keel.yaml");
        std::fs::write(
            &path,
            "policies: .\nstate: state.db\nrunbooks:\n  drain:\n    - name: cordon\n      exec: [\"/bin/true\"]\n    - name: notify\n      http: { url: \"http://127.0.0.1:9/hook\" }\n    - name: once\n      http: { url: \"http://127.0.0.1:9/hook\" }\n      idempotent: false\n    - name: asked\n      exec: [\"/bin/true\"]\n      retries: 3\n",
        )?;
        let cfg = load(&path).map_err(|e| format!("{e:?}"))?;
        let steps: Vec<(&str, bool, u32)> = cfg
            .runbooks
            .get(&Action::Drain)
            .map(|s| {
                s.iter()
                    .map(|s| (s.name.as_str(), s.idempotent, s.retries))
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(
            steps,
            [
                ("cordon", false, 0),
                ("notify", true, 2),
                ("once", false, 0),
                ("asked", false, 3)
            ]
        );
        Ok(())
    }
}
