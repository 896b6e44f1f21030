//! The events `keel eval` reads: one JSON document, or JSON lines (one normalized event per
//! line, as `keel normalize` prints them), from a file or standard input.

use std::io::{BufRead, BufReader, Read};

use keel_engine::{escape, Event, EventError, MAX_EVENT_BYTES};

/// A source of events. The input is JSON lines when its first non-blank line is a whole JSON
/// value on its own; otherwise it is one JSON document (pretty-printed, say).
pub struct Events {
    name: String,
    reader: Box<dyn BufRead>,
    /// The number of the last line read (from 1).
    line: usize,
    /// The first event, read by [`Events::open`] and not yet returned.
    first: Option<Event>,
    /// One document, already returned: nothing more to read.
    single: bool,
}

impl Events {
    /// Opens `spec` (a path, or `-` for standard input) and reads its first event; the error
    /// is a message for `error: ...`, with the input's name and the line.
    pub fn open(spec: &str) -> Result<Events, String> {
        let (name, reader): (String, Box<dyn BufRead>) = if spec == "-" {
            ("<stdin>".into(), Box::new(BufReader::new(std::io::stdin())))
        } else {
            match std::fs::File::open(spec) {
                Ok(f) => (spec.to_string(), Box::new(BufReader::new(f))),
                Err(e) => return Err(format!("{}: cannot open event: {e}", escape(spec))),
            }
        };
        let mut events = Events {
            name,
            reader,
            line: 0,
            first: None,
            single: false,
        };
        let mut head = Vec::new();
        let first = loop {
            let mut buf = Vec::new();
            let at_end = events.read_line(&mut buf)?;
            let is_blank = buf.iter().all(u8::is_ascii_whitespace);
            head.extend_from_slice(&buf);
            if !is_blank || at_end {
                break buf;
            }
        };
        if serde_json::from_slice::<serde_json::Value>(&first).is_ok() {
            events.first = Some(events.parse_line(&first)?);
            return Ok(events);
        }
        // One document: the lines read so far and the rest, up to the size limit.
        let limit = (MAX_EVENT_BYTES + 1).saturating_sub(head.len()) as u64;
        events
            .reader
            .as_mut()
            .take(limit)
            .read_to_end(&mut head)
            .map_err(|e| format!("{}: cannot read event: {e}", escape(&events.name)))?;
        let event = Event::from_json_bytes(&head).map_err(|e| {
            format!(
                "{}: invalid event: {}",
                escape(&events.name),
                escape(&e.to_string())
            )
        })?;
        events.first = Some(event);
        events.single = true;
        Ok(events)
    }

    /// The next event, `None` at the end of the input.
    pub fn next_event(&mut self) -> Result<Option<Event>, String> {
        if let Some(e) = self.first.take() {
            return Ok(Some(e));
        }
        if self.single {
            return Ok(None);
        }
        loop {
            let mut buf = Vec::new();
            let at_end = self.read_line(&mut buf)?;
            if !buf.iter().all(u8::is_ascii_whitespace) {
                return self.parse_line(&buf).map(Some);
            }
            if at_end {
                return Ok(None);
            }
        }
    }

    /// Reads one line (with its newline) into `buf`, at most [`MAX_EVENT_BYTES`] of it;
    /// whether the input ended.
    fn read_line(&mut self, buf: &mut Vec<u8>) -> Result<bool, String> {
        let limit = (MAX_EVENT_BYTES + 2) as u64;
        let n = self
            .reader
            .as_mut()
            .take(limit)
            .read_until(b'\n', buf)
            .map_err(|e| format!("{}: cannot read event: {e}", escape(&self.name)))?;
        self.line += 1;
        let ended = buf.last() != Some(&b'\n');
        if ended && n as u64 == limit {
            return Err(format!(
                "{}:{}: the line is longer than an event may be ({MAX_EVENT_BYTES} bytes)",
                escape(&self.name),
                self.line
            ));
        }
        Ok(ended)
    }

    /// Parses the line just read as one event; the error names the line (and the column).
    fn parse_line(&self, bytes: &[u8]) -> Result<Event, String> {
        Event::from_json_bytes(bytes.trim_ascii()).map_err(|e| {
            let name = escape(&self.name);
            let line = self.line;
            match e {
                EventError::Json {
                    column, message, ..
                } => format!(
                    "{name}:{line}:{column}: invalid event: {}",
                    escape(&message)
                ),
                e => format!("{name}:{line}: invalid event: {}", escape(&e.to_string())),
            }
        })
    }
}
