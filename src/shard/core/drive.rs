//! Draining a device after each input, in quinn's order (transmit, timeout, effects), and
//! sealing the turn's encrypted frames in one AES batch.

use super::io::{ConnId, Io, TicketOp};

/// Output buffer chunk, and the room below which a turn takes a new one.
const OUT_CHUNK: usize = 64 * 1024;
const OUT_LOW_WATER: usize = 4 * 1024;
use super::sink::{SinkItem, SinkToken};
use super::{Sealing, ShardCore};
use crate::device::{Effect, Event, Transmit};

impl ShardCore {
    /// Pulls everything one input produced out of the device in `slot`.
    pub(super) fn drive(&mut self, slot: u32) {
        let server = self.slots[slot as usize].server;
        self.drive_transmit(slot);
        let s = &mut self.slots[slot as usize];
        let deadline = s.device.poll_timeout();
        self.timers.arm(slot, &mut s.armed, deadline);
        while let Some(effect) = self.slots[slot as usize].device.poll_effect() {
            self.apply(slot, effect);
        }
        self.update_admission(slot);
        self.attribute(server);
        self.count_drive(slot);
    }

    /// Output without frames to seal is written at once; output with some waits for the
    /// turn's batch, and the device's later output of the turn queues behind it.
    fn drive_transmit(&mut self, slot: u32) {
        let now = self.now;
        let s = &mut self.slots[slot as usize];
        if let Some(i) = s.sealing {
            let t = &mut self.sealing[i as usize].transmit;
            let _ = s.device.poll_transmit(now, &mut self.shared, t);
            return;
        }
        if !s
            .device
            .poll_transmit(now, &mut self.shared, &mut self.transmit)
        {
            return;
        }
        let Some(conn) = s.conn.as_ref().map(|c| c.id) else {
            // Not connected: nothing can carry these bytes.
            self.transmit.seal_inline_into(&mut self.out);
            self.out.clear();
            return;
        };
        if self.transmit.seal_count() == 0 {
            self.reserve_out();
            self.transmit.finish_into(|_| &[], &mut self.out);
            let data = self.out.split().freeze();
            self.write(conn, data);
            return;
        }
        let threshold = self.cfg.device.limits.compress_threshold;
        let mut transmit = self.spare.pop().unwrap_or_else(|| Transmit::new(threshold));
        std::mem::swap(&mut transmit, &mut self.transmit);
        s.sealing = Some(self.sealing.len() as u32);
        self.sealing.push(Sealing {
            conn,
            transmit,
            shutdown_after: false,
        });
    }

    fn apply(&mut self, slot: u32, effect: Effect) {
        let device = self.slots[slot as usize].device.index();
        match effect {
            Effect::LoadTicket => self.tickets.push_back(TicketOp::Load(device)),
            Effect::SaveTicket(ticket) => {
                let wall = self.now.wall_ms;
                self.tickets.push_back(TicketOp::Save(device, ticket, wall));
            }
            Effect::DeleteTicket => self.tickets.push_back(TicketOp::Delete(device)),
            Effect::Connect => self.request_connect(slot),
            Effect::Close(reason) => {
                tracing::debug!(device, ?reason, "closing");
                let s = &mut self.slots[slot as usize];
                let Some(conn) = s.conn.take() else { return };
                match s.sealing.take() {
                    // Its last bytes wait for the batch: shut down after them.
                    Some(i) => self.sealing[i as usize].shutdown_after = true,
                    None => self.io.push_back(Io::Shutdown(conn.id)),
                }
            }
            Effect::Upstream(finished) => self.upstream_finished(slot, finished),
            Effect::Deliver(delivery) => {
                let conn_id = self.slots[slot as usize].conn.as_ref().map(|c| c.id);
                self.probe
                    .on_deliver(conn_id, &delivery, self.now, self.cfg.sink);
                let Some(conn) = self.slots[slot as usize].conn.as_mut() else {
                    return;
                };
                if !self.cfg.sink {
                    // No sink: the application takes the push at once.
                    if delivery.ack_on_take {
                        self.event(slot, Event::SinkTook(delivery.msg_id));
                    }
                    return;
                }
                conn.held += 1;
                let token = SinkToken {
                    conn: conn.id,
                    msg_id: delivery.msg_id.0,
                    ack: delivery.ack_on_take,
                    received_us: self.now.us,
                };
                self.sink.backlog.push_back(SinkItem {
                    device,
                    delivery,
                    received_at_ms: self.now.wall_ms,
                    token,
                });
            }
        }
    }

    /// Opens a connection for the device in `slot` (the admission window let it through).
    pub(super) fn start_connect(&mut self, slot: u32) {
        let (src, dst) = self.server_for_connect();
        let server = self.server_index(dst);
        self.shared.stats.servers.entry(dst).connects += 1;
        let s = &mut self.slots[slot as usize];
        s.server = server;
        s.gen = s.gen.wrapping_add(1);
        let conn = ConnId { slot, gen: s.gen };
        // Counted here, not when the device asked: a connect waiting for the window or the
        // retry budget has not been attempted.
        self.shared.stats.counters.connects += 1;
        self.io.push_back(Io::Connect { conn, src, dst });
    }

    /// Keeps a chunk of room in the output buffer: slices handed out as `Io::Write` share it,
    /// and once the driver dropped them `reserve` reuses it in place, so steady-state output
    /// allocates nothing (a new chunk only while the driver still holds the old one).
    fn reserve_out(&mut self) {
        // With no `Io` waiting the driver holds none of the chunk, so `reserve` reclaims it in
        // place; below the low-water mark mid-turn it must take a new one.
        let room = self.out.capacity();
        if room < OUT_LOW_WATER || (self.io.is_empty() && room < OUT_CHUNK / 2) {
            self.out.reserve(OUT_CHUNK);
        }
    }

    /// Encrypts every frame the turn sealed in one batch, then writes each device's bytes in
    /// the order it produced them (and shuts down the connections that closed after them).
    pub(super) fn seal_turn(&mut self) {
        if self.sealing.is_empty() {
            return;
        }
        self.batch.clear();
        let mut jobs = Vec::new();
        for s in &self.sealing {
            for i in 0..s.transmit.seal_count() {
                let (cipher, plain) = s.transmit.seal(i);
                jobs.push(self.batch.push_encrypt(cipher, plain));
            }
        }
        self.batch.run();
        self.reserve_out();
        let mut sealing = std::mem::take(&mut self.sealing);
        let mut first = 0;
        for mut s in sealing.drain(..) {
            let n = s.transmit.seal_count();
            let batch = &self.batch;
            let ids = &jobs[first..first + n];
            // Encryption cannot fail; an empty slice would only mean a lost job id.
            s.transmit
                .finish_into(|i| batch.output(ids[i]).unwrap_or(&[]), &mut self.out);
            first += n;
            self.slots[s.conn.slot as usize].sealing = None;
            let data = self.out.split().freeze();
            if !data.is_empty() {
                self.write(s.conn, data);
            }
            if s.shutdown_after {
                self.io.push_back(Io::Shutdown(s.conn));
            }
            self.spare.push(s.transmit);
        }
        self.sealing = sealing;
    }
}
