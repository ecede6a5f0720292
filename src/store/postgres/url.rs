//! `--database-url`: libpq's TLS settings (`sslmode`, `sslrootcert`) are read here, because
//! tokio-postgres knows only three of libpq's five modes and no root certificates; the rest of
//! the string goes to tokio-postgres's own parser. Pure: no files are read here.
//!
//! Both forms are understood, as libpq writes them: a URL
//! (`postgresql://user:pw@host:5432/db?sslmode=verify-full&sslrootcert=ca.pem`, values
//! percent-encoded) and key=value pairs (`host=db sslmode=verify-full sslrootcert='/etc/ca.pem'`,
//! values optionally single-quoted, backslash escapes).

use std::path::PathBuf;
use std::str::FromStr;

use tokio_postgres::config::{Host, SslMode as WireSslMode};

/// libpq's `sslmode`: whether TLS is used, and what of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS if the server offers it, plaintext if not (libpq's default).
    Prefer,
    /// TLS or nothing; the certificate is checked only if `sslrootcert` is given (as libpq).
    Require,
    /// TLS, with a certificate chain that leads to `sslrootcert`; any host name.
    VerifyCa,
    /// TLS, with a chain that leads to `sslrootcert` and a certificate for the host name.
    VerifyFull,
}

impl SslMode {
    /// Its name in a connection string.
    pub fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl FromStr for SslMode {
    type Err = DatabaseUrlError;

    fn from_str(s: &str) -> Result<SslMode, DatabaseUrlError> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            "allow" => return Err(DatabaseUrlError::AllowUnsupported),
            other => return Err(DatabaseUrlError::UnknownSslMode(other.to_owned())),
        })
    }
}

/// libpq's `sslrootcert`: whom the server's certificate must lead to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// A PEM file of one or more CA certificates.
    File(PathBuf),
    /// `sslrootcert=system`: the system's trusted roots.
    System,
}

/// What the connector checks of the database's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verify {
    /// Nothing: the connection is encrypted, but to whoever answers (libpq's `require`
    /// without a root certificate). Only the handshake's own signatures are checked.
    Nothing,
    /// The chain leads to these roots; any host name (`verify-ca`).
    Chain(RootCert),
    /// The chain leads to these roots and the certificate names the host (`verify-full`).
    ChainAndName(RootCert),
}

/// The TLS half of `--database-url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: SslMode,
    pub root: Option<RootCert>,
}

impl TlsSettings {
    /// No TLS: the managed cluster's Unix socket.
    pub fn disabled() -> TlsSettings {
        TlsSettings {
            mode: SslMode::Disable,
            root: None,
        }
    }

    /// What the certificate must pass, with libpq's rules: `verify-ca` and `verify-full`
    /// need a root; a root given with `prefer` or `require` makes them check the chain, as
    /// libpq does when it finds a root certificate.
    pub fn verify(&self) -> Verify {
        match (self.mode, &self.root) {
            (SslMode::VerifyFull, Some(root)) => Verify::ChainAndName(root.clone()),
            (_, Some(root)) if self.mode != SslMode::Disable => Verify::Chain(root.clone()),
            _ => Verify::Nothing,
        }
    }

    /// What tokio-postgres is told: it knows whether TLS is used, not what is checked.
    fn wire_mode(&self) -> WireSslMode {
        match self.mode {
            SslMode::Disable => WireSslMode::Disable,
            SslMode::Prefer => WireSslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => WireSslMode::Require,
        }
    }
}

/// A `--database-url` taken apart: tokio-postgres's settings and ours.
#[derive(Debug, Clone)]
pub struct DatabaseUrl {
    pub config: tokio_postgres::Config,
    pub tls: TlsSettings,
}

/// Why a `--database-url` cannot be used. No variant quotes the string: it may hold a
/// password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DatabaseUrlError {
    #[error("not a PostgreSQL connection string: {0}")]
    Syntax(String),
    #[error(
        "unknown sslmode {0:?}: use disable, prefer (the default), require, verify-ca or \
         verify-full"
    )]
    UnknownSslMode(String),
    #[error(
        "sslmode=allow is not supported: use prefer (TLS when the server offers it) or disable"
    )]
    AllowUnsupported,
    #[error(
        "sslmode={0} checks the database's certificate against sslrootcert: add \
         sslrootcert=<PEM file of the CA> (or sslrootcert=system for the system's roots)"
    )]
    NoRootCert(&'static str),
    #[error(
        "sslmode={0} may not be used with sslrootcert=system: a certificate from any public \
         CA would do, so the host name must be checked too (use sslmode=verify-full)"
    )]
    WeakWithSystemRoots(&'static str),
}

impl FromStr for DatabaseUrl {
    type Err = DatabaseUrlError;

    fn from_str(url: &str) -> Result<DatabaseUrl, DatabaseUrlError> {
        let (rest, mode, root) = take_tls_params(url)?;
        let mut config = tokio_postgres::Config::from_str(&rest)
            .map_err(|e| DatabaseUrlError::Syntax(e.to_string()))?;
        let root = root.map(|r| match r.as_str() {
            "system" => RootCert::System,
            _ => RootCert::File(PathBuf::from(r)),
        });
        let mode = match (mode, &root) {
            (Some(mode), _) => mode.parse()?,
            // libpq 16: the system's roots make verify-full the default.
            (None, Some(RootCert::System)) => SslMode::VerifyFull,
            (None, _) => SslMode::Prefer,
        };
        match (mode, &root) {
            (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
                return Err(DatabaseUrlError::NoRootCert(mode.name()))
            }
            (SslMode::VerifyFull, Some(RootCert::System)) | (SslMode::Disable, _) => {}
            (_, Some(RootCert::System)) => {
                return Err(DatabaseUrlError::WeakWithSystemRoots(mode.name()))
            }
            _ => {}
        }
        let tls = TlsSettings { mode, root };
        // libpq never uses TLS over a Unix socket (it is local), whatever the mode says; the
        // server would refuse it, and `require` would then fail.
        let all_local = config
            .get_hosts()
            .iter()
            .all(|h| matches!(h, Host::Unix(_)));
        if all_local && !config.get_hosts().is_empty() {
            config.ssl_mode(WireSslMode::Disable);
        } else {
            config.ssl_mode(tls.wire_mode());
        }
        Ok(DatabaseUrl { config, tls })
    }
}

/// The connection string without `sslmode` and `sslrootcert`, and their values (the last of
/// each, as libpq takes it).
fn take_tls_params(
    url: &str,
) -> Result<(String, Option<String>, Option<String>), DatabaseUrlError> {
    let params = if is_url(url) {
        url_params(url)?
    } else {
        key_value_params(url)?
    };
    let (mut mode, mut root) = (None, None);
    let mut rest = String::with_capacity(url.len());
    let mut kept_to = 0;
    for p in params {
        let slot = match p.key.as_str() {
            "sslmode" => &mut mode,
            "sslrootcert" => &mut root,
            _ => continue,
        };
        *slot = Some(p.value);
        rest.push_str(&url[kept_to..p.span.0]);
        kept_to = p.span.1;
    }
    rest.push_str(&url[kept_to..]);
    if is_url(url) {
        // Whatever was left dangling: `?&a=b`, `?a=b&`, a lone `?`.
        rest = tidy_query(&rest);
    }
    Ok((rest, mode, root))
}

fn is_url(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

/// One parameter: its key and value, decoded, and the bytes it spans in the string.
struct Param {
    key: String,
    value: String,
    span: (usize, usize),
}

/// A URL's query parameters. Where the query starts follows tokio-postgres: the credentials
/// end at the first `@`, and the query starts at the first `?` after them.
fn url_params(url: &str) -> Result<Vec<Param>, DatabaseUrlError> {
    let after_creds = url.find('@').map_or(0, |at| at + 1);
    let Some(q) = url[after_creds..].find('?').map(|q| after_creds + q) else {
        return Ok(Vec::new());
    };
    let mut params = Vec::new();
    let mut start = q + 1;
    for piece in url[q + 1..].split('&') {
        let end = start + piece.len();
        if let Some((key, value)) = piece.split_once('=') {
            params.push(Param {
                key: decode(key)?,
                value: decode(value)?,
                span: (start, end),
            });
        }
        start = end + 1;
    }
    Ok(params)
}

fn decode(s: &str) -> Result<String, DatabaseUrlError> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|v| v.into_owned())
        .map_err(|e| DatabaseUrlError::Syntax(format!("a URL parameter is not UTF-8: {e}")))
}

/// Drops empty pieces left in a URL's query by cutting parameters out.
fn tidy_query(url: &str) -> String {
    let after_creds = url.find('@').map_or(0, |at| at + 1);
    let Some(q) = url[after_creds..].find('?').map(|q| after_creds + q) else {
        return url.to_owned();
    };
    let pieces: Vec<&str> = url[q + 1..].split('&').filter(|p| !p.is_empty()).collect();
    if pieces.is_empty() {
        url[..q].to_owned()
    } else {
        format!("{}?{}", &url[..q], pieces.join("&"))
    }
}

/// `key = value` pairs as libpq (and tokio-postgres) read them: whitespace around `=`,
/// values bare or in single quotes, a backslash escaping the next character.
fn key_value_params(s: &str) -> Result<Vec<Param>, DatabaseUrlError> {
    let bytes: Vec<(usize, char)> = s.char_indices().collect();
    let at = |i: usize| bytes.get(i).map(|&(_, c)| c);
    let offset = |i: usize| bytes.get(i).map_or(s.len(), |&(o, _)| o);
    let syntax =
        |what: &str| DatabaseUrlError::Syntax(format!("invalid connection string: {what}"));
    let mut params = Vec::new();
    let mut i = 0;
    loop {
        while at(i).is_some_and(char::is_whitespace) {
            i += 1;
        }
        if at(i).is_none() {
            return Ok(params);
        }
        let start = i;
        while at(i).is_some_and(|c| !c.is_whitespace() && c != '=') {
            i += 1;
        }
        let key = s[offset(start)..offset(i)].to_owned();
        while at(i).is_some_and(char::is_whitespace) {
            i += 1;
        }
        if at(i) != Some('=') {
            return Err(syntax("expected `=` after a keyword"));
        }
        i += 1;
        while at(i).is_some_and(char::is_whitespace) {
            i += 1;
        }
        let mut value = String::new();
        let quoted = at(i) == Some('\'');
        if quoted {
            i += 1;
        }
        loop {
            match at(i) {
                None if quoted => return Err(syntax("unterminated quoted value")),
                None => break,
                Some('\'') if quoted => {
                    i += 1;
                    break;
                }
                Some(c) if !quoted && c.is_whitespace() => break,
                Some('\\') => {
                    if let Some(c) = at(i + 1) {
                        value.push(c);
                    }
                    i += 2;
                }
                Some(c) => {
                    value.push(c);
                    i += 1;
                }
            }
        }
        if value.is_empty() && !quoted {
            return Err(syntax("a keyword without a value"));
        }
        params.push(Param {
            key,
            value,
            span: (offset(start), offset(i.min(bytes.len()))),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<DatabaseUrl, DatabaseUrlError> {
        url.parse()
    }

    fn file(path: &str) -> Option<RootCert> {
        Some(RootCert::File(PathBuf::from(path)))
    }

    #[test]
    fn a_url_gives_up_its_tls_settings_and_keeps_the_rest() {
        let u = parse(
            "postgresql://app:pw@db.example:6543/chat?application_name=lc&sslmode=verify-full\
             &sslrootcert=%2Fetc%2Fca%20dir%2Fca.pem&connect_timeout=5",
        )
        .unwrap();
        assert_eq!(u.tls.mode, SslMode::VerifyFull);
        assert_eq!(u.tls.root, file("/etc/ca dir/ca.pem"));
        assert_eq!(u.config.get_ssl_mode(), WireSslMode::Require);
        assert_eq!(u.config.get_user(), Some("app"));
        assert_eq!(u.config.get_password(), Some(&b"pw"[..]));
        assert_eq!(u.config.get_dbname(), Some("chat"));
        assert_eq!(u.config.get_ports(), [6543]);
        assert_eq!(u.config.get_application_name(), Some("lc"));
        assert_eq!(
            u.config.get_connect_timeout(),
            Some(&std::time::Duration::from_secs(5))
        );
    }

    #[test]
    fn tls_settings_anywhere_in_the_query() {
        for url in [
            "postgres://h/db?sslmode=require",
            "postgres://h/db?sslmode=require&application_name=x",
            "postgres://h/db?application_name=x&sslmode=require",
            "postgres://h/db?application_name=x&sslmode=require&user=u",
            "postgres://u:p%40ss?w@h/db?sslmode=require",
        ] {
            let u = parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(u.tls.mode, SslMode::Require, "{url}");
            assert_eq!(u.config.get_ssl_mode(), WireSslMode::Require, "{url}");
            assert_eq!(u.config.get_dbname(), Some("db"), "{url}");
        }
        let u = parse("postgres://u:p%40ss?w@h/db?sslmode=require").unwrap();
        assert_eq!(u.config.get_password(), Some(&b"p@ss?w"[..]));
    }

    #[test]
    fn key_value_pairs_give_up_their_tls_settings_too() {
        let u = parse(
            "host=db.example port=5433 user=app password='it''s' dbname=chat \
             sslmode = verify-ca sslrootcert='/etc/my certs/ca.pem' application_name=lc",
        );
        // libpq's quoting escapes a quote with a backslash, not by doubling it.
        assert!(u.is_err());
        let u = parse(
            "host=db.example port=5433 user=app password='it\\'s' dbname=chat \
             sslmode = verify-ca sslrootcert='/etc/my certs/ca.pem' application_name=lc",
        )
        .unwrap();
        assert_eq!(u.tls.mode, SslMode::VerifyCa);
        assert_eq!(u.tls.root, file("/etc/my certs/ca.pem"));
        assert_eq!(u.config.get_password(), Some(&b"it's"[..]));
        assert_eq!(u.config.get_dbname(), Some("chat"));
        assert_eq!(u.config.get_application_name(), Some("lc"));
        assert_eq!(u.config.get_ssl_mode(), WireSslMode::Require);
        let u = parse("host=h sslrootcert=/ca.pem dbname=d").unwrap();
        assert_eq!(u.tls.root, file("/ca.pem"));
        assert_eq!(u.config.get_dbname(), Some("d"));
    }

    #[test]
    fn prefer_is_the_default_and_libpq_modes_map_to_what_tokio_postgres_knows() {
        for (mode, wire) in [
            (None, WireSslMode::Prefer),
            (Some("disable"), WireSslMode::Disable),
            (Some("prefer"), WireSslMode::Prefer),
            (Some("require"), WireSslMode::Require),
        ] {
            let url = match mode {
                Some(m) => format!("postgresql://h/db?sslmode={m}"),
                None => "postgresql://h/db".to_owned(),
            };
            let u = parse(&url).unwrap();
            assert_eq!(u.config.get_ssl_mode(), wire, "{url}");
            assert_eq!(u.tls.verify(), Verify::Nothing, "{url}");
        }
    }

    #[test]
    fn what_is_checked_follows_libpq() {
        let verify = |url: &str| parse(url).map(|u| u.tls.verify());
        assert_eq!(
            verify("postgresql://h/d?sslmode=verify-full&sslrootcert=ca.pem"),
            Ok(Verify::ChainAndName(RootCert::File("ca.pem".into())))
        );
        assert_eq!(
            verify("postgresql://h/d?sslmode=verify-ca&sslrootcert=ca.pem"),
            Ok(Verify::Chain(RootCert::File("ca.pem".into())))
        );
        // A root certificate makes require (and prefer) check the chain, as in libpq.
        assert_eq!(
            verify("postgresql://h/d?sslmode=require&sslrootcert=ca.pem"),
            Ok(Verify::Chain(RootCert::File("ca.pem".into())))
        );
        assert_eq!(
            verify("postgresql://h/d?sslrootcert=system"),
            Ok(Verify::ChainAndName(RootCert::System))
        );
        assert_eq!(
            verify("postgresql://h/d?sslmode=verify-full&sslrootcert=system"),
            Ok(Verify::ChainAndName(RootCert::System))
        );
        assert_eq!(
            verify("postgresql://h/d?sslmode=disable&sslrootcert=ca.pem"),
            Ok(Verify::Nothing)
        );
    }

    #[test]
    fn bad_tls_settings_are_refused_with_what_to_do() {
        let err = |url: &str| parse(url).unwrap_err();
        assert_eq!(
            err("postgresql://u:secret@h/d?sslmode=verify_full"),
            DatabaseUrlError::UnknownSslMode("verify_full".into())
        );
        assert_eq!(
            err("postgresql://h/d?sslmode=allow"),
            DatabaseUrlError::AllowUnsupported
        );
        assert_eq!(
            err("postgresql://h/d?sslmode=verify-full"),
            DatabaseUrlError::NoRootCert("verify-full")
        );
        assert_eq!(
            err("host=h sslmode=verify-ca"),
            DatabaseUrlError::NoRootCert("verify-ca")
        );
        assert_eq!(
            err("postgresql://h/d?sslmode=require&sslrootcert=system"),
            DatabaseUrlError::WeakWithSystemRoots("require")
        );
        assert_eq!(
            err("postgresql://h/d?sslmode=verify-ca&sslrootcert=system"),
            DatabaseUrlError::WeakWithSystemRoots("verify-ca")
        );
        // The text never quotes the connection string (it may hold a password).
        for e in [
            err("postgresql://u:secret@h/d?sslmode=bogus"),
            err("postgresql://u:secret@h/d?nonsense=1"),
            err("user=u password=secret nonsense=1"),
        ] {
            assert!(!e.to_string().contains("secret"), "{e}");
        }
    }

    #[test]
    fn unix_sockets_never_use_tls() {
        let u = parse("host=/run/postgresql dbname=d sslmode=require").unwrap();
        assert_eq!(u.config.get_ssl_mode(), WireSslMode::Disable);
        let u = parse("postgresql://%2Frun%2Fpostgresql/d?sslmode=require").unwrap();
        assert_eq!(u.config.get_ssl_mode(), WireSslMode::Disable);
    }

    #[test]
    fn cutting_parameters_out_leaves_a_valid_query() {
        for (url, rest) in [
            ("postgres://h/d?sslmode=require", "postgres://h/d"),
            ("postgres://h/d?sslmode=require&a=1", "postgres://h/d?a=1"),
            ("postgres://h/d?a=1&sslmode=require", "postgres://h/d?a=1"),
            (
                "postgres://h/d?a=1&sslmode=require&sslrootcert=x&b=2",
                "postgres://h/d?a=1&b=2",
            ),
            ("host=h sslmode=require dbname=d", "host=h  dbname=d"),
        ] {
            assert_eq!(take_tls_params(url).unwrap().0, rest, "{url}");
        }
    }
}
