//! One host per state database: `keel run` holds an exclusive lock on `<state>.lock` for its
//! whole life. The operating system releases it when the process ends, however it ends
//! (SIGKILL included), so a crashed host never blocks its successor. A second host on the
//! same state is refused, naming the holder written in the file (pid, hostname, start time).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it.
    #[error(
        "the state database {state} is in use by another keel run ({holder}); one host per state database: stop that one first, or give this one its own `state`"
    )]
    Held {
        /// The state database.
        state: String,
        /// Who holds it, as the holder wrote it (escaped).
        holder: String,
    },
    /// The lock file could not be created, read or written.
    #[error("cannot lock the state database: {path}: {source}")]
    Io {
        /// The lock file.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
}

/// The lock, held until it is dropped (or the process ends).
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

/// The lock file of the state database `state`: `<state>.lock`.
pub fn lock_path(state: &Path) -> PathBuf {
    let mut s = state.as_os_str().to_os_string();
    s.push(".lock");
    PathBuf::from(s)
}

/// `state` with every symbolic link and `.`/`..` resolved: the file itself when it exists,
/// else its directory's canonical path joined with its name; `state` as given when neither
/// can be resolved (the open that follows reports why).
fn canonical(state: &Path) -> PathBuf {
    if let Ok(p) = std::fs::canonicalize(state) {
        return p;
    }
    let dir = match state.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match (std::fs::canonicalize(dir), state.file_name()) {
        (Ok(d), Some(name)) => d.join(name),
        _ => state.to_path_buf(),
    }
}

/// This machine's name, for the holder line (`unknown` when it cannot be read).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Takes the exclusive lock of the state database `state` (creating its directory 0700 and the
/// lock file 0600), and writes this process's pid, hostname and start time into it. Refused
/// with [`LockError::Held`] when another process holds it; never waits.
pub fn acquire(state: &Path) -> Result<StateLock, LockError> {
    let io_at = |path: &Path, source| LockError::Io {
        path: keel_engine::escape(&path.display().to_string()),
        source,
    };
    if let Some(dir) = state.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            let mut b = std::fs::DirBuilder::new();
            b.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
            b.create(dir).map_err(|e| io_at(dir, e))?;
        }
    }
    // The lock belongs to the database, not to how its path was spelled: two hosts given
    // `a/../state.db` and a symbolic link to it lock the same file.
    let path = lock_path(&canonical(state));
    let io = |source| io_at(&path, source);
    let mut opts = OpenOptions::new();
    // Not truncated before the lock is ours: the holder's line stays readable.
    opts.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut file = opts.open(&path).map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            let holder = text.trim();
            return Err(LockError::Held {
                state: keel_engine::escape(&state.display().to_string()),
                holder: if holder.is_empty() {
                    "holder unknown".into()
                } else {
                    keel_engine::escape(holder)
                },
            });
        }
        Err(TryLockError::Error(e)) => return Err(io(e)),
    }
    let line = format!(
        "pid {} on {}, started {}\n",
        std::process::id(),
        hostname(),
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    file.set_len(0)
        .and_then(|()| file.seek(SeekFrom::Start(0)))
        .and_then(|_| file.write_all(line.as_bytes()))
        .and_then(|()| file.sync_all())
        .map_err(io)?;
    Ok(StateLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_state_is_refused_naming_the_holder_and_freed_on_drop(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let state = dir.path().join("sub/state.db");
        let first = acquire(&state)?;
        assert_eq!(lock_path(&state), dir.path().join("sub/state.db.lock"));
        assert!(lock_path(&state).exists());
        let second = acquire(&state);
        let me = format!("pid {} on ", std::process::id());
        assert!(
            matches!(&second, Err(LockError::Held { holder, .. })
                if holder.starts_with(&me) && holder.contains(", started 20")),
            "{second:?}"
        );
        drop(first);
        drop(acquire(&state)?);
        Ok(())
    }

    #[cfg(unix)]
    #[test]
    fn another_spelling_of_the_same_state_is_the_same_lock(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let state = dir.path().join("sub/state.db");
        let held = acquire(&state)?;
        // The database not created yet: a `..` spelling and a symbolic link to its directory.
        std::os::unix::fs::symlink(dir.path().join("sub"), dir.path().join("link"))?;
        for other in [
            dir.path().join("sub/../sub/state.db"),
            dir.path().join("link/state.db"),
        ] {
            let r = acquire(&other);
            assert!(matches!(r, Err(LockError::Held { .. })), "{other:?}: {r:?}");
        }
        // The database exists: a symbolic link to the file itself.
        std::fs::write(&state, b"")?;
        std::os::unix::fs::symlink(&state, dir.path().join("alias.db"))?;
        let r = acquire(&dir.path().join("alias.db"));
        assert!(matches!(r, Err(LockError::Held { .. })), "{r:?}");
        drop(held);
        drop(acquire(&dir.path().join("alias.db"))?);
        Ok(())
    }
}
