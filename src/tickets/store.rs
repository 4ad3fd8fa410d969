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

/// The embedded default: a table owned by one shard. A device belongs to one shard for life,
/// so the shard's table holds all of its tickets and needs no lock. Between runs in one
/// process the control plane keeps the tables, so a second run comes back by fast connect.
/// Keyed by the device index: no strings.
///
/// A shard's devices are a contiguous range of indices, so tickets live in a dense vector
/// from the lowest index seen, 64 bytes each, the session id inline when it is hex (as the
/// real server's MD5 ids are). A `HashMap<u32, ClientTicket>` cost 208 bytes per session at
/// 15,000 (the table's power-of-two buckets at 73 bytes, plus a 48-byte heap chunk for the
/// id). An index far outside the range (which would grow the vector by more than the
/// tickets it holds) goes to a map instead.
#[derive(Debug, Default)]
pub struct MemoryTickets {
    base: u32,
    dense: Vec<Option<Stored>>,
    far: HashMap<u32, ClientTicket>,
    count: usize,
    ready: Vec<Loaded>,
    counters: StoreCounters,
}

/// Slack the dense vector may grow by beyond twice the tickets it holds.
const DENSE_SLACK: usize = 4096;

/// A ticket as the table keeps it.
#[derive(Debug)]
struct Stored {
    expire_time_ms: i64,
    key: [u8; 16],
    iv: [u8; 16],
    session: SessionId,
}

/// A session id: lowercase hex of up to 16 bytes (the real server's MD5) inline, anything
/// else as text.
#[derive(Debug)]
enum SessionId {
    Hex { len: u8, bytes: [u8; 16] },
    Text(Box<str>),
}

impl SessionId {
    fn new(id: &str) -> SessionId {
        let b = id.as_bytes();
        let hex = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        if b.len() % 2 == 0 && b.len() <= 32 {
            let mut bytes = [0u8; 16];
            let packed = b.chunks(2).zip(bytes.iter_mut()).all(|(pair, out)| {
                match (hex(pair[0]), hex(pair[1])) {
                    (Some(hi), Some(lo)) => {
                        *out = hi << 4 | lo;
                        true
                    }
                    _ => false,
                }
            });
            if packed {
                return SessionId::Hex {
                    len: (b.len() / 2) as u8,
                    bytes,
                };
            }
        }
        SessionId::Text(id.into())
    }

    fn render(&self) -> String {
        match self {
            SessionId::Hex { len, bytes } => {
                const DIGITS: &[u8; 16] = b"0123456789abcdef";
                let mut s = String::with_capacity(usize::from(*len) * 2);
                for b in &bytes[..usize::from(*len)] {
                    s.push(char::from(DIGITS[usize::from(b >> 4)]));
                    s.push(char::from(DIGITS[usize::from(b & 15)]));
                }
                s
            }
            SessionId::Text(t) => t.to_string(),
        }
    }
}

impl Stored {
    fn new(t: &ClientTicket) -> Stored {
        Stored {
            expire_time_ms: t.expire_time_ms,
            key: *t.cipher.key(),
            iv: *t.cipher.iv(),
            session: SessionId::new(&t.session_id),
        }
    }

    fn ticket(&self) -> ClientTicket {
        ClientTicket {
            session_id: self.session.render(),
            expire_time_ms: self.expire_time_ms,
            cipher: crate::crypto::AesCipher::new(self.key, self.iv),
        }
    }
}

impl MemoryTickets {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many tickets it holds.
    pub fn len(&self) -> usize {
        self.count + self.far.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The stored ticket of device `device` (global index), if any.
    pub fn get(&self, device: u32) -> Option<ClientTicket> {
        let dense = device
            .checked_sub(self.base)
            .and_then(|i| self.dense.get(i as usize))
            .and_then(Option::as_ref);
        dense
            .map(Stored::ticket)
            .or_else(|| self.far.get(&device).cloned())
    }

    /// The dense entry of `device`, grown or rebased to it, unless that would grow the
    /// vector by more than the tickets it holds.
    fn dense_entry(&mut self, device: u32) -> Option<&mut Option<Stored>> {
        let limit = 2 * self.count + DENSE_SLACK;
        if self.dense.is_empty() {
            self.base = device;
        }
        if device < self.base {
            let shift = (self.base - device) as usize;
            if self.dense.len() + shift > limit {
                return None;
            }
            self.dense
                .splice(0..0, std::iter::repeat_with(|| None).take(shift));
            self.base = device;
        }
        let i = (device - self.base) as usize;
        if i >= self.dense.len() {
            if i >= limit {
                return None;
            }
            // Exact growth with a little room: a ramp saves in near index order.
            let want = (i + 1).max(self.dense.len() + self.dense.len() / 8);
            self.dense.reserve_exact(want - self.dense.len());
            self.dense.resize_with(i + 1, || None);
        }
        Some(&mut self.dense[i])
    }
}

impl TicketStore for MemoryTickets {
    fn load(&mut self, device: u32) {
        let ticket = self.get(device);
        self.ready.push(Loaded { device, ticket });
    }

    fn save(&mut self, device: u32, ticket: &ClientTicket, _wall_ms: i64) {
        // Expiry is checked by the device when it loads the ticket.
        self.counters.saved += 1;
        if !self.far.contains_key(&device) {
            if let Some(entry) = self.dense_entry(device) {
                let new = entry.replace(Stored::new(ticket)).is_none();
                self.count += usize::from(new);
                return;
            }
        }
        self.far.insert(device, ticket.clone());
    }

    fn delete(&mut self, device: u32) {
        if let Some(i) = device.checked_sub(self.base) {
            if let Some(entry) = self.dense.get_mut(i as usize) {
                self.count -= usize::from(entry.take().is_some());
            }
        }
        self.far.remove(&device);
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
        assert_eq!(store.get(1), Some(t));
        store.delete(1);
        assert!(store.is_empty());
        assert_eq!(store.take_counters().saved, 1);
    }

    #[test]
    fn memory_store_keeps_any_session_id_and_any_index() {
        let mut store = MemoryTickets::new();
        let ids = [
            "0123456789abcdef0123456789abcdef",
            "",
            "ABCDEF",
            "abc",
            "s-1",
            "ff",
        ];
        // Indices out of order, below the first one, and far outside the range.
        let devices = [500u32, 499, 7, 501, u32::MAX, 0];
        for (i, (&device, id)) in devices.iter().zip(ids).enumerate() {
            let t = ClientTicket {
                session_id: id.into(),
                expire_time_ms: i as i64,
                cipher: AesCipher::new([i as u8; 16], [!(i as u8); 16]),
            };
            store.save(device, &t, 0);
            assert_eq!(store.get(device), Some(t.clone()), "{id:?}");
            store.save(device, &t, 0);
        }
        assert_eq!(store.len(), devices.len());
        for device in devices {
            store.delete(device);
            assert_eq!(store.get(device), None);
        }
        assert!(store.is_empty());
        assert!(std::mem::size_of::<Option<Stored>>() <= 64);
    }
}
