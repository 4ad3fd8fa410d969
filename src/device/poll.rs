//! The outputs of [`Device`], pulled by the shell after every input: the bytes owed are
//! generated here, from what the input recorded.

use super::state::{Held, Owed, State};
use super::{Device, Effect, Now, Shared, Transmit};
use crate::proto::message::{Ack, Bind, FastConnect, Handshake, UserBinding};
use crate::proto::Flags;
use crate::tickets::format::ClientTicket;

impl Device {
    /// Appends what this device owes the wire to `out`, in wire order: the opening request
    /// (FastConnect raw, or the RSA-sealed Handshake), the bind (to seal), acks, a heartbeat.
    /// Returns whether it appended anything; a second call returns `false`.
    #[must_use]
    pub fn poll_transmit(&mut self, now: Now, sh: &mut Shared, out: &mut Transmit) -> bool {
        let mut wrote = false;
        if self.owed.take(Owed::HELLO) {
            wrote |= self.write_hello(now, sh, out);
        }
        if self.owed.take(Owed::BIND) {
            let id = self.next_id();
            if let (State::Online(o), Some(b)) = (&self.state, sh.cfg.binding_of(self.index)) {
                let msg = Bind(UserBinding {
                    user_id: b.user_id,
                    data: sh.cfg.bind_data.clone(),
                    tags: b.tags,
                });
                out.sealed(&msg, id, &o.cipher);
                wrote = true;
            }
        }
        if self.owed.take(Owed::UNBIND) {
            wrote |= self.write_unbind(sh, out);
        }
        if let State::Online(o) = &mut self.state {
            for id in o.acks.take() {
                out.raw(&Ack, id, Flags::NONE);
                wrote = true;
            }
        }
        wrote |= self.transmit_upstream(now, sh, out);
        if self.owed.take(Owed::HEARTBEAT) {
            out.heartbeat();
            wrote = true;
        }
        wrote
    }

    fn write_hello(&mut self, now: Now, sh: &mut Shared, out: &mut Transmit) -> bool {
        let id = self.next_id();
        let cfg = &sh.cfg;
        match &self.state {
            State::ExpectFastConnectOk(s) => {
                let msg = FastConnect {
                    session_id: s.ticket.session_id.clone(),
                    device_id: cfg.device_id_of(self.index),
                    min_heartbeat: cfg.min_heartbeat,
                    max_heartbeat: cfg.max_heartbeat,
                };
                out.raw(&msg, id, Flags::NONE);
                true
            }
            State::ExpectHandshakeOk(s) => {
                let client = cfg.client_of(self.index);
                let msg = Handshake {
                    device_id: cfg.device_id_of(self.index),
                    os_name: client.os_name,
                    os_version: client.os_version,
                    client_version: client.client_version,
                    iv: *s.temp.iv(),
                    client_key: *s.temp.key(),
                    min_heartbeat: cfg.min_heartbeat,
                    max_heartbeat: cfg.max_heartbeat,
                    timestamp: now.wall_ms,
                };
                out.rsa_sealed(&msg, id, &cfg.rsa, &mut sh.rng);
                true
            }
            _ => false,
        }
    }

    /// The next thing the shell should do for this device, in the order a shell can rely
    /// on: LoadTicket, Connect, DeleteTicket, SaveTicket, Deliver, Upstream (each finished
    /// request), then Close.
    #[must_use]
    pub fn poll_effect(&mut self) -> Option<Effect> {
        if self.owed.take(Owed::LOAD_TICKET) {
            return Some(Effect::LoadTicket);
        }
        if self.owed.take(Owed::CONNECT) {
            return Some(Effect::Connect);
        }
        if self.owed.take(Owed::DELETE_TICKET) {
            return Some(Effect::DeleteTicket);
        }
        if let State::Online(o) = &mut self.state {
            if !matches!(o.held, Held::None) {
                return match std::mem::take(&mut o.held) {
                    Held::None => None,
                    Held::SaveTicket {
                        session_id,
                        expire_time_ms,
                    } => Some(Effect::SaveTicket(ClientTicket {
                        session_id,
                        expire_time_ms,
                        cipher: o.cipher.clone(),
                    })),
                    Held::Deliver(d) => Some(Effect::Deliver(d)),
                };
            }
        }
        if let Some(done) = self.poll_upstream() {
            return Some(Effect::Upstream(done));
        }
        match &mut self.state {
            State::Backoff(d) | State::Stopped(d) => d.close.take().map(Effect::Close),
            _ => None,
        }
    }
}
