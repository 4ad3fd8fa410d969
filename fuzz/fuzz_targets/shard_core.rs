//! Fuzzes a `ShardCore` with arbitrary interleavings of completions: connects that succeed
//! or fail, reads of arbitrary bytes (or of valid server frames), closes, write completions
//! in any order, ticket answers, sink acceptances and refusals, a stop, and clock steps.
//! Nothing may panic or hang, the core's gauges must stay consistent with its devices, and a
//! core with work left must always name a next deadline.
//!
//! Input layout: byte 0 configures (bit 0: a sink; bit 1: a rate of 1,000/s instead of all
//! at once; bits 2-3: 1-4 devices); then ops, each a byte `op` and its arguments:
//! - `0x00..=0x3F`: the next `op + 1` bytes are read on the pending connection `arg`;
//! - `0x40`: connect completes (oldest pending); `0x41`: connect fails; `0x42`: close;
//!   `0x43`: oldest write done, `0x44`: oldest write failed; `0x45`: answer the oldest ticket
//!   load with none, `0x46` with a ticket; `0x47`: the sink takes the oldest record;
//!   `0x48`: the sink is full; `0x49`: stop; `0x4A`: a valid FastConnectOk / HandshakeOk-less
//!   OK frame on the newest connection;
//! - `0x80..=0xFF`: end the turn `(op & 0x7F) * 100` ms later.

#![no_main]

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use mpush_fleet::crypto::AesCipher;
use mpush_fleet::device::{DeviceConfig, Now};
use mpush_fleet::proto::message::FastConnectOk;
use mpush_fleet::proto::pipeline::Encoder;
use mpush_fleet::proto::{Flags, MsgId};
use mpush_fleet::shard::core::{ConnId, CoreConfig, Io, ShardCore, SinkToken, TicketOp};
use mpush_fleet::tickets::format::ClientTicket;

const WALL: i64 = 1_764_115_200_000;

fn device_cfg() -> Arc<DeviceConfig> {
    static CFG: OnceLock<Arc<DeviceConfig>> = OnceLock::new();
    CFG.get_or_init(|| Arc::new(DeviceConfig::default())).clone()
}

#[derive(Default)]
struct Driver {
    connecting: VecDeque<ConnId>,
    open: Vec<ConnId>,
    writes: VecDeque<ConnId>,
    loads: VecDeque<u32>,
    sink: VecDeque<SinkToken>,
}

impl Driver {
    fn take_output(&mut self, core: &mut ShardCore, sink: bool) {
        while let Some(item) = core.peek_delivery() {
            if !sink || self.sink.len() >= 4 {
                core.sink_full();
                break;
            }
            self.sink.push_back(item.token);
            core.pop_delivery();
        }
        while let Some(io) = core.poll_io() {
            match io {
                Io::Connect { conn, .. } => self.connecting.push_back(conn),
                Io::Write { conn, data } => {
                    assert!(!data.is_empty(), "empty write");
                    self.writes.push_back(conn);
                }
                Io::Shutdown(conn) => self.open.retain(|c| *c != conn),
                Io::PauseRead(_) | Io::ResumeRead(_) => {}
            }
        }
        while let Some(op) = core.poll_ticket() {
            if let TicketOp::Load(d) = op {
                self.loads.push_back(d);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&config, mut ops)) = data.split_first() else {
        return;
    };
    let sink = config & 1 != 0;
    let cfg = CoreConfig {
        first_device: 10,
        devices: 1 + u32::from((config >> 2) & 3),
        rate_per_sec: if config & 2 != 0 { 1_000.0 } else { 0.0 },
        servers: vec!["127.0.0.1:3000".parse().unwrap()],
        sources: Vec::new(),
        device: device_cfg(),
        seed: 3,
        sink,
        drain_timeout_ms: 2_000,
        admission: Default::default(),
        plan: Default::default(),
        upstream: Default::default(),
    };
    let mut ms = 0u64;
    let now = |ms: u64| Now::at_ms(ms, WALL);
    let mut core = ShardCore::new(cfg, now(ms));
    let mut d = Driver::default();
    let mut turns = 0u32;
    while let Some((&op, rest)) = ops.split_first() {
        ops = rest;
        let t = now(ms);
        match op {
            0x00..=0x3F => {
                let n = (usize::from(op) + 1).min(ops.len());
                let (bytes, rest) = ops.split_at(n);
                ops = rest;
                if let Some(&conn) = d.open.last() {
                    let mut buf = BytesMut::from(bytes);
                    let want = core.handle_read(t, conn, &mut buf);
                    assert!(want > 0);
                    assert!(buf.is_empty(), "the buffer comes back empty");
                }
            }
            0x40 => {
                if let Some(conn) = d.connecting.pop_front() {
                    d.open.push(conn);
                    core.handle_connected(t, conn);
                }
            }
            0x41 => {
                if let Some(conn) = d.connecting.pop_front() {
                    core.handle_connect_failed(t, conn);
                }
            }
            0x42 => {
                if let Some(conn) = d.open.pop() {
                    core.handle_closed(t, conn);
                }
            }
            0x43 | 0x44 => {
                if let Some(conn) = d.writes.pop_front() {
                    core.handle_write_done(t, conn, op == 0x43);
                }
            }
            0x45 | 0x46 => {
                if let Some(dev) = d.loads.pop_front() {
                    let ticket = (op == 0x46).then(|| ClientTicket {
                        session_id: "s".into(),
                        expire_time_ms: WALL + 86_400_000,
                        cipher: AesCipher::new([7; 16], [9; 16]),
                    });
                    core.handle_ticket(t, dev, ticket);
                }
            }
            0x47 => {
                if let Some(token) = d.sink.pop_front() {
                    core.handle_sink_took(t, token);
                }
            }
            0x48 => core.sink_full(),
            0x49 => core.handle_stop(t),
            0x4A => {
                if let Some(&conn) = d.open.last() {
                    let mut wire = BytesMut::new();
                    let ok = FastConnectOk { heartbeat: 1_000 };
                    Encoder::default().write_raw(&mut wire, &ok, MsgId(1), Flags::NONE);
                    let _ = core.handle_read(t, conn, &mut wire);
                }
            }
            0x4B..=0x7F => {}
            0x80..=0xFF => {
                ms += u64::from(op & 0x7F) * 100;
                core.handle_timeout(now(ms));
                turns += 1;
                if let Some(next) = core.poll_timeout() {
                    // A deadline in the past would make a driver spin.
                    assert!(next.0 >= ms, "{next:?} < {ms}");
                }
            }
        }
        d.take_output(&mut core, sink);
        let c = &core.stats().counters;
        assert!(c.online >= 0 && c.connections >= 0 && c.online <= c.connections, "{c:?}");
    }
    // The turn after the last input never spins: at most a bounded number of turns reach
    // the next deadline.
    for _ in 0..8 {
        match core.poll_timeout() {
            Some(next) if next.0 <= ms + 600_000 => {
                ms = ms.max(next.0);
                core.handle_timeout(now(ms));
                d.take_output(&mut core, sink);
            }
            _ => break,
        }
    }
    let _ = turns;
});
