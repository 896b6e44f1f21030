//! The `kubernetes` runbook step, through the Kubernetes API (kube-rs): cordon this host's
//! node and evict its pods through the Eviction API, which refuses (429) an eviction that
//! would break a PodDisruptionBudget, retrying those until none is left or the step's time
//! is up; and, once the maintenance event completes or is canceled, uncordon the node, but
//! only when Keel cordoned it for that event.
//!
//! What Keel cordoned is recorded on the node itself, in the same write as the cordon: the
//! annotation [`CORDONED_FOR`] holds the event's key (the vendor's event id). A node an
//! operator had cordoned already is left cordoned; a node cordoned for another event is not
//! uncordoned by this one's completion; the record survives a restart of Keel and is shared by
//! a fleet of hosts.
//!
//! Pods skipped, as `kubectl drain` skips them: those of a DaemonSet (its controller ignores
//! the cordon and would start them again) and mirror pods (the kubelet's static pods, which
//! the API cannot evict).

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use keel_engine::{Decision, Event};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::Client;

use super::http::StepError;
use super::Host;
use crate::config::{node_name_ok, KubeOp, KubeStep};

/// The node annotation recording the event Keel cordoned the node for.
pub const CORDONED_FOR: &str = "keel.dev/cordoned-for";

/// The environment variable naming this host's node (the DaemonSet sets it from
/// `spec.nodeName`).
pub const NODE_ENV: &str = "KEEL_NODE_NAME";

/// The field manager of Keel's writes (server-side bookkeeping of who changed what).
const MANAGER: &str = "keel";

/// How long the drain waits between rounds of evictions refused by a PodDisruptionBudget.
const ROUND: Duration = Duration::from_secs(2);

/// The key a cordon is recorded under: the vendor's event id (shared by the notice and its
/// completion), else the event's id.
pub fn event_key(ev: &Event) -> String {
    ev.maintenance
        .as_ref()
        .and_then(|m| m.vendor_id.clone())
        .unwrap_or_else(|| ev.id.clone())
}

fn api_error(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

fn failed(what: &str, e: &kube::Error) -> StepError {
    let msg = format!("{what}: {e}");
    match api_error(e) {
        // Refused for good: the step's retries would be refused the same way.
        Some(400 | 401 | 403 | 404 | 422) => StepError::permanent(msg),
        _ => StepError::retry(msg, None),
    }
}

async fn client(host: &Host) -> Result<Client, StepError> {
    let config = match &host.cfg.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| StepError::permanent(format!("kubeconfig: {e}")))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| StepError::permanent(format!("kubeconfig: {e}")))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| StepError::permanent(format!("no Kubernetes configuration: {e}")))?,
    };
    let mut config = config;
    // kube-rs retries a 429 by itself up to 15 times, waiting up to 1000 s between tries:
    // a refused eviction must come back to the drain loop, which paces its rounds, reports
    // the pods left and keeps the step's deadline; the step's own retries cover the rest.
    config.default_retry = false;
    Client::try_from(config).map_err(|e| StepError::permanent(format!("Kubernetes client: {e}")))
}

/// Runs a `kubernetes` step: its outcome (`ok`, or `skipped: …`).
pub async fn run(
    host: &Arc<Host>,
    k: &KubeStep,
    timeout: Duration,
    ev: &Event,
    _d: &Decision,
    decision_id: &str,
) -> Result<String, StepError> {
    // The node: the step's, else the one the DaemonSet names (the downward API's
    // spec.nodeName, which need not be the VM's name), else `self`.
    let from_env = std::env::var(NODE_ENV).ok().filter(|n| !n.is_empty());
    let node = match k
        .node
        .as_deref()
        .or(from_env.as_deref())
        .or(host.cfg.self_name.as_deref())
    {
        Some(n) if node_name_ok(n) => n.to_string(),
        Some(n) => {
            return Err(StepError::permanent(format!(
                "`{}` is not a Kubernetes node name",
                keel_engine::escape(n)
            )))
        }
        None => {
            return Err(StepError::permanent(
                "no node: set the step's `node`, $KEEL_NODE_NAME or `self` in keel.yaml",
            ))
        }
    };
    if host.cfg.dry_run {
        return Ok("skipped: dry run".into());
    }
    let client = client(host).await?;
    let key = event_key(ev);
    let report = match k.op {
        KubeOp::Uncordon => uncordon(&client, &node, &key).await?,
        KubeOp::Cordon => cordon(&client, &node, &key).await?.to_string(),
        KubeOp::Drain => {
            let cordoned = cordon(&client, &node, &key).await?;
            // Stop a little before the step's own timeout, to say which pods are left.
            let deadline = Instant::now() + timeout.saturating_sub(Duration::from_secs(1));
            let evicted = evict_all(&client, &node, k.grace_period_s, deadline).await?;
            format!("{cordoned}; {evicted}")
        }
    };
    host.log_line(&serde_json::json!({
        "decision_id": decision_id, "step": "kubernetes", "node": node, "kubernetes": report,
    }));
    Ok(if report.starts_with("skipped") {
        report
    } else {
        "ok".into()
    })
}

/// The event Keel cordoned `node` for, if it did.
fn cordoned_for(node: &Node) -> Option<&str> {
    node.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CORDONED_FOR))
        .map(String::as_str)
}

/// Cordons `node`, recording `key` on it unless someone else had cordoned it already.
async fn cordon(client: &Client, node: &str, key: &str) -> Result<&'static str, StepError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let n = nodes
        .get(node)
        .await
        .map_err(|e| failed(&format!("node {node}"), &e))?;
    let unschedulable = n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true);
    let ours = cordoned_for(&n).is_some();
    if unschedulable && !ours {
        return Ok("the node was cordoned already (not by Keel: it stays cordoned)");
    }
    let patch = serde_json::json!({
        "metadata": { "annotations": { CORDONED_FOR: key } },
        "spec": { "unschedulable": true },
    });
    nodes
        .patch(node, &PatchParams::apply(MANAGER), &Patch::Merge(&patch))
        .await
        .map_err(|e| failed(&format!("cordoning {node}"), &e))?;
    Ok("cordoned")
}

/// Uncordons `node` if Keel cordoned it for `key`.
async fn uncordon(client: &Client, node: &str, key: &str) -> Result<String, StepError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let n = nodes
        .get(node)
        .await
        .map_err(|e| failed(&format!("node {node}"), &e))?;
    if cordoned_for(&n) != Some(key) {
        return Ok("skipped: Keel did not cordon the node for this event".into());
    }
    let patch = serde_json::json!({
        "metadata": { "annotations": { CORDONED_FOR: null } },
        "spec": { "unschedulable": false },
    });
    nodes
        .patch(node, &PatchParams::apply(MANAGER), &Patch::Merge(&patch))
        .await
        .map_err(|e| failed(&format!("uncordoning {node}"), &e))?;
    Ok("uncordoned".into())
}

/// Whether the drain leaves `pod` where it is (a DaemonSet's, a mirror pod).
fn skipped(pod: &Pod) -> bool {
    let daemonset = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && o.kind == "DaemonSet");
    let mirror = pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key("kubernetes.io/config.mirror"));
    daemonset || mirror
}

/// Evicts every pod of `node` (but the skipped ones) and waits until they are gone, by
/// `deadline`; evictions a PodDisruptionBudget refuses are tried again every [`ROUND`].
async fn evict_all(
    client: &Client,
    node: &str,
    grace_period_s: Option<i64>,
    deadline: Instant,
) -> Result<String, StepError> {
    let all: Api<Pod> = Api::all(client.clone());
    let on_node = ListParams::default().fields(&format!("spec.nodeName={node}"));
    // The policy/v1 Eviction itself (kube-rs 5's `Api::evict` sends its delete options as
    // `delete_options`, a field the API server drops: the grace period would be lost).
    let eviction = |ns: &str, name: &str| {
        let mut e = serde_json::json!({
            "apiVersion": "policy/v1", "kind": "Eviction",
            "metadata": { "name": name, "namespace": ns },
        });
        if let Some(g) = grace_period_s {
            e["deleteOptions"] = serde_json::json!({ "gracePeriodSeconds": g });
        }
        e
    };
    let mut evicted = std::collections::BTreeSet::new();
    loop {
        let pods = all
            .list(&on_node)
            .await
            .map_err(|e| failed(&format!("listing the pods of {node}"), &e))?;
        let mut left = Vec::new();
        let mut skipped_n = 0;
        for pod in &pods.items {
            if skipped(pod) {
                skipped_n += 1;
                continue;
            }
            let (Some(ns), Some(name)) = (
                pod.metadata.namespace.as_deref(),
                pod.metadata.name.as_deref(),
            ) else {
                continue;
            };
            let id = format!("{ns}/{name}");
            if pod.metadata.deletion_timestamp.is_some() {
                // Evicted (by us or not): waiting for it to stop.
                left.push(format!("{id} (terminating)"));
                continue;
            }
            let api: Api<Pod> = Api::namespaced(client.clone(), ns);
            let sent: Result<serde_json::Value, kube::Error> = api
                .create_subresource(
                    "eviction",
                    name,
                    &PostParams::default(),
                    &eviction(ns, name),
                )
                .await;
            match sent {
                Ok(_) => {
                    evicted.insert(id.clone());
                    left.push(format!("{id} (terminating)"));
                }
                Err(e) if api_error(&e) == Some(404) => {}
                // 429: a PodDisruptionBudget allows no disruption now; try again.
                Err(e) if api_error(&e) == Some(429) => left.push(format!(
                    "{id} (its PodDisruptionBudget allows no eviction now)"
                )),
                Err(e) => return Err(failed(&format!("evicting {id}"), &e)),
            }
        }
        if left.is_empty() {
            return Ok(format!(
                "{} pod(s) evicted, {skipped_n} left (DaemonSet or mirror pods)",
                evicted.len()
            ));
        }
        if Instant::now() + ROUND >= deadline {
            left.sort();
            let shown: Vec<String> = left
                .iter()
                .take(10)
                .map(|s| keel_engine::escape(s))
                .collect();
            return Err(StepError::retry(
                format!(
                    "the drain's time is up with {} pod(s) still on {node}: {}{}",
                    left.len(),
                    shown.join(", "),
                    if left.len() > 10 { ", ..." } else { "" }
                ),
                None,
            ));
        }
        tokio::time::sleep(ROUND).await;
    }
}
