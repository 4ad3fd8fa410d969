//! The control API (issue 13): a proxy fleet's devices added, removed, bound, kicked, closed
//! and inspected while it runs.
//!
//! - [`ControlPlane`]: the directory (device id -> global index -> shard) and the requests'
//!   routing: each goes to its device's shard as a [`Command::Control`] over crossbeam, and the
//!   shard's core answers (`shard::core::control`). Requests for one device are ordered: each
//!   holds the device's turn until its answer came, and turns are taken first come, first
//!   served.
//! - [`http`]: the same as HTTP+JSON routes (`--control ADDR`), with the bearer-token rule of
//!   [`crate::http::auth`].

pub mod http;
pub mod lines;
pub mod upstream;

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::device::{Identities, Identity, Template};
use crate::shard::core::{Answer, DeviceState, Request};
use crate::shard::Command;

/// How long a request waits for its shard (a removal waits for the device's drain, at most
/// the drain timeout; this is the ceiling above it).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// What a control request came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Done: the device and its state.
    Done(Box<DeviceView>),
    /// No device has that id.
    Unknown,
    /// A request that cannot be done now (a conflict), and why.
    Refused(String),
    /// A request that is wrong in itself, and why.
    Bad(String),
    /// The fleet is not running (stopped, or its shard gone).
    Unavailable(String),
}

impl Outcome {
    /// The HTTP status that says it (the Unix lines carry the same numbers).
    pub fn status(&self, created: bool) -> u16 {
        match self {
            Outcome::Done(_) if created => 201,
            Outcome::Done(_) => 200,
            Outcome::Unknown => 404,
            Outcome::Refused(_) => 409,
            Outcome::Bad(_) => 400,
            Outcome::Unavailable(_) => 503,
        }
    }

    /// The JSON body: the device, or `{"error": why}`.
    pub fn body(&self) -> serde_json::Value {
        let error = |why: &str| serde_json::json!({ "error": why });
        match self {
            Outcome::Done(view) => serde_json::to_value(view).unwrap_or_default(),
            Outcome::Unknown => error("no such device"),
            Outcome::Refused(why) | Outcome::Bad(why) | Outcome::Unavailable(why) => error(why),
        }
    }
}

/// A device as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceView {
    /// Its id.
    pub device_id: String,
    /// The user it binds (empty: none).
    pub user_id: String,
    /// Its bind tags.
    pub tags: String,
    /// The shard that runs it.
    pub shard: usize,
    /// Its state and counters.
    #[serde(flatten)]
    pub state: DeviceState,
}

/// The shard of one range of the fleet, and how to reach it.
#[derive(Clone, Debug)]
pub struct ShardLink {
    /// The global indices it owns from the start.
    pub devices: Range<u32>,
    /// Its command channel.
    pub commands: crate::shard::ShardCommands,
}

#[derive(Debug, Default)]
struct Directory {
    /// Listed and added devices by id (template devices are found by parsing the id).
    by_id: HashMap<String, u32>,
    /// Shards of added devices.
    added: HashMap<u32, usize>,
    next_index: u32,
    /// Each device's turn: requests for one device wait for the previous one's answer.
    turns: HashMap<u32, Arc<tokio::sync::Mutex<()>>>,
}

/// Routes control requests to the devices' shards. Shared by the HTTP routes (and any other
/// front end); cheap to clone.
#[derive(Clone, Debug)]
pub struct ControlPlane {
    shards: Arc<[ShardLink]>,
    identities: Identities,
    device_id: Template,
    user_id: Template,
    tags: String,
    dir: Arc<Mutex<Directory>>,
}

impl ControlPlane {
    /// The plane of a fleet whose shards are `shards`; devices added later get global indices
    /// from `next_index` on (after every device the fleet started with).
    pub fn new(
        shards: Vec<ShardLink>,
        device: &crate::device::DeviceConfig,
        next_index: u32,
    ) -> Self {
        let identities = device.identities.clone();
        let mut dir = Directory {
            next_index,
            ..Directory::default()
        };
        for s in &shards {
            for i in s.devices.clone() {
                if let Some(id) = identities.get(i) {
                    dir.by_id.insert(id.device_id.clone(), i);
                }
            }
        }
        ControlPlane {
            shards: shards.into(),
            identities,
            device_id: device.device_id.clone(),
            user_id: device.user_id.clone(),
            tags: device.tags.clone(),
            dir: Arc::new(Mutex::new(dir)),
        }
    }

    fn dir(&self) -> std::sync::MutexGuard<'_, Directory> {
        self.dir.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The global index and shard of device `id`.
    fn find(&self, id: &str) -> Option<(u32, usize)> {
        let dir = self.dir();
        if let Some(&index) = dir.by_id.get(id) {
            let shard = self.shard_of(&dir, index)?;
            return Some((index, shard));
        }
        // A template device: its id names its index (unless a listed entry took the index).
        let index = u32::try_from(self.device_id.index_of(id)?).ok()?;
        let shard = self
            .shards
            .iter()
            .position(|s| s.devices.contains(&index))?;
        self.identities
            .get(index)
            .is_none()
            .then_some((index, shard))
    }

    fn shard_of(&self, dir: &Directory, index: u32) -> Option<usize> {
        dir.added
            .get(&index)
            .copied()
            .or_else(|| self.shards.iter().position(|s| s.devices.contains(&index)))
    }

    fn turn(&self, index: u32) -> Arc<tokio::sync::Mutex<()>> {
        self.dir().turns.entry(index).or_default().clone()
    }

    /// Sends `request` to `shard` and waits for the answer.
    async fn ask(&self, shard: usize, request: Request) -> Result<Answer, Outcome> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let gone = || Outcome::Unavailable("the fleet is not running".into());
        self.shards[shard]
            .commands
            .send(Command::Control(request, tx))
            .map_err(|_| gone())?;
        match tokio::time::timeout(ANSWER_TIMEOUT, rx).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(gone()),
            Err(_) => Err(Outcome::Unavailable(
                "the shard did not answer in time".into(),
            )),
        }
    }

    fn id_of(&self, index: u32) -> String {
        match self.identities.get(index) {
            Some(id) => id.device_id.clone(),
            None => self.device_id.render(index.into()),
        }
    }

    fn view(&self, index: u32, shard: usize, state: DeviceState) -> DeviceView {
        let (device_id, user_id, tags) = match self.identities.get(index) {
            Some(id) => (id.device_id.clone(), id.user_id.clone(), id.tags.clone()),
            None => (
                self.device_id.render(index.into()),
                self.user_id.render(index.into()),
                self.tags.clone(),
            ),
        };
        DeviceView {
            device_id,
            user_id,
            tags,
            shard,
            state,
        }
    }

    fn outcome(&self, index: u32, shard: usize, answer: Answer) -> Outcome {
        match answer {
            Answer::Done(state) => Outcome::Done(Box::new(self.view(index, shard, state))),
            Answer::Unknown => Outcome::Unknown,
            Answer::Refused(why) => Outcome::Refused(why),
        }
    }

    /// Adds a device and starts it, on the shard with the fewest added devices.
    pub async fn add(&self, identity: Identity) -> Outcome {
        if identity.device_id.is_empty() {
            return Outcome::Bad("deviceId is empty".into());
        }
        if self.find(&identity.device_id).is_some() {
            return Outcome::Refused(format!("device {} exists", identity.device_id));
        }
        let (index, shard) = {
            let mut dir = self.dir();
            if dir.by_id.contains_key(&identity.device_id) {
                return Outcome::Refused(format!("device {} exists", identity.device_id));
            }
            let Some(index) = dir.next_index.checked_add(0).filter(|&i| i < u32::MAX) else {
                return Outcome::Refused("no device index left".into());
            };
            dir.next_index += 1;
            let mut load = vec![0usize; self.shards.len()];
            dir.added.values().for_each(|&s| load[s] += 1);
            let shard = (0..load.len()).min_by_key(|&s| load[s]).unwrap_or(0);
            dir.by_id.insert(identity.device_id.clone(), index);
            dir.added.insert(index, shard);
            (index, shard)
        };
        let id = identity.device_id.clone();
        self.identities.insert(index, identity);
        let turn = self.turn(index);
        let _turn = turn.lock().await;
        let answer = self.ask(shard, Request::Add(index)).await;
        if !matches!(answer, Ok(Answer::Done(_))) {
            self.forget(index, &id);
        }
        match answer {
            Ok(a) => self.outcome(index, shard, a),
            Err(o) => o,
        }
    }

    fn forget(&self, index: u32, id: &str) {
        let mut dir = self.dir();
        dir.by_id.remove(id);
        dir.added.remove(&index);
        dir.turns.remove(&index);
        drop(dir);
        self.identities.remove(index);
    }

    /// Runs `make(index)` for device `id` in its turn.
    async fn on_device(&self, id: &str, make: impl FnOnce(u32) -> Request) -> Outcome {
        let Some((index, _)) = self.find(id) else {
            return Outcome::Unknown;
        };
        let turn = self.turn(index);
        let _turn = turn.lock().await;
        // Looked up again in its turn: a removal before it may have taken the device.
        let Some((index, shard)) = self.find(id) else {
            return Outcome::Unknown;
        };
        let request = make(index);
        let removing = matches!(request, Request::Remove(_));
        match self.ask(shard, request).await {
            Ok(Answer::Done(state)) => {
                let view = self.view(index, shard, state);
                if removing {
                    self.forget(index, id);
                }
                Outcome::Done(Box::new(view))
            }
            Ok(a) => self.outcome(index, shard, a),
            Err(o) => o,
        }
    }

    /// Closes the device gracefully (earned acks sent) and frees its slot.
    pub async fn remove(&self, id: &str) -> Outcome {
        self.on_device(id, Request::Remove).await
    }

    /// The device's state and counters.
    pub async fn state(&self, id: &str) -> Outcome {
        self.on_device(id, Request::State).await
    }

    /// Binds `user_id` with `tags` (now if online, else at its next session).
    pub async fn bind(&self, id: &str, user_id: String, tags: String) -> Outcome {
        if user_id.is_empty() {
            return Outcome::Bad("userId is empty".into());
        }
        self.on_device(id, |device| Request::Bind {
            device,
            user_id,
            tags,
        })
        .await
    }

    /// Unbinds its user; it binds none from now on.
    pub async fn unbind(&self, id: &str) -> Outcome {
        self.on_device(id, Request::Unbind).await
    }

    /// Drops its connection; it reconnects.
    pub async fn kick(&self, id: &str) -> Outcome {
        self.on_device(id, Request::Kick).await
    }

    /// Closes its session gracefully; it stays down until opened.
    pub async fn close(&self, id: &str) -> Outcome {
        self.on_device(id, Request::Close).await
    }

    /// Starts it again after a close.
    pub async fn open(&self, id: &str) -> Outcome {
        self.on_device(id, Request::Open).await
    }
}
