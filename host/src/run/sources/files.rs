//! Files and standard input, replayed through a normalizer (`sources.files`).
//!
//! Format, chosen per file: `lines` (the default) reads JSON lines, one payload per non-blank
//! line, so that a capture appended line by line (`curl ... >> capture.jsonl`) replays in
//! order; `document` reads the whole file as one payload (a pretty-printed vendor document,
//! a fixture). Each payload goes through the named normalizer and the engine like a polled
//! one, in order, one at a time, with the normalizer state persisted as for any source.
//!
//! A line the normalizer rejects, or one longer than the normalizers accept, is a source
//! error that names `file:line` (counted in `keel_source_errors_total{source="files"}` and
//! shown on `/readyz`); reading goes on with the next line. A file that cannot be read is an
//! error too, never a crash. Each file is read once, to its end; then a summary line
//! `{"source": "files", "path", "payloads", "errors"}` goes to the decision log. When the
//! files are the only source, the host stops once they are replayed and their runbooks are
//! done (up to the usual shutdown grace).

use std::sync::Arc;

use chrono::Utc;
use keel_engine::escape;
use keel_engine::normalize::MAX_PAYLOAD_BYTES;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::sync::{mpsc, watch};

use super::{deliver, Deliver};
use crate::config::{FileFormat, FileSource};
use crate::run::{rfc, Host, Inbox};

/// The source's name (its metrics label).
pub const SOURCE: &str = "files";

/// One line, at most `max` bytes kept: `Ok(None)` at the end of input, `Ok(Some(false))` when
/// the line was longer than `max` (the rest is skipped), `Ok(Some(true))` otherwise.
async fn read_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Option<bool>> {
    buf.clear();
    let mut fits = true;
    let mut any = false;
    loop {
        let chunk = r.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(any.then_some(fits));
        }
        any = true;
        let (part, done) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (&chunk[..i], Some(i + 1)),
            None => (chunk, None),
        };
        if fits && buf.len() + part.len() <= max {
            buf.extend_from_slice(part);
        } else {
            fits = false;
            buf.clear();
        }
        let used = done.unwrap_or(chunk.len());
        r.consume(used);
        if done.is_some() {
            return Ok(Some(fits));
        }
    }
}

/// What one file's replay came to.
struct Tally {
    payloads: u64,
    errors: u64,
}

/// Hands one payload over; `Err(())` when the host is stopping.
async fn hand(
    host: &Host,
    tx: &mpsc::Sender<Inbox>,
    channel: &'static str,
    f: &FileSource,
    at: &str,
    bytes: Vec<u8>,
    tally: &mut Tally,
) -> Result<(), ()> {
    match deliver(tx, f.normalizer, bytes).await {
        Ok(()) => {
            tally.payloads += 1;
            host.source_ok(SOURCE, channel);
            Ok(())
        }
        Err(Deliver::Rejected(e)) => {
            fail(host, channel, tally, at, &e);
            Ok(())
        }
        Err(Deliver::Closed) => Err(()),
    }
}

async fn replay<R: AsyncRead + Unpin>(
    host: &Host,
    tx: &mpsc::Sender<Inbox>,
    channel: &'static str,
    f: &FileSource,
    input: R,
) -> Result<Tally, ()> {
    let name = f.display();
    let mut tally = Tally {
        payloads: 0,
        errors: 0,
    };
    let mut r = BufReader::new(input);
    match f.format {
        FileFormat::Document => {
            let mut bytes = Vec::new();
            let res = (&mut r)
                .take(MAX_PAYLOAD_BYTES as u64 + 1)
                .read_to_end(&mut bytes)
                .await;
            let at = name.clone();
            match res {
                Err(e) => fail(host, channel, &mut tally, &at, &format!("cannot read: {e}")),
                Ok(_) if bytes.len() > MAX_PAYLOAD_BYTES => fail(
                    host,
                    channel,
                    &mut tally,
                    &at,
                    &format!("larger than {MAX_PAYLOAD_BYTES} bytes"),
                ),
                Ok(_) => hand(host, tx, channel, f, &at, bytes, &mut tally).await?,
            }
        }
        FileFormat::Lines => {
            let mut line = 0u64;
            let mut buf = Vec::new();
            loop {
                line += 1;
                let at = format!("{name}:{line}");
                match read_line(&mut r, &mut buf, MAX_PAYLOAD_BYTES).await {
                    Ok(None) => break,
                    Ok(Some(false)) => fail(
                        host,
                        channel,
                        &mut tally,
                        &at,
                        &format!("line longer than {MAX_PAYLOAD_BYTES} bytes"),
                    ),
                    Ok(Some(true)) if buf.iter().all(u8::is_ascii_whitespace) => {}
                    Ok(Some(true)) => {
                        let bytes = std::mem::take(&mut buf);
                        hand(host, tx, channel, f, &at, bytes, &mut tally).await?;
                    }
                    Err(e) => {
                        fail(host, channel, &mut tally, &at, &format!("cannot read: {e}"));
                        break;
                    }
                }
            }
        }
    }
    Ok(tally)
}

/// Counts and reports a bad payload or an unreadable file. Unlike a polling source, whose
/// log shows the first failure of a streak, every bad line is logged: a replay is read once,
/// and each bad line is worth knowing. `at` is `file` or `file:line`.
fn fail(host: &Host, channel: &'static str, tally: &mut Tally, at: &str, why: &str) {
    tally.errors += 1;
    host.metrics
        .add("keel_source_errors_total", &[("source", SOURCE)], 1.0);
    let at = escape(at);
    let why = escape(why);
    host.health.failed(SOURCE, channel, &format!("{at}: {why}"));
    host.log_line(&serde_json::json!({
        "time": rfc(Utc::now()), "source": SOURCE, "at": at, "error": why,
    }));
}

/// Replays one file (or standard input) to its end, then logs a summary.
pub async fn read(
    host: Arc<Host>,
    f: FileSource,
    channel: &'static str,
    tx: mpsc::Sender<Inbox>,
    mut stop: watch::Receiver<bool>,
) {
    let work = async {
        match &f.path {
            None => replay(&host, &tx, channel, &f, tokio::io::stdin()).await,
            Some(p) => match tokio::fs::File::open(p).await {
                Ok(file) => replay(&host, &tx, channel, &f, file).await,
                Err(e) => {
                    let mut tally = Tally {
                        payloads: 0,
                        errors: 0,
                    };
                    let why = format!("cannot open: {e}");
                    fail(&host, channel, &mut tally, &f.display(), &why);
                    Ok(tally)
                }
            },
        }
    };
    let tally = tokio::select! {
        t = work => t,
        _ = stop.changed() => return,
    };
    if let Ok(t) = tally {
        // The replay is over: its errors stay counted and logged, but a finished replay does
        // not hold /readyz red.
        host.source_ok(SOURCE, channel);
        host.log_line(&serde_json::json!({
            "time": rfc(Utc::now()), "source": SOURCE, "path": escape(&f.display()),
            "payloads": t.payloads, "errors": t.errors,
        }));
    }
}
