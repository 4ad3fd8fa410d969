//! The control API's requests for one device of the shard (issue 13): devices added and
//! removed while the shard runs (slots grow, and retired slots are reused), binds and unbinds,
//! kicks, closes, and a device's state and counters.
//!
//! A removed device closes gracefully: its connection stops reading, the sink takes what it
//! received and the earned acks go out, then it closes and its slot is free for the next
//! added device. A slot is freed only at the end of a turn, before the turn's output is
//! sealed, so an add (always a later input) never meets the old device's output.
//! The drain waits at most the shard's drain timeout, as a graceful stop does.
//!
//! Per-device counters are kept only for devices the control API knows about (listed, added
//! or addressed once), in a side table: a template fleet's idle sessions stay as small as
//! they were.

use std::collections::{HashMap, HashSet, VecDeque};

use crate::device::{Device, Event, Now, Phase, Tick};
use crate::stats::Counters;

use super::admit::Admit;
use super::by_server::NO_SERVER;
use super::io::{ConnId, Io};
use super::stop::Stop;
use super::{ShardCore, Slot};

/// What the control API asks of one device, named by its global index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Start a new device (its identity is already in the table) in a free or new slot.
    Add(u32),
    /// Close the device gracefully and free its slot.
    Remove(u32),
    /// Bind this user with these tags (now if online, else at the next session).
    Bind {
        /// The device.
        device: u32,
        /// The user.
        user_id: String,
        /// The tags.
        tags: String,
    },
    /// Unbind its user and bind none from now on.
    Unbind(u32),
    /// Drop its connection; it reconnects as after a loss.
    Kick(u32),
    /// Close its session gracefully; it stays down until opened.
    Close(u32),
    /// Start it again after a close.
    Open(u32),
    /// Its state and counters.
    State(u32),
}

impl Request {
    /// The device it is for.
    pub fn device(&self) -> u32 {
        match self {
            Request::Add(d)
            | Request::Remove(d)
            | Request::Unbind(d)
            | Request::Kick(d)
            | Request::Close(d)
            | Request::Open(d)
            | Request::State(d)
            | Request::Bind { device: d, .. } => *d,
        }
    }
}

/// The answer to a [`Request`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Done; the device's state after it.
    Done(DeviceState),
    /// No such device in this shard.
    Unknown,
    /// Not possible now, and why.
    Refused(String),
}

/// Where one device is, and what it has done since the control API began to count it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceState {
    /// The device's global index.
    pub index: u32,
    /// `idle`, `expect-ticket`, `expect-connect`, `expect-fast-connect-ok`,
    /// `expect-handshake-ok`, `online`, `backoff`, `stopped` or `removed`.
    pub phase: &'static str,
    /// Whether its TCP connection is up.
    pub connected: bool,
    /// Whether its bind was acknowledged on this connection.
    pub bound: bool,
    /// The heartbeat the server chose, ms (0 before the first session).
    pub heartbeat_ms: u32,
    /// The server of its latest connect.
    pub server: Option<String>,
    /// Its counters.
    pub counters: DeviceCounters,
}

/// One device's counters (named as the report's counters are).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DeviceCounters {
    /// TCP connects that succeeded.
    pub connected: u64,
    /// Handshakes that completed.
    pub handshakes: u64,
    /// Fast connects that completed.
    pub fast_connects: u64,
    /// Binds acknowledged.
    pub bound: u64,
    /// Pushes received.
    pub pushes_received: u64,
    /// Acks sent.
    pub acks_sent: u64,
    /// Kicks received.
    pub kicks: u64,
    /// Reconnects scheduled after a lost connection.
    pub reconnects: u64,
    /// Heartbeats sent.
    pub heartbeats_sent: u64,
    /// Heartbeats received.
    pub heartbeats_received: u64,
    /// Connections the server closed.
    pub peer_closed: u64,
    /// Errors: ERROR replies, timeouts, frames that did not decode.
    pub errors: u64,
}

impl DeviceCounters {
    fn of(c: &Counters) -> Self {
        DeviceCounters {
            connected: c.connected,
            handshakes: c.handshakes,
            fast_connects: c.fast_connects,
            bound: c.bound,
            pushes_received: c.pushes_received,
            acks_sent: c.acks_sent,
            kicks: c.kicks,
            reconnects: c.reconnects,
            heartbeats_sent: c.heartbeats_sent,
            heartbeats_received: c.heartbeats_received,
            peer_closed: c.peer_closed,
            errors: c.decode_errors
                + c.request_timeouts
                + c.read_timeouts
                + c.errors.values().sum::<u64>(),
        }
    }

    fn add_change(&mut self, now: &Self, was: &Self) {
        let d = |a: u64, b: u64| a.saturating_sub(b);
        self.connected += d(now.connected, was.connected);
        self.handshakes += d(now.handshakes, was.handshakes);
        self.fast_connects += d(now.fast_connects, was.fast_connects);
        self.bound += d(now.bound, was.bound);
        self.pushes_received += d(now.pushes_received, was.pushes_received);
        self.acks_sent += d(now.acks_sent, was.acks_sent);
        self.kicks += d(now.kicks, was.kicks);
        self.reconnects += d(now.reconnects, was.reconnects);
        self.heartbeats_sent += d(now.heartbeats_sent, was.heartbeats_sent);
        self.heartbeats_received += d(now.heartbeats_received, was.heartbeats_received);
        self.peer_closed += d(now.peer_closed, was.peer_closed);
        self.errors += d(now.errors, was.errors);
    }
}

/// What the control API keeps of one slot.
#[derive(Debug, Default)]
struct Extra {
    counters: DeviceCounters,
    /// Being removed: the answer's id and the drain's deadline.
    retiring: Option<(u64, Tick)>,
}

/// The core's control-API state; empty (no allocation) until the API is used.
#[derive(Debug, Default)]
pub(super) struct ControlState {
    extras: HashMap<u32, Extra>,
    /// The shard's device-driven counters at the end of the last drive (while any extra is
    /// counted).
    seen: DeviceCounters,
    answers: VecDeque<(u64, Answer)>,
    /// Slots of added devices, by global index.
    added: HashMap<u32, u32>,
    /// Slots free for the next added device.
    free: HashSet<u32>,
    /// Slots being removed.
    retiring: Vec<u32>,
    /// Records handed to the sink and not yet taken, per connection: a removed device
    /// closes only once the sink took them and their acks went out. Bounded by the sink's
    /// capacity; empty without a sink.
    pub(super) in_sink: HashMap<ConnId, u32>,
}

impl ControlState {
    /// Whether `slot` was retired and not reused (the ramp leaves it alone).
    pub(super) fn is_free(&self, slot: u32) -> bool {
        !self.free.is_empty() && self.free.contains(&slot)
    }
}

fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Idle => "idle",
        Phase::ExpectTicket => "expect-ticket",
        Phase::ExpectConnect => "expect-connect",
        Phase::ExpectFastConnectOk => "expect-fast-connect-ok",
        Phase::ExpectHandshakeOk => "expect-handshake-ok",
        Phase::Online => "online",
        Phase::Backoff => "backoff",
        Phase::Stopped => "stopped",
    }
}

impl ShardCore {
    /// A control-API request; its answer comes out of [`poll_control`](Self::poll_control)
    /// with the same `id` (at once, or for a removal once the device has closed).
    pub fn handle_control(&mut self, now: Now, id: u64, request: Request) {
        self.now = now;
        let answer = self.control(id, request);
        if let Some(answer) = answer {
            self.control.answers.push_back((id, answer));
        }
    }

    /// The next control answer.
    #[must_use]
    pub fn poll_control(&mut self) -> Option<(u64, Answer)> {
        self.control.answers.pop_front()
    }

    /// Whether an answer waits for [`poll_control`](Self::poll_control).
    pub fn has_control_answer(&self) -> bool {
        !self.control.answers.is_empty()
    }

    /// Slots in use by devices (the shard's own range and added ones, minus free ones).
    pub fn devices_running(&self) -> u32 {
        (self.slots.len() - self.control.free.len()) as u32
    }

    /// The slot of global device `device`, if it is in this shard and not removed.
    pub(super) fn slot_of(&self, device: u32) -> Option<u32> {
        let own = device
            .checked_sub(self.cfg.first_device)
            .filter(|&s| s < self.cfg.devices);
        let slot = own.or_else(|| self.control.added.get(&device).copied())?;
        let s = self.slots.get(slot as usize)?;
        (s.device.index() == device && !self.control.is_free(slot)).then_some(slot)
    }

    fn control(&mut self, id: u64, request: Request) -> Option<Answer> {
        if let Request::Add(device) = request {
            return Some(self.add_device(device));
        }
        let Some(slot) = self.slot_of(request.device()) else {
            return Some(Answer::Unknown);
        };
        self.count(slot);
        if self.control.extras[&slot].retiring.is_some() {
            return Some(Answer::Refused("the device is being removed".into()));
        }
        let now = self.now;
        match request {
            Request::Add(_) | Request::State(_) => {}
            Request::Remove(_) => {
                self.begin_retire(id, slot);
                return None;
            }
            Request::Bind {
                device,
                user_id,
                tags,
            } => {
                if user_id.is_empty() {
                    return Some(Answer::Refused("the user id is empty".into()));
                }
                let ids = &self.cfg.device.identities;
                let mut identity = ids.get(device).map(|i| (*i).clone()).unwrap_or_default();
                if identity.device_id.is_empty() {
                    identity.device_id = self.cfg.device.device_id_of(device);
                }
                (identity.user_id, identity.tags) = (user_id, tags);
                ids.insert(device, identity);
                let s = &mut self.slots[slot as usize];
                s.device.rebind(now, &mut self.shared);
                self.drive(slot);
            }
            Request::Unbind(device) => {
                let s = &mut self.slots[slot as usize];
                s.device.unbind(now, &mut self.shared);
                // The Unbind is rendered (with the user it names) before the user goes.
                self.drive(slot);
                let ids = &self.cfg.device.identities;
                let mut identity = ids.get(device).map(|i| (*i).clone()).unwrap_or_default();
                if identity.device_id.is_empty() {
                    identity.device_id = self.cfg.device.device_id_of(device);
                }
                (identity.user_id, identity.tags) = (String::new(), String::new());
                ids.insert(device, identity);
            }
            Request::Kick(_) => {
                if self.slots[slot as usize].conn.is_none() {
                    return Some(Answer::Refused("the device is not connected".into()));
                }
                self.drop_session(slot);
            }
            Request::Close(_) => self.event(slot, Event::Stop),
            Request::Open(_) => {
                if self.stop != Stop::Running {
                    return Some(Answer::Refused("the fleet is stopping".into()));
                }
                let phase = self.slots[slot as usize].device.phase();
                if !matches!(phase, Phase::Idle | Phase::Stopped) {
                    return Some(Answer::Refused(format!(
                        "the device is running ({})",
                        phase_name(phase)
                    )));
                }
                self.slots[slot as usize].connected_before = false;
                self.event(slot, Event::Start);
            }
        }
        Some(Answer::Done(self.state_of(slot, false)))
    }

    fn add_device(&mut self, device: u32) -> Answer {
        if self.stop != Stop::Running {
            return Answer::Refused("the fleet is stopping".into());
        }
        if self.slot_of(device).is_some() {
            return Answer::Refused("the device is running already".into());
        }
        let free = self.control.free.iter().next().copied();
        let slot = match free {
            Some(slot) => {
                self.control.free.remove(&slot);
                let old = &mut self.slots[slot as usize];
                // A new generation: a completion of the old device's connect is stale.
                let gen = old.gen.wrapping_add(1);
                *old = Slot::new(device);
                old.gen = gen;
                slot
            }
            None => {
                self.slots.push(Slot::new(device));
                (self.slots.len() - 1) as u32
            }
        };
        self.control.added.insert(device, slot);
        self.control.extras.remove(&slot);
        self.count(slot);
        self.event(slot, Event::Start);
        Answer::Done(self.state_of(slot, false))
    }

    fn begin_retire(&mut self, id: u64, slot: u32) {
        let until = self.now.tick().after(self.cfg.drain_timeout_ms);
        if let Some(x) = self.control.extras.get_mut(&slot) {
            x.retiring = Some((id, until));
        }
        self.control.retiring.push(slot);
        if let Some(c) = self.slots[slot as usize].conn.as_mut() {
            if !c.paused {
                c.paused = true;
                self.io.push_back(Io::PauseRead(c.id));
            }
        }
    }

    /// At the end of a turn: removed devices whose pushes the sink took (or whose drain timed
    /// out) close, and their slots are freed.
    pub(super) fn advance_retiring(&mut self, now: Tick) {
        if self.control.retiring.is_empty() {
            return;
        }
        let mut retiring = std::mem::take(&mut self.control.retiring);
        retiring.retain(|&slot| {
            let Some((id, until)) = self.control.extras.get(&slot).and_then(|x| x.retiring) else {
                return false;
            };
            let drained = self.slots[slot as usize].conn.as_ref().map_or(true, |c| {
                c.held == 0 && !self.control.in_sink.contains_key(&c.id)
            });
            if !drained && now < until {
                return true;
            }
            self.event(slot, Event::Stop);
            let mut state = self.state_of(slot, true);
            state.phase = "removed";
            let s = &mut self.slots[slot as usize];
            if matches!(s.admit, Admit::Waiting { .. }) {
                s.admit = Admit::Idle;
            }
            let device = s.device.index();
            self.control.added.remove(&device);
            self.control.extras.remove(&slot);
            self.control.free.insert(slot);
            self.control.answers.push_back((id, Answer::Done(state)));
            false
        });
        self.control.retiring = retiring;
    }

    /// A new core counts its listed devices (those with an identity) from the start.
    pub(super) fn counting_listed(mut self) -> Self {
        let ids = self.cfg.device.identities.clone();
        if !ids.is_empty() {
            for slot in 0..self.cfg.devices {
                if ids.get(self.cfg.first_device + slot).is_some() {
                    self.count(slot);
                }
            }
        }
        self
    }

    /// Begins counting `slot`'s device, if not yet counted.
    fn count(&mut self, slot: u32) {
        if self.control.extras.is_empty() {
            self.control.seen = DeviceCounters::of(&self.shared.stats.counters);
        }
        self.control.extras.entry(slot).or_default();
    }

    /// Gives the device-driven counters' change of the last drive to `slot`, if it is counted.
    pub(super) fn count_drive(&mut self, slot: u32) {
        if self.control.extras.is_empty() {
            return;
        }
        let now = DeviceCounters::of(&self.shared.stats.counters);
        let was = std::mem::replace(&mut self.control.seen, now);
        if now != was {
            if let Some(x) = self.control.extras.get_mut(&slot) {
                x.counters.add_change(&now, &was);
            }
        }
    }

    fn state_of(&self, slot: u32, removed: bool) -> DeviceState {
        let s = &self.slots[slot as usize];
        let d: &Device = &s.device;
        DeviceState {
            index: d.index(),
            phase: phase_name(d.phase()),
            connected: !removed && s.conn.is_some(),
            bound: d.is_bound(),
            heartbeat_ms: d.heartbeat_ms(),
            server: (s.server != NO_SERVER)
                .then(|| self.server_table.get(usize::from(s.server)))
                .flatten()
                .map(ToString::to_string),
            counters: self
                .control
                .extras
                .get(&slot)
                .map(|x| x.counters)
                .unwrap_or_default(),
        }
    }
}

impl Slot {
    pub(super) fn new(device: u32) -> Slot {
        Slot {
            device: Device::new(device),
            gen: 0,
            conn: None,
            armed: Tick::NEVER,
            sealing: None,
            admit: Admit::Idle,
            connected_before: false,
            server: NO_SERVER,
        }
    }
}
