//! GatewayPushResult, the JSON in an OK / ERROR reply's data (PROTOCOL.md 8.3): keys in the
//! order `clientType` (left out when 0), `timePoints` (name, epoch ms, ...), `userId`.

use serde_json::Value;

/// A push's time line as the server reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PushResultData {
    /// The user pushed to.
    pub user_id: String,
    /// The route's client type (0: not written).
    pub client_type: i32,
    /// `(name, epoch ms)` in order: `push-center-begin`, `before-send`, `waiting-ack`,
    /// `success-end` / `failure-end` / `offline-end` / `redirect-end`.
    pub time_points: Vec<(&'static str, i64)>,
}

impl PushResultData {
    /// The JSON text, byte for byte as the real server writes it.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(96 + self.user_id.len());
        out.push('{');
        if self.client_type != 0 {
            out.push_str(&format!("\"clientType\":{},", self.client_type));
        }
        out.push_str("\"timePoints\":[");
        for (i, (name, ms)) in self.time_points.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&format!("\"{name}\",{ms}"));
        }
        out.push_str("],\"userId\":");
        out.push_str(&Value::String(self.user_id.clone()).to_string());
        out.push('}');
        out
    }
}

/// What a client reads back from a reply's data: the user and the name of the last time point
/// (`success-end`, `offline-end`, ...). `None` for data that is empty or not that JSON.
pub fn parse_outcome(data: &str) -> Option<(String, String)> {
    let v: Value = serde_json::from_str(data).ok()?;
    let user = v.get("userId")?.as_str()?.to_owned();
    let points = v.get("timePoints")?.as_array()?;
    let last = points.iter().rev().find_map(Value::as_str)?.to_owned();
    Some((user, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_matches_the_server_layout() {
        let d = PushResultData {
            user_id: "gw-user-0".into(),
            client_type: 1,
            time_points: vec![("push-center-begin", 1), ("success-end", 2)],
        };
        assert_eq!(
            d.to_json(),
            r#"{"clientType":1,"timePoints":["push-center-begin",1,"success-end",2],"userId":"gw-user-0"}"#
        );
        let d = PushResultData {
            client_type: 0,
            user_id: "q\"".into(),
            ..d
        };
        assert!(d.to_json().starts_with(r#"{"timePoints":"#));
        assert_eq!(
            parse_outcome(&d.to_json()),
            Some(("q\"".into(), "success-end".into()))
        );
        assert_eq!(parse_outcome(""), None);
        assert_eq!(parse_outcome("{\"userId\":3}"), None);
    }
}
