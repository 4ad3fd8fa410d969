//! The store's requests on their way to Redis and back: the queued [`Op`]s, one pipeline's
//! run on the store's runtime ([`run_pipeline`]), its [`Reply`]s, and a `GET` reply read as a
//! ticket ([`decode`]). Apart from the store so that what goes over the wire reads in one place.

use crossbeam_channel::Sender;
use fred::prelude::{Error as FredError, ErrorKind, Expiration, KeysInterface, Value};

use crate::tickets::format::{ClientTicket, TicketFormatError};
use crate::tickets::store::Wake;

/// A request waiting to be sent.
#[derive(Debug)]
pub(super) enum Op {
    Load {
        device: u32,
        key: String,
    },
    Save {
        key: String,
        value: String,
        ttl_ms: i64,
    },
    Delete {
        key: String,
    },
}

/// What a reply answers.
#[derive(Debug, Clone, Copy)]
pub(super) enum What {
    Load(u32),
    Save,
    Delete,
}

#[derive(Debug)]
pub(super) struct Reply {
    pub(super) what: What,
    pub(super) result: Result<Value, FredError>,
}

/// A `GET` reply as a ticket: `Ok(None)` when absent.
pub(super) fn decode(value: Value) -> Result<Option<ClientTicket>, &'static str> {
    let text = match &value {
        Value::Null => return Ok(None),
        Value::String(s) => &**s,
        Value::Bytes(b) => std::str::from_utf8(b).map_err(|_| "not UTF-8")?,
        _ => return Err("not a string value"),
    };
    ClientTicket::from_json(text)
        .map(Some)
        .map_err(|e| match e {
            TicketFormatError::Json => "not JSON",
            TicketFormatError::NotAnObject => "not a JSON object",
            TicketFormatError::MissingField(_) => "a field is missing",
            TicketFormatError::NotAString(_) => "a field is not a string",
            TicketFormatError::BadExpireTime => "bad expireTime",
            TicketFormatError::BadCipher(_) => "bad cipherStr",
            TicketFormatError::FieldCount(_) => "bad field count",
        })
}

/// Sends one pipeline and hands its replies back to the store.
pub(super) async fn run_pipeline(
    client: fred::prelude::Client,
    ops: Vec<Op>,
    tx: Sender<Vec<Reply>>,
    wake: Wake,
) {
    let pipe = client.pipeline();
    let mut sent = Vec::with_capacity(ops.len());
    let mut replies = Vec::with_capacity(ops.len());
    for op in ops {
        // Queuing only copies into the pipeline's buffer; an error here is a bad argument.
        let (what, queued): (What, Result<(), FredError>) = match op {
            Op::Load { device, key } => (What::Load(device), pipe.get(key).await),
            Op::Save { key, value, ttl_ms } => (
                What::Save,
                pipe.set(key, value, Some(Expiration::PX(ttl_ms)), None, false)
                    .await,
            ),
            Op::Delete { key } => (What::Delete, pipe.del(key).await),
        };
        match queued {
            Ok(()) => sent.push(what),
            Err(error) => replies.push(Reply {
                what,
                result: Err(error),
            }),
        }
    }
    let results: Vec<Result<Value, FredError>> = pipe.try_all().await;
    if results.len() == sent.len() {
        replies.extend(
            sent.into_iter()
                .zip(results)
                .map(|(what, result)| Reply { what, result }),
        );
    } else {
        // The pipeline failed as a whole (timeout, connection lost): one error for all.
        let error = results
            .into_iter()
            .find_map(Result::err)
            .unwrap_or_else(|| FredError::new(ErrorKind::Protocol, "pipeline reply count"));
        replies.extend(sent.into_iter().map(|what| Reply {
            what,
            result: Err(error.clone()),
        }));
    }
    if tx.send(replies).is_ok() {
        wake();
    }
}
