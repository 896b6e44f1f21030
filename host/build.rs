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
    let dest = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default()).join("library.rs");
    if let Err(e) = std::fs::write(&dest, out) {
        println!("cargo:warning=cannot write {}: {e}", dest.display());
        std::process::exit(1);
    }
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
