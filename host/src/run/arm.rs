//! The `arm` executor: resubmits the request of a `retry` or `retry_without_agent` decision to
//! Azure Resource Manager with a managed-identity token.
//!
//! What is sent: `PUT {endpoint}{resource.id}?api-version=<v>` with the body in
//! `Decision.retry.request` (for `retry_without_agent`, the body already rewritten without the
//! agent), `Authorization: Bearer <token>` from [`crate::run::identity`], and
//! `x-ms-client-request-id` derived from the step's idempotency key (the same after a
//! restart, so ARM's logs show one request retried). A PUT of the whole resource is
//! idempotent, so the step is idempotent by default: after a crash it is sent again, never
//! twice in effect. Only failed `create` and `update` operations are resubmitted (both are a
//! PUT of the resource); the target is the event's `resource.id`, an ARM path resolved against
//! the configured endpoint; an absolute URL is accepted only on that endpoint's host.
//!
//! What may be written ([`authorize`]): the event and its request come from whoever holds the
//! ingest token, and the PUT carries the VM's managed identity, so only a VM
//! (`Microsoft.Compute/virtualMachines`) or a scale-set VM
//! (`Microsoft.Compute/virtualMachineScaleSets/<ss>/virtualMachines/<id>`) is written, only
//! inside a scope of `arm.scopes`, and only when the body's own `type`, `name` and `id` (when
//! present) name that same resource; anything else fails the step at once (the runbook
//! escalates) before a token is even fetched. A 3xx fails the step too: no redirect is
//! followed. A body in
//! ARM-template form carries its own `apiVersion`, which is then used, and the template-only
//! keys (`apiVersion`, `dependsOn`, `condition`, `copy`, `comments`) are left out.
//!
//! When it is sent: not before `Decision.retry.not_before` (waited for, at most
//! [`MAX_RETRY_AFTER`]); never in dry-run. A 401 forgets the token and tries once more with a
//! fresh one; 408, 429 and 5xx are retried by the step's retries, waiting at least the
//! server's `Retry-After`; any other refusal fails the step at once. With no request body in
//! the decision (nothing to resubmit), with an operation that is not a PUT, or with a target
//! elsewhere, the step fails at once and the runbook escalates. The same
//! holds for a request whose secret fields were redacted (`keel_engine::redact`): only the
//! decision in memory carries them, so a resubmission resumed after a restart escalates. ARM's
//! error bodies are untrusted: only their code and message, escaped and truncated, are kept.
//!
//! After a 2xx, the long-running operation is followed (unless `follow_operation: false`):
//! `Azure-AsyncOperation` (its `status`), else the `Location` of a 202, else the resource's own
//! `provisioningState` when it is not terminal, polled every `poll_interval` or the server's
//! `Retry-After`, only on the ARM endpoint's host. `Succeeded` is success; `Failed` or
//! `Canceled` fails the step at once (with ARM's code and message) and the runbook escalates,
//! so a resubmission that ARM accepted but could not carry out is not reported as done.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use keel_engine::{escape, Decision, Event, Operation};
use reqwest::StatusCode;
use serde_json::Value;

use super::backoff::{retry_after, MAX_RETRY_AFTER};
use super::http::read_limited;
use super::http::StepError;
use super::identity::TokenClient;
use super::Host;
use crate::config::{api_version_ok, resource_id_ok, ArmScope};

/// Keys of an ARM template resource that are not part of the resource's REST body.
const TEMPLATE_ONLY: [&str; 5] = ["apiVersion", "dependsOn", "condition", "copy", "comments"];

/// `: code: message` of an ARM error body (the `{"error": {...}}` envelope or a flat
/// `{code, message}`), escaped and truncated; empty when there is none.
pub fn error_detail(body: &[u8]) -> String {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return String::new();
    };
    let e = v.get("error").filter(|e| e.is_object()).unwrap_or(&v);
    let field = |k: &str| {
        e.get(k).and_then(Value::as_str).map(|s| {
            let t: String = s.chars().take(300).collect();
            escape(&t)
        })
    };
    match (field("code"), field("message")) {
        (Some(c), Some(m)) => format!(": {c}: {m}"),
        (Some(x), None) | (None, Some(x)) => format!(": {x}"),
        (None, None) => String::new(),
    }
}

/// The ARM resource id that `target` (an ARM resource id, or an absolute URL on `endpoint`'s
/// host) names; a message (escaped) when the target is refused.
pub fn target_path(endpoint: &str, target: &str) -> Result<String, String> {
    let base = reqwest::Url::parse(endpoint)
        .map_err(|_| format!("the ARM endpoint {} is not a URL", escape(endpoint)))?;
    let path = if target.starts_with("http://") || target.starts_with("https://") {
        let u = reqwest::Url::parse(target)
            .map_err(|_| format!("the target {} is not a URL", escape(target)))?;
        let same = u.scheme() == base.scheme()
            && u.host_str() == base.host_str()
            && u.port_or_known_default() == base.port_or_known_default();
        if !same {
            return Err(format!(
                "refusing to send a token to {}: not on the ARM endpoint {}",
                escape(target),
                escape(endpoint)
            ));
        }
        if u.query().is_some()
            || u.fragment().is_some()
            || !u.username().is_empty()
            || u.password().is_some()
        {
            return Err(format!(
                "the target {} carries a query, fragment or credentials",
                escape(target)
            ));
        }
        u.path().to_string()
    } else {
        target.to_string()
    };
    if !resource_id_ok(&path) {
        return Err(format!(
            "the target {} is not an ARM resource id (/subscriptions/...)",
            escape(&path)
        ));
    }
    Ok(path)
}

/// The URL of the resource id `path` (from [`target_path`]) on `endpoint`, with
/// `api-version`.
pub fn resource_url(endpoint: &str, path: &str, api_version: &str) -> Result<reqwest::Url, String> {
    let base = reqwest::Url::parse(endpoint)
        .map_err(|_| format!("the ARM endpoint {} is not a URL", escape(endpoint)))?;
    let mut url = base.clone();
    url.set_path(&format!("{}{path}", base.path().trim_end_matches('/')));
    url.set_query(None);
    url.set_fragment(None);
    url.query_pairs_mut()
        .append_pair("api-version", api_version);
    Ok(url)
}

/// The URL of `target` (an ARM resource id, or an absolute URL on `endpoint`'s host) with
/// `api-version`; a message (escaped) when the target is refused.
#[cfg(test)]
fn target_url(endpoint: &str, target: &str, api_version: &str) -> Result<reqwest::Url, String> {
    resource_url(endpoint, &target_path(endpoint, target)?, api_version)
}

/// The only resources an `arm` step writes: a virtual machine, or a VM of a scale set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct VmTarget<'a> {
    subscription: &'a str,
    resource_group: &'a str,
    /// The scale set, for a scale-set VM.
    scale_set: Option<&'a str>,
    /// The VM's name, or the scale-set VM's instance id.
    name: &'a str,
}

/// `Microsoft.Compute`'s resource type of a VM.
const VM_TYPE: &str = "Microsoft.Compute/virtualMachines";
/// `Microsoft.Compute`'s resource type of a scale-set VM.
const SCALE_SET_VM_TYPE: &str = "Microsoft.Compute/virtualMachineScaleSets/virtualMachines";

/// The VM that a resource id names: `/subscriptions/<s>/resourceGroups/<rg>/providers/
/// Microsoft.Compute/virtualMachines/<vm>` or `.../Microsoft.Compute/virtualMachineScaleSets/
/// <ss>/virtualMachines/<id>`, nothing more (no child resource such as an extension); the
/// fixed words in any case, as ARM reads them.
fn vm_target(path: &str) -> Option<VmTarget<'_>> {
    let seg: Vec<&str> = path.split('/').collect();
    let is = |i: usize, w: &str| seg.get(i).is_some_and(|s| s.eq_ignore_ascii_case(w));
    // A name ARM could read as something else is no name: `.`/`..` (a URL resolves them to
    // another path), percent-escapes (`%2F` is a slash to some proxies), `?`, `#`, a backslash,
    // whitespace and control characters. ARM allows none of them in a VM or scale-set name.
    let named = |i: usize| {
        seg.get(i).copied().filter(|s| {
            !s.is_empty()
                && *s != "."
                && *s != ".."
                && !s.chars().any(|c| {
                    matches!(c, '%' | '?' | '#' | '\\') || c.is_whitespace() || c.is_control()
                })
        })
    };
    if !(seg.first() == Some(&"")
        && is(1, "subscriptions")
        && is(3, "resourceGroups")
        && is(5, "providers")
        && is(6, "Microsoft.Compute"))
    {
        return None;
    }
    let (scale_set, name) = match seg.len() {
        9 if is(7, "virtualMachines") => (None, named(8)?),
        11 if is(7, "virtualMachineScaleSets") && is(9, "virtualMachines") => {
            (Some(named(8)?), named(10)?)
        }
        _ => return None,
    };
    Some(VmTarget {
        subscription: named(2)?,
        resource_group: named(4)?,
        scale_set,
        name,
    })
}

/// The values of `key` (in any case, as ARM reads property names) at the top of `body`.
fn fields<'a>(body: &'a Value, key: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    body.as_object()
        .into_iter()
        .flat_map(|o| o.iter())
        .filter(move |(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
}

/// Whether an `arm` step may PUT `request` to the resource id `path`: only a VM or a
/// scale-set VM, only inside one of `scopes`, and only when the body's own `type`, `name`
/// and `id` (when it has them, as a GET of the resource or an ARM template resource does)
/// name that same resource. The message (escaped) says why not.
pub fn authorize(path: &str, scopes: &[ArmScope], request: &Value) -> Result<(), String> {
    let p = escape(path);
    let Some(t) = vm_target(path) else {
        return Err(format!(
            "refusing to write {p}: an `arm` step writes only virtual machines \
             ({VM_TYPE}/<name>) and scale-set VMs ({SCALE_SET_VM_TYPE} as \
             virtualMachineScaleSets/<scale set>/virtualMachines/<instance id>)"
        ));
    };
    if !scopes
        .iter()
        .any(|s| s.contains(t.subscription, t.resource_group))
    {
        let list: Vec<String> = scopes.iter().map(ToString::to_string).collect();
        return Err(format!(
            "refusing to write {p}: outside every scope of `arm.scopes` ({})",
            if list.is_empty() {
                "none configured".to_string()
            } else {
                list.join(", ")
            }
        ));
    }
    let (want_type, names) = match t.scale_set {
        None => (VM_TYPE, vec![t.name.to_string()]),
        Some(ss) => (
            SCALE_SET_VM_TYPE,
            // ARM names a scale-set VM `<scale set>_<instance id>`; a template, `<scale
            // set>/<instance id>`.
            vec![format!("{ss}_{}", t.name), format!("{ss}/{}", t.name)],
        ),
    };
    let mismatch = |what: &str, got: &Value, want: &str| {
        let got = match got {
            Value::String(s) => escape(&s.chars().take(300).collect::<String>()),
            other => escape(&other.to_string().chars().take(300).collect::<String>()),
        };
        format!("refusing to write {p}: the request's `{what}` is {got}, not {want}")
    };
    for v in fields(request, "type") {
        if !v
            .as_str()
            .is_some_and(|s| s.eq_ignore_ascii_case(want_type))
        {
            return Err(mismatch("type", v, want_type));
        }
    }
    for v in fields(request, "name") {
        if !v
            .as_str()
            .is_some_and(|s| names.iter().any(|n| n.eq_ignore_ascii_case(s)))
        {
            return Err(mismatch("name", v, &escape(&names.join(" or "))));
        }
    }
    for v in fields(request, "id") {
        if !v.as_str().is_some_and(|s| s.eq_ignore_ascii_case(path)) {
            return Err(mismatch("id", v, "the resource id"));
        }
    }
    Ok(())
}

/// `x-ms-client-request-id`: the idempotency key's first 32 hex digits as a GUID.
fn client_request_id(key: &str) -> Option<String> {
    let h: String = key
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(32)
        .collect();
    (h.len() == 32).then(|| {
        format!(
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        )
    })
}

/// The body to send and its api-version: a template resource's own `apiVersion` wins, and
/// its template-only keys are left out.
fn prepare(request: &Value, api_version: &str) -> Result<(Value, String), StepError> {
    let Value::Object(obj) = request else {
        return Err(StepError::permanent(
            "the request in the decision is not a JSON object",
        ));
    };
    let own = obj
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("apiVersion"))
        .map(|(_, v)| v);
    let version = match own {
        None => api_version.to_string(),
        Some(Value::String(v)) if api_version_ok(v) => v.clone(),
        Some(_) => {
            return Err(StepError::permanent(
                "the request's `apiVersion` is not an api-version such as 2024-07-01",
            ))
        }
    };
    let body: serde_json::Map<String, Value> = obj
        .iter()
        .filter(|(k, _)| own.is_none() || !TEMPLATE_ONLY.iter().any(|t| t.eq_ignore_ascii_case(k)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok((Value::Object(body), version))
}

/// How long to wait for the decision's `retry.not_before` (capped).
pub fn wait_for_not_before(d: &Decision) -> Duration {
    let Some(nb) = d.retry.as_ref().and_then(|r| r.not_before) else {
        return Duration::ZERO;
    };
    let ms = (nb - Utc::now()).num_milliseconds();
    Duration::from_millis(u64::try_from(ms).unwrap_or(0)).min(MAX_RETRY_AFTER)
}

/// One attempt of an `arm` step (see the module documentation); with `follow` (the poll
/// interval), the long-running operation is followed to its end.
pub async fn resubmit(
    host: &Arc<Host>,
    endpoint: &str,
    api_version: &str,
    follow: Option<Duration>,
    key: &str,
    ev: &Event,
    d: &Decision,
) -> Result<String, StepError> {
    if host.cfg.dry_run {
        return Ok("skipped: dry run".into());
    }
    let Some(request) = d.retry.as_ref().and_then(|r| r.request.as_ref()) else {
        return Err(StepError::permanent(
            "the decision carries no request body to resubmit (retry.request); escalating",
        ));
    };
    // The stored event and decision have their secrets redacted: one read back (after a
    // restart, or a deferral decided again) cannot be resubmitted (ARM never returns an adminPassword, so there is nothing to restore it from).
    let redacted = keel_engine::redact::redacted_paths(request);
    if !redacted.is_empty() {
        return Err(StepError::permanent(format!(
            "the request's secret fields ({}) were redacted when the event was stored, and this copy was read back from the store (after a restart, or a deferral decided again): it cannot be resubmitted; escalating",
            redacted.join(", ")
        )));
    }
    let op = ev.failure.as_ref().map(|f| f.operation);
    if !matches!(op, Some(Operation::Create | Operation::Update)) {
        return Err(StepError::permanent(format!(
            "only failed create and update operations are resubmitted (a PUT of the resource); this one is {}",
            op.map_or("unknown", |o| o.as_str())
        )));
    }
    let Some(target) = ev.resource.id.as_deref() else {
        return Err(StepError::permanent(
            "the event names no resource id to resubmit the request to",
        ));
    };
    let path = target_path(endpoint, target).map_err(StepError::permanent)?;
    authorize(&path, &host.cfg.arm_scopes, request).map_err(StepError::permanent)?;
    let (body, version) = prepare(request, api_version)?;
    let url = resource_url(endpoint, &path, &version).map_err(StepError::permanent)?;
    let mut renewed = false;
    loop {
        let auth = authorization(host).await?;
        let mut req = host
            .http
            .put(url.clone())
            .header(reqwest::header::AUTHORIZATION, auth)
            .json(&body);
        if let Some(id) = client_request_id(key) {
            req = req.header("x-ms-client-request-id", id);
        }
        let r = req
            .send()
            .await
            .map_err(|e| StepError::retry(format!("ARM: {e}"), None))?;
        let status = r.status();
        host.metrics.add(
            "keel_arm_requests_total",
            &[("status", &status.as_u16().to_string())],
            1.0,
        );
        if status.is_success() {
            let Some(interval) = follow else {
                return Ok("ok".into());
            };
            let header = |n: &str| {
                r.headers()
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            let async_op = header("azure-asyncoperation");
            let location = (status == StatusCode::ACCEPTED)
                .then(|| header("location"))
                .flatten();
            let wait = retry_after(r.headers()).unwrap_or(interval);
            let body = read_limited(r).await.unwrap_or_default();
            let poll = match (async_op, location) {
                (Some(u), _) => Some((Poll::AsyncOperation, u)),
                (None, Some(u)) => Some((Poll::Location, u)),
                (None, None) => match provisioning_state(&body).as_deref() {
                    None | Some("succeeded") => None,
                    Some(state @ ("failed" | "canceled")) => {
                        return Err(StepError::permanent(format!(
                            "ARM accepted the request but the resource is {state}{}",
                            error_detail(&body)
                        )))
                    }
                    Some(_) => Some((Poll::Resource, url.to_string())),
                },
            };
            return match poll {
                None => Ok("ok".into()),
                Some((kind, u)) => follow_operation(host, endpoint, kind, &u, wait, interval).await,
            };
        }
        if status == StatusCode::UNAUTHORIZED && !renewed {
            host.identity.invalidate().await;
            renewed = true;
            continue;
        }
        if status.is_redirection() {
            return Err(StepError::permanent(redirected(&r)));
        }
        let ra = retry_after(r.headers());
        let detail = error_detail(&read_limited(r).await.unwrap_or_default());
        let transient = matches!(status.as_u16(), 408 | 429) || status.is_server_error();
        return Err(if transient {
            StepError::retry(format!("ARM answered HTTP {status}{detail}"), ra)
        } else {
            StepError::permanent(format!("ARM refused the request: HTTP {status}{detail}"))
        });
    }
}

/// Why a 3xx fails the step: the host's HTTP client follows no redirect (a redirected PUT
/// would become a GET that "succeeds", and the token would follow it elsewhere).
fn redirected(r: &reqwest::Response) -> String {
    let to = r
        .headers()
        .get(reqwest::header::LOCATION)
        .map(|l| {
            let l = String::from_utf8_lossy(l.as_bytes());
            format!(" to {}", escape(&l.chars().take(300).collect::<String>()))
        })
        .unwrap_or_default();
    format!(
        "ARM answered HTTP {} (a redirect{to}); redirects are not followed",
        r.status()
    )
}

/// `Authorization: Bearer` with the managed identity's token (cached by the client).
async fn authorization(host: &Host) -> Result<reqwest::header::HeaderValue, StepError> {
    let token = host.identity.token().await.map_err(|e| {
        if e.transient() {
            StepError::retry(e.to_string(), e.retry_after())
        } else {
            StepError::permanent(e.to_string())
        }
    })?;
    TokenClient::bearer(&token).map_err(|e| StepError::permanent(e.to_string()))
}

/// What a long-running operation is followed through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Poll {
    /// `Azure-AsyncOperation`: a status resource, `{"status": "InProgress" | "Succeeded" |
    /// "Failed" | "Canceled", "error"?}`.
    AsyncOperation,
    /// `Location` of a 202: 202 while running, 200/201/204 when done.
    Location,
    /// The resource itself: its `properties.provisioningState`.
    Resource,
}

/// `properties.provisioningState` of a resource body, lower case.
fn provisioning_state(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    v.get("properties")?
        .get("provisioningState")?
        .as_str()
        .map(str::to_ascii_lowercase)
}

/// A polling URL, only on the ARM endpoint's scheme, host and port: the token goes nowhere
/// else, whatever the response says.
fn poll_url(endpoint: &str, u: &str) -> Result<reqwest::Url, String> {
    let base = reqwest::Url::parse(endpoint)
        .map_err(|_| format!("the ARM endpoint {} is not a URL", escape(endpoint)))?;
    let url = base
        .join(u)
        .map_err(|_| format!("the operation URL {} is not a URL", escape(u)))?;
    let same = url.scheme() == base.scheme()
        && url.host_str() == base.host_str()
        && url.port_or_known_default() == base.port_or_known_default()
        && url.username().is_empty()
        && url.password().is_none();
    if !same {
        return Err(format!(
            "refusing to send a token to {}: not on the ARM endpoint {}",
            escape(u),
            escape(endpoint)
        ));
    }
    Ok(url)
}

/// Follows a long-running operation until it ends: `Ok` when it succeeded, a permanent error
/// (with ARM's code and message, escaped) when it failed or was canceled. 429 and 5xx while
/// polling are waited out (their `Retry-After` honoured); the step's timeout bounds it all.
async fn follow_operation(
    host: &Arc<Host>,
    endpoint: &str,
    kind: Poll,
    u: &str,
    first_wait: Duration,
    interval: Duration,
) -> Result<String, StepError> {
    let url = poll_url(endpoint, u).map_err(StepError::permanent)?;
    let mut wait = first_wait;
    let mut renewed = false;
    loop {
        tokio::time::sleep(wait.min(MAX_RETRY_AFTER)).await;
        let auth = authorization(host).await?;
        let r = match host
            .http
            .get(url.clone())
            .header(reqwest::header::AUTHORIZATION, auth)
            .send()
            .await
        {
            Ok(r) => r,
            Err(_) => {
                wait = interval;
                continue;
            }
        };
        let status = r.status();
        host.metrics.add(
            "keel_arm_polls_total",
            &[("status", &status.as_u16().to_string())],
            1.0,
        );
        wait = retry_after(r.headers()).unwrap_or(interval);
        if status == StatusCode::UNAUTHORIZED && !renewed {
            host.identity.invalidate().await;
            renewed = true;
            wait = Duration::ZERO;
            continue;
        }
        if status.as_u16() == 429 || status.is_server_error() {
            continue;
        }
        if status.is_redirection() {
            return Err(StepError::permanent(redirected(&r)));
        }
        let body = read_limited(r).await.unwrap_or_default();
        if !status.is_success() {
            return Err(StepError::retry(
                format!(
                    "ARM answered HTTP {status} for the operation{}",
                    error_detail(&body)
                ),
                None,
            ));
        }
        let state = match kind {
            Poll::Location if status == StatusCode::ACCEPTED => continue,
            Poll::Location => return Ok("ok".into()),
            Poll::AsyncOperation => serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v.get("status")?.as_str().map(str::to_ascii_lowercase)),
            Poll::Resource => provisioning_state(&body),
        };
        match state.as_deref() {
            Some("succeeded") => return Ok("ok".into()),
            Some(s @ ("failed" | "canceled")) => {
                return Err(StepError::permanent(format!(
                    "the ARM operation {s}{}",
                    error_detail(&body)
                )))
            }
            // InProgress, Creating, Updating, or no status yet: poll again.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/web/providers/Microsoft.Compute/virtualMachines/web-win-1";

    #[test]
    fn operation_urls_stay_on_the_arm_endpoint() {
        let ep = "https://management.azure.com";
        assert!(poll_url(
            ep,
            "https://management.azure.com/subscriptions/x/operations/1?api-version=1"
        )
        .is_ok());
        assert!(poll_url(ep, "/subscriptions/x/operations/1").is_ok());
        for bad in [
            "https://evil.example/steal",
            "http://management.azure.com/subscriptions/x",
            "https://management.azure.com:8443/x",
            "https://user:pw@management.azure.com/x",
            "//evil.example/x",
        ] {
            assert!(poll_url(ep, bad).is_err(), "{bad}");
        }
        assert_eq!(
            provisioning_state(br#"{"properties": {"provisioningState": "Creating"}}"#).as_deref(),
            Some("creating")
        );
        assert_eq!(provisioning_state(b"not json"), None);
    }

    #[test]
    fn targets_resolve_against_the_endpoint_and_other_hosts_are_refused() {
        let u = target_url("https://management.azure.com", ID, "2024-07-01");
        assert_eq!(
            u.map(|u| u.to_string()).as_deref(),
            Ok(format!("https://management.azure.com{ID}?api-version=2024-07-01").as_str())
        );
        let abs = format!("https://management.azure.com{ID}");
        assert!(target_url("https://management.azure.com", &abs, "2024-07-01").is_ok());
        for bad in [
            format!("https://evil.example{ID}"),
            format!("http://management.azure.com{ID}"),
            format!("https://management.azure.com:444{ID}"),
            format!("https://management.azure.com{ID}?x=1"),
            format!("https://user@management.azure.com{ID}"),
            "/subscriptions/x/../../tenants".to_string(),
            "subscriptions/x".to_string(),
            "/subscriptions/x y".to_string(),
            "/subscriptions/x?api-version=1".to_string(),
            "//evil.example/subscriptions/x".to_string(),
        ] {
            assert!(
                target_url("https://management.azure.com", &bad, "2024-07-01").is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn only_vms_inside_the_scopes_whose_body_names_them_are_written() {
        use serde_json::json;
        let scopes: Vec<ArmScope> = ["/subscriptions/S1", "/subscriptions/s2/resourceGroups/Web"]
            .iter()
            .filter_map(|s| ArmScope::parse(s))
            .collect();
        assert_eq!(scopes.len(), 2);
        let body = json!({"location": "eastus2", "properties": {}});
        for ok in [
            "/subscriptions/s1/resourceGroups/any/providers/Microsoft.Compute/virtualMachines/vm-1",
            "/SUBSCRIPTIONS/S1/resourcegroups/ANY/PROVIDERS/microsoft.compute/VIRTUALMACHINES/vm-1",
            "/subscriptions/s2/resourceGroups/web/providers/Microsoft.Compute/virtualMachines/vm-2",
            "/subscriptions/s2/resourceGroups/WEB/providers/Microsoft.Compute/virtualMachineScaleSets/ss/virtualMachines/7",
        ] {
            assert_eq!(authorize(ok, &scopes, &body), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("/subscriptions/s1/providers/Microsoft.Authorization/roleAssignments/0b1e6c2a-3f8d-4c1e-9a7b-2d5e8f1a3c4b", "writes only virtual machines"),
            ("/subscriptions/s1/resourceGroups/any/providers/Microsoft.Authorization/roleAssignments/x", "writes only virtual machines"),
            ("/subscriptions/s1/resourceGroups/any/providers/Microsoft.Compute/virtualMachines/vm-1/extensions/cse", "writes only virtual machines"),
            ("/subscriptions/s1/resourceGroups/any/providers/Microsoft.Compute/disks/d", "writes only virtual machines"),
            ("/subscriptions/s1/resourceGroups/any/providers/Microsoft.Compute/virtualMachineScaleSets/ss", "writes only virtual machines"),
            ("/subscriptions/s1/resourceGroups/any/providers/Microsoft.Compute/virtualMachines/", "writes only virtual machines"),
            ("/subscriptions/s1/resourceGroups/any/providers/Microsoft.Evil/virtualMachines/vm-1", "writes only virtual machines"),
            // Names a URL or a proxy would read as another path.
            ("/subscriptions/s1/resourceGroups/../providers/Microsoft.Compute/virtualMachines/vm-1", "writes only virtual machines"),
            ("/subscriptions/s1/resourceGroups/any/providers/Microsoft.Compute/virtualMachines/..", "writes only virtual machines"),
            ("/subscriptions/s1/resourceGroups/any/providers/Microsoft.Compute/virtualMachines/.", "writes only virtual machines"),
            ("/subscriptions/s1/resourceGroups/any/providers/Microsoft.Compute/virtualMachines/vm-1%2F..%2F..%2Fx", "writes only virtual machines"),
            ("/subscriptions/s1/resourceGroups/any/providers/Microsoft.Compute/virtualMachines/vm-1?api-version=1", "writes only virtual machines"),
            ("/subscriptions/s1/resourceGroups/any/providers/Microsoft.Compute/virtualMachines/vm#1", "writes only virtual machines"),
            ("/subscriptions/s1/resourceGroups/any/providers/Microsoft.Compute/virtualMachines/vm\\..\\x", "writes only virtual machines"),
            ("/subscriptions/s1/resourceGroups/any/providers/Microsoft.Compute/virtualMachineScaleSets/../virtualMachines/7", "writes only virtual machines"),
            ("/subscriptions/s3/resourceGroups/web/providers/Microsoft.Compute/virtualMachines/vm-1", "outside every scope"),
            ("/subscriptions/s2/resourceGroups/db/providers/Microsoft.Compute/virtualMachines/vm-1", "outside every scope"),
        ] {
            let e = authorize(bad, &scopes, &body).err().unwrap_or_default();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let vm =
            "/subscriptions/s1/resourceGroups/web/providers/Microsoft.Compute/virtualMachines/vm-1";
        assert!(
            authorize(vm, &[], &body).is_err(),
            "no scope allows nothing"
        );
        for ok in [
            json!({"type": "Microsoft.Compute/virtualMachines", "name": "vm-1", "apiVersion": "2024-07-01"}),
            json!({"TYPE": "microsoft.compute/virtualmachines", "Name": "VM-1", "id": vm.to_uppercase()}),
        ] {
            assert_eq!(authorize(vm, &scopes, &ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            (
                json!({"type": "Microsoft.Authorization/roleAssignments", "name": "vm-1"}),
                "`type`",
            ),
            (
                json!({"type": "Microsoft.Compute/virtualMachines", "name": "vm-2"}),
                "`name`",
            ),
            (
                json!({"type": "Microsoft.Compute/virtualMachines", "Name": "vm-2"}),
                "`name`",
            ),
            (json!({"name": ["vm-1"]}), "`name`"),
            (
                json!({"id": "/subscriptions/s1/resourceGroups/web/providers/Microsoft.Compute/virtualMachines/vm-2"}),
                "`id`",
            ),
            (
                json!({"type": "Microsoft.Compute/virtualMachines\u{1b}[31m"}),
                "`type`",
            ),
        ] {
            let e = authorize(vm, &scopes, &bad).err().unwrap_or_default();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(!e.contains('\u{1b}'), "escaped: {e}");
        }
        let ssvm = "/subscriptions/s1/resourceGroups/web/providers/Microsoft.Compute/virtualMachineScaleSets/ss/virtualMachines/7";
        for name in ["ss_7", "ss/7", "SS_7"] {
            let b = json!({"type": "Microsoft.Compute/virtualMachineScaleSets/virtualMachines", "name": name});
            assert_eq!(authorize(ssvm, &scopes, &b), Ok(()), "{name}");
        }
        for b in [
            json!({"type": "Microsoft.Compute/virtualMachines", "name": "ss_7"}),
            json!({"type": "Microsoft.Compute/virtualMachineScaleSets/virtualMachines", "name": "7"}),
            json!({"name": "other_7"}),
        ] {
            assert!(authorize(ssvm, &scopes, &b).is_err(), "{b}");
        }
    }

    #[test]
    fn tokens_travel_in_clear_only_on_loopback_and_to_imds() {
        use crate::config::token_url_ok;
        for (url, imds) in [
            ("https://management.azure.com", false),
            ("https://arm.example:8443/base", false),
            ("http://127.0.0.1:8080", false),
            ("http://127.1.2.3", false),
            ("http://127.1", false),
            ("http://[::1]:80", false),
            ("http://localhost:40342", false),
            ("http://LOCALHOST", false),
            ("http://169.254.169.254", true),
        ] {
            assert!(token_url_ok(url, imds), "{url}");
        }
        for (url, imds) in [
            ("http://management.azure.com", false),
            ("http://169.254.169.254", false),
            ("http://169.254.169.253", true),
            ("http://10.0.0.4", true),
            ("http://[::ffff:127.0.0.1]", false),
            ("http://localhost.evil.example", false),
            ("http://127.0.0.1.nip.io", false),
            ("ftp://127.0.0.1", false),
            ("not a url", false),
        ] {
            assert!(!token_url_ok(url, imds), "{url}");
        }
        for bad in [
            "/subscriptions",
            "/subscriptions/",
            "/subscriptions/s1/",
            "/subscriptions/s1/resourceGroups",
            "/subscriptions/s1/resourceGroups/web/providers/Microsoft.Compute",
            "subscriptions/s1",
            "/subscriptions/*",
            "/subscriptions/s 1",
        ] {
            assert_eq!(ArmScope::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn template_resources_use_their_own_api_version() {
        let t = serde_json::json!({"type": "Microsoft.Compute/virtualMachines", "apiVersion": "2023-09-01",
            "name": "vm", "dependsOn": ["nic"], "location": "eastus", "properties": {}});
        let Ok((body, v)) = prepare(&t, "2024-07-01") else {
            unreachable!("a template resource")
        };
        assert_eq!(v, "2023-09-01");
        assert!(body.get("apiVersion").is_none() && body.get("dependsOn").is_none());
        assert_eq!(body["location"], "eastus");
        let rest = serde_json::json!({"location": "eastus", "properties": {}, "comments": "kept"});
        let Ok((body, v)) = prepare(&rest, "2024-07-01") else {
            unreachable!("a REST body")
        };
        assert_eq!((body, v.as_str()), (rest, "2024-07-01"));
        assert!(prepare(&serde_json::json!([1]), "2024-07-01").is_err());
        assert_eq!(
            client_request_id("0123456789abcdef0123456789abcdef").as_deref(),
            Some("01234567-89ab-cdef-0123-456789abcdef")
        );
        assert!(
            error_detail(br#"{"error":{"code":"Conflict","message":"x\u001b"}}"#)
                .starts_with(": Conflict: x")
        );
    }
}
