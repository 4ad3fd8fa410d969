//! The pusher's gateway connections: `per_addr` to each gateway address, opened on first use
//! and after a close, each with the bytes encoded for it this turn. Replies are read by a
//! task per connection and come back to the send loop over one channel.

use std::collections::HashMap;
use std::net::SocketAddr;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::PusherExit;
use crate::gateway::driver::{read_replies, FromConn};

pub(super) struct PoolConn {
    addr: SocketAddr,
    pub(super) writer: Option<OwnedWriteHalf>,
    pub(super) out: BytesMut,
}

/// Gateway connections, `per_addr` to each address, opened on first use and after a close.
pub(super) struct Pool {
    pub(super) conns: Vec<PoolConn>,
    pub(super) by_addr: HashMap<SocketAddr, (Vec<usize>, usize)>,
    pub(super) per_addr: usize,
    pub(super) tx: mpsc::UnboundedSender<FromConn>,
    pub(super) exit: PusherExit,
}

impl Pool {
    /// The connection the next push to `addr` goes on.
    pub(super) fn pick(&mut self, addr: SocketAddr) -> usize {
        let (list, next) = self.by_addr.entry(addr).or_insert_with(|| {
            let first = self.conns.len();
            for _ in 0..self.per_addr {
                self.conns.push(PoolConn {
                    addr,
                    writer: None,
                    out: BytesMut::new(),
                });
            }
            ((first..first + self.per_addr).collect(), 0)
        });
        let i = list[*next % list.len()];
        *next = next.wrapping_add(1);
        i
    }

    /// Writes every connection's pending bytes, connecting first where needed. A failed
    /// connect or write drops the bytes: their requests end as "no reply" at the timeout.
    pub(super) async fn flush(&mut self) {
        for i in 0..self.conns.len() {
            if self.conns[i].out.is_empty() {
                continue;
            }
            if self.conns[i].writer.is_none() {
                match TcpStream::connect(self.conns[i].addr).await {
                    Ok(stream) => {
                        let _ = stream.set_nodelay(true);
                        let (rd, wr) = stream.into_split();
                        tokio::spawn(read_replies(rd, i as u64, self.tx.clone()));
                        self.conns[i].writer = Some(wr);
                    }
                    Err(_) => self.exit.connect_failures += 1,
                }
            }
            let c = &mut self.conns[i];
            if let Some(w) = c.writer.as_mut() {
                if w.write_all(&c.out).await.is_err() {
                    c.writer = None;
                }
            }
            c.out.clear();
        }
    }
}
