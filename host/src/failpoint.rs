//! Named failpoints for the crash matrix (`host/tests/crash.rs`), compiled only with the cargo
//! feature `failpoints`; without it [`hit`] is an empty inline function and costs nothing.
//!
//! `KEEL_FAILPOINT=NAME[:STEP][#N]` makes the Nth hit (the first without `#N`) of failpoint
//! `NAME` (at the runbook step named `STEP`, when given) call [`std::process::abort`]: like
//! `kill -9`, no destructor runs and nothing is flushed.
//!
//! This file uses only `std`, so that the crash test can include it and count [`FAILPOINTS`].

/// Before the decision and its event are recorded (`store.record`).
pub const DECISION_BEFORE_RECORD: &str = "decision.before_record";
/// After the decision is recorded, before its runbook starts.
pub const DECISION_AFTER_RECORD: &str = "decision.after_record";
/// After a step's start (with its idempotency key) is recorded, before its effect.
pub const STEP_BEFORE_EFFECT: &str = "step.before_effect";
/// After a step's effect, before its outcome is recorded.
pub const STEP_AFTER_EFFECT: &str = "step.after_effect";
/// After a step's outcome is recorded (and logged).
pub const STEP_AFTER_OUTCOME: &str = "step.after_outcome";

/// Every failpoint, in the order a runbook meets them. The `step.*` ones take a `:STEP`
/// qualifier.
#[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
pub const FAILPOINTS: &[&str] = &[
    DECISION_BEFORE_RECORD,
    DECISION_AFTER_RECORD,
    STEP_BEFORE_EFFECT,
    STEP_AFTER_EFFECT,
    STEP_AFTER_OUTCOME,
];

#[cfg(feature = "failpoints")]
mod imp {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    use super::FAILPOINTS;

    /// A parsed `KEEL_FAILPOINT`.
    #[derive(Debug, PartialEq, Eq)]
    pub struct Spec {
        name: String,
        step: Option<String>,
        nth: u64,
    }

    /// Parses `NAME[:STEP][#N]`.
    pub fn parse(s: &str) -> Result<Spec, String> {
        let (rest, nth) = match s.rsplit_once('#') {
            Some((rest, n)) => match n.parse::<u64>() {
                Ok(n) if n >= 1 => (rest, n),
                _ => return Err(format!("KEEL_FAILPOINT `{s}`: `#N` needs N >= 1")),
            },
            None => (s, 1),
        };
        let (name, step) = match rest.split_once(':') {
            Some((name, step)) if !step.is_empty() => (name, Some(step.to_string())),
            Some(_) => return Err(format!("KEEL_FAILPOINT `{s}`: empty step name")),
            None => (rest, None),
        };
        if !FAILPOINTS.contains(&name) {
            return Err(format!(
                "KEEL_FAILPOINT `{s}`: unknown failpoint `{name}`; expected one of: {}",
                FAILPOINTS.join(", ")
            ));
        }
        if step.is_some() && !name.starts_with("step.") {
            return Err(format!(
                "KEEL_FAILPOINT `{s}`: only step.* failpoints take a `:STEP`"
            ));
        }
        Ok(Spec {
            name: name.to_string(),
            step,
            nth,
        })
    }

    static SPEC: OnceLock<Option<Spec>> = OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);

    fn spec() -> Option<&'static Spec> {
        SPEC.get_or_init(|| {
            std::env::var("KEEL_FAILPOINT")
                .ok()
                .and_then(|s| parse(&s).ok())
        })
        .as_ref()
    }

    /// Checks `KEEL_FAILPOINT`, if set.
    pub fn check() -> Result<(), String> {
        match std::env::var("KEEL_FAILPOINT") {
            Ok(s) => parse(&s).map(|_| ()),
            Err(_) => Ok(()),
        }
    }

    /// Aborts the process if `KEEL_FAILPOINT` names this hit.
    pub fn hit(name: &str, step: Option<&str>) {
        let Some(sp) = spec() else { return };
        if sp.name != name {
            return;
        }
        if let Some(want) = &sp.step {
            if step != Some(want.as_str()) {
                return;
            }
        }
        if HITS.fetch_add(1, Ordering::SeqCst) + 1 == sp.nth {
            eprintln!(
                "failpoint {name}{} fired: aborting",
                step.map(|s| format!(":{s}")).unwrap_or_default()
            );
            std::process::abort();
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn specs_parse_and_bad_ones_are_refused() {
            assert_eq!(
                parse("step.before_effect:approve#2"),
                Ok(Spec {
                    name: "step.before_effect".into(),
                    step: Some("approve".into()),
                    nth: 2
                })
            );
            assert_eq!(
                parse("decision.after_record"),
                Ok(Spec {
                    name: "decision.after_record".into(),
                    step: None,
                    nth: 1
                })
            );
            for bad in [
                "nope",
                "step.before_effect#0",
                "step.before_effect:",
                "decision.after_record:x",
            ] {
                assert!(parse(bad).is_err(), "{bad}");
            }
        }
    }
}

#[cfg(feature = "failpoints")]
pub use imp::{check, hit};

/// Without the `failpoints` feature: nothing to check.
#[cfg(not(feature = "failpoints"))]
pub fn check() -> Result<(), String> {
    Ok(())
}

/// Without the `failpoints` feature: nothing, inlined away.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &str, _step: Option<&str>) {}
