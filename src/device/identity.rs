//! Devices with real identities (`--devices-file`, devices added through the control API):
//! a table beside [`Template`], looked up by the device's global index.
//!
//! A template fleet leaves the table empty, so its idle sessions carry no strings and the
//! lookups at connect, bind and delivery find nothing and fall back to the template. A device
//! in the table is named by its entry everywhere an id is rendered: the handshake, the fast
//! connect, the bind, the sink record and the Redis ticket key.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use super::{DeviceConfig, Template};

/// Who one device is. Empty client fields fall back to the fleet's (`--os-name`, ...).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Identity {
    /// The device id (handshake, fast connect, ticket key, sink records).
    pub device_id: String,
    /// The user it binds; empty: the device does not bind.
    #[serde(default)]
    pub user_id: String,
    /// Bind tags.
    #[serde(default)]
    pub tags: String,
    /// Handshake osName (empty: the fleet's).
    #[serde(default)]
    pub os_name: String,
    /// Handshake osVersion (empty: the fleet's).
    #[serde(default)]
    pub os_version: String,
    /// Handshake clientVersion (empty: the fleet's).
    #[serde(default)]
    pub client_version: String,
}

/// The fleet's identity table, shared by the control plane (which writes it) and the shards
/// and ticket stores (which read it when they render an id). Cloning shares the table.
///
/// A template fleet (the load-test default) never takes the lock: the entry count is read
/// first, and an empty table answers from that atomic alone, so shards rendering ids at
/// connect, bind and delivery share no written cache line. A listed fleet reads under the
/// lock (uncontended: only the control plane writes, on add and remove).
#[derive(Clone, Default)]
pub struct Identities(Arc<Table>);

#[derive(Default)]
struct Table {
    /// Entries in `map`, kept in step under its write lock.
    count: AtomicUsize,
    map: RwLock<HashMap<u32, Arc<Identity>>>,
}

impl std::fmt::Debug for Identities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identities({} listed)", self.len())
    }
}

impl Identities {
    /// The entry of device `index`, if it has one.
    pub fn get(&self, index: u32) -> Option<Arc<Identity>> {
        if self.0.count.load(Ordering::Acquire) == 0 {
            return None;
        }
        let table = self.0.map.read().unwrap_or_else(PoisonError::into_inner);
        table.get(&index).cloned()
    }

    /// Gives device `index` this identity (replacing any).
    pub fn insert(&self, index: u32, identity: Identity) {
        let mut table = self.0.map.write().unwrap_or_else(PoisonError::into_inner);
        table.insert(index, Arc::new(identity));
        self.0.count.store(table.len(), Ordering::Release);
    }

    /// Forgets device `index`.
    pub fn remove(&self, index: u32) -> Option<Arc<Identity>> {
        let mut table = self.0.map.write().unwrap_or_else(PoisonError::into_inner);
        let gone = table.remove(&index);
        self.0.count.store(table.len(), Ordering::Release);
        gone
    }

    /// How many devices have an entry.
    pub fn len(&self) -> usize {
        self.0.count.load(Ordering::Acquire)
    }

    /// Whether no device has an entry (a template fleet).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends device `index`'s id to `out`: its entry's, or the template's.
    pub fn device_id_into(&self, template: &Template, index: u32, out: &mut String) {
        match self.get(index) {
            Some(id) => out.push_str(&id.device_id),
            None => template.render_into(index.into(), out),
        }
    }
}

/// What a device binds: its user and tags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// The user id.
    pub user_id: String,
    /// The tags.
    pub tags: String,
}

/// What a device says in its handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientFields {
    /// osName.
    pub os_name: String,
    /// osVersion.
    pub os_version: String,
    /// clientVersion.
    pub client_version: String,
}

impl DeviceConfig {
    /// Device `index`'s id.
    pub fn device_id_of(&self, index: u32) -> String {
        let mut s = String::new();
        self.identities
            .device_id_into(&self.device_id, index, &mut s);
        s
    }

    /// Device `index`'s user id (empty for a listed device without one).
    pub fn user_id_of(&self, index: u32) -> String {
        match self.identities.get(index) {
            Some(id) => id.user_id.clone(),
            None => self.user_id.render(index.into()),
        }
    }

    /// Whether device `index` binds a user after connecting.
    pub fn binds(&self, index: u32) -> bool {
        self.bind
            && self
                .identities
                .get(index)
                .map_or(true, |id| !id.user_id.is_empty())
    }

    /// What device `index` binds, if it binds at all.
    pub fn binding_of(&self, index: u32) -> Option<Binding> {
        if !self.bind {
            return None;
        }
        match self.identities.get(index) {
            Some(id) if id.user_id.is_empty() => None,
            Some(id) => Some(Binding {
                user_id: id.user_id.clone(),
                tags: id.tags.clone(),
            }),
            None => Some(Binding {
                user_id: self.user_id.render(index.into()),
                tags: self.tags.clone(),
            }),
        }
    }

    /// Device `index`'s handshake fields.
    pub fn client_of(&self, index: u32) -> ClientFields {
        let id = self.identities.get(index);
        let pick = |own: Option<&String>, fleet: &String| match own {
            Some(s) if !s.is_empty() => s.clone(),
            _ => fleet.clone(),
        };
        ClientFields {
            os_name: pick(id.as_ref().map(|i| &i.os_name), &self.os_name),
            os_version: pick(id.as_ref().map(|i| &i.os_version), &self.os_version),
            client_version: pick(id.as_ref().map(|i| &i.client_version), &self.client_version),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listed_device_is_named_by_its_entry_and_the_rest_by_the_template() {
        let cfg = DeviceConfig::default();
        cfg.identities.insert(
            3,
            Identity {
                device_id: "phone-a".into(),
                user_id: "alice".into(),
                tags: "vip".into(),
                os_name: "ios".into(),
                ..Identity::default()
            },
        );
        cfg.identities.insert(
            4,
            Identity {
                device_id: "kiosk".into(),
                ..Identity::default()
            },
        );
        assert_eq!(cfg.device_id_of(3), "phone-a");
        assert_eq!(cfg.device_id_of(5), "device-5");
        assert_eq!(cfg.user_id_of(3), "alice");
        let b = cfg.binding_of(3).unwrap();
        assert_eq!((b.user_id.as_str(), b.tags.as_str()), ("alice", "vip"));
        assert_eq!(cfg.binding_of(4), None, "no user: no bind");
        assert_eq!(cfg.binding_of(5).unwrap().user_id, "user-5");
        let c = cfg.client_of(3);
        assert_eq!(
            (c.os_name.as_str(), c.os_version.as_str()),
            ("ios", "1.0.1")
        );
        let mut key = String::from("mp:fcd:");
        cfg.identities.device_id_into(&cfg.device_id, 3, &mut key);
        assert_eq!(key, "mp:fcd:phone-a");
    }
}
