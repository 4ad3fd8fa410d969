//! `HOST:PORT` as the user wrote it, and its resolution to socket addresses.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs as _};
use std::str::FromStr;

/// A server endpoint as given on the command line or registered in ZooKeeper: a host name or
/// an IP literal (`[::1]` for IPv6) and a port. Resolved by [`Endpoint::resolve`], again
/// whenever the control plane asks, so a DNS change is followed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    /// Host name or IP literal, without brackets.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

/// Why a `HOST:PORT` text is not an endpoint.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// No `:PORT`.
    #[error("{0:?}: expected HOST:PORT")]
    NoPort(String),
    /// The port is not a number in 1..=65535.
    #[error("{0:?}: the port must be a number from 1 to 65535")]
    BadPort(String),
    /// An empty host, or one with characters no host name or address has.
    #[error("{0:?}: bad host")]
    BadHost(String),
}

impl FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| EndpointError::NoPort(s.into()))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| EndpointError::BadPort(s.into()))?;
        let host = match host.strip_prefix('[') {
            Some(v6) => v6
                .strip_suffix(']')
                .filter(|h| h.parse::<std::net::Ipv6Addr>().is_ok())
                .ok_or_else(|| EndpointError::BadHost(s.into()))?,
            None => host,
        };
        let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':');
        // A bare IPv6 literal must be bracketed: `::1:3000` is ambiguous.
        let bare_v6 = !s.starts_with('[') && host.contains(':');
        if host.is_empty() || !host.chars().all(ok) || bare_v6 {
            return Err(EndpointError::BadHost(s.into()));
        }
        Ok(Endpoint {
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(a: SocketAddr) -> Self {
        Endpoint {
            host: a.ip().to_string(),
            port: a.port(),
        }
    }
}

impl Endpoint {
    /// Every address the host has now (the system resolver: `/etc/hosts`, DNS), in the
    /// resolver's order, without duplicates. Blocks: call it off any hot path.
    ///
    /// # Errors
    ///
    /// The name does not resolve, or resolves to nothing.
    pub fn resolve(&self) -> std::io::Result<Vec<SocketAddr>> {
        let mut out: Vec<SocketAddr> = Vec::new();
        for a in (self.host.as_str(), self.port).to_socket_addrs()? {
            if !out.contains(&a) {
                out.push(a);
            }
        }
        if out.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{self} resolves to no address"),
            ));
        }
        Ok(out)
    }

    /// The literal address, when the host is an IP literal (no resolver needed).
    pub fn literal(&self) -> Option<SocketAddr> {
        let ip: std::net::IpAddr = self.host.parse().ok()?;
        Some(SocketAddr::new(ip, self.port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_literals() {
        let e: Endpoint = "localhost:3000".parse().unwrap();
        assert_eq!((e.host.as_str(), e.port), ("localhost", 3000));
        let e: Endpoint = "[::1]:3000".parse().unwrap();
        assert_eq!(e.host, "::1");
        assert_eq!(e.to_string(), "[::1]:3000");
        assert_eq!(e.literal(), Some("[::1]:3000".parse().unwrap()));
        let e: Endpoint = "10.0.0.1:1".parse().unwrap();
        assert_eq!(e.to_string(), "10.0.0.1:1");
    }

    #[test]
    fn refuses_what_is_no_endpoint() {
        for bad in [
            "localhost",
            "localhost:",
            "localhost:0",
            "localhost:70000",
            ":3000",
            "::1:3000",
            "[::1:3000",
            "[nothost]:3000",
            "bad host:3000",
            "a/b:3000",
        ] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad}");
        }
    }

    #[test]
    fn loopback_names_resolve_to_loopback() {
        let e: Endpoint = "localhost:3000".parse().unwrap();
        let addrs = e.resolve().unwrap();
        assert!(!addrs.is_empty());
        assert!(addrs
            .iter()
            .all(|a| a.ip().is_loopback() && a.port() == 3000));
        let lit: Endpoint = "127.0.0.1:5".parse().unwrap();
        assert_eq!(lit.resolve().unwrap(), vec!["127.0.0.1:5".parse().unwrap()]);
    }

    #[test]
    fn the_invalid_tld_does_not_resolve() {
        let e: Endpoint = "no-such-host.invalid:3000".parse().unwrap();
        assert!(e.resolve().is_err());
    }
}
