//! The native `kubernetes` runbook step against a stub Kubernetes API server (no cluster):
//! an announced Reboot cordons this VM's node (recording the event on it), evicts its pods
//! through the Eviction API (retrying the one its PodDisruptionBudget holds, leaving the
//! DaemonSet's and the mirror pod), approves the event, and uncordons the node once the event
//! is over. A node an operator had cordoned stays cordoned; a budget that never allows the
//! eviction fails the drain at its deadline, naming the pod.
#![cfg(feature = "kubernetes")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::{get, post};
use axum::{Json, Router};
use common::{Scenario, EVENT_ID, VM};
use serde_json::{json, Value};

const TOKEN: &str = "stub-token";

#[derive(Clone)]
struct StubPod {
    ns: &'static str,
    name: &'static str,
    /// The kind of its controller, if any.
    owner: Option<&'static str>,
    mirror: bool,
    /// Evictions its PodDisruptionBudget still refuses (u32::MAX: always).
    refusals: u32,
    terminating: bool,
}

#[derive(Default)]
struct Kube {
    unschedulable: bool,
    annotations: BTreeMap<String, String>,
    pods: Vec<StubPod>,
    /// Every eviction accepted, `ns/name`.
    evicted: Vec<String>,
    /// Evictions refused with 429.
    refused: usize,
    /// The node's states after each patch: (unschedulable, annotation).
    patches: Vec<(bool, Option<String>)>,
    unauthorized: usize,
}

type K = Arc<Mutex<Kube>>;

fn authorized(h: &HeaderMap, k: &K) -> bool {
    let ok =
        h.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {TOKEN}"));
    if !ok {
        k.lock().unwrap().unauthorized += 1;
    }
    ok
}

fn node_json(k: &Kube) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": { "name": VM, "annotations": k.annotations },
        "spec": { "unschedulable": k.unschedulable },
    })
}

async fn get_node(
    State(k): State<K>,
    Path(name): Path<String>,
    h: HeaderMap,
) -> (StatusCode, Json<Value>) {
    if !authorized(&h, &k) {
        return (StatusCode::UNAUTHORIZED, Json(json!({})));
    }
    if name != VM {
        return (
            StatusCode::NOT_FOUND,
            Json(status(404, "NotFound", "no such node")),
        );
    }
    (StatusCode::OK, Json(node_json(&k.lock().unwrap())))
}

async fn patch_node(
    State(k): State<K>,
    Path(name): Path<String>,
    h: HeaderMap,
    body: String,
) -> (StatusCode, Json<Value>) {
    if !authorized(&h, &k) {
        return (StatusCode::UNAUTHORIZED, Json(json!({})));
    }
    let ct = h
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if name != VM || ct != "application/merge-patch+json" {
        return (StatusCode::BAD_REQUEST, Json(status(400, "BadRequest", ct)));
    }
    let patch: Value = serde_json::from_str(&body).unwrap();
    let mut s = k.lock().unwrap();
    if let Some(u) = patch["spec"]["unschedulable"].as_bool() {
        s.unschedulable = u;
    }
    if let Some(a) = patch["metadata"]["annotations"].as_object() {
        for (key, v) in a {
            match v.as_str() {
                Some(v) => {
                    s.annotations.insert(key.clone(), v.to_string());
                }
                None => {
                    s.annotations.remove(key);
                }
            }
        }
    }
    let mark = s.annotations.get("keel.dev/cordoned-for").cloned();
    let u = s.unschedulable;
    s.patches.push((u, mark));
    (StatusCode::OK, Json(node_json(&s)))
}

fn pod_json(p: &StubPod) -> Value {
    let mut meta = json!({ "name": p.name, "namespace": p.ns, "uid": format!("uid-{}", p.name) });
    if let Some(kind) = p.owner {
        meta["ownerReferences"] = json!([{
            "apiVersion": "apps/v1", "kind": kind, "name": "owner", "uid": "owner-uid", "controller": true,
        }]);
    }
    if p.mirror {
        meta["annotations"] = json!({ "kubernetes.io/config.mirror": "abc" });
    }
    if p.terminating {
        meta["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    }
    json!({ "apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": { "nodeName": VM, "containers": [] } })
}

async fn list_pods(State(k): State<K>, uri: Uri, h: HeaderMap) -> (StatusCode, Json<Value>) {
    if !authorized(&h, &k) {
        return (StatusCode::UNAUTHORIZED, Json(json!({})));
    }
    let q: BTreeMap<String, String> =
        url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    if q.get("fieldSelector").map(String::as_str) != Some(&format!("spec.nodeName={VM}")) {
        return (
            StatusCode::BAD_REQUEST,
            Json(status(400, "BadRequest", "fieldSelector")),
        );
    }
    let mut s = k.lock().unwrap();
    let items: Vec<Value> = s.pods.iter().map(pod_json).collect();
    // A terminating pod is gone by the next list.
    s.pods.retain(|p| !p.terminating);
    (
        StatusCode::OK,
        Json(json!({ "apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items })),
    )
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({ "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code })
}

async fn evict(
    State(k): State<K>,
    Path((ns, name)): Path<(String, String)>,
    h: HeaderMap,
    body: Json<Value>,
) -> (StatusCode, Json<Value>) {
    if !authorized(&h, &k) {
        return (StatusCode::UNAUTHORIZED, Json(json!({})));
    }
    assert_eq!(body["kind"], "Eviction", "{body:?}");
    assert_eq!(body["deleteOptions"]["gracePeriodSeconds"], 5, "{body:?}");
    let mut s = k.lock().unwrap();
    let Some(i) = s.pods.iter().position(|p| p.ns == ns && p.name == name) else {
        return (
            StatusCode::NOT_FOUND,
            Json(status(404, "NotFound", "no such pod")),
        );
    };
    if s.pods[i].refusals > 0 {
        if s.pods[i].refusals != u32::MAX {
            s.pods[i].refusals -= 1;
        }
        s.refused += 1;
        return (
            StatusCode::TOO_MANY_REQUESTS,
            Json(status(
                429,
                "TooManyRequests",
                "Cannot evict pod as it would violate the pod's disruption budget.",
            )),
        );
    }
    s.pods[i].terminating = true;
    s.evicted.push(format!("{ns}/{name}"));
    (
        StatusCode::CREATED,
        Json(
            json!({ "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Success", "code": 201 }),
        ),
    )
}

fn pods(db_refusals: u32) -> Vec<StubPod> {
    let pod = |ns, name, owner, mirror, refusals| StubPod {
        ns,
        name,
        owner,
        mirror,
        refusals,
        terminating: false,
    };
    vec![
        pod("shop", "web-7d9f", Some("ReplicaSet"), false, 0),
        pod("shop", "db-0", Some("StatefulSet"), false, db_refusals),
        pod(
            "kube-system",
            "node-exporter-x1",
            Some("DaemonSet"),
            false,
            0,
        ),
        pod("kube-system", "kube-proxy-test-vm", None, true, 0),
    ]
}

/// The stub API server and a kubeconfig for it.
async fn kube_stub(sc: &Scenario, k: K) -> std::path::PathBuf {
    let base = common::serve(
        Router::new()
            .route("/api/v1/nodes/{name}", get(get_node).patch(patch_node))
            .route("/api/v1/pods", get(list_pods))
            .route("/api/v1/namespaces/{ns}/pods/{name}/eviction", post(evict))
            .with_state(k),
    )
    .await;
    let kubeconfig = sc.dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: stub\n  cluster:\n    server: {base}\ncontexts:\n- name: stub\n  context:\n    cluster: stub\n    user: stub\ncurrent-context: stub\nusers:\n- name: stub\n  user:\n    token: {TOKEN}\n"
        ),
    )
    .unwrap();
    kubeconfig
}

fn runbooks(timeout: &str, retries: u32) -> String {
    format!(
        "runbooks:\n  drain:\n    - name: drain-node\n      kubernetes: {{ grace_period_s: 5 }}\n      timeout: {timeout}\n      retries: {retries}\n    - name: approve\n      azure_ack: {{}}\n      timeout: 5s\n"
    )
}

/// A Reboot announced to a host whose drain runbook is the `kubernetes` step (`timeout`,
/// `retries`) then the approval, against the stub API server holding `kube`: once the
/// runbook ends, which must be `want`, the scenario, the stub's state and the running host.
async fn drain(kube: Kube, timeout: &str, retries: u32, want: &str) -> (Scenario, K, common::Keel) {
    let sc = Scenario::new(true, &common::not_before_in_15_minutes()).await;
    let k: K = Arc::new(Mutex::new(kube));
    let kubeconfig = kube_stub(&sc, k.clone()).await;
    sc.set_runbooks(
        &runbooks(timeout, retries),
        &format!("kubernetes:\n  kubeconfig: {}\n", kubeconfig.display()),
    );
    let mut keel = sc.keel(&[], &[]);
    assert_eq!(
        sc.wait_runbook_finished(&mut keel, Duration::from_secs(90))
            .await,
        want,
        "{}",
        keel.dump()
    );
    (sc, k, keel)
}

async fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reboot_cordons_evicts_approves_and_uncordons_after() {
    let (sc, k, mut keel) = drain(
        Kube {
            pods: pods(2),
            ..Kube::default()
        },
        "30s",
        2,
        "done",
    )
    .await;
    {
        let s = k.lock().unwrap();
        assert_eq!(
            s.evicted,
            vec!["shop/web-7d9f", "shop/db-0"],
            "the DaemonSet's and the mirror pod stay"
        );
        assert_eq!(s.refused, 2, "the budget's refusals were retried");
        assert_eq!(
            s.patches[0],
            (true, Some(EVENT_ID.to_string())),
            "cordoned, recorded"
        );
        assert_eq!(s.unauthorized, 0);
    }
    assert_eq!(sc.se.lock().unwrap().approvals, vec![EVENT_ID.to_string()]);
    // The event runs and is gone: the node comes back, the record with it.
    wait_for("the uncordon", Duration::from_secs(30), || {
        let s = k.lock().unwrap();
        !s.unschedulable && s.patches.len() == 2
    })
    .await;
    assert_eq!(k.lock().unwrap().patches[1], (false, None));
    keel.wait_line(
        "the uncordon step's outcome",
        Duration::from_secs(20),
        |l| l["step"] == "kubernetes-uncordon-1" && l.get("outcome").is_some(),
    )
    .await;
    keel.kill();
    let lines = keel.json_lines();
    let uncordon = lines
        .iter()
        .find(|l| l["step"] == "kubernetes-uncordon-1" && l.get("outcome").is_some())
        .unwrap_or_else(|| panic!("no uncordon step\n{}", keel.dump()));
    assert_eq!(uncordon["outcome"], "ok");
    let report = lines
        .iter()
        .find(|l| {
            l["kubernetes"]
                .as_str()
                .is_some_and(|r| r.contains("evicted"))
        })
        .unwrap();
    assert_eq!(
        report["kubernetes"],
        "cordoned; 2 pod(s) evicted, 2 left (DaemonSet or mirror pods)"
    );
    assert_eq!(k.lock().unwrap().patches.len(), 2, "nothing else written");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_an_operator_cordoned_stays_cordoned() {
    let (_sc, k, mut keel) = drain(
        Kube {
            unschedulable: true,
            pods: pods(0),
            ..Kube::default()
        },
        "30s",
        2,
        "done",
    )
    .await;
    // The event completes; its uncordon finds no record of Keel's and leaves the node.
    wait_for(
        "the completion's uncordon step",
        Duration::from_secs(30),
        || {
            keel.json_lines()
                .iter()
                .any(|l| l["step"] == "kubernetes-uncordon-1" && l.get("outcome").is_some())
        },
    )
    .await;
    keel.kill();
    let s = k.lock().unwrap();
    assert!(s.unschedulable);
    assert!(s.patches.is_empty(), "{:?}", s.patches);
    assert_eq!(s.evicted.len(), 2);
    let lines = keel.json_lines();
    let step = lines
        .iter()
        .find(|l| l["step"] == "kubernetes-uncordon-1" && l.get("outcome").is_some())
        .unwrap();
    assert_eq!(
        step["outcome"],
        "skipped: Keel did not cordon the node for this event"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_budget_that_never_allows_the_eviction_fails_the_drain_at_its_deadline() {
    let (sc, k, mut keel) = drain(
        Kube {
            pods: pods(u32::MAX),
            ..Kube::default()
        },
        "5s",
        0,
        "failed",
    )
    .await;
    // The runbook's end is recorded, then its escalation logged.
    keel.wait_line("the escalation", Duration::from_secs(20), |l| {
        l.get("escalation").is_some()
    })
    .await;
    keel.kill();
    let lines = keel.json_lines();
    let step = lines
        .iter()
        .find(|l| l["step"] == "drain-node" && l.get("outcome").is_some())
        .unwrap();
    let outcome = step["outcome"].as_str().unwrap();
    assert!(
        outcome.contains("shop/db-0 (its PodDisruptionBudget allows no eviction now)"),
        "{outcome}"
    );
    assert!(sc.se.lock().unwrap().approvals.is_empty(), "not approved");
    let s = k.lock().unwrap();
    assert_eq!(s.evicted, vec!["shop/web-7d9f"], "the budget's pod stays");
    assert!(
        s.unschedulable,
        "the node stays cordoned for the people paged"
    );
    assert!(
        lines.iter().any(|l| l["escalation"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("runbook `drain` failed"))),
        "{}",
        keel.dump()
    );
}
