//! Policy files: YAML with positions, validated into [`PolicySpec`]s before anything runs.
//!
//! The format (README, "Writing policies"): a top-level map with an optional `version` (1) and a
//! `policies` list. Every problem in every file is collected (not only the first), each with
//! file:line:column; a set with any problem is rejected as a whole.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use saphyr::{MarkedYaml, YamlData};

use crate::decision::{Action, Severity};
use crate::diag::{Diagnostic, Pos};
use crate::event::Kind;
use crate::expr::Expr;
use crate::fields::did_you_mean;
use crate::yaml::{pos, scalar_str, type_name, with_yaml_doc, Cx};

const MAX_DIR_DEPTH: usize = 32;

/// The newest policy-file format version this engine reads.
pub const FORMAT_VERSION: i64 = 1;

/// The keys a policy may have, in the order the documentation (and `keel fmt`) gives them.
pub const POLICY_KEYS: &[&str] = &[
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
        Ok(_) => {
            walk(path, 0, &mut out, diags, want);
            confine(path, &mut out, diags);
        }
        Err(e) => diags.push(Diagnostic::new(
            path,
            Pos::FILE,
            format!("cannot read {what}: {e}"),
        )),
    }
    out.sort();
    out
}

/// Drops, with an error, the files found under the directory `root` that are symbolic links
/// (or lie under ones) to something outside it: whoever may write a policy directory must not
/// make Keel read, and quote in its diagnostics, a file elsewhere (`x.yaml` -> `/etc/shadow`).
/// Links within it stay (a Kubernetes ConfigMap mounts each file as a link into a hidden
/// directory beside it).
fn confine(root: &Path, found: &mut Vec<PathBuf>, diags: &mut Vec<Diagnostic>) {
    let Ok(real_root) = std::fs::canonicalize(root) else {
        return;
    };
    found.retain(|f| match std::fs::canonicalize(f) {
        Ok(real) if real.starts_with(&real_root) => true,
        Ok(_) => {
            diags.push(Diagnostic::new(
                f,
                Pos::FILE,
                format!(
                    "a symbolic link to a file outside `{}`: not read",
                    crate::diag::escape(&root.display().to_string())
                ),
            ));
            false
        }
        Err(e) => {
            diags.push(Diagnostic::new(f, Pos::FILE, format!("cannot read: {e}")));
            false
        }
    });
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
            // A FIFO or a device named `*.yaml` is read as what it is, a file that is not a
            // regular file: [`read_regular`] says so.
            out.push(p);
        }
    }
}

/// Reads a file that a policy set or a test file names: only a regular file (a FIFO would
/// block the reader, `/dev/zero` would never end), and at most `max` bytes plus one, so that
/// the caller's size check sees that it is too large without the whole of it in memory.
pub(crate) fn read_regular(path: &Path, max: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1))
        .read_to_end(&mut bytes)?;
    Ok(bytes)
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

/// What [`parse_walked_file`] found.
pub(crate) enum Walked {
    /// A policy file (or one meant to be, with its problems in the diagnostics).
    Policies(Vec<PolicySpec>),
    /// YAML that is not a policy file: its top level is a map with none of a policy file's
    /// keys (`policies`, `version`) nor a near miss of them (`polices:` is a mistake, not
    /// another kind of file).
    Foreign,
}

/// Parses a file found by walking a policy directory: like [`parse_file`], but YAML that is
/// plainly not a policy file (a `keel.yaml`, a Kubernetes manifest kept beside the policies)
/// is [`Walked::Foreign`] instead of an error.
pub(crate) fn parse_walked_file(file: &Path, bytes: &[u8], diags: &mut Vec<Diagnostic>) -> Walked {
    with_yaml_doc(
        file,
        bytes,
        diags,
        "policy file",
        "`policies:`",
        |cx, doc| {
            if is_foreign(doc) {
                return Walked::Foreign;
            }
            let mut out = Vec::new();
            cx.file_doc(doc, &mut out);
            Walked::Policies(out)
        },
    )
    .unwrap_or(Walked::Policies(Vec::new()))
}

/// A top-level map with none of a policy file's keys, nor a near miss of one.
fn is_foreign(doc: &MarkedYaml<'_>) -> bool {
    const KEYS: &[&str] = &["version", "policies"];
    let YamlData::Mapping(m) = &doc.data else {
        return false;
    };
    !m.is_empty()
        && m.iter().all(|(k, _)| {
            scalar_str(k).is_some_and(|k| {
                !KEYS.contains(&k.as_ref()) && did_you_mean(&k, KEYS.iter().copied()).is_none()
            })
        })
}

impl Cx<'_, '_> {
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
        let entries = self.map(n, "a policy", POLICY_KEYS)?;
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

    /// A positive duration in whole seconds: an integer number of seconds, or a string in
    /// [`crate::parse_duration`]'s grammar such as `90s`, `15m`, `1m30s`, `2h`, `1d`.
    pub(crate) fn duration(&mut self, n: &MarkedYaml<'_>, what: &str) -> Option<i64> {
        let message = match scalar_str(n).map(|s| duration_secs(&s)) {
            Some(Ok(secs)) if secs > 0 => return Some(secs),
            Some(Ok(_)) => format!("{what} must be a positive duration, not zero"),
            Some(Err(e)) => format!("{what} must be a positive duration: {e}"),
            None => format!("{what} must be a positive duration"),
        };
        self.err_help(
            pos(n),
            message,
            Some(
                "write seconds as an integer, or numbers with units (ms, s, m, h, d): \
                 90s, 15m, 1m30s, 2h, 1d"
                    .into(),
            ),
        );
        None
    }
}

/// A duration of a policy or a test file in whole seconds: [`crate::parse_duration`]'s
/// grammar, at a second's resolution (milliseconds must make whole seconds, as in `2000ms`).
pub(crate) fn duration_secs(s: &str) -> Result<i64, String> {
    let d = crate::parse_duration(s).map_err(|e| e.to_string())?;
    let named = || crate::escape(s.trim());
    if d.subsec_nanos() != 0 {
        return Err(format!(
            "`{}` is not a whole number of seconds (durations here have a second's resolution)",
            named()
        ));
    }
    i64::try_from(d.as_secs()).map_err(|_| format!("`{}` is too large", named()))
}
