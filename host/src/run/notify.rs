//! The service manager's readiness protocol (`sd_notify`): `READY=1` once the listener is bound
//! and every source task started, `WATCHDOG=1` from the run loop's tick while systemd asks for
//! it (`WatchdogSec=`), `STOPPING=1` when a shutdown begins.
//!
//! The protocol is one datagram of `KEY=VALUE` lines to the `AF_UNIX` socket named by
//! `$NOTIFY_SOCKET` (a path, or an abstract name when it starts with `@`); without the variable
//! nothing is sent. It is a few lines over std's `UnixDatagram`, so no crate is added for it.

use std::time::Duration;

/// Why a notification could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// `$NOTIFY_SOCKET` names no usable socket address.
    #[error("NOTIFY_SOCKET `{0}` is not a socket path or abstract name")]
    Address(String),
    /// The datagram could not be sent.
    #[error("cannot notify the service manager at `{addr}`: {source}")]
    Send {
        /// `$NOTIFY_SOCKET`.
        addr: String,
        /// The socket error.
        source: std::io::Error,
    },
}

/// Sends `state` (newline-separated `KEY=VALUE` lines, e.g. `READY=1`) to `$NOTIFY_SOCKET`.
/// `Ok(false)` when the variable is unset or empty (not run by a service manager that asked).
pub fn notify(state: &str) -> Result<bool, NotifyError> {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(addr) if !addr.is_empty() => send(&addr.to_string_lossy(), state).map(|()| true),
        _ => Ok(false),
    }
}

/// [`notify`], with a failure written to standard error: readiness is best effort, a host that
/// cannot report it still runs (systemd then times the start out, which names the cause).
pub fn notify_or_warn(state: &str) {
    if let Err(e) = notify(state) {
        eprintln!("warning: {}", keel_engine::escape(&e.to_string()));
    }
}

/// How often to send `WATCHDOG=1`: half of `$WATCHDOG_USEC` when it is set for this process
/// (`$WATCHDOG_PID` absent or ours), as sd_watchdog_enabled(3) advises; `None` otherwise.
pub fn watchdog_interval() -> Option<Duration> {
    if let Some(pid) = std::env::var_os("WATCHDOG_PID") {
        if pid.to_string_lossy().parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

#[cfg(unix)]
fn send(addr: &str, state: &str) -> Result<(), NotifyError> {
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let err = |source| NotifyError::Send {
        addr: addr.to_string(),
        source,
    };
    let sock = UnixDatagram::unbound().map_err(err)?;
    let to = if let Some(name) = addr.strip_prefix('@') {
        abstract_addr(name).ok_or_else(|| NotifyError::Address(addr.to_string()))?
    } else if addr.starts_with('/') {
        SocketAddr::from_pathname(addr).map_err(|_| NotifyError::Address(addr.to_string()))?
    } else {
        return Err(NotifyError::Address(addr.to_string()));
    };
    sock.send_to_addr(state.as_bytes(), &to).map_err(err)?;
    Ok(())
}

#[cfg(target_os = "linux")]
fn abstract_addr(name: &str) -> Option<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).ok()
}

#[cfg(all(unix, not(target_os = "linux")))]
fn abstract_addr(_: &str) -> Option<std::os::unix::net::SocketAddr> {
    None
}

#[cfg(not(unix))]
fn send(addr: &str, _: &str) -> Result<(), NotifyError> {
    Err(NotifyError::Address(addr.to_string()))
}

#[cfg(all(test, target_os = "linux"))]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn a_path_and_an_abstract_name_receive_the_datagram() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let rx = UnixDatagram::bind(&path).unwrap();
        send(&path.display().to_string(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("keel-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        send(&format!("@{name}"), "STOPPING=1").unwrap();
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }

    #[test]
    fn a_relative_address_is_refused() {
        assert!(matches!(
            send("notify.sock", "READY=1"),
            Err(NotifyError::Address(_))
        ));
    }
}
