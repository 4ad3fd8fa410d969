//! A shard: one pinned thread that owns a range of devices, their sockets, buffers and
//! timers, and its ticket store client.
//!
//! - [`core`]: [`ShardCore`](core::ShardCore), the shard's logic, sans-IO: slots, devices,
//!   timers, ramp, ticket requests, sink backpressure, batched AES, the graceful stop. Tested
//!   in simulated time (`crate::sim`) and fuzzed.
//! - `ring`: the raw io_uring driver (the `io-uring` crate): one ring per shard, completions
//!   dispatched to slots by `user_data`, multishot receives from one provided-buffer ring.
//! - `uring`: the tokio-uring driver. Per turn: feed every completion, then end the turn
//!   (timers fire only after all the turn's input), start the core's I/O, send its ticket
//!   requests, hand its pushes to the sink, sleep until the next completion or deadline.
//!
//! One owner for every piece of state; the control plane is reached only by crossbeam
//! messages. Must not touch: protocol decisions. Matching on a command here would mean the
//! code is misplaced; the shard moves bytes, time and effects between sockets and
//! [`Device`](crate::device::Device)s.

pub mod core;
mod glue;
mod ring;
mod uring;

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Sender;

use crate::device::DeviceConfig;
use crate::stats::ShardStats;
use crate::tickets::TicketStore;

/// What one shard runs.
#[derive(Clone, Debug)]
pub struct ShardConfig {
    /// Shard number (for logs and reports).
    pub id: usize,
    /// The core to pin the thread to, if any.
    pub core: Option<core_affinity::CoreId>,
    /// The global device indices this shard owns, for life.
    pub devices: Range<u32>,
    /// New sessions per second this shard starts; 0 starts all at once.
    pub rate_per_sec: f64,
    /// Server endpoints, used round-robin.
    pub servers: Vec<SocketAddr>,
    /// Local source addresses to bind before connecting, used round-robin (empty: any).
    pub sources: Vec<IpAddr>,
    /// What every device shares.
    pub device: Arc<DeviceConfig>,
    /// How often the shard reports its statistics.
    pub report_every: Duration,
    /// Seed of the shard's RNG (keys, IVs, jitter); `None` seeds from the OS.
    pub seed: Option<u64>,
    /// Submission-queue entries of the ring.
    pub ring_entries: u32,
    /// Where received pushes go; `None` means the application takes each at once.
    pub sink: Option<crate::sink::SinkSender>,
    /// How long a graceful stop may wait for the sink to take what was received.
    pub drain_timeout: Duration,
    /// The shard's admission window and retry budget.
    pub admission: core::Admission,
    /// The shard's phases (its share of each ramp).
    pub plan: crate::stages::Plan,
    /// Which driver runs the core.
    pub driver: DriverKind,
    /// Device-originated load this shard generates (its share of the fleet's rates).
    pub upstream: core::UpstreamLoad,
}

/// The runtime under a shard's core (`--driver`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DriverKind {
    /// The raw io_uring driver: one ring per shard, multishot receives from a shared
    /// provided-buffer ring, no task or buffer per idle socket. The default: it measures
    /// better on every figure of `benches/drivers.sh` (BENCHMARKS.md).
    #[default]
    Uring,
    /// The tokio-uring driver: a task, an `Rc` and a read buffer per socket.
    TokioUring,
}

/// What the control plane tells a shard.
#[derive(Debug)]
pub enum Command {
    /// Close every session gracefully, report, and end.
    Stop,
    /// Connect from now on to these servers, round-robin (names re-resolved or servers
    /// discovered by the control plane).
    Servers(Vec<SocketAddr>),
    /// A control-API request for one of the shard's devices; the answer goes to `reply`.
    Control(core::Request, ControlReply),
    /// Send a device-originated request (a device PUSH, an HTTP_PROXY request) through one
    /// device's session; exactly one [`UpstreamReply`] comes back on its channel.
    Upstream(UpstreamCommand),
}

/// A device-originated request for one device of the shard.
#[derive(Debug)]
pub struct UpstreamCommand {
    /// The device's global index (the `{i}` of the id templates; a shard owns
    /// [`ShardConfig::devices`]). One outside the shard's range gets `NoSuchDevice`.
    pub device: u64,
    /// The caller's tag, given back in the reply.
    pub tag: u64,
    /// What to send.
    pub request: crate::device::UpstreamRequest,
    /// How long to wait for the answer (`ZERO`: the request's default).
    pub timeout: Duration,
    /// Where the reply goes.
    pub reply: Sender<UpstreamReply>,
}

/// How a [`Command::Upstream`] ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamReply {
    /// The command's tag.
    pub tag: u64,
    /// The device's global index (`u64::MAX` if the shard ended before the answer).
    pub device: u64,
    /// How it ended.
    pub outcome: crate::device::UpstreamOutcome,
    /// From the shard taking the command to the outcome.
    pub latency: Duration,
}

/// Where a shard sends a control answer.
pub type ControlReply = tokio::sync::oneshot::Sender<core::Answer>;

/// How a shard's driver lets itself be woken for a command (the ring driver: its eventfd).
type CommandWake = Arc<OnceLock<Arc<dyn Fn() + Send + Sync>>>;

/// The control plane's end of a shard's command channel: a command also wakes the shard, so
/// a driver that can be woken does not poll for commands.
#[derive(Clone)]
pub struct ShardCommands {
    tx: Sender<Command>,
    wake: CommandWake,
}

impl std::fmt::Debug for ShardCommands {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardCommands")
            .field("queued", &self.tx.len())
            .field("wakes", &self.wake.get().is_some())
            .finish()
    }
}

impl ShardCommands {
    /// Sends `cmd` and wakes the shard.
    ///
    /// # Errors
    ///
    /// The command back when the shard has ended.
    pub fn send(&self, cmd: Command) -> Result<(), crossbeam_channel::SendError<Command>> {
        self.tx.send(cmd)?;
        if let Some(wake) = self.wake.get() {
            wake();
        }
        Ok(())
    }
}

/// What a shard tells the control plane.
#[derive(Debug)]
pub enum Report {
    /// The shard's statistics so far: counters cumulative, latencies as the samples since
    /// the last report (a copy of every histogram would be megabytes a report).
    Stats {
        /// Shard number.
        shard: usize,
        /// Counters, stages and servers since the shard started; its latencies are empty.
        stats: Box<ShardStats>,
        /// The latencies recorded since the previous report.
        samples: Vec<crate::stats::Sample>,
    },
    /// `run --push-rate`'s probe receipts since the last report, in the order noted.
    PushReceipts {
        /// Shard number.
        shard: usize,
        /// The instant the receipts' `at_us` count from (the shard's clock).
        epoch: std::time::Instant,
        /// The receipts.
        receipts: Vec<core::PushReceipt>,
        /// Receipts the core dropped because they were not taken in time.
        dropped: u64,
    },
}

/// What a shard leaves behind when it ends.
pub struct ShardExit {
    /// Final statistics.
    pub stats: ShardStats,
    /// The ticket store, for the next run in this process.
    pub store: Box<dyn TicketStore>,
    /// Why the shard could not run, if it could not (io_uring unavailable, ...).
    pub error: Option<String>,
}

/// Starts a shard on its own thread; commands reach it through the returned sender.
///
/// # Errors
///
/// If the thread cannot be spawned.
pub fn spawn(
    cfg: ShardConfig,
    store: Box<dyn TicketStore>,
    reports: Sender<Report>,
) -> std::io::Result<(JoinHandle<ShardExit>, ShardCommands)> {
    let (tx, commands) = crossbeam_channel::unbounded();
    let wake = CommandWake::default();
    let sender = ShardCommands {
        tx,
        wake: wake.clone(),
    };
    let thread = std::thread::Builder::new()
        .name(format!("shard-{}", cfg.id))
        .spawn(move || {
            if let Some(core) = cfg.core {
                if !core_affinity::set_for_current(core) {
                    tracing::warn!(shard = cfg.id, "could not pin to core {}", core.id);
                }
            }
            if cfg.driver == DriverKind::Uring {
                return ring::run(cfg, store, (commands, wake), reports);
            }
            let runtime =
                match tokio_uring::Runtime::new(tokio_uring::builder().entries(cfg.ring_entries)) {
                    Ok(rt) => rt,
                    Err(e) => {
                        return ShardExit {
                            stats: ShardStats::default(),
                            store,
                            error: Some(format!(
                                "io_uring is unavailable here ({e}); the fleet needs it"
                            )),
                        };
                    }
                };
            runtime.block_on(uring::run(cfg, store, commands, reports))
        })?;
    Ok((thread, sender))
}

/// Whether this machine lets a process set up an io_uring instance: a small raw ring, as
/// the default driver makes (tokio-uring's runtime needs the same syscall).
pub fn io_uring_available() -> Result<(), std::io::Error> {
    io_uring::IoUring::new(8).map(drop)
}
