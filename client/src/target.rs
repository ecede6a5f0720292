//! Where to connect: `--server` (`host:port`, `tls://host:port`, `tcp://host:port`) and
//! `--tls`, read into a host, a port and whether to speak TLS.

/// The port a server listens on when `--server` names none (README's convention).
pub const PLAIN_PORT: u16 = 7777;
pub const TLS_PORT: u16 = 7443;

/// A server address, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// A DNS name or an IP address (IPv6 without its brackets): what TLS checks the
    /// certificate against.
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BadTarget {
    #[error("--server {0:?}: unknown scheme (use host:port, tls://host:port or tcp://host:port)")]
    Scheme(String),
    #[error("--server {0:?}: tcp:// and --tls contradict each other")]
    PlainAndTls(String),
    #[error("--server {0:?}: no host")]
    NoHost(String),
    #[error("--server {0:?}: the port is not a number from 1 to 65535")]
    Port(String),
    #[error("--server {0:?}: write an IPv6 address in brackets, as in [::1]:7443")]
    Ipv6(String),
}

impl Target {
    /// Reads `--server` (and `--tls`, which asks for TLS to a plain `host:port`).
    pub fn parse(server: &str, tls_flag: bool) -> Result<Target, BadTarget> {
        let bad = || server.to_string();
        let (tls, rest) = match server.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("tls") => (true, rest),
            Some((scheme, _)) if scheme.eq_ignore_ascii_case("tcp") && tls_flag => {
                return Err(BadTarget::PlainAndTls(bad()))
            }
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("tcp") => (false, rest),
            Some(_) => return Err(BadTarget::Scheme(bad())),
            None => (tls_flag, server),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| BadTarget::Ipv6(bad()))?;
            match after {
                "" => (host, None),
                _ => match after.strip_prefix(':') {
                    Some(port) => (host, Some(port)),
                    None => return Err(BadTarget::Port(bad())),
                },
            }
        } else {
            match rest.matches(':').count() {
                0 => (rest, None),
                1 => rest
                    .split_once(':')
                    .map(|(h, p)| (h, Some(p)))
                    .unwrap_or_default(),
                _ => return Err(BadTarget::Ipv6(bad())),
            }
        };
        if host.is_empty() {
            return Err(BadTarget::NoHost(bad()));
        }
        let port = match port {
            None if tls => TLS_PORT,
            None => PLAIN_PORT,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| BadTarget::Port(bad()))?,
        };
        Ok(Target {
            host: host.to_string(),
            port,
            tls,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(host: &str, port: u16, tls: bool) -> Target {
        Target {
            host: host.into(),
            port,
            tls,
        }
    }

    #[test]
    fn reads_the_server_address_and_the_scheme() {
        let p = Target::parse;
        assert_eq!(p("127.0.0.1:7777", false), Ok(t("127.0.0.1", 7777, false)));
        assert_eq!(p("127.0.0.1:9000", true), Ok(t("127.0.0.1", 9000, true)));
        assert_eq!(
            p("tls://chat.example:7443", false),
            Ok(t("chat.example", 7443, true))
        );
        assert_eq!(
            p("TLS://chat.example:1", true),
            Ok(t("chat.example", 1, true))
        );
        assert_eq!(
            p("tcp://localhost:7777", false),
            Ok(t("localhost", 7777, false))
        );
        assert_eq!(p("tls://[::1]:7443", false), Ok(t("::1", 7443, true)));
        assert_eq!(p("[::1]:7777", false), Ok(t("::1", 7777, false)));
        // The port each kind listens on by convention, when none is given.
        assert_eq!(
            p("tls://chat.example", false),
            Ok(t("chat.example", 7443, true))
        );
        assert_eq!(p("chat.example", true), Ok(t("chat.example", 7443, true)));
        assert_eq!(p("chat.example", false), Ok(t("chat.example", 7777, false)));
        assert_eq!(p("tls://[::1]", false), Ok(t("::1", 7443, true)));
        assert_eq!(
            p("tls://chat.example:7443/", false),
            Ok(t("chat.example", 7443, true))
        );
    }

    #[test]
    fn refuses_what_it_cannot_connect_to() {
        let p = Target::parse;
        assert!(matches!(p("http://x:1", false), Err(BadTarget::Scheme(_))));
        assert!(matches!(
            p("tcp://x:1", true),
            Err(BadTarget::PlainAndTls(_))
        ));
        assert!(matches!(p(":7777", false), Err(BadTarget::NoHost(_))));
        assert!(matches!(p("tls://", false), Err(BadTarget::NoHost(_))));
        assert!(matches!(p("x:port", false), Err(BadTarget::Port(_))));
        assert!(matches!(p("x:0", false), Err(BadTarget::Port(_))));
        assert!(matches!(p("x:70000", false), Err(BadTarget::Port(_))));
        assert!(matches!(p("::1:7777", false), Err(BadTarget::Ipv6(_))));
        assert!(matches!(p("[::1", false), Err(BadTarget::Ipv6(_))));
        assert!(matches!(p("[::1]7777", false), Err(BadTarget::Port(_))));
    }
}
