//! The `runbooks:` of `keel.yaml`: steps and their kinds, `arm.scopes`, and their readers.

use super::*;

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
    /// Cordon this host's Kubernetes node and evict its pods (`kubernetes:`), or, for a
    /// maintenance event that completed, uncordon the node Keel cordoned for it.
    Kubernetes(KubeStep),
}

/// A `kubernetes` step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeStep {
    /// The node (`node:`); none: the host's `self` name.
    pub node: Option<String>,
    /// What the step does.
    pub op: KubeOp,
    /// Uncordon the node once the event completes or is canceled (`uncordon`, default true):
    /// Keel adds that step to the event's completion by itself.
    pub uncordon: bool,
    /// The pods' termination grace on eviction (`grace_period_s`); none: each pod's own.
    pub grace_period_s: Option<i64>,
}

/// What a `kubernetes` step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KubeOp {
    /// Cordon the node and evict its pods (`evict: true`, the default) through the Eviction
    /// API, which respects PodDisruptionBudgets, until none is left or the step's timeout.
    Drain,
    /// Cordon only (`evict: false`).
    Cordon,
    /// Uncordon the node if Keel cordoned it for this event (the completion step).
    Uncordon,
}

/// A Kubernetes node name as a `kubernetes` step may name it: an RFC 1123 subdomain (what
/// the API server accepts; it also goes into a field selector, so nothing else may).
pub fn node_name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// The uncordon step for each distinct node a `kubernetes` step with `uncordon` may cordon,
/// named `kubernetes-uncordon-<n>`.
pub(super) fn uncordon_steps(runbooks: &BTreeMap<Action, Vec<Step>>) -> Vec<Step> {
    let mut out: Vec<Step> = Vec::new();
    for step in runbooks.values().flatten() {
        let StepKind::Kubernetes(k) = &step.kind else {
            continue;
        };
        let uncordon = KubeStep {
            op: KubeOp::Uncordon,
            ..k.clone()
        };
        let known = out
            .iter()
            .any(|s| matches!(&s.kind, StepKind::Kubernetes(u) if *u == uncordon));
        if !k.uncordon || k.op == KubeOp::Uncordon || known {
            continue;
        }
        out.push(Step {
            name: format!("kubernetes-uncordon-{}", out.len() + 1),
            kind: StepKind::Kubernetes(uncordon),
            timeout: Duration::from_secs(60),
            retries: 2,
            backoff: Duration::from_secs(1),
            idempotent: true,
            env: Vec::new(),
        });
    }
    out
}

/// The top-level `kubernetes: { kubeconfig }`.
pub(super) fn parse_kubernetes(v: &mut V<'_>, base: &Path, k: Option<&Value>) -> Option<PathBuf> {
    let k = k?;
    v.keys("/kubernetes", k, &["kubeconfig"]);
    if !k.is_object() {
        v.err("/kubernetes", "expected a map: { kubeconfig: path }");
        return None;
    }
    let p = k.get("kubeconfig")?;
    let path = v.path(base, "/kubernetes/kubeconfig", Some(p), "");
    if !path.is_file() {
        v.err(
            "/kubernetes/kubeconfig",
            format!("`{}`: no such file", path.display()),
        );
        return None;
    }
    Some(path)
}

/// A `kubernetes` step: `{ node?, evict?, uncordon?, grace_period_s? }`.
pub(super) fn parse_kube_step(v: &mut V<'_>, p: &str, k: Option<&Value>) -> Option<StepKind> {
    if !cfg!(feature = "kubernetes") {
        v.err(
            p,
            "this keel was built without the `kubernetes` feature (cargo install --path host --features kubernetes; the container image has it)",
        );
        return None;
    }
    let k = match k {
        Some(k @ Value::Object(_)) => k,
        Some(Value::Null) | None => &Value::Object(serde_json::Map::new()),
        Some(_) => {
            v.err(
                p,
                "`kubernetes` is a map: { node?, evict?, uncordon?, grace_period_s? }",
            );
            return None;
        }
    };
    v.keys(p, k, &["node", "evict", "uncordon", "grace_period_s"]);
    let node = match k.get("node") {
        None => None,
        Some(Value::String(n)) if node_name_ok(n) => Some(n.clone()),
        Some(_) => {
            v.err(
                &format!("{p}/node"),
                "expected a node name (lowercase letters, digits, `-` and `.`)",
            );
            return None;
        }
    };
    let evict = v.boolean(&format!("{p}/evict"), k.get("evict"), true);
    let uncordon = v.boolean(&format!("{p}/uncordon"), k.get("uncordon"), true);
    let grace_period_s = match k.get("grace_period_s") {
        None => None,
        Some(n) => match n.as_i64() {
            Some(g) if (0..=86_400).contains(&g) => Some(g),
            _ => {
                v.err(
                    &format!("{p}/grace_period_s"),
                    "expected seconds from 0 to 86400",
                );
                return None;
            }
        },
    };
    Some(StepKind::Kubernetes(KubeStep {
        node,
        op: if evict { KubeOp::Drain } else { KubeOp::Cordon },
        uncordon,
        grace_period_s,
    }))
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

/// ` (did you mean `x`?)` for a near miss.
pub(super) fn strsim_hint(got: &str, names: &[&str]) -> String {
    names
        .iter()
        .map(|n| (strsim::damerau_levenshtein(got, n), *n))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, n)| format!(" (did you mean `{n}`?)"))
        .unwrap_or_default()
}

/// `runbooks:`, a map of action to its steps (step names unique in a runbook), with the
/// checks that span the file: an `arm` step needs `arm.scopes`, and an `exec` step's `env`
/// never passes on a secret Keel reads.
pub(super) fn parse_runbooks(v: &mut V<'_>, root: &Value) -> BTreeMap<Action, Vec<Step>> {
    let mut runbooks = BTreeMap::new();
    let Some(rb) = root.get("runbooks") else {
        return runbooks;
    };
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
                    if let Some(step) = parse_step(v, &format!("{p}/{i}"), item) {
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
    if root.get("arm").is_none() {
        require_arm_scopes(v, rb);
    }
    refuse_secret_env(v, root, rb);
    runbooks
}

/// An `http` step: `{ url, format?: generic | pagerduty, routing_key_env? }`.
pub(super) fn parse_http(v: &mut V<'_>, p: &str, h: Option<&Value>) -> Option<StepKind> {
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
            match v.secret_env(name) {
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

pub(super) fn parse_step(v: &mut V<'_>, p: &str, item: &Value) -> Option<Step> {
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
            "kubernetes",
            "timeout",
            "retries",
            "backoff",
            "idempotent",
            "env",
        ],
    );
    let kinds: Vec<&str> = ["exec", "http", "azure_ack", "arm", "log", "kubernetes"]
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
        ["kubernetes"] => parse_kube_step(v, &format!("{p}/kubernetes"), item.get("kubernetes"))?,
        [] => {
            v.err(
                p,
                "a step needs one of exec, http, azure_ack, arm, log, kubernetes",
            );
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
    // A drain waits for its pods to leave: ten minutes unless told otherwise.
    let default_timeout = match kind {
        StepKind::Kubernetes(KubeStep {
            op: KubeOp::Drain, ..
        }) => Duration::from_secs(600),
        _ => Duration::from_secs(30),
    };
    let timeout = v.duration(
        &format!("{p}/timeout"),
        item.get("timeout"),
        default_timeout,
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
pub(super) fn parse_exec_env(
    v: &mut V<'_>,
    p: &str,
    item: Option<&Value>,
    kind: &StepKind,
) -> Vec<String> {
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

/// `arm: { scopes: [...] }`: where `arm` steps may act. An empty list is an error (it could
/// only make every `arm` step fail); a missing one is checked against the runbooks by
/// [`require_arm_scopes`].
pub(super) fn parse_arm_scopes(v: &mut V<'_>, a: Option<&Value>) -> Vec<ArmScope> {
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

/// An `exec` step's `env` must not pass on a secret Keel itself reads: the ingest token
/// (`sources.ingest.token_env`) or a PagerDuty routing key (`routing_key_env`).
pub(super) fn refuse_secret_env(v: &mut V<'_>, root: &Value, runbooks: &Value) {
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

/// Without `arm.scopes`, every `arm` step is a configuration error at its position: an
/// `arm` step may write only inside scopes the operator named, and there is no default that
/// allows everything.
pub(super) fn require_arm_scopes(v: &mut V<'_>, runbooks: &Value) {
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

/// An `arm` step: `{ endpoint?, api_version?, follow_operation?, poll_interval? }`.
pub(super) fn parse_arm(v: &mut V<'_>, p: &str, a: Option<&Value>) -> Option<StepKind> {
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
