//! What every device of a fleet shares: identity templates, client fields, timeouts.

use crate::crypto::RsaEncryptor;
use crate::proto::BodyLimits;

/// A `{i}` template for per-device strings (`device-{i}`): the string is built on demand
/// from the device's index, so an idle device stores no strings at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    head: String,
    tail: Option<String>,
}

impl Template {
    /// Parses a template; the first `{i}` is replaced by the index, and a template without
    /// one yields the same string for every device.
    pub fn new(text: &str) -> Self {
        match text.split_once("{i}") {
            Some((head, tail)) => Self {
                head: head.to_owned(),
                tail: Some(tail.to_owned()),
            },
            None => Self {
                head: text.to_owned(),
                tail: None,
            },
        }
    }

    /// The string for device `index`.
    pub fn render(&self, index: u64) -> String {
        let mut s = String::new();
        self.render_into(index, &mut s);
        s
    }

    /// The index whose string is `s`, if `s` is one this template renders (the control API
    /// finds template devices by their ids this way, without a table).
    pub fn index_of(&self, s: &str) -> Option<u64> {
        let tail = self.tail.as_deref()?;
        let digits = s.strip_prefix(self.head.as_str())?.strip_suffix(tail)?;
        let canonical = !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && (digits == "0" || !digits.starts_with('0'));
        canonical.then(|| digits.parse().ok()).flatten()
    }

    /// Appends the string for device `index` to `out` (clear it first to reuse a buffer):
    /// the store edge builds keys this way without an intermediate string per device.
    pub fn render_into(&self, index: u64, out: &mut String) {
        use std::fmt::Write as _;
        out.push_str(&self.head);
        if let Some(tail) = &self.tail {
            // Writing into a String cannot fail.
            let _ = write!(out, "{index}");
            out.push_str(tail);
        }
    }
}

/// Configuration shared by every device of a fleet.
#[derive(Clone, Debug)]
pub struct DeviceConfig {
    /// Device id per index (`device-{i}`).
    pub device_id: Template,
    /// User id per index (`user-{i}`).
    pub user_id: Template,
    /// Handshake `osName` (the server routes binds per client type).
    pub os_name: String,
    /// Handshake `osVersion`.
    pub os_version: String,
    /// Handshake `clientVersion`.
    pub client_version: String,
    /// Bind `tags`.
    pub tags: String,
    /// Bind `data`.
    pub bind_data: String,
    /// Whether devices bind a user after connecting.
    pub bind: bool,
    /// Smallest heartbeat the devices ask for, ms.
    pub min_heartbeat: i32,
    /// Largest heartbeat the devices ask for, ms.
    pub max_heartbeat: i32,
    /// How long a TCP connect may take, ms.
    pub connect_timeout_ms: u32,
    /// How long the handshake, fast connect and bind replies may take, ms.
    pub request_timeout_ms: u32,
    /// How many times a timed-out bind is sent again on the same connection.
    pub bind_retries: u8,
    /// First reconnect delay ceiling, ms (full jitter: the delay is uniform in 0..ceiling).
    pub backoff_base_ms: u32,
    /// Largest reconnect delay ceiling, ms.
    pub backoff_cap_ms: u32,
    /// Whether a kicked device reconnects (the reference SDK does only if told to).
    pub reconnect_on_kick: bool,
    /// Size limits of the connection.
    pub limits: BodyLimits,
    /// The server's RSA public key.
    pub rsa: RsaEncryptor,
    /// Devices with identities of their own (`--devices-file`, the control API); the rest
    /// are named by the templates.
    pub identities: super::Identities,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        Self {
            device_id: Template::new("device-{i}"),
            user_id: Template::new("user-{i}"),
            os_name: "android".into(),
            os_version: "1.0.1".into(),
            client_version: "1.0.0".into(),
            tags: String::new(),
            bind_data: String::new(),
            bind: true,
            min_heartbeat: 180_000,
            max_heartbeat: 180_000,
            connect_timeout_ms: 3_000,
            request_timeout_ms: 10_000,
            bind_retries: 2,
            backoff_base_ms: 500,
            backoff_cap_ms: 30_000,
            reconnect_on_kick: false,
            limits: BodyLimits::default(),
            rsa: RsaEncryptor::mpush_default(),
            identities: super::Identities::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_render_the_index() {
        assert_eq!(Template::new("device-{i}").render(42), "device-42");
        assert_eq!(Template::new("{i}@fleet").render(7), "7@fleet");
        assert_eq!(Template::new("same").render(7), "same");
        let mut buf = String::from("mp:fcd:");
        Template::new("d-{i}-x").render_into(12, &mut buf);
        assert_eq!(buf, "mp:fcd:d-12-x");
        let t = Template::new("d-{i}-x");
        assert_eq!(t.index_of("d-12-x"), Some(12));
        for not in ["d--x", "d-012-x", "d-1a-x", "e-1-x", "d-1"] {
            assert_eq!(t.index_of(not), None, "{not}");
        }
        assert_eq!(Template::new("same").index_of("same"), None);
    }
}
