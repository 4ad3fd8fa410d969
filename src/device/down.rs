//! Giving a connection up: the close, the ticket verdict, and the reconnect backoff.

use rand::Rng;

use super::state::{Down, Owed, State, Timer};
use super::{CloseReason, Device, Now, Shared};
use crate::proto::message::ServerMessage;
use crate::proto::{Cmd, DecodeError};

impl Device {
    pub(super) fn fail_decode(&mut self, now: Now, sh: &mut Shared, e: DecodeError) {
        sh.stats.counters.decode_errors += 1;
        self.close(now, sh, CloseReason::Decode(e));
    }

    /// Gives the connection up: tells the shell, then reconnects later (or stays down after
    /// a kick, unless configured to reconnect).
    pub(super) fn close(&mut self, now: Now, sh: &mut Shared, reason: CloseReason) {
        // A resumed session whose bind failed (ERROR, garbled reply, silence) points at a
        // ticket the server no longer matches: its key differs from the stored session's.
        // Drop it, or every reconnect would fast-connect into the same failure.
        let ticket_suspect = matches!(
            reason,
            CloseReason::ServerError { .. } | CloseReason::Decode(_) | CloseReason::RequestTimeout
        );
        if matches!(&self.state, State::Online(o) if o.resumed && !o.bound) && ticket_suspect {
            self.owed.set(Owed::DELETE_TICKET);
        }
        self.connection_down(now, sh);
        if reason == CloseReason::Kicked && !sh.cfg.reconnect_on_kick {
            self.owed.clear(Owed::TRANSMIT);
            self.state = State::Stopped(Down {
                close: Some(reason),
            });
            self.timers.clear();
        } else {
            self.schedule_reconnect(now, sh, Some(reason));
        }
    }

    pub(super) fn connection_down(&mut self, now: Now, sh: &mut Shared) {
        self.upstream_lost(now, sh);
        if matches!(self.state, State::Online(_)) {
            sh.stats.counters.online -= 1;
        }
        if self.state.is_connected() {
            sh.stats.counters.connections -= 1;
        }
    }

    pub(super) fn schedule_reconnect(
        &mut self,
        now: Now,
        sh: &mut Shared,
        close: Option<CloseReason>,
    ) {
        // Full jitter (uniform in 0..ceiling), ceiling doubling up to the cap: a server restart
        // spreads the fleet's reconnects instead of synchronising them.
        self.reconnect_attempts = self.reconnect_attempts.saturating_add(1);
        let shift = u32::from(self.reconnect_attempts.min(17) - 1);
        let ceiling = sh
            .cfg
            .backoff_base_ms
            .saturating_mul(1 << shift)
            .min(sh.cfg.backoff_cap_ms);
        let delay = sh.rng.gen_range(0..=ceiling);
        sh.stats.counters.reconnects += 1;
        self.owed.clear(Owed::TRANSMIT);
        self.state = State::Backoff(Down { close });
        self.timers.clear();
        self.timers
            .set(Timer::Backoff, now.tick().after(u64::from(delay)));
    }
}

pub(super) fn server_cmd(msg: &ServerMessage) -> u8 {
    match msg {
        ServerMessage::Heartbeat => Cmd::Heartbeat as u8,
        ServerMessage::HandshakeOk(_) => Cmd::Handshake as u8,
        ServerMessage::FastConnectOk(_) => Cmd::FastConnect as u8,
        ServerMessage::Ok(_) => Cmd::Ok as u8,
        ServerMessage::Error(_) => Cmd::Error as u8,
        ServerMessage::Push(_) => Cmd::Push as u8,
        ServerMessage::Kick(_) => Cmd::Kick as u8,
        ServerMessage::HttpResponse(_) => Cmd::HttpProxy as u8,
        ServerMessage::Other(cmd) => *cmd,
    }
}
