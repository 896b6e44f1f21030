//! `keel`: the command-line face of Keel.
//!
//! Each subcommand lives in `cmd/<name>.rs` with its `Args` and a function returning an
//! [`Exit`]. Exit codes are documented in `keel --help`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;
mod config;
mod exit;
mod failpoint;
mod library;
mod render;
mod run;
mod scope;
mod stub;

pub use exit::Exit;

/// The process's allocator: mimalloc, which frees what another thread allocated without the
/// contention of glibc's arenas (the host's HTTP threads allocate what its deciding thread frees).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "keel",
    version,
    about = "Keel: resilience policies for cloud VMs",
    long_about = "Keel normalizes cloud platform events (maintenance notices, resource-health \
changes, failed management operations), evaluates CEL policies against them, and decides an \
action: retry_without_agent, retry, drain, defer, acknowledge, escalate, or none.",
    after_help = "Exit codes:\n  0  success\n  1  test failures (`keel test`), the demo did not complete, or (`keel eval --fail`) a decision has errors\n  2  usage error (a path that does not exist), or an unreadable or malformed input\n  3  invalid policy set, test file or configuration\n  4  the host could not start or stopped on an error (state database, its lock, listen address);\n     keel pause, resume, status, history: the state database could not be opened or written\n\nExamples:\n  keel check\n  keel check policies/\n  keel check --config keel.yaml\n  keel fmt --check policies/\n  keel eval --policies policies/ --event event.json --explain\n  keel normalize --from azure.scheduled_events doc.json\n  keel test policies/\n  keel test --standard\n  keel policies export ./policies\n  keel demo\n  keel run --config host/examples/keel.yaml\n  keel pause region:westeurope --reason 'platform incident' --config keel.yaml\n  keel status --config keel.yaml\n  keel history --since 2h --action drain\n  keel playground\n  keel plugin new drain-reboots && cd drain-reboots && keel plugin build && keel test ."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Eval(cmd::eval::Args),
    Check(cmd::check::Args),
    Fmt(cmd::fmt::Args),
    Normalize(cmd::normalize::Args),
    Test(cmd::test::Args),
    Run(cmd::run::Args),
    Demo(cmd::demo::Args),
    Pause(cmd::pause::PauseArgs),
    Resume(cmd::pause::ResumeArgs),
    Status(cmd::status::Args),
    History(cmd::history::Args),
    Policies(cmd::policies::Args),
    Playground(cmd::playground::Args),
    #[cfg(feature = "plugins")]
    Plugin(cmd::plugin::Args),
}

fn main() -> ExitCode {
    // No transparent huge pages for this process: mimalloc maps its memory in large aligned
    // regions, which a kernel set to THP `always` backs 2 MiB at a time, and an agent on
    // every VM should not hold that (peak RSS in the host benchmark's ingest flood: 94 MiB
    // with them, 51 without; glibc's allocator: 41). Inherited by the processes it starts.
    #[cfg(target_os = "linux")]
    let _ = nix::sys::prctl::set_thp_disable(true);
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Eval(args) => cmd::eval::run(args),
        Command::Check(args) => cmd::check::run(args),
        Command::Fmt(args) => cmd::fmt::run(args),
        Command::Normalize(args) => cmd::normalize::run(args),
        Command::Test(args) => cmd::test::run(args),
        Command::Run(args) => cmd::run::run(args),
        Command::Demo(args) => cmd::demo::run(args),
        Command::Pause(args) => cmd::pause::pause(args),
        Command::Resume(args) => cmd::pause::resume(args),
        Command::Status(args) => cmd::status::run(args),
        Command::History(args) => cmd::history::run(args),
        Command::Policies(args) => cmd::policies::run(args),
        Command::Playground(args) => cmd::playground::run(args),
        #[cfg(feature = "plugins")]
        Command::Plugin(args) => cmd::plugin::run(args),
    };
    code.into()
}
