//! `keel run`: the host daemon.

use std::path::PathBuf;

use tokio::sync::watch;

use crate::{config, render, run, Exit};

/// Run the host: poll the sources, decide, execute runbooks exactly once.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  keel run --config host/examples/keel.yaml\n  keel run --config /etc/keel/keel.yaml --dry-run\n  keel run --config keel.yaml --dry-run --replay capture.jsonl --normalizer azure.scheduled_events\n\nThe configuration is validated whole before anything starts; every problem is printed with\nits position. The decision log (JSON lines) goes to standard output."
)]
pub struct Args {
    /// The configuration file.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Plan and log every step, with no effect.
    #[arg(long)]
    pub dry_run: bool,
    /// Also replay this file (`-` for standard input) through `--normalizer`, JSON lines (one
    /// payload per line), like a `sources.files` entry.
    #[arg(long, value_name = "FILE|-", requires = "normalizer")]
    pub replay: Option<String>,
    /// The normalizer of `--replay` (see `keel normalize --list`).
    #[arg(long, value_name = "SOURCE", requires = "replay")]
    pub normalizer: Option<String>,
}

/// Runs `keel run` until SIGINT or SIGTERM.
pub fn run(args: Args) -> Exit {
    if let Err(e) = super::require_path("--config", &args.config) {
        return e;
    }
    let mut cfg = match config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            let _ = render::diagnostics(&mut std::io::stderr().lock(), &e);
            eprintln!("error: the configuration is invalid; nothing was started");
            return Exit::Invalid;
        }
    };
    cfg.dry_run |= args.dry_run;
    if let (Some(file), Some(name)) = (&args.replay, &args.normalizer) {
        let Some(normalizer) = config::normalizer_name(name) else {
            let names: Vec<&str> = keel_engine::normalize::NORMALIZERS
                .iter()
                .map(|n| n.name)
                .collect();
            eprintln!(
                "error: unknown normalizer `{}`; expected one of: {}",
                keel_engine::escape(name),
                names.join(", ")
            );
            return Exit::Usage;
        };
        let path = (file != "-").then(|| PathBuf::from(file));
        if let Some(p) = path.as_ref().filter(|p| !p.exists() || p.is_dir()) {
            eprintln!(
                "error: --replay: `{}` is not a readable file",
                keel_engine::escape(&p.display().to_string())
            );
            return Exit::Usage;
        }
        if path.is_none() && cfg.files.iter().any(|f| f.path.is_none()) {
            eprintln!("error: --replay -: the configuration already reads standard input");
            return Exit::Usage;
        }
        cfg.files.push(config::FileSource {
            path,
            normalizer,
            format: config::FileFormat::Lines,
        });
    }
    if let Err(e) = crate::failpoint::check() {
        eprintln!("error: {e}");
        return Exit::Usage;
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return Exit::Host;
        }
    };
    rt.block_on(async move {
        let host = match start_host(cfg) {
            Ok(h) => h,
            Err(exit) => return exit,
        };
        let (tx, rx) = watch::channel(false);
        // The handlers are installed here, before the host is ready (READY=1): a SIGTERM
        // right after it shuts down gracefully instead of killing the process.
        let signalled = shutdown_signal();
        tokio::spawn(async move {
            signalled.await;
            let _ = tx.send(true);
        });
        match run::run(host, rx).await {
            Ok(()) => Exit::Ok,
            Err(e) => report(&e),
        }
    })
}

/// Starts the host, its decision log on standard output (or journald) and in `log.file` when configured
/// (`keel run`, `keel demo`); a start error is [`report`]ed.
pub fn start_host(cfg: config::Config) -> Result<std::sync::Arc<run::Host>, Exit> {
    let file = match &cfg.log.file {
        None => None,
        Some(path) => match run::logfile::RotatingFile::open(path, cfg.log.max_bytes, cfg.log.keep)
        {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!(
                    "error: log.file {}: {e}",
                    keel_engine::escape(&path.display().to_string())
                );
                return Err(Exit::Host);
            }
        },
    };
    // journald (natively) instead of standard output: under systemd both would reach the
    // journal.
    let first: Box<dyn std::io::Write + Send> = match &cfg.log.journald {
        None => Box::new(std::io::stdout()),
        Some(socket) => match run::journald::Journald::connect(socket) {
            Ok(j) => Box::new(j),
            Err(e) => {
                eprintln!(
                    "error: log.journald {}: {e} (is systemd-journald running?)",
                    keel_engine::escape(&socket.display().to_string())
                );
                return Err(Exit::Host);
            }
        },
    };
    let out = run::logfile::Tee {
        first,
        second: file,
    };
    run::Host::new(cfg, Box::new(out)).map_err(|e| report(&e))
}

/// Writes a start error to standard error; its exit code.
fn report(e: &run::StartError) -> Exit {
    let _ = e.render(&mut std::io::stderr().lock());
    e.exit()
}

/// Installs the SIGINT and SIGTERM handlers at once (in the runtime's context); the future
/// completes at the first of them.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, Signal, SignalKind};
        async fn recv(s: Option<Signal>) {
            match s {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        let term = signal(SignalKind::terminate()).ok();
        let int = signal(SignalKind::interrupt()).ok();
        async move {
            tokio::select! {
                _ = recv(term) => {}
                _ = recv(int) => {}
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
