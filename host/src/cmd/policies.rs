//! `keel policies export DIR`: the standard library embedded in the binary, written out for
//! editing.

use std::path::PathBuf;

use crate::{library, Exit};

/// The standard policy library embedded in the binary.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    Export(ExportArgs),
}

/// Write the embedded library (standard/ with its tests, fixtures/ they read) into DIR.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  keel policies export /etc/keel/policies\n  keel test /etc/keel/policies\n  keel check /etc/keel/policies\n\nThen `policies: /etc/keel/policies` in keel.yaml. A keel.yaml with no `policies:` uses the\nembedded library itself; an exported copy left unchanged has the same digest.\n\nExit codes: 0 written, 2 DIR is not empty (without --force) or cannot be written."
)]
struct ExportArgs {
    /// The directory to write (created if missing).
    #[arg(value_name = "DIR")]
    dir: PathBuf,
    /// Write into a directory that is not empty (files of the same name are overwritten).
    #[arg(long)]
    force: bool,
}

/// Runs `keel policies`.
pub fn run(args: Args) -> Exit {
    match args.command {
        Command::Export(a) => match library::export(&a.dir, a.force) {
            Ok(n) => {
                println!(
                    "wrote {n} files of the embedded library to {}",
                    keel_engine::escape(&a.dir.display().to_string())
                );
                Exit::Ok
            }
            Err(e) => {
                eprintln!("error: {e}");
                Exit::Usage
            }
        },
    }
}
