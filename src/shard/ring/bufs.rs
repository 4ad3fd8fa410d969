//! The shard's provided-buffer ring: one pool of receive buffers that every socket's multishot
//! receive draws from, so an idle session holds no receive buffer. The kernel picks a buffer
//! when bytes arrive and names it in the completion; the driver copies the bytes out, hands
//! them to the core and gives the buffer back at once, so no buffer is held across a turn.

use std::io;
use std::mem::ManuallyDrop;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::IoUring;

/// The buffer group id of the shard's pool (one pool per ring).
pub(super) const GROUP: u16 = 0;

/// A mapping of anonymous memory, unmapped on drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> io::Result<Mapping> {
        // SAFETY: an anonymous private mapping at an address the kernel picks; no existing
        // memory is touched. The result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast()).ok_or_else(io::Error::last_os_error)?;
        Ok(Mapping { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned, unmapped once. Owners drop a
        // mapping only once the kernel can no longer use it (see `BufRing`).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// A registered buffer ring of `count` buffers of `size` bytes.
///
/// Lifetime rule: the kernel may write into any buffer it holds, and read the ring entries,
/// until the ring is unregistered (or the io_uring is gone). [`BufRing::unregister`] must run
/// before the memory is dropped, and only once no receive that selects from this group is in
/// flight; the driver's teardown waits for every operation's completion first.
pub(super) struct BufRing {
    entries: ManuallyDrop<Mapping>,
    buffers: ManuallyDrop<Mapping>,
    count: u16,
    size: u32,
    /// Our copy of the ring's tail (the kernel reads the shared one).
    tail: u16,
    registered: bool,
}

impl BufRing {
    /// Maps and registers the ring with every buffer given to the kernel. `count` is a power
    /// of two no larger than 32,768. The buffers are faulted in now, so the pool's memory is
    /// the same whatever the number of sessions.
    pub(super) fn new(ring: &IoUring, count: u16, size: u32) -> io::Result<BufRing> {
        assert!(count.is_power_of_two() && count <= 1 << 15);
        let entries = Mapping::new(usize::from(count) * std::mem::size_of::<BufRingEntry>())?;
        let buffers = Mapping::new(usize::from(count) * size as usize)?;
        let mut bufs = BufRing {
            entries: ManuallyDrop::new(entries),
            buffers: ManuallyDrop::new(buffers),
            count,
            size,
            tail: 0,
            registered: false,
        };
        for bid in 0..count {
            bufs.push(bid);
        }
        bufs.publish();
        // SAFETY: the entries mapping is page-aligned, `count` entries long, and lives in
        // `bufs` until `unregister` (or drop, which unregisters only after the driver's
        // teardown has collected every completion).
        unsafe {
            ring.submitter()
                .register_buf_ring(bufs.entries.ptr.as_ptr() as u64, count, GROUP)?;
        }
        bufs.registered = true;
        Ok(bufs)
    }

    /// The bytes the kernel put in buffer `bid`.
    ///
    /// The caller passes the buffer id and length of a completion the kernel has posted and
    /// not yet had back through [`recycle`](Self::recycle).
    pub(super) fn filled(&self, bid: u16, len: usize) -> &[u8] {
        let bid = bid & (self.count - 1);
        let len = len.min(self.size as usize);
        // SAFETY: `bid < count`, so the range lies inside the buffers mapping. The kernel
        // posted this buffer in a completion and no longer writes it; it is not back in the
        // ring until `recycle`, which needs `&mut self` and so ends this borrow first.
        unsafe {
            std::slice::from_raw_parts(
                self.buffers
                    .ptr
                    .as_ptr()
                    .add(usize::from(bid) * self.size as usize),
                len,
            )
        }
    }

    /// Gives buffer `bid` back to the kernel.
    pub(super) fn recycle(&mut self, bid: u16) {
        self.push(bid & (self.count - 1));
        self.publish();
    }

    fn push(&mut self, bid: u16) {
        let index = usize::from(self.tail & (self.count - 1));
        // SAFETY: `index < count`, inside the entries mapping; the kernel only reads entries
        // between its head and the published tail, and this one is past the tail until
        // `publish`. Only addr/len/bid are written, never the tail that overlays entry 0.
        let entry = unsafe { &mut *self.entries.ptr.as_ptr().cast::<BufRingEntry>().add(index) };
        let addr = self.buffers.ptr.as_ptr() as u64 + u64::from(bid) * u64::from(self.size);
        entry.set_addr(addr);
        entry.set_len(self.size);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail field is a u16 at a fixed, aligned offset of entry 0, inside the
        // mapping; the kernel reads it with acquire ordering, so the release store makes the
        // entries written before it visible.
        let tail = unsafe {
            &*BufRingEntry::tail(self.entries.ptr.as_ptr().cast::<BufRingEntry>())
                .cast::<AtomicU16>()
        };
        tail.store(self.tail, Ordering::Release);
    }

    /// Takes the ring back from the kernel. Only once no receive of this group is in flight.
    pub(super) fn unregister(&mut self, ring: &IoUring) {
        if self.registered {
            if let Err(e) = ring.submitter().unregister_buf_ring(GROUP) {
                tracing::warn!(error = %e, "unregistering the buffer ring failed");
            }
            self.registered = false;
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        if self.registered {
            // The kernel may still write here: leak the memory rather than free it.
            tracing::warn!("buffer ring dropped while registered; its memory is leaked");
            return;
        }
        // SAFETY: unregistered, so the kernel no longer uses either mapping; each is dropped
        // once, here, and never used again.
        unsafe {
            ManuallyDrop::drop(&mut self.entries);
            ManuallyDrop::drop(&mut self.buffers);
        }
    }
}
