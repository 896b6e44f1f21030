//! Policy reload: the policy directory's files are polled (paths, sizes and modification
//! times); on a change the new set is loaded whole. An invalid set is rejected with every
//! problem logged (escaped) and the old set keeps deciding; a valid one is swapped in and its
//! digest logged.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::Utc;
use keel_engine::escape;
use tokio::sync::watch;

use super::{rfc, Host};

/// What identifies a version of the policy directory: every file with its size and mtime.
pub type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>)>;

/// The fingerprint of the files under `dir` (recursively, sorted); unreadable entries are
/// left out (a later load reports them).
pub fn fingerprint(dir: &Path) -> Fingerprint {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(md) = e.metadata() else { continue };
            if md.is_dir() {
                todo.push(e.path());
            } else {
                out.push((e.path(), md.len(), md.modified().ok()));
            }
        }
    }
    out.sort();
    out
}

/// Polls the policy directory every `interval` until `stop` turns true.
pub async fn watch(host: Arc<Host>, interval: Duration, mut stop: watch::Receiver<bool>) {
    // The embedded library never changes: nothing to watch.
    let Some(dir) = host.cfg.policies.clone() else {
        while stop.changed().await.is_ok() && !*stop.borrow() {}
        return;
    };
    let mut last = fingerprint(&dir);
    loop {
        tokio::select! {
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() {
                    return;
                }
            }
            _ = tokio::time::sleep(interval) => {}
        }
        let now = fingerprint(&dir);
        if now == last {
            continue;
        }
        last = now;
        let cfg = host.cfg.clone();
        let loaded = tokio::task::spawn_blocking(move || super::load_policies(&cfg)).await;
        match loaded {
            Ok(Ok(engine)) => {
                let digest = engine.digest().to_string();
                host.set_engine(engine);
                host.log_plugin_warnings();
                host.metrics
                    .add("keel_policy_reloads_total", &[("outcome", "loaded")], 1.0);
                host.log_line(&serde_json::json!({
                    "time": rfc(Utc::now()), "policy_reload": "loaded",
                    "policy_set_digest": digest, "policies": host.engine().len(),
                }));
            }
            Ok(Err(e)) => {
                let errors: Vec<String> = e
                    .diagnostics()
                    .iter()
                    .map(|d| escape(&d.to_string()))
                    .collect();
                host.metrics
                    .add("keel_policy_reloads_total", &[("outcome", "rejected")], 1.0);
                host.log_line(&serde_json::json!({
                    "time": rfc(Utc::now()), "policy_reload": "rejected", "errors": errors,
                    "policy_set_digest": host.engine().digest(),
                }));
            }
            Err(e) => host.log_line(&serde_json::json!({
                "time": rfc(Utc::now()), "policy_reload": "rejected",
                "errors": [escape(&e.to_string())],
                "policy_set_digest": host.engine().digest(),
            })),
        }
    }
}
