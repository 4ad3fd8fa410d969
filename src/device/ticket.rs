//! The fast-connect ticket as the device core holds it. Only the value: its Java-compatible
//! JSON (`mp:fcd:`) belongs to the store edge, [`crate::tickets::format`].

use crate::crypto::AesCipher;

/// The client's fast-connect ticket (PROTOCOL.md 7): what a device needs to resume its
/// session without a handshake. Stored under [`crate::tickets::format::client_ticket_key`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTicket {
    /// The server's session id (opaque; the real server's is lowercase hex MD5).
    pub session_id: String,
    /// When the server forgets the session, in ms since the Unix epoch.
    pub expire_time_ms: i64,
    /// The session cipher: the mixed session key and the handshake iv.
    pub cipher: AesCipher,
}
