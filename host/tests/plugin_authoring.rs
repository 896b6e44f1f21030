//! A plugin written outside this repository, as the README's "Plugins outside this repository"
//! walks through it: `keel plugin new` in an empty temporary directory, `keel plugin build`
//! (cargo for wasm32-unknown-unknown, then the component), `keel test .` and `keel check .`,
//! with the vendored SDK and only the `keel` binary. Needs the wasm32-unknown-unknown target
//! (test.sh adds it) and crates.io for the SDK's dependencies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

fn keel_in(dir: &Path, args: &[&str]) -> Output {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .current_dir(dir)
        // The plugin's build shares one target directory across runs (faster the second
        // time); flags meant for the host's own build (a linker) do not apply to wasm32.
        .env("CARGO_TARGET_DIR", root.join("target/plugin-authoring"))
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn show(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    )
}

#[test]
fn new_build_test_check_from_an_empty_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let out = keel_in(tmp.path(), &["plugin", "new", "drain-reboots"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(
        text(&out.stdout).contains("keel plugin build"),
        "{}",
        show(&out)
    );
    let dir = tmp.path().join("drain-reboots");
    for f in [
        "Cargo.toml",
        "src/lib.rs",
        "policy.yaml",
        "policy.test.yaml",
        "sdk/src/lib.rs",
        "sdk/wit/policy.wit",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }

    // A second `new` into the same directory refuses and changes nothing.
    let lib = std::fs::read(dir.join("src/lib.rs")).unwrap();
    let again = keel_in(tmp.path(), &["plugin", "new", "drain-reboots"]);
    assert_eq!(again.status.code(), Some(2), "{}", show(&again));
    assert!(
        text(&again.stderr).contains("not empty"),
        "{}",
        show(&again)
    );
    assert_eq!(std::fs::read(dir.join("src/lib.rs")).unwrap(), lib);

    let built = keel_in(&dir, &["plugin", "build"]);
    assert_eq!(built.status.code(), Some(0), "{}", show(&built));
    let component = std::fs::read(dir.join("drain-reboots.wasm")).unwrap();
    let digest = hex::encode(Sha256::digest(&component));
    let said = text(&built.stdout);
    assert!(said.contains(&format!("sha256 {digest}")), "{said}");
    assert!(
        said.contains(&format!("{} bytes", component.len())),
        "{said}"
    );

    let tested = keel_in(&dir, &["test", "."]);
    assert_eq!(tested.status.code(), Some(0), "{}", show(&tested));
    assert!(
        text(&tested.stdout).contains("3 passed"),
        "{}",
        show(&tested)
    );
    let checked = keel_in(&dir, &["check", "."]);
    assert_eq!(checked.status.code(), Some(0), "{}", show(&checked));

    // Pinned by the digest the build printed, the policy still loads; a wrong pin is refused.
    let policy = std::fs::read_to_string(dir.join("policy.yaml")).unwrap();
    let pinned = policy.replace(
        "      # sha256: \"<64 hex digits>\"",
        &format!("      sha256: \"{digest}\"\n      #"),
    );
    assert_ne!(pinned, policy);
    std::fs::write(dir.join("policy.yaml"), &pinned).unwrap();
    let tested = keel_in(&dir, &["test", "."]);
    assert_eq!(tested.status.code(), Some(0), "{}", show(&tested));
    std::fs::write(
        dir.join("policy.yaml"),
        pinned.replace(&digest, &"0".repeat(64)),
    )
    .unwrap();
    let refused = keel_in(&dir, &["check", "."]);
    assert_eq!(refused.status.code(), Some(3), "{}", show(&refused));

    // --out writes the component elsewhere, byte for byte the same build.
    let elsewhere = tmp.path().join("deployed.wasm");
    let out = keel_in(
        &dir,
        &["plugin", "build", "--out", elsewhere.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(std::fs::read(&elsewhere).unwrap(), component);
}

#[test]
fn usage_errors_exit_2_and_say_why() {
    let tmp = tempfile::tempdir().unwrap();
    for (args, says) in [
        (&["plugin", "new", "Drain Reboots"][..], "not a plugin name"),
        (&["plugin", "new", "../escape"][..], "not a plugin name"),
        (&["plugin", "build"][..], "no Cargo.toml"),
        (&["plugin", "new", "x", "--sdk", "a\"b"][..], "quote"),
    ] {
        let out = keel_in(tmp.path(), args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", show(&out));
        assert!(text(&out.stderr).contains(says), "{args:?}: {}", show(&out));
    }
    assert!(
        std::fs::read_dir(tmp.path()).unwrap().next().is_none(),
        "nothing written"
    );

    // A crate without a cdylib is not a plugin.
    let lib = tmp.path().join("not-a-plugin");
    std::fs::create_dir_all(lib.join("src")).unwrap();
    std::fs::write(
        lib.join("Cargo.toml"),
        "[package]\nname = \"not-a-plugin\"\nversion = \"0.1.0\"\nedition = \"2021\"\n[workspace]\n",
    )
    .unwrap();
    std::fs::write(lib.join("src/lib.rs"), "").unwrap();
    let out = keel_in(&lib, &["plugin", "build"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(text(&out.stderr).contains("no cdylib"), "{}", show(&out));
}
