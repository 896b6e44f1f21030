//! YAML documents as JSON values with the position of every node: for configuration files
//! (such as the host's `keel.yaml`) that want the same file:line:column diagnostics, size
//! limits and alias/nesting protection as policy files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use saphyr::{MarkedYaml, Scalar, YamlData};
use serde_json::Value;

use crate::diag::{Diagnostic, LoadError, Pos};
use crate::expr::Expr;
use crate::fields::did_you_mean;

/// A YAML document as JSON, with positions.
#[derive(Debug, Clone)]
pub struct YamlDoc {
    file: PathBuf,
    /// The document.
    pub value: Value,
    positions: HashMap<String, Pos>,
    keys: HashMap<String, Pos>,
}

impl YamlDoc {
    /// The 1-based (line, column) of the node at JSON pointer `ptr` (`""` for the root,
    /// `/sources/0/url`), falling back to the nearest ancestor that has one.
    pub fn position(&self, ptr: &str) -> (usize, usize) {
        let mut p = ptr.to_string();
        loop {
            if let Some(pos) = self.positions.get(&p) {
                return (pos.line, pos.column);
            }
            match p.rfind('/') {
                Some(i) => p.truncate(i),
                None => return (0, 0),
            }
        }
    }

    /// A diagnostic at the key of the map entry `ptr` (falling back to its value).
    pub fn key_diagnostic(&self, ptr: &str, message: impl Into<String>) -> Diagnostic {
        match self.keys.get(ptr) {
            Some(p) => Diagnostic::new(&self.file, *p, message),
            None => self.diagnostic(ptr, message),
        }
    }

    /// A diagnostic at the node `ptr`.
    pub fn diagnostic(&self, ptr: &str, message: impl Into<String>) -> Diagnostic {
        let (line, column) = self.position(ptr);
        Diagnostic::new(&self.file, Pos { line, column }, message)
    }

    /// The file the document came from.
    pub fn file(&self) -> &Path {
        &self.file
    }
}

/// Loads one YAML document. Errors (size, UTF-8, syntax, aliases, nesting) carry positions.
pub fn load(file: &Path, bytes: &[u8]) -> Result<YamlDoc, LoadError> {
    let mut diags = Vec::new();
    let doc = with_yaml_doc(file, bytes, &mut diags, "file", "a map", |_, doc| {
        let mut positions = HashMap::new();
        let mut keys = HashMap::new();
        let value = convert(doc, String::new(), &mut positions, &mut keys, 0);
        (value, positions, keys)
    });
    match doc {
        Some((value, positions, keys)) if diags.is_empty() => Ok(YamlDoc {
            file: file.to_path_buf(),
            value,
            positions,
            keys,
        }),
        _ => Err(LoadError::new(diags)),
    }
}

/// The subtree `n` of a document being read as a [`YamlDoc`] of its own (its root at
/// pointer `""`), with the positions of every node in `file`: for readers shared with
/// `keel.yaml` (such as [`crate::budget::read_budgets`]) inside a file read with [`Cx`].
pub(crate) fn subtree_doc(file: &Path, n: &MarkedYaml<'_>) -> YamlDoc {
    let mut positions = HashMap::new();
    let mut keys = HashMap::new();
    let value = convert(n, String::new(), &mut positions, &mut keys, 0);
    YamlDoc {
        file: file.to_path_buf(),
        value,
        positions,
        keys,
    }
}

fn convert(
    n: &MarkedYaml<'_>,
    ptr: String,
    out: &mut HashMap<String, Pos>,
    keys: &mut HashMap<String, Pos>,
    depth: usize,
) -> Value {
    out.insert(ptr.clone(), pos(n));
    if depth > MAX_POLICY_DEPTH {
        return Value::Null;
    }
    match &n.data {
        YamlData::Sequence(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| convert(v, format!("{ptr}/{i}"), out, keys, depth + 1))
                .collect(),
        ),
        YamlData::Mapping(m) => {
            let mut obj = serde_json::Map::new();
            for (k, v) in m.iter() {
                let key = scalar_str(k).map(|s| s.into_owned()).unwrap_or_default();
                let child = format!("{ptr}/{}", key.replace('~', "~0").replace('/', "~1"));
                keys.insert(child.clone(), pos(k));
                let value = convert(v, child, out, keys, depth + 1);
                obj.insert(key, value);
            }
            Value::Object(obj)
        }
        YamlData::Value(saphyr::Scalar::Integer(i)) => Value::from(*i),
        YamlData::Value(saphyr::Scalar::FloatingPoint(f)) => {
            serde_json::Number::from_f64(f.0).map_or(Value::Null, Value::Number)
        }
        YamlData::Value(saphyr::Scalar::Boolean(b)) => Value::Bool(*b),
        YamlData::Value(saphyr::Scalar::Null) => Value::Null,
        YamlData::Tagged(_, inner) => convert(inner, ptr, out, keys, depth + 1),
        _ => scalar_str(n).map_or(Value::Null, |s| Value::String(s.into_owned())),
    }
}

/// The largest policy file accepted (8 MiB): a policy set is configuration, not data.
pub const MAX_POLICY_FILE_BYTES: usize = 8 << 20;
/// The deepest YAML nesting accepted in a policy file.
pub const MAX_POLICY_DEPTH: usize = 32;

/// Checks a YAML file's bytes (size, UTF-8, nesting, aliases), loads its one document with
/// positions and hands it to `f`. Problems go to `diags`; `None` when there is no document to
/// hand over.
pub(crate) fn with_yaml_doc<R>(
    file: &Path,
    bytes: &[u8],
    diags: &mut Vec<Diagnostic>,
    what: &str,
    top: &str,
    f: impl FnOnce(&mut Cx<'_, '_>, &MarkedYaml<'_>) -> R,
) -> Option<R> {
    if bytes.len() > MAX_POLICY_FILE_BYTES {
        diags.push(Diagnostic::new(
            file,
            Pos::FILE,
            // Files are read only to one byte past the limit: the size is not known.
            format!("{what} is too large: the limit is {MAX_POLICY_FILE_BYTES} bytes (8 MiB)"),
        ));
        return None;
    }
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let (line, column) = crate::diag::line_col_of_byte(bytes, e.valid_up_to());
            diags.push(Diagnostic::new(
                file,
                Pos { line, column },
                format!("{what} is not valid UTF-8"),
            ));
            return None;
        }
    };
    let docs = match load_docs(file, text) {
        Ok(d) => d,
        Err(Unloaded::Refused(d)) => {
            diags.push(d);
            return None;
        }
        Err(Unloaded::Syntax(e)) => {
            let m = e.marker();
            let help = e.info().contains("mapping values are not allowed").then(|| {
                "a plain value cannot contain `: `; quote it (\"...\") or use a folded block (`>`)".to_string()
            });
            diags.push(
                Diagnostic::new(
                    file,
                    Pos {
                        line: m.line(),
                        column: m.col() + 1,
                    },
                    format!("YAML syntax error: {}", e.info()),
                )
                .with_help(help),
            );
            return None;
        }
    };
    let mut cx = Cx {
        file: Arc::from(file),
        text,
        chars: None,
        diags,
    };
    match docs.as_slice() {
        [] => {
            cx.err(
                Pos::FILE,
                format!("empty {what}: expected a map with {top}"),
            );
            None
        }
        [doc] => Some(f(&mut cx, doc)),
        [_, second, ..] => {
            cx.err(
                pos(second),
                format!("a {what} holds one YAML document; put everything under one {top}"),
            );
            None
        }
    }
}

/// Why [`load_docs`] loaded nothing.
enum Unloaded {
    /// What the tree loader must never see (an alias, nesting too deep), placed.
    Refused(Diagnostic),
    /// A YAML syntax error, the parser's or the loader's (a duplicate key), for the caller
    /// to place.
    Syntax(saphyr::ScanError),
}

/// Loads the documents of `text` in one pass of the YAML parser, rejecting before the tree
/// loader sees them what it should never see: aliases (no billion laughs) and nesting deeper
/// than [`MAX_POLICY_DEPTH`]. The parser's events are pulled one at a time (its own `load`
/// recurses per nesting level) and handed to the tree loader only once checked.
fn load_docs<'t>(file: &Path, text: &'t str) -> Result<Vec<MarkedYaml<'t>>, Unloaded> {
    use saphyr_parser::SpannedEventReceiver;
    let mut loader = saphyr::YamlLoader::<MarkedYaml<'t>>::default();
    let mut depth = 0usize;
    for ev in saphyr_parser::Parser::new_from_str(text) {
        let (ev, span) = ev.map_err(Unloaded::Syntax)?;
        let at = Pos {
            line: span.start.line(),
            column: span.start.col() + 1,
        };
        match ev {
            saphyr_parser::Event::SequenceStart(..) | saphyr_parser::Event::MappingStart(..) => {
                depth += 1;
                if depth > MAX_POLICY_DEPTH {
                    return Err(Unloaded::Refused(Diagnostic::new(
                        file,
                        at,
                        format!("YAML nested deeper than {MAX_POLICY_DEPTH} levels"),
                    )));
                }
            }
            saphyr_parser::Event::SequenceEnd | saphyr_parser::Event::MappingEnd => {
                depth = depth.saturating_sub(1);
            }
            saphyr_parser::Event::Alias(_) => {
                return Err(Unloaded::Refused(Diagnostic::new(
                    file,
                    at,
                    "YAML aliases (`*name`) are not allowed in policy files",
                )));
            }
            _ => {}
        }
        loader.on_event(ev, span);
    }
    if let Some(e) = loader.error() {
        return Err(Unloaded::Syntax(e.clone()));
    }
    Ok(loader.into_documents())
}

pub(crate) fn pos(n: &MarkedYaml<'_>) -> Pos {
    Pos {
        line: n.span.start.line(),
        column: n.span.start.col() + 1,
    }
}

/// A scalar's string form, if it is a scalar.
pub(crate) fn scalar_str<'a>(n: &'a MarkedYaml<'_>) -> Option<std::borrow::Cow<'a, str>> {
    match &n.data {
        YamlData::Value(Scalar::String(s)) => Some(std::borrow::Cow::Borrowed(s.as_ref())),
        YamlData::Value(Scalar::Integer(i)) => Some(i.to_string().into()),
        YamlData::Value(Scalar::FloatingPoint(f)) => Some(f.to_string().into()),
        YamlData::Value(Scalar::Boolean(b)) => Some(b.to_string().into()),
        YamlData::Value(Scalar::Null) => Some("null".into()),
        YamlData::Representation(s, _, _) => Some(std::borrow::Cow::Borrowed(s.as_ref())),
        _ => None,
    }
}

pub(crate) fn type_name(n: &MarkedYaml<'_>) -> &'static str {
    match &n.data {
        YamlData::Value(Scalar::String(_)) | YamlData::Representation(..) => "a string",
        YamlData::Value(Scalar::Integer(_)) => "an integer",
        YamlData::Value(Scalar::FloatingPoint(_)) => "a number",
        YamlData::Value(Scalar::Boolean(_)) => "a boolean",
        YamlData::Value(Scalar::Null) => "null",
        YamlData::Sequence(_) => "a list",
        YamlData::Mapping(_) => "a map",
        YamlData::Tagged(..) => "a tagged value",
        YamlData::Alias(_) => "an alias",
        YamlData::BadValue => "an invalid value",
    }
}

/// Conversion of a YAML tree with positions, collecting every problem.
pub(crate) struct Cx<'t, 'd> {
    pub(crate) file: Arc<Path>,
    pub(crate) text: &'t str,
    pub(crate) chars: Option<Vec<char>>,
    pub(crate) diags: &'d mut Vec<Diagnostic>,
}

pub(crate) type Entries<'n, 'i> = Vec<(String, &'n MarkedYaml<'i>, &'n MarkedYaml<'i>)>;

impl Cx<'_, '_> {
    pub(crate) fn err(&mut self, at: Pos, msg: impl Into<String>) {
        self.diags.push(Diagnostic::new(&self.file, at, msg));
    }

    pub(crate) fn err_help(&mut self, at: Pos, msg: impl Into<String>, help: Option<String>) {
        self.diags
            .push(Diagnostic::new(&self.file, at, msg).with_help(help));
    }

    /// The entries of a map whose keys must be among `allowed`; unknown and duplicate keys
    /// are reported. `None` when `n` is not a map.
    pub(crate) fn map<'n, 'i>(
        &mut self,
        n: &'n MarkedYaml<'i>,
        what: &str,
        allowed: &[&str],
    ) -> Option<Entries<'n, 'i>> {
        let YamlData::Mapping(m) = &n.data else {
            self.err(
                pos(n),
                format!("{what} must be a map, found {}", type_name(n)),
            );
            return None;
        };
        let mut out: Entries<'n, 'i> = Vec::new();
        for (k, v) in m.iter() {
            let Some(key) = scalar_str(k) else {
                self.err(pos(k), format!("keys of {what} must be strings"));
                continue;
            };
            let key = key.into_owned();
            if !allowed.contains(&key.as_str()) {
                let help = did_you_mean(&key, allowed.iter().copied())
                    .map(|s| format!("did you mean `{s}`?"))
                    .or_else(|| Some(format!("expected one of: {}", allowed.join(", "))));
                self.err_help(pos(k), format!("unknown key `{key}` in {what}"), help);
                continue;
            }
            if out.iter().any(|(k2, _, _)| *k2 == key) {
                self.err(pos(k), format!("duplicate key `{key}` in {what}"));
                continue;
            }
            out.push((key, k, v));
        }
        Some(out)
    }

    pub(crate) fn string(&mut self, n: &MarkedYaml<'_>, what: &str) -> Option<String> {
        match &n.data {
            YamlData::Value(Scalar::String(s)) => Some(s.to_string()),
            YamlData::Representation(s, _, _) => Some(s.to_string()),
            _ => {
                self.err(
                    pos(n),
                    format!("{what} must be a string, found {}", type_name(n)),
                );
                None
            }
        }
    }

    pub(crate) fn int(&mut self, n: &MarkedYaml<'_>, what: &str, min: i64) -> Option<i64> {
        match &n.data {
            YamlData::Value(Scalar::Integer(i)) if *i >= min => Some(*i),
            YamlData::Value(Scalar::Integer(i)) => {
                self.err(pos(n), format!("{what} must be at least {min}, found {i}"));
                None
            }
            _ => {
                self.err(
                    pos(n),
                    format!("{what} must be an integer, found {}", type_name(n)),
                );
                None
            }
        }
    }

    /// A CEL expression from a string scalar, with the file position of every character.
    pub(crate) fn expr(&mut self, n: &MarkedYaml<'_>, what: &str) -> Option<Expr> {
        let text = self.string(n, what)?;
        let positions = self.align(n, &text);
        Some(Expr {
            text,
            positions: positions.into(),
        })
    }

    /// Maps each character of a scalar's value back to the file. Block scalars (`>`, `|`)
    /// fold or keep line breaks and strip indentation, and quoted scalars have escapes, so
    /// the value is aligned greedily against the source from the node's start.
    fn align(&mut self, n: &MarkedYaml<'_>, value: &str) -> Vec<Pos> {
        let text = self.text;
        let chars = self.chars.get_or_insert_with(|| text.chars().collect());
        let start = n.span.start.index().min(chars.len());
        let mut line = n.span.start.line();
        let mut col = n.span.start.col() + 1;
        let mut p = start;
        let advance = |p: &mut usize, line: &mut usize, col: &mut usize| {
            if chars.get(*p) == Some(&'\n') {
                *line += 1;
                *col = 1;
            } else {
                *col += 1;
            }
            *p += 1;
        };
        if let Some(&q) = chars.get(p) {
            if (q == '"' || q == '\'') && !value.starts_with(q) {
                advance(&mut p, &mut line, &mut col);
            }
        }
        let mut out = Vec::with_capacity(value.len() + 1);
        for c in value.chars() {
            if chars.get(p) != Some(&c) {
                if c == ' ' || c == '\n' {
                    // A folded line break: the value has one character where the source has
                    // a newline and the next line's indentation.
                    out.push(Pos { line, column: col });
                    while chars.get(p).is_some_and(|s| s.is_whitespace()) {
                        advance(&mut p, &mut line, &mut col);
                    }
                    continue;
                }
                // An escape sequence: skip source characters up to the one that matches.
                let mut q = p;
                while q < chars.len() && chars[q] != c && q - p < 16 {
                    q += 1;
                }
                if q < chars.len() && chars[q] == c {
                    while p < q {
                        advance(&mut p, &mut line, &mut col);
                    }
                }
            }
            out.push(Pos { line, column: col });
            if p < chars.len() {
                advance(&mut p, &mut line, &mut col);
            }
        }
        out.push(Pos { line, column: col });
        out
    }

    /// A YAML node as JSON (for params handed to runbooks).
    pub(crate) fn json(&mut self, n: &MarkedYaml<'_>, depth: usize) -> serde_json::Value {
        use serde_json::Value as J;
        if depth > MAX_POLICY_DEPTH {
            return J::Null;
        }
        match &n.data {
            YamlData::Value(Scalar::String(s)) => J::String(s.to_string()),
            YamlData::Representation(s, _, _) => J::String(s.to_string()),
            YamlData::Value(Scalar::Integer(i)) => J::from(*i),
            YamlData::Value(Scalar::FloatingPoint(f)) => serde_json::Number::from_f64(f.0)
                .map(J::Number)
                .unwrap_or(J::Null),
            YamlData::Value(Scalar::Boolean(b)) => J::Bool(*b),
            YamlData::Value(Scalar::Null) => J::Null,
            YamlData::Sequence(items) => {
                J::Array(items.iter().map(|i| self.json(i, depth + 1)).collect())
            }
            YamlData::Mapping(m) => {
                let mut obj = serde_json::Map::new();
                for (k, v) in m.iter() {
                    let key = scalar_str(k).map(|s| s.into_owned()).unwrap_or_default();
                    obj.insert(key, self.json(v, depth + 1));
                }
                J::Object(obj)
            }
            YamlData::Tagged(_, inner) => self.json(inner, depth + 1),
            YamlData::Alias(_) | YamlData::BadValue => J::Null,
        }
    }
}

/// The value of `key` among the entries [`Cx::map`] returned.
pub(crate) fn entry<'n, 'i>(entries: &Entries<'n, 'i>, key: &str) -> Option<&'n MarkedYaml<'i>> {
    entries
        .iter()
        .find(|(k, _, _)| k == key)
        .map(|(_, _, v)| *v)
}
