//! The device: a sans-IO state machine for one MPUSH client session (PROTOCOL.md 6).
//!
//! A [`Device`] has no socket, clock, task or RNG of its own. The shard feeds it and drains
//! it, as quinn's `Connection` is driven:
//!
//! - input: [`Device::handle_event`] (start, ticket loaded, connected, closed, sink took a
//!   push, stop), [`Device::handle_heartbeat`], [`Device::handle_frame`] and
//!   [`Device::handle_timeout`]. Every input call takes a [`Ctx`]: the time, the shared
//!   configuration, the RNG, the shard's counters and the caller-owned [`Output`].
//! - output: bytes and frames to seal land in [`Output`] during the call; effects (connect,
//!   close, ticket operations, deliveries) in `Output::effects`. After each call the shell
//!   re-arms its wheel from [`Device::poll_timeout`].
//!
//! Frames arrive still sealed; the shell may decrypt them in its batch and pass the result as
//! [`Opened`]. If the device's cipher changed since (a HandshakeOk earlier in the same read),
//! the device opens the frame again itself, so batching never changes behaviour.
//!
//! Must not touch: sockets, clocks, async, Redis, threads.
#![forbid(unsafe_code)]

mod config;
mod machine;
pub mod output;

use bytes::Bytes;
use rand::rngs::StdRng;

mod ticket;
pub use config::{DeviceConfig, Template};
pub use output::{Output, Seal};
pub use ticket::ClientTicket;

use crate::crypto::AesCipher;
use crate::proto::{DecodeError, Flags, MsgId};
use crate::stats::ShardStats;

/// Milliseconds since the shard started: 4 bytes, 49 days of range.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tick(pub u32);

impl Tick {
    /// No deadline.
    pub const NEVER: Tick = Tick(u32::MAX);

    /// `self + ms`, saturating below [`Tick::NEVER`].
    #[must_use]
    pub fn after(self, ms: u32) -> Tick {
        Tick(self.0.saturating_add(ms).min(u32::MAX - 1))
    }

    /// Milliseconds from `earlier` to `self` (0 if `earlier` is later).
    pub fn since(self, earlier: Tick) -> u32 {
        self.0.saturating_sub(earlier.0)
    }
}

/// Everything a device call needs from its shard.
pub struct Ctx<'a> {
    /// Now, for timers.
    pub now: Tick,
    /// Now in microseconds of the same clock, for latency samples.
    pub now_us: u64,
    /// Wall clock, ms since the epoch (handshake timestamp, ticket expiry).
    pub wall_ms: i64,
    /// The fleet's device configuration.
    pub cfg: &'a DeviceConfig,
    /// Keys, IVs and jitter; seedable, so a scenario replays exactly.
    pub rng: &'a mut StdRng,
    /// Where output goes.
    pub out: &'a mut Output,
    /// The shard's counters.
    pub stats: &'a mut ShardStats,
}

/// What the shell tells a device.
#[derive(Debug)]
pub enum Event {
    /// Begin the cycle (the ramp reached this device).
    Start,
    /// The answer to [`Effect::LoadTicket`]: a ticket, or `None` (none stored, unreadable,
    /// or the store failed: the device handshakes).
    Ticket(Option<ClientTicket>),
    /// The TCP connection is up.
    Connected,
    /// The TCP connect failed or timed out.
    ConnectFailed,
    /// The connection was closed by the peer or failed.
    Closed,
    /// The push sink took the push with this id (BIZ_ACK pushes are acked only now).
    SinkTook(MsgId),
    /// Graceful stop: close the connection and stay down.
    Stop,
}

/// What a device asks its shell to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Effect {
    /// Look up this device's ticket; answer with [`Event::Ticket`].
    LoadTicket,
    /// Store this device's ticket.
    SaveTicket(ClientTicket),
    /// Drop this device's ticket.
    DeleteTicket,
    /// Open a TCP connection; answer with [`Event::Connected`] or [`Event::ConnectFailed`].
    Connect,
    /// Close the connection (after writing what is queued); the device has already moved on.
    Close(CloseReason),
    /// Hand a push to the sink; if `ack_on_take`, answer with [`Event::SinkTook`].
    Deliver(Delivery),
}

/// A push for the sink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The push's message id (the Ack carries it).
    pub msg_id: MsgId,
    /// The push's flags as received.
    pub flags: Flags,
    /// The content, decrypted and inflated.
    pub content: Bytes,
    /// BIZ_ACK: the device acks only once the sink has taken it.
    pub ack_on_take: bool,
}

/// Why a device gave a connection up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// Two read checks in a row found nothing read for heartbeat + 1 s.
    ReadTimeout,
    /// A handshake, fast connect or bind reply did not come in time.
    RequestTimeout,
    /// The server kicked this device (another connection bound its user).
    Kicked,
    /// The server answered with an ERROR the device cannot recover from on this connection.
    ServerError {
        /// The command that failed.
        cmd: u8,
        /// The error code.
        code: u8,
    },
    /// A frame could not be decoded, decrypted or inflated.
    Decode(DecodeError),
    /// The server sent something the protocol does not allow in this state.
    Unexpected(u8),
    /// The fleet is stopping.
    Stopped,
}

/// A frame body the shell already decrypted in its batch, with the cipher generation it used.
#[derive(Debug)]
pub struct Opened {
    /// [`Device::cipher_for_open`]'s generation at batch time.
    pub generation: u8,
    /// The decrypted body, or why it failed.
    pub body: Result<Bytes, crate::crypto::CryptoError>,
}

/// Where a device is in its cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Not started.
    Idle,
    /// Waiting for the ticket store.
    ExpectTicket,
    /// Waiting for TCP.
    ExpectConnect,
    /// FastConnect sent.
    ExpectFastConnectOk,
    /// Handshake sent.
    ExpectHandshakeOk,
    /// Session up (bound or binding).
    Online,
    /// Waiting to reconnect.
    Backoff,
    /// Down for good (stopped, or kicked without reconnect).
    Stopped,
}

/// One device. About 100 bytes; no heap while idle.
#[derive(Debug)]
pub struct Device {
    index: u32,
    phase: Phase,
    /// The ticket between its load and the connect; boxed, as it lives only that long.
    ticket: Option<Box<ClientTicket>>,
    /// The connection's cipher: AES(clientKey, iv) while the handshake reply is awaited,
    /// then the session key.
    cipher: Option<AesCipher>,
    cipher_generation: u8,
    bound: bool,
    /// The current session came from a fast connect (its ticket is on trial until the bind).
    resumed: bool,
    was_online: bool,
    bind_tries: u8,
    missed_reads: u8,
    reconnect_attempts: u16,
    heartbeat_ms: u32,
    next_msg_id: i32,
    last_read: Tick,
    last_write: Tick,
    /// Request, backoff or bind deadline.
    deadline: Tick,
    heartbeat_due: Tick,
    read_check: Tick,
    request_sent_us: u64,
    heartbeat_sent_us: u64,
}

impl Device {
    /// A device that will use `index` in its id templates. It waits for [`Event::Start`].
    pub fn new(index: u32) -> Self {
        Self {
            index,
            phase: Phase::Idle,
            ticket: None,
            cipher: None,
            cipher_generation: 0,
            bound: false,
            resumed: false,
            was_online: false,
            bind_tries: 0,
            missed_reads: 0,
            reconnect_attempts: 0,
            heartbeat_ms: 0,
            next_msg_id: 0,
            last_read: Tick(0),
            last_write: Tick(0),
            deadline: Tick::NEVER,
            heartbeat_due: Tick::NEVER,
            read_check: Tick::NEVER,
            request_sent_us: 0,
            heartbeat_sent_us: 0,
        }
    }

    /// The index in the id templates.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Where the device is in its cycle.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Whether a bind was acknowledged on the current connection.
    pub fn is_bound(&self) -> bool {
        self.bound
    }

    /// The heartbeat the server chose, ms (0 before the first session).
    pub fn heartbeat_ms(&self) -> u32 {
        self.heartbeat_ms
    }

    /// The cipher the shell should decrypt incoming CRYPTO frames with, and its generation.
    pub fn cipher_for_open(&self) -> Option<(&AesCipher, u8)> {
        self.cipher.as_ref().map(|c| (c, self.cipher_generation))
    }

    /// The earliest deadline, if any; the shell calls [`Device::handle_timeout`] then.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Tick> {
        let t = self.deadline.min(self.heartbeat_due).min(self.read_check);
        (t != Tick::NEVER).then_some(t)
    }
}

#[cfg(test)]
mod tests;
