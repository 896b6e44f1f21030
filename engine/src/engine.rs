//! [`Engine`]: a loaded, validated, indexed policy set, and what a caller may read of it.
//! Loading is in `build.rs`, deciding in `decide.rs`.

use std::path::PathBuf;
use std::sync::Arc;

use crate::compile::Compiled;
use crate::decision::{Action, SharedStr};
use crate::diag::Diagnostic;
use crate::event::Kind;
use crate::fields::FieldId;
use crate::index::KindIndex;
use crate::policy::PolicySpec;

/// One compiled policy.
#[derive(Debug)]
pub(crate) struct Policy {
    /// `spec.name`, shared with every decision that names the policy.
    pub(crate) name: SharedStr,
    /// `spec.reason`, shared likewise.
    pub(crate) reason: Option<SharedStr>,
    /// The reason when there is no `reason` and `reason_expr` fails or is absent: the
    /// description, else the name.
    pub(crate) fallback_reason: SharedStr,
    pub(crate) spec: PolicySpec,
    pub(crate) when: Option<Compiled>,
    pub(crate) reason_expr: Option<Compiled>,
    pub(crate) until: Option<Compiled>,
    pub(crate) dedup_by: Vec<FieldId>,
    #[cfg(feature = "plugins")]
    pub(crate) plugin: Option<crate::plugin::Plugin>,
}

impl Policy {
    pub(crate) fn is_plugin(&self) -> bool {
        self.spec.plugin.is_some()
    }

    /// The severity the policy ranks with: a plugin's action is known only after the call,
    /// so a plugin policy ranks as if it drained (and is always evaluated).
    pub(crate) fn rank_severity(&self) -> u8 {
        if self.is_plugin() {
            Action::Drain.severity()
        } else {
            self.spec.action.severity()
        }
    }

    pub(crate) fn reads(&self) -> impl Iterator<Item = &Option<FieldId>> {
        [&self.when, &self.reason_expr, &self.until]
            .into_iter()
            .flatten()
            .filter(|c| c.native.is_none())
            .flat_map(|c| c.reads.iter())
    }
}

/// A loaded policy set. Build it once (with [`Engine::builder`] or [`Engine::from_dir`]),
/// share it behind an `Arc`, and call [`Engine::decide`] from any thread: it does no I/O,
/// reads no clock and keeps no state.
pub struct Engine {
    /// Policies sorted by rank: priority (desc), action severity (desc), name.
    pub(crate) policies: Vec<Policy>,
    /// Per event kind (in [`kind_slot`] order), the index of the policies on it.
    pub(crate) kinds: [KindIndex; 3],
    /// The policies' names in rank order, shared by every full-mode trace.
    pub(crate) names: Arc<[String]>,
    /// Off only for the parity tests: every policy of the event's kind is a candidate.
    pub(crate) indexed: bool,
    pub(crate) default_action: Action,
    pub(crate) env: Arc<cel::Env>,
    pub(crate) digest: String,
    /// The blast-radius guards `decide` applies after resolution.
    pub(crate) guards: crate::guard::GuardConfig,
    /// What loading noticed without refusing the set (see [`Engine::warnings`]).
    pub(crate) warnings: Vec<Diagnostic>,
    /// The wasmtime runtime of the plugin policies (with its epoch thread), if any.
    #[cfg(feature = "plugins")]
    pub(crate) runtime: Option<Arc<crate::plugin::Runtime>>,
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

pub(crate) fn kind_slot(k: Kind) -> usize {
    match k {
        Kind::Maintenance => 0,
        Kind::Health => 1,
        Kind::OperationFailure => 2,
    }
}

impl Engine {
    pub(crate) fn index(
        mut policies: Vec<Policy>,
        default_action: Action,
        digest: String,
    ) -> Engine {
        policies.sort_by(|a, b| {
            b.spec
                .priority
                .cmp(&a.spec.priority)
                .then(b.rank_severity().cmp(&a.rank_severity()))
                .then(a.spec.name.cmp(&b.spec.name))
        });
        let n = policies.len();
        let kinds = [Kind::Maintenance, Kind::Health, Kind::OperationFailure].map(|k| {
            KindIndex::build(
                n,
                policies
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.spec.on.contains(&k))
                    .map(|(i, p)| {
                        let atoms = p.when.as_ref().map_or(&[][..], |w| &w.atoms[..]);
                        let residual = p.when.as_ref().is_some_and(|w| w.residual.is_some());
                        (i as u32, atoms, p.reads().copied().collect(), residual)
                    }),
            )
        });
        let names = policies.iter().map(|p| p.spec.name.clone()).collect();
        Engine {
            names,
            policies,
            kinds,
            default_action,
            env: crate::compile::env(),
            digest,
            guards: crate::guard::GuardConfig::default(),
            warnings: Vec::new(),
            indexed: true,
            #[cfg(feature = "plugins")]
            runtime: None,
        }
    }

    /// For the index's parity tests: the same engine deciding without its index (every
    /// policy of the event's kind a candidate). Decisions must not change, but for
    /// `not_evaluated` and `trace` entries the index proves false.
    #[doc(hidden)]
    pub fn __without_index(mut self) -> Engine {
        self.indexed = false;
        self
    }

    /// Hex SHA-256 of the policy files' names and contents: identifies the policy set in
    /// decision logs. A file found under a directory is named by its path relative to that
    /// directory, so the same set has the same digest wherever it lives.
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

    /// What loading noticed without refusing the set, each at its file, line and column: a
    /// policy reading a section its `on:` kinds never have (`event.failure.…` under `on:
    /// [maintenance]`: always absent there), a YAML file in a policy directory that is not a
    /// policy file (skipped). `keel check` prints them; sorted by file and position.
    ///
    /// ```
    /// let engine = keel_engine::Engine::builder()
    ///     .add_source(
    ///         "p.yaml",
    ///         "policies:\n  - name: p\n    on: [maintenance]\n    when: event.failure.category == \"vm_agent\"\n    action: drain\n",
    ///     )
    ///     .build()?;
    /// assert_eq!(engine.warnings().len(), 1);
    /// assert_eq!(engine.warnings()[0].line(), 4);
    /// # Ok::<(), keel_engine::LoadError>(())
    /// ```
    pub fn warnings(&self) -> &[Diagnostic] {
        &self.warnings
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
}
