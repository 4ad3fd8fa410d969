//! What the control API asks of one device beyond its cycle: bind again (a new user or tags
//! from the identity table), unbind, and a summary of where it is.

use super::state::{Owed, State, Timer};
use super::{Device, Shared, Transmit};
use crate::device::Now;
use crate::proto::message::{Unbind, UserBinding};

impl Device {
    /// Binds again with what the identity table now says (a new user or tags). A device
    /// that is not online binds so when its session next comes up. Returns whether a bind
    /// went out now.
    pub fn rebind(&mut self, now: Now, sh: &mut Shared) -> bool {
        if !sh.cfg.binds(self.index) {
            return false;
        }
        let State::Online(o) = &mut self.state else {
            return false;
        };
        o.bound = false;
        o.bind_tries = 0;
        self.send_bind(now, sh);
        true
    }

    /// Sends an Unbind of the user it is bound to now (rendered before the caller clears it
    /// from the identity table). Returns whether one went out.
    pub fn unbind(&mut self, now: Now, sh: &mut Shared) -> bool {
        if !sh.cfg.binds(self.index) {
            return false;
        }
        let State::Online(o) = &mut self.state else {
            return false;
        };
        o.bound = false;
        o.bind_tries = 0;
        self.timers.stop(Timer::Request);
        self.owed.clear(Owed::BIND);
        self.owed.set(Owed::UNBIND);
        self.last_write = now.tick();
        true
    }

    /// The Unbind owed; false if the session went meanwhile.
    pub(super) fn write_unbind(&mut self, sh: &mut Shared, out: &mut Transmit) -> bool {
        let Some(b) = sh.cfg.binding_of(self.index) else {
            return false;
        };
        let id = self.next_id();
        let State::Online(o) = &self.state else {
            return false;
        };
        let msg = Unbind(UserBinding {
            user_id: b.user_id,
            data: sh.cfg.bind_data.clone(),
            tags: b.tags,
        });
        out.sealed(&msg, id, &o.cipher);
        true
    }

    /// Whether a TCP connection is up.
    pub fn is_connected(&self) -> bool {
        self.state.is_connected()
    }
}
