//! One module per subcommand.

pub mod check;
pub mod demo;
pub mod eval;
pub mod eval_input;
pub mod fmt;
pub mod history;
pub mod normalize;
pub mod pause;
pub mod playground;
#[cfg(feature = "plugins")]
pub mod plugin;
pub mod policies;
pub mod run;
pub mod status;
pub mod test;

use std::path::Path;

use crate::Exit;

/// A path given on the command line that does not exist is a usage error (exit 2), as the
/// README's exit-code table says: `flag` names the option (`--policies`, `PATH`, ...).
pub fn require_path(flag: &str, path: &Path) -> Result<(), Exit> {
    if path.exists() {
        return Ok(());
    }
    eprintln!(
        "error: {flag} {}: no such file or directory",
        keel_engine::escape(&path.display().to_string())
    );
    Err(Exit::Usage)
}
