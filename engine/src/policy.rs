//! Policy files: YAML with positions, validated into [`PolicySpec`]s before anything runs.
//!
//! The file format is DESIGN.md's: a top-level map with an optional `version` (1) and a
//! `policies` list. Every problem in every file is collected (not only the first), each with
//! file:line:column; a set with any problem is rejected as a whole.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};

use crate::decision::{Action, Severity};
use crate::diag::{Diagnostic, Pos};
use crate::event::Kind;
use crate::expr::Expr;
use crate::fields::did_you_mean;

/// The largest policy file accepted (8 MiB): a policy set is configuration, not data.
pub const MAX_POLICY_FILE_BYTES: usize = 8 << 20;
/// The deepest YAML nesting accepted in a policy file.
pub const MAX_POLICY_DEPTH: usize = 32;
const MAX_DIR_DEPTH: usize = 32;

/// The newest policy-file format version this engine reads.
pub const FORMAT_VERSION: i64 = 1;

/// How a retry's delay grows with the attempt number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backoff {
    Fixed,
    Exponential,
}

/// Validated `params` of a policy.
#[derive(Debug, Clone, Default)]
pub(crate) struct Params {
    pub delay_s: Option<i64>,
    pub max_attempts: Option<i64>,
    pub backoff: Option<Backoff>,
    pub until: Option<Expr>,
    pub delay: Option<i64>,
    pub severity: Option<Severity>,
    pub dedup_by: Vec<(String, Pos)>,
    pub dedup_window_s: Option<i64>,
    /// The params as written, handed to runbooks.
    pub json: serde_json::Map<String, serde_json::Value>,
}

/// Default per-call deadline of a plugin, milliseconds.
pub const DEFAULT_PLUGIN_DEADLINE_MS: u64 = 5;
/// Default memory limit of a plugin instance, MiB.
pub const DEFAULT_PLUGIN_MEMORY_MIB: u64 = 4;
/// The largest per-call deadline a policy may give a plugin, milliseconds.
pub const MAX_PLUGIN_DEADLINE_MS: i64 = 1000;
/// The largest memory limit a policy may give a plugin, MiB.
pub const MAX_PLUGIN_MEMORY_MIB: i64 = 64;

/// A policy's `plugin:` block: a Wasm component deciding in place of `when`/`action`.
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "plugins"), allow(dead_code))]
pub(crate) struct PluginSpec {
    /// Where the `plugin:` block starts (diagnostics about the plugin point here).
    pub pos: Pos,
    /// The component, resolved against the policy file's directory.
    pub path: PathBuf,
    /// Where `path` is written.
    pub path_pos: Pos,
    /// The expected hex SHA-256 of the component, if given.
    pub sha256: Option<(String, Pos)>,
    /// `config`, handed to the plugin's `init` as JSON.
    pub config: serde_json::Value,
    /// Where `config` is written (else the block).
    pub config_pos: Pos,
    /// Per-call deadline, milliseconds.
    pub deadline_ms: u64,
    /// Memory limit of an instance, MiB.
    pub memory_mib: u64,
}

/// One policy, parsed and checked for shape (expressions are compiled later).
#[derive(Debug, Clone)]
pub(crate) struct PolicySpec {
    pub file: Arc<Path>,
    pub pos: Pos,
    pub name: String,
    pub description: Option<String>,
    pub on: Vec<Kind>,
    pub when: Option<Expr>,
    pub action: Action,
    pub priority: i64,
    pub reason: Option<String>,
    pub reason_expr: Option<Expr>,
    pub params: Params,
    /// For a Wasm policy: the plugin that decides the action (`action` is then absent).
    pub plugin: Option<PluginSpec>,
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

/// Finds the policy files under `dir` (recursively, sorted; `*.test.yaml` and hidden entries
/// are skipped). A file path is returned as is.
pub(crate) fn find_files(path: &Path, diags: &mut Vec<Diagnostic>) -> Vec<PathBuf> {
    find_matching(path, diags, "policy path", is_policy_file)
}

/// The files under `path` whose names satisfy `want` (recursively, sorted, hidden entries
/// skipped, at most [`MAX_DIR_DEPTH`] levels), or `path` itself if it is a file.
pub(crate) fn find_matching(
    path: &Path,
    diags: &mut Vec<Diagnostic>,
    what: &str,
    want: fn(&str) -> bool,
) -> Vec<PathBuf> {
    let mut out = Vec::new();
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => out.push(path.to_path_buf()),
        Ok(_) => walk(path, 0, &mut out, diags, want),
        Err(e) => diags.push(Diagnostic::new(
            path,
            Pos::FILE,
            format!("cannot read {what}: {e}"),
        )),
    }
    out.sort();
    out
}

fn walk(
    dir: &Path,
    depth: usize,
    out: &mut Vec<PathBuf>,
    diags: &mut Vec<Diagnostic>,
    want: fn(&str) -> bool,
) {
    if depth > MAX_DIR_DEPTH {
        diags.push(Diagnostic::new(
            dir,
            Pos::FILE,
            format!("directories nested deeper than {MAX_DIR_DEPTH} levels"),
        ));
        return;
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            diags.push(Diagnostic::new(
                dir,
                Pos::FILE,
                format!("cannot read directory: {e}"),
            ));
            return;
        }
    };
    for entry in entries.flatten() {
        let p = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let Ok(ft) = std::fs::metadata(&p) else {
            continue;
        };
        if ft.is_dir() {
            walk(&p, depth + 1, out, diags, want);
        } else if want(&name) {
            out.push(p);
        }
    }
}

/// `*.yaml` / `*.yml`, except test files `*.test.yaml` / `*.test.yml`.
pub fn is_policy_file(name: &str) -> bool {
    (name.ends_with(".yaml") || name.ends_with(".yml"))
        && !(name.ends_with(".test.yaml") || name.ends_with(".test.yml"))
}

/// Reads and parses one file's bytes into policy specs, pushing every problem to `diags`.
pub(crate) fn parse_file(
    file: &Path,
    bytes: &[u8],
    diags: &mut Vec<Diagnostic>,
) -> Vec<PolicySpec> {
    with_yaml_doc(
        file,
        bytes,
        diags,
        "policy file",
        "`policies:`",
        |cx, doc| {
            let mut out = Vec::new();
            cx.file_doc(doc, &mut out);
            out
        },
    )
    .unwrap_or_default()
}

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
            format!(
                "{what} is {} bytes; the limit is {} bytes (8 MiB)",
                bytes.len(),
                MAX_POLICY_FILE_BYTES
            ),
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
    if let Err(d) = precheck(file, text) {
        diags.push(d);
        return None;
    }
    let docs = match MarkedYaml::load_from_str(text) {
        Ok(d) => d,
        Err(e) => {
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

/// Rejects what the tree loader should never see: aliases (no billion laughs) and nesting
/// deeper than [`MAX_POLICY_DEPTH`] (no stack exhaustion).
fn precheck(file: &Path, text: &str) -> Result<(), Diagnostic> {
    let mut depth = 0usize;
    for ev in saphyr_parser::Parser::new_from_str(text) {
        let (ev, span) = match ev {
            Ok(e) => e,
            // Syntax errors are reported by the loader with the same position.
            Err(_) => return Ok(()),
        };
        let at = Pos {
            line: span.start.line(),
            column: span.start.col() + 1,
        };
        match ev {
            saphyr_parser::Event::SequenceStart(..) | saphyr_parser::Event::MappingStart(..) => {
                depth += 1;
                if depth > MAX_POLICY_DEPTH {
                    return Err(Diagnostic::new(
                        file,
                        at,
                        format!("YAML nested deeper than {MAX_POLICY_DEPTH} levels"),
                    ));
                }
            }
            saphyr_parser::Event::SequenceEnd | saphyr_parser::Event::MappingEnd => {
                depth = depth.saturating_sub(1);
            }
            saphyr_parser::Event::Alias(_) => {
                return Err(Diagnostic::new(
                    file,
                    at,
                    "YAML aliases (`*name`) are not allowed in policy files",
                ));
            }
            _ => {}
        }
    }
    Ok(())
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
    file: Arc<Path>,
    text: &'t str,
    chars: Option<Vec<char>>,
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

    fn file_doc(&mut self, doc: &MarkedYaml<'_>, out: &mut Vec<PolicySpec>) {
        let Some(entries) = self.map(doc, "the policy file", &["version", "policies"]) else {
            return;
        };
        let mut have_policies = false;
        for (key, _, v) in &entries {
            match key.as_str() {
                "version" => {
                    if let Some(ver) = self.int(v, "`version`", 1) {
                        if ver > FORMAT_VERSION {
                            self.err(
                                pos(v),
                                format!(
                                    "policy format version {ver} is newer than this Keel reads ({FORMAT_VERSION}); upgrade Keel"
                                ),
                            );
                        }
                    }
                }
                "policies" => {
                    have_policies = true;
                    match &v.data {
                        YamlData::Sequence(items) => {
                            for item in items {
                                if let Some(p) = self.policy(item) {
                                    out.push(p);
                                }
                            }
                        }
                        _ => self.err(
                            pos(v),
                            format!("`policies` must be a list, found {}", type_name(v)),
                        ),
                    }
                }
                _ => {}
            }
        }
        if !have_policies {
            self.err(pos(doc), "missing `policies:` list");
        }
    }

    fn policy(&mut self, n: &MarkedYaml<'_>) -> Option<PolicySpec> {
        const KEYS: &[&str] = &[
            "name",
            "description",
            "on",
            "when",
            "action",
            "priority",
            "reason",
            "reason_expr",
            "params",
            "plugin",
        ];
        let entries = self.map(n, "a policy", KEYS)?;
        let before = self.diags.len();
        let mut name = None;
        let mut description = None;
        let mut on = None;
        let mut when = None;
        let mut action = None;
        let mut action_node = None;
        let mut priority = 0;
        let mut reason = None;
        let mut reason_expr = None;
        let mut params_node = None;
        #[cfg_attr(not(feature = "plugins"), allow(unused_mut))]
        let mut plugin = None;
        for (key, _, v) in &entries {
            match key.as_str() {
                "name" => name = self.name(v),
                "description" => description = self.string(v, "`description`"),
                "on" => on = self.kinds(v),
                "when" => when = self.expr(v, "`when`"),
                "action" => {
                    action_node = Some(*v);
                    action = self.action(v);
                }
                "priority" => priority = self.int(v, "`priority`", i64::MIN).unwrap_or(0),
                "reason" => reason = self.string(v, "`reason`"),
                "reason_expr" => reason_expr = self.expr(v, "`reason_expr`"),
                "params" => params_node = Some(*v),
                #[cfg(not(feature = "plugins"))]
                "plugin" => self.err_help(
                    pos(v),
                    "Wasm plugin policies need the engine's `plugins` feature, which this build does not have",
                    Some("write the policy in CEL, or use a Keel build with plugins".into()),
                ),
                #[cfg(feature = "plugins")]
                "plugin" => plugin = self.plugin(v),
                _ => {}
            }
        }
        if name.is_none() && !entries.iter().any(|(k, _, _)| k == "name") {
            self.err(pos(n), "policy without `name`");
        }
        if on.is_none() && !entries.iter().any(|(k, _, _)| k == "on") {
            self.err_help(
                pos(n),
                "policy without `on`: list the event kinds it applies to",
                Some(
                    "e.g. `on: [maintenance]`; kinds are maintenance, health, operation_failure"
                        .into(),
                ),
            );
        }
        let is_plugin = entries.iter().any(|(k, _, _)| k == "plugin");
        if is_plugin {
            for (key, k, _) in &entries {
                if matches!(key.as_str(), "action" | "params" | "reason" | "reason_expr") {
                    self.err_help(
                        pos(k),
                        format!("a plugin policy cannot have `{key}`: its plugin decides the action, reason and params"),
                        Some("remove it, or write the policy in CEL without `plugin`".into()),
                    );
                }
            }
            if self.diags.len() == before {
                action = Some(Action::None);
            }
        } else if action_node.is_none() {
            self.err(pos(n), "policy without `action`");
        }
        if reason.is_some() && reason_expr.is_some() {
            self.err(pos(n), "give `reason` or `reason_expr`, not both");
        }
        let params = match (action, params_node) {
            (Some(a), Some(p)) => self.params(a, p),
            (_, None) => Some(Params::default()),
            (None, Some(_)) => None,
        };
        if self.diags.len() != before {
            // The policy is rejected for its shape; still report its expressions' problems,
            // so that one `keel check` shows everything.
            for e in [&when, &reason_expr].into_iter().flatten() {
                if let Err(problems) = crate::compile::compile(e) {
                    for p in problems {
                        self.err_help(e.pos_at(p.offset), p.message, p.help);
                    }
                }
            }
            return None;
        }
        Some(PolicySpec {
            file: self.file.clone(),
            pos: pos(n),
            name: name?,
            description,
            on: on?,
            when,
            action: action?,
            priority,
            reason,
            reason_expr,
            params: params?,
            plugin,
        })
    }

    /// A `plugin:` block: `{path, sha256?, config?, limits?: {deadline_ms, memory_mib}}`.
    #[cfg(feature = "plugins")]
    fn plugin(&mut self, n: &MarkedYaml<'_>) -> Option<PluginSpec> {
        let entries = self.map(n, "`plugin`", &["path", "sha256", "config", "limits"])?;
        let before = self.diags.len();
        let mut spec = PluginSpec {
            pos: pos(n),
            path: PathBuf::new(),
            path_pos: pos(n),
            sha256: None,
            config: serde_json::Value::Object(serde_json::Map::new()),
            config_pos: pos(n),
            deadline_ms: DEFAULT_PLUGIN_DEADLINE_MS,
            memory_mib: DEFAULT_PLUGIN_MEMORY_MIB,
        };
        let mut have_path = false;
        for (key, _, v) in &entries {
            match key.as_str() {
                "path" => {
                    if let Some(p) = self.string(v, "`plugin.path`") {
                        have_path = true;
                        let dir = self.file.parent().unwrap_or(Path::new(""));
                        spec.path = dir.join(p);
                        spec.path_pos = pos(v);
                    }
                }
                "sha256" => {
                    if let Some(h) = self.string(v, "`plugin.sha256`") {
                        let h = h.to_ascii_lowercase();
                        if h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()) {
                            spec.sha256 = Some((h, pos(v)));
                        } else {
                            self.err(pos(v), "`plugin.sha256` must be 64 hex digits");
                        }
                    }
                }
                "config" => {
                    spec.config_pos = pos(v);
                    if !matches!(v.data, YamlData::Mapping(_)) {
                        self.err(pos(v), "`plugin.config` must be a map");
                    } else {
                        spec.config = self.json(v, 0);
                    }
                }
                "limits" => {
                    let Some(limits) =
                        self.map(v, "`plugin.limits`", &["deadline_ms", "memory_mib"])
                    else {
                        continue;
                    };
                    for (key, _, l) in &limits {
                        let (what, max) = match key.as_str() {
                            "deadline_ms" => ("`limits.deadline_ms`", MAX_PLUGIN_DEADLINE_MS),
                            _ => ("`limits.memory_mib`", MAX_PLUGIN_MEMORY_MIB),
                        };
                        let Some(x) = self.int(l, what, 1) else {
                            continue;
                        };
                        if x > max {
                            self.err(pos(l), format!("{what} must be at most {max}, found {x}"));
                            continue;
                        }
                        let x = x.unsigned_abs();
                        match key.as_str() {
                            "deadline_ms" => spec.deadline_ms = x,
                            _ => spec.memory_mib = x,
                        }
                    }
                }
                _ => {}
            }
        }
        if !have_path && !entries.iter().any(|(k, _, _)| k == "path") {
            self.err_help(
                pos(n),
                "`plugin` without `path`",
                Some("e.g. `path: ../wasm-plugins/dist/maintenance-window.wasm` (relative to this file)".into()),
            );
        }
        (self.diags.len() == before).then_some(spec)
    }

    fn name(&mut self, n: &MarkedYaml<'_>) -> Option<String> {
        let s = self.string(n, "`name`")?;
        let ok = !s.is_empty()
            && s.len() <= 128
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/'));
        if !ok {
            self.err(
                pos(n),
                "a policy `name` is 1 to 128 characters of letters, digits and `.-_/`",
            );
            return None;
        }
        Some(s)
    }

    fn kinds(&mut self, n: &MarkedYaml<'_>) -> Option<Vec<Kind>> {
        let items: Vec<&MarkedYaml<'_>> = match &n.data {
            YamlData::Sequence(items) => items.iter().collect(),
            _ => vec![n],
        };
        if items.is_empty() {
            self.err(pos(n), "`on` must list at least one event kind");
            return None;
        }
        let mut kinds = Vec::new();
        let mut ok = true;
        for item in items {
            let Some(s) = self.string(item, "an `on` kind") else {
                ok = false;
                continue;
            };
            match Kind::parse(&s) {
                Some(k) if !kinds.contains(&k) => kinds.push(k),
                Some(_) => {}
                None => {
                    ok = false;
                    let help = did_you_mean(&s, crate::fields::kind_names())
                        .map(|k| format!("did you mean `{k}`?"))
                        .or_else(|| {
                            Some("kinds are maintenance, health, operation_failure".to_string())
                        });
                    self.err_help(pos(item), format!("unknown event kind `{s}` in `on`"), help);
                }
            }
        }
        ok.then_some(kinds)
    }

    fn action(&mut self, n: &MarkedYaml<'_>) -> Option<Action> {
        let s = self.string(n, "`action`")?;
        let a = Action::parse(&s);
        if a.is_none() {
            let names: Vec<&str> = Action::ALL.iter().map(|a| a.as_str()).collect();
            let help = did_you_mean(&s, names.iter().copied())
                .map(|k| format!("did you mean `{k}`?"))
                .or_else(|| Some(format!("actions are {}", names.join(", "))));
            self.err_help(pos(n), format!("unknown action `{s}`"), help);
        }
        a
    }

    fn params(&mut self, action: Action, n: &MarkedYaml<'_>) -> Option<Params> {
        let allowed: &[&str] = match action {
            Action::Retry | Action::RetryWithoutAgent => {
                &["delay_s", "max_attempts", "backoff", "vars"]
            }
            Action::Defer => &["until", "delay", "vars"],
            Action::Drain => &["deadline_s", "vars"],
            Action::Escalate => &["severity", "dedup", "vars"],
            Action::Acknowledge | Action::None => &["vars"],
        };
        let what = format!("`params` of a `{action}` policy");
        let entries = self.map(n, &what, allowed)?;
        let before = self.diags.len();
        let mut p = Params::default();
        for (key, _, v) in &entries {
            match key.as_str() {
                "delay_s" => p.delay_s = self.int(v, "`delay_s`", 0),
                "max_attempts" => p.max_attempts = self.int(v, "`max_attempts`", 1),
                "backoff" => {
                    p.backoff = match self.string(v, "`backoff`").as_deref() {
                        Some("fixed") => Some(Backoff::Fixed),
                        Some("exponential") => Some(Backoff::Exponential),
                        Some(other) => {
                            self.err(
                                pos(v),
                                format!("unknown backoff `{other}`: use fixed or exponential"),
                            );
                            None
                        }
                        None => None,
                    }
                }
                "deadline_s" => {
                    self.int(v, "`deadline_s`", 1);
                }
                "until" => p.until = self.expr(v, "`until`"),
                "delay" => p.delay = self.duration(v, "`delay`"),
                "severity" => {
                    if let Some(s) = self.string(v, "`severity`") {
                        p.severity = Severity::parse(&s);
                        if p.severity.is_none() {
                            self.err_help(
                                pos(v),
                                format!("unknown severity `{s}`"),
                                Some(format!("severities are {}", Severity::NAMES.join(", "))),
                            );
                        }
                    }
                }
                "dedup" => self.dedup(v, &mut p),
                "vars" if !matches!(v.data, YamlData::Mapping(_)) => {
                    self.err(pos(v), "`vars` must be a map");
                }
                _ => {}
            }
            p.json.insert(key.clone(), self.json(v, 0));
        }
        if action == Action::Defer && p.until.is_some() && p.delay.is_some() {
            self.err(pos(n), "give `until` or `delay` for a defer, not both");
        }
        (self.diags.len() == before).then_some(p)
    }

    fn dedup(&mut self, n: &MarkedYaml<'_>, p: &mut Params) {
        let Some(entries) = self.map(n, "`dedup`", &["by", "window"]) else {
            return;
        };
        for (key, _, v) in &entries {
            match key.as_str() {
                "by" => {
                    let YamlData::Sequence(items) = &v.data else {
                        self.err(pos(v), "`dedup.by` must be a list of event paths");
                        continue;
                    };
                    for item in items {
                        if let Some(s) = self.string(item, "a `dedup.by` path") {
                            p.dedup_by.push((s, pos(item)));
                        }
                    }
                }
                "window" => p.dedup_window_s = self.duration(v, "`dedup.window`"),
                _ => {}
            }
        }
    }

    /// A duration: an integer number of seconds, or a string such as `90s`, `15m`, `2h`, `1d`.
    pub(crate) fn duration(&mut self, n: &MarkedYaml<'_>, what: &str) -> Option<i64> {
        if let YamlData::Value(Scalar::Integer(i)) = &n.data {
            if *i > 0 {
                return Some(*i);
            }
        }
        if let Some(s) = scalar_str(n) {
            if let Some(secs) = parse_duration(&s) {
                return Some(secs);
            }
        }
        self.err_help(
            pos(n),
            format!("{what} must be a positive duration"),
            Some("write seconds as an integer, or a number with a unit: 90s, 15m, 2h, 1d".into()),
        );
        None
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

/// Parses `90`, `90s`, `15m`, `2h`, `1d` into seconds.
pub(crate) fn parse_duration(s: &str) -> Option<i64> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: i64 = num.parse().ok()?;
    let mul = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return None,
    };
    let secs = n.checked_mul(mul)?;
    (secs > 0).then_some(secs)
}
