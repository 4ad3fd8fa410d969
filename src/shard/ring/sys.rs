//! The shard's io_uring, its operation names and its wake-up eventfd.
//!
//! Every submission carries `user_data` = slot (32 bits) | generation (low 24 bits) |
//! operation (8 bits), so a completion goes straight to its connection's state: no task, no
//! channel, no lookup table per socket.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use io_uring::{cqueue, squeue, types, IoUring};

use crate::shard::core::ConnId;

/// What a completion completes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Op {
    Connect = 1,
    ConnectTimeout = 2,
    Recv = 3,
    Send = 4,
    /// A cancel request's own completion (nothing to do).
    Cancel = 5,
    /// The wake-up eventfd's read.
    Wake = 6,
}

impl Op {
    fn from_u8(v: u8) -> Option<Op> {
        Some(match v {
            1 => Op::Connect,
            2 => Op::ConnectTimeout,
            3 => Op::Recv,
            4 => Op::Send,
            5 => Op::Cancel,
            6 => Op::Wake,
            _ => return None,
        })
    }
}

/// The generation bits a `user_data` keeps.
pub(super) const GEN_MASK: u32 = 0x00ff_ffff;

pub(super) fn user_data(conn: ConnId, op: Op) -> u64 {
    (u64::from(conn.slot) << 32) | (u64::from(conn.gen & GEN_MASK) << 8) | op as u64
}

/// `(slot, generation bits, operation)` of a `user_data`.
pub(super) fn parse(user_data: u64) -> Option<(u32, u32, Op)> {
    let op = Op::from_u8(user_data as u8)?;
    Some((
        (user_data >> 32) as u32,
        (user_data >> 8) as u32 & GEN_MASK,
        op,
    ))
}

/// A completion, copied out of the completion queue.
#[derive(Clone, Copy, Debug)]
pub(super) struct Cqe {
    pub(super) user_data: u64,
    pub(super) result: i32,
    pub(super) flags: u32,
}

impl Cqe {
    pub(super) fn buffer(&self) -> Option<u16> {
        cqueue::buffer_select(self.flags)
    }
    pub(super) fn more(&self) -> bool {
        cqueue::more(self.flags)
    }
}

/// The ring of one shard thread.
pub(super) struct Ring {
    pub(super) uring: IoUring,
    /// Whether the kernel takes `min_wait_usec` in the wait's EXT_ARG (Linux 6.12+).
    min_wait: bool,
}

/// How long a wait that has seen a completion goes on collecting more (`min_wait_usec`):
/// a burst of replies (a grid turn's heartbeats coming back, a ramp's handshakes) is taken
/// in one `io_uring_enter` instead of one per completion. This is also the most a completion
/// waits before the shard sees it: latencies read up to this much high, timers fire no later
/// (the wait's own timeout still ends it).
///
/// It pays only when completions come in bursts: for completions that come one at a time
/// the kernel's min-wait timer is one more wake-up each (a ramp whose starts were 2 ms
/// apart measured 45% more CPU per handshake with it). The core makes bursts: heartbeats and
/// ramp starts on grids. Waiting so only after turns that submitted two or more operations
/// was tried too and measured worse for heartbeats (0.134 syscalls each against 0.056).
const BATCH_WAIT_US: u32 = 100;

/// `io_uring_getevents_arg` with its `min_wait_usec` (the io-uring crate 0.6 names it `pad`).
#[repr(C)]
struct GeteventsArg {
    sigmask: u64,
    sigmask_sz: u32,
    min_wait_usec: u32,
    ts: u64,
}

/// `__kernel_timespec`.
#[repr(C)]
struct KernelTimespec {
    sec: i64,
    nsec: i64,
}

const ENTER_GETEVENTS: u32 = 1;
const ENTER_EXT_ARG: u32 = 1 << 3;

impl Ring {
    /// A ring of `entries` submissions, the completion queue four times larger (multishot
    /// receives post many completions per submission). Single issuer with deferred task work
    /// where the kernel has them (6.1+): completions are produced when the shard waits.
    pub(super) fn new(entries: u32) -> io::Result<Ring> {
        let entries = entries.clamp(8, 32_768);
        let cq = entries.saturating_mul(4);
        let uring = IoUring::builder()
            .setup_cqsize(cq)
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(entries)
            .or_else(|_| IoUring::builder().setup_cqsize(cq).build(entries))?;
        if !uring.params().is_feature_ext_arg() || !uring.params().is_feature_nodrop() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this kernel's io_uring lacks EXT_ARG or NODROP (needs Linux 5.19+)",
            ));
        }
        let mut ring = Ring {
            uring,
            min_wait: false,
        };
        // A kernel without `min_wait_usec` refuses a non-zero one with EINVAL.
        ring.min_wait = ring.enter(0, 1, Duration::ZERO, 1).is_ok();
        Ok(ring)
    }

    /// `io_uring_enter`: submits `to_submit`, then waits up to `timeout` for `wait_nr`
    /// completions, or for one once `min_wait_us` has passed. `Ok(())` also for a timeout.
    fn enter(
        &self,
        to_submit: u32,
        wait_nr: u32,
        timeout: Duration,
        min_wait_us: u32,
    ) -> io::Result<()> {
        let ts = KernelTimespec {
            sec: timeout.as_secs() as i64,
            nsec: i64::from(timeout.subsec_nanos()),
        };
        let arg = GeteventsArg {
            sigmask: 0,
            sigmask_sz: 0,
            min_wait_usec: min_wait_us,
            ts: std::ptr::addr_of!(ts) as u64,
        };
        // SAFETY: `arg` and the timespec it points to live across the call; the kernel reads
        // them only during it. The submission queue's tail was published when the entries
        // were pushed (the crate's queue handle syncs on drop), and `to_submit` is its length.
        let r = unsafe {
            self.uring.submitter().enter(
                to_submit,
                wait_nr,
                ENTER_GETEVENTS | ENTER_EXT_ARG,
                Some(&arg),
            )
        };
        match r {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ETIME) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Queues `entry`, submitting what is queued first if the submission queue is full.
    ///
    /// # Safety
    ///
    /// Every buffer, address and timespec `entry` points to stays valid until the entry's
    /// completion has been reaped (the timespec of a link timeout and the address of a
    /// connect until the submission, which this crate's callers keep longer anyway).
    pub(super) unsafe fn push(&mut self, entry: &squeue::Entry) {
        loop {
            // SAFETY: passed on from the caller.
            if unsafe { self.uring.submission().push(entry) }.is_ok() {
                return;
            }
            if let Err(e) = self.uring.submit() {
                tracing::warn!(error = %e, "io_uring submit failed");
            }
        }
    }

    /// Queues `first` linked to `then`, adjacent in the queue (a link must not be split
    /// across two submissions).
    ///
    /// # Safety
    ///
    /// As for [`push`](Self::push), for both entries.
    pub(super) unsafe fn push_linked(&mut self, first: &squeue::Entry, then: &squeue::Entry) {
        loop {
            let mut sq = self.uring.submission();
            if sq.capacity() - sq.len() >= 2 {
                // SAFETY: passed on from the caller; two free entries were checked.
                unsafe {
                    let _ = sq.push(first);
                    let _ = sq.push(then);
                }
                return;
            }
            drop(sq);
            if let Err(e) = self.uring.submit() {
                tracing::warn!(error = %e, "io_uring submit failed");
            }
        }
    }

    /// Submits everything queued and waits up to `timeout` for completions: with
    /// `min_wait_usec`, for as many as the completion queue holds or [`BATCH_WAIT_US`] after
    /// the wait began, whichever is first, once there is one; otherwise for one.
    pub(super) fn submit_and_wait(&mut self, timeout: Duration) {
        let to_submit = self.uring.submission().len() as u32;
        let (wait_nr, min_wait) = if self.min_wait && !timeout.is_zero() {
            let cap = self.uring.completion().capacity() as u32;
            let us = u32::try_from(timeout.as_micros()).unwrap_or(u32::MAX);
            (cap, BATCH_WAIT_US.min(us).max(1))
        } else {
            (1, 0)
        };
        match self.enter(to_submit, wait_nr, timeout, min_wait) {
            Ok(()) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) => {}
            Err(e) => tracing::warn!(error = %e, "io_uring_enter failed"),
        }
    }

    /// Moves every posted completion into `out`.
    pub(super) fn reap(&mut self, out: &mut Vec<Cqe>) {
        for c in self.uring.completion() {
            out.push(Cqe {
                user_data: c.user_data(),
                result: c.result(),
                flags: c.flags(),
            });
        }
    }
}

/// The shard's wake-up from other threads (ticket answers, sink acceptances): an eventfd the
/// ring keeps a read on. A wake writes only when the shard has not been woken since it last
/// looked, so a burst of answers costs one `write`.
#[derive(Debug)]
pub(super) struct Waker {
    fd: OwnedFd,
    pending: AtomicBool,
}

impl Waker {
    pub(super) fn new() -> io::Result<Waker> {
        // SAFETY: plain syscall; the result is checked and owned below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Waker {
            // SAFETY: `fd` is a fresh descriptor nobody else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            pending: AtomicBool::new(false),
        })
    }

    pub(super) fn wake(&self) {
        if !self.pending.swap(true, Ordering::AcqRel) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to our eventfd.
            let _ = unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
    }

    /// The shard took the wake-up: the next `wake` writes again. The shard looks at its
    /// channels after this, so no answer is missed.
    pub(super) fn rearm(&self) {
        self.pending.store(false, Ordering::Release);
    }

    pub(super) fn fd(&self) -> types::Fd {
        types::Fd(self.fd.as_raw_fd())
    }
}
