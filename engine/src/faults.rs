//! Fault counters of Wasm plugin policies, kept in the caller-owned [`crate::History`] so that
//! quarantine is state (fresh per `keel test` case, persisted by a host) and the
//! [`crate::Engine`] stays immutable.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Consecutive faults after which a plugin policy is quarantined.
pub const PLUGIN_QUARANTINE_FAULTS: u32 = 3;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Count {
    consecutive: u32,
    quarantined: bool,
}

/// Per-policy fault counts. Interior mutability: a decision reads the history by shared
/// reference, and a plugin fault during it must still count.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    counts: Mutex<BTreeMap<String, Count>>,
}

impl Clone for Faults {
    fn clone(&self) -> Faults {
        Faults {
            counts: Mutex::new(self.snapshot()),
        }
    }
}

impl Faults {
    fn snapshot(&self) -> BTreeMap<String, Count> {
        match self.counts.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut BTreeMap<String, Count>) -> R) -> R {
        match self.counts.lock() {
            Ok(mut g) => f(&mut g),
            Err(p) => f(&mut p.into_inner()),
        }
    }

    pub(crate) fn consecutive(&self, policy: &str) -> u32 {
        self.with(|m| m.get(policy).map_or(0, |c| c.consecutive))
    }

    #[cfg_attr(not(feature = "plugins"), allow(dead_code))]
    pub(crate) fn is_quarantined(&self, policy: &str) -> bool {
        self.with(|m| m.get(policy).is_some_and(|c| c.quarantined))
    }

    pub(crate) fn quarantined(&self) -> Vec<String> {
        self.with(|m| {
            m.iter()
                .filter(|(_, c)| c.quarantined)
                .map(|(k, _)| k.clone())
                .collect()
        })
    }

    /// Counts a fault; true when this fault put the policy in quarantine.
    #[cfg_attr(not(feature = "plugins"), allow(dead_code))]
    pub(crate) fn fault(&self, policy: &str) -> bool {
        self.with(|m| {
            let c = m.entry(policy.to_string()).or_default();
            c.consecutive = c.consecutive.saturating_add(1);
            let newly = !c.quarantined && c.consecutive >= PLUGIN_QUARANTINE_FAULTS;
            c.quarantined |= newly;
            newly
        })
    }

    /// A clean call: the consecutive count starts over.
    #[cfg_attr(not(feature = "plugins"), allow(dead_code))]
    pub(crate) fn success(&self, policy: &str) {
        self.with(|m| {
            if let Some(c) = m.get_mut(policy) {
                c.consecutive = 0;
            }
        })
    }

    /// Every policy's (consecutive faults, quarantined), for [`crate::History::to_json`].
    pub(crate) fn entries(&self) -> Vec<(String, u32, bool)> {
        self.snapshot()
            .into_iter()
            .map(|(k, c)| (k, c.consecutive, c.quarantined))
            .collect()
    }

    /// Fault counters restored by [`crate::History::from_json`].
    pub(crate) fn from_entries(entries: impl IntoIterator<Item = (String, u32, bool)>) -> Faults {
        Faults {
            counts: Mutex::new(
                entries
                    .into_iter()
                    .map(|(k, consecutive, quarantined)| {
                        (
                            k,
                            Count {
                                consecutive,
                                quarantined,
                            },
                        )
                    })
                    .collect(),
            ),
        }
    }

    pub(crate) fn release(&self, policy: &str) {
        self.with(|m| {
            m.remove(policy);
        })
    }
}
