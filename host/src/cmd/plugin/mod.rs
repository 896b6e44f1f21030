//! `keel plugin new` and `keel plugin build`: writing a Wasm policy plugin outside this
//! repository, with only the `keel` binary and a Rust toolchain.
//!
//! `new` writes a `cdylib` crate (the plugin, a policy file that calls it, a test file) with the
//! `keel-plugin` SDK this binary carries (or a path to another copy); `build` compiles it for
//! `wasm32-unknown-unknown` with cargo and wraps the core module into a component with
//! `wit-component`, as the repository's own `xtask build-plugins` does, so the component
//! imports only what the WIT world `keel:policy@1.0.0` names.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::Exit;

/// Create and build Wasm policy plugins (the WIT world keel:policy@1.0.0).
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Sub,
}

#[derive(clap::Subcommand)]
enum Sub {
    New(NewArgs),
    Build(BuildArgs),
}

/// Write a new plugin crate: src/lib.rs, policy.yaml, policy.test.yaml and the SDK.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  keel plugin new drain-reboots\n  cd drain-reboots && keel plugin build && keel test .\n  keel plugin new drain-reboots --dir plugins/drain --sdk ../keel/wasm-plugins/sdk\n\nThe crate depends on the keel-plugin SDK by path: by default a copy of the SDK this binary\ncarries, written to DIR/sdk/ (it needs only crates.io); --sdk names another copy instead.\n\nExit codes: 0 written, 2 NAME is not a crate name, DIR is not empty, or a file cannot be written."
)]
struct NewArgs {
    /// The crate's name (lowercase letters, digits, `-` and `_`; it names the policy and the
    /// component too).
    #[arg(value_name = "NAME")]
    name: String,
    /// The directory to create (default: ./NAME). It must be missing or empty.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// The keel-plugin SDK to depend on: a directory with its Cargo.toml, written into the
    /// crate's Cargo.toml as given (a relative path is relative to DIR). Default: a copy in
    /// DIR/sdk/.
    #[arg(long, value_name = "PATH")]
    sdk: Option<PathBuf>,
}

/// Build the plugin crate in DIR into DIR/<name>.wasm, a component.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  keel plugin build\n  keel plugin build plugins/drain-reboots\n  keel plugin build --out /etc/keel/policies/drain-reboots.wasm\n\nRuns `cargo build --release --target wasm32-unknown-unknown` (with a 128 KiB shadow stack)\nfor the crate's cdylib, wraps the module into a component importing only keel:policy/host,\nand prints its path, size and sha256 (for `plugin.sha256` in the policy). Needs the target:\n`rustup target add wasm32-unknown-unknown`.\n\nExit codes: 0 built, 1 cargo or the component encoding failed, 2 DIR has no Cargo.toml with a\ncdylib, the wasm32 target is missing, or the output cannot be written."
)]
struct BuildArgs {
    /// The plugin crate's directory (with its Cargo.toml).
    #[arg(value_name = "DIR", default_value = ".")]
    dir: PathBuf,
    /// Where to write the component (default: DIR/<package name>.wasm).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// A debug build (faster to compile, larger and slower).
    #[arg(long)]
    debug: bool,
}

/// Runs `keel plugin`.
pub fn run(args: Args) -> Exit {
    let result = match args.command {
        Sub::New(a) => new(&a),
        Sub::Build(a) => build(&a),
    };
    match result {
        Ok(()) => Exit::Ok,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit()
        }
    }
}

/// Why a `keel plugin` command failed.
#[derive(Debug)]
enum Error {
    /// A usage problem (exit 2).
    Usage(String),
    /// The build failed (exit 1).
    Build(String),
}

impl Error {
    fn exit(&self) -> Exit {
        match self {
            Error::Usage(_) => Exit::Usage,
            Error::Build(_) => Exit::Failed,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(m) | Error::Build(m) => f.write_str(m),
        }
    }
}

fn shown(p: &Path) -> String {
    keel_engine::escape(&p.display().to_string())
}

// ---- keel plugin new ----------------------------------------------------------------------

/// The SDK this binary carries: its sources and WIT world, and a manifest with the same
/// dependencies as the guest workspace gives it (checked by a test).
const SDK_LIB: &str = include_str!("../../../../wasm-plugins/sdk/src/lib.rs");
const SDK_WIT: &str = include_str!("../../../../wasm-plugins/wit/policy.wit");
pub(crate) const SDK_MANIFEST: &str = r#"[package]
name = "keel-plugin"
version = "1.0.0"
edition = "2021"
description = "Write Keel policy plugins (WIT world keel:policy@1.0.0) in a few lines of Rust"
license = "Apache-2.0"
publish = false

[dependencies]
wit-bindgen = { version = "0.57.1", default-features = false, features = ["macros", "realloc"] }
serde_json = "1"
"#;

const TEMPLATE: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!("template/Cargo.toml.in")),
    ("src/lib.rs", include_str!("template/lib.rs.in")),
    ("policy.yaml", include_str!("template/policy.yaml.in")),
    (
        "policy.test.yaml",
        include_str!("template/policy.test.yaml.in"),
    ),
    (".gitignore", include_str!("template/gitignore.in")),
    ("README.md", include_str!("template/README.md.in")),
];

/// A name cargo accepts for a package and Keel for a policy: `[a-z][a-z0-9_-]*`, at most 64.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z'))
        && name.len() <= 64
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '-' | '_'))
}

/// The files of a new plugin crate named `name` depending on the SDK at `sdk` (as written
/// into Cargo.toml), with the vendored SDK when `sdk` is `None`.
fn files(name: &str, sdk: Option<&str>) -> Vec<(String, String)> {
    let sdk_path = sdk.unwrap_or("sdk");
    let sdk_note = match sdk {
        None => "`sdk/` is the `keel-plugin` SDK for the interface `keel:policy@1.0.0`, as carried by the\n`keel` binary that created this crate.",
        Some(_) => "The crate depends on the `keel-plugin` SDK named in `Cargo.toml`.",
    };
    let mut out: Vec<(String, String)> = TEMPLATE
        .iter()
        .map(|(path, text)| {
            let text = text
                .replace("{{name}}", name)
                .replace("{{sdk}}", sdk_path)
                .replace("{{sdk_note}}", sdk_note);
            ((*path).to_string(), text)
        })
        .collect();
    if sdk.is_none() {
        out.push(("sdk/Cargo.toml".into(), SDK_MANIFEST.into()));
        out.push(("sdk/src/lib.rs".into(), SDK_LIB.into()));
        out.push(("sdk/wit/policy.wit".into(), SDK_WIT.into()));
    }
    out
}

fn new(a: &NewArgs) -> Result<(), Error> {
    if !valid_name(&a.name) {
        return Err(Error::Usage(format!(
            "{:?} is not a plugin name: use lowercase letters, digits, `-` and `_`, starting with a letter (at most 64)",
            keel_engine::escape(&a.name)
        )));
    }
    let dir = a.dir.clone().unwrap_or_else(|| PathBuf::from(&a.name));
    match std::fs::read_dir(&dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(Error::Usage(format!(
                    "{}: the directory is not empty (keel plugin new writes a new crate)",
                    shown(&dir)
                )));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::Usage(format!("{}: {e}", shown(&dir)))),
    }
    let sdk = match &a.sdk {
        None => None,
        Some(p) => {
            let s = p.to_str().ok_or_else(|| {
                Error::Usage(format!("--sdk {}: the path is not UTF-8", shown(p)))
            })?;
            // Written into a TOML string: refuse what would need escaping there.
            if s.chars().any(|c| c == '"' || c == '\\' || c.is_control()) {
                return Err(Error::Usage(format!(
                    "--sdk {}: the path has a quote, backslash or control character",
                    shown(p)
                )));
            }
            Some(s.to_string())
        }
    };
    for (rel, text) in files(&a.name, sdk.as_deref()) {
        let path = dir.join(&rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::Usage(format!("{}: {e}", shown(parent))))?;
        }
        std::fs::write(&path, text).map_err(|e| Error::Usage(format!("{}: {e}", shown(&path))))?;
    }
    println!("created the plugin crate {} in {}", a.name, shown(&dir));
    println!("next:");
    println!("  cd {}", shown(&dir));
    println!("  rustup target add wasm32-unknown-unknown   # once");
    println!("  keel plugin build");
    println!("  keel test .");
    Ok(())
}

// ---- keel plugin build --------------------------------------------------------------------

const TARGET: &str = "wasm32-unknown-unknown";

/// The crate's cdylib as `cargo metadata` describes it.
struct Crate {
    package: String,
    lib: String,
    target_dir: PathBuf,
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Reads the crate at `manifest` with `cargo metadata`: its package name, cdylib target and
/// target directory.
fn read_crate(manifest: &Path) -> Result<Crate, Error> {
    let out = Command::new(cargo())
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--manifest-path",
        ])
        .arg(manifest)
        .output()
        .map_err(|e| Error::Usage(format!("running cargo: {e}")))?;
    if !out.status.success() {
        return Err(Error::Usage(format!(
            "{}: cargo cannot read the crate:\n{}",
            shown(manifest),
            keel_engine::escape(String::from_utf8_lossy(&out.stderr).trim())
        )));
    }
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| Error::Usage(format!("cargo metadata: {e}")))?;
    let wanted = std::fs::canonicalize(manifest).unwrap_or_else(|_| manifest.to_path_buf());
    let packages = meta["packages"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let package = packages
        .iter()
        .find(|p| {
            p["manifest_path"]
                .as_str()
                .is_some_and(|m| std::fs::canonicalize(m).ok().as_deref() == Some(&wanted))
        })
        .or_else(|| (packages.len() == 1).then(|| &packages[0]))
        .ok_or_else(|| {
            Error::Usage(format!(
                "{}: not a package (a workspace root? name the plugin crate's directory)",
                shown(manifest)
            ))
        })?;
    let name = package["name"].as_str().unwrap_or_default().to_string();
    let lib = package["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| {
            t["crate_types"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "cdylib"))
        })
        .and_then(|t| t["name"].as_str())
        .ok_or_else(|| {
            Error::Usage(format!(
                "{}: the package {} has no cdylib (a plugin needs `[lib] crate-type = [\"cdylib\"]`)",
                shown(manifest),
                keel_engine::escape(&name)
            ))
        })?
        .replace('-', "_");
    let target_dir = meta["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .ok_or_else(|| Error::Usage("cargo metadata gave no target directory".into()))?;
    Ok(Crate {
        package: name,
        lib,
        target_dir,
    })
}

/// Whether rustc has the standard library for [`TARGET`] (rustup installs it per target).
fn target_installed() -> bool {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(out) = Command::new(rustc).args(["--print", "sysroot"]).output() else {
        return true; // let cargo say what is wrong
    };
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    sysroot.is_empty()
        || Path::new(&sysroot)
            .join("lib/rustlib")
            .join(TARGET)
            .join("lib")
            .is_dir()
}

/// Wraps a core module built with the SDK into a component (validated).
pub(crate) fn componentize(module: &[u8]) -> Result<Vec<u8>, String> {
    wit_component::ComponentEncoder::default()
        .module(module)
        .map_err(|e| format!("reading the module's component-type section (is it built with keel-plugin?): {e:#}"))?
        .validate(true)
        .encode()
        .map_err(|e| format!("encoding the component: {e:#}"))
}

fn build(a: &BuildArgs) -> Result<(), Error> {
    let manifest = a.dir.join("Cargo.toml");
    if !manifest.is_file() {
        return Err(Error::Usage(format!(
            "{}: no Cargo.toml (create a plugin with `keel plugin new NAME`)",
            shown(&a.dir)
        )));
    }
    let krate = read_crate(&manifest)?;
    if !target_installed() {
        return Err(Error::Usage(format!(
            "the Rust target {TARGET} is not installed: rustup target add {TARGET}"
        )));
    }
    let mut cmd = Command::new(cargo());
    cmd.args(["build", "--lib", "--target", TARGET, "--manifest-path"])
        .arg(&manifest)
        // A small shadow stack: Keel gives a plugin a few MiB of memory in all.
        .env(
            "CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS",
            "-C link-arg=-zstack-size=131072",
        );
    if !a.debug {
        cmd.arg("--release");
    }
    let status = cmd
        .status()
        .map_err(|e| Error::Build(format!("running cargo: {e}")))?;
    if !status.success() {
        return Err(Error::Build(format!(
            "cargo build failed ({status}) for {}",
            shown(&manifest)
        )));
    }
    let profile = if a.debug { "debug" } else { "release" };
    let module_path = krate
        .target_dir
        .join(TARGET)
        .join(profile)
        .join(format!("{}.wasm", krate.lib));
    let module = std::fs::read(&module_path)
        .map_err(|e| Error::Build(format!("{}: {e}", shown(&module_path))))?;
    let component = componentize(&module).map_err(|e| {
        Error::Build(format!(
            "{}: {}",
            shown(&module_path),
            keel_engine::escape(&e)
        ))
    })?;
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| a.dir.join(format!("{}.wasm", krate.package)));
    write_atomically(&out, &component)?;
    println!(
        "{} ({} bytes, sha256 {})",
        shown(&out),
        component.len(),
        hex::encode(Sha256::digest(&component))
    );
    Ok(())
}

/// Writes `bytes` to `path` through a temporary file beside it, so a policy set reloading
/// meanwhile sees the old component or the new one, never half of one.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::Usage(format!("--out {}: not a file name", shown(path))))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    std::fs::write(&tmp, bytes).map_err(|e| Error::Usage(format!("{}: {e}", shown(&tmp))))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::Usage(format!("{}: {e}", shown(path)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "drain-reboots", "team_policy2", &"a".repeat(64)] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            "A",
            "2x",
            "-x",
            "a b",
            "a/b",
            "../x",
            "a.b",
            "é",
            &"a".repeat(65),
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn the_template_is_filled_in() {
        let vendored = files("drain-reboots", None);
        let names: Vec<&str> = vendored.iter().map(|(p, _)| p.as_str()).collect();
        assert!(names.contains(&"sdk/wit/policy.wit"), "{names:?}");
        for (path, text) in &vendored {
            assert!(
                !text.contains("{{"),
                "{path} has a placeholder left:\n{text}"
            );
        }
        let cargo = &vendored[0].1;
        assert!(cargo.contains("name = \"drain-reboots\""), "{cargo}");
        assert!(
            cargo.contains("keel-plugin = { path = \"sdk\" }"),
            "{cargo}"
        );
        let given = files("x", Some("../sdk"));
        assert!(given.iter().all(|(p, _)| !p.starts_with("sdk/")));
        assert!(given[0].1.contains("keel-plugin = { path = \"../sdk\" }"));
    }

    /// The vendored SDK's manifest asks for what the guest workspace gives the real one.
    #[test]
    fn the_vendored_sdk_has_the_guest_workspace_dependencies() {
        let guest = include_str!("../../../../wasm-plugins/Cargo.toml");
        let sdk = include_str!("../../../../wasm-plugins/sdk/Cargo.toml");
        for line in SDK_MANIFEST.lines() {
            for dep in ["wit-bindgen", "serde_json"] {
                if line.starts_with(&format!("{dep} =")) {
                    assert!(
                        guest.contains(line),
                        "{line} is not in wasm-plugins/Cargo.toml"
                    );
                }
            }
            if line.starts_with("version =") || line.starts_with("description =") {
                assert!(
                    guest.contains(line) || sdk.contains(line),
                    "{line} differs from the SDK's"
                );
            }
        }
    }
}
