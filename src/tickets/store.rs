//! The shard's view of a ticket store: non-blocking requests, answers collected later.
//!
//! A shard never waits on its store. It calls [`TicketStore::load`] / `save` / `delete` while
//! it handles its devices, [`TicketStore::flush`] once per loop turn (where a networked store
//! sends the turn's requests as one pipeline), and takes the answers from
//! [`TicketStore::drain_ready`] on a later turn. A store that answers asynchronously wakes the
//! shard through the [`Wake`] it was given.

use std::collections::HashMap;

use super::format::ClientTicket;

/// Tells a shard that a store has answers ready.
pub type Wake = std::sync::Arc<dyn Fn() + Send + Sync>;

/// The answer to a lookup of [`TicketStore::load`].
#[derive(Debug)]
pub struct Loaded {
    /// The global device index the lookup was for.
    pub device: u32,
    /// The ticket, or `None` when absent, unreadable, or the store failed (the device then
    /// handshakes; failures are counted by the store).
    pub ticket: Option<ClientTicket>,
}

/// Counters a store keeps for the shard's statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreCounters {
    /// Tickets written.
    pub saved: u64,
    /// Operations that failed (store unreachable, bad data).
    pub errors: u64,
}

/// A ticket store as a shard drives it. Stores move between threads (a control plane keeps
/// them between runs), so they are `Send`.
///
/// Requests name a device by its global index, never by its id string: the core holds no
/// strings per device. A store that needs the id (Redis keys) renders it at its edge from the
/// fleet's [`Template`](crate::device::Template).
pub trait TicketStore: Send {
    /// Gives the store the shard's wake-up, before first use. A store that answers
    /// asynchronously calls it when answers are ready; the default ignores it.
    fn attach(&mut self, wake: Wake) {
        let _ = wake;
    }
    /// Requests the ticket of device `device` (global index); the answer comes back as a
    /// [`Loaded`] with the same index.
    fn load(&mut self, device: u32);
    /// Stores the ticket of device `device`. Its lifetime never exceeds its expire time.
    fn save(&mut self, device: u32, ticket: &ClientTicket, wall_ms: i64);
    /// Drops the ticket of device `device`.
    fn delete(&mut self, device: u32);
    /// Sends what this turn requested (a networked store pipelines here).
    fn flush(&mut self);
    /// Moves the answers that are ready into `out`.
    fn drain_ready(&mut self, out: &mut Vec<Loaded>);
    /// Whether requests are still waiting for answers.
    fn pending(&self) -> bool;
    /// Counters since the last call (reset on read).
    fn take_counters(&mut self) -> StoreCounters;
}

/// The embedded default: a map owned by one shard. A device belongs to one shard for life, so
/// the shard's map holds all of its tickets and needs no lock. Between runs in one process the
/// control plane keeps the maps, so a second run comes back by fast connect. Keyed by the
/// device index: no strings.
#[derive(Debug, Default)]
pub struct MemoryTickets {
    tickets: HashMap<u32, ClientTicket>,
    ready: Vec<Loaded>,
    counters: StoreCounters,
}

impl MemoryTickets {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many tickets it holds.
    pub fn len(&self) -> usize {
        self.tickets.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.tickets.is_empty()
    }

    /// The stored ticket of device `device` (global index), if any.
    pub fn get(&self, device: u32) -> Option<&ClientTicket> {
        self.tickets.get(&device)
    }
}

impl TicketStore for MemoryTickets {
    fn load(&mut self, device: u32) {
        let ticket = self.tickets.get(&device).cloned();
        self.ready.push(Loaded { device, ticket });
    }

    fn save(&mut self, device: u32, ticket: &ClientTicket, _wall_ms: i64) {
        // Expiry is checked by the device when it loads the ticket.
        self.tickets.insert(device, ticket.clone());
        self.counters.saved += 1;
    }

    fn delete(&mut self, device: u32) {
        self.tickets.remove(&device);
    }

    fn flush(&mut self) {}

    fn drain_ready(&mut self, out: &mut Vec<Loaded>) {
        out.append(&mut self.ready);
    }

    fn pending(&self) -> bool {
        false
    }

    fn take_counters(&mut self) -> StoreCounters {
        std::mem::take(&mut self.counters)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::AesCipher;

    #[test]
    fn memory_store_answers_on_the_next_drain() {
        let mut store = MemoryTickets::new();
        let t = ClientTicket {
            session_id: "s".into(),
            expire_time_ms: 5,
            cipher: AesCipher::new([1; 16], [2; 16]),
        };
        store.save(1, &t, 0);
        store.load(1);
        store.load(2);
        let mut out = Vec::new();
        store.drain_ready(&mut out);
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].device, out[0].ticket.as_ref()), (1, Some(&t)));
        assert_eq!((out[1].device, out[1].ticket.as_ref()), (2, None));
        assert_eq!(store.get(1), Some(&t));
        store.delete(1);
        assert!(store.is_empty());
        assert_eq!(store.take_counters().saved, 1);
    }
}
