//! `run`'s upstream load flags (`--device-push-rate`, `--http-proxy-rate`, ...): device
//! pushes and HTTP_PROXY requests the fleet sends through its online sessions (PROTOCOL.md
//! 9), paced in each shard's core, and their part of the status line.

use std::sync::Arc;

use bytes::Bytes;
use clap::Args;

use crate::device::{HttpCall, PushAck};
use crate::proto::message::HttpMethod;
use crate::shard::core::UpstreamLoad;
use crate::stats::Counters;

/// The largest `--device-push-size`: the stock server refuses a frame body over its
/// `max-packet-size` (10 KiB) and closes; AES padding adds up to 16 bytes.
pub const MAX_PUSH_SIZE: usize = crate::proto::DEFAULT_MAX_BODY - 16;

/// Upstream load: what the fleet's devices send up while they hold their sessions.
#[derive(Args, Debug, Clone, Default)]
pub struct UpstreamArgs {
    /// Device-originated PUSHes per second across the fleet's online devices (0: none).
    #[arg(long, default_value_t = 0.0, value_name = "R")]
    pub device_push_rate: f64,
    /// The ack those pushes ask for: `none` (done once written), `auto` (AUTO_ACK: the
    /// server's ACK is awaited) or `biz` (BIZ_ACK: the stock server never acks, so each
    /// times out after `--upstream-timeout`).
    #[arg(long, value_enum, default_value = "auto")]
    pub device_push_ack: PushAck,
    /// Content bytes of each device push.
    #[arg(long, default_value_t = 64, value_name = "BYTES")]
    pub device_push_size: usize,
    /// HTTP_PROXY requests per second across the fleet's online devices (0: none); needs
    /// `--http-proxy-uri` and a server that proxies (`serve --http-proxy`).
    #[arg(long, default_value_t = 0.0, value_name = "R")]
    pub http_proxy_rate: f64,
    /// The absolute http URL every request asks for.
    #[arg(long, value_name = "URI")]
    pub http_proxy_uri: Option<String>,
    /// Its method: GET, POST, PUT or DELETE.
    #[arg(long, default_value = "GET", value_parser = parse_method)]
    pub http_proxy_method: Method,
    /// A request header (repeatable).
    #[arg(long = "http-proxy-header", value_name = "NAME:VALUE")]
    pub http_proxy_headers: Vec<String>,
    /// The request body.
    #[arg(long, value_name = "TEXT")]
    pub http_proxy_body: Option<String>,
    /// The server's read timeout for these requests, ms (sent as the `readTimeout` header;
    /// without it the server's default, 10 s).
    #[arg(long, value_name = "MS")]
    pub http_proxy_read_timeout: Option<u32>,
    /// How long a device waits for the answer to each upstream request, ms (0: 10 s for a
    /// push; the read timeout + 2 s for an HTTP request).
    #[arg(long, default_value_t = 0, value_name = "MS")]
    pub upstream_timeout: u32,
}

/// An HTTP method by name (clap needs a `Clone + Send + Sync` value type).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Method(pub HttpMethod);

impl Default for Method {
    fn default() -> Self {
        Method(HttpMethod::GET)
    }
}

fn parse_method(s: &str) -> Result<Method, String> {
    Ok(Method(match s.to_ascii_uppercase().as_str() {
        "GET" => HttpMethod::GET,
        "POST" => HttpMethod::POST,
        "PUT" => HttpMethod::PUT,
        "DELETE" => HttpMethod::DELETE,
        _ => {
            return Err(format!(
                "{s:?}: the protocol carries GET, POST, PUT or DELETE"
            ))
        }
    }))
}

impl UpstreamArgs {
    /// The fleet-wide load these flags ask for.
    ///
    /// # Errors
    ///
    /// A message for a usage error: a negative or non-finite rate, a push too large for
    /// the server, an HTTP rate without a URI, a header that cannot be sent.
    pub fn load(&self) -> Result<UpstreamLoad, String> {
        for (name, rate) in [
            ("--device-push-rate", self.device_push_rate),
            ("--http-proxy-rate", self.http_proxy_rate),
        ] {
            if !(rate.is_finite() && rate >= 0.0) {
                return Err(format!(
                    "{name} {rate}: give a rate of 0 or more per second"
                ));
            }
        }
        if self.device_push_size > MAX_PUSH_SIZE {
            return Err(format!(
                "--device-push-size {}: at most {MAX_PUSH_SIZE} (the server refuses a frame \
                 body over 10 KiB and closes)",
                self.device_push_size
            ));
        }
        let http = match (&self.http_proxy_uri, self.http_proxy_rate > 0.0) {
            (None, true) => return Err("--http-proxy-rate needs --http-proxy-uri".into()),
            (Some(uri), _) => Some(Arc::new(self.call(uri)?)),
            (None, false) => None,
        };
        Ok(UpstreamLoad {
            push_rate: self.device_push_rate,
            push_ack: self.device_push_ack,
            push_content: content(self.device_push_size),
            http_rate: self.http_proxy_rate,
            http,
            timeout_ms: self.upstream_timeout,
        })
    }

    fn call(&self, uri: &str) -> Result<HttpCall, String> {
        let mut headers = Vec::new();
        for h in &self.http_proxy_headers {
            let (name, value) = h
                .split_once(':')
                .ok_or_else(|| format!("--http-proxy-header {h:?}: give NAME:VALUE"))?;
            headers.push((name.trim(), value.trim()));
        }
        let body = self.http_proxy_body.clone().unwrap_or_default();
        HttpCall::new(
            self.http_proxy_method.0,
            uri,
            headers,
            Bytes::from(body),
            self.http_proxy_read_timeout,
        )
        .map_err(|e| format!("--http-proxy-header: {e}"))
    }

    /// The flags a worker of `--processes N` gets: its share of the rates.
    pub fn worker_rates(&self, workers: usize) -> Vec<String> {
        let n = workers.max(1) as f64;
        vec![
            "--device-push-rate".into(),
            (self.device_push_rate / n).to_string(),
            "--http-proxy-rate".into(),
            (self.http_proxy_rate / n).to_string(),
        ]
    }
}

/// Push content of `len` bytes that does not deflate (xorshift), so the frame on the wire
/// is as large as asked.
fn content(len: usize) -> Bytes {
    let mut x: u32 = 0x9E37_79B9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

/// The status line's upstream part, when there was upstream traffic.
pub fn status(c: &Counters) -> String {
    let mut s = String::new();
    if c.device_pushes_sent > 0 {
        s.push_str(&format!(
            " device_push sent/acked/timeouts/failed {}/{}/{}/{}",
            c.device_pushes_sent, c.device_push_acked, c.device_push_timeouts, c.device_push_failed
        ));
    }
    if c.http_requests_sent > 0 {
        s.push_str(&format!(
            " http sent/responses/2xx/raw/timeouts/failed {}/{}/{}/{}/{}/{}",
            c.http_requests_sent,
            c.http_responses,
            c.http_responses_2xx,
            c.http_raw_failures,
            c.http_timeouts,
            c.http_failed
        ));
    }
    let odd = c.upstream_refused + c.upstream_unmatched + c.upstream_bad_answers;
    if odd + c.upstream_no_device > 0 {
        s.push_str(&format!(
            " upstream refused/unmatched/bad/no_device {}/{}/{}/{}",
            c.upstream_refused, c.upstream_unmatched, c.upstream_bad_answers, c.upstream_no_device
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(f: impl FnOnce(&mut UpstreamArgs)) -> UpstreamArgs {
        let mut a = UpstreamArgs {
            device_push_size: 64,
            ..Default::default()
        };
        f(&mut a);
        a
    }

    #[test]
    fn flags_become_the_load_or_a_usage_error() {
        let load = args(|a| {
            a.device_push_rate = 5.0;
            a.http_proxy_rate = 2.0;
            a.http_proxy_uri = Some("http://h/x".into());
            a.http_proxy_headers = vec!["x-a: 1".into()];
            a.http_proxy_read_timeout = Some(500);
        })
        .load()
        .expect("valid flags");
        assert_eq!((load.push_rate, load.push_content.len()), (5.0, 64));
        let call = load.http.expect("a request");
        assert_eq!(call.request().headers, "x-a:1\nreadTimeout:500\n");
        assert_eq!(call.default_timeout_ms(), 2_500);
        let bad = [
            args(|a| a.http_proxy_rate = 1.0),
            args(|a| a.device_push_rate = -1.0),
            args(|a| a.device_push_rate = f64::NAN),
            args(|a| a.device_push_size = MAX_PUSH_SIZE + 1),
            args(|a| {
                a.http_proxy_uri = Some("http://h/".into());
                a.http_proxy_headers = vec!["no colon".into()];
            }),
        ];
        for a in bad {
            assert!(a.load().is_err(), "{a:?}");
        }
        assert!(parse_method("patch").is_err());
        assert_eq!(parse_method("post"), Ok(Method(HttpMethod::POST)));
    }

    #[test]
    fn push_content_does_not_deflate() {
        let c = content(4_096);
        let z = crate::proto::pipeline::deflate(&c);
        assert!(z.len() > 4_000, "{}", z.len());
    }
}
