//! Whether Redis is reachable, as the stores of one fleet see it together: an outage is
//! logged once when it starts and once when it ends, not once per shard or per device.

use std::sync::atomic::{AtomicBool, Ordering};

use fred::prelude::{Error as FredError, ErrorKind};

/// Whether Redis is reachable, shared by the stores of one fleet so that an outage is logged
/// once, not once per shard or per device.
#[derive(Debug, Default)]
pub(super) struct Health {
    down: AtomicBool,
}

impl Health {
    pub(super) fn failed(&self, error: &FredError) {
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                error = %error,
                "Redis ticket store unreachable: devices handshake and tickets are not saved \
                 until it is back"
            );
        }
    }

    pub(super) fn answered(&self) {
        if self.down.load(Ordering::Relaxed) && self.down.swap(false, Ordering::Relaxed) {
            tracing::info!("Redis ticket store reachable again: tickets load and save again");
        }
    }
}

/// Whether an error means Redis is unreachable or too slow (an outage to log), rather than a
/// refusal of one command (a key of another type, say).
pub(super) fn is_outage(error: &FredError) -> bool {
    matches!(
        error.kind(),
        ErrorKind::IO
            | ErrorKind::Canceled
            | ErrorKind::Timeout
            | ErrorKind::Backpressure
            | ErrorKind::Routing
            | ErrorKind::Cluster
            | ErrorKind::Sentinel
            | ErrorKind::Auth
            | ErrorKind::Config
            | ErrorKind::Url
            | ErrorKind::Protocol
            | ErrorKind::Unknown
    )
}
