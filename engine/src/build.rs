//! [`EngineBuilder`]: loading a policy set, plugin loading and the compile of the set.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::compile::{self, Compiled, Ty};
use crate::decision::{Action, SharedStr};
use crate::diag::LoadError;
use crate::diag::{Diagnostic, Pos};
use crate::engine::{Engine, Policy};
use crate::expr::Expr;
use crate::fields;
use crate::policy::{self, PolicySpec};

/// Builds an [`Engine`] from policy files and sources.
#[derive(Debug, Default)]
pub struct EngineBuilder {
    inputs: Vec<Input>,
    default_action: Option<Action>,
    mutation: Option<Mutation>,
    guards: Option<crate::guard::GuardConfig>,
    #[cfg(feature = "plugins")]
    plugin_cache: Option<Option<crate::plugin::PluginCache>>,
}

/// A deliberate change to one policy, used by `keel test --mutate` to prove that test cases
/// are not vacuous: with any one policy disabled or never matching, some case must fail.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mutation {
    /// Leave the named policy out.
    Disable(String),
    /// Keep the named policy, but make its `when` always false.
    ForceFalse(String),
}

#[derive(Debug)]
enum Input {
    Path(PathBuf),
    /// A file held in memory: its name in diagnostics, its name in the digest, its text, and
    /// whether it was found in a tree ([`EngineBuilder::add_tree`]) rather than given.
    Source(PathBuf, PathBuf, String, bool),
}

impl EngineBuilder {
    /// Adds every policy file below `dir` (recursively; `*.test.yaml` files are skipped), or
    /// the file itself if `dir` is a file.
    pub fn add_path(mut self, dir: impl Into<PathBuf>) -> Self {
        self.inputs.push(Input::Path(dir.into()));
        self
    }

    /// Adds policy YAML held in memory; `name` is used in diagnostics.
    pub fn add_source(mut self, name: impl Into<PathBuf>, yaml: impl Into<String>) -> Self {
        let name = name.into();
        self.inputs
            .push(Input::Source(name.clone(), name, yaml.into(), false));
        self
    }

    /// Adds a directory tree held in memory, as [`add_path`](Self::add_path) would read it
    /// from disk: `files` are `(path relative to the tree's root, content)`; the policy files
    /// among them (`*.yaml`, `*.yml`, not `*.test.yaml`, no hidden component) are loaded in
    /// the order `add_path` reads them, named `root/<relative path>` in diagnostics. The
    /// digest names each file by its relative path, as `add_path` does, so a tree and an
    /// identical copy of it on disk have the same digest wherever either lives.
    pub fn add_tree<P: Into<PathBuf>, T: Into<String>>(
        mut self,
        root: impl Into<PathBuf>,
        files: impl IntoIterator<Item = (P, T)>,
    ) -> Self {
        let root = root.into();
        let mut files: Vec<(PathBuf, String)> = files
            .into_iter()
            .map(|(p, t)| (p.into(), t.into()))
            .filter(|(p, _)| {
                let hidden = p
                    .components()
                    .any(|c| c.as_os_str().to_string_lossy().starts_with('.'));
                let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
                !hidden && name.is_some_and(|n| policy::is_policy_file(&n))
            })
            .collect();
        files.sort_by(|a, b| a.0.cmp(&b.0));
        for (rel, text) in files {
            self.inputs
                .push(Input::Source(root.join(&rel), rel, text, true));
        }
        self
    }

    /// The action when no policy matches (default `none`). `escalate` is not allowed here.
    pub fn default_action(mut self, action: Action) -> Self {
        self.default_action = Some(action);
        self
    }

    /// Where compiled Wasm plugins are cached (`None`: no disk cache), with the key in
    /// `<dir>.key` beside it: `plugin_cache(dir.map(PluginCache::new))`. The default is
    /// `$KEEL_PLUGIN_CACHE`, else `$XDG_CACHE_HOME/keel/plugins`, else
    /// `$HOME/.cache/keel/plugins`. See [`PluginCache`](crate::PluginCache) for the checks.
    #[cfg(feature = "plugins")]
    pub fn plugin_cache_dir(self, dir: Option<PathBuf>) -> Self {
        self.plugin_cache(dir.map(crate::plugin::PluginCache::new))
    }

    /// Where compiled Wasm plugins are cached and which key authenticates the entries
    /// (`None`: no disk cache). Only the running user may write the cache: a directory or
    /// key that fails the checks of [`PluginCache`](crate::PluginCache) is not used (see
    /// [`Engine::plugin_warnings`]), and an entry that fails them is rebuilt, never loaded.
    #[cfg(feature = "plugins")]
    pub fn plugin_cache(mut self, cache: Option<crate::plugin::PluginCache>) -> Self {
        self.plugin_cache = Some(cache);
        self
    }

    /// The blast-radius guards (storm, retry budget, flap) that [`Engine::decide`] applies
    /// after resolution; default [`GuardConfig::default`](crate::GuardConfig::default), all
    /// on. [`GuardConfig::off`](crate::GuardConfig::off) turns them off.
    pub fn guards(mut self, guards: crate::guard::GuardConfig) -> Self {
        self.guards = Some(guards);
        self
    }

    /// Applies a [`Mutation`] to the set (for mutation testing).
    pub fn mutation(mut self, m: Mutation) -> Self {
        self.mutation = Some(m);
        self
    }

    /// Loads, validates, compiles and indexes everything. Every problem in every file is
    /// reported; nothing is half-applied.
    pub fn build(self) -> Result<Engine, LoadError> {
        // The `cel` parser recurses deeply (about 170 KiB of stack per bracket level in a
        // debug build); load on a thread with a stack that any accepted expression fits in,
        // whatever the caller's thread has. Targets without threads load in place.
        #[cfg(not(target_family = "wasm"))]
        {
            let spawned = std::thread::Builder::new()
                .name("keel-load".into())
                .stack_size(LOAD_STACK)
                .spawn(move || self.build_here());
            match spawned {
                Ok(h) => h.join().unwrap_or_else(|_| {
                    Err(LoadError::new(vec![Diagnostic::new(
                        Path::new("<engine>"),
                        Pos::FILE,
                        "internal error: the policy loader panicked",
                    )]))
                }),
                Err(e) => Err(LoadError::new(vec![Diagnostic::new(
                    Path::new("<engine>"),
                    Pos::FILE,
                    format!("cannot start the policy loader thread: {e}"),
                )])),
            }
        }
        #[cfg(target_family = "wasm")]
        {
            self.build_here()
        }
    }

    fn build_here(self) -> Result<Engine, LoadError> {
        let mut diags = Vec::new();
        let mut warnings = Vec::new();
        let mut specs = Vec::new();
        let mut digest = Sha256::new();
        for input in &self.inputs {
            match input {
                Input::Path(p) => {
                    let files = policy::find_files(p, &mut diags);
                    if files.is_empty() && diags.is_empty() {
                        diags.push(Diagnostic::new(
                            p,
                            Pos::FILE,
                            "no policy files (*.yaml, *.yml) found",
                        ));
                    }
                    let (total, mut skipped) = (files.len(), 0);
                    for f in files {
                        match policy::read_regular(&f, crate::yaml::MAX_POLICY_FILE_BYTES) {
                            // The path itself, when it is a file: that file was meant.
                            Ok(bytes) if f == *p => {
                                digest_file(&mut digest, &relative(p, &f), &bytes);
                                specs.extend(policy::parse_file(&f, &bytes, &mut diags));
                            }
                            Ok(bytes) => {
                                let name = relative(p, &f);
                                let found = (f.as_path(), name.as_path(), &bytes[..]);
                                if !walked(
                                    found,
                                    &mut digest,
                                    &mut specs,
                                    &mut diags,
                                    &mut warnings,
                                ) {
                                    skipped += 1;
                                }
                            }
                            Err(e) => diags.push(Diagnostic::new(
                                &f,
                                Pos::FILE,
                                format!("cannot read: {e}"),
                            )),
                        }
                    }
                    if total > 0 && skipped == total {
                        diags.push(Diagnostic::new(
                            p,
                            Pos::FILE,
                            if total == 1 {
                                "no policy files found: the YAML file here is not a policy file"
                                    .to_string()
                            } else {
                                format!("no policy files found: the {total} YAML files here are not policy files")
                            },
                        ));
                    }
                }
                Input::Source(name, digest_name, text, true) => {
                    let found = (name.as_path(), digest_name.as_path(), text.as_bytes());
                    walked(found, &mut digest, &mut specs, &mut diags, &mut warnings);
                }
                Input::Source(name, digest_name, text, false) => {
                    digest_file(&mut digest, digest_name, text.as_bytes());
                    specs.extend(policy::parse_file(name, text.as_bytes(), &mut diags));
                }
            }
        }
        if self.inputs.is_empty() {
            diags.push(Diagnostic::new(
                Path::new("<engine>"),
                Pos::FILE,
                "no policies given",
            ));
        }
        let default_action = self.default_action.unwrap_or(Action::None);
        if default_action == Action::Escalate {
            diags.push(Diagnostic::new(
                Path::new("<engine>"),
                Pos::FILE,
                "the default action cannot be `escalate`",
            ));
        }
        #[cfg(feature = "plugins")]
        let mut plugins = Plugins {
            cache: self
                .plugin_cache
                .clone()
                .unwrap_or_else(crate::plugin::default_cache),
            runtime: None,
            count: 0,
        };
        #[cfg(not(feature = "plugins"))]
        let mut plugins = Plugins;
        let mut policies = compile_all(specs, &mut diags, &mut warnings, &mut plugins);
        match &self.mutation {
            Some(Mutation::Disable(name)) => policies.retain(|p| p.spec.name != *name),
            Some(Mutation::ForceFalse(name)) => {
                for p in policies.iter_mut().filter(|p| p.spec.name == *name) {
                    let never = Expr {
                        text: "false".into(),
                        positions: Arc::from(vec![Pos::default(); 6]),
                    };
                    p.when = compile::compile(&never).ok();
                }
            }
            None => {}
        }
        if !diags.is_empty() {
            diags.sort_by(|a, b| {
                (a.file(), a.line(), a.column()).cmp(&(b.file(), b.line(), b.column()))
            });
            return Err(LoadError::new(diags));
        }
        let digest = hex::encode(digest.finalize());
        let mut engine = Engine::index(policies, default_action, digest);
        engine.guards = self.guards.clone().unwrap_or_default();
        warnings.sort_by(|a, b| {
            (a.file(), a.line(), a.column()).cmp(&(b.file(), b.line(), b.column()))
        });
        engine.warnings = warnings;
        #[cfg(feature = "plugins")]
        {
            engine.runtime = plugins.runtime;
        }
        #[cfg(not(feature = "plugins"))]
        let _ = &mut engine;
        Ok(engine)
    }
}

/// What loading plugin policies needs: a wasmtime runtime, made on first use.
#[cfg(feature = "plugins")]
struct Plugins {
    cache: Option<crate::plugin::PluginCache>,
    runtime: Option<Arc<crate::plugin::Runtime>>,
    count: usize,
}

#[cfg(not(feature = "plugins"))]
struct Plugins;

#[cfg(feature = "plugins")]
impl Plugins {
    fn load(
        &mut self,
        spec: &PolicySpec,
        ps: &policy::PluginSpec,
        diags: &mut Vec<Diagnostic>,
    ) -> Option<crate::plugin::Plugin> {
        let rt = match &self.runtime {
            Some(rt) => rt.clone(),
            None => match crate::plugin::Runtime::new(self.cache.clone()) {
                Ok(rt) => {
                    let rt = Arc::new(rt);
                    self.runtime = Some(rt.clone());
                    rt
                }
                Err(e) => {
                    diags.push(Diagnostic::new(&spec.file, ps.pos, e));
                    return None;
                }
            },
        };
        self.count += 1;
        if self.count > crate::plugin::MAX_PLUGIN_POLICIES {
            diags.push(Diagnostic::new(
                &spec.file,
                ps.pos,
                format!(
                    "policy `{}`: a policy set holds at most {} plugin policies",
                    spec.name,
                    crate::plugin::MAX_PLUGIN_POLICIES
                ),
            ));
            return None;
        }
        match crate::plugin::load(&rt, ps) {
            Ok(p) => Some(p),
            Err(f) => {
                let at = if f.in_config {
                    ps.config_pos
                } else {
                    ps.path_pos
                };
                diags.push(
                    Diagnostic::new(
                        &spec.file,
                        at,
                        format!("policy `{}`: {}", spec.name, f.message),
                    )
                    .with_help(f.help),
                );
                None
            }
        }
    }
}

/// A file found by walking a directory (its name, its name in the digest, its bytes), parsed
/// leniently: YAML that is plainly not a policy file is skipped with a warning, and left out
/// of the digest. Whether it was taken as a policy file.
fn walked(
    (file, digest_name, bytes): (&Path, &Path, &[u8]),
    digest: &mut Sha256,
    specs: &mut Vec<PolicySpec>,
    diags: &mut Vec<Diagnostic>,
    warnings: &mut Vec<Diagnostic>,
) -> bool {
    match policy::parse_walked_file(file, bytes, diags) {
        policy::Walked::Policies(found) => {
            digest_file(digest, digest_name, bytes);
            specs.extend(found);
            true
        }
        policy::Walked::Foreign => {
            warnings.push(
            Diagnostic::new(
                file,
                Pos::FILE,
                "not a policy file (no `policies:` at its top level): skipped",
            )
            .with_help(Some(
                "policy files hold a `policies:` list; keep other YAML out of the policy directory to silence this"
                    .into(),
            )),
            );
            false
        }
    }
}

/// `file`'s name in the digest: relative to the directory `root` it was found under (its own
/// file name when `root` is the file), so a set's digest does not depend on where it lives.
fn relative(root: &Path, file: &Path) -> PathBuf {
    match file.strip_prefix(root) {
        Ok(rel) if !rel.as_os_str().is_empty() => rel.to_path_buf(),
        _ => file
            .file_name()
            .map_or_else(|| file.to_path_buf(), PathBuf::from),
    }
}

fn digest_file(d: &mut Sha256, name: &Path, bytes: &[u8]) {
    // Components joined by `/` whatever the platform's separator.
    let name: Vec<String> = name
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    d.update(name.join("/").as_bytes());
    d.update([0]);
    d.update((bytes.len() as u64).to_le_bytes());
    d.update(bytes);
}

/// The stack of a thread that parses CEL: the `cel` parser recurses deeply (about 170 KiB
/// per bracket level in a debug build), and any accepted expression must fit.
#[cfg(not(target_family = "wasm"))]
const LOAD_STACK: usize = 64 << 20;

/// What compiling a policy's `when`, `reason_expr` and `params.until` gave.
type Parsed = [Option<Result<Compiled, Vec<compile::ExprProblem>>>; 3];

fn parse_one(s: &PolicySpec) -> Parsed {
    [
        s.when.as_ref().map(compile::compile),
        s.reason_expr.as_ref().map(compile::compile),
        s.params.until.as_ref().map(compile::compile),
    ]
}

/// Compiles every policy's expressions, on as many threads as the machine has cores (up to
/// 8) for sets large enough to be worth it: parsing CEL is most of a load's time, and the
/// policies are independent. The results come back in the policies' order, so diagnostics
/// do not depend on the threads. Without threads (or if one cannot start), in place.
fn parse_all(specs: &[PolicySpec]) -> Vec<Parsed> {
    #[cfg(not(target_family = "wasm"))]
    {
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
        if workers > 1 && specs.len() >= 64 {
            let chunk = specs.len().div_ceil(workers);
            let parsed = std::thread::scope(|sc| {
                let handles: Vec<_> = specs
                    .chunks(chunk)
                    .map(|c| {
                        std::thread::Builder::new()
                            .name("keel-load".into())
                            .stack_size(LOAD_STACK)
                            .spawn_scoped(sc, move || c.iter().map(parse_one).collect::<Vec<_>>())
                    })
                    .collect();
                let mut out = Vec::with_capacity(specs.len());
                for h in handles {
                    out.extend(h.ok()?.join().ok()?);
                }
                Some(out)
            });
            if let Some(parsed) = parsed {
                return parsed;
            }
        }
    }
    specs.iter().map(parse_one).collect()
}

fn compile_expr(
    spec: &PolicySpec,
    e: &Expr,
    parsed: Option<Result<Compiled, Vec<compile::ExprProblem>>>,
    want: Option<Ty>,
    what: &str,
    diags: &mut Vec<Diagnostic>,
) -> Option<Compiled> {
    match parsed.unwrap_or_else(|| compile::compile(e)) {
        Ok(c) => {
            if let (Some(want), Some(got)) = (want, c.ty) {
                if want != got {
                    diags.push(Diagnostic::new(
                        &spec.file,
                        e.pos_at(0),
                        format!(
                            "{what} must be a {}, but this expression is a {}",
                            want.name(),
                            got.name()
                        ),
                    ));
                    return None;
                }
            }
            Some(c)
        }
        Err(problems) => {
            for p in problems {
                diags.push(
                    Diagnostic::new(&spec.file, e.pos_at(p.offset), p.message).with_help(p.help),
                );
            }
            None
        }
    }
}

/// Warns of each read of a kind's own section (`event.failure.…`) in a policy that is not
/// `on:` that kind: such a read is always absent there, so the test around it never holds
/// (or always does, under `!`): usually a policy written for another kind.
fn warn_absent_sections(
    spec: &PolicySpec,
    e: &Expr,
    c: &compile::Compiled,
    warnings: &mut Vec<Diagnostic>,
) {
    let mut placed = None;
    for r in c.sections.iter().filter(|r| !spec.on.contains(&r.kind)) {
        let on: Vec<&str> = spec.on.iter().map(|k| k.as_str()).collect();
        // Loads parse without positions; the rare warning parses again to place itself.
        let offset = placed
            .get_or_insert_with(|| compile::placed_sections(&e.text))
            .iter()
            .find(|p| p.path == r.path)
            .map_or(r.offset, |p| p.offset);
        warnings.push(
            Diagnostic::new(
                &spec.file,
                e.pos_at(offset),
                format!(
                    "policy `{}` reads `event.{}`, which only `{}` events have, but it is `on: [{}]`: here it is always absent",
                    spec.name,
                    r.path,
                    r.kind.as_str(),
                    on.join(", ")
                ),
            )
            .with_help(Some(format!(
                "add `{}` to `on:`, or read a field the policy's kinds have",
                r.kind.as_str()
            ))),
        );
    }
}

fn compile_all(
    specs: Vec<PolicySpec>,
    diags: &mut Vec<Diagnostic>,
    warnings: &mut Vec<Diagnostic>,
    plugins: &mut Plugins,
) -> Vec<Policy> {
    let mut seen: HashMap<String, (Arc<Path>, Pos)> = HashMap::new();
    let mut out = Vec::new();
    let parsed = parse_all(&specs);
    for (spec, [when, reason_expr, until]) in specs.into_iter().zip(parsed) {
        if let Some((file, pos)) = seen.get(&spec.name) {
            diags.push(Diagnostic::new(
                &spec.file,
                spec.pos,
                format!(
                    "duplicate policy name `{}` (first defined at {}:{}:{})",
                    spec.name,
                    file.display(),
                    pos.line,
                    pos.column
                ),
            ));
            continue;
        }
        seen.insert(spec.name.clone(), (spec.file.clone(), spec.pos));
        let before = diags.len();
        let when = spec
            .when
            .as_ref()
            .and_then(|e| compile_expr(&spec, e, when, Some(Ty::Bool), "`when`", diags));
        let reason_expr = spec.reason_expr.as_ref().and_then(|e| {
            compile_expr(&spec, e, reason_expr, Some(Ty::Str), "`reason_expr`", diags)
        });
        let until =
            spec.params.until.as_ref().and_then(|e| {
                compile_expr(&spec, e, until, Some(Ty::Time), "`params.until`", diags)
            });
        for (e, c) in [
            (spec.when.as_ref(), when.as_ref()),
            (spec.reason_expr.as_ref(), reason_expr.as_ref()),
            (spec.params.until.as_ref(), until.as_ref()),
        ] {
            if let (Some(e), Some(c)) = (e, c) {
                warn_absent_sections(&spec, e, c, warnings);
            }
        }
        if spec.action == Action::Defer
            && spec.params.until.is_none()
            && spec.params.delay.is_none()
        {
            diags.push(
                Diagnostic::new(
                    &spec.file,
                    spec.pos,
                    "a `defer` policy needs `params.until` or `params.delay`",
                )
                .with_help(Some("e.g. `params: { delay: 15m }`".into())),
            );
        }
        let mut dedup_by = Vec::new();
        for (path, pos) in &spec.params.dedup_by {
            let p = path.strip_prefix("event.").unwrap_or(path);
            match fields::lookup(p) {
                Some(f) => dedup_by.push(f),
                None => {
                    let parent = p.rsplit_once('.').map(|(a, _)| a).unwrap_or("");
                    let last = p.rsplit('.').next().unwrap_or(p);
                    let help = fields::did_you_mean(last, fields::children(parent)).map(|s| {
                        let full = if parent.is_empty() {
                            s.to_string()
                        } else {
                            format!("{parent}.{s}")
                        };
                        format!("did you mean `{full}`?")
                    });
                    diags.push(
                        Diagnostic::new(
                            &spec.file,
                            *pos,
                            format!("unknown event path `{path}` in `dedup.by`"),
                        )
                        .with_help(help),
                    );
                }
            }
        }
        if spec.params.dedup_by.is_empty() {
            dedup_by.extend(fields::lookup("resource.id"));
        }
        #[cfg(feature = "plugins")]
        let plugin = match &spec.plugin {
            Some(ps) if diags.len() == before => plugins.load(&spec, ps, diags),
            _ => None,
        };
        #[cfg(not(feature = "plugins"))]
        let _ = &plugins;
        if diags.len() == before {
            out.push(Policy {
                name: SharedStr::interned(spec.name.as_str()),
                reason: spec.reason.as_deref().map(SharedStr::interned),
                fallback_reason: SharedStr::interned(
                    spec.description.as_deref().unwrap_or(spec.name.as_str()),
                ),
                spec,
                when,
                reason_expr,
                until,
                dedup_by,
                #[cfg(feature = "plugins")]
                plugin,
            });
        }
    }
    out
}

impl Engine {
    /// A builder.
    pub fn builder() -> EngineBuilder {
        EngineBuilder::default()
    }

    /// Loads every policy file below `dir`.
    pub fn from_dir(dir: impl Into<PathBuf>) -> Result<Engine, LoadError> {
        Engine::builder().add_path(dir).build()
    }
}
