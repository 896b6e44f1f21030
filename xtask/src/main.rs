//! Keel's build tasks.
//!
//! `cargo run -p xtask -- build-plugins [--debug]` builds the guest workspace in
//! `wasm-plugins/` (the `keel-plugin` SDK, the example plugins and the hostile test plugin) for
//! `wasm32-unknown-unknown`, then wraps each core module into a component with
//! `wit-component` and writes it to `wasm-plugins/dist/<name>.wasm`. A component made this way
//! imports only what the WIT world `keel:policy@1.0.0` names: no WASI.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The guest crates and the component each becomes.
const PLUGINS: &[(&str, &str)] = &[
    ("keel_plugin_maintenance_window", "maintenance-window"),
    ("keel_plugin_error_budget", "error-budget"),
    ("keel_plugin_host_maintenance", "host-maintenance"),
    ("keel_plugin_hostile", "hostile"),
];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("build-plugins") => build_plugins(args.iter().any(|a| a == "--debug")),
        _ => {
            eprintln!("usage: cargo run -p xtask -- build-plugins [--debug]");
            std::process::exit(2);
        }
    }
}

fn root() -> Result<PathBuf> {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent()
        .map(Path::to_path_buf)
        .context("xtask has no parent directory")
}

fn build_plugins(debug: bool) -> Result<()> {
    let root = root()?;
    let guest = root.join("wasm-plugins");
    // The guests build in a target directory of their own: their RUSTFLAGS must not force
    // rebuilds of the host's wasm32 artifacts (the engine module) in the shared one.
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) => PathBuf::from(t),
        None => root.join("target"),
    }
    .join("keel-guest");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&guest)
        .env("CARGO_TARGET_DIR", &target)
        .args([
            "build",
            "--workspace",
            "--locked",
            "--target",
            "wasm32-unknown-unknown",
        ]);
    if !debug {
        cmd.arg("--release");
    }
    // A small shadow stack: plugins get a few MiB of memory in all.
    cmd.env("RUSTFLAGS", "-C link-arg=-zstack-size=131072");
    let status = cmd
        .status()
        .context("running cargo for the guest workspace")?;
    if !status.success() {
        bail!("building the guest workspace failed ({status})");
    }
    let profile = if debug { "debug" } else { "release" };
    let out_dir = target.join("wasm32-unknown-unknown").join(profile);
    let dist = guest.join("dist");
    std::fs::create_dir_all(&dist).with_context(|| format!("creating {}", dist.display()))?;
    for (krate, name) in PLUGINS {
        let module_path = out_dir.join(format!("{krate}.wasm"));
        let module = std::fs::read(&module_path)
            .with_context(|| format!("reading {}", module_path.display()))?;
        let component = wit_component::ComponentEncoder::default()
            .module(&module)
            .with_context(|| format!("{name}: reading the module's component-type section"))?
            .validate(true)
            .encode()
            .with_context(|| format!("{name}: encoding the component"))?;
        let out = dist.join(format!("{name}.wasm"));
        let tmp = dist.join(format!(".{name}.wasm.tmp"));
        std::fs::write(&tmp, &component).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &out).with_context(|| format!("writing {}", out.display()))?;
        println!("{} ({} bytes)", out.display(), component.len());
    }
    Ok(())
}
