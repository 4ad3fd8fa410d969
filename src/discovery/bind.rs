//! `HOST:PORT` to listen on (`serve --listen`, `--admin`, `--gateway`, `run --metrics`): an
//! IP literal or a host name, resolved once at start. Port 0 lets the kernel pick.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs as _};
use std::str::FromStr;

use super::{Endpoint, EndpointError};

/// A listen address as given: host name or IP literal (`[::1]` for IPv6), and a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindAddr {
    /// Host name or IP literal, without brackets.
    pub host: String,
    /// TCP port; 0: any free port.
    pub port: u16,
}

impl FromStr for BindAddr {
    type Err = EndpointError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let (host, port) = t
            .rsplit_once(':')
            .ok_or_else(|| EndpointError::NoPort(t.into()))?;
        let port: u16 = port.parse().map_err(|_| EndpointError::BadPort(t.into()))?;
        // The host is checked as an endpoint's is (port 0 aside).
        let e: Endpoint = format!("{host}:1")
            .parse()
            .map_err(|_| EndpointError::BadHost(t.into()))?;
        Ok(BindAddr { host: e.host, port })
    }
}

impl fmt::Display for BindAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl From<SocketAddr> for BindAddr {
    fn from(a: SocketAddr) -> Self {
        BindAddr {
            host: a.ip().to_string(),
            port: a.port(),
        }
    }
}

impl BindAddr {
    /// The address to bind: the literal, or the name's first IPv4 address (what a user who
    /// writes `localhost` means, and where IPv4 clients connect), else its first address.
    /// Blocks on the resolver: call it at start.
    ///
    /// # Errors
    ///
    /// `flag HOST:PORT: why` when the name does not resolve (a usage error for the caller).
    pub fn resolve(&self, flag: &str) -> Result<SocketAddr, String> {
        if let Ok(ip) = self.host.parse::<std::net::IpAddr>() {
            return Ok(SocketAddr::new(ip, self.port));
        }
        let addrs: Vec<SocketAddr> = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| format!("{flag} {self}: {e}"))?
            .collect();
        addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or_else(|| addrs.first())
            .copied()
            .ok_or_else(|| format!("{flag} {self}: resolves to no address"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_literals_and_port_zero() {
        let b: BindAddr = "localhost:0".parse().unwrap();
        let a = b.resolve("--listen").unwrap();
        assert!(a.ip().is_loopback() && a.port() == 0, "{a}");
        let b: BindAddr = "[::1]:9".parse().unwrap();
        assert_eq!(b.resolve("--admin").unwrap(), "[::1]:9".parse().unwrap());
        assert_eq!(b.to_string(), "[::1]:9");
        let b: BindAddr = "0.0.0.0:3000".parse().unwrap();
        assert!(b.resolve("--listen").unwrap().ip().is_unspecified());
        for bad in ["localhost", "bad host:1", ":1", "h:70000", "::1:3"] {
            assert!(bad.parse::<BindAddr>().is_err(), "{bad}");
        }
        let e = "no-such-host.invalid:1"
            .parse::<BindAddr>()
            .unwrap()
            .resolve("--metrics")
            .unwrap_err();
        assert!(e.starts_with("--metrics no-such-host.invalid:1: "), "{e}");
    }
}
