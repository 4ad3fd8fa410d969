//! The Redis Streams downstream: each record is one `XADD key [MAXLEN ~ n] * field value ...`
//! through fred, taken when Redis answers with the entry's id.
//!
//! Fields: `seq`, `deviceId`, `userId`, `msgId`, `flags`, `receivedAt` as text, and `content`
//! as the push's raw bytes (a stream holds binary values; no base64 as in the JSON lines).
//! fred pipelines the concurrent XADDs on one connection; a command unanswered in
//! [`COMMAND_TIMEOUT`] fails and its record is sent again (an entry may then appear twice,
//! which the sink's contract allows; a lost one it does not).

use std::time::Duration;

use anyhow::Context as _;
use fred::prelude::{
    Builder, ClientLike, Config, ReconnectPolicy, StreamsInterface, TcpConfig, Value,
};
use fred::types::streams::XCap;

use super::remote::Downstream;
use super::SinkRecord;

/// An XADD unanswered this long fails and is retried.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Where and how to XADD.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamSpec {
    /// fred's URL (`redis://HOST:PORT/DB`, cluster and sentinel forms too), without our
    /// `stream` and `maxlen` parameters.
    pub url: String,
    /// The stream's key.
    pub key: String,
    /// `MAXLEN ~ n` on every XADD, if set.
    pub maxlen: Option<i64>,
}

/// The default stream key.
pub const DEFAULT_STREAM_KEY: &str = "mpush-fleet:pushes";

impl StreamSpec {
    /// Reads `URL[?|&]stream=KEY&maxlen=N`: our two parameters are taken out of the URL's
    /// query, the rest (fred's own, such as `node=` of a cluster) stays.
    pub fn parse(s: &str) -> Result<StreamSpec, String> {
        let (base, query) = s.split_once('?').unwrap_or((s, ""));
        if !base.starts_with("redis") || !base.contains("://") {
            return Err(format!("{base:?} is not a redis:// URL"));
        }
        let (mut key, mut maxlen, mut rest) = (DEFAULT_STREAM_KEY.to_owned(), None, Vec::new());
        for kv in query.split('&').filter(|kv| !kv.is_empty()) {
            match kv.split_once('=') {
                Some(("stream", k)) if !k.is_empty() => key = k.to_owned(),
                Some(("stream", _)) => return Err("stream= needs a key".into()),
                Some(("maxlen", n)) => match n.parse::<i64>() {
                    Ok(n) if n > 0 => maxlen = Some(n),
                    _ => return Err(format!("maxlen={n}: not a positive number")),
                },
                _ => rest.push(kv),
            }
        }
        let url = if rest.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", rest.join("&"))
        };
        Ok(StreamSpec { url, key, maxlen })
    }
}

impl std::fmt::Display for StreamSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sep = if self.url.contains('?') { '&' } else { '?' };
        write!(f, "{}{sep}stream={}", self.url, self.key)?;
        if let Some(n) = self.maxlen {
            write!(f, "&maxlen={n}")?;
        }
        Ok(())
    }
}

pub(super) struct RedisStream {
    client: fred::prelude::Client,
    key: String,
    maxlen: Option<i64>,
}

impl RedisStream {
    /// Connects once (an unreachable Redis is an error at start), then keeps reconnecting in
    /// the background for as long as the sink runs.
    pub(super) async fn connect(spec: StreamSpec) -> anyhow::Result<RedisStream> {
        let config = Config::from_url(&spec.url).context("bad Redis URL for the sink")?;
        let mut builder = Builder::from_config(config);
        builder
            .with_connection_config(|c| {
                c.connection_timeout = COMMAND_TIMEOUT;
                c.internal_command_timeout = COMMAND_TIMEOUT;
                c.tcp = TcpConfig {
                    nodelay: Some(true),
                    ..TcpConfig::default()
                };
            })
            .with_performance_config(|p| p.default_command_timeout = COMMAND_TIMEOUT)
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2));
        let client = builder.build()?;
        client
            .init()
            .await
            .with_context(|| format!("connecting to Redis at {}", spec.url))?;
        Ok(RedisStream {
            client,
            key: spec.key,
            maxlen: spec.maxlen,
        })
    }
}

impl Downstream for RedisStream {
    async fn send(&self, seq: u64, rec: &SinkRecord) -> Result<(), String> {
        let fields: Vec<(&str, Value)> = vec![
            ("seq", seq.to_string().into()),
            ("deviceId", rec.device_id.as_str().into()),
            ("userId", rec.user_id.as_str().into()),
            ("msgId", rec.msg_id.to_string().into()),
            ("flags", rec.flags.to_string().into()),
            ("receivedAt", rec.received_at_ms.to_string().into()),
            ("content", Value::Bytes(rec.content.clone())),
        ];
        let cap: XCap = match self.maxlen {
            Some(n) => ("MAXLEN", "~", n)
                .try_into()
                .map_err(|e| format!("{e:?}"))?,
            None => None::<()>.into(),
        };
        self.client
            .xadd::<Value, _, _, _, _>(self.key.as_str(), false, cap, "*", fields)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_takes_our_parameters_out_of_the_url() {
        let s = StreamSpec::parse("redis://127.0.0.1:6379/0").unwrap();
        assert_eq!(s.url, "redis://127.0.0.1:6379/0");
        assert_eq!((s.key.as_str(), s.maxlen), (DEFAULT_STREAM_KEY, None));
        let s = StreamSpec::parse("redis://h:1/2?stream=p&maxlen=1000").unwrap();
        assert_eq!(
            (s.url.as_str(), s.key.as_str(), s.maxlen),
            ("redis://h:1/2", "p", Some(1000))
        );
        let s = StreamSpec::parse("redis-cluster://h:1?node=h:2&stream=x").unwrap();
        assert_eq!(
            (s.url.as_str(), s.key.as_str()),
            ("redis-cluster://h:1?node=h:2", "x")
        );
        assert_eq!(s.to_string(), "redis-cluster://h:1?node=h:2&stream=x");
        assert_eq!(StreamSpec::parse(&s.to_string()).unwrap(), s);
        for bad in [
            "",
            "h:1",
            "http://h:1",
            "redis://h:1?maxlen=0",
            "redis://h:1?maxlen=x",
        ] {
            assert!(StreamSpec::parse(bad).is_err(), "{bad:?}");
        }
        assert!(StreamSpec::parse("redis://h:1?stream=").is_err());
    }
}
