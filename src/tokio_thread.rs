//! A named thread that runs one future on a current-thread tokio runtime of its own.
//!
//! The control plane's tokio sides (discovery, the `--push-rate` pusher), the remote sinks'
//! thread and the ring driver's shared ticket-store runtime each need tokio without putting a
//! runtime on a shard or on the control plane's own thread, so each gets a thread like this. Each caller names
//! its thread and says what happens when the runtime cannot be built (its own error
//! message, sent where its starter waits for it); that is why the failure is a closure of
//! the caller's, not an error returned here after the thread is already running.

use std::future::Future;
use std::io;
use std::thread::JoinHandle;

/// Spawns thread `name`, which builds a current-thread tokio runtime with every driver
/// enabled and runs the future `run` makes on it to its end; the thread's result is the
/// future's output. If the runtime cannot be built, `no_runtime` is called with the error
/// instead and its value is the thread's result.
///
/// Only one of the two closures is ever called; the other is dropped before the thread
/// goes on (so a channel sender it holds is gone, and its receiver sees the disconnect as
/// soon as the closure that ran drops its own).
///
/// # Errors
///
/// The thread cannot be spawned (both closures are dropped).
pub(crate) fn spawn<T, Fut>(
    name: &str,
    run: impl FnOnce() -> Fut + Send + 'static,
    no_runtime: impl FnOnce(io::Error) -> T + Send + 'static,
) -> io::Result<JoinHandle<T>>
where
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => {
                    drop(no_runtime);
                    rt.block_on(run())
                }
                Err(e) => {
                    drop(run);
                    no_runtime(e)
                }
            }
        })
}
