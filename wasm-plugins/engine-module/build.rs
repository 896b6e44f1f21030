//! Gives unoptimized wasm32 builds of the module a larger stack (see "Stack" in the crate docs).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    if var("CARGO_CFG_TARGET_ARCH") == "wasm32" && var("OPT_LEVEL") == "0" {
        // Without optimization the `cel` parser takes about 90 KiB of wasm stack per bracket
        // level: the deepest accepted nesting (24 levels) needs about 2.2 MiB, past rustc's
        // default 1 MiB. Optimized builds need about 80 KiB and keep the default.
        println!("cargo:rustc-link-arg-cdylib=-zstack-size={}", 8 << 20);
    }
}
