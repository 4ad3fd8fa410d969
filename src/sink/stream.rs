//! The stdout and file writer: batches whatever is queued, writes it, flushes once, then
//! calls the batch's `on_taken`s. A record is taken when its bytes left the process, so a
//! crash of the process after that cannot lose it.

use std::fs::File;
use std::io::Write;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{select, RecvTimeoutError};

use super::{Backoff, Control, Shared, SinkRecord, Stats};

/// Where a stream sink writes.
pub(super) enum Dest {
    Stdout,
    File(File),
}

impl Dest {
    fn write_flush(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            // One lock for the batch, so no other line lands inside it.
            Dest::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(buf)?;
                out.flush()
            }
            Dest::File(f) => {
                f.write_all(buf)?;
                f.flush()
            }
        }
    }
}

pub(super) fn spawn(dest: Dest, shared: Shared) -> anyhow::Result<JoinHandle<u64>> {
    Ok(std::thread::Builder::new()
        .name("sink".into())
        .spawn(move || run(dest, shared))?)
}

/// Returns how many records were accepted but not taken.
fn run(mut dest: Dest, sh: Shared) -> u64 {
    let mut seq = 0u64;
    let mut deadline: Option<Instant> = None;
    let mut batch: Vec<SinkRecord> = Vec::with_capacity(sh.capacity);
    let mut buf = Vec::new();
    let mut backoff = Backoff::new();
    loop {
        if batch.is_empty() {
            if deadline.is_some() {
                // Closing: take what is queued without waiting for more.
                batch.extend(sh.records.try_iter().take(sh.capacity));
                if batch.is_empty() {
                    return 0;
                }
            } else {
                select! {
                    recv(sh.records) -> r => match r {
                        Ok(r) => batch.push(r),
                        // Every sender is gone (the Sink holds one until it closes).
                        Err(_) => return 0,
                    },
                    recv(sh.control) -> c => match c {
                        Ok(Control::Close(d)) => deadline = Some(d),
                        Err(_) => deadline = Some(Instant::now()),
                    },
                }
                continue;
            }
        }
        // Fill the batch with what else is queued: one flush for all of it.
        let room = sh.capacity.saturating_sub(batch.len());
        batch.extend(sh.records.try_iter().take(room));
        buf.clear();
        for rec in &batch {
            seq += 1;
            rec.encode_line(seq, &mut buf);
        }
        match dest.write_flush(&buf) {
            Ok(()) => {
                backoff.reset();
                let n = batch.len() as u64;
                // Count first: whoever `on_taken` wakes may read the counters at once.
                Stats::add(&sh.stats.written, n);
                Stats::add(&sh.stats.acked, n);
                for rec in batch.drain(..) {
                    if let Some(f) = rec.on_taken {
                        f();
                    }
                }
            }
            Err(e) => {
                // Keep the batch and retry: a full disk may free up. A partial write before
                // the error can duplicate lines, which the contract allows; losing them not.
                Stats::add(&sh.stats.errors, 1);
                tracing::warn!(error = %e, records = batch.len(), "sink write failed; retrying");
                seq -= batch.len() as u64;
                let wait = backoff.step();
                if let Some(d) = deadline {
                    if Instant::now() + wait >= d {
                        return batch.len() as u64 + sh.records.try_iter().count() as u64;
                    }
                    std::thread::sleep(wait);
                } else {
                    match sh.control.recv_timeout(wait) {
                        Ok(Control::Close(d)) => deadline = Some(d),
                        Err(RecvTimeoutError::Disconnected) => deadline = Some(Instant::now()),
                        Err(RecvTimeoutError::Timeout) => {}
                    }
                }
            }
        }
    }
}
