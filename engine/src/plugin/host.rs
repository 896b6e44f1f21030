//! What a plugin's store holds: its memory limiter and the host functions the plugin
//! imports (`log`, history queries).

use std::sync::Arc;

use wasmtime::component::{Linker, WasmList, WasmStr};
use wasmtime::{AsContext, AsContextMut, ResourceLimiter, StoreContextMut};

use super::{t, wit, MAX_LOG_BYTES, MAX_LOG_LINES};
use crate::event::Timestamp;
use crate::fields::{self, FieldType};
use crate::history::{self, HistoryData, Val};

/// What a plugin's store holds: limits, the history to query and the call's log.
pub(crate) struct HostState {
    pub(super) limits: Limits,
    pub(super) history: Option<Arc<HistoryData>>,
    pub(super) event_time: Timestamp,
    pub(super) logs: Vec<String>,
    pub(super) warned_no_history: bool,
}

/// A store's memory limiter; `oom` records that the plugin reached `max_memory`.
pub(super) struct Limits {
    pub(super) max_memory: usize,
    pub(super) oom: bool,
}

impl ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_memory {
            self.oom = true;
            return Err(wasmtime::Error::msg(format!(
                "out of memory: the plugin asked for {} KiB; its limit is {} KiB",
                desired >> 10,
                self.max_memory >> 10
            )));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }

    fn instances(&self) -> usize {
        16
    }

    fn tables(&self) -> usize {
        16
    }

    fn memories(&self) -> usize {
        4
    }
}

impl t::Host for HostState {}

/// The `host` interface's functions, linked by hand rather than through the bindings'
/// `add_to_linker`: those lift a history query's whole `filter` into host strings before
/// the function runs, and a plugin can make a list of millions of entries that all point at
/// one large string of its memory (terabytes to copy). Here the list is counted first, and
/// only a filter within [`MAX_FILTER_ENTRIES`] entries of at most [`MAX_FILTER_TEXT`] bytes
/// each is copied.
pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    let mut host = linker.instance("keel:policy/host@1.0.0")?;
    host.func_wrap(
        "log",
        |mut store: StoreContextMut<'_, HostState>, (level, message): (t::Level, String)| {
            wit::keel::policy::host::Host::log(store.data_mut(), level, message);
            Ok(())
        },
    )?;
    for (name, distinct) in [("history-count", false), ("history-resources", true)] {
        host.func_wrap(
            name,
            move |mut store: StoreContextMut<'_, HostState>,
                  (filter, window_s): (WasmList<(WasmStr, WasmStr)>, i64)| {
                let answer = lift_filter(&mut store, &filter)
                    .and_then(|f| store.data_mut().query(f, window_s, distinct));
                Ok((answer,))
            },
        )?;
    }
    Ok(())
}

/// The longest path or value of a history filter entry a plugin may give.
const MAX_FILTER_TEXT: usize = crate::normalize::MAX_FIELD_BYTES;

/// A plugin's history filter as host strings, or why it is refused: more than
/// [`MAX_FILTER_ENTRIES`] entries, or a path or value longer than [`MAX_FILTER_TEXT`] bytes.
fn lift_filter(
    store: &mut StoreContextMut<'_, HostState>,
    filter: &WasmList<(WasmStr, WasmStr)>,
) -> Result<Vec<(String, String)>, String> {
    if filter.len() > MAX_FILTER_ENTRIES {
        return Err(format!(
            "a history filter has at most {MAX_FILTER_ENTRIES} entries, this one {}",
            filter.len()
        ));
    }
    let entries: Vec<(WasmStr, WasmStr)> = filter
        .iter(store.as_context_mut())
        .map_err(|e| format!("the history filter cannot be read: {e}"))?
        .collect::<wasmtime::Result<_>>()
        .map_err(|e| format!("the history filter cannot be read: {e}"))?;
    let text = |s: &WasmStr| -> Result<String, String> {
        let t = s
            .to_str(store.as_context())
            .map_err(|e| format!("the history filter cannot be read: {e}"))?;
        if t.len() > MAX_FILTER_TEXT {
            return Err(format!(
                "a history filter's paths and values are at most {MAX_FILTER_TEXT} bytes"
            ));
        }
        Ok(t.into_owned())
    };
    entries
        .iter()
        .map(|(p, v)| Ok((text(p)?, text(v)?)))
        .collect()
}

impl wit::keel::policy::host::Host for HostState {
    fn log(&mut self, level: t::Level, message: String) {
        if !matches!(level, t::Level::Warn | t::Level::Error) || self.logs.len() >= MAX_LOG_LINES {
            return;
        }
        let mut m = message;
        if m.len() > MAX_LOG_BYTES {
            let mut cut = MAX_LOG_BYTES;
            while !m.is_char_boundary(cut) {
                cut -= 1;
            }
            m.truncate(cut);
            m.push('…');
        }
        let level = if matches!(level, t::Level::Warn) {
            "warn"
        } else {
            "error"
        };
        self.logs.push(format!("{level}: {m}"));
    }

    fn history_count(
        &mut self,
        filter: Vec<(String, String)>,
        window_s: i64,
    ) -> Result<i64, String> {
        self.query(filter, window_s, false)
    }

    fn history_resources(
        &mut self,
        filter: Vec<(String, String)>,
        window_s: i64,
    ) -> Result<i64, String> {
        self.query(filter, window_s, true)
    }
}

/// The most (path, value) entries of one history query of a plugin.
const MAX_FILTER_ENTRIES: usize = 16;

impl HostState {
    pub(super) fn query(
        &mut self,
        filter: Vec<(String, String)>,
        window_s: i64,
        distinct: bool,
    ) -> Result<i64, String> {
        if window_s <= 0 {
            return Err(format!("the window must be positive, got {window_s}s"));
        }
        let window = chrono::Duration::try_seconds(window_s)
            .ok_or_else(|| format!("window {window_s}s is out of range"))?;
        // Each entry is compared with every event of the window, on the host, where the
        // plugin's deadline does not reach: a filter of millions of entries would hold the
        // deciding thread for minutes. No filter needs more entries than there are fields.
        // (Checked again here for callers other than [`add_to_linker`].)
        if filter.len() > MAX_FILTER_ENTRIES {
            return Err(format!(
                "a history filter has at most {MAX_FILTER_ENTRIES} entries, this one {}",
                filter.len()
            ));
        }
        let mut f = Vec::with_capacity(filter.len());
        for (path, value) in filter {
            let p = path.strip_prefix("event.").unwrap_or(&path);
            let id = fields::lookup(p).ok_or_else(|| format!("unknown event path `{path}`"))?;
            if !history::correlatable(id) {
                return Err(format!("`{path}` cannot be used in a history filter"));
            }
            let v = match fields::field(id).ty {
                FieldType::Int => Val::Int(
                    value
                        .parse()
                        .map_err(|_| format!("`{path}` is an integer, not `{value}`"))?,
                ),
                FieldType::Bool => Val::Bool(
                    value
                        .parse()
                        .map_err(|_| format!("`{path}` is a bool, not `{value}`"))?,
                ),
                _ => Val::Str(value.into()),
            };
            f.push((id, v));
        }
        let Some(h) = &self.history else {
            if !self.warned_no_history {
                self.warned_no_history = true;
                self.logs.push(
                    "warn: no correlation history was given, so history queries count 0".into(),
                );
            }
            return Ok(0);
        };
        Ok(if distinct {
            h.resources(&f, self.event_time, window, None)
        } else {
            h.count(&f, self.event_time, window, None)
        })
    }
}
