//! The data of a registered server node (PROTOCOL.md 10):
//! `{"attrs":{"weight":1},"host":"127.0.0.1","port":3000}`, `attrs` maybe with `public_ip`.

use serde_json::{json, Value};

use super::Endpoint;

/// A server as registered in ZooKeeper.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerNode {
    /// `host`: the address the server registered (its local IP in the real server).
    pub host: String,
    /// `port`.
    pub port: u16,
    /// `attrs.weight`, default 1.
    pub weight: u32,
    /// `attrs.public_ip`, when registered.
    pub public_ip: Option<String>,
}

/// Why a node's data is not a server.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// Not JSON, or not an object.
    #[error("not a JSON object")]
    NotJson,
    /// No usable `host` or `port`.
    #[error("no usable {0}")]
    Missing(&'static str),
}

/// A number, or a string holding one (registrations written by hand or other tools).
fn number(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_str()?.trim().parse().ok())
}

impl ServerNode {
    /// Parses a node's data. Unknown fields are ignored; a bad `weight` counts as 1.
    ///
    /// # Errors
    ///
    /// Data that is no JSON object, or that has no host or no port in 1..=65535.
    pub fn parse(data: &[u8]) -> Result<Self, NodeError> {
        let v: Value = serde_json::from_slice(data).map_err(|_| NodeError::NotJson)?;
        let obj = v.as_object().ok_or(NodeError::NotJson)?;
        let host = obj
            .get("host")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .ok_or(NodeError::Missing("host"))?
            .to_string();
        let port = obj
            .get("port")
            .and_then(number)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
            .ok_or(NodeError::Missing("port"))?;
        let attrs = obj.get("attrs").and_then(Value::as_object);
        let weight = attrs
            .and_then(|a| a.get("weight"))
            .and_then(number)
            .map_or(1, |w| u32::try_from(w).unwrap_or(u32::MAX));
        let public_ip = attrs
            .and_then(|a| a.get("public_ip"))
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        Ok(ServerNode {
            host,
            port,
            weight,
            public_ip,
        })
    }

    /// The data a server registers, in the real server's form.
    pub fn to_json(&self) -> Vec<u8> {
        let mut attrs = json!({ "weight": self.weight });
        if let Some(ip) = &self.public_ip {
            attrs["public_ip"] = json!(ip);
        }
        serde_json::to_vec(&json!({ "attrs": attrs, "host": self.host, "port": self.port }))
            .unwrap_or_default()
    }

    /// Where a client connects: `public_ip` when asked for and registered, else `host`.
    ///
    /// # Errors
    ///
    /// A host that is no valid host name or address.
    pub fn endpoint(&self, public: bool) -> Result<Endpoint, super::EndpointError> {
        let host = match (&self.public_ip, public) {
            (Some(ip), true) => ip,
            _ => &self.host,
        };
        let text = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{}", self.port)
        } else {
            format!("{host}:{}", self.port)
        };
        text.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_real_servers_form() {
        let n =
            ServerNode::parse(br#"{"attrs":{"weight":1},"host":"127.0.0.1","port":3000}"#).unwrap();
        assert_eq!((n.host.as_str(), n.port, n.weight), ("127.0.0.1", 3000, 1));
        assert_eq!(n.endpoint(true).unwrap().to_string(), "127.0.0.1:3000");
        let back = ServerNode::parse(&n.to_json()).unwrap();
        assert_eq!(back, n);
    }

    #[test]
    fn public_ip_when_asked_and_present() {
        let n = ServerNode::parse(
            br#"{"attrs":{"weight":"3","public_ip":"10.1.2.3"},"host":"::1","port":"3000","x":1}"#,
        )
        .unwrap();
        assert_eq!(n.weight, 3);
        assert_eq!(n.endpoint(true).unwrap().to_string(), "10.1.2.3:3000");
        assert_eq!(n.endpoint(false).unwrap().to_string(), "[::1]:3000");
        assert_eq!(ServerNode::parse(&n.to_json()).unwrap(), n);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            &b""[..],
            b"\xff\xfe",
            b"[1,2]",
            b"null",
            br#"{"host":"h"}"#,
            br#"{"host":"","port":3000}"#,
            br#"{"host":"h","port":70000}"#,
            br#"{"host":"h","port":-1}"#,
            br#"{"host":5,"port":3000}"#,
        ] {
            assert!(ServerNode::parse(bad).is_err(), "{bad:?}");
        }
        let n = ServerNode::parse(br#"{"host":"h","port":1,"attrs":{"weight":-4}}"#).unwrap();
        assert_eq!(n.weight, 1);
        let n = ServerNode::parse(br#"{"host":"bad host","port":1}"#).unwrap();
        assert!(n.endpoint(false).is_err());
    }
}
