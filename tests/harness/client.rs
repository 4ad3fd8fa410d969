//! A plain blocking MPUSH client, written from PROTOCOL.md section 6 on `std::net::TcpStream`
//! and the library's `proto` and `crypto` modules. Not a fleet engine: one connection, one
//! thing at a time, every read under a timeout so a hung server fails the test.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use mpush_fleet::crypto::{mix_keys, AesCipher, RsaEncryptor};
use mpush_fleet::proto::message::{
    Ack, Bind, ErrorReply, FastConnect, Handshake, HandshakeOk, Message, OkReply, ServerMessage,
    Unbind, UserBinding,
};
use mpush_fleet::proto::pipeline::Encoder;
use mpush_fleet::proto::{
    encode_heartbeat, open_body, DecodeError, Flags, Frame, FrameDecoder, MsgId, Unit,
};
use rand::RngCore;

/// A read that takes longer than this fails the test instead of hanging it.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What the client keeps for a fast connect (the `mp:fcd:` ticket's content).
#[derive(Clone, Debug)]
pub struct Ticket {
    /// The device the session belongs to.
    pub device_id: String,
    /// The resumption id.
    pub session_id: String,
    /// When it expires, ms since the epoch.
    pub expire_time: i64,
    /// The session cipher.
    pub cipher: AesCipher,
}

/// One unit from the server, decoded.
#[derive(Debug)]
pub enum Incoming {
    /// A `0xDF` byte.
    Heartbeat,
    /// A frame and its decoded message.
    Message(Frame, ServerMessage),
}

/// Why a receive failed.
#[derive(Debug)]
pub enum RecvError {
    /// The server closed the connection (EOF or reset).
    Closed,
    /// Nothing arrived within [`READ_TIMEOUT`].
    TimedOut,
    /// The bytes did not decode or decrypt.
    Garbled(DecodeError),
}

/// A blocking MPUSH client connection.
pub struct Client {
    stream: TcpStream,
    rx: BytesMut,
    decoder: FrameDecoder,
    encoder: Encoder,
    cipher: Option<AesCipher>,
    next_id: i32,
    rsa: RsaEncryptor,
}

impl Client {
    /// Connects with MPUSH's default public key.
    pub fn connect(addr: SocketAddr) -> Client {
        Client::connect_with_key(addr, RsaEncryptor::mpush_default())
    }

    /// Connects with a given server public key.
    pub fn connect_with_key(addr: SocketAddr, rsa: RsaEncryptor) -> Client {
        let stream = TcpStream::connect(addr).expect("connect to the server");
        stream
            .set_read_timeout(Some(READ_TIMEOUT))
            .expect("set read timeout");
        stream.set_nodelay(true).expect("nodelay");
        Client {
            stream,
            rx: BytesMut::new(),
            decoder: FrameDecoder::new(1 << 20),
            encoder: Encoder::new(1024),
            cipher: None,
            next_id: 1,
            rsa,
        }
    }

    /// This end's address (the peer address the server sees).
    pub fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().expect("local addr")
    }

    /// The connection cipher now in use.
    pub fn cipher(&self) -> Option<&AesCipher> {
        self.cipher.as_ref()
    }

    fn next_id(&mut self) -> MsgId {
        let id = MsgId(self.next_id);
        self.next_id += 1;
        id
    }

    /// Writes raw bytes.
    pub fn write_bytes(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// "send": deflate above 1 KiB, encrypt with the connection cipher if any.
    pub fn send<M: Message>(&mut self, msg: &M, flags: Flags) -> MsgId {
        let id = self.next_id();
        let mut out = BytesMut::new();
        self.encoder
            .write(&mut out, msg, id, flags, self.cipher.as_ref());
        self.write_bytes(&out).expect("write frame");
        id
    }

    /// "sendRaw": no compression, no encryption.
    pub fn send_raw<M: Message>(&mut self, msg: &M, id: MsgId, flags: Flags) {
        let mut out = BytesMut::new();
        self.encoder.write_raw(&mut out, msg, id, flags);
        self.write_bytes(&out).expect("write frame");
    }

    /// Sends one `0xDF`.
    pub fn send_heartbeat(&mut self) {
        let mut out = BytesMut::new();
        encode_heartbeat(&mut out);
        self.write_bytes(&out).expect("write heartbeat");
    }

    /// Sends an Ack for a push (raw, header id = the push's id).
    pub fn ack(&mut self, push_id: MsgId) {
        self.send_raw(&Ack, push_id, Flags::NONE);
    }

    /// The next unit from the server.
    pub fn recv(&mut self) -> Result<Incoming, RecvError> {
        loop {
            match self.decoder.decode(&mut self.rx) {
                Ok(Some(Unit::Heartbeat)) => return Ok(Incoming::Heartbeat),
                Ok(Some(Unit::Frame(f))) => {
                    let body =
                        open_body(&f, self.cipher.as_ref(), 1 << 20).map_err(RecvError::Garbled)?;
                    let msg = ServerMessage::decode(f.cmd, body).map_err(RecvError::Garbled)?;
                    return Ok(Incoming::Message(f, msg));
                }
                Ok(None) => {}
                Err(e) => return Err(RecvError::Garbled(e)),
            }
            let mut buf = [0u8; 4096];
            match self.stream.read(&mut buf) {
                Ok(0) => return Err(RecvError::Closed),
                Ok(n) => self.rx.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(RecvError::TimedOut)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(RecvError::Closed),
            }
        }
    }

    /// The next frame's message; panics on anything else.
    pub fn recv_message(&mut self) -> (Frame, ServerMessage) {
        match self.recv() {
            Ok(Incoming::Message(f, m)) => (f, m),
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// Expects an ERROR; returns it.
    pub fn recv_error(&mut self) -> ErrorReply {
        match self.recv_message() {
            (_, ServerMessage::Error(e)) => e,
            other => panic!("expected ERROR, got {other:?}"),
        }
    }

    /// Expects an OK; returns it.
    pub fn recv_ok(&mut self) -> OkReply {
        match self.recv_message() {
            (_, ServerMessage::Ok(ok)) => ok,
            other => panic!("expected OK, got {other:?}"),
        }
    }

    /// Expects the server to close the connection, skipping whatever it sends first.
    pub fn expect_closed(&mut self) {
        loop {
            match self.recv() {
                Err(RecvError::Closed) => return,
                Err(RecvError::TimedOut) => panic!("server did not close the connection"),
                Err(RecvError::Garbled(_)) => self.rx.clear(),
                Ok(_) => {}
            }
        }
    }

    /// Handshake fields with fresh random key and iv.
    pub fn handshake_fields(device_id: &str, os_name: &str, max_heartbeat: i32) -> Handshake {
        let mut rng = rand::thread_rng();
        let mut iv = [0u8; 16];
        let mut client_key = [0u8; 16];
        rng.fill_bytes(&mut iv);
        rng.fill_bytes(&mut client_key);
        Handshake {
            device_id: device_id.into(),
            os_name: os_name.into(),
            os_version: "14".into(),
            client_version: "1.0.0".into(),
            iv,
            client_key,
            min_heartbeat: max_heartbeat,
            max_heartbeat,
            timestamp: 0,
        }
    }

    /// Sends a Handshake RSA-encrypted (CRYPTO flag) and switches to AES(clientKey, iv).
    pub fn send_handshake(&mut self, hs: &Handshake) -> MsgId {
        let id = self.next_id();
        let mut body = BytesMut::new();
        hs.encode_body(&mut body);
        let ct = self.rsa.encrypt(&mut rand::thread_rng(), &body);
        let mut out = BytesMut::new();
        mpush_fleet::proto::encode_frame(&mut out, Handshake::CMD, Flags::CRYPTO, id, &ct);
        self.write_bytes(&out).expect("write handshake");
        self.cipher = Some(AesCipher::new(hs.client_key, hs.iv));
        id
    }

    /// The whole handshake (PROTOCOL.md 6.3); returns the reply and the ticket to keep.
    pub fn handshake(&mut self, device_id: &str) -> (HandshakeOk, Ticket) {
        self.handshake_as(device_id, "android", 180_000)
    }

    /// The whole handshake with a given osName and maxHeartbeat.
    pub fn handshake_as(
        &mut self,
        device_id: &str,
        os_name: &str,
        max_heartbeat: i32,
    ) -> (HandshakeOk, Ticket) {
        let hs = Client::handshake_fields(device_id, os_name, max_heartbeat);
        let id = self.send_handshake(&hs);
        let (f, msg) = self.recv_message();
        assert_eq!(f.msg_id, id, "the reply carries the request's id");
        let ServerMessage::HandshakeOk(ok) = msg else {
            panic!("expected HandshakeOk, got {msg:?}")
        };
        let cipher = AesCipher::new(mix_keys(&hs.client_key, &ok.server_key), hs.iv);
        self.cipher = Some(cipher.clone());
        let ticket = Ticket {
            device_id: device_id.into(),
            session_id: ok.session_id.clone(),
            expire_time: ok.expire_time,
            cipher,
        };
        (ok, ticket)
    }

    /// Sends FastConnect (raw), switches to the ticket's cipher and returns the reply; on an
    /// ERROR the cipher goes back to none, so a handshake can follow on this connection.
    pub fn fast_connect(&mut self, ticket: &Ticket) -> ServerMessage {
        let fc = FastConnect {
            session_id: ticket.session_id.clone(),
            device_id: ticket.device_id.clone(),
            min_heartbeat: 180_000,
            max_heartbeat: 180_000,
        };
        let id = self.next_id();
        self.send_raw(&fc, id, Flags::NONE);
        self.cipher = Some(ticket.cipher.clone());
        let (f, msg) = self.recv_message();
        assert_eq!(f.msg_id, id);
        if matches!(msg, ServerMessage::Error(_)) {
            self.cipher = None;
        }
        msg
    }

    /// Sends Bind with the session cipher; returns its id.
    pub fn send_bind(&mut self, user_id: &str) -> MsgId {
        let bind = Bind(UserBinding {
            user_id: user_id.into(),
            ..Default::default()
        });
        self.send(&bind, Flags::NONE)
    }

    /// Binds and expects OK "bind success".
    pub fn bind(&mut self, user_id: &str) {
        let id = self.send_bind(user_id);
        let (f, msg) = self.recv_message();
        assert_eq!(f.msg_id, id);
        let ServerMessage::Ok(ok) = msg else {
            panic!("expected OK, got {msg:?}")
        };
        assert_eq!((ok.cmd, ok.code, ok.data.as_str()), (5, 0, "bind success"));
    }

    /// Unbinds and expects OK.
    pub fn unbind(&mut self, user_id: &str) {
        let unbind = Unbind(UserBinding {
            user_id: user_id.into(),
            ..Default::default()
        });
        self.send(&unbind, Flags::NONE);
        let ok = self.recv_ok();
        assert_eq!((ok.cmd, ok.data.as_str()), (6, "unbind success"));
    }

    /// Expects a Push; returns its header and content.
    pub fn recv_push(&mut self) -> (Frame, Bytes) {
        match self.recv_message() {
            (f, ServerMessage::Push(p)) => (f, p.content),
            other => panic!("expected a Push, got {other:?}"),
        }
    }

    /// Half-closes the write side.
    pub fn shutdown_write(&self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }
}
