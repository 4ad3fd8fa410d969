//! The process's ticket-store runtime, for the ring driver's shards.
//!
//! fred (the Redis ticket store) runs on tokio: it spawns a task per pipeline and owns its
//! sockets through tokio's epoll reactor. A shard on the raw ring has no tokio runtime, and a
//! runtime on the shard thread could only be woken by polling it every turn (tokio does not
//! expose its epoll descriptor for the ring to watch), which would add an `epoll_wait` to
//! every turn of every shard. So the stores of every shard share one tokio current-thread
//! runtime on a thread of its own, started the first time a shard asks: a shard enters its
//! handle, the store's `tokio::spawn` lands there, and its answers come back over the store's
//! own channel with a wake-up on the shard's eventfd. A fleet on the in-memory store never
//! gives that thread any work; it sleeps in `epoll_wait` for the life of the process.

use std::sync::OnceLock;

use tokio::runtime::Handle;

static HANDLE: OnceLock<Option<Handle>> = OnceLock::new();

/// The store runtime's handle, `None` if it could not be started (logged once).
pub(super) fn handle() -> Option<&'static Handle> {
    HANDLE.get_or_init(start).as_ref()
}

fn start() -> Option<Handle> {
    let (tx, rx) = std::sync::mpsc::channel();
    let no_runtime_tx = tx.clone();
    let spawned = crate::tokio_thread::spawn(
        "ticket-store",
        move || async move {
            let _ = tx.send(Some(Handle::current()));
            std::future::pending::<()>().await;
        },
        move |e| {
            tracing::warn!(error = %e, "the ticket-store runtime could not start");
            let _ = no_runtime_tx.send(None);
        },
    );
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "the ticket-store thread could not start");
        return None;
    }
    rx.recv().ok().flatten()
}
