//! The decision log sent to journald over its native protocol (`log.journald` in
//! `keel.yaml`): one datagram per line on journald's socket, with the line as `MESSAGE` and
//! its `level` and `type` as fields journalctl filters on (`PRIORITY`, `KEEL_TYPE`, ...), so
//! `journalctl -u keel KEEL_TYPE=decision PRIORITY=3` finds the failed steps.
//!
//! The protocol (systemd's `sd_journal_sendv`): `NAME=value\n` for each field, or, when the
//! value holds a newline, `NAME\n`, its length as a little-endian u64, the value, `\n`. Field
//! names are uppercase letters, digits and `_`. A line that journald cannot take (its socket
//! gone while journald restarts, or a datagram over the socket's size limit) goes to standard
//! error instead: nothing is lost.

use std::io::Write;
#[cfg(unix)]
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

/// journald's socket for native messages.
pub const DEFAULT_SOCKET: &str = "/run/systemd/journal/socket";

/// The `SYSLOG_IDENTIFIER` of every entry.
const IDENTIFIER: &str = "keel";

/// Top-level string keys of a line copied into fields of their own (`event_id` →
/// `KEEL_EVENT_ID`), so that journalctl can select on them.
const COPIED: &[&str] = &[
    "type",
    "level",
    "event_id",
    "decision_id",
    "action",
    "policy",
    "step",
    "source",
];

/// The syslog priority of a decision-log level.
fn priority(level: &str) -> &'static str {
    match level {
        "error" => "3",
        "warn" => "4",
        "debug" => "7",
        _ => "6",
    }
}

/// Appends one field in the native protocol's form.
fn field(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    if value.contains('\n') {
        out.push(b'\n');
        out.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        out.push(b'=');
    }
    out.extend_from_slice(value.as_bytes());
    out.push(b'\n');
}

/// The datagram for one decision-log line (JSON; a line that is not JSON is sent as it is,
/// with the default priority).
pub fn encode(line: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(line.len() + 128);
    field(&mut out, "MESSAGE", line);
    field(&mut out, "SYSLOG_IDENTIFIER", IDENTIFIER);
    let parsed: Option<serde_json::Map<String, serde_json::Value>> =
        serde_json::from_str(line).ok();
    let level = parsed
        .as_ref()
        .and_then(|m| m.get("level"))
        .and_then(serde_json::Value::as_str)
        .unwrap_or("info");
    field(&mut out, "PRIORITY", priority(level));
    if let Some(m) = &parsed {
        for key in COPIED {
            // A decision line's action and policy are inside its `decision`.
            let v = m.get(*key).or_else(|| {
                matches!(*key, "action" | "policy")
                    .then(|| m.get("decision").and_then(|d| d.get(*key)))
                    .flatten()
            });
            if let Some(v) = v.and_then(serde_json::Value::as_str) {
                field(&mut out, &format!("KEEL_{}", key.to_ascii_uppercase()), v);
            }
        }
    }
    out
}

/// A writer that sends each complete line to journald.
pub struct Journald {
    #[cfg(unix)]
    socket: UnixDatagram,
    path: PathBuf,
    /// Bytes of a line not yet ended.
    pending: Vec<u8>,
}

impl Journald {
    /// A writer to the journald socket at `path` (checked now: a missing socket is a start
    /// error, not a silent loss later).
    pub fn connect(path: &Path) -> std::io::Result<Journald> {
        #[cfg(unix)]
        {
            let socket = UnixDatagram::unbound()?;
            socket.connect(path)?;
            Ok(Journald {
                socket,
                path: path.to_path_buf(),
                pending: Vec::new(),
            })
        }
        #[cfg(not(unix))]
        {
            let _ = path;
            Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "journald needs a Unix system",
            ))
        }
    }

    fn send(&mut self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let datagram = encode(&text);
        #[cfg(unix)]
        {
            // journald may have restarted (a new socket at the same path): reconnect once.
            let sent = self.socket.send(&datagram).or_else(|_| {
                self.socket.connect(&self.path)?;
                self.socket.send(&datagram)
            });
            if sent.is_ok() {
                return;
            }
        }
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(line);
        let _ = err.write_all(b"\n");
    }
}

impl Write for Journald {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut rest = buf;
        while let Some(i) = rest.iter().position(|b| *b == b'\n') {
            let (head, tail) = rest.split_at(i);
            if self.pending.is_empty() {
                self.send(head);
            } else {
                let mut line = std::mem::take(&mut self.pending);
                line.extend_from_slice(head);
                self.send(&line);
            }
            rest = &tail[1..];
        }
        self.pending.extend_from_slice(rest);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    /// Parses a datagram back into its fields (both forms).
    fn fields(mut d: &[u8]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        while !d.is_empty() {
            let nl = d.iter().position(|b| *b == b'\n').unwrap();
            let head = &d[..nl];
            if let Some(eq) = head.iter().position(|b| *b == b'=') {
                out.push((
                    String::from_utf8(head[..eq].to_vec()).unwrap(),
                    String::from_utf8(head[eq + 1..].to_vec()).unwrap(),
                ));
                d = &d[nl + 1..];
            } else {
                let name = String::from_utf8(head.to_vec()).unwrap();
                let len = u64::from_le_bytes(d[nl + 1..nl + 9].try_into().unwrap()) as usize;
                let value = &d[nl + 9..nl + 9 + len];
                assert_eq!(d[nl + 9 + len], b'\n');
                out.push((name, String::from_utf8(value.to_vec()).unwrap()));
                d = &d[nl + 10 + len..];
            }
        }
        out
    }

    fn get<'a>(f: &'a [(String, String)], k: &str) -> Option<&'a str> {
        f.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }

    #[test]
    fn a_decision_line_becomes_fields() {
        let line = r#"{"time":"2026-01-01T00:00:00Z","level":"error","type":"step","event_id":"e-1","action":"drain","step":"cordon","error":"x"}"#;
        let f = fields(&encode(line));
        assert_eq!(get(&f, "MESSAGE"), Some(line));
        assert_eq!(get(&f, "PRIORITY"), Some("3"));
        assert_eq!(get(&f, "SYSLOG_IDENTIFIER"), Some("keel"));
        assert_eq!(get(&f, "KEEL_TYPE"), Some("step"));
        assert_eq!(get(&f, "KEEL_EVENT_ID"), Some("e-1"));
        assert_eq!(get(&f, "KEEL_ACTION"), Some("drain"));
        assert_eq!(get(&f, "KEEL_STEP"), Some("cordon"));
        assert_eq!(get(&f, "KEEL_POLICY"), None);
        let decision = r#"{"type":"decision","decision":{"action":"drain","policy":"p"}}"#;
        let f = fields(&encode(decision));
        assert_eq!(get(&f, "KEEL_ACTION"), Some("drain"));
        assert_eq!(get(&f, "KEEL_POLICY"), Some("p"));
        for (level, p) in [("warn", "4"), ("info", "6"), ("debug", "7"), ("other", "6")] {
            let f = fields(&encode(&format!(r#"{{"level":"{level}"}}"#)));
            assert_eq!(get(&f, "PRIORITY"), Some(p), "{level}");
        }
    }

    /// An event id with a newline (payloads are untrusted) cannot start a field of its own:
    /// the value goes in the length-prefixed form.
    #[test]
    fn newlines_in_values_use_the_binary_form() {
        let line = r#"{"type":"decision","event_id":"a\nPRIORITY=0"}"#;
        let f = fields(&encode(line));
        assert_eq!(get(&f, "KEEL_EVENT_ID"), Some("a\nPRIORITY=0"));
        assert_eq!(f.iter().filter(|(n, _)| n == "PRIORITY").count(), 1);
        assert_eq!(get(&f, "PRIORITY"), Some("6"));
        // Not JSON: sent as it is.
        let f = fields(&encode("plain\ntext"));
        assert_eq!(get(&f, "MESSAGE"), Some("plain\ntext"));
    }

    #[cfg(unix)]
    #[test]
    fn lines_reach_the_socket_one_datagram_each() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("socket");
        let server = UnixDatagram::bind(&path).unwrap();
        let mut j = Journald::connect(&path).unwrap();
        // A line split across writes, then two lines in one write.
        j.write_all(br#"{"type":"host","le"#).unwrap();
        j.write_all(b"vel\":\"warn\"}\n{\"a\":1}\n{\"b\"").unwrap();
        j.write_all(b":2}\n").unwrap();
        let mut buf = vec![0u8; 65536];
        let mut got = Vec::new();
        for _ in 0..3 {
            let n = server.recv(&mut buf).unwrap();
            got.push(fields(&buf[..n]));
        }
        assert_eq!(
            get(&got[0], "MESSAGE"),
            Some(r#"{"type":"host","level":"warn"}"#)
        );
        assert_eq!(get(&got[0], "PRIORITY"), Some("4"));
        assert_eq!(get(&got[1], "MESSAGE"), Some(r#"{"a":1}"#));
        assert_eq!(get(&got[2], "MESSAGE"), Some(r#"{"b":2}"#));
    }

    #[cfg(unix)]
    #[test]
    fn a_missing_socket_is_an_error_at_start() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Journald::connect(&dir.path().join("none")).is_err());
    }
}
