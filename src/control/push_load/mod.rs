//! `run --push-rate`: end-to-end pushes through the server's own push path while the fleet
//! holds its users. The fleet pushes to itself: the [`pusher`] (on its own tokio thread)
//! sends GATEWAY_PUSH with a probe header in the content, the shards' cores recognise the
//! header in what their devices receive and report receipts over the report channel, and
//! the [`ledger`] on the control plane matches the two and accounts for every push.
//!
//! The push figures are counters and histograms of a [`ShardStats`] that merges into the
//! fleet's, so the status line, the report, `report merge`, Prometheus and `--fail-on`
//! (`push.lost>0`, `push.e2e.p99>200ms`) show them like every other figure.

pub mod ledger;
pub mod pusher;

use std::time::{Duration, Instant};

use crate::shard::core::PushReceipt;
use crate::stats::ShardStats;

pub use ledger::{Ledger, Reply};
pub use pusher::{Gateways, PushEvent, Pusher, PusherConfig, PusherExit};

/// What a finished push run leaves.
#[derive(Debug)]
pub struct PushFigures {
    /// The push counters and latencies.
    pub stats: ShardStats,
    /// The pusher's gateway connection figures.
    pub exit: PusherExit,
    /// Seconds from the first send to the last.
    pub sending_secs: f64,
}

/// A pusher and its ledger, driven from the control plane's loop.
pub struct PushRun {
    pusher: Pusher,
    ledger: Ledger,
    start: Instant,
    grace: Duration,
    stopped_at: Option<Instant>,
}

impl PushRun {
    /// Starts the pusher (inactive until [`PushRun::set_active`]); a push not received
    /// `grace` after its send, though the gateway took it, is lost.
    ///
    /// # Errors
    ///
    /// As [`Pusher::start`].
    pub fn start(cfg: PusherConfig, grace: Duration) -> anyhow::Result<PushRun> {
        let grace = grace.max(cfg.timeout);
        Ok(PushRun {
            pusher: Pusher::start(cfg)?,
            ledger: Ledger::new(u64::try_from(grace.as_micros()).unwrap_or(u64::MAX)),
            start: Instant::now(),
            grace,
            stopped_at: None,
        })
    }

    fn us(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.start).as_micros()).unwrap_or(u64::MAX)
    }

    /// Sends while `on`.
    pub fn set_active(&self, on: bool) {
        self.pusher.set_active(on && self.stopped_at.is_none());
    }

    /// Takes the pusher's events, then the shards' receipts (each batch with the instant its
    /// times count from), and judges what is past its grace.
    pub fn pump(&mut self, receipts: Vec<(Instant, Vec<PushReceipt>)>) {
        // Events first: a receipt's push was always sent before the receipt was noted.
        while let Ok(ev) = self.pusher.events().try_recv() {
            match ev {
                PushEvent::Sent { seq, at, wall_us } => self.ledger.sent(seq, self.us(at), wall_us),
                PushEvent::Ended { seq, reply, at } => self.ledger.reply(seq, reply, self.us(at)),
            }
        }
        for (epoch, batch) in receipts {
            for r in &batch {
                let at = epoch + Duration::from_micros(r.at_us);
                self.ledger.receipt(r, self.us(at));
            }
        }
        self.ledger.settle(self.us(Instant::now()), false);
    }

    /// Whether the pusher sent its `--push-count` and every push is settled.
    pub fn all_settled(&self) -> bool {
        self.pusher.sent_all() && self.ledger.open() == 0
    }

    /// Stops sending (the fleet's stop begins, or the count is reached).
    pub fn stop_sending(&mut self) {
        if self.stopped_at.is_none() {
            self.stopped_at = Some(Instant::now());
        }
        self.pusher.stop_sending();
    }

    /// Whether the end may be judged: sending stopped, the pusher's requests all ended, and
    /// every push is settled or the grace since the stop has passed.
    pub fn may_end(&self) -> bool {
        let Some(at) = self.stopped_at else {
            return false;
        };
        self.pusher.is_finished() && (self.ledger.open() == 0 || at.elapsed() >= self.grace)
    }

    /// Waits for the pusher's requests to end, takes `receipts` (the shards' last), judges
    /// every push still open (lost unless received or explained) and returns the figures.
    pub fn finish(mut self, receipts: Vec<(Instant, Vec<PushReceipt>)>) -> PushFigures {
        self.stop_sending();
        let exit = self.pusher.join();
        self.pump(receipts);
        self.ledger.settle(u64::MAX, true);
        PushFigures {
            stats: self.ledger.stats().clone(),
            exit,
            sending_secs: self.ledger.sending_secs(),
        }
    }

    /// The push figures so far.
    pub fn stats(&self) -> &ShardStats {
        self.ledger.stats()
    }
}
