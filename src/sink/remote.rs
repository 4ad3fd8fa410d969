//! Sinks whose downstream is a network service: [`Downstream`] says how one record is handed
//! over (an XADD, an HTTP POST); this module runs the rest, the same for each.
//!
//! - A record is taken (its `on_taken` called) only when the downstream answered that it has
//!   it, never before; a failed hand-over is retried, the record alone, with doubling backoff
//!   capped at 2 s, for as long as the sink runs. Nothing accepted is dropped: at the close
//!   deadline, records still unanswered are counted as left (their pushes stay unacked
//!   upstream, so the server delivers them again).
//! - At most `inflight` records are with the downstream at once; the rest wait in the sink's
//!   bounded queue, whose fullness slows the shards' reading (backpressure).
//!
//! The downstream clients (fred, hyper) are async: the sink thread runs a current-thread
//! tokio runtime. A forwarder thread moves records from the shards' crossbeam queue into the
//! runtime's channel, so the runtime never blocks on crossbeam and the client's background
//! tasks (reconnects, keep-alives) keep running while the sink is idle.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use crossbeam_channel::{RecvTimeoutError, TryRecvError};
use futures::stream::{FuturesUnordered, StreamExt as _};

use super::{Backoff, Control, Shared, SinkRecord, Stats};

/// One network downstream: hands a record over and says whether the other side has it.
pub(super) trait Downstream {
    /// Sends the record numbered `seq`; `Ok` once the downstream answered that it holds it.
    fn send(&self, seq: u64, rec: &SinkRecord) -> impl Future<Output = Result<(), String>>;
}

/// How often the runtime looks at the close signal while it waits for the downstream.
const CONTROL_TICK: Duration = Duration::from_millis(20);

/// Starts the sink thread. `connect` runs on it and must reach the downstream once, so that a
/// downstream that is not there is an error at start, not a silent retry.
pub(super) fn spawn<D, F, Fut>(
    name: &'static str,
    connect: F,
    sh: Shared,
    inflight: usize,
) -> anyhow::Result<JoinHandle<u64>>
where
    D: Downstream + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<D>> + 'static,
{
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<anyhow::Result<()>>(1);
    let no_runtime_tx = ready_tx.clone();
    let thread = crate::tokio_thread::spawn(
        "sink",
        move || async move {
            let down = match connect().await {
                Ok(d) => d,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return 0;
                }
            };
            let _ = ready_tx.send(Ok(()));
            run(&down, sh, inflight.max(1)).await
        },
        move |e| -> u64 {
            let _ = no_runtime_tx.send(Err(e.into()));
            0
        },
    )?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(thread),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e).with_context(|| format!("starting the {name} sink"))
        }
        Err(_) => {
            let _ = thread.join();
            anyhow::bail!("the {name} sink thread ended before it started")
        }
    }
}

/// Returns how many records were accepted but not taken.
async fn run<D: Downstream>(down: &D, sh: Shared, inflight: usize) -> u64 {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<SinkRecord>(inflight);
    let records = sh.records.clone();
    let lost_in_hand = Arc::new(AtomicU64::new(0));
    let forwarder = {
        let lost = lost_in_hand.clone();
        std::thread::Builder::new()
            .name("sink-forward".into())
            .spawn(move || forward(records, tx, &lost))
    };
    let Ok(forwarder) = forwarder else {
        Stats::add(&sh.stats.errors, 1);
        return sh.records.try_iter().count() as u64;
    };
    let stats = &sh.stats;
    let mut busy = FuturesUnordered::new();
    let mut deadline: Option<Instant> = None;
    let mut tick = tokio::time::interval(CONTROL_TICK);
    let mut seq = 0u64;
    loop {
        if let Some(d) = deadline {
            let drained = busy.is_empty() && rx.is_empty() && sh.records.is_empty();
            if drained || Instant::now() >= d {
                break;
            }
        }
        tokio::select! {
            Some(rec) = rx.recv(), if busy.len() < inflight => {
                seq += 1;
                busy.push(deliver(down, seq, rec, stats));
            }
            Some(()) = busy.next(), if !busy.is_empty() => {}
            _ = tick.tick() => match sh.control.try_recv() {
                Ok(Control::Close(d)) => deadline = Some(d),
                Err(TryRecvError::Disconnected) => deadline = Some(Instant::now()),
                Err(TryRecvError::Empty) => {}
            },
        }
    }
    // Whatever is still with the downstream, or not yet handed to it, was not taken.
    let mut left = busy.len() as u64;
    drop(busy);
    rx.close();
    while rx.try_recv().is_ok() {
        left += 1;
    }
    drop(rx);
    let _ = forwarder.join();
    left + lost_in_hand.load(Ordering::Relaxed)
}

/// Moves records from the shards' queue into the runtime until the runtime stops listening.
/// A record it took but could not hand on is counted in `lost` (as left, not dropped silently).
fn forward(
    records: crossbeam_channel::Receiver<SinkRecord>,
    tx: tokio::sync::mpsc::Sender<SinkRecord>,
    lost: &AtomicU64,
) {
    loop {
        // A timeout, so that a runtime that stopped is noticed while no record comes.
        match records.recv_timeout(CONTROL_TICK) {
            Ok(rec) => {
                if tx.blocking_send(rec).is_err() {
                    lost.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
            Err(RecvTimeoutError::Timeout) if !tx.is_closed() => {}
            Err(_) => return,
        }
    }
}

/// Hands one record over, retrying until the downstream has it; then it is taken.
async fn deliver<D: Downstream>(down: &D, seq: u64, rec: SinkRecord, stats: &Stats) {
    let mut backoff = Backoff::new();
    Stats::add(&stats.written, 1);
    loop {
        match down.send(seq, &rec).await {
            Ok(()) => {
                // Count first: whoever `on_taken` wakes may read the counters at once.
                Stats::add(&stats.acked, 1);
                if let Some(f) = rec.on_taken {
                    f();
                }
                return;
            }
            Err(e) => {
                // Logged at 1, 2, 4, 8, ... errors: an outage is visible, not a flood.
                let n = stats.errors.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    tracing::warn!(error = %e, errors = n, "sink downstream failed; retrying");
                }
                tokio::time::sleep(backoff.step()).await;
                Stats::add(&stats.resent, 1);
            }
        }
    }
}
