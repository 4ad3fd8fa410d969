//! The control plane: starts shards, splits the fleet and its ramp among them, sums their
//! statistics, and stops them. It reaches shards only by message (crossbeam channels) and
//! holds no per-session state.
//!
//! - [`Fleet`]: the library API (tests drive it directly).
//! - [`cli`]: `mpush-fleet run`, its flags and TOML config, status lines, exit codes.
//! - [`report`]: the `--report` JSON and the status line.
//! - [`merge`]: `report merge`, reports of fleets side by side as one run's.
//! - [`supervisor`], [`worker`]: `run --processes`, one fleet in several processes.
//! - [`push_load`]: `run --push-rate`, end-to-end pushes to the fleet's own users.
//! - [`summary`]: the end-of-run table shown on a terminal.

pub mod api;
pub mod args;
pub mod cli;
pub mod devices_file;
pub mod embedded;
pub mod fail_on;
pub mod merge;
pub mod phases;
pub mod push_load;
pub mod report;
mod setup;
pub mod summary;
pub mod supervisor;
pub mod upstream;
pub mod worker;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use crossbeam_channel::Receiver;

use crate::device::DeviceConfig;
use crate::shard::{self, Command, Report, ShardConfig, ShardExit};
use crate::stats::{Counters, ShardStats};
use crate::tickets::{MemoryTickets, TicketStore};

/// What a fleet runs.
#[derive(Clone, Debug)]
pub struct FleetConfig {
    /// How many devices.
    pub devices: u32,
    /// Index of the first device (several processes split one fleet into disjoint ranges).
    pub first_device: u32,
    /// New sessions per second across the fleet; 0 starts them as fast as the shards can.
    pub rate: f64,
    /// Shard threads.
    pub shards: usize,
    /// Pin each shard to a core.
    pub pin: bool,
    /// Server endpoints, round-robin.
    pub servers: Vec<SocketAddr>,
    /// Local source addresses, round-robin.
    pub sources: Vec<IpAddr>,
    /// What every device shares.
    pub device: DeviceConfig,
    /// How often shards report.
    pub report_every: Duration,
    /// RNG seed, for replayable runs.
    pub seed: Option<u64>,
    /// io_uring submission-queue entries per shard.
    pub ring_entries: u32,
    /// Where shards hand received pushes (`--sink`); `None` acks them without a sink.
    pub sink: Option<crate::sink::SinkSender>,
    /// How long a graceful stop waits for the sink to take what was received.
    pub drain_timeout: Duration,
    /// The fleet's admission window (`max_pending` across all shards) and retry budget.
    pub admission: crate::shard::core::Admission,
    /// Which driver runs the shards' cores.
    pub driver: crate::shard::DriverKind,
    /// The fleet's phases (`--stages`, `--rate auto`); each shard runs them on its share.
    pub plan: crate::stages::Plan,
    /// Device-originated load across the fleet (`--device-push-rate`, `--http-proxy-rate`);
    /// each shard generates its share of the rates.
    pub upstream: crate::shard::core::UpstreamLoad,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            devices: 1,
            first_device: 0,
            rate: 0.0,
            shards: std::thread::available_parallelism().map_or(1, |n| n.get()),
            pin: true,
            servers: Vec::new(),
            sources: Vec::new(),
            device: DeviceConfig::default(),
            report_every: Duration::from_millis(200),
            seed: None,
            ring_entries: 4096,
            sink: None,
            drain_timeout: Duration::from_secs(10),
            admission: Default::default(),
            driver: Default::default(),
            plan: Default::default(),
            upstream: Default::default(),
        }
    }
}

/// A shard's part of the fleet's admission window: its share of `max_pending`, at least 1
/// (0 stays unlimited); the budget's ratio applies per shard as it is, its floor by share.
fn shard_admission(
    fleet: &crate::shard::core::Admission,
    share: f64,
) -> crate::shard::core::Admission {
    let max_pending = match fleet.max_pending {
        0 => 0,
        n => ((f64::from(n) * share).round() as u32).max(1),
    };
    crate::shard::core::Admission {
        max_pending,
        retry_ratio: fleet.retry_ratio,
        retry_floor_per_sec: fleet.retry_floor_per_sec * share,
    }
}

/// In-memory ticket stores, one per shard: what [`Fleet::start`] takes and [`Fleet::stop`]
/// gives back, so that a second run in the same process comes back by fast connect.
pub fn memory_stores(shards: usize) -> Vec<Box<dyn TicketStore>> {
    (0..shards)
        .map(|_| Box::new(MemoryTickets::new()) as Box<dyn TicketStore>)
        .collect()
}

struct ShardCtl {
    commands: shard::ShardCommands,
    devices: std::ops::Range<u32>,
    thread: JoinHandle<ShardExit>,
}

/// A running fleet.
pub struct Fleet {
    cfg: FleetConfig,
    shards: Vec<ShardCtl>,
    reports: Receiver<Report>,
    /// Each shard's latest counters, stages and servers (their latencies stay empty).
    latest: Vec<ShardStats>,
    /// The whole fleet's histograms, from the samples every report brings.
    latencies: crate::stats::Latencies,
    started: Instant,
    /// Probe receipts from the shards (`run --push-rate`), until taken.
    receipts: Vec<(Instant, Vec<crate::shard::core::PushReceipt>)>,
    receipts_dropped: u64,
}

/// What a stopped fleet leaves.
pub struct FleetResult {
    /// Final statistics of the whole fleet.
    pub stats: ShardStats,
    /// The ticket stores, one per shard, for the next run.
    pub stores: Vec<Box<dyn TicketStore>>,
    /// How long the fleet ran.
    pub elapsed: Duration,
}

impl Fleet {
    /// Starts the shards; device `first_device + i` goes to shard `i * shards / devices`
    /// (contiguous ranges), and each shard ramps its share of the rate.
    ///
    /// # Errors
    ///
    /// Bad configuration, a store list of the wrong length, or a shard thread that cannot be
    /// spawned.
    pub fn start(cfg: FleetConfig, stores: Vec<Box<dyn TicketStore>>) -> anyhow::Result<Fleet> {
        if cfg.servers.is_empty() {
            bail!("no server endpoint");
        }
        if cfg.shards == 0 || stores.len() != cfg.shards {
            bail!("{} ticket stores for {} shards", stores.len(), cfg.shards);
        }
        let cores = if cfg.pin {
            core_affinity::get_core_ids().unwrap_or_default()
        } else {
            Vec::new()
        };
        let device = Arc::new(cfg.device.clone());
        let (report_tx, reports) = crossbeam_channel::unbounded();
        let mut shards = Vec::with_capacity(cfg.shards);
        let n = cfg.shards as u64;
        for (id, store) in stores.into_iter().enumerate() {
            let lo = cfg.first_device + (u64::from(cfg.devices) * id as u64 / n) as u32;
            let hi = cfg.first_device + (u64::from(cfg.devices) * (id as u64 + 1) / n) as u32;
            let share = f64::from(hi - lo) / f64::from(cfg.devices.max(1));
            let shard_cfg = ShardConfig {
                id,
                core: (!cores.is_empty()).then(|| cores[id % cores.len()]),
                devices: lo..hi,
                rate_per_sec: cfg.rate * share,
                servers: rotate(&cfg.servers, id),
                sources: rotate(&cfg.sources, id),
                device: device.clone(),
                report_every: cfg.report_every,
                seed: cfg.seed,
                ring_entries: cfg.ring_entries,
                sink: cfg.sink.clone(),
                drain_timeout: cfg.drain_timeout,
                admission: shard_admission(&cfg.admission, share),
                driver: cfg.driver,
                upstream: crate::shard::core::UpstreamLoad {
                    push_rate: cfg.upstream.push_rate * share,
                    http_rate: cfg.upstream.http_rate * share,
                    ..cfg.upstream.clone()
                },
                plan: cfg.plan.for_shard(
                    lo - cfg.first_device,
                    hi - cfg.first_device,
                    cfg.devices,
                    share,
                    cfg.rate,
                ),
            };
            let (thread, commands) = shard::spawn(shard_cfg, store, report_tx.clone())
                .with_context(|| format!("spawning shard {id}"))?;
            shards.push(ShardCtl {
                commands,
                devices: lo..hi,
                thread,
            });
        }
        let latest = vec![ShardStats::default(); cfg.shards];
        Ok(Fleet {
            cfg,
            shards,
            reports,
            latest,
            latencies: Default::default(),
            started: Instant::now(),
            receipts: Vec::new(),
            receipts_dropped: 0,
        })
    }

    /// The control API's view of the fleet: its shards' ranges and channels. Devices added
    /// through it get indices after the fleet's own range.
    pub fn control_plane(&self) -> api::ControlPlane {
        let links = self
            .shards
            .iter()
            .map(|s| api::ShardLink {
                devices: s.devices.clone(),
                commands: s.commands.clone(),
            })
            .collect();
        let next = self.cfg.first_device.saturating_add(self.cfg.devices);
        api::ControlPlane::new(links, &self.cfg.device, next)
    }

    /// The configuration it runs.
    pub fn config(&self) -> &FleetConfig {
        &self.cfg
    }

    /// How long it has run.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Takes the reports that arrived, waiting up to `wait` for the first one.
    pub fn poll(&mut self, wait: Duration) {
        if let Ok(r) = self.reports.recv_timeout(wait) {
            self.take(r);
        }
        while let Ok(r) = self.reports.try_recv() {
            self.take(r);
        }
    }

    fn take(&mut self, r: Report) {
        match r {
            Report::Stats {
                shard,
                stats,
                samples,
            } => {
                self.latest[shard] = *stats;
                self.latencies.record_all(&samples);
            }
            Report::PushReceipts {
                epoch,
                receipts,
                dropped,
                ..
            } => {
                self.receipts.push((epoch, receipts));
                self.receipts_dropped += dropped;
            }
        }
    }

    /// The probe receipts that arrived since the last call, each batch with the instant its
    /// times count from (`run --push-rate`; callers without a push run drop them).
    pub fn take_push_receipts(&mut self) -> Vec<(Instant, Vec<crate::shard::core::PushReceipt>)> {
        std::mem::take(&mut self.receipts)
    }

    /// Receipts the shards dropped because the control plane did not take them in time.
    pub fn push_receipts_dropped(&self) -> u64 {
        self.receipts_dropped
    }

    /// The fleet's statistics as of the latest reports.
    pub fn stats(&self) -> ShardStats {
        let mut total = ShardStats::default();
        self.latest.iter().for_each(|s| total.merge(s));
        // Shares the histograms until the next sample changes one.
        total.latencies.merge(&self.latencies);
        total
    }

    /// Whether every shard finished its stages (false without stages).
    pub fn stages_done(&self) -> bool {
        self.latest.iter().all(|s| s.stages.done())
    }

    /// Counters only, cheaper than [`Fleet::stats`].
    pub fn counters(&self) -> Counters {
        let mut total = Counters::default();
        self.latest.iter().for_each(|s| total.merge(&s.counters));
        total
    }

    /// Waits until `done` holds for the fleet's counters or `timeout` passes; returns whether
    /// it held. For tests and scripted runs: a condition with a deadline, never a sleep.
    pub fn wait_until(&mut self, timeout: Duration, done: impl Fn(&Counters) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if done(&self.counters()) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.poll(left.min(Duration::from_millis(100)));
        }
    }

    /// Hands a new server rotation to every shard (each rotated, as at start); connects from
    /// then on use it. An empty list changes nothing.
    pub fn set_servers(&mut self, servers: &[SocketAddr]) {
        if servers.is_empty() {
            return;
        }
        for (id, s) in self.shards.iter().enumerate() {
            let _ = s.commands.send(Command::Servers(rotate(servers, id)));
        }
        self.cfg.servers = servers.to_vec();
    }

    /// Begins a graceful stop without waiting: shards stop starting devices and reading new
    /// pushes, and drain the sink. [`Fleet::stop`] then waits for them.
    pub fn begin_stop(&self) {
        for s in &self.shards {
            let _ = s.commands.send(Command::Stop);
        }
    }

    /// Stops every shard gracefully and collects what they leave.
    ///
    /// # Errors
    ///
    /// If a shard could not run (io_uring unavailable) or panicked.
    pub fn stop(self) -> anyhow::Result<FleetResult> {
        self.begin_stop();
        let mut stats = ShardStats::default();
        let mut stores = Vec::with_capacity(self.shards.len());
        let mut error = None;
        for (id, s) in self.shards.into_iter().enumerate() {
            match s.thread.join() {
                Ok(exit) => {
                    if let Some(e) = exit.error {
                        error.get_or_insert(e);
                    }
                    stats.merge(&exit.stats);
                    stores.push(exit.store);
                }
                Err(_) => bail!("shard {id} panicked"),
            }
        }
        if let Some(e) = error {
            bail!(e);
        }
        Ok(FleetResult {
            stats,
            stores,
            elapsed: self.started.elapsed(),
        })
    }
}

/// `items` rotated by `by`, so shards do not all start on the same endpoint.
fn rotate<T: Clone>(items: &[T], by: usize) -> Vec<T> {
    if items.is_empty() {
        return Vec::new();
    }
    let k = by % items.len();
    items[k..].iter().chain(&items[..k]).cloned().collect()
}
