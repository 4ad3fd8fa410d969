//! A user's routes in Redis (PROTOCOL.md 8.2): hash `mp:ur:<userId>`, one field per client
//! type (decimal), each value a JSON object naming the gateway of the server that holds the
//! device. No `connId` means offline.

use serde::{Deserialize, Serialize};

/// The Redis key of `user_id`'s routes.
pub fn route_key(user_id: &str) -> String {
    format!("mp:ur:{user_id}")
}

/// One route (one client type of one user), field for field as the real server writes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// Gateway port of the server holding the device.
    pub port: u16,
    /// Gateway host of that server.
    pub host: String,
    /// The device.
    #[serde(default)]
    pub device_id: String,
    /// Its osName.
    #[serde(default)]
    pub os_name: String,
    /// Its client version.
    #[serde(default)]
    pub client_version: String,
    /// The server's channel id; absent once the device is gone (offline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conn_id: Option<String>,
}

impl Route {
    /// Whether the device is online (the route has a connection id).
    pub fn is_online(&self) -> bool {
        self.conn_id.as_deref().is_some_and(|c| !c.is_empty())
    }

    /// The gateway address, `host:port`.
    pub fn gateway(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The JSON value stored in the hash.
    pub fn to_json(&self) -> String {
        // Serialising plain strings and numbers cannot fail.
        serde_json::to_string(self).expect("route JSON")
    }

    /// Parses a stored value; `None` for one that is not a route (counted by the caller).
    pub fn parse(value: &str) -> Option<Route> {
        serde_json::from_str(value).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_protocol_example_round_trips() {
        let text = r#"{"port":3001,"host":"127.0.0.1","deviceId":"d","osName":"android","clientVersion":"1.0.0","connId":"71d9a3db"}"#;
        let r = Route::parse(text).expect("route");
        assert!(r.is_online());
        assert_eq!(r.gateway(), "127.0.0.1:3001");
        assert_eq!(r.to_json(), text);
        let off = Route { conn_id: None, ..r };
        assert!(!off.is_online());
        assert!(!off.to_json().contains("connId"));
        assert_eq!(Route::parse("not json"), None);
        assert_eq!(route_key("u-1"), "mp:ur:u-1");
    }
}
