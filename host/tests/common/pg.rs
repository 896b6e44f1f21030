//! A real PostgreSQL server for the fleet tests: Debian's `postgresql` binaries, a cluster
//! made by `initdb` in a temporary directory (as the `postgres` user when the tests run as
//! root, since `initdb` refuses root), listening on loopback only, with password
//! (SCRAM) authentication for the `keel` user; stopped and removed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The password of the `keel` user.
pub const PASSWORD: &str = "keel-test-password-7f3a";

/// A running server.
pub struct PgServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
    as_postgres: bool,
    /// With TLS: the CA certificate (PEM) that signed the server's (`localhost`, 127.0.0.1).
    pub ca: Option<PathBuf>,
}

/// Where the server binaries are: `KEEL_PG_BINDIR`, else Debian's newest
/// `/usr/lib/postgresql/*/bin`, else the directory of `initdb` on `PATH`, else `pg_config
/// --bindir`.
fn bindir() -> PathBuf {
    if let Ok(d) = std::env::var("KEEL_PG_BINDIR") {
        return PathBuf::from(d);
    }
    let mut debian: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| rd.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    debian.retain(|p| p.join("initdb").exists());
    debian.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    if let Some(d) = debian.pop() {
        return d;
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .find(|d| d.join("initdb").exists() && d.join("pg_ctl").exists());
    if let Some(d) = on_path {
        return d;
    }
    let out = Command::new("pg_config").arg("--bindir").output().expect(
        "PostgreSQL's server binaries: install Debian's `postgresql` package (`.ci/run` does)",
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl PgServer {
    /// Makes a cluster and starts it.
    pub fn start() -> PgServer {
        PgServer::make(false)
    }

    /// Makes a cluster that also speaks TLS, with a certificate for `localhost` and
    /// 127.0.0.1 signed by a CA made here ([`PgServer::ca`]; `openssl` makes both), and starts
    /// it.
    pub fn start_tls() -> PgServer {
        PgServer::make(true)
    }

    fn make(tls: bool) -> PgServer {
        let bin = bindir();
        let dir = tempfile::Builder::new()
            .prefix("keel-pg-")
            .tempdir()
            .unwrap();
        let as_postgres = nix::unistd::geteuid().is_root();
        let data = dir.path().join("data");
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, PASSWORD).unwrap();
        let ca = tls.then(|| make_certs(dir.path()));
        if as_postgres {
            // The server runs as `postgres`: it needs the directory (and nothing else here).
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
        }
        let mut s = PgServer {
            dir,
            bin,
            port: free_port(),
            as_postgres,
            ca,
        };
        let out = s.run(
            "initdb",
            &[
                "-D",
                &data.display().to_string(),
                "-U",
                "keel",
                "--pwfile",
                &pwfile.display().to_string(),
                "--auth-host=scram-sha-256",
                "--auth-local=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ],
        );
        assert!(out.status.success(), "initdb: {}", text(&out));
        s.start_server();
        s
    }

    fn run(&self, tool: &str, args: &[&str]) -> Output {
        let exe = self.bin.join(tool);
        let mut c = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        c.args(args).current_dir(self.dir.path()).output().unwrap()
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// Starts the server (again, after [`PgServer::stop`]) and waits until it accepts
    /// connections.
    pub fn start_server(&mut self) {
        let mut opts = format!(
            "-c listen_addresses=127.0.0.1 -p {} -c unix_socket_directories={} -c fsync=off -c max_connections=100",
            self.port,
            self.dir.path().display()
        );
        // The benchmark's statement counts and times (`KEEL_BENCH_PG_STATS=1`).
        if std::env::var("KEEL_BENCH_PG_STATS").as_deref() == Ok("1") {
            opts.push_str(" -c shared_preload_libraries=pg_stat_statements");
        }
        if self.ca.is_some() {
            let tls = self.dir.path().join("tls");
            opts.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                tls.join("server.crt").display(),
                tls.join("server.key").display()
            ));
        }
        let log = self.dir.path().join("server.log").display().to_string();
        let out = self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-o",
                &opts,
                "-l",
                &log,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start: {}\n{}",
            text(&out),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.with_client("postgres", |_| ()).is_err() {
            assert!(
                Instant::now() < deadline,
                "the server does not accept connections"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server at once (`immediate`: as a crash would, open connections are cut).
    pub fn stop(&self) {
        let out = self.run(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        );
        assert!(out.status.success(), "pg_ctl stop: {}", text(&out));
    }

    /// Runs `f` with a client of database `db` as `keel`, on a thread of its own (the
    /// synchronous client must not block a thread of the test's runtime).
    pub fn with_client<R: Send>(
        &self,
        db: &str,
        f: impl FnOnce(&mut postgres::Client) -> R + Send,
    ) -> Result<R, postgres::Error> {
        std::thread::scope(|s| {
            s.spawn(|| self.client(db).map(|mut c| f(&mut c)))
                .join()
                .unwrap()
        })
    }

    /// The integers of the first column of `sql`'s rows, with the text of the second when
    /// there is one (`SELECT host, COUNT(*) …` reads as `("host", n)`).
    pub fn rows(&self, db: &str, sql: &str) -> Vec<(String, i64)> {
        self.with_client(db, |c| {
            c.query(sql, &[])
                .unwrap()
                .iter()
                .map(|r| {
                    if r.len() == 1 {
                        (String::new(), r.get::<_, i64>(0))
                    } else {
                        (r.get::<_, String>(0), r.get::<_, i64>(1))
                    }
                })
                .collect()
        })
        .unwrap()
    }

    /// Every row of `sql`, each column read as text (NULL as `None`).
    pub fn texts(&self, db: &str, sql: &str) -> Vec<Vec<Option<String>>> {
        self.with_client(db, |c| {
            c.query(sql, &[])
                .unwrap()
                .iter()
                .map(|r| {
                    (0..r.len())
                        .map(|i| r.get::<_, Option<String>>(i))
                        .collect()
                })
                .collect()
        })
        .unwrap()
    }

    /// The one integer `sql` returns.
    pub fn count(&self, db: &str, sql: &str) -> i64 {
        self.rows(db, sql)[0].1
    }

    fn client(&self, db: &str) -> Result<postgres::Client, postgres::Error> {
        postgres::Config::new()
            .host("127.0.0.1")
            .port(self.port)
            .user("keel")
            .password(PASSWORD)
            .dbname(db)
            .connect_timeout(Duration::from_secs(5))
            .connect(postgres::NoTls)
    }

    /// Creates an empty database and returns its URL (no password: Keel refuses one in it).
    pub fn create_db(&self, name: &str) -> String {
        self.with_client("postgres", |c| {
            c.batch_execute(&format!("CREATE DATABASE {name}"))
        })
        .unwrap()
        .unwrap();
        format!("postgres://keel@127.0.0.1:{}/{name}", self.port)
    }

    /// Drops a database (its hosts stopped): a benchmark's next run then shares the server
    /// with no vacuum of the last one's rows.
    pub fn drop_db(&self, name: &str) {
        self.with_client("postgres", |c| {
            c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        })
        .unwrap()
        .unwrap();
    }

    /// A file holding the password (for `postgres.password_file`).
    pub fn password_file(&self, dir: &Path) -> PathBuf {
        let p = dir.join("db-password");
        std::fs::write(&p, format!("{PASSWORD}\n")).unwrap();
        p
    }
}

/// A CA and a server certificate for `localhost` and 127.0.0.1 it signed, in `dir/tls/`; the
/// CA certificate's path.
fn make_certs(dir: &Path) -> PathBuf {
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    std::fs::write(
        tls.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    for args in [
        "req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=keel-test-ca",
        "req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=localhost",
        "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.crt -days 2 -extfile san.ext",
    ] {
        let out = Command::new("openssl")
            .args(args.split(' '))
            .current_dir(&tls)
            .output()
            .expect("openssl (Debian's postgresql package depends on it)");
        assert!(out.status.success(), "openssl {args}: {}", text(&out));
    }
    // The server refuses a key others can read.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        tls.join("server.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    tls.join("ca.pem")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self.run(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        );
    }
}
