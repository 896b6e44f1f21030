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
//!   the epoch every millisecond) and a memory limit (a [`ResourceLimiter`]); a deadline
//!   interrupt is retried once on a fresh instance before it counts as a fault (the deadline
//!   is wall time, and a loaded machine can interrupt a legitimate call).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{
    Config, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store, Trap,
};

use crate::event::{Event, Timestamp};
use crate::fields::{self, FieldType};
use crate::history::{self, HistoryData, Val};
use crate::policy::{PluginSpec, MAX_PLUGIN_MEMORY_MIB};

mod wit {
    #![allow(missing_docs)]
    wasmtime::component::bindgen!({
        path: "../wasm-plugins/wit",
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

/// A cache directory that passed its checks, with its key.
struct OpenCache {
    dir: PathBuf,
    key: [u8; KEY_BYTES],
}

const KEY_BYTES: usize = 32;

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
        wit::keel::policy::host::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(|e| format!("wasmtime linker: {e}"))?;
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

    /// The cache key of a component: its SHA-256, wasmtime's version and a hash of the
    /// compilation settings.
    fn cache_key(&self, sha: &str) -> String {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        format!(
            "{sha}-wasmtime{}-{:016x}.cwasm",
            WASMTIME_VERSION,
            h.finish()
        )
    }

    /// Why the cache, or entries of it, were not used.
    pub(crate) fn warnings(&self) -> Vec<String> {
        lock(&self.warnings).clone()
    }

    /// Compiles `bytes` (content hash `sha`), through the on-disk cache.
    pub(crate) fn component(
        &self,
        bytes: &[u8],
        sha: &str,
    ) -> Result<(Component, CacheUse), String> {
        if let Some(c) = lock(&self.compiled).get(sha) {
            return Ok((c.clone(), CacheUse::Memory));
        }
        let name = self.cache_key(sha);
        let mut used = CacheUse::Compiled;
        let mut component = None;
        if let Some(cache) = &self.cache {
            match read_cache_entry(&self.engine, cache, &name) {
                CacheRead::Hit(c) => {
                    component = Some(c);
                    used = CacheUse::Disk;
                }
                CacheRead::Miss => {}
                CacheRead::Corrupt => {
                    let _ = std::fs::remove_file(cache.dir.join(&name));
                    used = CacheUse::Rebuilt;
                }
                CacheRead::Refused(why) => {
                    // Removes a symbolic link itself, never its target.
                    let _ = std::fs::remove_file(cache.dir.join(&name));
                    lock(&self.warnings).push(format!(
                        "plugin cache entry `{}` refused ({why}); rebuilt",
                        cache.dir.join(&name).display()
                    ));
                    used = CacheUse::Rebuilt;
                }
            }
        }
        let component = match component {
            Some(c) => c,
            None => {
                let serialized = self
                    .engine
                    .precompile_component(bytes)
                    .map_err(|e| format!("not a valid component: {}", error_chain(&e)))?;
                if let Some(cache) = &self.cache {
                    // A cache that cannot be written only costs a compile next time.
                    let _ = write_cache_entry(cache, &name, &serialized);
                }
                deserialize_checked(&self.engine, &serialized)
                    .map_err(|e| format!("cannot load the compiled component: {e}"))?
            }
        };
        lock(&self.compiled).insert(sha.to_string(), component.clone());
        Ok((component, used))
    }
}

/// The wasmtime version in cache keys.
const WASMTIME_VERSION: &str = "48.0.8";
const CACHE_MAGIC: &[u8; 8] = b"KEELCWM2";

/// Where a component came from at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CacheUse {
    /// Compiled earlier in the same load.
    Memory,
    /// Read from the disk cache.
    Disk,
    /// Compiled (no cache entry, or no usable cache).
    Compiled,
    /// Compiled again: the cache entry was corrupt or refused.
    Rebuilt,
}

enum CacheRead {
    Hit(Component),
    Miss,
    /// Ours and authentic, but wasmtime refused it (another build of wasmtime).
    Corrupt,
    /// Not trusted: a symbolic link, someone else's, writable by others, or not authentic.
    Refused(String),
}

type HmacSha256 = hmac::Hmac<Sha256>;

/// The MAC of an entry: it covers the entry's name (the component's hash and wasmtime's
/// version), so an authentic entry of one component cannot stand in for another.
fn entry_mac(key: &[u8; KEY_BYTES], name: &str, payload: &[u8]) -> HmacSha256 {
    use hmac::digest::KeyInit;
    use hmac::Mac;
    // HMAC pads a key shorter than the hash's block with zeros: the same MAC as the 32-byte
    // key, without a fallible constructor.
    let mut block = hmac::digest::Key::<HmacSha256>::default();
    block[..KEY_BYTES].copy_from_slice(key);
    let mut mac = <HmacSha256 as KeyInit>::new(&block);
    mac.update(name.as_bytes());
    mac.update(&[0]);
    mac.update(payload);
    mac
}

fn read_cache_entry(engine: &wasmtime::Engine, cache: &OpenCache, name: &str) -> CacheRead {
    use hmac::Mac;
    let bytes = match secure::read_entry(&cache.dir.join(name)) {
        Ok(Some(b)) => b,
        Ok(None) => return CacheRead::Miss,
        Err(why) => return CacheRead::Refused(why),
    };
    let Some(rest) = bytes
        .strip_prefix(CACHE_MAGIC.as_slice())
        .filter(|rest| rest.len() >= 32)
    else {
        return CacheRead::Refused("not a Keel cache entry of this version".into());
    };
    let (tag, payload) = rest.split_at(32);
    if entry_mac(&cache.key, name, payload)
        .verify_slice(tag)
        .is_err()
    {
        return CacheRead::Refused("its MAC does not match this cache's key".into());
    }
    match deserialize_checked(engine, payload) {
        Ok(c) => CacheRead::Hit(c),
        Err(_) => CacheRead::Corrupt,
    }
}

fn write_cache_entry(cache: &OpenCache, name: &str, serialized: &[u8]) -> std::io::Result<()> {
    use hmac::Mac;
    let mut out = Vec::with_capacity(serialized.len() + 40);
    out.extend_from_slice(CACHE_MAGIC);
    out.extend_from_slice(
        &entry_mac(&cache.key, name, serialized)
            .finalize()
            .into_bytes(),
    );
    out.extend_from_slice(serialized);
    // Unique per process and write: loads on several threads may fill the same entry.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, Ordering::Relaxed);
    let path = cache.dir.join(name);
    let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
    if let Err(e) = secure::write_new(&tmp, &out) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path)
}

/// Checks (and creates) the cache directory and reads (or creates) its key.
fn open_cache(c: &PluginCache) -> Result<OpenCache, String> {
    secure::check_dir(&c.dir)?;
    let key = secure::key(&c.key_file)?;
    Ok(OpenCache {
        dir: c.dir.clone(),
        key,
    })
}

/// The file checks of the cache: ownership, modes, no symbolic links.
#[cfg(unix)]
mod secure {
    use std::fs::{DirBuilder, File, Metadata, OpenOptions};
    use std::io::{ErrorKind, Read, Write};
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
    use std::path::Path;

    use super::KEY_BYTES;

    const NOFOLLOW: i32 = nix::libc::O_NOFOLLOW;

    fn uid() -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    /// Why `m` (of `what`) is not trusted: not ours, or with a mode bit of `forbidden`.
    fn untrusted(m: &Metadata, what: &str, forbidden: u32) -> Option<String> {
        if m.uid() != uid() {
            return Some(format!(
                "{what} is owned by uid {}, not by this user (uid {})",
                m.uid(),
                uid()
            ));
        }
        if m.mode() & forbidden != 0 {
            return Some(format!(
                "{what} has mode {:04o}; it must not be {} by group or others",
                m.mode() & 0o7777,
                if forbidden & 0o044 != 0 {
                    "readable or writable"
                } else {
                    "writable"
                }
            ));
        }
        None
    }

    /// Creates `dir` (`0700`) if missing; refuses a symbolic link, someone else's directory,
    /// or one writable by group or others.
    pub(super) fn check_dir(dir: &Path) -> Result<(), String> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot create it: {e}"))?;
        let m = std::fs::symlink_metadata(dir).map_err(|e| format!("cannot stat it: {e}"))?;
        if m.file_type().is_symlink() {
            return Err("it is a symbolic link (name the real directory)".into());
        }
        if !m.is_dir() {
            return Err("it is not a directory".into());
        }
        match untrusted(&m, "the directory", 0o022) {
            Some(why) => Err(why),
            None => Ok(()),
        }
    }

    /// Opens `path` for reading without following a symbolic link.
    fn open_nofollow(path: &Path) -> std::io::Result<File> {
        OpenOptions::new()
            .read(true)
            .custom_flags(NOFOLLOW)
            .open(path)
    }

    fn is_symlink_error(e: &std::io::Error) -> bool {
        e.raw_os_error() == Some(nix::libc::ELOOP)
    }

    /// The bytes of a cache entry (`None`: there is none), or why it is not trusted.
    pub(super) fn read_entry(path: &Path) -> Result<Option<Vec<u8>>, String> {
        let mut f = match open_nofollow(path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) if is_symlink_error(&e) => return Err("it is a symbolic link".into()),
            Err(e) => return Err(format!("cannot open it: {e}")),
        };
        let m = f.metadata().map_err(|e| format!("cannot stat it: {e}"))?;
        if !m.is_file() {
            return Err("it is not a regular file".into());
        }
        if let Some(why) = untrusted(&m, "it", 0o022) {
            return Err(why);
        }
        let mut bytes = Vec::with_capacity(usize::try_from(m.len()).unwrap_or(0));
        f.read_to_end(&mut bytes)
            .map_err(|e| format!("cannot read it: {e}"))?;
        Ok(Some(bytes))
    }

    /// Writes a new file `path` (`0600`, never through a symbolic link).
    pub(super) fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(NOFOLLOW)
            .open(path)?;
        f.write_all(bytes)?;
        f.sync_all()
    }

    /// The cache's key: read from `path`, or created there (`0600`, its directory `0700`).
    pub(super) fn key(path: &Path) -> Result<[u8; KEY_BYTES], String> {
        let shown = path.display();
        let mut f = match open_nofollow(path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                create_key(path).map_err(|e| format!("cannot create the key `{shown}`: {e}"))?;
                open_nofollow(path).map_err(|e| format!("cannot open the key `{shown}`: {e}"))?
            }
            Err(e) if is_symlink_error(&e) => {
                return Err(format!("the key `{shown}` is a symbolic link"))
            }
            Err(e) => return Err(format!("cannot open the key `{shown}`: {e}")),
        };
        let m = f
            .metadata()
            .map_err(|e| format!("cannot stat the key `{shown}`: {e}"))?;
        if !m.is_file() {
            return Err(format!("the key `{shown}` is not a regular file"));
        }
        if let Some(why) = untrusted(&m, &format!("the key `{shown}`"), 0o077) {
            return Err(why);
        }
        let mut bytes = Vec::with_capacity(KEY_BYTES);
        f.read_to_end(&mut bytes)
            .map_err(|e| format!("cannot read the key `{shown}`: {e}"))?;
        <[u8; KEY_BYTES]>::try_from(bytes.as_slice()).map_err(|_| {
            format!(
                "the key `{shown}` holds {} bytes, not {KEY_BYTES}",
                bytes.len()
            )
        })
    }

    /// Creates the key file whole: written to a temporary file, then linked into place (a
    /// process loading at the same time sees either no key or the whole key, and the first
    /// link wins).
    fn create_key(path: &Path) -> std::io::Result<()> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)?;
        }
        let mut key = [0u8; KEY_BYTES];
        getrandom::fill(&mut key).map_err(|e| std::io::Error::other(e.to_string()))?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let written = write_new(&tmp, &key).and_then(|()| std::fs::hard_link(&tmp, path));
        let _ = std::fs::remove_file(&tmp);
        match written {
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
            r => r,
        }
    }
}

/// Without Unix ownership and modes the cache cannot be checked: it is not used.
#[cfg(not(unix))]
mod secure {
    use std::path::Path;

    use super::KEY_BYTES;

    const UNSUPPORTED: &str = "the plugin cache needs Unix file ownership and modes";

    pub(super) fn check_dir(_: &Path) -> Result<(), String> {
        Err(UNSUPPORTED.into())
    }

    pub(super) fn read_entry(_: &Path) -> Result<Option<Vec<u8>>, String> {
        Err(UNSUPPORTED.into())
    }

    pub(super) fn write_new(_: &Path, _: &[u8]) -> std::io::Result<()> {
        Err(std::io::Error::other(UNSUPPORTED))
    }

    pub(super) fn key(_: &Path) -> Result<[u8; KEY_BYTES], String> {
        Err(UNSUPPORTED.into())
    }
}

/// Loads a precompiled component that this process compiled, or whose cache entry passed
/// the cache's checks (callers check it first).
#[allow(unsafe_code)]
fn deserialize_checked(engine: &wasmtime::Engine, payload: &[u8]) -> Result<Component, String> {
    // SAFETY: wasmtime requires that the bytes come from `Engine::precompile_component` of a
    // compatible engine and were not tampered with. They either were produced by this process
    // a moment ago, or were read from a cache directory and entry owned by this user and
    // writable by no one else, opened without following symbolic links, and authenticated
    // with an HMAC-SHA256 (over the entry's name and payload) under a key only this user can
    // read; wasmtime itself checks the version and configuration in the header and refuses a
    // mismatch.
    unsafe { Component::deserialize(engine, payload) }.map_err(|e| error_chain(&e))
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

/// What a plugin's store holds: limits, the history to query and the call's log.
pub(crate) struct HostState {
    limits: Limits,
    history: Option<Arc<HistoryData>>,
    event_time: Timestamp,
    logs: Vec<String>,
    warned_no_history: bool,
}

struct Limits {
    max_memory: usize,
    oom: bool,
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

/// A plugin policy, loaded: ready to instantiate, with warm instances.
pub(crate) struct Plugin {
    engine: wasmtime::Engine,
    pre: wit::PolicyPre<HostState>,
    config: String,
    /// The per-call deadline, milliseconds.
    deadline_ms: u64,
    /// The same in epoch ticks: one more than the milliseconds, since the current tick may
    /// be about to end when the call starts.
    deadline_ticks: u64,
    max_memory: usize,
    warm: Mutex<Vec<Warm>>,
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

struct Warm {
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

/// Loads the plugin of a policy: reads and hashes the component, checks `sha256`, compiles
/// (through the cache), checks the interface, prepares instantiation and runs `init` once.
pub(crate) fn load(rt: &Arc<Runtime>, spec: &PluginSpec) -> Result<Plugin, LoadFailure> {
    let bytes = std::fs::read(&spec.path).map_err(|e| {
        LoadFailure::new(
            format!("cannot read plugin `{}`: {e}", spec.path.display()),
            Some("build the plugins first: cargo run -p xtask -- build-plugins"),
        )
    })?;
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

enum InitError {
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
    fn instantiate(&self) -> Result<Warm, InitError> {
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

    fn give_back(&self, mut w: Warm) {
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
