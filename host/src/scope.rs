//! Scopes: where a pause, a maintenance window or a blocker applies (`keel pause SCOPE`,
//! `scope:` in `keel.yaml`). The grammar is in [`Scope::parse`]; this module is a leaf, shared
//! by the configuration and the run loop.

use std::fmt;

use keel_engine::Event;

/// The longest scope value accepted.
pub const MAX_SCOPE_LEN: usize = 512;

/// Where a pause applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every event.
    All,
    /// Events of resources in this region (lower case).
    Region(String),
    /// Events of resources in this Azure resource group (lower case).
    ResourceGroup(String),
    /// Events whose resource id starts with this prefix, or whose resource name is it (lower
    /// case).
    Resource(String),
}

/// Why a scope was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// An unknown `kind:` prefix.
    #[error("unknown scope kind `{0}`; expected all, region:NAME, resource-group:NAME, resource:PREFIX or a resource id starting with /")]
    Kind(String),
    /// An empty, too long, or non-printable value.
    #[error("scope `{0}`: the value must be 1 to 512 printable characters without spaces")]
    Value(String),
}

impl Scope {
    /// Parses a scope (see the module documentation); an absent scope is [`Scope::All`].
    pub fn parse(s: &str) -> Result<Scope, ScopeError> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("all") || s.is_empty() {
            return Ok(Scope::All);
        }
        let (kind, value) = if s.starts_with('/') {
            ("resource", s)
        } else {
            match s.split_once(':') {
                Some((k, v)) => (k, v),
                None => return Err(ScopeError::Kind(keel_engine::escape(s))),
            }
        };
        let bad = value.is_empty()
            || value.chars().count() > MAX_SCOPE_LEN
            || value.chars().any(|c| c.is_whitespace() || c.is_control());
        if bad {
            return Err(ScopeError::Value(keel_engine::escape(s)));
        }
        let value = value.to_ascii_lowercase();
        match kind.to_ascii_lowercase().as_str() {
            "region" => Ok(Scope::Region(value)),
            "resource-group" => Ok(Scope::ResourceGroup(value)),
            "resource" => Ok(Scope::Resource(value)),
            _ => Err(ScopeError::Kind(keel_engine::escape(kind))),
        }
    }

    /// The scope's kind, a metric label (`all`, `region`, `resource_group`, `resource`).
    pub fn kind(&self) -> &'static str {
        match self {
            Scope::All => "all",
            Scope::Region(_) => "region",
            Scope::ResourceGroup(_) => "resource_group",
            Scope::Resource(_) => "resource",
        }
    }

    /// Whether an event falls in this scope.
    pub fn matches(&self, ev: &Event) -> bool {
        let r = &ev.resource;
        match self {
            Scope::All => true,
            Scope::Region(want) => r
                .region
                .as_deref()
                .is_some_and(|g| g.eq_ignore_ascii_case(want)),
            Scope::ResourceGroup(want) => {
                r.id.as_deref()
                    .and_then(resource_group)
                    .is_some_and(|g| g.eq_ignore_ascii_case(want))
            }
            Scope::Resource(prefix) => {
                r.id.as_deref().is_some_and(|id| {
                    id.get(..prefix.len())
                        .is_some_and(|h| h.eq_ignore_ascii_case(prefix))
                }) || r
                    .name
                    .as_deref()
                    .is_some_and(|n| n.eq_ignore_ascii_case(prefix))
            }
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::All => f.write_str("all"),
            Scope::Region(v) => write!(f, "region:{v}"),
            Scope::ResourceGroup(v) => write!(f, "resource-group:{v}"),
            Scope::Resource(v) => write!(f, "resource:{v}"),
        }
    }
}

/// The resource group an ARM id names (`…/resourceGroups/{rg}/…`), if any.
fn resource_group(id: &str) -> Option<&str> {
    let mut segs = id.split('/').map(str::trim).filter(|s| !s.is_empty());
    segs.find(|s| s.eq_ignore_ascii_case("resourceGroups"))?;
    segs.next()
}
