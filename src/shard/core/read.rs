//! Bytes in: frames decoded straight from the driver's read buffer and handed to the device
//! one by one, in order, before anything that came after them.

use bytes::BytesMut;

use super::io::ConnId;
use super::{ShardCore, IDLE_READ};
use crate::device::Now;
use crate::proto::Unit;

impl ShardCore {
    /// Bytes arrived on `conn`. Whole frames are taken out of `data` (as zero-copy slices)
    /// and handed to the device in order; a partial frame is kept by the core. Returns how
    /// many bytes the next read should ask for: small while idle, the rest of a frame while
    /// one is arriving.
    pub fn handle_read(&mut self, now: Now, conn: ConnId, data: &mut BytesMut) -> usize {
        self.now = now;
        let Some(c) = self.current_conn(conn) else {
            data.clear();
            return IDLE_READ;
        };
        // Decode straight from the driver's buffer unless a partial frame is waiting.
        let mut rx = match c.rx.take() {
            None => std::mem::take(data),
            Some(mut partial) => {
                partial.extend_from_slice(data);
                data.clear();
                *partial
            }
        };
        loop {
            match self.decoder.decode(&mut rx) {
                Ok(Some(Unit::Heartbeat)) => {
                    let now = self.now;
                    let s = &mut self.slots[conn.slot as usize];
                    s.device.handle_heartbeat(now, &mut self.shared);
                    self.drive(conn.slot);
                }
                Ok(Some(Unit::Frame(frame))) => {
                    let now = self.now;
                    let s = &mut self.slots[conn.slot as usize];
                    s.device.handle_frame(now, &mut self.shared, frame);
                    self.drive(conn.slot);
                }
                Ok(None) => break,
                Err(e) => {
                    let now = self.now;
                    let s = &mut self.slots[conn.slot as usize];
                    s.device.handle_stream_error(now, &mut self.shared, e);
                    self.drive(conn.slot);
                    rx.clear();
                    break;
                }
            }
            if self.current_conn(conn).is_none() {
                // The device gave this connection up: what follows is for nobody.
                rx.clear();
                break;
            }
        }
        let needed = self.decoder.bytes_needed(&rx).unwrap_or(0);
        let want = needed.saturating_sub(rx.len()).max(IDLE_READ);
        match self.current_conn(conn) {
            Some(c) if !rx.is_empty() => c.rx = Some(Box::new(rx.split())),
            _ => {}
        }
        // Hand the (now empty) buffer back so the driver reads into it again.
        rx.clear();
        *data = rx;
        want
    }
}
