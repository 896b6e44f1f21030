//! Loopback stubs of Azure for the host tests: IMDS (the legacy `/metadata/v1/maintenance`
//! endpoint, InstanceInfo, instance metadata and the managed-identity token endpoint) and Azure
//! Resource Manager (Resource Health's availabilityStatuses, PUT of a VM), and the 2021-10-13
//! ingest body with a create request.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};

use super::{root, serve};

pub const SUB: &str = "00000000-0000-0000-0000-000000000000";
pub const CLIENT_ID: &str = "11111111-2222-3333-4444-555555555555";

pub fn vm_id(vm: &str) -> String {
    format!(
        "/subscriptions/{SUB}/resourceGroups/web/providers/Microsoft.Compute/virtualMachines/{vm}"
    )
}

// ------------------------------------------------------------------------------------------
// IMDS stub: the legacy maintenance endpoint, InstanceInfo, and the managed-identity token
// endpoint (`Metadata: true` required on the latter, as IMDS does).

#[derive(Default)]
pub struct Imds {
    pub maintenance: Value,
    /// Paths served, in order.
    pub paths: Vec<String>,
    /// Query strings of token requests.
    pub token_queries: Vec<String>,
    pub issued: usize,
    /// `expires_in` of issued tokens.
    pub expires_in: u64,
    /// The Scheduled Events document (`/metadata/scheduledevents`).
    pub scheduled: Value,
}

pub type ImdsState = Arc<Mutex<Imds>>;

pub async fn imds_stub() -> (String, ImdsState) {
    let st: ImdsState = Arc::new(Mutex::new(Imds {
        maintenance: json!({}),
        expires_in: 3599,
        ..Imds::default()
    }));
    let s = st.clone();
    let app = Router::new().fallback(move |uri: Uri, h: HeaderMap| {
        let st = s.clone();
        async move { imds(&st, &uri, &h) }
    });
    (serve(app).await, st)
}

pub fn imds(st: &ImdsState, uri: &Uri, h: &HeaderMap) -> Response {
    let mut s = st.lock().unwrap();
    s.paths.push(uri.path().to_string());
    match uri.path() {
        "/metadata/v1/maintenance" => (StatusCode::OK, s.maintenance.to_string()).into_response(),
        "/metadata/scheduledevents" => {
            if h.get("metadata").and_then(|v| v.to_str().ok()) != Some("true") {
                return (StatusCode::BAD_REQUEST, "{}".to_string()).into_response();
            }
            (StatusCode::OK, s.scheduled.to_string()).into_response()
        }
        "/metadata/v1/InstanceInfo" => (
            StatusCode::OK,
            r#"{"ID":"_test-vm","UD":"2","FD":"1"}"#.to_string(),
        )
            .into_response(),
        "/metadata/instance/compute" => {
            if h.get("metadata").and_then(|v| v.to_str().ok()) != Some("true")
                || uri.query() != Some("api-version=2021-02-01")
            {
                return (StatusCode::BAD_REQUEST, "{}".to_string()).into_response();
            }
            (
                StatusCode::OK,
                json!({"location": "eastus2", "name": "found-vm", "resourceGroupName": "web",
                       "subscriptionId": SUB, "resourceId": vm_id("found-vm"), "vmSize": "Standard_D2s_v3"})
                .to_string(),
            )
                .into_response()
        }
        "/metadata/identity/oauth2/token" => {
            if h.get("metadata").and_then(|v| v.to_str().ok()) != Some("true") {
                return (
                    StatusCode::BAD_REQUEST,
                    json!({"error": "invalid_request", "error_description": "Required metadata header not specified"}).to_string(),
                )
                    .into_response();
            }
            let q = uri.query().unwrap_or("").to_string();
            s.token_queries.push(q.clone());
            if !q.contains("api-version=2018-02-01") || !q.contains("resource=") {
                return (
                    StatusCode::BAD_REQUEST,
                    json!({"error": "invalid_request", "error_description": "bad query"})
                        .to_string(),
                )
                    .into_response();
            }
            s.issued += 1;
            let now = chrono::Utc::now().timestamp();
            (
                StatusCode::OK,
                json!({
                    "access_token": format!("mi-token-{}", s.issued), "refresh_token": "",
                    "expires_in": s.expires_in.to_string(),
                    "expires_on": (now + s.expires_in as i64).to_string(),
                    "not_before": now.to_string(),
                    "resource": "https://management.azure.com/", "token_type": "Bearer",
                })
                .to_string(),
            )
                .into_response()
        }
        _ => (StatusCode::NOT_FOUND, "Not Found".to_string()).into_response(),
    }
}

// ------------------------------------------------------------------------------------------
// ARM stub: every request recorded; a bearer token the IMDS stub issued is required (401
// otherwise, and for tokens revoked); Resource Health GETs answer `health`; PUTs answer the
// next scripted response (201 when none is left).

#[derive(Debug, Clone)]
pub struct Req {
    pub method: String,
    pub path: String,
    pub query: String,
    pub auth: Option<String>,
    pub client_request_id: Option<String>,
    pub body: Value,
    pub at: Instant,
}

#[derive(Default)]
pub struct Arm {
    pub reqs: Vec<Req>,
    pub health: Value,
    /// Tokens refused from now on.
    pub revoked: Vec<String>,
    /// (status, Retry-After, body) of the next PUTs.
    pub script: VecDeque<(u16, Option<u64>, Value)>,
    /// The stub's own base URL.
    pub base: String,
    /// When set, PUTs answer with `Azure-AsyncOperation: <this>` (a path is made absolute on
    /// the stub), and GETs of it answer the next of `operations` (the last one repeats).
    pub async_operation: Option<String>,
    /// The bodies of the async operation's status, in order.
    pub operations: VecDeque<Value>,
    /// When set, the next PUT answers `302 Found` with `Location: <this>` (a path is made
    /// absolute on the stub).
    pub redirect: Option<String>,
}

/// The async operation's path on the ARM stub.
pub const OPERATION_PATH: &str =
    "/subscriptions/00000000-0000-0000-0000-000000000000/providers/Microsoft.Compute/locations/eastus2/operations/op-1";

pub type ArmState = Arc<Mutex<Arm>>;

pub async fn arm_stub() -> (String, ArmState) {
    let st: ArmState = Arc::default();
    let s = st.clone();
    let app = Router::new().fallback(move |method: Method, uri: Uri, h: HeaderMap, body: Bytes| {
        let st = s.clone();
        async move { arm(&st, &method, &uri, &h, &body) }
    });
    let base = serve(app).await;
    st.lock().unwrap().base = base.clone();
    (base, st)
}

pub fn arm(st: &ArmState, method: &Method, uri: &Uri, h: &HeaderMap, body: &Bytes) -> Response {
    let mut s = st.lock().unwrap();
    let header = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
    let auth = header("authorization");
    s.reqs.push(Req {
        method: method.to_string(),
        path: uri.path().to_string(),
        query: uri.query().unwrap_or("").to_string(),
        auth: auth.clone(),
        client_request_id: header("x-ms-client-request-id"),
        body: serde_json::from_slice(body).unwrap_or(Value::Null),
        at: Instant::now(),
    });
    let token = auth.as_deref().and_then(|a| a.strip_prefix("Bearer "));
    if !token.is_some_and(|t| t.starts_with("mi-token-") && !s.revoked.iter().any(|r| r == t)) {
        return (
            StatusCode::UNAUTHORIZED,
            json!({"error": {"code": "InvalidAuthenticationToken", "message": "The access token is invalid."}}).to_string(),
        )
            .into_response();
    }
    if method == Method::GET && uri.path().ends_with("/availabilityStatuses/current") {
        return (StatusCode::OK, s.health.to_string()).into_response();
    }
    if method == Method::GET && uri.path() == OPERATION_PATH {
        let body = if s.operations.len() > 1 {
            s.operations.pop_front().unwrap_or_default()
        } else {
            s.operations
                .front()
                .cloned()
                .unwrap_or(json!({"status": "Succeeded"}))
        };
        return (StatusCode::OK, body.to_string()).into_response();
    }
    if method == Method::GET && uri.path().contains("/virtualMachines/") {
        // The VM a PUT created: provisioning finished.
        return (
            StatusCode::OK,
            json!({"properties": {"provisioningState": "Succeeded"}}).to_string(),
        )
            .into_response();
    }
    if let (true, Some(to)) = (method == Method::PUT, s.redirect.take()) {
        let to = if to.starts_with('/') {
            format!("{}{to}", s.base)
        } else {
            to
        };
        let mut r = (StatusCode::FOUND, String::new()).into_response();
        r.headers_mut().insert("location", to.parse().unwrap());
        return r;
    }
    if method == Method::PUT {
        let (status, ra, body) = s.script.pop_front().unwrap_or((
            201,
            None,
            json!({"properties": {"provisioningState": "Creating"}}),
        ));
        let mut r = (StatusCode::from_u16(status).unwrap(), body.to_string()).into_response();
        if let Some(ra) = ra {
            r.headers_mut()
                .insert("retry-after", ra.to_string().parse().unwrap());
        }
        if let (Some(op), true) = (&s.async_operation, (200..300).contains(&status)) {
            let op = if op.starts_with('/') {
                format!("{}{op}", s.base)
            } else {
                op.clone()
            };
            r.headers_mut()
                .insert("azure-asyncoperation", op.parse().unwrap());
        }
        return r;
    }
    (StatusCode::NOT_FOUND, "{}".to_string()).into_response()
}

pub fn create_request() -> Value {
    json!({
        "location": "eastus2",
        "properties": {
            "hardwareProfile": {"vmSize": "Standard_D2s_v3"},
            "osProfile": {
                "computerName": "web-win-1", "adminUsername": "azureuser",
                "windowsConfiguration": {"provisionVMAgent": true, "enableAutomaticUpdates": true}
            },
            "storageProfile": {"osDisk": {"createOption": "FromImage", "osType": "Windows"}},
            "networkProfile": {"networkInterfaces": [{"id": format!("/subscriptions/{SUB}/resourceGroups/web/providers/Microsoft.Network/networkInterfaces/web-win-1-nic")}]}
        },
        "resources": [{
            "type": "extensions", "name": "bginfo", "location": "eastus2",
            "properties": {"publisher": "Microsoft.Compute", "type": "BGInfo", "typeHandlerVersion": "2.1"}
        }]
    })
}

pub fn ingest_body(key: &str, vm: &str, request: Option<Value>) -> Value {
    let mut body: Value = serde_json::from_str(
        &std::fs::read_to_string(
            root().join("engine/tests/data/ingest/vm-agent-windows-2021-10-13.json"),
        )
        .unwrap(),
    )
    .unwrap();
    body.as_object_mut().unwrap().remove("attempt");
    body["idempotency_key"] = json!(key);
    body["resource"]["id"] = json!(vm_id(vm));
    body["resource"]["name"] = json!(vm);
    if let Some(r) = request {
        body["request"] = r;
    }
    body
}

// ------------------------------------------------------------------------------------------
// The 2021-10-13 outage through `/ingest`.

/// The bearer token of the ingest endpoint in the outage tests (`KEEL_TEST_INGEST_TOKEN`).
pub const INGEST_TOKEN: &str = "keel-test-token-0123456789abcdef";

/// The vendor's error body for VM `name` (its OS, id and time varied): VM `i` fails at
/// 07:02:00 + `i` × 100 ms, so 500 VMs fail within a minute.
pub fn outage_body(name: &str, os: &str, i: usize) -> String {
    let key = format!("deploy-2021-10-13/{name}/create/1");
    let mut b = ingest_body(&key, name, None);
    b["resource"]["os"] = json!(os);
    let end = chrono::DateTime::parse_from_rfc3339("2021-10-13T07:02:00Z").unwrap()
        + chrono::Duration::milliseconds(100 * i as i64);
    b["error"]["endTime"] = json!(end.to_rfc3339());
    b["error"]["startTime"] = json!((end - chrono::Duration::seconds(3)).to_rfc3339());
    b["error"]["name"] = json!(format!("op-{name}"));
    b.to_string()
}

/// The outage in time order: `windows` failed Windows creates (`web-win-<i>`), and among them
/// `linux` Linux VMs reporting the same error (`db-linux-<i>`), evenly spread.
pub fn outage_bodies(windows: usize, linux: usize) -> Vec<String> {
    let mut bodies = Vec::new();
    for i in 0..windows {
        bodies.push(outage_body(&format!("web-win-{i}"), "windows", i));
        if i % (windows / linux.max(1)).max(1) == 0 && bodies.len() < windows + linux {
            bodies.push(outage_body(&format!("db-linux-{i}"), "linux", i));
        }
    }
    bodies
}

/// Posts `body` to `base`'s `/ingest`; a 503 (queue full, answered at once) is tried again,
/// as a client would. The final status.
pub async fn post_ingest(client: &reqwest::Client, base: &str, body: String) -> u16 {
    post_ingest_reply(client, base, body).await.0
}

/// [`post_ingest`], with the final reply's JSON (`Null` when it is not JSON).
pub async fn post_ingest_reply(
    client: &reqwest::Client,
    base: &str,
    body: String,
) -> (u16, serde_json::Value) {
    for _ in 0..200 {
        let r = client
            .post(format!("{base}/ingest"))
            .bearer_auth(INGEST_TOKEN)
            .header("content-type", "application/json")
            .body(body.clone())
            .timeout(std::time::Duration::from_secs(60))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        if status != 503 {
            return (status, r.json().await.unwrap_or(serde_json::Value::Null));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("still 503 after 200 tries");
}
