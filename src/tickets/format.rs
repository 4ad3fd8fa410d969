//! The Redis values, byte-compatible with the Java tools (PROTOCOL.md 7,
//! `shared/vectors/tickets.json`). Only the text formats: storing them is someone else's job.
//!
//! - `mp:fcd:<deviceId>`: the seed client's fast-connect ticket, a JSON object of strings
//!   `{"expireTime":"<ms>","sessionId":"...","cipherStr":"<key>,<iv>"}` ([`ClientTicket`]).
//! - `mp:rs:<sessionId>`: the server's reusable session, the plain text
//!   `osName,osVersion,clientVersion,deviceId,<key>,<iv>` ([`ReusableSession`]).
//!
//! `<key>` and `<iv>` are 16 signed decimal bytes joined by `|` (Java `AesCipher.toString`).

use serde_json::{Map, Value};

use crate::crypto::{self, AesCipher, CryptoError};

/// The ticket value lives in the device core; its JSON form is defined here, at the store
/// edge. Re-exported so `tickets::format::ClientTicket` keeps working.
pub use crate::device::ClientTicket;

/// Default key prefix of client tickets (Java `CacheKeys.getDeviceIdKey`).
pub const CLIENT_TICKET_PREFIX: &str = "mp:fcd:";
/// Default key prefix of reusable sessions (Java `CacheKeys.getSessionKey`).
pub const REUSABLE_SESSION_PREFIX: &str = "mp:rs:";

/// Why a stored value could not be read. Values come from a shared Redis that other tools
/// write too, so every malformation is an error, never a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketFormatError {
    /// Not JSON at all, or truncated.
    #[error("ticket is not valid JSON")]
    Json,
    /// Valid JSON, but not an object.
    #[error("ticket JSON is not an object")]
    NotAnObject,
    /// A required field is absent.
    #[error("ticket has no `{0}`")]
    MissingField(&'static str),
    /// A field is present but not a JSON string (Java reads it as `String`).
    #[error("ticket field `{0}` is not a string")]
    NotAString(&'static str),
    /// `expireTime` is not a decimal i64 (Java `Long.parseLong`).
    #[error("ticket expireTime is not an integer")]
    BadExpireTime,
    /// The key/iv text is malformed (see [`crypto::parse_cipher_str`]).
    #[error("bad cipher text: {0}")]
    BadCipher(#[from] CryptoError),
    /// A reusable session did not split into exactly 6 comma-separated fields.
    #[error("reusable session has {0} comma-separated fields, expected 6")]
    FieldCount(usize),
}

// The JSON of the core's ticket: an inherent impl may live in any module of the crate, so
// callers keep `ticket.to_json()` / `ClientTicket::from_json(..)`.
impl ClientTicket {
    /// The JSON text. Field order is the Java writer's (a `HashMap<String, String>`, whose
    /// iteration order for these three keys is expireTime, sessionId, cipherStr), so the bytes
    /// equal what the Java tools store.
    pub fn to_json(&self) -> String {
        let cipher = crypto::format_cipher_str(self.cipher.key(), self.cipher.iv());
        let mut s = String::with_capacity(64 + self.session_id.len() + cipher.len());
        s.push_str("{\"expireTime\":\"");
        s.push_str(&self.expire_time_ms.to_string());
        s.push_str("\",\"sessionId\":");
        // serde_json escapes quotes, backslashes and control characters as fastjson does; a
        // real session id is hex and needs none of it.
        s.push_str(&Value::from(self.session_id.as_str()).to_string());
        s.push_str(",\"cipherStr\":\"");
        s.push_str(&cipher);
        s.push_str("\"}");
        s
    }

    /// Reads a ticket written by [`Self::to_json`] or by the Java tools: any key order, any
    /// JSON whitespace, unknown keys ignored, the last of duplicate keys wins (as fastjson's
    /// map reader does).
    ///
    /// All three fields are required. Java is looser: it handshakes when `sessionId` is
    /// missing, skips the expiry check when `expireTime` is missing, and fails later on a
    /// missing `cipherStr`; for us each is a bad ticket, and the caller handshakes.
    ///
    /// # Errors
    /// A [`TicketFormatError`] naming what is wrong.
    pub fn from_json(s: &str) -> Result<Self, TicketFormatError> {
        let value: Value = serde_json::from_str(s).map_err(|_| TicketFormatError::Json)?;
        let Value::Object(map) = value else {
            return Err(TicketFormatError::NotAnObject);
        };
        let session_id = string_field(&map, "sessionId")?.to_owned();
        let expire_time_ms = string_field(&map, "expireTime")?
            .parse::<i64>()
            .map_err(|_| TicketFormatError::BadExpireTime)?;
        let (key, iv) = crypto::parse_cipher_str(string_field(&map, "cipherStr")?)?;
        Ok(ClientTicket {
            session_id,
            expire_time_ms,
            cipher: AesCipher::new(key, iv),
        })
    }
}

fn string_field<'a>(
    map: &'a Map<String, Value>,
    name: &'static str,
) -> Result<&'a str, TicketFormatError> {
    match map.get(name) {
        None => Err(TicketFormatError::MissingField(name)),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(TicketFormatError::NotAString(name)),
    }
}

/// The server's reusable session (Java `ReusableSession.encode`), stored under
/// [`reusable_session_key`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReusableSession {
    /// The client's OS name from its handshake.
    pub os_name: String,
    /// The client's OS version.
    pub os_version: String,
    /// The client's version.
    pub client_version: String,
    /// The device id.
    pub device_id: String,
    /// The session cipher.
    pub cipher: AesCipher,
}

impl ReusableSession {
    /// `osName,osVersion,clientVersion,deviceId,<key>,<iv>`. Values are written as they are,
    /// as Java does: a comma inside one makes the value unreadable (see [`Self::decode`]).
    pub fn encode(&self) -> String {
        let cipher = crypto::format_cipher_str(self.cipher.key(), self.cipher.iv());
        let fields = [
            &self.os_name,
            &self.os_version,
            &self.client_version,
            &self.device_id,
        ];
        let mut s =
            String::with_capacity(cipher.len() + fields.iter().map(|f| f.len() + 1).sum::<usize>());
        for field in fields {
            s.push_str(field);
            s.push(',');
        }
        s.push_str(&cipher);
        s
    }

    /// Reads the value the way Java's `ReusableSession.decode` does: `split(",")` must give
    /// exactly 6 pieces. Java has no escaping, so a comma inside any text field yields more
    /// than 6 pieces and Java returns null (the client's fast connect then fails with
    /// SESSION_EXPIRED). We report [`TicketFormatError::FieldCount`]. Empty fields are kept,
    /// as Java keeps inner empty strings (its dropping of trailing empty strings cannot
    /// apply: the last field is the iv, which is never empty in a valid value).
    ///
    /// # Errors
    /// [`TicketFormatError::FieldCount`] or [`TicketFormatError::BadCipher`].
    pub fn decode(s: &str) -> Result<Self, TicketFormatError> {
        let mut parts = [""; 6];
        let mut n = 0;
        for part in s.split(',') {
            if n < parts.len() {
                parts[n] = part;
            }
            n += 1;
        }
        if n != parts.len() {
            return Err(TicketFormatError::FieldCount(n));
        }
        let key = crypto::parse_signed_bytes(parts[4])?;
        let iv = crypto::parse_signed_bytes(parts[5])?;
        Ok(ReusableSession {
            os_name: parts[0].to_owned(),
            os_version: parts[1].to_owned(),
            client_version: parts[2].to_owned(),
            device_id: parts[3].to_owned(),
            cipher: AesCipher::new(key, iv),
        })
    }
}

/// The Redis key of a device's client ticket: `prefix` + deviceId (default prefix
/// [`CLIENT_TICKET_PREFIX`], `mp:fcd:`).
pub fn client_ticket_key(prefix: &str, device_id: &str) -> String {
    [prefix, device_id].concat()
}

/// The Redis key of a reusable session: `prefix` + sessionId (default prefix
/// [`REUSABLE_SESSION_PREFIX`], `mp:rs:`).
pub fn reusable_session_key(prefix: &str, session_id: &str) -> String {
    [prefix, session_id].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CIPHER: &str = "-12|7|0|127|-128|33|-1|90|5|-77|64|1|-33|18|100|-5,\
                          3|-9|44|-100|0|15|16|-128|127|8|-1|2|77|-66|9|30";

    fn cipher() -> AesCipher {
        let (k, iv) = crypto::parse_cipher_str(CIPHER).unwrap();
        AesCipher::new(k, iv)
    }

    fn ticket() -> ClientTicket {
        ClientTicket {
            session_id: "0123456789abcdef0123456789abcdef".into(),
            expire_time_ms: 1_764_115_200_123,
            cipher: cipher(),
        }
    }

    #[test]
    fn ticket_round_trip_and_java_order() {
        let json = ticket().to_json();
        assert_eq!(
            json,
            format!(
                "{{\"expireTime\":\"1764115200123\",\"sessionId\":\
                 \"0123456789abcdef0123456789abcdef\",\"cipherStr\":\"{CIPHER}\"}}"
            )
        );
        assert_eq!(ClientTicket::from_json(&json), Ok(ticket()));
    }

    #[test]
    fn ticket_reads_any_order_and_whitespace() {
        let json = format!(
            " {{ \"cipherStr\" : \"{CIPHER}\" ,\n\t\"other\": [1, {{}}], \"sessionId\": \
             \"0123456789abcdef0123456789abcdef\", \"expireTime\":\"1764115200123\" }} "
        );
        assert_eq!(ClientTicket::from_json(&json), Ok(ticket()));
        // Escapes in the session id survive the round trip.
        let mut t = ticket();
        t.session_id = "a\"b\\c\u{1}é".into();
        assert_eq!(ClientTicket::from_json(&t.to_json()), Ok(t));
    }

    #[test]
    fn ticket_errors() {
        use TicketFormatError as E;
        let ok = ticket().to_json();
        let cases: Vec<(String, E)> = vec![
            ("".into(), E::Json),
            (ok[..ok.len() - 1].to_owned(), E::Json),
            ("[1]".into(), E::NotAnObject),
            ("null".into(), E::NotAnObject),
            (
                ok.replace("\"sessionId\"", "\"sid\""),
                E::MissingField("sessionId"),
            ),
            (
                ok.replace("\"expireTime\"", "\"exp\""),
                E::MissingField("expireTime"),
            ),
            (
                ok.replace("\"cipherStr\"", "\"cs\""),
                E::MissingField("cipherStr"),
            ),
            (
                ok.replace("\"1764115200123\"", "1764115200123"),
                E::NotAString("expireTime"),
            ),
            (
                ok.replace("\"1764115200123\"", "\"soon\""),
                E::BadExpireTime,
            ),
            (
                ok.replace("|-5,", "|-5|1,"),
                E::BadCipher(CryptoError::BadCipherStr),
            ),
            (
                ok.replace("|-5,", ","),
                E::BadCipher(CryptoError::BadCipherStr),
            ),
        ];
        for (json, want) in cases {
            assert_eq!(ClientTicket::from_json(&json), Err(want), "{json}");
        }
    }

    fn session() -> ReusableSession {
        ReusableSession {
            os_name: "android".into(),
            os_version: "1.0.1".into(),
            client_version: "1.0.0".into(),
            device_id: "device-1".into(),
            cipher: cipher(),
        }
    }

    #[test]
    fn session_round_trip() {
        let s = session().encode();
        assert_eq!(s, format!("android,1.0.1,1.0.0,device-1,{CIPHER}"));
        assert_eq!(ReusableSession::decode(&s), Ok(session()));
        let mut empty = session();
        empty.os_name.clear();
        empty.device_id.clear();
        assert_eq!(empty.encode(), format!(",1.0.1,1.0.0,,{CIPHER}"));
        assert_eq!(ReusableSession::decode(&empty.encode()), Ok(empty));
    }

    #[test]
    fn session_errors() {
        use TicketFormatError as E;
        let mut comma = session();
        comma.device_id = "a,b".into();
        assert_eq!(
            ReusableSession::decode(&comma.encode()),
            Err(E::FieldCount(7))
        );
        assert_eq!(ReusableSession::decode(""), Err(E::FieldCount(1)));
        assert_eq!(ReusableSession::decode("a,b,c,d,e"), Err(E::FieldCount(5)));
        assert_eq!(
            ReusableSession::decode("a,b,c,d,1|2,3"),
            Err(E::BadCipher(CryptoError::BadCipherStr))
        );
    }

    #[test]
    fn keys() {
        assert_eq!(
            client_ticket_key(CLIENT_TICKET_PREFIX, "device-1"),
            "mp:fcd:device-1"
        );
        assert_eq!(
            reusable_session_key(REUSABLE_SESSION_PREFIX, "ab"),
            "mp:rs:ab"
        );
    }
}
