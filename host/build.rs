//! Embeds the standard policy library in the `keel` binary (issue 15): every file of
//! `policies/standard/` (policies and their tests) and the vendor payloads of
//! `policies/fixtures/` the tests read, as a table `LIBRARY: &[(&str, &str)]` of
//! (path relative to `policies/`, content) in `$OUT_DIR/library.rs`, included by
//! `src/library.rs`.
//!
//! A generated table of `include_str!` rather than a crate (`include_dir`): no new dependency,
//! `include_str!` makes each file a dependency of the build, and `rerun-if-changed` on the two
//! directories makes a new or removed file one too (a proc macro on stable Rust cannot ask
//! for that), so the binary never carries a stale library. The library is read from the
//! repository (`../policies`), which `cargo build` and `cargo install --path host` both have.
//!
//! With the `playground` feature it also embeds the engine's WebAssembly module for
//! `keel playground`: `$KEEL_ENGINE_MODULE` when set (a prebuilt `keel_engine_module.wasm`),
//! otherwise built here by a nested `cargo build -p keel-engine-module --target
//! wasm32-unknown-unknown --release` in `<target>/playground-module` (its own target directory:
//! the outer build holds the lock of its own). `$OUT_DIR/engine_module.rs` holds
//! `ENGINE_MODULE: Option<&[u8]>`, `None` without the feature.

use std::path::{Path, PathBuf};

/// What the snapshot tests of the engine keep beside the payloads and the library does not
/// need: the options table, the sequence manifests and the workflow notes.
const NOT_EMBEDDED: &[&str] = &[
    "fixtures/cases.json",
    "fixtures/README.md",
    "fixtures/sequences",
];

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let root = manifest.join("../policies");
    let mut files = Vec::new();
    for dir in ["standard", "fixtures"] {
        println!("cargo:rerun-if-changed=../policies/{dir}");
        walk(&root, &root.join(dir), &mut files);
    }
    files.sort();
    let mut out = String::from(
        "/// The embedded library: (path relative to `policies/`, content), sorted by path.\n\
         pub static LIBRARY: &[(&str, &str)] = &[\n",
    );
    for (rel, abs) in &files {
        out.push_str(&format!("    ({rel:?}, include_str!({abs:?})),\n"));
    }
    out.push_str("];\n");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default());
    write(&out_dir.join("library.rs"), &out);
    let module = if std::env::var_os("CARGO_FEATURE_PLAYGROUND").is_some() {
        let wasm = engine_module(&manifest, &out_dir);
        format!("Some(include_bytes!({:?}))", wasm.to_string_lossy())
    } else {
        "None".to_string()
    };
    write(
        &out_dir.join("engine_module.rs"),
        &format!(
            "/// The engine module `keel playground` serves (the `playground` feature).\n\
             pub static ENGINE_MODULE: Option<&[u8]> = {module};\n"
        ),
    );
}

fn write(dest: &Path, text: &str) {
    if let Err(e) = std::fs::write(dest, text) {
        println!("cargo:warning=cannot write {}: {e}", dest.display());
        std::process::exit(1);
    }
}

/// Fails the build with `msg`.
fn fail(msg: &str) -> ! {
    for line in msg.lines() {
        println!("cargo:warning={line}");
    }
    std::process::exit(1);
}

/// The engine module's `.wasm`, prebuilt or built now.
fn engine_module(manifest: &Path, out_dir: &Path) -> PathBuf {
    println!("cargo:rerun-if-env-changed=KEEL_ENGINE_MODULE");
    if let Some(given) = std::env::var_os("KEEL_ENGINE_MODULE") {
        let given = PathBuf::from(given);
        if !given.is_file() {
            fail(&format!(
                "KEEL_ENGINE_MODULE={}: no such file",
                given.display()
            ));
        }
        println!("cargo:rerun-if-changed={}", given.display());
        return given;
    }
    for dir in [
        "../engine/src",
        "../wasm-plugins/engine-module/src",
        "../engine/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={dir}");
    }
    // The target directory: the ancestor of OUT_DIR that cargo tagged as one.
    let target = out_dir
        .ancestors()
        .find(|d| d.join("CACHEDIR.TAG").is_file())
        .map_or_else(|| out_dir.to_path_buf(), Path::to_path_buf)
        .join("playground-module");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.current_dir(manifest.join(".."))
        .args([
            "build",
            "-p",
            "keel-engine-module",
            "--target",
            "wasm32-unknown-unknown",
            "--release",
            "--locked",
        ])
        .arg("--target-dir")
        .arg(&target);
    // The outer build's flags are for this host, not for wasm32 (a `-fuse-ld=mold` would break
    // the link).
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        cmd.env_remove(var);
    }
    match cmd.status() {
        Ok(s) if s.success() => {}
        Ok(s) => fail(&format!(
            "building the engine module for the playground failed ({s}).\n\
             It needs the wasm32 target: rustup target add wasm32-unknown-unknown\n\
             (or build without --features playground, or set KEEL_ENGINE_MODULE to a prebuilt module)"
        )),
        Err(e) => fail(&format!("cannot run cargo to build the engine module: {e}")),
    }
    target.join("wasm32-unknown-unknown/release/keel_engine_module.wasm")
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        println!("cargo:warning=cannot read {}", dir.display());
        std::process::exit(1);
    };
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(rel) = path.strip_prefix(root) else {
            continue;
        };
        let rel: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        let rel = rel.join("/");
        if name.starts_with('.') || NOT_EMBEDDED.contains(&rel.as_str()) {
            continue;
        }
        if path.is_dir() {
            walk(root, &path, out);
        } else {
            let abs = path.canonicalize().unwrap_or(path);
            out.push((rel, abs.to_string_lossy().into_owned()));
        }
    }
}
