//! What both drivers do the same way, written once: hand the core's deliveries to the sink,
//! and the socket option that lets one source address serve many server endpoints.

use std::os::fd::RawFd;

use crossbeam_channel::Sender;

use super::core::{CoreConfig, Request, ShardCore, SinkToken};
use super::{ControlReply, Report, ShardConfig};
use crate::device::Now;
use crate::sink::SinkRecord;

/// The shard's core, as its config says, keeping latency samples for the reports.
pub(super) fn core(cfg: &ShardConfig, now: Now) -> ShardCore {
    let core_cfg = CoreConfig {
        first_device: cfg.devices.start,
        devices: cfg.devices.end.saturating_sub(cfg.devices.start),
        rate_per_sec: cfg.rate_per_sec,
        servers: cfg.servers.clone(),
        sources: cfg.sources.clone(),
        device: cfg.device.clone(),
        seed: cfg
            .seed
            .map_or_else(rand::random, |seed| seed ^ cfg.id as u64),
        sink: cfg.sink.is_some(),
        drain_timeout_ms: cfg.drain_timeout.as_millis() as u64,
        admission: cfg.admission,
        plan: cfg.plan.clone(),
        upstream: cfg.upstream.clone(),
    };
    let mut core = ShardCore::new(core_cfg, now);
    core.keep_latency_samples();
    core
}

/// Hands the core's waiting deliveries to the sink until it is full. A record's `on_taken`
/// sends its token on `took` and calls `wake`, so the driver feeds it back to the core.
pub(super) fn deliver<W>(
    core: &mut ShardCore,
    cfg: &ShardConfig,
    took: &Sender<SinkToken>,
    wake: &W,
) where
    W: Fn() + Clone + Send + 'static,
{
    let Some(sink) = &cfg.sink else {
        return;
    };
    while let Some(item) = core.peek_delivery() {
        let (tx, wake, token) = (took.clone(), wake.clone(), item.token);
        let record = SinkRecord {
            device_id: cfg.device.device_id_of(item.device),
            user_id: cfg.device.user_id_of(item.device),
            msg_id: item.delivery.msg_id.0,
            flags: item.delivery.flags.0,
            content: item.delivery.content.clone(),
            received_at_ms: item.received_at_ms,
            on_taken: Some(Box::new(move || {
                let _ = tx.send(token);
                wake();
            })),
        };
        if sink.try_send(record).is_ok() {
            core.pop_delivery();
        } else {
            core.sink_full();
            break;
        }
    }
}

/// Control requests handed to the core and not yet answered.
#[derive(Default)]
pub(super) struct ControlReplies {
    next: u64,
    waiting: std::collections::HashMap<u64, ControlReply>,
}

impl ControlReplies {
    /// Hands `request` to the core; its answer goes to `reply`.
    pub(super) fn request(
        &mut self,
        core: &mut ShardCore,
        now: Now,
        request: Request,
        reply: ControlReply,
    ) {
        self.next += 1;
        self.waiting.insert(self.next, reply);
        core.handle_control(now, self.next, request);
    }

    /// Sends the core's answers (a caller that gave up is no error).
    pub(super) fn answer(&mut self, core: &mut ShardCore) {
        while let Some((id, answer)) = core.poll_control() {
            if let Some(reply) = self.waiting.remove(&id) {
                let _ = reply.send(answer);
            }
        }
    }
}

/// `IP_BIND_ADDRESS_NO_PORT`: binding to a source address picks the port at connect time, by
/// the whole 4-tuple, so one source address serves 64k connections per server endpoint
/// instead of 64k in all.
pub(super) fn bind_address_no_port(fd: RawFd) -> std::io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: the caller passes the fd of a socket it owns and keeps open for the call; the
    // option value points to a live c_int whose size is passed alongside.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Sends the core's statistics, then its probe receipts if it noted any (`run --push-rate`),
/// to the control plane: one message each, batched per report.
pub(super) fn report(
    core: &mut ShardCore,
    shard: usize,
    epoch: std::time::Instant,
    reports: &Sender<Report>,
) {
    let (stats, samples) = core.stats_report();
    let _ = reports.send(Report::Stats {
        shard,
        stats: Box::new(stats),
        samples,
    });
    let mut receipts = Vec::new();
    let dropped = core.take_push_receipts(&mut receipts);
    if !receipts.is_empty() || dropped > 0 {
        let _ = reports.send(Report::PushReceipts {
            shard,
            epoch,
            receipts,
            dropped,
        });
    }
}

/// The replies owed for [`Command::Upstream`](super::Command::Upstream)s: the core gets a
/// tag of the driver's per command; its outcome goes back on the command's channel with the
/// caller's own tag.
#[derive(Default)]
pub(super) struct Replies {
    waiting: std::collections::HashMap<u64, (u64, Sender<super::UpstreamReply>)>,
    next: u64,
}

impl Replies {
    /// Starts the command's request on its device.
    pub(super) fn start(
        &mut self,
        core: &mut ShardCore,
        now: crate::device::Now,
        cmd: super::UpstreamCommand,
    ) {
        // Never the core's own LOAD_TAG (u64::MAX): the counter would take 2^64 commands.
        let tag = self.next;
        self.next += 1;
        self.waiting.insert(tag, (cmd.tag, cmd.reply));
        let timeout_ms = u32::try_from(cmd.timeout.as_millis()).unwrap_or(u32::MAX);
        core.start_upstream(now, cmd.device, tag, cmd.request, timeout_ms);
    }

    /// Sends every outcome the core has.
    pub(super) fn deliver(&mut self, core: &mut ShardCore) {
        while let Some(done) = core.poll_upstream() {
            let Some((tag, reply)) = self.waiting.remove(&done.tag) else {
                continue;
            };
            // A caller that stopped waiting dropped its receiver: nothing to tell.
            let _ = reply.send(super::UpstreamReply {
                tag,
                device: done.device,
                outcome: done.outcome,
                latency: std::time::Duration::from_micros(done.latency_us),
            });
        }
    }

    /// The shard ends: whatever still waits is answered as lost.
    pub(super) fn abandon(&mut self, core: &mut ShardCore) {
        self.deliver(core);
        for (_, (tag, reply)) in self.waiting.drain() {
            let _ = reply.send(super::UpstreamReply {
                tag,
                device: u64::MAX,
                outcome: crate::device::UpstreamOutcome::ConnectionLost,
                latency: std::time::Duration::ZERO,
            });
        }
    }
}

/// The core's clock: microseconds since the shard's `epoch`, and the wall clock for tickets.
pub(super) fn now(epoch: std::time::Instant) -> Now {
    let wall_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    Now {
        us: epoch.elapsed().as_micros() as u64,
        wall_ms,
    }
}

/// Hands every control-plane command waiting on `commands` to the core (both drivers, the
/// same way, at the start of a turn).
pub(super) fn commands(
    commands: &crossbeam_channel::Receiver<super::Command>,
    core: &mut ShardCore,
    control: &mut ControlReplies,
    replies: &mut Replies,
    now: Now,
) {
    while let Ok(cmd) = commands.try_recv() {
        match cmd {
            super::Command::Stop => core.handle_stop(now),
            super::Command::Servers(servers) => core.set_servers(servers),
            super::Command::Control(request, reply) => control.request(core, now, request, reply),
            super::Command::Upstream(cmd) => replies.start(core, now, cmd),
        }
    }
}
