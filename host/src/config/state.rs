//! `state:` (a SQLite file, or `postgres://` for a fleet) and the `postgres:` settings.
//!
//! A value that looks like a URL is understood (`postgres://`, `postgresql://`) or refused,
//! never taken as a file name: `state: mysql://db/keel` must not quietly create a file named
//! after it, which two hosts given the same URL would then share.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::{Secret, Value, V};

/// Fleet mode's database: where it is, who Keel is there, and how the connection is secured.
#[derive(Clone)]
pub struct Postgres {
    /// The URL as given (it never holds a password: one is refused).
    pub url: String,
    /// Host, port, user, database, timeouts.
    pub config: tokio_postgres::Config,
    /// The password (`postgres.password_file` or `postgres.password_env`), if any.
    pub password: Option<Secret>,
    /// TLS with the server's certificate and host name verified; `None` only on loopback with
    /// `sslmode=disable` (or no `sslmode`).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// This host's identity in the fleet (`postgres.identity`); else `self`, else the host
    /// name.
    pub identity: Option<String>,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres")
            .field("url", &self.url)
            .field("password", &self.password)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Postgres {
    /// The store's connection settings for the host `cfg` describes: its identity is
    /// `postgres.identity`, else `self` (the VM's name), else the machine's host name.
    pub fn settings(&self, cfg: &super::Config) -> crate::run::store::pg::Settings {
        let mut config = self.config.clone();
        if let Some(p) = &self.password {
            config.password(p.expose());
        }
        crate::run::store::pg::harden(&mut config);
        crate::run::store::pg::Settings {
            config,
            tls: self.tls.clone(),
            host: host_identity(self.identity.as_deref().or(cfg.self_name.as_deref())),
        }
    }
}

/// This host's identity in a fleet: `self`, else the machine's host name, else `keel`.
pub fn host_identity(self_name: Option<&str>) -> String {
    if let Some(me) = self_name {
        return me.to_string();
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| "keel".into())
}

/// The URL scheme of `s` (`postgres` of `postgres://…`), if `s` looks like a URL.
fn scheme(s: &str) -> Option<&str> {
    let (scheme, rest) = s.split_once(':')?;
    let first = scheme.chars().next()?;
    let url_like = first.is_ascii_alphabetic()
        && scheme.len() > 1
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        && rest.starts_with("//");
    url_like.then_some(scheme)
}

/// `state` and `postgres`: the SQLite file (also where the plugin cache goes by default), and
/// the fleet's database when `state` is a `postgres://` URL.
pub(super) fn parse_state(
    v: &mut V<'_>,
    base: &Path,
    state: Option<&Value>,
    section: Option<&Value>,
) -> (PathBuf, Option<Postgres>) {
    let default = base.join(".keel/state.db");
    let url = match state {
        Some(Value::String(s)) => match scheme(s) {
            Some(sc)
                if sc.eq_ignore_ascii_case("postgres") || sc.eq_ignore_ascii_case("postgresql") =>
            {
                Some(s.clone())
            }
            Some(sc) => {
                v.err(
                    "/state",
                    format!(
                        "`{}://` is not a state store Keel knows: give a SQLite file path, or a postgres:// URL",
                        keel_engine::escape(sc)
                    ),
                );
                return (default, None);
            }
            None => None,
        },
        _ => None,
    };
    let Some(url) = url else {
        if section.is_some() {
            v.err(
                "/postgres",
                "`postgres` only applies with `state: postgres://…`",
            );
        }
        return (v.path(base, "/state", state, ".keel/state.db"), None);
    };
    let pg = parse_postgres(v, base, &url, section);
    (default, pg)
}

fn parse_postgres(
    v: &mut V<'_>,
    base: &Path,
    raw: &str,
    section: Option<&Value>,
) -> Option<Postgres> {
    let empty = Value::Object(Default::default());
    let section = section.unwrap_or(&empty);
    v.keys(
        "/postgres",
        section,
        &["password_file", "password_env", "ca_file", "identity"],
    );
    let identity = match section.get("identity") {
        None => None,
        Some(Value::String(s))
            if !s.is_empty()
                && s.len() <= 128
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) =>
        {
            Some(s.clone())
        }
        Some(_) => {
            v.err(
                "/postgres/identity",
                "expected this host's name in the fleet: 1 to 128 letters, digits, `-`, `_` or `.`",
            );
            None
        }
    };
    let mut errs: Vec<(&str, String)> = Vec::new();
    let url = match url::Url::parse(raw) {
        Ok(u) => u,
        Err(e) => {
            v.err("/state", format!("not a valid postgres:// URL: {e}"));
            return None;
        }
    };
    let mut config = tokio_postgres::Config::new();
    let host = url
        .host_str()
        .unwrap_or("")
        .trim_matches(['[', ']'])
        .to_string();
    if host.is_empty() {
        errs.push((
            "/state",
            "the URL names no host (postgres://user@host:5432/db)".into(),
        ));
    }
    config.host(&host);
    config.port(url.port().unwrap_or(5432));
    let user = percent_decode(url.username());
    if user.is_empty() {
        errs.push((
            "/state",
            "the URL names no user (postgres://user@host:5432/db)".into(),
        ));
    }
    config.user(&user);
    let db = percent_decode(url.path().trim_start_matches('/'));
    config.dbname(if db.is_empty() { &user } else { &db });
    if url.password().is_some() {
        errs.push((
            "/state",
            "a password in the URL would sit in keel.yaml and in the process list: give it in `postgres.password_file` or `postgres.password_env`".into(),
        ));
    }
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    let mut sslmode = None;
    for (k, val) in url.query_pairs() {
        match &*k {
            "sslmode" => sslmode = Some(val.into_owned()),
            "connect_timeout" => match val.parse::<u64>() {
                Ok(s) if s > 0 => {
                    config.connect_timeout(Duration::from_secs(s));
                }
                _ => errs.push(("/state", "`connect_timeout` is a number of seconds".into())),
            },
            other => errs.push((
                "/state",
                format!(
                    "unknown URL parameter `{}`; expected sslmode or connect_timeout",
                    keel_engine::escape(other)
                ),
            )),
        }
    }
    let tls = match (sslmode.as_deref(), loopback) {
        (None | Some("disable"), true) => false,
        (None | Some("require" | "verify-ca" | "verify-full"), _) => true,
        (Some("disable"), false) => {
            errs.push((
                "/state",
                "`sslmode=disable` is refused off loopback: the connection carries the fleet's state and the password".into(),
            ));
            true
        }
        (Some(other), _) => {
            errs.push((
                "/state",
                format!(
                    "`sslmode={}` is not supported: use verify-full (the default off loopback; require and verify-ca verify as verify-full), or disable on loopback",
                    keel_engine::escape(other)
                ),
            ));
            true
        }
    };
    for (ptr, e) in errs {
        v.err(ptr, e);
    }
    let password = parse_password(v, base, section);
    // With TLS, nothing but TLS: tokio-postgres' default (`prefer`) would go on in plain
    // text when the server (or anyone in between) declines it.
    config.ssl_mode(if tls {
        tokio_postgres::config::SslMode::Require
    } else {
        tokio_postgres::config::SslMode::Disable
    });
    let tls = if tls {
        Some(Arc::new(tls_config(v, base, section.get("ca_file"))?))
    } else {
        if section.get("ca_file").is_some() {
            v.err(
                "/postgres/ca_file",
                "`ca_file` applies to TLS, which this URL turns off",
            );
        }
        None
    };
    Some(Postgres {
        url: raw.to_string(),
        config,
        password,
        tls,
        identity,
    })
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// `password_file` (relative to keel.yaml; its first line) or `password_env`, not both.
fn parse_password(v: &mut V<'_>, base: &Path, section: &Value) -> Option<Secret> {
    match (section.get("password_file"), section.get("password_env")) {
        (Some(_), Some(_)) => {
            v.err(
                "/postgres/password_env",
                "give `password_file` or `password_env`, not both",
            );
            None
        }
        (Some(Value::String(f)), None) => {
            let path = base.join(f);
            match std::fs::read_to_string(&path) {
                Ok(s) => Some(Secret::new(s.lines().next().unwrap_or("").to_string())),
                Err(e) => {
                    v.err(
                        "/postgres/password_file",
                        format!("cannot read `{}`: {e}", path.display()),
                    );
                    None
                }
            }
        }
        (None, Some(Value::String(name))) => match std::env::var(name) {
            Ok(s) if !s.is_empty() => Some(Secret::new(s)),
            _ => {
                v.err(
                    "/postgres/password_env",
                    format!(
                        "the environment variable `{}` is not set",
                        keel_engine::escape(name)
                    ),
                );
                None
            }
        },
        (Some(_), None) => {
            v.err("/postgres/password_file", "expected a path");
            None
        }
        (None, Some(_)) => {
            v.err(
                "/postgres/password_env",
                "expected an environment variable's name",
            );
            None
        }
        (None, None) => None,
    }
}

/// TLS that verifies the server's certificate chain and host name: against `ca_file`'s
/// certificates (PEM), else the Mozilla roots.
fn tls_config(v: &mut V<'_>, base: &Path, ca: Option<&Value>) -> Option<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(Value::String(f)) => {
            let path = base.join(f);
            let certs = rustls_pki_types::CertificateDer::pem_file_iter(&path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>());
            match certs {
                Ok(certs) if !certs.is_empty() => {
                    let (_, bad) = roots.add_parsable_certificates(certs);
                    if bad > 0 || roots.is_empty() {
                        v.err(
                            "/postgres/ca_file",
                            format!(
                                "`{}`: {bad} certificate(s) could not be used",
                                path.display()
                            ),
                        );
                    }
                }
                Ok(_) => v.err(
                    "/postgres/ca_file",
                    format!("`{}` holds no PEM certificate", path.display()),
                ),
                Err(e) => v.err(
                    "/postgres/ca_file",
                    format!("cannot read `{}`: {e}", path.display()),
                ),
            }
        }
        Some(_) => v.err("/postgres/ca_file", "expected a path"),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    match rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
    {
        Ok(b) => Some(b.with_root_certificates(roots).with_no_client_auth()),
        Err(e) => {
            v.err("/state", format!("cannot set up TLS: {e}"));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::scheme;

    #[test]
    fn url_looking_values_are_told_from_paths() {
        assert_eq!(scheme("postgres://u@h/db"), Some("postgres"));
        assert_eq!(scheme("mysql://db/keel"), Some("mysql"));
        assert_eq!(scheme("sqlite:///var/lib/keel.db"), Some("sqlite"));
        assert_eq!(scheme("/var/lib/keel/state.db"), None);
        assert_eq!(scheme("state.db"), None);
        assert_eq!(scheme("C:\\keel\\state.db"), None);
        assert_eq!(scheme("c://x"), None);
    }
}
