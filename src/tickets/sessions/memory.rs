//! [`MemoryStore`]: the reference server's default reusable-session store, in process.
//!
//! It keeps the `mp:rs:` text form ([`ReusableSession::encode`]), not the decoded value, so
//! the in-memory store exercises the same format as Redis does.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{SessionStore, StoreFuture};
use crate::tickets::format::ReusableSession;

/// The default store: a mutex-guarded map of `mp:rs:` values with deadlines.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<MemoryInner>,
}

#[derive(Debug, Default)]
struct MemoryInner {
    map: HashMap<String, (String, Instant)>,
    puts_since_sweep: usize,
}

/// Expired entries are swept after this many puts (and whenever a `get` meets one).
const SWEEP_EVERY: usize = 4096;

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Live sessions (expired ones not yet swept are not counted).
    pub fn len(&self) -> usize {
        let now = Instant::now();
        self.lock()
            .map
            .values()
            .filter(|(_, deadline)| *deadline > now)
            .count()
    }

    /// Whether no live session is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        // A panic while holding this lock cannot leave the map inconsistent (single
        // inserts/removes), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get_now(&self, session_id: &str) -> Option<ReusableSession> {
        let now = Instant::now();
        let mut inner = self.lock();
        let (value, deadline) = inner.map.get(session_id)?;
        if *deadline <= now {
            inner.map.remove(session_id);
            return None;
        }
        ReusableSession::decode(value).ok()
    }

    fn put_now(&self, session_id: &str, session: &ReusableSession, ttl: Duration) {
        let now = Instant::now();
        let value = session.encode();
        let mut inner = self.lock();
        inner.puts_since_sweep += 1;
        if inner.puts_since_sweep >= SWEEP_EVERY {
            inner.puts_since_sweep = 0;
            inner.map.retain(|_, (_, deadline)| *deadline > now);
        }
        inner.map.insert(session_id.to_owned(), (value, now + ttl));
    }

    fn expire_all_now(&self) -> u64 {
        let mut inner = self.lock();
        let n = inner.map.len() as u64;
        inner.map.clear();
        n
    }
}

impl SessionStore for MemoryStore {
    fn get<'a>(&'a self, session_id: &'a str) -> StoreFuture<'a, Option<ReusableSession>> {
        let found = self.get_now(session_id);
        Box::pin(async move { Ok(found) })
    }

    fn put<'a>(
        &'a self,
        session_id: &'a str,
        session: &'a ReusableSession,
        ttl: Duration,
    ) -> StoreFuture<'a, ()> {
        self.put_now(session_id, session, ttl);
        Box::pin(async { Ok(()) })
    }

    fn expire_all(&self) -> StoreFuture<'_, u64> {
        let n = self.expire_all_now();
        Box::pin(async move { Ok(n) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::AesCipher;

    fn session(device: &str) -> ReusableSession {
        ReusableSession {
            os_name: "android".into(),
            os_version: "14".into(),
            client_version: "1.0".into(),
            device_id: device.into(),
            cipher: AesCipher::new([1; 16], [2; 16]),
        }
    }

    fn block<T>(f: StoreFuture<'_, T>) -> T {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(f).unwrap()
    }

    #[test]
    fn put_get_expire_all() {
        let store = MemoryStore::new();
        let s = session("dev-1");
        block(store.put("id1", &s, Duration::from_secs(60)));
        assert_eq!(block(store.get("id1")), Some(s));
        assert_eq!(block(store.get("nope")), None);
        assert_eq!(store.len(), 1);
        assert_eq!(block(store.expire_all()), 1);
        assert_eq!(block(store.get("id1")), None);
    }

    #[test]
    fn zero_ttl_is_expired() {
        let store = MemoryStore::new();
        block(store.put("id", &session("d"), Duration::ZERO));
        assert_eq!(block(store.get("id")), None);
        assert!(store.is_empty());
    }
}
