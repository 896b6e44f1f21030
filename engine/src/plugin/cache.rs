//! The on-disk cache of compiled components: entries keyed by the component's hash and
//! wasmtime's version and configuration, authenticated with an HMAC-SHA256 under a key only
//! the running user can read, and checked for ownership and modes before wasmtime sees them.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use sha2::Sha256;
use wasmtime::component::Component;

use super::{error_chain, lock, PluginCache, Runtime};

/// A cache directory that passed its checks, with its key.
pub(super) struct OpenCache {
    pub(super) dir: PathBuf,
    key: [u8; KEY_BYTES],
}

const KEY_BYTES: usize = 32;

impl Runtime {
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
pub(super) fn open_cache(c: &PluginCache) -> Result<OpenCache, String> {
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
