//! Prometheus metrics (text format), without ids as labels.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Counters and gauges of the host.
#[derive(Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<(String, String), f64>>,
}

fn label_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn render_labels(labels: &[(&str, &str)]) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", label_escape(v)))
        .collect::<Vec<_>>()
        .join(",")
}

impl Metrics {
    /// Adds `v` to the series `name{labels}`.
    pub fn add(&self, name: &str, labels: &[(&str, &str)], v: f64) {
        let l = render_labels(labels);
        if let Ok(mut m) = self.counters.lock() {
            *m.entry((name.to_string(), l)).or_insert(0.0) += v;
        }
    }

    /// Sets the series `name{labels}` to `v`.
    pub fn set(&self, name: &str, labels: &[(&str, &str)], v: f64) {
        let l = render_labels(labels);
        if let Ok(mut m) = self.counters.lock() {
            m.insert((name.to_string(), l), v);
        }
    }

    /// Sets a gauge to the current Unix time.
    pub fn set_now(&self, name: &str, labels: &[(&str, &str)]) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.set(name, labels, now);
    }

    /// The current value of a series (0 when absent).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let l = render_labels(labels);
        self.counters
            .lock()
            .ok()
            .and_then(|m| m.get(&(name.to_string(), l)).copied())
            .unwrap_or(0.0)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Ok(m) = self.counters.lock() {
            let mut last = "";
            for ((name, labels), v) in m.iter() {
                if name != last {
                    let kind = if name.ends_with("_total") {
                        "counter"
                    } else {
                        "gauge"
                    };
                    let _ = writeln!(out, "# TYPE {name} {kind}");
                    last = name;
                }
                if labels.is_empty() {
                    let _ = writeln!(out, "{name} {v}");
                } else {
                    let _ = writeln!(out, "{name}{{{labels}}} {v}");
                }
            }
        }
        out
    }
}
