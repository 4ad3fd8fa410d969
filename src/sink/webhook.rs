//! The HTTP webhook downstream: each record is one `POST` of its JSON line (the same object
//! the stdout, file and unix sinks write, without the newline), taken when the answer is 2xx.
//!
//! HTTP/1.1 through hyper, over keep-alive connections that are reused: at most `inflight`
//! requests at once, so at most that many connections. Any other status, a connection error
//! or no answer within [`REQUEST_TIMEOUT`] fails the record, which is retried with backoff
//! (see `remote`). Plain `http://` only: the downstream is a consumer beside the fleet.

use std::cell::RefCell;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

use super::remote::Downstream;
use super::SinkRecord;

/// A POST unanswered this long fails and is retried.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Requests at once when the spec does not say.
pub const DEFAULT_INFLIGHT: usize = 16;

/// Where to POST.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookSpec {
    /// `HOST:PORT` to connect to (a name is resolved at each connect).
    pub authority: String,
    /// Path and query of the request.
    pub path: String,
    /// Most requests at once (`#inflight=N` on the URL; a fragment is never sent).
    pub inflight: usize,
}

impl WebhookSpec {
    /// Reads `http://HOST[:PORT][/PATH][?QUERY][#inflight=N]`.
    pub fn parse(s: &str) -> Result<WebhookSpec, String> {
        let (url, fragment) = s.split_once('#').unwrap_or((s, ""));
        let Some(rest) = url.strip_prefix("http://") else {
            return Err(if url.starts_with("https://") {
                "https is not supported (no TLS here): give an http:// URL".into()
            } else {
                format!("{url:?} is not an http:// URL")
            });
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_owned()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_owned()),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(format!("{url:?}: needs a host (and no user info)"));
        }
        // The host part ends at a bracketed IPv6 address's `]`, else at the first `:`.
        let host_end = if authority.starts_with('[') {
            // A bracketed host is an IPv6 address, whole.
            match authority.find(']') {
                Some(i) if authority[1..i].parse::<std::net::Ipv6Addr>().is_ok() => i + 1,
                _ => return Err(format!("{authority:?}: bad IPv6 address")),
            }
        } else {
            authority.find(':').unwrap_or(authority.len())
        };
        let authority = match &authority[host_end..] {
            "" => format!("{authority}:80"),
            port if port
                .strip_prefix(':')
                .is_some_and(|p| p.parse::<u16>().is_ok()) =>
            {
                authority.to_owned()
            }
            _ => return Err(format!("{authority:?}: bad port")),
        };
        let inflight = match fragment.strip_prefix("inflight=") {
            _ if fragment.is_empty() => DEFAULT_INFLIGHT,
            Some(n) => match n.parse::<usize>() {
                Ok(n) if (1..=4096).contains(&n) => n,
                _ => return Err(format!("inflight={n}: give 1 to 4096")),
            },
            None => return Err(format!("#{fragment}: the only option is #inflight=N")),
        };
        Ok(WebhookSpec {
            authority,
            path,
            inflight,
        })
    }
}

impl std::fmt::Display for WebhookSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}{}", self.authority, self.path)?;
        if self.inflight != DEFAULT_INFLIGHT {
            write!(f, "#inflight={}", self.inflight)?;
        }
        Ok(())
    }
}

pub(super) struct Webhook {
    spec: WebhookSpec,
    /// Idle keep-alive connections.
    idle: RefCell<Vec<SendRequest<Full<Bytes>>>>,
}

impl Webhook {
    /// Opens one connection (nothing listening is an error at start) and keeps it for reuse.
    pub(super) async fn connect(spec: WebhookSpec) -> anyhow::Result<Webhook> {
        let first = open(&spec.authority)
            .await
            .with_context(|| format!("connecting to the webhook at {}", spec.authority))?;
        Ok(Webhook {
            spec,
            idle: RefCell::new(vec![first]),
        })
    }

    async fn post(&self, body: Vec<u8>) -> anyhow::Result<hyper::StatusCode> {
        let reused = self.idle.borrow_mut().pop();
        let mut conn = match reused {
            Some(c) if !c.is_closed() => c,
            _ => open(&self.spec.authority).await?,
        };
        conn.ready().await?;
        let req = hyper::Request::post(self.spec.path.as_str())
            .header(hyper::header::HOST, self.spec.authority.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))?;
        let resp = conn.send_request(req).await?;
        let status = resp.status();
        // Read the answer to its end, so the connection can carry the next request.
        resp.into_body().collect().await?;
        self.idle.borrow_mut().push(conn);
        Ok(status)
    }
}

async fn open(authority: &str) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(authority).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    // The connection's I/O runs beside the requests; it ends when the sender is dropped or
    // the peer closes.
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

impl Downstream for Webhook {
    async fn send(&self, seq: u64, rec: &SinkRecord) -> Result<(), String> {
        let mut body = Vec::with_capacity(128 + rec.content.len() * 4 / 3);
        rec.encode_line(seq, &mut body);
        body.pop(); // the line's '\n'
        match tokio::time::timeout(REQUEST_TIMEOUT, self.post(body)).await {
            Ok(Ok(status)) if status.is_success() => Ok(()),
            Ok(Ok(status)) => Err(format!("webhook answered {status}")),
            Ok(Err(e)) => Err(format!("webhook: {e}")),
            Err(_) => Err(format!("webhook: no answer in {REQUEST_TIMEOUT:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_parses() {
        let s = WebhookSpec::parse("http://127.0.0.1:8080/hook?x=1").unwrap();
        assert_eq!(
            s,
            WebhookSpec {
                authority: "127.0.0.1:8080".into(),
                path: "/hook?x=1".into(),
                inflight: DEFAULT_INFLIGHT
            }
        );
        let s = WebhookSpec::parse("http://localhost#inflight=64").unwrap();
        assert_eq!(
            (s.authority.as_str(), s.path.as_str(), s.inflight),
            ("localhost:80", "/", 64)
        );
        assert_eq!(s.to_string(), "http://localhost:80/#inflight=64");
        let s = WebhookSpec::parse("http://[::1]:9000?q").unwrap();
        assert_eq!(
            (s.authority.as_str(), s.path.as_str()),
            ("[::1]:9000", "/?q")
        );
        for bad in [
            "",
            "https://h/x",
            "ftp://h",
            "http://",
            "http://u@h/",
            "http://h:port/",
            "http://h/#inflight=0",
            "http://h/#inflight=x",
            "http://h/#other",
            "http://[",
            "http://[::1",
            "http://[zz]:80/",
        ] {
            assert!(WebhookSpec::parse(bad).is_err(), "{bad:?}");
        }
    }
}
