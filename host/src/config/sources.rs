//! The `sources:` of `keel.yaml`: what each source reads, and its reader.

use super::*;

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
    /// The longest wait between retries after failures (default 5 s: the notice is 60 s).
    pub max_backoff: Duration,
}

/// The HTTP ingest endpoint for operation failures reported by deployment tools:
/// `POST /ingest` with a JSON body `{idempotency_key, resource, operation, attempt?, request?,
/// error}`, a bearer token, a body size limit.
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

/// The default body limit of the ingest endpoint (1 MiB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;

/// The shortest bearer token the ingest endpoint accepts.
pub const MIN_TOKEN_CHARS: usize = 16;

/// The legacy Azure in-VM maintenance endpoint (2015 preview,
/// `docs/protocols.md#azure-legacy-maintenance-endpoint`):
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

/// Every source `sources:` configures.
#[derive(Debug, Default)]
pub(super) struct Sources {
    pub(super) azure_scheduled_events: Option<SeSource>,
    pub(super) aws_imds: Option<AwsImdsSource>,
    pub(super) gcp_metadata: Option<GcpMetadataSource>,
    pub(super) ingest: Option<IngestSource>,
    pub(super) azure_maintenance_v1: Option<AzureMaintenanceV1Source>,
    pub(super) azure_resource_health: Option<ResourceHealthSource>,
    pub(super) files: Vec<FileSource>,
}

/// `sources:`, each source by its reader. The ingest endpoint listens on `listen`, which must
/// be a loopback address unless `sources.ingest.allow_remote` is true.
pub(super) fn parse_sources(
    v: &mut V<'_>,
    base: &Path,
    root: &Value,
    self_name: Option<&str>,
    listen: SocketAddr,
) -> Sources {
    let mut out = Sources::default();
    let Some(sources) = root.get("sources") else {
        return out;
    };
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
        out.azure_maintenance_v1 = Some(parse_maintenance_v1(v, s));
    }
    if let Some(s) = sources.get("azure_resource_health") {
        out.azure_resource_health = parse_resource_health(v, s, self_name);
    }
    if let Some(s) = sources.get("files") {
        out.files = parse_files(v, base, s);
    }
    if let Some(s) = sources.get("azure_scheduled_events") {
        out.azure_scheduled_events = Some(parse_scheduled_events(v, s));
    }
    if let Some(s) = sources.get("aws_imds") {
        out.aws_imds = Some(parse_aws(v, s));
    }
    if let Some(s) = sources.get("gcp_metadata") {
        out.gcp_metadata = Some(parse_gcp(v, s));
    }
    if let Some(s) = sources.get("ingest") {
        out.ingest = parse_ingest(v, s);
        let remote = s
            .get("allow_remote")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if !remote && !listen.ip().is_loopback() {
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
    }
    out
}

/// `sources.azure_scheduled_events`.
fn parse_scheduled_events(v: &mut V<'_>, s: &Value) -> SeSource {
    let p = "/sources/azure_scheduled_events";
    v.keys(p, s, &["url", "interval", "timeout", "first_timeout"]);
    let url = match s.get("url") {
        Some(Value::String(u)) if u.starts_with("http://") || u.starts_with("https://") => {
            u.clone()
        }
        None => "http://169.254.169.254/metadata/scheduledevents?api-version=2020-07-01".into(),
        Some(_) => {
            v.err(&format!("{p}/url"), "expected an http:// URL");
            String::new()
        }
    };
    SeSource {
        url,
        interval: v.duration_at(p, s, "interval", Duration::from_secs(1)),
        timeout: v.duration_at(p, s, "timeout", Duration::from_secs(5)),
        first_timeout: v.duration_at(p, s, "first_timeout", Duration::from_secs(125)),
    }
}

/// [`V::positive_at`] of key `key` of the map `s` at `p`, rounded down to whole seconds,
/// which must be from 1 to `max` (else `msg`, and `default`).
fn whole_secs_at(
    v: &mut V<'_>,
    p: &str,
    s: &Value,
    key: &str,
    default: Duration,
    max: u64,
    msg: &str,
) -> Duration {
    let d = v.positive_at(p, s, key, default);
    if (1..=max).contains(&d.as_secs()) {
        Duration::from_secs(d.as_secs())
    } else {
        v.err(&format!("{p}/{key}"), msg);
        default
    }
}

pub(super) fn parse_aws(v: &mut V<'_>, s: &Value) -> AwsImdsSource {
    let p = "/sources/aws_imds";
    v.keys(
        p,
        s,
        &["url", "interval", "timeout", "token_ttl", "max_backoff"],
    );
    let token_ttl = whole_secs_at(
        v,
        p,
        s,
        "token_ttl",
        Duration::from_secs(21_600),
        21_600,
        "IMDSv2 tokens live from 1s to 6h (21600s), in whole seconds",
    );
    AwsImdsSource {
        url: v.url(&format!("{p}/url"), s.get("url"), "http://169.254.169.254"),
        interval: v.positive_at(p, s, "interval", Duration::from_secs(5)),
        timeout: v.positive_at(p, s, "timeout", Duration::from_secs(2)),
        token_ttl,
        max_backoff: v.positive_at(p, s, "max_backoff", Duration::from_secs(30)),
    }
}

pub(super) fn parse_gcp(v: &mut V<'_>, s: &Value) -> GcpMetadataSource {
    let p = "/sources/gcp_metadata";
    v.keys(
        p,
        s,
        &["url", "wait_timeout", "timeout", "interval", "max_backoff"],
    );
    let wait_timeout = whole_secs_at(
        v,
        p,
        s,
        "wait_timeout",
        Duration::from_secs(60),
        u64::MAX,
        "the metadata server counts `timeout_sec` in whole seconds: at least 1s",
    );
    GcpMetadataSource {
        url: v.url(
            &format!("{p}/url"),
            s.get("url"),
            "http://metadata.google.internal/computeMetadata/v1",
        ),
        wait_timeout,
        timeout: v.positive_at(p, s, "timeout", Duration::from_secs(5)),
        interval: v.positive_at(p, s, "interval", Duration::from_secs(1)),
        // Google: the server "can return a 503" during maintenance, retry after a second; the
        // notice is 60 s, so a retry is never more than 5 s away by default.
        max_backoff: v.positive_at(p, s, "max_backoff", Duration::from_secs(5)),
    }
}

/// The ingest endpoint; `None` (with an error reported) when its token cannot be had.
pub(super) fn parse_ingest(v: &mut V<'_>, s: &Value) -> Option<IngestSource> {
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
    let token = match v.secret_env(&token_env) {
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

/// The normalizer called `name` (its static name), if there is one.
pub fn normalizer_name(name: &str) -> Option<&'static str> {
    keel_engine::normalize::NORMALIZERS
        .iter()
        .find(|n| n.name == name)
        .map(|n| n.name)
}

pub(super) fn parse_maintenance_v1(v: &mut V<'_>, s: &Value) -> AzureMaintenanceV1Source {
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

/// Resource Health; `None` (with an error reported) when the VM cannot be named.
pub(super) fn parse_resource_health(
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
pub(super) fn parse_files(v: &mut V<'_>, base: &Path, s: &Value) -> Vec<FileSource> {
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
