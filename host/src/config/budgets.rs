//! `budgets:` in `keel.yaml`: concurrency budgets, each keyed by a CEL expression over the
//! event, taken as leases before a runbook's first effect (see `run::budget`). The model and
//! its reader are the engine's ([`keel_engine::budget`]), shared with `keel test`.

use super::V;

/// A concurrency budget (the engine's model).
pub type Budget = keel_engine::BudgetSpec;

/// Reads `budgets:` (a list), with the engine's reader.
pub(super) fn parse_budgets(v: &mut V<'_>) -> Vec<Budget> {
    let (budgets, diags) = keel_engine::read_budgets(v.doc, "/budgets");
    v.diags.extend(diags);
    budgets
}
