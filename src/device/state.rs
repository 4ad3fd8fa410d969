//! The device's states (rustls `Expect*` style: each holds only what its phase needs), its
//! timer table and the inline record of output owed to the shell.

use super::{CloseReason, Delivery, Phase, Tick};
use crate::crypto::AesCipher;
use crate::proto::MsgId;
use crate::tickets::format::ClientTicket;

/// One state per phase, named for what it awaits.
#[derive(Debug)]
pub(super) enum State {
    Idle,
    ExpectTicket,
    ExpectConnect(ExpectConnect),
    ExpectFastConnectOk(ExpectFastConnectOk),
    ExpectHandshakeOk(ExpectHandshakeOk),
    Online(Online),
    Backoff(Down),
    Stopped(Down),
}

impl State {
    pub(super) fn phase(&self) -> Phase {
        match self {
            State::Idle => Phase::Idle,
            State::ExpectTicket => Phase::ExpectTicket,
            State::ExpectConnect(_) => Phase::ExpectConnect,
            State::ExpectFastConnectOk(_) => Phase::ExpectFastConnectOk,
            State::ExpectHandshakeOk(_) => Phase::ExpectHandshakeOk,
            State::Online(_) => Phase::Online,
            State::Backoff(_) => Phase::Backoff,
            State::Stopped(_) => Phase::Stopped,
        }
    }

    /// Whether a TCP connection is up.
    pub(super) fn is_connected(&self) -> bool {
        matches!(
            self,
            State::ExpectFastConnectOk(_) | State::ExpectHandshakeOk(_) | State::Online(_)
        )
    }

    /// The connection's cipher for incoming CRYPTO bodies.
    pub(super) fn cipher(&self) -> Option<&AesCipher> {
        match self {
            State::ExpectFastConnectOk(s) => Some(&s.ticket.cipher),
            State::ExpectHandshakeOk(s) => Some(&s.temp),
            State::Online(s) => Some(&s.cipher),
            _ => None,
        }
    }
}

/// The TCP connect is under way; the ticket (if one was usable) waits for it. Boxed: it
/// lives only between the load and the connect.
#[derive(Debug)]
pub(super) struct ExpectConnect {
    pub(super) ticket: Option<Box<ClientTicket>>,
}

/// FastConnect owed or sent. The seed client switches to the ticket's cipher once it sends
/// FastConnect, so the ticket's cipher reads the reply; its session id is written at
/// `poll_transmit`.
#[derive(Debug)]
pub(super) struct ExpectFastConnectOk {
    pub(super) ticket: Box<ClientTicket>,
}

/// Handshake owed or sent. The fresh client key lives only here, as AES(clientKey, iv),
/// which also reads the HandshakeOk.
#[derive(Debug)]
pub(super) struct ExpectHandshakeOk {
    pub(super) temp: AesCipher,
}

/// The session is up, binding or bound.
#[derive(Debug)]
pub(super) struct Online {
    /// The session cipher.
    pub(super) cipher: AesCipher,
    pub(super) bound: bool,
    /// The session came from a fast connect: its ticket is on trial until the bind.
    pub(super) resumed: bool,
    pub(super) bind_tries: u8,
    pub(super) missed_reads: u8,
    /// When the unanswered heartbeat went out, µs (0: none outstanding).
    pub(super) heartbeat_sent_us: u64,
    pub(super) acks: Acks,
    /// The payload-carrying effect of the last input, until polled.
    pub(super) held: Held,
}

/// An effect with data, waiting for `poll_effect`. One input makes at most one.
#[derive(Debug, Default)]
pub(super) enum Held {
    #[default]
    None,
    /// The ticket of the session just made (the cipher is the session's).
    SaveTicket {
        session_id: String,
        expire_time_ms: i64,
    },
    Deliver(Delivery),
}

/// Backoff or stopped; the close of the connection just given up, until polled.
#[derive(Debug, Default)]
pub(super) struct Down {
    pub(super) close: Option<CloseReason>,
}

/// Acks owed, inline: one input owes at most one.
#[derive(Debug, Default)]
pub(super) struct Acks {
    ids: [MsgId; Acks::CAP],
    len: u8,
}

impl Acks {
    const CAP: usize = 2;

    /// Records an ack; `false` if the shell left two unpolled (a contract breach: dropped).
    pub(super) fn push(&mut self, id: MsgId) -> bool {
        let Some(slot) = self.ids.get_mut(usize::from(self.len)) else {
            return false;
        };
        *slot = id;
        self.len += 1;
        true
    }

    /// The owed acks, emptying the record.
    pub(super) fn take(&mut self) -> impl Iterator<Item = MsgId> {
        let n = usize::from(std::mem::take(&mut self.len));
        self.ids.into_iter().take(n)
    }
}

/// Output owed that needs no data beyond the state: bit flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Owed(u8);

impl Owed {
    pub(super) const LOAD_TICKET: Owed = Owed(1);
    pub(super) const CONNECT: Owed = Owed(1 << 1);
    pub(super) const DELETE_TICKET: Owed = Owed(1 << 2);
    /// The state's opening request: FastConnect or Handshake.
    pub(super) const HELLO: Owed = Owed(1 << 3);
    pub(super) const BIND: Owed = Owed(1 << 4);
    pub(super) const HEARTBEAT: Owed = Owed(1 << 5);
    /// An Unbind asked for through the control API.
    pub(super) const UNBIND: Owed = Owed(1 << 7);
    /// What belongs to a connection, dropped with it.
    pub(super) const TRANSMIT: Owed =
        Owed(Self::HELLO.0 | Self::BIND.0 | Self::HEARTBEAT.0 | Self::UNBIND.0);

    pub(super) fn set(&mut self, o: Owed) {
        self.0 |= o.0;
    }

    pub(super) fn clear(&mut self, o: Owed) {
        self.0 &= !o.0;
    }

    /// Whether `o` was owed; clears it.
    pub(super) fn take(&mut self, o: Owed) -> bool {
        let had = self.0 & o.0 != 0;
        self.clear(o);
        had
    }
}

/// The kinds of deadline a device keeps.
#[derive(Clone, Copy, Debug)]
pub(super) enum Timer {
    /// A handshake, fast connect or bind reply.
    Request = 0,
    /// The reconnect delay.
    Backoff = 1,
    /// The next heartbeat to send.
    Heartbeat = 2,
    /// The next read check (PROTOCOL.md 6.5).
    ReadCheck = 3,
}

/// One deadline per [`Timer`]; [`Tick::NEVER`] when unset.
#[derive(Clone, Copy, Debug)]
pub(super) struct Timers([Tick; 4]);

impl Default for Timers {
    fn default() -> Self {
        Self([Tick::NEVER; 4])
    }
}

impl Timers {
    pub(super) fn get(&self, t: Timer) -> Tick {
        self.0[t as usize]
    }

    pub(super) fn set(&mut self, t: Timer, at: Tick) {
        self.0[t as usize] = at;
    }

    pub(super) fn stop(&mut self, t: Timer) {
        self.set(t, Tick::NEVER);
    }

    /// Whether `t` is due at `now`; a due timer is stopped (fires once).
    pub(super) fn expired(&mut self, t: Timer, now: Tick) -> bool {
        let due = self.get(t) <= now;
        if due {
            self.stop(t);
        }
        due
    }

    pub(super) fn clear(&mut self) {
        *self = Self::default();
    }

    pub(super) fn earliest(&self) -> Tick {
        self.0.iter().copied().min().unwrap_or(Tick::NEVER)
    }
}
