//! `keel.yaml`: the host's one configuration file, validated whole before anything starts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keel_engine::yaml::{self, YamlDoc};
use keel_engine::{Action, Diagnostic, LoadError};
use serde_json::Value;

pub mod budgets;
mod gates;
mod guards;
mod runbooks;
mod sources;
pub mod state;

pub use budgets::Budget;
pub use gates::{Blocker, BlockerCheck, Window};
pub use runbooks::*;
pub use sources::*;

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The policy directory; `None` (no `policies:` key): the library embedded in the binary
    /// (`crate::library`).
    pub policies: Option<PathBuf>,
    /// The SQLite state database (when `postgres` is `None`); its directory is where the
    /// plugin cache goes by default either way.
    pub state: PathBuf,
    /// Fleet mode: the PostgreSQL database many hosts share (`state: postgres://…`).
    pub postgres: Option<state::Postgres>,
    /// The decision log's file beside standard output (`log:`), if any.
    pub log: LogFile,
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
    /// The kubeconfig `kubernetes` steps use (`kubernetes.kubeconfig`); none: the pod's
    /// service account in a cluster, else `$KUBECONFIG` or `~/.kube/config`.
    #[cfg_attr(not(feature = "kubernetes"), allow(dead_code))]
    pub kubeconfig: Option<PathBuf>,
    /// Runbooks: the ordered steps of each action.
    pub runbooks: BTreeMap<Action, Vec<Step>>,
    /// The uncordon steps Keel puts first in the runbook of a maintenance event that
    /// completed or was canceled: one for each node a `kubernetes` step may cordon (derived
    /// from `runbooks` at load).
    pub uncordons: Vec<Step>,
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
    /// The blast-radius guards (`guards:`; the engine's defaults, all on, when absent).
    pub guards: keel_engine::GuardConfig,
    /// Concurrency budgets (`budgets:`), taken as leases before a runbook's first effect.
    pub budgets: Vec<Budget>,
    /// Maintenance windows (`windows:`): when the actions they name may start.
    pub windows: Vec<Window>,
    /// Blockers (`blockers:`): checks that hold the actions they name while not clear.
    pub blockers: Vec<Blocker>,
}

/// `log:`: a file the decision log also goes to, rotated by size.
#[derive(Debug, Clone, Default)]
pub struct LogFile {
    /// The file (its directory must exist); none: standard output only.
    pub file: Option<PathBuf>,
    /// Its size past which it rotates (bytes).
    pub max_bytes: u64,
    /// How many rotated files are kept (`<file>.1` … `<file>.<keep>`).
    pub keep: usize,
    /// journald's socket, when the log goes to journald (natively, instead of standard
    /// output).
    pub journald: Option<PathBuf>,
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

struct V<'a> {
    doc: &'a YamlDoc,
    diags: Vec<Diagnostic>,
    /// Whether the secrets the configuration names are read from the environment (`keel
    /// run`); commands that only read the state (`keel status`, `keel pause`, `keel eval
    /// --config`) do not need them, and do not see them.
    secrets: bool,
}

impl V<'_> {
    /// The environment variable `name` holding a secret; a placeholder that passes every
    /// check when secrets are not read.
    fn secret_env(&self, name: &str) -> Result<String, std::env::VarError> {
        if self.secrets {
            std::env::var(name)
        } else {
            Ok("not-read-by-this-command-".repeat(3))
        }
    }

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
            Some(v) => duration_of(v).unwrap_or_else(|cause| {
                self.err(
                    ptr,
                    format!("expected a duration such as 500ms, 1s, 5m, 1m30s: {cause}"),
                );
                default
            }),
        }
    }
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
/// The Resource Health api-version polled (the newest stable one).
pub const DEFAULT_RESOURCE_HEALTH_API_VERSION: &str = "2025-04-01";
/// The Compute api-version of resubmitted VM requests.
pub const DEFAULT_COMPUTE_API_VERSION: &str = "2024-07-01";

/// A duration in `keel.yaml`: a number of seconds, or a string in
/// [`keel_engine::parse_duration`]'s grammar (`500ms`, `1s`, `5m`, `1m30s`, `2h`, `30d`).
fn duration_of(v: &Value) -> Result<Duration, String> {
    match v {
        Value::Number(n) => keel_engine::parse_duration(&n.to_string()).map_err(|e| e.to_string()),
        Value::String(s) => keel_engine::parse_duration(s).map_err(|e| e.to_string()),
        _ => Err("not a number or a string".into()),
    }
}

/// The root keys of `keel.yaml`.
const ROOT_KEYS: &[&str] = &[
    "policies",
    "state",
    "postgres",
    "log",
    "plugin_cache",
    "listen",
    "dry_run",
    "self",
    "sources",
    "runbooks",
    "arm",
    "kubernetes",
    "unready_after",
    "policy_reload_interval",
    "limits",
    "retention",
    "gc_interval",
    "commit_batch_max",
    "azure_identity",
    "guards",
    "budgets",
    "windows",
    "blockers",
];

/// Reads and validates `keel.yaml`; every problem is reported with its position. Relative
/// paths are relative to the file.
pub fn load(path: &Path) -> Result<Config, LoadError> {
    load_with(path, true)
}

/// [`load`] for the commands that read the state but run nothing (`keel status`, `keel
/// pause`, `keel eval --config`): the secrets it names (the ingest token, paging keys) are
/// not read, so an operator's shell need not hold them. The configuration returned must not
/// run anything: its secrets are placeholders.
pub fn load_without_secrets(path: &Path) -> Result<Config, LoadError> {
    load_with(path, false)
}

fn load_with(path: &Path, secrets: bool) -> Result<Config, LoadError> {
    let bytes = std::fs::read(path).map_err(|e| {
        LoadError::from_diagnostics(vec![Diagnostic::at(
            path,
            0,
            0,
            format!("cannot read: {e}"),
        )])
    })?;
    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    parse(path, &bytes, &base, secrets)
}

/// Validates `keel.yaml` held in memory (`keel demo`'s embedded configuration): `name` names
/// it in diagnostics, relative paths are relative to `base`.
pub fn load_text(name: &Path, text: &str, base: &Path) -> Result<Config, LoadError> {
    parse(name, text.as_bytes(), base, true)
}

fn parse(path: &Path, bytes: &[u8], base: &Path, secrets: bool) -> Result<Config, LoadError> {
    let doc = yaml::load(path, bytes)?;
    let base = base.to_path_buf();
    let mut v = V {
        doc: &doc,
        diags: Vec::new(),
        secrets,
    };
    let root = doc.value.clone();
    // One reader per root key, always in this order: the diagnostics are sorted by position
    // (stably), so two problems at the same position keep this order.
    v.keys("", &root, ROOT_KEYS);
    let policies = parse_policies(&mut v, &base, root.get("policies"));
    let (state, postgres) =
        state::parse_state(&mut v, &base, root.get("state"), root.get("postgres"));
    let plugin_cache = parse_plugin_cache(&mut v, &base, root.get("plugin_cache"), &state);
    let log = parse_log(&mut v, &base, root.get("log"));
    let listen = parse_listen(&mut v, root.get("listen"));
    let dry_run = v.boolean("/dry_run", root.get("dry_run"), false);
    let self_name = parse_self(&mut v, root.get("self"));
    let unready_after = v.duration_at("", &root, "unready_after", Duration::from_secs(60));
    let reload_interval =
        v.positive_at("", &root, "policy_reload_interval", Duration::from_secs(3));
    let limits = parse_limits(&mut v, root.get("limits"));
    let retention = v.positive_at("", &root, "retention", Duration::from_secs(30 * 86_400));
    let gc_interval = v.positive_at("", &root, "gc_interval", Duration::from_secs(3_600));
    let commit_batch_max = v.count(
        "/commit_batch_max",
        root.get("commit_batch_max"),
        256,
        "expected a number from 1 to 10000",
    );
    let azure_identity = parse_identity(&mut v, root.get("azure_identity"));
    let arm_scopes = parse_arm_scopes(&mut v, root.get("arm"));
    let sources = parse_sources(&mut v, &base, &root, self_name.as_deref(), listen);
    let kubeconfig = runbooks::parse_kubernetes(&mut v, &base, root.get("kubernetes"));
    let runbooks = parse_runbooks(&mut v, &root);
    let guards = guards::parse_guards(&mut v, root.get("guards"));
    let budgets = budgets::parse_budgets(&mut v);
    let windows = gates::parse_windows(&mut v, root.get("windows"));
    let blockers = gates::parse_blockers(&mut v, root.get("blockers"));
    let mut diags = v.diags;
    diags.sort_by_key(|d| (d.line(), d.column()));
    if !diags.is_empty() {
        return Err(LoadError::from_diagnostics(diags));
    }
    Ok(Config {
        policies,
        state,
        postgres,
        log,
        listen,
        dry_run,
        self_name,
        azure_scheduled_events: sources.azure_scheduled_events,
        aws_imds: sources.aws_imds,
        gcp_metadata: sources.gcp_metadata,
        ingest: sources.ingest,
        azure_maintenance_v1: sources.azure_maintenance_v1,
        azure_resource_health: sources.azure_resource_health,
        files: sources.files,
        azure_identity,
        arm_scopes,
        kubeconfig,
        uncordons: runbooks::uncordon_steps(&runbooks),
        runbooks,
        unready_after,
        reload_interval,
        limits,
        retention,
        gc_interval,
        commit_batch_max,
        plugin_cache,
        guards,
        budgets,
        windows,
        blockers,
    })
}

/// `policies`: the policy directory, which must exist; absent, the embedded library (`None`).
fn parse_policies(v: &mut V<'_>, base: &Path, val: Option<&Value>) -> Option<PathBuf> {
    val?;
    let policies = v.path(base, "/policies", val, "policies");
    if !policies.exists() {
        v.err(
            "/policies",
            format!("`{}` does not exist", policies.display()),
        );
    }
    Some(policies)
}

/// `plugin_cache`: by default `plugin-cache/` beside the state database.
fn parse_plugin_cache(v: &mut V<'_>, base: &Path, val: Option<&Value>, state: &Path) -> PathBuf {
    match val {
        None => state
            .parent()
            .unwrap_or(Path::new("."))
            .join("plugin-cache"),
        Some(_) => v.path(base, "/plugin_cache", val, ""),
    }
}

/// `listen`: an address and port (`127.0.0.1:9464` by default).
fn parse_listen(v: &mut V<'_>, val: Option<&Value>) -> SocketAddr {
    let default = SocketAddr::from(([127, 0, 0, 1], 9464));
    match val {
        None => default,
        Some(Value::String(s)) => s.parse().unwrap_or_else(|_| {
            v.err("/listen", "expected an address such as 127.0.0.1:9464");
            default
        }),
        Some(_) => {
            v.err("/listen", "expected an address such as 127.0.0.1:9464");
            default
        }
    }
}

/// `self`: this VM's name, not empty.
fn parse_self(v: &mut V<'_>, val: Option<&Value>) -> Option<String> {
    match val {
        None => None,
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(_) => {
            v.err("/self", "expected this VM's name");
            None
        }
    }
}

/// `log: {file, max_bytes, keep, journald}`: 64 MiB and 5 files by default.
fn parse_log(v: &mut V<'_>, base: &Path, l: Option<&Value>) -> LogFile {
    let mut log = LogFile {
        file: None,
        max_bytes: 64 << 20,
        keep: 5,
        journald: None,
    };
    let Some(l) = l else { return log };
    v.keys("/log", l, &["file", "max_bytes", "keep", "journald"]);
    match l.get("journald") {
        None | Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) => {
            log.journald = Some(PathBuf::from(crate::run::journald::DEFAULT_SOCKET));
        }
        Some(Value::String(_)) => {
            log.journald = Some(v.path(base, "/log/journald", l.get("journald"), ""))
        }
        Some(_) => v.err(
            "/log/journald",
            "expected true, false, or the path of journald's socket",
        ),
    }
    if l.get("file").is_some() {
        let f = v.path(base, "/log/file", l.get("file"), "");
        let dir = f.parent().filter(|d| !d.as_os_str().is_empty());
        if f.is_dir() {
            v.err("/log/file", format!("`{}` is a directory", f.display()));
        } else if dir.is_some_and(|d| !d.is_dir()) {
            v.err(
                "/log/file",
                format!("`{}`: its directory does not exist", f.display()),
            );
        } else {
            log.file = Some(f);
        }
    } else if l.get("journald").is_none() {
        v.err(
            "/log",
            "`log` needs `file` (the file the decision log also goes to) or `journald`",
        );
    }
    match l.get("max_bytes") {
        None => {}
        Some(n) => match n.as_u64() {
            Some(b) if b >= 4096 => log.max_bytes = b,
            _ => v.err("/log/max_bytes", "expected a size in bytes, at least 4096"),
        },
    }
    match l.get("keep") {
        None => {}
        Some(n) => match n.as_u64() {
            Some(k) if (1..=100).contains(&k) => log.keep = k as usize,
            _ => v.err(
                "/log/keep",
                "expected how many rotated files to keep, from 1 to 100",
            ),
        },
    }
    log
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

    /// The shipped example (what `keel demo` runs) loads, states every guard on with its
    /// default values, and has the update-domain budget with its bake time.
    #[test]
    fn the_example_states_the_guards_and_the_update_domain_budget(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/keel.yaml");
        let cfg = load(&path).map_err(|e| format!("{e:?}"))?;
        let g = &cfg.guards;
        assert_eq!(*g, keel_engine::GuardConfig::default());
        assert!(g.retry_budget.enabled && g.storm.enabled && g.flap.enabled);
        // Stated, not merely defaulted: the file itself names each guard.
        let text = std::fs::read_to_string(&path)?;
        for line in [
            "\nguards:\n",
            "\n  retry_budget: { enabled: true,",
            "\n  storm: { enabled: true,",
            "\n  flap: { enabled: true,",
        ] {
            assert!(text.contains(line), "{line:?} is not in {}", path.display());
        }
        let b: Vec<_> = cfg.budgets.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(b, ["update-domains"]);
        let b = &cfg.budgets[0];
        assert_eq!(b.key.text(), "event.resource.availability_set");
        assert_eq!(
            b.per.as_ref().map(|p| p.text()),
            Some("string(event.resource.update_domain)")
        );
        assert_eq!(b.actions, [Action::Drain]);
        assert_eq!(b.max_in_flight, keel_engine::budget::Amount::Count(1));
        assert_eq!((b.bake_s, b.lease_ttl_s), (600, 60));
        assert_eq!((b.group_size, b.min_healthy), (None, None));
        Ok(())
    }
}
