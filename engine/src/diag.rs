//! Load-time diagnostics with file, line and column.

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem found while loading a policy set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    file: PathBuf,
    line: usize,
    column: usize,
    message: String,
    help: Option<String>,
}

impl Diagnostic {
    pub(crate) fn new(file: &Path, pos: Pos, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            file: file.to_path_buf(),
            line: pos.line,
            column: pos.column,
            message: message.into(),
            help: None,
        }
    }

    /// A diagnostic at a 1-based `line` and `column` of `file` (0, 0: the whole file), for tools
    /// that check files of their own.
    pub fn at(file: &Path, line: usize, column: usize, message: impl Into<String>) -> Diagnostic {
        Diagnostic::new(file, Pos { line, column }, message)
    }

    pub(crate) fn with_help(mut self, help: Option<String>) -> Diagnostic {
        self.help = help;
        self
    }

    /// The file the problem is in.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// 1-based line (0 when the problem concerns the whole file).
    pub fn line(&self) -> usize {
        self.line
    }

    /// 1-based column, in characters (0 when the problem concerns the whole file).
    pub fn column(&self) -> usize {
        self.column
    }

    /// What is wrong.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// A suggestion, such as a did-you-mean.
    pub fn help(&self) -> Option<&str> {
        self.help.as_deref()
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display().to_string();
        if self.line == 0 {
            write!(f, "{}: {}", escape(&file), escape(&self.message))?;
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                escape(&file),
                self.line,
                self.column,
                escape(&self.message)
            )?;
        }
        if let Some(help) = &self.help {
            write!(f, "\n  help: {}", escape(help))?;
        }
        Ok(())
    }
}

/// A 1-based position in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    pub(crate) const FILE: Pos = Pos { line: 0, column: 0 };
}

/// 1-based (line, column) of byte `offset` in `bytes` (columns count characters).
pub(crate) fn line_col_of_byte(bytes: &[u8], offset: usize) -> (usize, usize) {
    let upto = &bytes[..offset.min(bytes.len())];
    let line = upto.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = upto
        .iter()
        .rposition(|&b| b == b'\n')
        .map(|p| p + 1)
        .unwrap_or(0);
    let column = String::from_utf8_lossy(&upto[line_start..]).chars().count() + 1;
    (line, column)
}

/// Escapes control characters (newlines included) and invisible format characters (see
/// `needs_escape`) so that untrusted text cannot forge log lines, diagnostics or terminal
/// sequences, nor reorder what a reader sees.
///
/// ```
/// assert_eq!(keel_engine::escape("a\nb"), "a\\nb");
/// assert_eq!(keel_engine::escape("vm\u{202E}1"), "vm\\u{202e}1");
/// assert_eq!(keel_engine::escape("plain, ünïcode"), "plain, ünïcode");
/// ```
pub fn escape(s: &str) -> String {
    if !s.chars().any(needs_escape) {
        return s.to_string();
    }
    s.chars()
        .flat_map(|c| {
            if needs_escape(c) {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// Control characters, and the invisible format characters that reorder or hide text on a
/// terminal (bidirectional overrides and isolates, zero-width characters, the byte-order
/// mark): a log line shows them as `\u{…}` escapes, never as themselves.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

/// A policy set that failed to load: every problem found, in file order.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", render(.diagnostics))]
pub struct LoadError {
    diagnostics: Vec<Diagnostic>,
}

fn render(d: &[Diagnostic]) -> String {
    let mut out = String::new();
    for (i, d) in d.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&d.to_string());
    }
    out
}

impl LoadError {
    pub(crate) fn new(diagnostics: Vec<Diagnostic>) -> LoadError {
        LoadError { diagnostics }
    }

    /// An error made of `diagnostics` (for tools that validate files of their own, such as the
    /// host's configuration).
    pub fn from_diagnostics(diagnostics: Vec<Diagnostic>) -> LoadError {
        LoadError { diagnostics }
    }

    /// Every problem found.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        &self.diagnostics
    }
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn escape_shows_controls_and_invisible_format_characters_as_escapes() {
        for (raw, shown) in [
            ("a\nb", "a\\nb"),
            ("\u{1b}[31m", "\\u{1b}[31m"),
            ("vm\u{202E}1", "vm\\u{202e}1"),
            ("a\u{200B}b\u{FEFF}", "a\\u{200b}b\\u{feff}"),
            ("x\u{2066}y\u{2069}", "x\\u{2066}y\\u{2069}"),
            ("plain, ünïcode, 日本", "plain, ünïcode, 日本"),
        ] {
            assert_eq!(escape(raw), shown, "{raw:?}");
        }
    }
}
