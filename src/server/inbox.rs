//! A connection's inbox: the commands other tasks send it (pushes, kicks, faults, forwarded
//! HTTP answers), in order.
//!
//! Why not a tokio `mpsc::unbounded_channel`: tokio allocates the channel's first block of
//! 32 slots when the channel is created, 32 x 96 bytes of `ConnCmd` = 3 KiB per connection
//! for a queue that is empty nearly always, plus ~300 bytes of channel state; a third of a
//! `serve` process's memory per idle session (benches/million.sh). This inbox is a
//! `VecDeque` (which allocates nothing while empty) and a `Notify`, about 100 bytes.
//!
//! Closing follows the channel it replaces: the registry holds the one [`InboxSender`], and
//! dropping it (the connection forgotten, or the server shutting down) makes [`Inbox::recv`]
//! return `None`; once the receiving connection has ended, every send fails.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use super::shared::ConnCmd;

#[derive(Default)]
struct Queue {
    cmds: VecDeque<ConnCmd>,
    closed: bool,
}

/// The receiving side, owned by the connection's task.
#[derive(Default)]
pub(crate) struct Inbox {
    queue: Mutex<Queue>,
    notify: Notify,
}

/// The registry's sender: the inbox is open while it lives.
pub(crate) struct InboxSender(Arc<Inbox>);

/// A sender that does not keep the inbox open (for answers that arrive later).
#[derive(Clone)]
pub(crate) struct InboxHandle(Arc<Inbox>);

/// The connection's end of its inbox: closes it when the connection ends.
pub(crate) struct InboxReceiver(Arc<Inbox>);

/// A new inbox: the registry's sender, a later-answers handle, and the connection's end.
pub(crate) fn inbox() -> (InboxSender, InboxHandle, InboxReceiver) {
    let inbox = Arc::new(Inbox::default());
    (
        InboxSender(inbox.clone()),
        InboxHandle(inbox.clone()),
        InboxReceiver(inbox),
    )
}

impl Inbox {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Every critical section is one queue operation: a poisoned lock is still consistent.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `cmd`; gives it back when the inbox is closed.
    fn send(&self, cmd: ConnCmd) -> Result<(), ConnCmd> {
        let mut q = self.lock();
        if q.closed {
            return Err(cmd);
        }
        q.cmds.push_back(cmd);
        drop(q);
        // A stored permit when no one waits: the next `recv` finds the command anyway.
        self.notify.notify_one();
        Ok(())
    }

    fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_one();
    }
}

impl std::fmt::Debug for InboxSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InboxSender")
    }
}

impl InboxSender {
    /// Queues `cmd` for the connection; `Err` once it has ended.
    pub(crate) fn send(&self, cmd: ConnCmd) -> Result<(), ConnCmd> {
        self.0.send(cmd)
    }
}

impl Drop for InboxSender {
    fn drop(&mut self) {
        self.0.close();
    }
}

impl InboxHandle {
    /// Queues `cmd` for the connection; `Err` once it has ended or been forgotten.
    pub(crate) fn send(&self, cmd: ConnCmd) -> Result<(), ConnCmd> {
        self.0.send(cmd)
    }
}

impl InboxReceiver {
    /// The next command, in order; `None` once the inbox is closed and empty. Cancel-safe: a
    /// dropped call takes nothing from the queue.
    pub(crate) async fn recv(&mut self) -> Option<ConnCmd> {
        loop {
            {
                let mut q = self.0.lock();
                if let Some(cmd) = q.cmds.pop_front() {
                    return Some(cmd);
                }
                if q.closed {
                    return None;
                }
            }
            self.0.notify.notified().await;
        }
    }
}

impl Drop for InboxReceiver {
    fn drop(&mut self) {
        let mut q = self.0.lock();
        q.closed = true;
        q.cmds.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::CloseReason;

    fn close_cmd() -> ConnCmd {
        ConnCmd::Close(CloseReason::Shutdown)
    }

    #[tokio::test]
    async fn commands_arrive_in_order_and_dropping_the_sender_closes() {
        let (tx, later, mut rx) = inbox();
        tx.send(ConnCmd::Garbage).unwrap();
        later.send(close_cmd()).unwrap();
        assert!(matches!(rx.recv().await, Some(ConnCmd::Garbage)));
        assert!(matches!(rx.recv().await, Some(ConnCmd::Close(_))));
        drop(tx);
        assert!(rx.recv().await.is_none());
        assert!(
            later.send(ConnCmd::Garbage).is_err(),
            "closed for the handle too"
        );
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken() {
        let (tx, _later, mut rx) = inbox();
        let task = tokio::spawn(async move { rx.recv().await.is_some() });
        tokio::task::yield_now().await;
        tx.send(ConnCmd::Garbage).unwrap();
        assert!(task.await.unwrap());
    }

    #[test]
    fn sends_fail_once_the_connection_ended() {
        let (tx, later, rx) = inbox();
        drop(rx);
        assert!(tx.send(ConnCmd::Garbage).is_err());
        assert!(later.send(ConnCmd::Garbage).is_err());
    }

    #[test]
    fn an_empty_inbox_is_small() {
        // What each connection pays while nothing is queued (the `Arc`'s two counts on top).
        assert!(
            std::mem::size_of::<Inbox>() <= 128,
            "{}",
            std::mem::size_of::<Inbox>()
        );
    }
}
