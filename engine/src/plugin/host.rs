//! What a plugin's store holds: its memory limiter and the host functions the plugin
//! imports (`log`, history queries).

use std::sync::Arc;

use wasmtime::ResourceLimiter;

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
    fn query(
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
