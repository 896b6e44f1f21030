//! Mutation testing: each policy disabled or never matching in turn, some case must fail.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::build::Mutation;
use crate::diag::LoadError;

use super::*;

/// A policy whose mutation no case noticed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Survivor {
    /// The policy.
    pub policy: String,
    /// Its file.
    pub file: PathBuf,
    /// What was done to it: `disabled` or `when forced false`.
    pub mutation: String,
}

/// The outcome of [`mutation_check`].
#[derive(Debug, Clone, Serialize)]
pub struct MutationReport {
    /// Steps that fail without any mutation (the check needs a passing suite).
    pub baseline_failures: usize,
    /// Mutations tried.
    pub tried: usize,
    /// Mutations under which every case still passed.
    pub survivors: Vec<Survivor>,
}

/// Proves the cases are not vacuous: for every policy of every set, runs the set's cases with
/// the policy disabled, then with its `when` forced false, and reports the mutations under
/// which every case still passed. The suite must pass unmutated first.
pub fn mutation_check(root: &Path, opts: &TestOptions) -> Result<MutationReport, LoadError> {
    let files = load_tests(root)?;
    let sets = load_sets(&files, None)?;
    let baseline_failures = run_sets(&sets, &files, opts).failed();
    let mut survivors = Vec::new();
    let mut tried = 0;
    if baseline_failures > 0 {
        return Ok(MutationReport {
            baseline_failures,
            tried,
            survivors,
        });
    }
    for (key, set) in &sets {
        let mine: Vec<TestFile> = set.files.iter().map(|&i| files[i].clone()).collect();
        for p in set.engine.policies() {
            for (m, label) in [
                (Mutation::Disable(p.name.clone()), "disabled"),
                (Mutation::ForceFalse(p.name.clone()), "when forced false"),
            ] {
                tried += 1;
                let mutated = load_sets(&mine, Some((key, m)))?;
                if run_sets(&mutated, &mine, opts).failed() == 0 {
                    survivors.push(Survivor {
                        policy: p.name.clone(),
                        file: p.file.clone(),
                        mutation: label.into(),
                    });
                }
            }
        }
    }
    Ok(MutationReport {
        baseline_failures,
        tried,
        survivors,
    })
}
