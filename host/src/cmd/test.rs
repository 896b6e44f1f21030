//! `keel test`: run the policy unit tests (`*.test.yaml`) and report.

use std::io::Write;
use std::path::PathBuf;

use keel_engine::escape;
use keel_engine::testing::{self, TestOptions, TestReport};

use crate::{render, Exit};

/// Output format.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Format {
    /// Human-readable, with a diff for each failure.
    Text,
    /// The whole report as one JSON object.
    Json,
    /// JUnit XML, for CI systems (test names `file::case::step`).
    Junit,
}

/// Run the policy unit tests found under PATH against the policies under PATH.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  keel test policies/\n  keel test --standard\n  keel test policies/ --run vm-agent\n  keel test policies/ --format junit > junit.xml\n  keel test policies/ --junit-out junit.xml --json-out report.json\n  keel test policies/ --mutate\n\nExit codes: 0 all passed, 1 a case failed or a policy file is reached by no case,\n2 usage error, 3 an invalid policy or test file."
)]
pub struct Args {
    /// A directory of policies with their *.test.yaml files, or one test file.
    #[arg(value_name = "PATH", default_value = "policies")]
    pub path: PathBuf,
    /// Run the tests of the standard library embedded in the binary instead of PATH (written
    /// to a temporary directory, run there, reported as `standard/…`).
    #[arg(long, conflicts_with = "path")]
    pub standard: bool,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// Run only the cases whose name (`file::case::step`) contains PATTERN.
    #[arg(long, value_name = "PATTERN")]
    pub run: Option<String>,
    /// Also write the JUnit XML report to FILE (one run, several outputs).
    #[arg(long, value_name = "FILE")]
    pub junit_out: Option<PathBuf>,
    /// Also write the JSON report to FILE.
    #[arg(long, value_name = "FILE")]
    pub json_out: Option<PathBuf>,
    /// Prove the cases are not vacuous: with each policy disabled, and with its `when` forced
    /// false, at least one case must fail.
    #[arg(long)]
    pub mutate: bool,
}

/// Runs `keel test`.
pub fn run(args: Args) -> Exit {
    if args.standard {
        return standard(args);
    }
    run_at(&args)
}

/// `keel test --standard`: the embedded library written to a temporary directory and tested
/// there, as `standard/…` relative to it (the report files given stay where they were asked).
fn standard(mut args: Args) -> Exit {
    let tmp = match tempfile::Builder::new().prefix("keel-standard-").tempdir() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot create a temporary directory: {e}");
            return Exit::Usage;
        }
    };
    if let Err(e) = crate::library::export(tmp.path(), false) {
        eprintln!("error: cannot write the embedded library: {e}");
        return Exit::Usage;
    }
    let Ok(cwd) = std::env::current_dir() else {
        eprintln!("error: cannot read the current directory");
        return Exit::Usage;
    };
    for out in [&mut args.junit_out, &mut args.json_out]
        .into_iter()
        .flatten()
    {
        *out = cwd.join(&*out);
    }
    if let Err(e) = std::env::set_current_dir(tmp.path()) {
        eprintln!("error: cannot enter the temporary directory: {e}");
        return Exit::Usage;
    }
    args.path = PathBuf::from("standard");
    let exit = run_at(&args);
    let _ = std::env::set_current_dir(&cwd);
    exit
}

fn run_at(args: &Args) -> Exit {
    let mut opts = TestOptions::default().with_clock(monotonic);
    if let Some(p) = &args.run {
        opts = opts.run(p.clone());
    }
    if let Err(e) = super::require_path("PATH", &args.path) {
        return e;
    }
    if args.mutate {
        return mutate(args, &opts);
    }
    let report = match testing::run(&args.path, &opts) {
        Ok(r) => r,
        Err(err) => {
            let _ = render::diagnostics(&mut std::io::stderr().lock(), &err);
            eprintln!("error: the policy set or a test file is invalid; no test ran");
            return Exit::Invalid;
        }
    };
    if let (Some(pat), 0) = (&args.run, report.steps().count()) {
        eprintln!(
            "error: no case matches --run {}: nothing was tested",
            escape(pat)
        );
        return Exit::Usage;
    }
    for (path, body) in [
        (
            &args.junit_out,
            args.junit_out.as_ref().map(|_| report.to_junit()),
        ),
        (
            &args.json_out,
            args.json_out
                .as_ref()
                .and_then(|_| serde_json::to_string_pretty(&report).ok()),
        ),
    ] {
        if let (Some(path), Some(body)) = (path, body) {
            if let Err(e) = std::fs::write(path, body) {
                eprintln!("error: {}: {e}", escape(&path.display().to_string()));
                return Exit::Usage;
            }
        }
    }
    let mut out = std::io::stdout().lock();
    let res = match args.format {
        Format::Text => text(&mut out, &report),
        Format::Json => serde_json::to_writer_pretty(&mut out, &report)
            .map_err(std::io::Error::other)
            .and_then(|_| writeln!(out)),
        Format::Junit => out.write_all(report.to_junit().as_bytes()),
    };
    if let Err(e) = res {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("error: writing the report: {e}");
            return Exit::Usage;
        }
    }
    if report.passed() {
        Exit::Ok
    } else {
        Exit::Failed
    }
}

fn mutate(args: &Args, opts: &TestOptions) -> Exit {
    match testing::mutation_check(&args.path, opts) {
        Err(err) => {
            let _ = render::diagnostics(&mut std::io::stderr().lock(), &err);
            Exit::Invalid
        }
        Ok(r) if r.baseline_failures > 0 => {
            println!(
                "mutation check: {} steps fail without any mutation; fix them first (run `keel test` to see them)",
                r.baseline_failures
            );
            Exit::Failed
        }
        Ok(r) => {
            let (tried, survivors) = (r.tried, r.survivors);
            if survivors.is_empty() {
                println!("mutation check: all {tried} mutations were caught by at least one failing case");
                Exit::Ok
            } else {
                println!(
                    "mutation check: {} of {tried} mutations survived (no case failed):",
                    survivors.len()
                );
                for s in &survivors {
                    println!("  {} ({})", escape(&s.policy), s.mutation);
                }
                Exit::Failed
            }
        }
    }
}

fn text(out: &mut dyn Write, r: &TestReport) -> std::io::Result<()> {
    for f in &r.files {
        writeln!(out, "{}", escape(&f.file.display().to_string()))?;
        for c in &f.cases {
            for s in &c.steps {
                let short =
                    s.id.split_once("::")
                        .map_or(s.id.as_str(), |(_, rest)| rest);
                if s.passed {
                    writeln!(out, "  ok    {}", escape(short))?;
                    continue;
                }
                writeln!(
                    out,
                    "  FAIL  {}  ({}:{})",
                    escape(short),
                    escape(&f.file.display().to_string()),
                    s.line
                )?;
                for m in &s.failures {
                    writeln!(
                        out,
                        "        - {}: {}",
                        escape(&m.what),
                        escape(&m.expected)
                    )?;
                    writeln!(out, "        + {}: {}", escape(&m.what), escape(&m.actual))?;
                }
            }
        }
    }
    let total = r.steps().count();
    let failed = r.failed();
    let matched = r.coverage.iter().filter(|c| c.matched > 0).count();
    writeln!(out)?;
    writeln!(
        out,
        "coverage: {matched} of {} policies matched in some case",
        r.coverage.len()
    )?;
    for c in r.never_matched() {
        writeln!(
            out,
            "  never matched: {} ({})",
            escape(&c.policy),
            escape(&c.file.display().to_string())
        )?;
    }
    for c in r.coverage.iter().filter(|c| c.matched > 0 && c.won == 0) {
        writeln!(out, "  matched but never won: {}", escape(&c.policy))?;
    }
    for f in &r.uncovered_files {
        writeln!(
            out,
            "error: no case reaches any policy of {}",
            escape(&f.display().to_string())
        )?;
    }
    writeln!(
        out,
        "{}: {} passed, {failed} failed",
        if r.passed() { "ok" } else { "FAILED" },
        total - failed
    )
}

/// Time since the first call, on the monotonic clock: what `keel test` times steps with.
fn monotonic() -> std::time::Duration {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed()
}
