//! The Wasm plugin host (feature `plugins`): components implementing the WIT world
//! `keel:policy/policy@1.0.0` (`wasm-plugins/wit/policy.wit`), run with wasmtime's component
//! model.
//!
//! * **Nothing granted but the world's imports.** The linker defines `keel:policy/host` and
//!   nothing else: a component importing WASI (filesystem, sockets, clocks, random) or any
//!   other interface is refused at load with the name of the import.
//! * **Versioned.** A component exporting `keel:policy/plugin` of another major version is
//!   refused at load with both versions in the message.
//! * **Compiled once.** Components are compiled at load (never on the decision path) and
//!   cached on disk ([`PluginCache`]), keyed by the component's SHA-256 and wasmtime's
//!   version and configuration. A cache entry is native code, so the cache trusts only what
//!   this user wrote: the directory must be ours and not writable by group or others (else it
//!   is not used, with a warning), an entry is opened without following a symbolic link and
//!   must be ours and not group/other-writable, and it carries an HMAC-SHA256 of its name
//!   and payload under a random key kept in a 0600 file; an entry that fails any check, or
//!   is corrupt, is rebuilt and never handed to wasmtime.
//! * **Warm instances.** Each plugin policy keeps an [`InstancePre`](wasmtime::component::InstancePre)
//!   and a small pool of initialized instances; a call takes one, and gives it back unless the
//!   call faulted (then the whole store is dropped).
//! * **Bounded.** Every call runs under an epoch deadline (a ticker thread per runtime advances
//!   the epoch every millisecond) and a memory limit (a
//!   [`ResourceLimiter`](wasmtime::ResourceLimiter)); a deadline interrupt is retried once on
//!   a fresh instance before it counts as a fault (the deadline is wall time, and a loaded
//!   machine can interrupt a legitimate call).
//!
//! This module holds the runtime, the public [`PluginCache`] and loading (interface checks,
//! `init`); `cache` the compiled-component cache and its file checks; `host` a store's state
//! (the memory limiter, the host functions a plugin imports); `call` the calls into a loaded
//! plugin (warm instances, deadlines, faults, the event handed to the guest).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::policy::{PluginSpec, MAX_PLUGIN_MEMORY_MIB};

mod cache;
mod call;
mod host;

pub(crate) use cache::CacheUse;
use cache::{open_cache, OpenCache};
use call::InitError;
pub(crate) use call::{check_size, Plugin, RawDecision};
use host::HostState;

mod wit {
    #![allow(missing_docs)]
    wasmtime::component::bindgen!({
        path: "wit",
        world: "policy",
    });
}

use wit::keel::policy::types as t;

/// The interface this host implements.
pub const PLUGIN_INTERFACE: &str = "keel:policy@1.0.0";
const PACKAGE: &str = "keel:policy/";
const MAJOR: &str = "1";
/// How many initialized instances a plugin policy keeps between calls.
const WARM_INSTANCES: usize = 4;
/// Instance slots in a runtime's pool: room for [`MAX_PLUGIN_POLICIES`] policies with their
/// warm instances, plus calls in flight.
const POOL_INSTANCES: u32 = 256;
/// The most plugin policies one policy set may hold.
pub(crate) const MAX_PLUGIN_POLICIES: usize = 48;
/// Epoch tick.
const TICK: StdDuration = StdDuration::from_millis(1);
/// `init` and instantiation get this many times the per-call deadline (at least 100 ms).
const INIT_DEADLINE_FACTOR: u64 = 20;
/// Log lines a call may leave in the decision, and their length.
const MAX_LOG_LINES: usize = 8;
const MAX_LOG_BYTES: usize = 1024;
/// The longest reason and params a plugin may return.
const MAX_OUTPUT_BYTES: usize = 64 << 10;

/// The wasmtime engine shared by the plugin policies of one [`crate::Engine`], with its epoch
/// ticker and component cache.
pub(crate) struct Runtime {
    engine: wasmtime::Engine,
    linker: Linker<HostState>,
    cache: Option<OpenCache>,
    /// Why the cache, or an entry of it, was not used (for the caller's log).
    warnings: Mutex<Vec<String>>,
    /// Components compiled during this load, by content hash (one component may serve several
    /// policies with different `config`).
    compiled: Mutex<HashMap<String, Component>>,
    _ticker: Ticker,
}

struct Ticker {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("cache_dir", &self.cache.as_ref().map(|c| &c.dir))
            .finish()
    }
}

/// The default component cache: `$KEEL_PLUGIN_CACHE`, else `$XDG_CACHE_HOME/keel/plugins`,
/// else `$HOME/.cache/keel/plugins`, with its key beside it.
pub(crate) fn default_cache() -> Option<PluginCache> {
    if let Some(d) = std::env::var_os("KEEL_PLUGIN_CACHE") {
        return (!d.is_empty()).then(|| PluginCache::new(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Some(PluginCache::new(PathBuf::from(d).join("keel/plugins")));
    }
    std::env::var_os("HOME")
        .filter(|d| !d.is_empty())
        .map(|h| PluginCache::new(PathBuf::from(h).join(".cache/keel/plugins")))
}

/// Where compiled plugin components are cached, and the file holding the key that
/// authenticates the entries.
///
/// A cache entry is native code that wasmtime loads without checking it, so the cache trusts
/// only what the running user wrote:
/// * the directory is created `0700` if missing; one that is a symbolic link, not owned by
///   the running user, or writable by group or others is not used (plugins are compiled at
///   every load, and the engine says why in [`Engine::plugin_warnings`](crate::Engine::plugin_warnings));
/// * the key file holds 32 random bytes; it is created `0600` if missing, and one that is a
///   symbolic link, not owned by the running user, readable or writable by group or others,
///   or of another size makes the cache unused too;
/// * an entry is opened without following symbolic links, must be a regular file owned by
///   the running user and not writable by group or others, and must carry a valid
///   HMAC-SHA256 of its file name and payload under the key. An entry that fails a check is
///   rebuilt, never loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginCache {
    dir: PathBuf,
    key_file: PathBuf,
}

impl PluginCache {
    /// A cache in `dir`, with its key in `<dir>.key` beside the directory (for
    /// `~/.cache/keel/plugins`, `~/.cache/keel/plugins.key`).
    pub fn new(dir: impl Into<PathBuf>) -> PluginCache {
        let dir: PathBuf = dir.into();
        let key_file = match dir.file_name() {
            Some(name) => {
                let mut name = name.to_os_string();
                name.push(".key");
                dir.with_file_name(name)
            }
            None => dir.join(".keel-plugin-cache.key"),
        };
        PluginCache { dir, key_file }
    }

    /// Keeps the key in `key_file` instead (created `0600` if missing, its directory `0700`).
    pub fn with_key_file(mut self, key_file: impl Into<PathBuf>) -> PluginCache {
        self.key_file = key_file.into();
        self
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The key file.
    pub fn key_file(&self) -> &Path {
        &self.key_file
    }
}

impl Runtime {
    /// A runtime whose compiled components are cached in `cache` (none: compile every
    /// load). A cache that fails its checks is not used: the reason is in
    /// [`Runtime::warnings`].
    pub(crate) fn new(cache: Option<PluginCache>) -> Result<Runtime, String> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.wasm_component_model(true);
        // Plugins are small: keep per-instance reservations small, and take instances from a
        // pool of preallocated slots (copy-on-write memory images, no mmap per instance), so
        // that a new instance costs microseconds.
        let max_memory = usize::try_from(MAX_PLUGIN_MEMORY_MIB).unwrap_or(64) << 20;
        config.memory_reservation(max_memory as u64);
        config.memory_guard_size(64 << 10);
        config.memory_reservation_for_growth(0);
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(POOL_INSTANCES)
            .total_core_instances(POOL_INSTANCES * 4)
            .total_memories(POOL_INSTANCES)
            .total_tables(POOL_INSTANCES * 4)
            .total_stacks(0)
            .max_memories_per_component(2)
            .max_tables_per_component(8)
            .max_core_instances_per_component(16)
            .max_memory_size(max_memory)
            .max_unused_warm_slots(64)
            // Reset a reused slot's first pages with memset instead of madvise.
            .linear_memory_keep_resident(256 << 10)
            .table_keep_resident(64 << 10);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = wasmtime::Engine::new(&config).map_err(|e| format!("wasmtime: {e}"))?;
        let mut linker = Linker::new(&engine);
        host::add_to_linker(&mut linker).map_err(|e| format!("wasmtime linker: {e}"))?;
        wit::keel::policy::types::add_to_linker::<HostState, HasSelf<HostState>>(
            &mut linker,
            |s| s,
        )
        .map_err(|e| format!("wasmtime linker: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let handle = {
            let engine = engine.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("keel-plugin-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(TICK);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| format!("cannot start the plugin epoch thread: {e}"))?
        };
        let mut warnings = Vec::new();
        let cache = cache.and_then(|c| match open_cache(&c) {
            Ok(open) => Some(open),
            Err(why) => {
                warnings.push(format!(
                    "plugin cache `{}` not used: {why}; plugins are compiled at every load",
                    c.dir.display()
                ));
                None
            }
        });
        Ok(Runtime {
            engine,
            linker,
            cache,
            warnings: Mutex::new(warnings),
            compiled: Mutex::new(HashMap::new()),
            _ticker: Ticker {
                stop,
                handle: Some(handle),
            },
        })
    }

    /// Why the cache, or entries of it, were not used.
    pub(crate) fn warnings(&self) -> Vec<String> {
        lock(&self.warnings).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn error_chain(e: &wasmtime::Error) -> String {
    let mut s = e.to_string();
    for cause in e.chain().skip(1) {
        let _ = write!(s, ": {cause}");
    }
    s
}

/// Why a plugin failed to load; the caller adds the position.
pub(crate) struct LoadFailure {
    pub message: String,
    pub help: Option<String>,
    /// Whether the problem is in `config` (`init` refused it) rather than the component.
    pub in_config: bool,
}

impl LoadFailure {
    fn new(message: impl Into<String>, help: Option<&str>) -> LoadFailure {
        LoadFailure {
            message: message.into(),
            help: help.map(str::to_string),
            in_config: false,
        }
    }
}

/// Checks the component's interface version and imports, with messages that name them: the
/// version of an exported `keel:policy/plugin` first (a plugin for another major version
/// imports that version's host too), then every import, then that the export is there.
fn check_interface(rt: &Runtime, component: &Component) -> Result<(), LoadFailure> {
    let ty = component.component_type();
    let mut found = false;
    for (name, _) in ty.exports(&rt.engine) {
        let Some(rest) = name.strip_prefix(PACKAGE) else {
            continue;
        };
        found = true;
        let version = rest.split_once('@').map_or("", |(_, v)| v);
        if version.split('.').next() != Some(MAJOR) {
            let built = if version.is_empty() {
                "an unversioned keel:policy".to_string()
            } else {
                format!("keel:policy@{version}")
            };
            return Err(LoadFailure::new(
                format!("the plugin is built for {built}; this Keel hosts {PLUGIN_INTERFACE}"),
                Some("rebuild the plugin with a keel-plugin SDK for keel:policy@1.x, or upgrade Keel"),
            ));
        }
    }
    for (name, _) in ty.imports(&rt.engine) {
        let allowed = name
            .strip_prefix(PACKAGE)
            .and_then(|rest| rest.split_once('@'))
            .is_some_and(|(iface, version)| {
                matches!(iface, "host" | "types") && version.split('.').next() == Some(MAJOR)
            });
        if !allowed {
            return Err(LoadFailure::new(
                format!(
                    "the plugin imports `{name}`, which Keel does not grant: a plugin may import only keel:policy/host@1.x (no filesystem, network, clock or randomness)"
                ),
                Some("build for wasm32-unknown-unknown and wrap with wit-component (cargo run -p xtask -- build-plugins), not for wasm32-wasip2"),
            ));
        }
    }
    if !found {
        return Err(LoadFailure::new(
            format!("the component does not export `keel:policy/plugin` ({PLUGIN_INTERFACE})"),
            Some("build it with the keel-plugin SDK (`keel_plugin::export!`)"),
        ));
    }
    Ok(())
}

/// The largest plugin component Keel reads (a policy's plugin is a few hundred KB to a few MB).
const MAX_COMPONENT_BYTES: usize = 128 << 20;

/// Loads the plugin of a policy: reads and hashes the component, checks `sha256`, compiles
/// (through the cache), checks the interface, prepares instantiation and runs `init` once.
pub(crate) fn load(rt: &Arc<Runtime>, spec: &PluginSpec) -> Result<Plugin, LoadFailure> {
    let bytes = crate::policy::read_regular(&spec.path, MAX_COMPONENT_BYTES).map_err(|e| {
        LoadFailure::new(
            format!("cannot read plugin `{}`: {e}", spec.path.display()),
            Some("build the plugins first: cargo run -p xtask -- build-plugins"),
        )
    })?;
    if bytes.len() > MAX_COMPONENT_BYTES {
        return Err(LoadFailure::new(
            format!(
                "plugin `{}` is larger than {MAX_COMPONENT_BYTES} bytes",
                spec.path.display()
            ),
            None,
        ));
    }
    let sha = hex::encode(Sha256::digest(&bytes));
    if let Some((want, _)) = &spec.sha256 {
        if *want != sha {
            return Err(LoadFailure::new(
                format!(
                    "plugin `{}` has SHA-256 {sha}, but the policy expects {want}",
                    spec.path.display()
                ),
                Some(
                    "the file changed since the policy was written; check it, then update `sha256`",
                ),
            ));
        }
    }
    let (component, cache) = rt
        .component(&bytes, &sha)
        .map_err(|m| LoadFailure::new(m, None))?;
    check_interface(rt, &component)?;
    let pre = rt.linker.instantiate_pre(&component).map_err(|e| {
        LoadFailure::new(format!("cannot link the plugin: {}", error_chain(&e)), None)
    })?;
    let pre = wit::PolicyPre::new(pre).map_err(|e| {
        LoadFailure::new(
            format!(
                "the plugin does not implement {PLUGIN_INTERFACE}: {}",
                error_chain(&e)
            ),
            None,
        )
    })?;
    let max_memory = usize::try_from(spec.memory_mib)
        .unwrap_or(usize::MAX >> 20)
        .saturating_mul(1 << 20);
    let plugin = Plugin {
        engine: rt.engine.clone(),
        pre,
        config: spec.config.to_string(),
        deadline_ms: spec.deadline_ms.max(1),
        deadline_ticks: spec.deadline_ms.max(1).saturating_add(1),
        max_memory,
        warm: Mutex::new(Vec::new()),
        cache,
    };
    // Run `init` now: a config the plugin refuses is a load error, not a decision-time one.
    match plugin.instantiate() {
        Ok(w) => plugin.give_back(w),
        Err(InitError::Init(m)) => {
            return Err(LoadFailure {
                message: format!("the plugin's init refused its config: {m}"),
                help: None,
                in_config: true,
            })
        }
        Err(InitError::Fault(f)) => {
            return Err(LoadFailure::new(
                format!("the plugin failed to start: {f}"),
                None,
            ))
        }
    }
    Ok(plugin)
}
