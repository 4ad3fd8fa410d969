//! The shell of one connection: a tokio task that owns the socket, feeds the sans-IO
//! [`ServerSession`] and carries out its effects.
//!
//! Memory per idle connection is kept small: the task waits on socket readiness with no
//! buffer; the read buffer is allocated when bytes arrive, grown only while a large frame is
//! arriving (the decoder says how many bytes the frame needs), and released whenever it
//! drains. Writes go straight from the task (`write_all`), so no writer task or queue exists
//! per connection; commands from elsewhere (push, kick, faults) arrive in an
//! [`super::inbox`], which allocates nothing while empty (a tokio channel allocates 3 KiB).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::inbox::{inbox, InboxHandle, InboxReceiver};
use super::session::{CloseReason, Effect, ServerSession, SessionLookup, Tick};
use super::shared::{CapacityKind, ConnCmd, ConnId, Shared};
use crate::proto::{Cmd, FrameDecoder, Unit};

/// Smallest read: enough for a heartbeat burst or a small frame in one call.
const READ_CHUNK: usize = 512;

/// Runs one connection to its end.
pub(crate) async fn run(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    // The registry's sender alone keeps the inbox open (its end is the shutdown).
    let (tx, me, cmds) = inbox();
    let id = shared.add_conn(peer, tx);
    let session = ServerSession::new(shared.cfg.clone(), shared.now());
    let decoder = FrameDecoder::new(shared.cfg.limits.max_body);
    let mut conn = Conn {
        shared,
        id,
        peer,
        me,
        stream,
        session,
        decoder,
        out: BytesMut::new(),
    };
    let reason = conn.drive(cmds, shutdown).await;
    tracing::debug!(conn = id.0, %peer, reason = reason.name(), "connection closed");
    // Its routes in Redis read offline before the close is counted (8.2).
    if let Some(remote) = conn.shared.remote.get() {
        for (user, ct) in conn.shared.routes_of_conn(id) {
            remote.unbind(&user, ct, id).await;
        }
    }
    // Counted before the socket closes, so a peer that sees the close sees the counters.
    conn.shared.remove_conn(id, reason);
    let _ = conn.stream.shutdown().await;
}

struct Conn {
    shared: Arc<Shared>,
    id: ConnId,
    peer: SocketAddr,
    /// For answers that arrive later (forwarded HTTP_PROXY requests).
    me: InboxHandle,
    stream: TcpStream,
    session: ServerSession,
    decoder: FrameDecoder,
    out: BytesMut,
}

impl Conn {
    async fn drive(
        &mut self,
        mut cmds: InboxReceiver,
        mut shutdown: watch::Receiver<bool>,
    ) -> CloseReason {
        let mut rx = BytesMut::new();
        loop {
            // Only a closed session has no timeout, and a closed session has returned.
            let deadline = self.session.poll_timeout().unwrap_or_default();
            let deadline = tokio::time::Instant::from_std(self.shared.instant_of(deadline));
            let step = tokio::select! {
                biased;
                _ = shutdown.changed() => Err(CloseReason::Shutdown),
                cmd = cmds.recv() => match cmd {
                    Some(cmd) => self.on_cmd(cmd).await,
                    None => Err(CloseReason::Shutdown),
                },
                ready = self.stream.readable() => match ready {
                    Ok(()) => self.on_readable(&mut rx).await,
                    Err(_) => Err(CloseReason::IoError),
                },
                () = tokio::time::sleep_until(deadline) => {
                    self.session.handle_timeout(self.shared.now());
                    self.flush_and_apply().await
                }
            };
            if let Err(reason) = step {
                return reason;
            }
        }
    }

    async fn on_cmd(&mut self, cmd: ConnCmd) -> Result<(), CloseReason> {
        match cmd {
            ConnCmd::Push {
                msg_id,
                content,
                flags,
            } => {
                self.session.handle_push(msg_id, content, flags);
            }
            ConnCmd::Kick { msg_id, user_id } => {
                self.session.handle_kick(msg_id, &user_id);
            }
            ConnCmd::GatewayPush {
                msg_id,
                content,
                flags,
                done,
            } => {
                let sent = self.session.handle_gateway_push(msg_id, content, flags);
                let res = self.flush_and_apply().await;
                done.report(sent && res.is_ok());
                return res;
            }
            ConnCmd::Garbage => self.session.handle_garbage(),
            ConnCmd::HttpAnswer {
                msg_id,
                response,
                raw,
            } => self.session.handle_http_response(msg_id, response, raw),
            ConnCmd::Close(reason) => return Err(reason),
        }
        self.flush_and_apply().await
    }

    async fn on_readable(&mut self, rx: &mut BytesMut) -> Result<(), CloseReason> {
        let needed = self.decoder.bytes_needed(rx).unwrap_or(0);
        rx.reserve(needed.saturating_sub(rx.len()).max(READ_CHUNK));
        match self.stream.try_read_buf(rx) {
            Ok(0) => return Err(CloseReason::PeerClosed),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(_) => return Err(CloseReason::PeerClosed),
        }
        self.session
            .set_echo_heartbeats(self.shared.faults().heartbeat_echo);
        loop {
            let unit = match self.decoder.decode(rx) {
                Ok(Some(unit)) => unit,
                Ok(None) => break,
                Err(e) => {
                    self.session.handle_decode_error(&e);
                    break;
                }
            };
            let mut now = self.shared.now();
            match unit {
                Unit::Heartbeat => self.session.handle_heartbeat(now),
                Unit::Frame(frame) => {
                    if let Some(kind) = capacity_kind(frame.cmd) {
                        now = self.wait_for_capacity(kind, now).await;
                    }
                    let wall_ms = wall_clock_ms();
                    self.session
                        .handle_frame(now, wall_ms, &mut rand::thread_rng(), frame);
                }
            }
            // Effects are applied unit by unit: a fast connect's lookup completes before
            // the next unit is handled, as in the real server.
            self.apply_effects().await?;
        }
        if rx.is_empty() {
            // Idle connections hold no read buffer.
            *rx = BytesMut::new();
        }
        self.flush_and_apply().await
    }

    /// The capacity model: waits until the bucket lets this request run; returns the time
    /// after the wait. The task does nothing else meanwhile, so the connection's later input
    /// (and commands for it) wait behind the request, as on a server busy decrypting; other
    /// connections' tasks carry on.
    async fn wait_for_capacity(&mut self, kind: CapacityKind, now: Tick) -> Tick {
        let at = self.shared.reserve_capacity(kind, now);
        if at <= now {
            return now;
        }
        tokio::time::sleep_until(tokio::time::Instant::from_std(self.shared.instant_of(at))).await;
        self.shared.now()
    }

    async fn flush_and_apply(&mut self) -> Result<(), CloseReason> {
        let closing = self.apply_effects().await;
        self.flush().await?;
        closing
    }

    async fn flush(&mut self) -> Result<(), CloseReason> {
        if !self.session.poll_transmit(&mut self.out) {
            return Ok(());
        }
        let delay = self.shared.faults().delay_ms;
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let res = self.stream.write_all(&self.out).await;
        self.out.clear();
        if self.out.capacity() > 64 * 1024 {
            self.out = BytesMut::new();
        }
        res.map_err(|_| CloseReason::IoError)
    }

    /// Carries out effects until none remain; a `Close` is returned after the bytes written
    /// so far are flushed (ERROR then close, as `ErrorMessage.close()`).
    async fn apply_effects(&mut self) -> Result<(), CloseReason> {
        while let Some(effect) = self.session.poll_effect() {
            match effect {
                Effect::Close(reason) => {
                    self.flush().await?;
                    return Err(reason);
                }
                Effect::LoadSession { session_id } => {
                    let lookup = match self.shared.store.get(&session_id).await {
                        Ok(Some(s)) => SessionLookup::Found(s),
                        Ok(None) => SessionLookup::Missing,
                        Err(e) => {
                            tracing::warn!(error = %e, "session lookup failed");
                            SessionLookup::Failed
                        }
                    };
                    self.session.handle_session_loaded(lookup);
                }
                Effect::StoreSession {
                    session_id,
                    session,
                    ttl_secs,
                } => {
                    let ttl = Duration::from_secs(u64::from(ttl_secs));
                    if let Err(e) = self.shared.store.put(&session_id, &session, ttl).await {
                        tracing::warn!(error = %e, "session store failed");
                    }
                }
                Effect::RegisterRoute {
                    user_id,
                    client_type,
                    tags,
                } => {
                    if let Some(remote) = self.shared.remote.get() {
                        // In Redis before the bind's OK is flushed, as the real server.
                        let device = self.session.device_id().unwrap_or_default().to_owned();
                        let os = self.session.os_name().unwrap_or_default().to_owned();
                        remote
                            .bind(&user_id, client_type, self.id, &device, &os)
                            .await;
                    }
                    self.shared
                        .register_route(user_id, client_type, self.id, tags);
                }
                Effect::UnregisterRoute {
                    user_id,
                    client_type,
                } => {
                    if let Some(remote) = self.shared.remote.get() {
                        remote.unbind(&user_id, client_type, self.id).await;
                    }
                    self.shared.unregister_route(user_id, client_type, self.id);
                }
                Effect::Acked(msg_id) => {
                    self.shared.record_ack(msg_id, self.id, wall_clock_ms());
                }
                Effect::HttpProxy { msg_id, request } => {
                    // The request runs beside the connection, which goes on meanwhile; its
                    // answer comes back as a command, whenever it is ready.
                    if let Some(cfg) = self.shared.cfg.http_proxy.clone() {
                        let (me, peer) = (self.me.clone(), self.peer);
                        tokio::spawn(async move {
                            let f = super::http_proxy::forward(&cfg, request, peer).await;
                            // Fails, harmlessly, when the connection has gone meanwhile.
                            let _ = me.send(ConnCmd::HttpAnswer {
                                msg_id,
                                response: f.response,
                                raw: f.raw,
                            });
                        });
                    }
                }
                Effect::Event(ev) => self.shared.count(ev),
            }
        }
        Ok(())
    }
}

/// The capacity bucket a frame draws from: handshakes (the session decrypts them with RSA)
/// and fast connects (the session looks the reusable session up). The command byte alone
/// decides, before the body is decrypted or parsed: a server pays for a bad handshake too.
fn capacity_kind(cmd: u8) -> Option<CapacityKind> {
    match Cmd::from_u8(cmd)? {
        Cmd::Handshake => Some(CapacityKind::Handshake),
        Cmd::FastConnect => Some(CapacityKind::FastConnect),
        _ => None,
    }
}

/// Wall-clock ms since the epoch (the session id's time and the expire time).
pub(crate) fn wall_clock_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
