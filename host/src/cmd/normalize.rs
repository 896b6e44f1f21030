//! `keel normalize`: turn a vendor payload into normalized events (JSON lines).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use keel_engine::normalize::{normalize, Input, NormalizerState, MAX_PAYLOAD_BYTES, NORMALIZERS};
use keel_engine::{escape, Operation};

use crate::Exit;

/// Turn a vendor payload into normalized events, one JSON object per line.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  keel normalize --list\n  keel normalize --from azure.scheduled_events --self WestNO_0 doc.json\n  keel normalize --from azure.scheduled_events --previous doc-2.json doc-3.json\n  curl -s -H Metadata:true 'http://169.254.169.254/metadata/scheduledevents?api-version=2020-07-01' \\\n    | keel normalize --from azure.scheduled_events --state .keel/se-state.json -\n  keel normalize --from azure.scheduled_events --state .keel/se-state.json \\\n    --approved C7061BAC-AFDC-4513-B24B-AA5F13A16123 doc-4.json\n  keel normalize --from azure.arm --operation create error.json\n\nWith --state, the normalizer state (the previous Scheduled Events document, GCP's last\nmaintenance-event value, ...) is read from FILE if it exists and written back atomically.\n--approved records that StartRequests was sent for an event, so that its disappearance is\nnever read as a cancellation."
)]
pub struct Args {
    /// The normalizer (see --list).
    #[arg(long, value_name = "SOURCE", required_unless_present = "list")]
    pub from: Option<String>,
    /// The previous document of a stateful source, read first (its events are not printed).
    #[arg(long, value_name = "FILE", conflicts_with = "state")]
    pub previous: Option<PathBuf>,
    /// Normalizer state file, read if present and updated in place.
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
    /// This host's VM name, to mark its own events (`resource.is_self`).
    #[arg(long = "self", value_name = "NAME")]
    pub self_name: Option<String>,
    /// The operation that failed, for `azure.arm` payloads that do not say (a bare error body
    /// or async operation status): create, start, stop, restart, update, delete, extension,
    /// redeploy.
    #[arg(long, value_name = "OPERATION")]
    pub operation: Option<String>,
    /// `azure.scheduled_events`: StartRequests was sent for this EventId (repeatable; compared
    /// case-insensitively). Marked in the state before the payload is read, so that the
    /// event's disappearance is never read as a cancellation.
    #[arg(long, value_name = "EVENT_ID")]
    pub approved: Vec<String>,
    /// When the payload was observed (RFC 3339). Default: now.
    #[arg(long, value_name = "TIME")]
    pub observed_at: Option<String>,
    /// List the normalizers and exit.
    #[arg(long)]
    pub list: bool,
    /// The payload file, or `-` for standard input.
    #[arg(value_name = "FILE|-", required_unless_present = "list")]
    pub file: Option<String>,
}

fn read_payload(spec: &str) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    let limit = (MAX_PAYLOAD_BYTES + 1) as u64;
    let res = if spec == "-" {
        std::io::stdin().lock().take(limit).read_to_end(&mut bytes)
    } else {
        std::fs::File::open(spec).and_then(|f| f.take(limit).read_to_end(&mut bytes))
    };
    res.map_err(|e| format!("{}: cannot read: {e}", escape(spec)))?;
    Ok(bytes)
}

fn load_state(path: &Path) -> Result<NormalizerState, String> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| {
            format!(
                "{}: invalid normalizer state: {e}",
                escape(&path.display().to_string())
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(NormalizerState::default()),
        Err(e) => Err(format!(
            "{}: cannot read state: {e}",
            escape(&path.display().to_string())
        )),
    }
}

/// Writes the state next to its final place and renames it over, so that a crash never leaves
/// a half-written state.
fn save_state(path: &Path, state: &NormalizerState) -> Result<(), String> {
    let show = || escape(&path.display().to_string());
    let json = serde_json::to_vec_pretty(state).map_err(|e| format!("{}: {e}", show()))?;
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| format!("{}: cannot write state: {e}", show()))
}

/// Runs `keel normalize`.
pub fn run(args: Args) -> Exit {
    if args.list {
        for n in NORMALIZERS {
            println!("{:<24} {}", n.name, n.reads);
        }
        return Exit::Ok;
    }
    match run_inner(&args) {
        Ok(()) => Exit::Ok,
        Err(msg) => {
            eprintln!("error: {msg}");
            Exit::Usage
        }
    }
}

fn run_inner(args: &Args) -> Result<(), String> {
    let (Some(from), Some(file)) = (&args.from, &args.file) else {
        return Err("give --from SOURCE and a FILE (or --list)".into());
    };
    if !NORMALIZERS.iter().any(|n| n.name == from) {
        let names: Vec<&str> = NORMALIZERS.iter().map(|n| n.name).collect();
        let hint = names
            .iter()
            .map(|n| (strsim::damerau_levenshtein(from, n), *n))
            .filter(|(d, _)| *d <= 3)
            .min()
            .map(|(_, n)| format!(" (did you mean `{n}`?)"))
            .unwrap_or_default();
        return Err(format!(
            "--from: unknown normalizer `{}`{hint}; normalizers: {}",
            escape(from),
            names.join(", ")
        ));
    }
    let observed_at: DateTime<Utc> = match &args.observed_at {
        Some(s) => DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| format!("--observed-at {}: not an RFC 3339 time ({e})", escape(s)))?,
        None => Utc::now(),
    };
    if !args.approved.is_empty() && from != "azure.scheduled_events" {
        return Err(format!(
            "--approved applies to azure.scheduled_events only, not `{}`",
            escape(from)
        ));
    }
    if args.approved.iter().any(|id| id.trim().is_empty()) {
        return Err("--approved: expected an EventId, found an empty value".into());
    }
    let mut state = match &args.state {
        Some(p) => load_state(p)?,
        None => NormalizerState::default(),
    };
    let self_name = args.self_name.as_deref();
    let operation = match &args.operation {
        Some(o) => Some(Operation::parse(o).ok_or_else(|| {
            format!(
                "--operation {}: expected one of {}",
                escape(o),
                Operation::NAMES.join(", ")
            )
        })?),
        None => None,
    };
    fn input<'a>(
        bytes: &'a [u8],
        at: DateTime<Utc>,
        me: Option<&'a str>,
        op: Option<Operation>,
    ) -> Input<'a> {
        let mut i = Input::new(bytes, at);
        if let Some(n) = me {
            i = i.self_name(n);
        }
        if let Some(op) = op {
            i = i.operation(op);
        }
        i
    }
    if let Some(prev) = &args.previous {
        let bytes = read_payload(&prev.to_string_lossy())?;
        normalize(
            from,
            &input(&bytes, observed_at, self_name, operation),
            &mut state,
        )
        .map_err(|e| {
            format!(
                "{} (previous document): {e}",
                escape(&prev.display().to_string())
            )
        })?;
    }
    for id in &args.approved {
        let id = id.trim();
        let se = &mut state.azure_scheduled_events;
        let known = se.events.values().any(|t| {
            t.event
                .maintenance
                .as_ref()
                .and_then(|m| m.vendor_id.as_deref())
                .is_some_and(|v| v.eq_ignore_ascii_case(id))
        });
        if !known {
            eprintln!(
                "warning: --approved {}: no Scheduled Event with that EventId is tracked in the state (give --state or --previous)",
                escape(id)
            );
        }
        se.mark_approved(id);
    }
    let bytes = read_payload(file)?;
    let events = normalize(
        from,
        &input(&bytes, observed_at, self_name, operation),
        &mut state,
    )
    .map_err(|e| {
        let list: Vec<&str> = NORMALIZERS.iter().map(|n| n.name).collect();
        match e {
            keel_engine::normalize::NormalizeError::UnknownNormalizer { .. } => {
                format!("--from: {e}; normalizers: {}", list.join(", "))
            }
            e => format!("{}: {e}", escape(file)),
        }
    })?;
    let mut out = std::io::stdout().lock();
    for ev in &events {
        let line = serde_json::to_string(ev).map_err(|e| e.to_string())?;
        if let Err(e) = writeln!(out, "{line}") {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                break;
            }
            return Err(format!("writing events: {e}"));
        }
    }
    if let Some(p) = &args.state {
        save_state(p, &state)?;
    }
    Ok(())
}
