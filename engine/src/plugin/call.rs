//! Calls into a loaded plugin: warm instances, the per-call deadline and its one retry,
//! fault classification, and the event handed to the guest.

use std::sync::{Arc, Mutex};

use wasmtime::{Store, Trap};

use super::cache::CacheUse;
use super::host::{HostState, Limits};
use super::{error_chain, lock, t, wit, INIT_DEADLINE_FACTOR, MAX_OUTPUT_BYTES, WARM_INSTANCES};
use crate::event::{Event, Timestamp};
use crate::history::HistoryData;

/// A plugin policy, loaded: ready to instantiate, with warm instances.
pub(crate) struct Plugin {
    pub(super) engine: wasmtime::Engine,
    pub(super) pre: wit::PolicyPre<HostState>,
    pub(super) config: String,
    /// The per-call deadline, milliseconds.
    pub(super) deadline_ms: u64,
    /// The same in epoch ticks: one more than the milliseconds, since the current tick may
    /// be about to end when the call starts.
    pub(super) deadline_ticks: u64,
    pub(super) max_memory: usize,
    pub(super) warm: Mutex<Vec<Warm>>,
    /// How this plugin's component was obtained at load.
    pub(crate) cache: CacheUse,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("deadline_ms", &self.deadline_ms)
            .field("max_memory", &self.max_memory)
            .field("cache", &self.cache)
            .finish()
    }
}

/// An initialized instance with its store.
pub(super) struct Warm {
    store: Store<HostState>,
    bindings: wit::Policy,
}

/// What a plugin returned, before the engine validates it.
pub(crate) struct RawDecision {
    pub action: String,
    pub reason: Option<String>,
    pub params_json: Option<String>,
    pub due_ms: Option<i64>,
}

/// One call's result.
pub(crate) struct CallResult {
    pub outcome: Result<Option<RawDecision>, Fault>,
    /// `warn` and `error` lines the plugin logged.
    pub logs: Vec<String>,
    /// True when a deadline interrupt was retried.
    pub retried: bool,
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fault {
    /// The call ran past its deadline (twice).
    Deadline(u64),
    /// The plugin reached its memory limit.
    OutOfMemory(String),
    /// Any other trap (a panic is `unreachable`).
    Trap(String),
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Deadline(ms) => write!(
                f,
                "plugin fault: ran past its deadline of {ms} ms (interrupted, retried once)"
            ),
            Fault::OutOfMemory(m) => write!(f, "plugin fault: {m}"),
            Fault::Trap(m) => write!(f, "plugin fault: trapped: {m}"),
        }
    }
}

/// Why a new instance could not be made: `init` refused the config, or a fault.
pub(super) enum InitError {
    Init(String),
    Fault(Fault),
}

impl Plugin {
    fn new_store(&self) -> Store<HostState> {
        let mut store = Store::new(
            &self.engine,
            HostState {
                limits: Limits {
                    max_memory: self.max_memory,
                    oom: false,
                },
                history: None,
                event_time: Timestamp::default(),
                logs: Vec::new(),
                warned_no_history: false,
            },
        );
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_trap();
        store
    }

    /// A new instance from the `InstancePre`, with `init` run.
    pub(super) fn instantiate(&self) -> Result<Warm, InitError> {
        let mut store = self.new_store();
        let init_ms = self
            .deadline_ms
            .saturating_mul(INIT_DEADLINE_FACTOR)
            .max(100);
        store.set_epoch_deadline(init_ms.saturating_add(1));
        let bindings = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| InitError::Fault(classify(&store, &e, init_ms)))?;
        match bindings
            .keel_policy_plugin()
            .call_init(&mut store, &self.config)
        {
            Ok(Ok(())) => Ok(Warm { store, bindings }),
            Ok(Err(m)) => Err(InitError::Init(m)),
            Err(e) => Err(InitError::Fault(classify(&store, &e, init_ms))),
        }
    }

    /// Drops the warm instances: the next call starts from a fresh instance (and `init`), so
    /// nothing a plugin kept in its own memory carries over.
    pub(crate) fn drop_warm(&self) {
        lock(&self.warm).clear();
    }

    pub(super) fn give_back(&self, mut w: Warm) {
        w.store.data_mut().history = None;
        w.store.data_mut().logs.clear();
        let mut pool = lock(&self.warm);
        if pool.len() < WARM_INSTANCES {
            pool.push(w);
        }
    }

    /// A fresh instance and a call, measured by the benchmarks (instantiation from the
    /// `InstancePre` plus `init`).
    #[doc(hidden)]
    pub(crate) fn cold_instance(&self) -> Result<(), String> {
        self.instantiate().map(|_| ()).map_err(|e| match e {
            InitError::Init(m) => m,
            InitError::Fault(f) => f.to_string(),
        })
    }

    /// Calls `evaluate`, retrying once on a fresh instance after a deadline interrupt.
    pub(crate) fn evaluate(
        &self,
        event: &Event,
        now: Timestamp,
        history: Option<Arc<HistoryData>>,
    ) -> CallResult {
        let wit_event = to_wit(event);
        let ctx = t::Ctx {
            now: now.timestamp_millis(),
        };
        let first = self.call_once(&wit_event, ctx, history.clone(), event.time);
        match first {
            (Err(Fault::Deadline(_)), _) => {
                let (outcome, logs) = self.call_once(&wit_event, ctx, history, event.time);
                CallResult {
                    outcome,
                    logs,
                    retried: true,
                }
            }
            (outcome, logs) => CallResult {
                outcome,
                logs,
                retried: false,
            },
        }
    }

    fn call_once(
        &self,
        event: &t::Event,
        ctx: t::Ctx,
        history: Option<Arc<HistoryData>>,
        event_time: Timestamp,
    ) -> (Result<Option<RawDecision>, Fault>, Vec<String>) {
        let popped = lock(&self.warm).pop();
        let mut w = match popped {
            Some(w) => w,
            None => match self.instantiate() {
                Ok(w) => w,
                Err(InitError::Init(m)) => {
                    return (
                        Err(Fault::Trap(format!("init failed on a new instance: {m}"))),
                        Vec::new(),
                    )
                }
                Err(InitError::Fault(f)) => return (Err(f), Vec::new()),
            },
        };
        {
            let data = w.store.data_mut();
            data.history = history;
            data.event_time = event_time;
            data.logs.clear();
            data.warned_no_history = false;
        }
        w.store.set_epoch_deadline(self.deadline_ticks);
        let res = w
            .bindings
            .keel_policy_plugin()
            .call_evaluate(&mut w.store, event, ctx);
        let logs = std::mem::take(&mut w.store.data_mut().logs);
        match res {
            Ok(d) => {
                self.give_back(w);
                (
                    Ok(d.map(|d| RawDecision {
                        action: d.action,
                        reason: d.reason,
                        params_json: d.params_json,
                        due_ms: d.due,
                    })),
                    logs,
                )
            }
            // After a trap the instance's state is undefined: drop the whole store.
            Err(e) => (Err(classify(&w.store, &e, self.deadline_ms)), logs),
        }
    }
}

fn classify(store: &Store<HostState>, e: &wasmtime::Error, deadline_ms: u64) -> Fault {
    if store.data().limits.oom {
        return Fault::OutOfMemory(format!(
            "out of memory: reached its limit of {} MiB",
            store.data().limits.max_memory >> 20
        ));
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => Fault::Deadline(deadline_ms),
        Some(Trap::UnreachableCodeReached) => {
            Fault::Trap("wasm `unreachable` (a panic or abort in the plugin)".into())
        }
        _ => Fault::Trap(error_chain(e)),
    }
}

/// Validates a returned string's size.
pub(crate) fn check_size(what: &str, s: &str) -> Result<(), String> {
    if s.len() > MAX_OUTPUT_BYTES {
        return Err(format!(
            "plugin returned a {what} of {} bytes; the limit is {MAX_OUTPUT_BYTES}",
            s.len()
        ));
    }
    Ok(())
}

fn ms(t: Timestamp) -> i64 {
    t.timestamp_millis()
}

fn to_wit(ev: &Event) -> t::Event {
    let r = &ev.resource;
    t::Event {
        id: ev.id.clone(),
        time: ms(ev.time),
        source: ev.source.as_str().to_string(),
        kind: match ev.kind {
            crate::event::Kind::Maintenance => t::Kind::Maintenance,
            crate::event::Kind::Health => t::Kind::Health,
            crate::event::Kind::OperationFailure => t::Kind::OperationFailure,
        },
        resource: t::Resource {
            id: r.id.clone(),
            name: r.name.clone(),
            type_: r.type_.clone(),
            os: r.os.clone(),
            region: r.region.clone(),
            zone: r.zone.clone(),
            fault_domain: r.fault_domain,
            update_domain: r.update_domain,
            availability_set: r.availability_set.clone(),
            scale_set: r.scale_set.clone(),
            tags: r.tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            is_self: r.is_self,
        },
        maintenance: ev.maintenance.as_ref().map(|m| t::Maintenance {
            type_: m.type_.as_str().to_string(),
            status: m.status.as_str().to_string(),
            not_before: m.not_before.map(ms),
            not_after: m.not_after.map(ms),
            duration_s: m.duration_s,
            initiator: m.initiator.map(|i| i.as_str().to_string()),
            description: m.description.clone(),
            vendor_id: m.vendor_id.clone(),
            vendor_type: m.vendor_type.clone(),
            incarnation: m.incarnation,
            inferred: m.inferred,
        }),
        health: ev.health.as_ref().map(|h| t::Health {
            state: h.state.as_str().to_string(),
            previous_state: h.previous_state.map(|s| s.as_str().to_string()),
            reason_type: h.reason_type.map(|s| s.as_str().to_string()),
            summary: h.summary.clone(),
            occurred_at: h.occurred_at.map(ms),
            resolution_eta: h.resolution_eta.map(ms),
        }),
        failure: ev.failure.as_ref().map(|f| t::Failure {
            operation: f.operation.as_str().to_string(),
            code: f.code.clone(),
            message: f.message.clone(),
            http_status: f.http_status,
            attempt: f.attempt,
            retry_after_s: f.retry_after_s,
            category: f.category.as_str().to_string(),
            transient: f.transient,
            details_json: (!f.details.is_empty())
                .then(|| serde_json::to_string(&f.details).unwrap_or_default()),
            request_json: f.request.as_ref().map(|r| r.to_string()),
        }),
    }
}
