//! `keel playground`: a page to try policies in, served from files embedded in the binary.
//!
//! Everything is computed in the browser by the engine's WebAssembly module (through the
//! JavaScript package of `wasm-plugins/engine-module/js/`); the server only serves files: the
//! page, its script and style, the package, the module, and the embedded standard library with
//! its vendor fixtures as `library.json`. It answers GET and HEAD on those paths and nothing
//! else, listens on loopback by default, and sends a content security policy that lets the
//! page load only its own files.

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::{library, Exit};

include!(concat!(env!("OUT_DIR"), "/engine_module.rs"));

/// The page and its script and style.
const INDEX: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("playground.js");
const STYLE: &str = include_str!("playground.css");
/// The JavaScript package over the engine module.
const PACKAGE: &str = include_str!("../../../../wasm-plugins/engine-module/js/keel.js");

/// Scripts from this origin only, and WebAssembly compiled from them; nothing framed, nothing
/// sent elsewhere.
const CSP: &str = "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; \
connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Serve the policy playground: edit policies, paste an event or a vendor payload, see the
/// decision, the explain trace and the diagnostics, all computed in the browser.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  keel playground\n  keel playground --listen 127.0.0.1:8080\n  keel playground --module target/wasm32-unknown-unknown/release/keel_engine_module.wasm\n\nThen open the printed address in a browser. The standard library is preloaded; the engine\nruns in the page (WebAssembly), the server only serves files. A binary built without the\n`playground` feature has no engine module inside: build one with\n  cargo build -p keel-engine-module --target wasm32-unknown-unknown --release\nand pass it with --module, or run\n  cargo run -p keel-host --features playground -- playground\n\nExit codes: 0 stopped (Ctrl-C), 2 no engine module or an unreadable --module, 4 the address\ncannot be listened on."
)]
pub struct Args {
    /// The address to listen on (loopback by default; the page is static, but keep it local).
    #[arg(long, default_value = "127.0.0.1:8765", value_name = "ADDR")]
    listen: SocketAddr,
    /// The engine module to serve instead of the embedded one (`keel_engine_module.wasm`).
    #[arg(long, value_name = "FILE")]
    module: Option<PathBuf>,
}

/// Runs `keel playground`.
pub fn run(args: Args) -> Exit {
    let module: Vec<u8> = match (&args.module, ENGINE_MODULE) {
        (Some(path), _) => match std::fs::read(path) {
            Ok(bytes) if bytes.starts_with(b"\0asm") => bytes,
            Ok(_) => {
                eprintln!(
                    "error: --module {}: not a WebAssembly module",
                    keel_engine::escape(&path.display().to_string())
                );
                return Exit::Usage;
            }
            Err(e) => {
                eprintln!(
                    "error: --module {}: {e}",
                    keel_engine::escape(&path.display().to_string())
                );
                return Exit::Usage;
            }
        },
        (None, Some(embedded)) => embedded.to_vec(),
        (None, None) => {
            eprintln!(
                "error: this keel was built without the playground's engine module\n  \
                 help: cargo run -p keel-host --features playground -- playground\n  \
                 or:   cargo build -p keel-engine-module --target wasm32-unknown-unknown --release\n        \
                 keel playground --module target/wasm32-unknown-unknown/release/keel_engine_module.wasm"
            );
            return Exit::Usage;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return Exit::Host;
        }
    };
    runtime.block_on(serve(args.listen, module))
}

async fn serve(addr: SocketAddr, module: Vec<u8>) -> Exit {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {addr}: {e}");
            return Exit::Host;
        }
    };
    let local = listener.local_addr().unwrap_or(addr);
    if !local.ip().is_loopback() {
        eprintln!(
            "warning: serving the playground on {local}, beyond this machine (it serves static files only)"
        );
    }
    println!("keel playground: http://{local}/ (Ctrl-C to stop)");
    let app = router(module);
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    match axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
    {
        Ok(()) => Exit::Ok,
        Err(e) => {
            eprintln!("error: the playground server stopped: {e}");
            Exit::Host
        }
    }
}

/// The playground's routes: static files only.
pub fn router(module: Vec<u8>) -> Router {
    let library = library_json();
    let module: &'static [u8] = Box::leak(module.into_boxed_slice());
    let library: &'static str = Box::leak(library.into_boxed_str());
    Router::new()
        .route(
            "/",
            get(|| async { file("text/html; charset=utf-8", INDEX.as_bytes()) }),
        )
        .route(
            "/playground.js",
            get(|| async { file("text/javascript; charset=utf-8", SCRIPT.as_bytes()) }),
        )
        .route(
            "/playground.css",
            get(|| async { file("text/css; charset=utf-8", STYLE.as_bytes()) }),
        )
        .route(
            "/keel.js",
            get(|| async { file("text/javascript; charset=utf-8", PACKAGE.as_bytes()) }),
        )
        .route(
            "/keel_engine_module.wasm",
            get(move || async move { file("application/wasm", module) }),
        )
        .route(
            "/library.json",
            get(move || async move { file("application/json", library.as_bytes()) }),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
}

fn file(content_type: &'static str, body: &'static [u8]) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// The embedded standard library's policy files and its vendor fixtures, for the page:
/// `{"policies": [{"name", "yaml"}], "fixtures": [{"name", "text"}]}`.
fn library_json() -> String {
    let mut policies = Vec::new();
    let mut fixtures = Vec::new();
    for (path, text) in library::files() {
        let name = path.rsplit('/').next().unwrap_or(path);
        if path.starts_with("standard/") && keel_engine::is_policy_file(name) {
            policies.push(serde_json::json!({"name": path, "yaml": text}));
        } else if let Some(rest) = path.strip_prefix("fixtures/") {
            if !rest.contains('/') && !rest.ends_with(".md") {
                fixtures.push(serde_json::json!({"name": rest, "text": text}));
            }
        }
    }
    serde_json::json!({"policies": policies, "fixtures": fixtures}).to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// Serves `router(module)` on a loopback port: its base URL.
    async fn start(module: Vec<u8>) -> String {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router(module)).await });
        format!("http://{addr}")
    }

    async fn get(base: &str, path: &str) -> reqwest::Response {
        reqwest::get(format!("{base}{path}")).await.unwrap()
    }

    #[tokio::test]
    async fn serves_the_page_its_files_and_nothing_else() {
        let base = start(b"\0asm\x01\0\0\0".to_vec()).await;
        let r = get(&base, "/").await;
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        assert!(r.text().await.unwrap().contains("playground.js"));
        let r = get(&base, "/keel_engine_module.wasm").await;
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/wasm");
        assert_eq!(&r.bytes().await.unwrap()[..], b"\0asm\x01\0\0\0");
        let js = get(&base, "/keel.js").await.text().await.unwrap();
        assert!(js.contains("export class Keel"));
        let lib: serde_json::Value = get(&base, "/library.json").await.json().await.unwrap();
        let policies = lib["policies"].as_array().unwrap();
        assert!(policies.len() >= 5, "{policies:?}");
        assert!(policies.iter().all(|p| {
            let n = p["name"].as_str().unwrap();
            n.starts_with("standard/") && !n.ends_with(".test.yaml")
        }));
        assert!(lib["fixtures"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["name"] == "arm-error-artifact-version-not-found-2021-10-13.json"));
        for path in [
            "/Cargo.toml",
            "/%2e%2e/Cargo.toml",
            "/etc/passwd",
            "/index.html",
        ] {
            assert_eq!(get(&base, path).await.status(), 404, "{path}");
        }
        let post = reqwest::Client::new()
            .post(format!("{base}/"))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(post.status(), 405);
    }

    #[tokio::test]
    async fn every_file_carries_the_security_headers() {
        let base = start(Vec::new()).await;
        for path in [
            "/",
            "/playground.js",
            "/playground.css",
            "/keel.js",
            "/library.json",
        ] {
            let r = get(&base, path).await;
            let h = r.headers();
            assert_eq!(h[header::CONTENT_SECURITY_POLICY], CSP, "{path}");
            assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{path}");
        }
    }
}
