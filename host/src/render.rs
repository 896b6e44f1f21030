//! Rendering of load diagnostics for humans: `file:line:col: error: message`, the source line
//! and a caret, and the help.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

use keel_engine::{escape, Diagnostic, LoadError};

/// Writes every diagnostic of `err`, with a snippet where the file can be read.
pub fn diagnostics(out: &mut dyn Write, err: &LoadError) -> std::io::Result<()> {
    list(out, err.diagnostics(), "error")
}

/// Writes `diags` as `severity`s (`error`, `warning`), with a snippet where the file can be
/// read.
pub fn list(out: &mut dyn Write, diags: &[Diagnostic], severity: &str) -> std::io::Result<()> {
    let mut sources: HashMap<PathBuf, Option<String>> = HashMap::new();
    for d in diags {
        let file = escape(&d.file().display().to_string());
        if d.line() == 0 {
            writeln!(out, "{file}: {severity}: {}", escape(d.message()))?;
        } else {
            writeln!(
                out,
                "{file}:{}:{}: {severity}: {}",
                d.line(),
                d.column(),
                escape(d.message())
            )?;
            let text = sources
                .entry(d.file().to_path_buf())
                .or_insert_with(|| std::fs::read_to_string(d.file()).ok());
            if let Some(line) = text.as_deref().and_then(|t| t.lines().nth(d.line() - 1)) {
                let line = escape(line);
                if line.chars().count() <= 200 {
                    let lno = d.line().to_string();
                    let pad = " ".repeat(lno.len());
                    let caret: String = line
                        .chars()
                        .take(d.column().saturating_sub(1))
                        .map(|c| if c == '\t' { '\t' } else { ' ' })
                        .collect();
                    writeln!(out, "{pad} |")?;
                    writeln!(out, "{lno} | {line}")?;
                    writeln!(out, "{pad} | {caret}^")?;
                }
            }
        }
        if let Some(h) = d.help() {
            writeln!(out, "  help: {}", escape(h))?;
        }
    }
    Ok(())
}
