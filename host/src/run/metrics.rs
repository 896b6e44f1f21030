//! Prometheus metrics through the `prometheus` client crate, on a registry of the host's own
//! (no process-global one), in the Prometheus text format (0.0.4) with `# HELP` and `# TYPE`
//! for every family.
//!
//! Every metric is declared once in [`DEFS`] (name, type, help, label names), the table the
//! README's metrics table mirrors; label values never carry ids (events, decisions), so every
//! label set stays bounded. The call sites name a metric and give `(label, value)` pairs;
//! a name missing from [`DEFS`] is ignored (a unit test checks that every name used in the
//! host's source is declared).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::{
    CounterVec, Encoder, GaugeVec, HistogramOpts, HistogramVec, Opts, Registry, TextEncoder,
};

/// The kind of a metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (`_total`).
    Counter,
    /// Set to a value.
    Gauge,
    /// Observed durations in [`BUCKETS`].
    Histogram,
}

/// One declared metric.
#[derive(Clone, Copy, Debug)]
pub struct Def {
    /// Its name.
    pub name: &'static str,
    /// Its kind.
    pub kind: Kind,
    /// Its `# HELP` text.
    pub help: &'static str,
    /// Its label names (bounded values only).
    pub labels: &'static [&'static str],
}

const fn def(
    name: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
    help: &'static str,
) -> Def {
    Def {
        name,
        kind,
        help,
        labels,
    }
}

use Kind::{Counter, Gauge, Histogram};

/// The histograms' buckets, in seconds: from 100 µs to 10 s.
pub const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Every metric of the host.
pub const DEFS: &[Def] = &[
    def("keel_build_info", Gauge, &["version", "commit"],
        "Always 1: the keel binary's version and the commit it was built from (`unknown` when not built from a checkout with KEEL_GIT_COMMIT set)."),
    def("keel_policy_set_info", Gauge, &["digest"],
        "Always 1: the digest of the loaded policy set; the series changes on a reload that loads."),
    def("keel_events_total", Counter, &["source", "kind"],
        "Events decided, by source and event kind."),
    def("keel_decisions_total", Counter, &["action", "policy"],
        "Decisions, by action and the policy that decided (`-` for none)."),
    def("keel_decide_seconds", Histogram, &[],
        "Time the policy engine took to decide one event."),
    def("keel_guard_holds_total", Counter, &["guard", "held_action"],
        "Actions a guard held back, by guard and held action."),
    def("keel_escalations_total", Counter, &["policy", "severity"],
        "Escalations raised by policies, by policy and severity."),
    def("keel_held_total", Counter, &["reason"],
        "Runbooks the gate held, by what held them (pause, window, blocker or budget)."),
    def("keel_paused", Gauge, &["kind"],
        "Pauses in force, by kind of scope."),
    def("keel_budget_leases_total", Counter, &[],
        "Disruption budget leases taken."),
    def("keel_blocker_blocked", Gauge, &["blocker"],
        "1 while the blocker blocks (or has not been checked yet), 0 when it passes."),
    def("keel_runbooks_failed_total", Counter, &["action"],
        "Runbooks that failed or were escalated, by action."),
    def("keel_step_attempts_total", Counter, &["executor", "outcome"],
        "Runbook step attempts, by executor and outcome (ok or failed)."),
    def("keel_step_duration_seconds", Histogram, &["executor", "outcome"],
        "Duration of one runbook step attempt, by executor and outcome (ok or failed)."),
    def("keel_arm_requests_total", Counter, &["status"],
        "Azure Resource Manager action requests, by HTTP status."),
    def("keel_arm_polls_total", Counter, &["status"],
        "Azure Resource Manager operation polls, by HTTP status."),
    def("keel_outbox_depth", Gauge, &[],
        "Outbox messages waiting for delivery."),
    def("keel_outbox_attempts_total", Counter, &["outcome"],
        "Outbox delivery attempts, by outcome (ok or failed)."),
    def("keel_source_errors_total", Counter, &["source"],
        "Failed requests, reads or rejected payloads of an event source."),
    def("keel_source_last_success_timestamp_seconds", Gauge, &["source"],
        "Unix time of the source's last successful round."),
    def("keel_poll_duration_seconds", Histogram, &["source"],
        "Duration of one round of a polled source (its fetches; a hanging GET counts its wait)."),
    def("keel_ingest_requests_total", Counter, &["status"],
        "POST /ingest requests, by HTTP status."),
    def("keel_policy_reloads_total", Counter, &["outcome"],
        "Policy set reloads, by outcome (loaded or rejected)."),
    def("keel_commit_batches_total", Counter, &[],
        "Batches of events committed to the state store."),
    def("keel_gc_rows_total", Counter, &[],
        "State store rows removed by garbage collection."),
];

enum Series {
    Counter(CounterVec),
    Gauge(GaugeVec),
    Histogram(HistogramVec),
}

struct Family {
    def: Def,
    vec: Series,
}

/// The host's metrics.
pub struct Metrics {
    registry: Registry,
    families: HashMap<&'static str, Family>,
    /// The digest in `keel_policy_set_info`; also held while rendering so that a scrape never
    /// sees two digests or none.
    digest: Mutex<Option<String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// The build's commit: `KEEL_GIT_COMMIT` at build time, else `unknown`.
pub fn build_commit() -> &'static str {
    option_env!("KEEL_GIT_COMMIT").unwrap_or("unknown")
}

impl Metrics {
    /// Every metric of [`DEFS`] on a new registry, with `keel_build_info` set.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let mut families = HashMap::new();
        for d in DEFS {
            let vec = match d.kind {
                Kind::Counter => {
                    CounterVec::new(Opts::new(d.name, d.help), d.labels).map(Series::Counter)
                }
                Kind::Gauge => {
                    GaugeVec::new(Opts::new(d.name, d.help), d.labels).map(Series::Gauge)
                }
                Kind::Histogram => HistogramVec::new(
                    HistogramOpts::new(d.name, d.help).buckets(BUCKETS.to_vec()),
                    d.labels,
                )
                .map(Series::Histogram),
            };
            // The names and labels are constants, checked valid by the unit tests.
            let Ok(vec) = vec else { continue };
            let reg = match &vec {
                Series::Counter(v) => registry.register(Box::new(v.clone())),
                Series::Gauge(v) => registry.register(Box::new(v.clone())),
                Series::Histogram(v) => registry.register(Box::new(v.clone())),
            };
            if reg.is_ok() {
                families.insert(d.name, Family { def: *d, vec });
            }
        }
        let m = Metrics {
            registry,
            families,
            digest: Mutex::new(None),
        };
        m.set(
            "keel_build_info",
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                ("commit", build_commit()),
            ],
            1.0,
        );
        m
    }

    /// The family `name` and the values of its labels, in its order (missing ones empty).
    fn values<'a>(
        &self,
        name: &str,
        labels: &[(&str, &'a str)],
    ) -> Option<(&Family, Vec<&'a str>)> {
        let f = self.families.get(name)?;
        let v = f
            .def
            .labels
            .iter()
            .map(|l| labels.iter().find(|(k, _)| k == l).map_or("", |(_, v)| *v))
            .collect();
        Some((f, v))
    }

    /// Adds `v` (not negative) to the counter or gauge `name{labels}`.
    pub fn add(&self, name: &str, labels: &[(&str, &str)], v: f64) {
        if !(v.is_finite() && v >= 0.0) {
            return;
        }
        match self.values(name, labels) {
            Some((
                Family {
                    vec: Series::Counter(c),
                    ..
                },
                l,
            )) => {
                if let Ok(c) = c.get_metric_with_label_values(&l) {
                    c.inc_by(v);
                }
            }
            Some((
                Family {
                    vec: Series::Gauge(g),
                    ..
                },
                l,
            )) => {
                if let Ok(g) = g.get_metric_with_label_values(&l) {
                    g.add(v);
                }
            }
            _ => {}
        }
    }

    /// Sets the gauge `name{labels}` to `v`.
    pub fn set(&self, name: &str, labels: &[(&str, &str)], v: f64) {
        if let Some((
            Family {
                vec: Series::Gauge(g),
                ..
            },
            l,
        )) = self.values(name, labels)
        {
            if let Ok(g) = g.get_metric_with_label_values(&l) {
                g.set(v);
            }
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

    /// Observes `secs` in the histogram `name{labels}`.
    pub fn observe(&self, name: &str, labels: &[(&str, &str)], secs: f64) {
        if let Some((
            Family {
                vec: Series::Histogram(h),
                ..
            },
            l,
        )) = self.values(name, labels)
        {
            if let Ok(h) = h.get_metric_with_label_values(&l) {
                h.observe(secs);
            }
        }
    }

    /// Sets `keel_policy_set_info{digest}` to 1, removing the series of the previous digest.
    pub fn policy_set(&self, digest: &str) {
        let Ok(mut cur) = self.digest.lock() else {
            return;
        };
        if cur.as_deref() == Some(digest) {
            return;
        }
        if let Some(Family {
            vec: Series::Gauge(g),
            ..
        }) = self.families.get("keel_policy_set_info")
        {
            if let Some(old) = cur.as_deref() {
                let _ = g.remove_label_values(&[old]);
            }
            if let Ok(g) = g.get_metric_with_label_values(&[digest]) {
                g.set(1.0);
            }
        }
        *cur = Some(digest.to_string());
    }

    /// The current value of a counter or gauge series, or a histogram's count (0 when absent;
    /// reading never creates a series).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let Some((f, want)) = self.values(name, labels) else {
            return 0.0;
        };
        for mf in self.registry.gather() {
            if mf.name() != f.def.name {
                continue;
            }
            for m in mf.get_metric() {
                let same = m.get_label().len() == want.len()
                    && f.def.labels.iter().zip(&want).all(|(k, v)| {
                        m.get_label()
                            .iter()
                            .any(|lp| lp.name() == *k && lp.value() == *v)
                    });
                if same {
                    return match f.vec {
                        Series::Counter(_) => m.get_counter().get_value(),
                        Series::Gauge(_) => m.get_gauge().get_value(),
                        Series::Histogram(_) => m.get_histogram().get_sample_count() as f64,
                    };
                }
            }
        }
        0.0
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let _digest = self.digest.lock();
        let mut out = Vec::new();
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The content type of [`Metrics::render`].
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_declared_metric_registers_with_help() {
        let m = Metrics::new();
        assert_eq!(
            m.families.len(),
            DEFS.len(),
            "a definition failed to register"
        );
        for d in DEFS {
            assert!(!d.help.is_empty(), "{}", d.name);
            assert_eq!(
                d.kind == Kind::Counter,
                d.name.ends_with("_total"),
                "{}",
                d.name
            );
        }
    }

    #[test]
    fn every_metric_named_in_the_source_is_declared() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut stack = vec![root];
        let mut seen = 0;
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                    continue;
                }
                if p.extension().is_none_or(|x| x != "rs") || p.ends_with("metrics.rs") {
                    continue;
                }
                let text = std::fs::read_to_string(&p).unwrap();
                for (i, _) in text.match_indices("\"keel_") {
                    let rest = &text[i + 1..];
                    let end = rest.find('"').unwrap();
                    let name = &rest[..end];
                    if name.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                        seen += 1;
                        assert!(
                            DEFS.iter().any(|d| d.name == name),
                            "{name} in {} is not in DEFS",
                            p.display()
                        );
                    }
                }
            }
        }
        assert!(seen > 20, "only {seen} metric names found");
    }

    #[test]
    fn the_readme_table_lists_every_metric() {
        let readme = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
        let text = std::fs::read_to_string(readme).unwrap();
        for d in DEFS {
            let kind = format!("{:?}", d.kind).to_lowercase();
            let labels = if d.labels.is_empty() {
                "—".to_string()
            } else {
                d.labels.join(", ")
            };
            let row = format!("| `{}` | {kind} | {labels} | {} |", d.name, d.help);
            assert!(text.contains(&row), "README lacks the row\n{row}");
        }
    }

    #[test]
    fn counters_gauges_histograms_and_the_policy_set_render() {
        let m = Metrics::new();
        m.add(
            "keel_events_total",
            &[("kind", "reboot"), ("source", "x")],
            1.0,
        );
        m.add(
            "keel_events_total",
            &[("source", "x"), ("kind", "reboot")],
            2.0,
        );
        m.add(
            "keel_events_total",
            &[("source", "x"), ("kind", "reboot")],
            -5.0,
        );
        m.set("keel_outbox_depth", &[], 3.0);
        m.observe("keel_decide_seconds", &[], 0.0003);
        m.observe("keel_decide_seconds", &[], 20.0);
        m.policy_set("aaa");
        m.policy_set("bbb");
        m.add("keel_not_declared_total", &[], 1.0);
        assert_eq!(
            m.get("keel_events_total", &[("source", "x"), ("kind", "reboot")]),
            3.0
        );
        assert_eq!(m.get("keel_decide_seconds", &[]), 2.0);
        assert_eq!(
            m.get("keel_events_total", &[("source", "y"), ("kind", "reboot")]),
            0.0
        );
        let text = m.render();
        assert!(text.contains("# HELP keel_events_total "), "{text}");
        assert!(text.contains("# TYPE keel_events_total counter"), "{text}");
        assert!(
            text.contains("keel_events_total{kind=\"reboot\",source=\"x\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE keel_decide_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("keel_decide_seconds_bucket{le=\"0.0005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("keel_decide_seconds_bucket{le=\"10\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("keel_decide_seconds_bucket{le=\"+Inf\"} 2"),
            "{text}"
        );
        assert!(text.contains("keel_decide_seconds_count 2"), "{text}");
        assert!(
            text.contains("keel_policy_set_info{digest=\"bbb\"} 1"),
            "{text}"
        );
        assert!(!text.contains("aaa"), "{text}");
        assert!(text.contains("keel_build_info{commit="), "{text}");
        assert!(!text.contains("keel_not_declared"), "{text}");
        // A series never touched is not exposed (reading does not create it).
        assert!(!text.contains("source=\"y\""), "{text}");
    }
}
