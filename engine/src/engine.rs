//! [`Engine`]: a loaded, validated, indexed policy set, and [`Engine::decide`].

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::Duration;
use sha2::{Digest, Sha256};

use crate::compile::{self, Compiled, Ty, V};
use crate::decision::{
    Action, Ctx, Decision, Escalation, Matched, Mode, Outcome, PolicyError, Retry, Severity,
    TraceEntry,
};
use crate::diag::{Diagnostic, Pos};
use crate::event::{Event, Kind, Timestamp};
use crate::fields::{self, FieldId, FieldValue};
use crate::history::History;
use crate::policy::{self, Backoff, Expr, LoadError, PolicySpec};

/// Default escalation dedup window: one hour.
pub const DEFAULT_DEDUP_WINDOW_S: i64 = 3600;

/// Builds an [`Engine`] from policy files and sources.
#[derive(Debug, Default)]
pub struct EngineBuilder {
    inputs: Vec<Input>,
    default_action: Option<Action>,
    mutation: Option<Mutation>,
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
    Source(PathBuf, String),
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
        self.inputs.push(Input::Source(name.into(), yaml.into()));
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
            const LOAD_STACK: usize = 64 << 20;
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
                    for f in files {
                        match std::fs::read(&f) {
                            Ok(bytes) => {
                                digest_file(&mut digest, &f, &bytes);
                                specs.extend(policy::parse_file(&f, &bytes, &mut diags));
                            }
                            Err(e) => diags.push(Diagnostic::new(
                                &f,
                                Pos::FILE,
                                format!("cannot read: {e}"),
                            )),
                        }
                    }
                }
                Input::Source(name, text) => {
                    digest_file(&mut digest, name, text.as_bytes());
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
        let mut policies = compile_all(specs, &mut diags, &mut plugins);
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
        let digest = hex(&digest.finalize());
        let mut engine = Engine::index(policies, default_action, digest);
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

fn digest_file(d: &mut Sha256, name: &Path, bytes: &[u8]) {
    d.update(name.to_string_lossy().as_bytes());
    d.update([0]);
    d.update((bytes.len() as u64).to_le_bytes());
    d.update(bytes);
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// One compiled policy.
#[derive(Debug)]
struct Policy {
    spec: PolicySpec,
    when: Option<Compiled>,
    reason_expr: Option<Compiled>,
    until: Option<Compiled>,
    dedup_by: Vec<FieldId>,
    #[cfg(feature = "plugins")]
    plugin: Option<crate::plugin::Plugin>,
}

impl Policy {
    fn is_plugin(&self) -> bool {
        self.spec.plugin.is_some()
    }

    /// The severity the policy ranks with: a plugin's action is known only after the call,
    /// so a plugin policy ranks as if it drained (and is always evaluated).
    fn rank_severity(&self) -> u8 {
        if self.is_plugin() {
            Action::Drain.severity()
        } else {
            self.spec.action.severity()
        }
    }

    fn reads(&self) -> impl Iterator<Item = &Option<FieldId>> {
        [&self.when, &self.reason_expr, &self.until]
            .into_iter()
            .flatten()
            .filter(|c| c.native.is_none())
            .flat_map(|c| c.reads.iter())
    }
}

fn compile_expr(
    spec: &PolicySpec,
    e: &Expr,
    want: Option<Ty>,
    what: &str,
    diags: &mut Vec<Diagnostic>,
) -> Option<Compiled> {
    match compile::compile(e) {
        Ok(c) => {
            if let (Some(want), Some(got)) = (want, c.ty) {
                if want != got {
                    diags.push(Diagnostic::new(
                        &spec.file,
                        e.pos_at(0),
                        format!(
                            "{what} must be a {}, but this expression is a {}",
                            ty_name(want),
                            ty_name(got)
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

fn ty_name(t: Ty) -> &'static str {
    match t {
        Ty::Bool => "bool",
        Ty::Str => "string",
        Ty::Time => "timestamp",
        Ty::Int => "int",
        Ty::UInt => "uint",
        Ty::Double => "double",
        Ty::Dur => "duration",
        Ty::Null => "null",
    }
}

fn compile_all(
    specs: Vec<PolicySpec>,
    diags: &mut Vec<Diagnostic>,
    plugins: &mut Plugins,
) -> Vec<Policy> {
    let mut seen: HashMap<String, (Arc<Path>, Pos)> = HashMap::new();
    let mut out = Vec::new();
    for spec in specs {
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
            .and_then(|e| compile_expr(&spec, e, Some(Ty::Bool), "`when`", diags));
        let reason_expr = spec
            .reason_expr
            .as_ref()
            .and_then(|e| compile_expr(&spec, e, Some(Ty::Str), "`reason_expr`", diags));
        let until = spec
            .params
            .until
            .as_ref()
            .and_then(|e| compile_expr(&spec, e, Some(Ty::Time), "`params.until`", diags));
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

/// The candidates for one event kind.
#[derive(Debug, Default)]
struct KindIndex {
    /// Policies with no usable index atom, in rank order.
    always: Vec<u32>,
    /// For each indexed field, value → policies (in rank order).
    by_field: Vec<(FieldId, HashMap<String, Vec<u32>>)>,
    /// Event paths the interpreter needs for this kind's fallback policies.
    reads: BTreeSet<Option<FieldId>>,
}

/// A loaded policy set. Build it once (with [`Engine::builder`] or [`Engine::from_dir`]),
/// share it behind an `Arc`, and call [`Engine::decide`] from any thread: it does no I/O,
/// reads no clock and keeps no state.
pub struct Engine {
    /// Policies sorted by rank: priority (desc), action severity (desc), name.
    policies: Vec<Policy>,
    kinds: [KindIndex; 3],
    default_action: Action,
    env: Arc<cel::Env>,
    digest: String,
    /// The wasmtime runtime of the plugin policies (with its epoch thread), if any.
    #[cfg(feature = "plugins")]
    runtime: Option<Arc<crate::plugin::Runtime>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("policies", &self.policies.len())
            .field("default_action", &self.default_action)
            .field("digest", &self.digest)
            .finish()
    }
}

/// What a caller may know about a loaded policy.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PolicyInfo {
    /// The policy's name.
    pub name: String,
    /// Its description.
    pub description: Option<String>,
    /// Its action.
    pub action: Action,
    /// Its priority.
    pub priority: i64,
    /// The event kinds it applies to.
    pub on: Vec<Kind>,
    /// The file it is defined in.
    pub file: PathBuf,
    /// The 1-based line of its definition.
    pub line: usize,
    /// Whether its `when` runs natively (true) or in the CEL interpreter.
    pub native: bool,
    /// For a Wasm plugin policy: its component, resolved against the policy file.
    pub plugin: Option<PathBuf>,
}

fn kind_slot(k: Kind) -> usize {
    match k {
        Kind::Maintenance => 0,
        Kind::Health => 1,
        Kind::OperationFailure => 2,
    }
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

    fn index(mut policies: Vec<Policy>, default_action: Action, digest: String) -> Engine {
        policies.sort_by(|a, b| {
            b.spec
                .priority
                .cmp(&a.spec.priority)
                .then(b.rank_severity().cmp(&a.rank_severity()))
                .then(a.spec.name.cmp(&b.spec.name))
        });
        // Key each policy on its most selective atom: the field with the most distinct
        // values across the set (a region or error code beats an enum of five), per value
        // listed.
        let mut distinct: HashMap<FieldId, BTreeSet<&str>> = HashMap::new();
        for p in &policies {
            for a in p.when.iter().flat_map(|w| &w.atoms) {
                distinct
                    .entry(a.field)
                    .or_default()
                    .extend(a.values.iter().map(String::as_str));
            }
        }
        let selectivity = |a: &compile::IndexAtom| {
            let d = distinct.get(&a.field).map_or(1, BTreeSet::len);
            (d * 1000) / a.values.len().max(1)
        };
        let chosen: Vec<Option<compile::IndexAtom>> = policies
            .iter()
            .map(|p| {
                p.when
                    .as_ref()
                    .and_then(|w| w.atoms.iter().max_by_key(|a| selectivity(a)).cloned())
            })
            .collect();
        drop(distinct);
        let mut kinds: [KindIndex; 3] = Default::default();
        for (i, (p, atom)) in policies.iter().zip(chosen).enumerate() {
            let i = i as u32;
            for k in &p.spec.on {
                let slot = &mut kinds[kind_slot(*k)];
                slot.reads.extend(p.reads().copied());
                match &atom {
                    Some(a) => {
                        let pos = match slot.by_field.iter().position(|(f, _)| *f == a.field) {
                            Some(pos) => pos,
                            None => {
                                slot.by_field.push((a.field, HashMap::new()));
                                slot.by_field.len() - 1
                            }
                        };
                        for v in &a.values {
                            let list = slot.by_field[pos].1.entry(v.clone()).or_default();
                            if !list.contains(&i) {
                                list.push(i);
                            }
                        }
                    }
                    None => slot.always.push(i),
                }
            }
        }
        Engine {
            policies,
            kinds,
            default_action,
            env: Arc::new(cel::Env::stdlib()),
            digest,
            #[cfg(feature = "plugins")]
            runtime: None,
        }
    }

    /// Hex SHA-256 of the policy files' names and contents: identifies the policy set in
    /// decision logs.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The loaded policies, in rank order.
    pub fn policies(&self) -> impl Iterator<Item = PolicyInfo> + '_ {
        self.policies.iter().map(|p| PolicyInfo {
            name: p.spec.name.clone(),
            description: p.spec.description.clone(),
            action: p.spec.action,
            priority: p.spec.priority,
            on: p.spec.on.clone(),
            file: p.spec.file.to_path_buf(),
            line: p.spec.pos.line,
            native: p.when.as_ref().is_none_or(|w| w.native.is_some()),
            plugin: p.spec.plugin.as_ref().map(|ps| ps.path.clone()),
        })
    }

    /// Drops every plugin policy's warm instances, so that the next decision runs each plugin
    /// on a fresh instance (with `init` run again): nothing a plugin kept in its own memory
    /// from earlier decisions carries over. `keel test` does this before every case, so that
    /// cases do not depend on their order. A no-op without plugin policies (or without the
    /// `plugins` feature).
    pub fn reset_plugin_instances(&self) {
        #[cfg(feature = "plugins")]
        for p in self.policies.iter().filter_map(|p| p.plugin.as_ref()) {
            p.drop_warm();
        }
    }

    /// For benchmarks: a new instance of the plugin policy `policy` from its `InstancePre`,
    /// with `init` run, then dropped.
    #[cfg(feature = "plugins")]
    #[doc(hidden)]
    pub fn __plugin_instantiate(&self, policy: &str) -> Result<(), String> {
        let p = self
            .policies
            .iter()
            .find(|p| p.spec.name == policy)
            .and_then(|p| p.plugin.as_ref())
            .ok_or_else(|| format!("no plugin policy `{policy}`"))?;
        p.cold_instance()
    }

    /// Why the plugin cache, or some of its entries, were not used when this set was loaded
    /// (a directory or key that fails the cache's checks, an entry refused and rebuilt).
    /// Nothing is wrong with the decisions: the plugins were compiled instead. Empty when
    /// the set has no plugin policy.
    #[cfg(feature = "plugins")]
    pub fn plugin_warnings(&self) -> Vec<String> {
        self.runtime
            .as_ref()
            .map(|rt| rt.warnings())
            .unwrap_or_default()
    }

    /// For tests: how the component of the plugin policy `policy` was obtained at load
    /// (`memory`, `disk`, `compiled` or `rebuilt`).
    #[cfg(feature = "plugins")]
    #[doc(hidden)]
    pub fn __plugin_cache_use(&self, policy: &str) -> Option<&'static str> {
        let p = self.policies.iter().find(|p| p.spec.name == policy)?;
        Some(match p.plugin.as_ref()?.cache {
            crate::plugin::CacheUse::Memory => "memory",
            crate::plugin::CacheUse::Disk => "disk",
            crate::plugin::CacheUse::Compiled => "compiled",
            crate::plugin::CacheUse::Rebuilt => "rebuilt",
        })
    }

    /// The number of loaded policies.
    pub fn len(&self) -> usize {
        self.policies.len()
    }

    /// Whether the set holds no policy.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    fn candidates(&self, ev: &Event) -> (Vec<u32>, &KindIndex) {
        let idx = &self.kinds[kind_slot(ev.kind)];
        let mut out = idx.always.clone();
        for (f, map) in &idx.by_field {
            match fields::read(ev, *f) {
                Ok(Some(FieldValue::Str(v))) => {
                    if let Some(list) = map.get(v) {
                        out.extend_from_slice(list);
                    }
                }
                // The field is absent: reading it is a run-time error that must reach
                // `Decision.errors` (unless `&&` absorbs it), so only evaluation can tell;
                // every policy keyed on it stays a candidate.
                _ => {
                    for list in map.values() {
                        out.extend_from_slice(list);
                    }
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        (out, idx)
    }

    /// Decides what to do about `event` at `ctx.now`. Never fails: a policy that cannot be
    /// evaluated is reported in [`Decision::errors`] and the others still decide.
    ///
    /// Policies that query `history` read [`Ctx::history`]; without one they see an empty
    /// history, and the decision says so in a warning.
    pub fn decide(&self, event: &Event, ctx: &Ctx<'_>) -> Decision {
        self.decide_inner(event, ctx, ctx.history)
    }

    /// Decides with the correlation [`History`], which the caller owns: record the event in it
    /// first ([`History::record`]) and the decision after ([`History::record_decision`]).
    /// Escalations whose key the history has seen fire are marked
    /// [`crate::Escalation::repeat`].
    pub fn decide_with(&self, event: &Event, ctx: &Ctx<'_>, history: &History) -> Decision {
        self.decide_inner(event, ctx, Some(history))
    }

    fn decide_inner(&self, event: &Event, ctx: &Ctx<'_>, history: Option<&History>) -> Decision {
        let (cands, idx) = self.candidates(event);
        let full = ctx.mode == Mode::Full;
        let mut d = Decision {
            event_id: event.id.clone(),
            action: self.default_action,
            policy: None,
            reason: None,
            params: serde_json::Map::new(),
            escalations: Vec::new(),
            retry: None,
            due: None,
            matched: Vec::new(),
            not_evaluated: Vec::new(),
            errors: Vec::new(),
            warnings: Vec::new(),
            trace: Vec::new(),
        };
        let mut interp = Interp {
            env: &self.env,
            history,
            reads: &idx.reads,
            ctx: None,
            cost: compile::CostMeter::default(),
        };
        let mut outcomes: Vec<(u32, Outcome)> = Vec::with_capacity(cands.len());
        let mut winner: Option<(u32, Option<PluginHit>)> = None;
        let mut winner_key: Option<RankKey<'_>> = None;
        let mut no_history: Vec<&str> = Vec::new();
        for &pi in &cands {
            let p = &self.policies[pi as usize];
            // Escalate policies are always evaluated, and so are plugin policies (a plugin
            // may escalate); others only while they can still beat the current winner.
            let always = p.spec.action == Action::Escalate || p.is_plugin();
            if let (false, false, Some(w)) = (always, full, &winner_key) {
                let best = RankKey {
                    priority: p.spec.priority,
                    severity: p.rank_severity(),
                    name: &p.spec.name,
                };
                if !best.beats(w) {
                    d.not_evaluated.push(p.spec.name.clone());
                    outcomes.push((pi, Outcome::NotEvaluated));
                    continue;
                }
            }
            if let Some(w) = p.when.as_ref().filter(|w| w.uses_history) {
                match history {
                    None => no_history.push(p.spec.name.as_str()),
                    Some(h) => truncation_warning(&mut d, &p.spec.name, w, event, h),
                }
            }
            let res = match &p.when {
                None => Ok(true),
                Some(w) => match interp.eval(w, event, ctx.now) {
                    Ok(V::Bool(b)) => Ok(b),
                    Ok(other) => Err(format!("`when` evaluated to {other:?}, not a bool")),
                    Err(e) => Err(e),
                },
            };
            // The action the policy takes, if it matched; a plugin's decision rides along.
            let hit: Result<Option<(Action, Option<PluginHit>)>, Outcome> = match res {
                Ok(false) => Ok(None),
                Err(e) => {
                    d.errors.push(PolicyError {
                        policy: p.spec.name.clone(),
                        message: e,
                    });
                    Err(Outcome::Errored)
                }
                Ok(true) => self.call(p, event, ctx, history, &mut d),
            };
            let outcome = match hit {
                Err(o) => o,
                Ok(None) => Outcome::False,
                Ok(Some((Action::Escalate, hit))) => {
                    d.matched.push(matched(p, Action::Escalate));
                    self.escalate(p, event, ctx, &mut interp, &mut d, None, hit.as_ref());
                    Outcome::Matched
                }
                Ok(Some(_)) if !p.is_plugin() && exhausted(p, event) => {
                    d.warnings.push(format!(
                        "policy `{}` matched but its retry budget is spent (max_attempts {})",
                        p.spec.name,
                        p.spec.params.max_attempts.unwrap_or(0)
                    ));
                    Outcome::Exhausted
                }
                Ok(Some((action, hit))) => {
                    d.matched.push(matched(p, action));
                    let key = RankKey {
                        priority: p.spec.priority,
                        severity: action.severity(),
                        name: &p.spec.name,
                    };
                    if winner_key.as_ref().is_none_or(|w| key.beats(w)) {
                        winner = Some((pi, hit));
                        winner_key = Some(key);
                    }
                    Outcome::Matched
                }
            };
            outcomes.push((pi, outcome));
        }
        if !no_history.is_empty() {
            d.warnings.push(format!(
                "no correlation history was given, so history queries count 0 (policies {})",
                no_history
                    .iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if winner.is_some() && d.matched.len() > 1 {
            // Plugins decide their action at run time: keep `matched` best first.
            d.matched.sort_by(|a, b| {
                b.priority
                    .cmp(&a.priority)
                    .then(b.action.severity().cmp(&a.action.severity()))
                    .then(a.policy.cmp(&b.policy))
            });
        }
        if let Some((w, hit)) = &winner {
            self.apply_winner(
                &self.policies[*w as usize],
                hit.as_ref(),
                event,
                ctx,
                &mut interp,
                &mut d,
            );
        }
        if full {
            let mut all: Vec<Outcome> = vec![Outcome::SkippedByIndex; self.policies.len()];
            for (pi, o) in outcomes {
                all[pi as usize] = o;
            }
            d.trace = self
                .policies
                .iter()
                .zip(all)
                .map(|(p, outcome)| TraceEntry {
                    policy: p.spec.name.clone(),
                    outcome,
                })
                .collect();
        }
        d
    }

    /// A policy whose `when` held: its action, or for a plugin policy, the plugin's decision.
    #[allow(clippy::type_complexity)]
    fn call(
        &self,
        p: &Policy,
        event: &Event,
        ctx: &Ctx<'_>,
        history: Option<&History>,
        d: &mut Decision,
    ) -> Result<Option<(Action, Option<PluginHit>)>, Outcome> {
        #[cfg(feature = "plugins")]
        if let Some(plugin) = &p.plugin {
            return self
                .call_plugin(p, plugin, event, ctx, history, d)
                .map(|hit| hit.map(|h| (h.action, Some(h))));
        }
        let _ = (event, ctx, history, &d);
        Ok(Some((p.spec.action, None)))
    }

    #[cfg(feature = "plugins")]
    fn call_plugin(
        &self,
        p: &Policy,
        plugin: &crate::plugin::Plugin,
        event: &Event,
        ctx: &Ctx<'_>,
        history: Option<&History>,
        d: &mut Decision,
    ) -> Result<Option<PluginHit>, Outcome> {
        let name = &p.spec.name;
        if history.is_some_and(|h| h.faults().is_quarantined(name)) {
            d.errors.push(PolicyError {
                policy: name.clone(),
                message: format!(
                    "quarantined after {} consecutive plugin faults: not called",
                    crate::faults::PLUGIN_QUARANTINE_FAULTS
                ),
            });
            return Err(Outcome::Quarantined);
        }
        let r = plugin.evaluate(event, ctx.now, history.map(History::data));
        for line in r.logs {
            d.warnings
                .push(format!("policy `{name}`: plugin log {line}"));
        }
        if r.retried && r.outcome.is_ok() {
            d.warnings.push(format!(
                "policy `{name}`: the plugin ran past its deadline once; the retry succeeded"
            ));
        }
        let res = r
            .outcome
            .map_err(|f| f.to_string())
            .and_then(|raw| raw.map(validate_plugin_decision).transpose());
        match res {
            Ok(hit) => {
                if let Some(h) = history {
                    h.faults().success(name);
                }
                Ok(hit)
            }
            Err(message) => {
                d.errors.push(PolicyError {
                    policy: name.clone(),
                    message,
                });
                if history.is_some_and(|h| h.faults().fault(name)) {
                    d.warnings.push(format!(
                        "policy `{name}` is quarantined after {} consecutive plugin faults; later decisions with this history skip it",
                        crate::faults::PLUGIN_QUARANTINE_FAULTS
                    ));
                }
                Err(Outcome::Errored)
            }
        }
    }

    fn reason(
        &self,
        p: &Policy,
        ev: &Event,
        ctx: &Ctx<'_>,
        interp: &mut Interp<'_>,
        d: &mut Decision,
    ) -> String {
        if let Some(r) = &p.spec.reason {
            return r.clone();
        }
        if let Some(c) = &p.reason_expr {
            match interp.eval(c, ev, ctx.now) {
                Ok(V::Str(s)) => return s.into_owned(),
                Ok(other) => d.errors.push(PolicyError {
                    policy: p.spec.name.clone(),
                    message: format!("`reason_expr` evaluated to {other:?}, not a string"),
                }),
                Err(e) => d.errors.push(PolicyError {
                    policy: p.spec.name.clone(),
                    message: format!("`reason_expr`: {e}"),
                }),
            }
        }
        p.spec
            .description
            .clone()
            .unwrap_or_else(|| p.spec.name.clone())
    }

    fn apply_winner(
        &self,
        p: &Policy,
        hit: Option<&PluginHit>,
        ev: &Event,
        ctx: &Ctx<'_>,
        interp: &mut Interp<'_>,
        d: &mut Decision,
    ) {
        let action = hit.map_or(p.spec.action, |h| h.action);
        d.action = action;
        d.policy = Some(p.spec.name.clone());
        d.reason = Some(match hit.and_then(|h| h.reason.clone()) {
            Some(r) => r,
            None => self.reason(p, ev, ctx, interp, d),
        });
        d.params = match hit {
            Some(h) => h.params.clone(),
            None => p.spec.params.json.clone(),
        };
        match action {
            Action::Retry | Action::RetryWithoutAgent => {
                let failure = ev.failure.as_ref();
                let attempt = failure.map(|f| f.attempt.max(1)).unwrap_or(1);
                let plugin_delay = hit.and_then(|h| h.params.get("delay_s")?.as_i64());
                let delay = failure
                    .and_then(|f| f.retry_after_s)
                    .or(plugin_delay)
                    .or_else(|| {
                        p.spec
                            .params
                            .delay_s
                            .map(|base| match p.spec.params.backoff {
                                Some(Backoff::Exponential) => {
                                    let shift = u32::try_from(attempt - 1).unwrap_or(0).min(20);
                                    base.saturating_mul(1i64 << shift)
                                }
                                _ => base,
                            })
                    });
                let not_before = delay.and_then(|s| add_secs(ctx.now, s));
                let mut transform_error = None;
                let request = match (action, failure.and_then(|f| f.request.as_ref())) {
                    (Action::Retry, req) => req.cloned(),
                    (_, None) => None,
                    (_, Some(req)) => match crate::normalize::transform::retry_without_agent(req) {
                        Ok(body) => Some(body),
                        Err(e) => {
                            transform_error = Some(e.to_string());
                            None
                        }
                    },
                };
                if let Some(e) = transform_error {
                    let reason = format!("retry_without_agent cannot rewrite the request: {e}");
                    d.warnings
                        .push(format!("policy `{}`: {reason}", p.spec.name));
                    self.escalate(p, ev, ctx, interp, d, Some(reason), None);
                }
                d.retry = Some(Retry {
                    request,
                    not_before,
                });
            }
            Action::Defer => {
                let due = if let Some(h) = hit {
                    h.due
                } else if let Some(c) = &p.until {
                    match interp.eval(c, ev, ctx.now) {
                        Ok(V::Time(t)) => Some(t),
                        Ok(other) => {
                            d.errors.push(PolicyError {
                                policy: p.spec.name.clone(),
                                message: format!(
                                    "`params.until` evaluated to {other:?}, not a timestamp"
                                ),
                            });
                            None
                        }
                        Err(e) => {
                            d.errors.push(PolicyError {
                                policy: p.spec.name.clone(),
                                message: format!("`params.until`: {e}"),
                            });
                            None
                        }
                    }
                } else {
                    p.spec.params.delay.and_then(|s| add_secs(ctx.now, s))
                };
                match due {
                    Some(due) => {
                        d.due = Some(due);
                        let nb = ev.maintenance.as_ref().and_then(|m| m.not_before);
                        if let Some(nb) = nb.filter(|nb| due > *nb) {
                            let reason = format!(
                                "deferral until {} is past the event's not_before {}",
                                due.to_rfc3339(),
                                nb.to_rfc3339()
                            );
                            d.warnings
                                .push(format!("policy `{}`: {reason}", p.spec.name));
                            self.escalate(p, ev, ctx, interp, d, Some(reason), None);
                        }
                    }
                    None => {
                        // A deferral with no due time would never come back: fall back to the
                        // default action rather than losing the event.
                        d.action = self.default_action;
                        d.warnings.push(format!(
                            "policy `{}` could not compute its due time; the default action applies",
                            p.spec.name
                        ));
                    }
                }
            }
            _ => {}
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn escalate(
        &self,
        p: &Policy,
        ev: &Event,
        ctx: &Ctx<'_>,
        interp: &mut Interp<'_>,
        d: &mut Decision,
        reason: Option<String>,
        hit: Option<&PluginHit>,
    ) {
        let reason = match reason.or_else(|| hit.and_then(|h| h.reason.clone())) {
            Some(r) => r,
            None => self.reason(p, ev, ctx, interp, d),
        };
        let severity = hit
            .and_then(|h| h.params.get("severity")?.as_str().and_then(Severity::parse))
            .or(p.spec.params.severity)
            .unwrap_or(Severity::Error);
        let window = p
            .spec
            .params
            .dedup_window_s
            .unwrap_or(DEFAULT_DEDUP_WINDOW_S)
            .max(1);
        let key = dedup_key(&p.spec.name, &p.dedup_by, ev, window);
        if d.escalations.iter().any(|e| e.key == key) {
            return;
        }
        let repeat = interp.history.is_some_and(|h| h.fired(&key));
        d.escalations.push(Escalation {
            policy: p.spec.name.clone(),
            reason,
            key,
            severity,
            repeat,
        });
    }
}

/// Checks what a plugin returned: a known action, params that are a JSON object, a due time
/// for `defer`, sizes within bounds.
#[cfg(feature = "plugins")]
fn validate_plugin_decision(raw: crate::plugin::RawDecision) -> Result<PluginHit, String> {
    let action = Action::parse(&raw.action).ok_or_else(|| {
        let names: Vec<&str> = Action::ALL.iter().map(|a| a.as_str()).collect();
        format!(
            "plugin returned an action `{}` that does not exist (actions are {})",
            raw.action.chars().take(64).collect::<String>(),
            names.join(", ")
        )
    })?;
    if let Some(r) = &raw.reason {
        crate::plugin::check_size("reason", r)?;
    }
    let params = match &raw.params_json {
        None => serde_json::Map::new(),
        Some(text) => {
            crate::plugin::check_size("params", text)?;
            match serde_json::from_str::<serde_json::Value>(text) {
                Ok(serde_json::Value::Object(m)) => m,
                Ok(_) => return Err("plugin returned params that are not a JSON object".into()),
                Err(e) => return Err(format!("plugin returned params that are not JSON: {e}")),
            }
        }
    };
    let due = match raw.due_ms {
        None => None,
        Some(ms) => Some(
            chrono::DateTime::from_timestamp_millis(ms)
                .ok_or_else(|| format!("plugin returned a due time out of range ({ms} ms)"))?,
        ),
    };
    if action == Action::Defer && due.is_none() {
        return Err("plugin returned `defer` without a `due` time".into());
    }
    Ok(PluginHit {
        action,
        reason: raw.reason,
        params,
        due,
    })
}

fn truncation_warning(d: &mut Decision, policy: &str, w: &Compiled, ev: &Event, h: &History) {
    if w.windows.iter().any(|win| h.truncated(ev.time, *win)) {
        d.warnings.push(format!(
            "policy `{policy}`: the history reached its size bound and dropped entries inside the query window; counts may be low"
        ));
    }
}

/// `t + secs`, or `None` when that is not a representable time (never a panic).
fn add_secs(t: Timestamp, secs: i64) -> Option<Timestamp> {
    Duration::try_seconds(secs).and_then(|d| t.checked_add_signed(d))
}

fn matched(p: &Policy, action: Action) -> Matched {
    Matched {
        policy: p.spec.name.clone(),
        action,
        priority: p.spec.priority,
    }
}

/// How a matching policy ranks: priority, then its action's severity, then name.
struct RankKey<'a> {
    priority: i64,
    severity: u8,
    name: &'a str,
}

impl RankKey<'_> {
    fn beats(&self, other: &RankKey<'_>) -> bool {
        (self.priority, self.severity, std::cmp::Reverse(self.name))
            > (
                other.priority,
                other.severity,
                std::cmp::Reverse(other.name),
            )
    }
}

/// What a plugin decided, validated.
#[derive(Debug)]
#[cfg_attr(not(feature = "plugins"), allow(dead_code))]
struct PluginHit {
    action: Action,
    reason: Option<String>,
    params: serde_json::Map<String, serde_json::Value>,
    due: Option<Timestamp>,
}

fn exhausted(p: &Policy, ev: &Event) -> bool {
    matches!(p.spec.action, Action::Retry | Action::RetryWithoutAgent)
        && match (p.spec.params.max_attempts, &ev.failure) {
            (Some(max), Some(f)) => f.attempt > max,
            _ => false,
        }
}

/// The escalation dedup key: hex SHA-256 of the policy name, the values of its `dedup.by`
/// paths and `floor(event.time / window)`. When none of the `dedup.by` values is known, the
/// resource's name (else the event id) stands in, so unrelated events never share a key. Uses the vendor's event time, never a clock, so
/// independent hosts agree. An event near a window edge may land in the next bucket on
/// another host and page twice.
pub fn dedup_key(policy: &str, by: &[FieldId], ev: &Event, window_s: i64) -> String {
    let mut h = Sha256::new();
    h.update(policy.as_bytes());
    let mut known = 0;
    for f in by {
        h.update([0x1f]);
        h.update(fields::field(*f).path.as_bytes());
        h.update([b'=']);
        known += 1;
        match fields::read(ev, *f) {
            Ok(Some(FieldValue::Str(s))) => h.update(s.as_bytes()),
            Ok(Some(FieldValue::Int(i))) => h.update(i.to_string().as_bytes()),
            Ok(Some(FieldValue::Bool(b))) => h.update(if b { b"true" as &[u8] } else { b"false" }),
            Ok(Some(FieldValue::Time(t))) => h.update(t.to_rfc3339().as_bytes()),
            _ => {
                known -= 1;
                h.update([0]);
            }
        }
    }
    if known == 0 {
        // Nothing to group by is known (a bare ARM error names no resource): do not merge
        // unrelated events under one key; fall back to the resource's name, then the event.
        h.update([0x1d]);
        h.update(ev.resource.name.as_deref().unwrap_or(&ev.id).as_bytes());
    }
    h.update([0x1e]);
    let bucket = ev.time.timestamp().div_euclid(window_s.max(1));
    h.update(bucket.to_string().as_bytes());
    hex(&h.finalize())
}

/// The interpreter fallback, with its CEL context built at most once per decision.
struct Interp<'a> {
    env: &'a Arc<cel::Env>,
    history: Option<&'a History>,
    reads: &'a BTreeSet<Option<FieldId>>,
    ctx: Option<cel::Context<'a, 'a>>,
    /// The cost of the current metered evaluation (see `compile::MAX_EVAL_COST`).
    cost: compile::CostMeter,
}

impl Interp<'_> {
    fn eval<'e>(&mut self, c: &Compiled, ev: &'e Event, now: Timestamp) -> Result<V<'e>, String> {
        if let Some(n) = &c.native {
            return n.eval(ev, now, self.history);
        }
        let cost = &self.cost;
        let ctx = self.ctx.get_or_insert_with(|| {
            let mut cx = cel::Context::with_env(self.env.clone());
            cx.add_variable_from_value("event", compile::event_value(ev, self.reads));
            cx.add_variable_from_value("now", cel::Value::Timestamp(compile::to_fixed(now)));
            // The name cannot clash with the standard library's (it starts with `@`); were
            // it refused, metered expressions would fail as undeclared, never run unbounded.
            let _ = cx.add_function(compile::COST_FN, compile::cost_function(cost.clone()));
            cx
        });
        // The `cel` interpreter can panic on inputs it does not guard (chrono overflow in
        // time arithmetic, for one): a policy error, never a crash of the caller.
        let program = &c.program;
        let ctx = &*ctx;
        cost.store(0, std::sync::atomic::Ordering::Relaxed);
        let run = || match &c.metered {
            Some(m) => ctx.resolve(m),
            None => program.execute(ctx),
        };
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run));
        // Over budget is an error even where `||`, `&&` or a macro absorbed the failure.
        if cost.load(std::sync::atomic::Ordering::Relaxed) > compile::MAX_EVAL_COST {
            return Err(compile::budget_exceeded());
        }
        match result {
            Ok(Ok(v)) => {
                compile::from_cel(&v).ok_or_else(|| format!("unsupported result value {v:?}"))
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("the CEL interpreter failed on this input".to_string()),
        }
    }
}
