//! The command handlers of [`ServerSession`]: one method per command, each following the
//! real server's handler of that command (`mpush-core/.../handler/*.java`).

use bytes::{BufMut, Bytes};
use rand::{CryptoRng, RngCore};

use super::{
    error_message, ClientType, CloseReason, Context, Effect, PendingFastConnect, ServerSession,
    SessionEvent,
};
use crate::crypto::{mix_keys, session_id_md5_hex, AesCipher};
use crate::proto::message::{
    Ack, Bind, ErrorCode, ErrorReply, FastConnect, Handshake, HandshakeOk, HttpRequest,
    HttpResponse, Message, OkReply, Unbind, UserBinding,
};
use crate::proto::pipeline::finish_open;
use crate::proto::{open_body, DecodeError, Flags, Frame, MsgId, HEARTBEAT_BYTE};
use crate::tickets::format::ReusableSession;

impl ServerSession {
    pub(super) fn on_heartbeat(&mut self) {
        self.event(SessionEvent::Heartbeat);
        if self.echo_heartbeats {
            self.tx.put_u8(HEARTBEAT_BYTE);
        }
    }

    /// Decrypts with the connection's cipher (RSA before the handshake) and inflates, as
    /// `BaseMessage.decodeBody` does.
    pub(super) fn open(&self, frame: &Frame) -> Result<Bytes, DecodeError> {
        let max = self.cfg.limits.max_inflated;
        match &self.cipher {
            Some(aes) => open_body(frame, Some(aes), max),
            None if frame.flags.contains(Flags::CRYPTO) && !frame.body.is_empty() => {
                let plain = self.cfg.rsa.decrypt(&frame.body)?;
                finish_open(frame.flags, Bytes::from(plain), max)
            }
            None => open_body(frame, None, max),
        }
    }

    pub(super) fn on_handshake<R: RngCore + CryptoRng>(
        &mut self,
        wall_ms: i64,
        rng: &mut R,
        frame: &Frame,
    ) {
        let body = match self.open(frame) {
            Ok(body) => body,
            Err(_) => return self.garbled(frame),
        };
        // An empty body leaves every Java field null: "Param invalid", like a bad key size.
        let hs = if body.is_empty() {
            None
        } else {
            match Handshake::decode_body(body) {
                Ok(hs) => Some(hs),
                Err(DecodeError::WrongFieldSize { .. }) => None,
                Err(_) => return self.garbled(frame),
            }
        };
        let Some(hs) = hs.filter(|hs| !hs.device_id.is_empty()) else {
            return self.error(
                frame,
                ErrorCode(0),
                Some("Param invalid"),
                Some(CloseReason::ParamInvalid),
            );
        };
        if self.device_id() == Some(hs.device_id.as_str()) {
            return self.error(frame, ErrorCode::REPEAT_HANDSHAKE, None, None);
        }
        let mut server_key = [0u8; 16];
        rng.fill_bytes(&mut server_key);
        let id_prefix = if self.cfg.sessionid_quirk {
            // genSession runs before the context learns the new deviceId.
            self.device_id().unwrap_or("null").to_owned()
        } else {
            hs.device_id.clone()
        };
        let session_id = session_id_md5_hex(&format!("{id_prefix}{wall_ms}"));
        let ttl_secs = self.cfg.session_expire_secs;
        let expire_time = wall_ms.saturating_add(i64::from(ttl_secs) * 1000);
        let heartbeat = self.cfg.heartbeat_for(hs.max_heartbeat);
        let ok = HandshakeOk {
            server_key,
            heartbeat,
            session_id: session_id.clone(),
            expire_time,
        };
        let client_cipher = AesCipher::new(hs.client_key, hs.iv);
        self.encoder.write(
            &mut self.tx,
            &ok,
            frame.msg_id,
            Flags::NONE,
            Some(&client_cipher),
        );
        let session_cipher = AesCipher::new(mix_keys(&hs.client_key, &server_key), hs.iv);
        self.cipher = Some(session_cipher.clone());
        let user_id = self.ctx.take().and_then(|c| c.user_id);
        let Handshake {
            device_id,
            os_name,
            os_version,
            client_version,
            ..
        } = hs;
        let session = ReusableSession {
            os_name: os_name.clone(),
            os_version,
            client_version,
            device_id: device_id.clone(),
            cipher: session_cipher,
        };
        self.ctx = Some(Box::new(Context {
            device_id,
            os_name,
            user_id,
        }));
        self.set_heartbeat(heartbeat);
        self.effects.push_back(Effect::StoreSession {
            session_id,
            session,
            ttl_secs,
        });
        self.event(SessionEvent::Handshake);
    }

    pub(super) fn on_fast_connect(&mut self, frame: &Frame) {
        let fc = match self.open(frame) {
            Ok(body) if body.is_empty() => None,
            Ok(body) => match FastConnect::decode_body(body) {
                Ok(fc) => Some(fc),
                Err(_) => return self.garbled(frame),
            },
            Err(_) => return self.garbled(frame),
        };
        // Java with an empty body looks up "mp:rs:null" and finds nothing: ERROR 103.
        let (session_id, device_id, max_heartbeat) = match fc {
            Some(fc) => (fc.session_id, fc.device_id, fc.max_heartbeat),
            None => ("null".to_owned(), String::new(), 0),
        };
        self.pending = Some(Box::new(PendingFastConnect {
            msg_id: frame.msg_id,
            device_id,
            max_heartbeat,
        }));
        self.effects.push_back(Effect::LoadSession { session_id });
    }

    pub(super) fn on_bind(&mut self, frame: &Frame, unbind: bool) {
        let binding = match self.open(frame) {
            Ok(body) if body.is_empty() => UserBinding::default(),
            Ok(body) => {
                let decoded = if unbind {
                    Unbind::decode_body(body).map(|u| u.0)
                } else {
                    Bind::decode_body(body).map(|b| b.0)
                };
                match decoded {
                    Ok(b) => b,
                    Err(_) => return self.garbled(frame),
                }
            }
            Err(_) => return self.garbled(frame),
        };
        if binding.user_id.is_empty() {
            let reason = Some("invalid param");
            return self.error(
                frame,
                ErrorCode(0),
                reason,
                Some(CloseReason::InvalidBindParam),
            );
        }
        let Some(ctx) = self.ctx.as_deref() else {
            let reason = Some("not handshake");
            return self.error(frame, ErrorCode(0), reason, Some(CloseReason::NotHandshake));
        };
        if unbind {
            return self.unbind(frame);
        }
        match ctx.user_id.as_deref() {
            Some(current) if current == binding.user_id => return self.ok(frame, "bind success"),
            // BindUserHandler unbinds the old user first, OK and all.
            Some(_) => self.unbind(frame),
            None => {}
        }
        let client_type = self.client_type();
        if let Some(ctx) = self.ctx.as_deref_mut() {
            ctx.user_id = Some(binding.user_id.clone());
        }
        self.effects.push_back(Effect::RegisterRoute {
            user_id: binding.user_id,
            client_type,
            tags: binding.tags,
        });
        self.event(SessionEvent::Bind);
        self.ok(frame, "bind success");
    }

    pub(super) fn unbind(&mut self, frame: &Frame) {
        let client_type = self.client_type();
        if let Some(user_id) = self.ctx.as_deref_mut().and_then(|c| c.user_id.take()) {
            self.effects.push_back(Effect::UnregisterRoute {
                user_id,
                client_type,
            });
        }
        self.event(SessionEvent::Unbind);
        self.ok(frame, "unbind success");
    }

    pub(super) fn on_client_push(&mut self, frame: &Frame) {
        if self.open(frame).is_err() {
            return self.garbled(frame);
        }
        self.event(SessionEvent::ClientPush);
        if frame.flags.contains(Flags::AUTO_ACK) {
            self.encoder
                .write_raw(&mut self.tx, &Ack, frame.msg_id, Flags::NONE);
        }
    }

    pub(super) fn on_http_proxy(&mut self, frame: &Frame) {
        let req = match self.open(frame) {
            Ok(body) if body.is_empty() => None,
            Ok(body) => match HttpRequest::decode_body(body) {
                Ok(req) => Some(req),
                Err(_) => return self.garbled(frame),
            },
            Err(_) => return self.garbled(frame),
        };
        self.event(SessionEvent::HttpProxy);
        match req {
            Some(request) if !request.uri.is_empty() => {
                self.effects.push_back(Effect::HttpProxy {
                    msg_id: frame.msg_id,
                    request,
                });
            }
            _ => {
                // The real handler answers 400, carries on with the missing uri, fails, and
                // answers again: 502, for the same sessionId. Both raw.
                for (status_code, reason) in [(400, "Bad Request"), (502, "Bad Gateway")] {
                    let resp = HttpResponse {
                        status_code,
                        reason_phrase: reason.to_owned(),
                        headers: String::new(),
                        body: Bytes::new(),
                    };
                    self.encoder
                        .write_raw(&mut self.tx, &resp, frame.msg_id, Flags::NONE);
                }
            }
        }
    }

    // ----- helpers -----

    pub(super) fn client_type(&self) -> ClientType {
        ClientType::from_os_name(self.ctx.as_deref().map_or("", |c| c.os_name.as_str()))
    }

    pub(super) fn set_heartbeat(&mut self, heartbeat: i32) {
        // A non-positive heartbeat (a misconfigured server) would spin the idle check.
        self.heartbeat_ms = u32::try_from(heartbeat).unwrap_or(1).max(1);
    }

    pub(super) fn ok(&mut self, frame: &Frame, data: &str) {
        let ok = OkReply {
            cmd: frame.cmd,
            code: 0,
            data: data.to_owned(),
        };
        self.encoder
            .write_raw(&mut self.tx, &ok, frame.msg_id, Flags::NONE);
    }

    /// A body that cannot be opened or decoded: the handler throws, `MessageDispatcher`
    /// answers ERROR 100 (DISPATCH_ERROR) and closes.
    pub(super) fn garbled(&mut self, frame: &Frame) {
        self.error(
            frame,
            ErrorCode::DISPATCH_ERROR,
            None,
            Some(CloseReason::Garbled),
        );
    }

    pub(super) fn error(
        &mut self,
        frame: &Frame,
        code: ErrorCode,
        reason: Option<&str>,
        close: Option<CloseReason>,
    ) {
        self.error_to((frame.cmd, frame.msg_id), code, reason, close);
    }

    /// ERROR, always raw (`ErrorMessage.send` is `sendRaw`); the reason defaults to the Java
    /// `ErrorCode.errorMsg`.
    pub(super) fn error_to(
        &mut self,
        (cmd, msg_id): (u8, MsgId),
        code: ErrorCode,
        reason: Option<&str>,
        close: Option<CloseReason>,
    ) {
        let reason = reason.unwrap_or_else(|| error_message(code)).to_owned();
        let err = ErrorReply {
            cmd,
            code,
            reason,
            data: String::new(),
        };
        self.encoder
            .write_raw(&mut self.tx, &err, msg_id, Flags::NONE);
        self.event(SessionEvent::ErrorSent(code));
        if let Some(reason) = close {
            self.close(reason);
        }
    }
}
