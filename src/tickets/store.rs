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

/// The answer to a lookup: `token` is what the shard passed to [`TicketStore::load`].
#[derive(Debug)]
pub struct Loaded {
    /// The shard's token (its device slot).
    pub token: u32,
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
pub trait TicketStore: Send {
    /// Gives the store the shard's wake-up, before first use. A store that answers
    /// asynchronously calls it when answers are ready; the default ignores it.
    fn attach(&mut self, wake: Wake) {
        let _ = wake;
    }
    /// Requests the ticket of `device_id`; the answer comes back with `token`.
    fn load(&mut self, token: u32, device_id: &str);
    /// Stores a ticket. Its lifetime never exceeds the ticket's expire time.
    fn save(&mut self, device_id: &str, ticket: &ClientTicket, wall_ms: i64);
    /// Drops a ticket.
    fn delete(&mut self, device_id: &str);
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
/// control plane keeps the maps, so a second run comes back by fast connect.
#[derive(Debug, Default)]
pub struct MemoryTickets {
    tickets: HashMap<String, ClientTicket>,
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

    /// The stored ticket of a device, if any.
    pub fn get(&self, device_id: &str) -> Option<&ClientTicket> {
        self.tickets.get(device_id)
    }
}

impl TicketStore for MemoryTickets {
    fn load(&mut self, token: u32, device_id: &str) {
        let ticket = self.tickets.get(device_id).cloned();
        self.ready.push(Loaded { token, ticket });
    }

    fn save(&mut self, device_id: &str, ticket: &ClientTicket, _wall_ms: i64) {
        // Expiry is checked by the device when it loads the ticket.
        self.tickets.insert(device_id.to_owned(), ticket.clone());
        self.counters.saved += 1;
    }

    fn delete(&mut self, device_id: &str) {
        self.tickets.remove(device_id);
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
        store.save("d-1", &t, 0);
        store.load(3, "d-1");
        store.load(4, "d-2");
        let mut out = Vec::new();
        store.drain_ready(&mut out);
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].token, out[0].ticket.as_ref()), (3, Some(&t)));
        assert_eq!((out[1].token, out[1].ticket.as_ref()), (4, None));
        store.delete("d-1");
        assert!(store.is_empty());
        assert_eq!(store.take_counters().saved, 1);
    }
}
