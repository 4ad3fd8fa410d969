//! The route table: user -> connection, one per client type (`LocalRouterManager`), indexed
//! both ways so that no operation scans the table.
//!
//! | operation | cost |
//! |---|---|
//! | bind (route a user; the old connection's route moves) | O(1) |
//! | unbind | O(1) |
//! | close a connection (drop every route to it) | O(routes of that connection) |
//! | push / kick one user | O(client types of that user) |
//! | push to all | O(routes) |
//!
//! "O(1)" is in the number of connections and users: a user has at most one route per client
//! type (a handful) and a connection usually carries one bind, so the short vectors below are
//! scanned, never the table. Before this index, closing a connection scanned every route
//! under the lock, and a close-all of 100k sessions was quadratic.

use std::collections::HashMap;

use super::session::ClientType;
use super::shared::ConnId;

/// Both directions of the table; every method keeps them mirror images (see `check`).
#[derive(Debug, Default)]
pub(crate) struct Routes {
    /// Per user: (client type, connection), at most one entry per client type.
    by_user: HashMap<String, Vec<(ClientType, ConnId)>>,
    /// Per connection: the (user, client type) routes that point at it.
    by_conn: HashMap<ConnId, Vec<(String, ClientType)>>,
}

impl Routes {
    /// Routes `user`'s `ct` to `conn`; returns the connection it pointed to before, if any
    /// (maybe `conn` itself, on a repeated bind).
    pub(crate) fn insert(&mut self, user: String, ct: ClientType, conn: ConnId) -> Option<ConnId> {
        let entries = self.by_user.entry(user.clone()).or_default();
        let old = match entries.iter_mut().find(|(c, _)| *c == ct) {
            Some(entry) => Some(std::mem::replace(&mut entry.1, conn)),
            None => {
                entries.push((ct, conn));
                None
            }
        };
        if old == Some(conn) {
            return old;
        }
        if let Some(old) = old {
            self.forget_at(old, &user, ct);
        }
        self.by_conn.entry(conn).or_default().push((user, ct));
        old
    }

    /// Drops `user`'s `ct` route if it points at `conn` (a stale unbind changes nothing).
    /// Returns whether it did.
    pub(crate) fn remove(&mut self, user: &str, ct: ClientType, conn: ConnId) -> bool {
        let Some(entries) = self.by_user.get_mut(user) else {
            return false;
        };
        let Some(at) = entries.iter().position(|e| *e == (ct, conn)) else {
            return false;
        };
        entries.swap_remove(at);
        if entries.is_empty() {
            self.by_user.remove(user);
        }
        self.forget_at(conn, user, ct);
        true
    }

    /// Drops every route to `conn`; returns how many there were.
    pub(crate) fn remove_conn(&mut self, conn: ConnId) -> usize {
        let Some(routes) = self.by_conn.remove(&conn) else {
            return 0;
        };
        for (user, ct) in &routes {
            if let Some(entries) = self.by_user.get_mut(user) {
                entries.retain(|e| *e != (*ct, conn));
                if entries.is_empty() {
                    self.by_user.remove(user);
                }
            }
        }
        routes.len()
    }

    /// The (user, client type) routes that point at `conn`.
    pub(crate) fn of_conn(&self, conn: ConnId) -> Vec<(String, ClientType)> {
        self.by_conn.get(&conn).cloned().unwrap_or_default()
    }

    /// The connections `user` is routed to, one per client type.
    pub(crate) fn of_user(&self, user: &str) -> impl Iterator<Item = ConnId> + '_ {
        self.by_user
            .get(user)
            .into_iter()
            .flat_map(|entries| entries.iter().map(|(_, conn)| *conn))
    }

    /// The connection `user`'s route of client type `ct` points to.
    pub(crate) fn get(&self, user: &str, ct: ClientType) -> Option<ConnId> {
        self.by_user
            .get(user)?
            .iter()
            .find(|(c, _)| *c == ct)
            .map(|(_, conn)| *conn)
    }

    /// Every (user, connection) route.
    pub(crate) fn all(&self) -> impl Iterator<Item = (&str, ConnId)> + '_ {
        self.by_user
            .iter()
            .flat_map(|(user, entries)| entries.iter().map(move |(_, c)| (user.as_str(), *c)))
    }

    /// Removes (user, ct) from `conn`'s reverse list.
    fn forget_at(&mut self, conn: ConnId, user: &str, ct: ClientType) {
        if let Some(list) = self.by_conn.get_mut(&conn) {
            if let Some(at) = list.iter().position(|(u, c)| u == user && *c == ct) {
                list.swap_remove(at);
            }
            if list.is_empty() {
                self.by_conn.remove(&conn);
            }
        }
    }

    /// Panics unless both directions describe the same routes (tests only).
    #[cfg(test)]
    fn check(&self) {
        let mut forward: Vec<(String, ClientType, ConnId)> = Vec::new();
        for (user, entries) in &self.by_user {
            assert!(!entries.is_empty(), "empty entry for {user}");
            for (i, (ct, conn)) in entries.iter().enumerate() {
                assert!(
                    entries[..i].iter().all(|(c, _)| c != ct),
                    "duplicate client type"
                );
                forward.push((user.clone(), *ct, *conn));
            }
        }
        let mut backward: Vec<(String, ClientType, ConnId)> = Vec::new();
        for (conn, list) in &self.by_conn {
            assert!(!list.is_empty(), "empty reverse list for {conn:?}");
            backward.extend(list.iter().map(|(u, ct)| (u.clone(), *ct, *conn)));
        }
        forward.sort();
        backward.sort();
        assert_eq!(forward, backward, "the index disagrees with the table");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOBILE: ClientType = ClientType(1);
    const PC: ClientType = ClientType(2);

    fn conns(r: &Routes, user: &str) -> Vec<ConnId> {
        let mut v: Vec<_> = r.of_user(user).collect();
        v.sort();
        v
    }

    #[test]
    fn index_stays_consistent_through_bind_rebind_unbind_close() {
        let mut r = Routes::default();
        let (a, b, c) = (ConnId(1), ConnId(2), ConnId(3));
        // Bind, and a repeated bind of the same route.
        assert_eq!(r.insert("alice".into(), MOBILE, a), None);
        assert_eq!(r.insert("alice".into(), MOBILE, a), Some(a));
        assert_eq!(r.insert("alice".into(), PC, c), None);
        assert_eq!(r.insert("bob".into(), MOBILE, b), None);
        r.check();
        assert_eq!(conns(&r, "alice"), [a, c]);
        // Rebind on another connection: the old one loses the route (the caller kicks it).
        assert_eq!(r.insert("alice".into(), MOBILE, b), Some(a));
        r.check();
        assert_eq!(conns(&r, "alice"), [b, c]);
        assert_eq!(r.remove_conn(a), 0, "a holds no route any more");
        // A stale unbind (from the kicked connection) changes nothing; the owner's does.
        assert!(!r.remove("alice", MOBILE, a));
        assert!(r.remove("alice", MOBILE, b));
        assert!(!r.remove("nobody", MOBILE, b));
        r.check();
        assert_eq!(conns(&r, "alice"), [c]);
        // Close: every route to the connection goes, in one lookup.
        assert_eq!(r.insert("carol".into(), PC, b), None);
        assert_eq!(r.remove_conn(b), 2, "bob and carol");
        r.check();
        assert_eq!(conns(&r, "bob"), []);
        assert_eq!(r.all().count(), 1);
        assert_eq!(r.remove_conn(c), 1);
        r.check();
        assert!(r.by_user.is_empty() && r.by_conn.is_empty());
    }

    #[test]
    fn many_connections_close_without_leftovers() {
        let mut r = Routes::default();
        for i in 0..1_000u64 {
            r.insert(
                format!("u{}", i % 300),
                ClientType((i % 3) as i8),
                ConnId(i),
            );
        }
        r.check();
        for i in (0..1_000u64).rev() {
            r.remove_conn(ConnId(i));
        }
        r.check();
        assert_eq!(r.all().count(), 0);
    }
}
