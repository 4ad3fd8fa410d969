//! The end-to-end push probe of `run --push-rate`: the fleet's own pushes carry a small
//! header in their content, the core recognises it in every delivered push, and notes a
//! receipt (sequence, time) that the driver batches to the control plane with its report.
//! The control plane keeps the per-push ledger; the core keeps nothing per push except, for a
//! BIZ_ACK push that waits for a sink, which probe it belongs to until the sink took it.
//!
//! Header (37 ASCII bytes, then any padding): `MPF1`, the sequence as 16 lower-case hex
//! digits, the send time as 16 hex digits (µs since the Unix epoch, so that a receipt of
//! another run or process is told apart), `;`. Checking a delivery costs a 4-byte compare
//! unless it carries the header, and parsing it allocates nothing.

use std::collections::HashMap;

use super::io::ConnId;
use super::sink::SinkToken;
use super::ShardCore;
use crate::device::{Delivery, Now};
use crate::proto::Flags;

/// The header's first bytes.
pub const MAGIC: &[u8; 4] = b"MPF1";
/// The header's length.
pub const HEADER_LEN: usize = 37;
/// Receipts held for the driver at most; past that (nobody drains them) new ones are dropped
/// and counted, so a core without a control plane reading them never grows without bound.
const MAX_HELD: usize = 1 << 20;

/// Writes the header of push `seq` sent at `sent_wall_us` into `out`.
pub fn write_header(out: &mut Vec<u8>, seq: u64, sent_wall_us: u64) {
    use std::io::Write as _;
    out.extend_from_slice(MAGIC);
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{seq:016x}{sent_wall_us:016x};");
}

/// The (sequence, send time) of content that starts with the header; `None` otherwise.
pub fn parse_header(content: &[u8]) -> Option<(u64, u64)> {
    if content.len() < HEADER_LEN || &content[..4] != MAGIC || content[HEADER_LEN - 1] != b';' {
        return None;
    }
    Some((hex16(&content[4..20])?, hex16(&content[20..36])?))
}

fn hex16(digits: &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for &d in digits {
        let n = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        v = (v << 4) | u64::from(n);
    }
    Some(v)
}

/// What a receipt says happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReceiptKind {
    /// A device received the push.
    Received,
    /// Its device acked it (AUTO_ACK on receipt; BIZ_ACK once the application or sink took it).
    Acked,
}

/// One probe push seen by the core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PushReceipt {
    /// The header's sequence.
    pub seq: u64,
    /// The header's send time, µs since the Unix epoch.
    pub sent_wall_us: u64,
    /// When, on the core's clock ([`Now::us`]).
    pub at_us: u64,
    /// Received or acked.
    pub kind: ReceiptKind,
}

/// The core's side of the probe.
#[derive(Debug, Default)]
pub(super) struct PushProbe {
    held: Vec<PushReceipt>,
    /// BIZ_ACK probe pushes handed to the sink, by (connection, message id), until it took them.
    awaiting_sink: HashMap<(ConnId, i32), (u64, u64)>,
    dropped: u64,
}

impl PushProbe {
    fn note(&mut self, r: PushReceipt) {
        if self.held.len() < MAX_HELD {
            self.held.push(r);
        } else {
            self.dropped += 1;
        }
    }

    /// A delivered push on `conn`; `sink`: whether a BIZ_ACK push waits for the sink.
    pub(super) fn on_deliver(&mut self, conn: Option<ConnId>, d: &Delivery, now: Now, sink: bool) {
        let Some((seq, sent_wall_us)) = parse_header(&d.content) else {
            return;
        };
        let at = |kind| PushReceipt {
            seq,
            sent_wall_us,
            at_us: now.us,
            kind,
        };
        self.note(at(ReceiptKind::Received));
        let acked_now = d.flags.contains(Flags::AUTO_ACK) || (d.ack_on_take && !sink);
        if acked_now {
            self.note(at(ReceiptKind::Acked));
        } else if d.ack_on_take {
            if let Some(conn) = conn {
                self.awaiting_sink
                    .insert((conn, d.msg_id.0), (seq, sent_wall_us));
            }
        }
    }

    /// The sink took the record of `token` (its ack goes out now, if it is a BIZ_ACK push).
    pub(super) fn on_sink_took(&mut self, token: &SinkToken, now: Now) {
        if self.awaiting_sink.is_empty() || !token.ack {
            return;
        }
        if let Some((seq, sent_wall_us)) = self.awaiting_sink.remove(&(token.conn, token.msg_id)) {
            self.note(PushReceipt {
                seq,
                sent_wall_us,
                at_us: now.us,
                kind: ReceiptKind::Acked,
            });
        }
    }
}

impl ShardCore {
    /// Moves the probe receipts noted since the last call into `out` (the driver sends them
    /// to the control plane with its report). Returns how many were dropped because nobody
    /// took them in time, since the last call.
    pub fn take_push_receipts(&mut self, out: &mut Vec<PushReceipt>) -> u64 {
        out.append(&mut self.probe.held);
        std::mem::take(&mut self.probe.dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_other_content_is_not_a_probe() {
        let mut v = Vec::new();
        write_header(&mut v, 0x1234, 1_764_000_000_123_456);
        assert_eq!(v.len(), HEADER_LEN);
        v.extend_from_slice(b"padding");
        assert_eq!(parse_header(&v), Some((0x1234, 1_764_000_000_123_456)));
        assert_eq!(parse_header(b"{\"content\":\"x\"}"), None);
        assert_eq!(parse_header(&v[..HEADER_LEN - 1]), None);
        let mut bad = v.clone();
        bad[10] = b'G';
        assert_eq!(parse_header(&bad), None);
        let mut bad = v;
        bad[HEADER_LEN - 1] = b'x';
        assert_eq!(parse_header(&bad), None);
    }
}
