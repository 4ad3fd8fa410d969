//! The device: a sans-IO state machine for one MPUSH client session (PROTOCOL.md 6).
//!
//! A [`Device`] has no socket, clock, task or RNG of its own; see its documentation for how a
//! shell drives it. What all devices of a shard share (configuration, RNG, counters) is one
//! [`Shared`]; what they write goes into one caller-owned [`Transmit`].
//!
//! Must not touch: sockets, clocks, async, Redis, threads.
#![forbid(unsafe_code)]

mod config;
mod control;
mod down;
mod identity;
mod machine;
mod poll;
mod state;
pub mod transmit;
mod upstream;

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use rand::rngs::StdRng;
use rand::SeedableRng;

mod ticket;
pub use config::{DeviceConfig, Template};
pub use identity::{Binding, ClientFields, Identities, Identity};
pub use ticket::ClientTicket;
pub use transmit::Transmit;
pub use upstream::{
    HttpAnswer, HttpCall, PushAck, UpstreamFinished, UpstreamOutcome, UpstreamRequest,
    DEFAULT_PUSH_TIMEOUT_MS, HTTP_TIMEOUT_MARGIN_MS, MAX_IN_FLIGHT, SERVER_READ_TIMEOUT_MS,
};

use crate::proto::{DecodeError, Flags, MsgId};
use crate::stats::ShardStats;

use state::{Owed, State, Timers};

/// Milliseconds on the shell's monotonic clock (since it started). u64: no wrap, no
/// saturation in any run that ends before the sun does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tick(pub u64);

impl Tick {
    /// No deadline.
    pub const NEVER: Tick = Tick(u64::MAX);

    /// `self + ms`, saturating below [`Tick::NEVER`] (a deadline is never "no deadline").
    #[must_use]
    pub fn after(self, ms: u64) -> Tick {
        Tick(self.0.saturating_add(ms).min(u64::MAX - 1))
    }

    /// Milliseconds from `earlier` to `self` (0 if `earlier` is later).
    pub fn since(self, earlier: Tick) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

/// Time as the shell hands it in with every call: one monotonic reading and the wall clock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Now {
    /// Monotonic microseconds since the shell started (latency samples).
    pub us: u64,
    /// Wall clock, ms since the Unix epoch (handshake timestamp, ticket expiry).
    pub wall_ms: i64,
}

impl Now {
    /// The monotonic reading in ms, for deadlines.
    pub fn tick(self) -> Tick {
        Tick(self.us / 1_000)
    }

    /// A simulated clock `ms` after its start, whose wall clock read `wall_at_zero_ms` then.
    pub fn at_ms(ms: u64, wall_at_zero_ms: i64) -> Now {
        Now {
            us: ms.saturating_mul(1_000),
            wall_ms: wall_at_zero_ms.saturating_add(i64::try_from(ms).unwrap_or(i64::MAX)),
        }
    }
}

/// What every device of one shard shares, built once by the shard (and once by a test):
/// configuration, the seedable RNG (keys, IVs, jitter), the shard's counters and histograms.
pub struct Shared {
    /// The fleet's device configuration.
    pub cfg: Arc<DeviceConfig>,
    /// Keys, IVs, RSA padding and jitter; seedable, so a scenario replays exactly.
    pub rng: StdRng,
    /// The shard's counters and latency histograms.
    pub stats: ShardStats,
    /// Where received bodies that cannot be decrypted in place (they still share the read
    /// buffer) are decrypted: one buffer recycled by all devices, so a delivered push is a
    /// slice of it and costs no allocation once warm (see
    /// [`crate::proto::pipeline::open_body_into`]).
    rx: BytesMut,
}

impl Shared {
    /// Shared state for `cfg`, with the RNG seeded from `seed`.
    pub fn new(cfg: Arc<DeviceConfig>, seed: u64) -> Self {
        Self {
            cfg,
            rng: StdRng::seed_from_u64(seed),
            stats: ShardStats::default(),
            rx: BytesMut::new(),
        }
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("cfg", &self.cfg)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
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
    /// Graceful stop: close the connection and stay down (a later [`Event::Start`] begins
    /// again: a ramp after a ramp down).
    Stop,
    /// The shell dropped the connection on purpose (a churn or storm phase): reconnect as
    /// after a loss, but not counted as the peer's close.
    Drop,
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
    /// Close the connection after writing what [`Device::poll_transmit`] gave; the device
    /// has already moved on.
    Close(CloseReason),
    /// Hand a push to the sink; if `ack_on_take`, answer with [`Event::SinkTook`].
    Deliver(Delivery),
    /// A request of [`Device::start_upstream`] finished.
    Upstream(UpstreamFinished),
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

/// Where a device is in its cycle: a summary of its state.
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

/// One MPUSH client session, driven like quinn's `Connection`.
///
/// **Input** (each takes the time as [`Now`] and the shard's [`Shared`]):
/// [`handle_event`](Self::handle_event) (start, ticket loaded, connected, closed, sink took
/// a push, stop), [`handle_heartbeat`](Self::handle_heartbeat) (a `0xDF` byte),
/// [`handle_frame`](Self::handle_frame) (a whole frame, body still sealed: the device
/// decrypts it), [`handle_stream_error`](Self::handle_stream_error) and
/// [`handle_timeout`](Self::handle_timeout) (early or repeated calls do nothing).
///
/// **Output**, pulled by the shell after *every* input call, in this order:
/// 1. [`poll_transmit`](Self::poll_transmit) until it returns `false`: appends the bytes to
///    write (and frames to seal) to the shard's [`Transmit`]. Bytes are generated here (the
///    handshake is RSA-encrypted, the bind rendered), from small inline state that records
///    what is owed.
/// 2. [`poll_timeout`](Self::poll_timeout): the earliest deadline; call `handle_timeout` then.
/// 3. [`poll_effect`](Self::poll_effect) until `None`. A ticket operation comes before the
///    `Close` of the same call, and `Close` means "close after writing what poll_transmit
///    gave you".
///
/// The device holds at most one input's worth of output (one hello, one bind, two acks, a
/// heartbeat; one payload-carrying effect) and no heap queue: output not polled before the
/// next input may be replaced by it.
#[derive(Debug)]
pub struct Device {
    index: u32,
    owed: Owed,
    reconnect_attempts: u16,
    was_online: bool,
    heartbeat_ms: u32,
    next_msg_id: i32,
    last_read: Tick,
    last_write: Tick,
    /// When the awaited request went out (connect, handshake, fast connect, bind), µs.
    request_sent_us: u64,
    timers: Timers,
    state: State,
    /// Device-originated requests; allocated at the first one.
    upstream: Option<Box<upstream::Upstream>>,
}

impl Device {
    /// A device that will use `index` in its id templates. It waits for [`Event::Start`].
    pub fn new(index: u32) -> Self {
        Self {
            index,
            owed: Owed::default(),
            reconnect_attempts: 0,
            was_online: false,
            heartbeat_ms: 0,
            next_msg_id: 0,
            last_read: Tick(0),
            last_write: Tick(0),
            request_sent_us: 0,
            timers: Timers::default(),
            state: State::Idle,
            upstream: None,
        }
    }

    /// The index in the id templates.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Where the device is in its cycle.
    pub fn phase(&self) -> Phase {
        self.state.phase()
    }

    /// Whether a bind was acknowledged on the current connection.
    pub fn is_bound(&self) -> bool {
        matches!(&self.state, State::Online(o) if o.bound)
    }

    /// The heartbeat the server chose, ms (0 before the first session).
    pub fn heartbeat_ms(&self) -> u32 {
        self.heartbeat_ms
    }

    /// The earliest deadline, if any; the shell calls [`Device::handle_timeout`] then.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Tick> {
        let mut t = self.timers.earliest();
        if let Some(up) = &self.upstream {
            t = t.min(up.earliest());
        }
        (t != Tick::NEVER).then_some(t)
    }
}

#[cfg(test)]
mod tests;
