//! The server's HTTP_PROXY forwarding (PROTOCOL.md 9.2), as the real server's
//! `HttpProxyHandler` does it: the device's request becomes a plain HTTP/1.1 request to the
//! URL's host (or a mapped backend), and the backend's answer goes back as an HttpResponse.
//!
//! Off unless configured (`serve --http-proxy HOST=IP:PORT[,IP:PORT...]`, or
//! `--http-proxy-enabled` with no mapping): the real server's default is off, and then the
//! session refuses HTTP_PROXY with ERROR 101 and a close.
//!
//! Failures answer raw (no cipher) with the status the real server uses: connect failed 504,
//! the request could not be written 503, no answer within the read timeout 408, a failure
//! while reading 502, a request that could not be built (bad URL, bad header) 502.
//!
//! Left out, said so: the real server keeps a keep-alive pool of 5 connections per host and
//! health-checks mapped entries every 20 s; here every request opens its own connection and
//! a mapped entry is picked at random each time (an unreachable one answers 504).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rand::seq::SliceRandom as _;

use crate::proto::message::{HttpMethod, HttpRequest, HttpResponse};

/// `mp.http.default-read-timeout`.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The Netty client's connect timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(4);
/// `mp.http.max-content-length`: larger response bodies fail the request (502).
pub const MAX_CONTENT_LENGTH: usize = 5 * 1024 * 1024;
/// Redirects followed (300/301/302/303/305/307 with a Location).
pub const MAX_REDIRECTS: usize = 5;

/// What the proxy forwards to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpProxyConfig {
    /// `mp.http.dns-mapping`: host (without port) to backends, one picked at random.
    pub mapping: HashMap<String, Vec<SocketAddr>>,
}

impl HttpProxyConfig {
    /// Adds one `HOST=IP:PORT[,IP:PORT...]` entry (the `--http-proxy` flag's value).
    ///
    /// # Errors
    /// A message naming what is wrong with the entry.
    pub fn add_mapping(&mut self, entry: &str) -> Result<(), String> {
        let (host, addrs) = entry
            .split_once('=')
            .ok_or_else(|| format!("--http-proxy {entry:?}: give HOST=IP:PORT[,IP:PORT...]"))?;
        if host.is_empty() || host.contains([':', '/']) {
            return Err(format!(
                "--http-proxy {entry:?}: {host:?} is not a host name"
            ));
        }
        let mut list = Vec::new();
        for a in addrs.split(',') {
            list.push(
                a.parse::<SocketAddr>()
                    .map_err(|_| format!("--http-proxy {entry:?}: {a:?} is not IP:PORT"))?,
            );
        }
        self.mapping
            .entry(host.to_owned())
            .or_default()
            .extend(list);
        Ok(())
    }
}

/// The proxy's answer, and whether it goes with the session cipher (a backend's answer) or
/// raw (the proxy's own failure statuses).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forwarded {
    /// What to send the device.
    pub response: HttpResponse,
    /// `true` for the proxy's own failure answers, written without the session cipher.
    pub raw: bool,
}

fn failure(status_code: i32, reason: &str) -> Forwarded {
    Forwarded {
        response: HttpResponse {
            status_code,
            reason_phrase: reason.to_owned(),
            headers: String::new(),
            body: Bytes::new(),
        },
        raw: true,
    }
}

/// The request as the backend will get it.
struct Target {
    /// Where to connect.
    connect: String,
    /// The `Host` header: the host after mapping, without a port.
    host: String,
    /// Path and query.
    path: String,
}

/// `http(s)://host[:port]/path?query`, mapped. An https URL is spoken plain HTTP to, to its
/// port or 80, as the real server does.
fn target(cfg: &HttpProxyConfig, uri: &str) -> Option<Target> {
    let rest = uri
        .strip_prefix("http://")
        .or_else(|| uri.strip_prefix("https://"))?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_owned()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_owned()),
    };
    let path = path.split('#').next().unwrap_or("/").to_owned();
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, p.parse::<u16>().ok()?),
        _ => (authority, 80),
    };
    if host.is_empty() {
        return None;
    }
    match cfg
        .mapping
        .get(host)
        .and_then(|l| l.choose(&mut rand::thread_rng()))
    {
        Some(backend) => Some(Target {
            connect: backend.to_string(),
            host: backend.ip().to_string(),
            path,
        }),
        None => Some(Target {
            connect: format!("{host}:{port}"),
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            path,
        }),
    }
}

/// Forwards the device's request; always answers (a failure is an answer too).
pub async fn forward(cfg: &HttpProxyConfig, req: HttpRequest, device: SocketAddr) -> Forwarded {
    let mut uri = req.uri.clone();
    for _ in 0..=MAX_REDIRECTS {
        let (next, answer) = once(cfg, &req, &uri, device).await;
        match next {
            Some(location) => uri = location,
            None => return answer,
        }
    }
    failure(502, "Bad Gateway")
}

/// One hop. `Some(location)` asks the caller to follow a redirect.
async fn once(
    cfg: &HttpProxyConfig,
    req: &HttpRequest,
    uri: &str,
    device: SocketAddr,
) -> (Option<String>, Forwarded) {
    let bad = || (None, failure(502, "Bad Gateway"));
    let Some(t) = target(cfg, uri) else {
        return bad();
    };
    let method = match req.method {
        HttpMethod::POST => hyper::Method::POST,
        HttpMethod::PUT => hyper::Method::PUT,
        HttpMethod::DELETE => hyper::Method::DELETE,
        _ => hyper::Method::GET,
    };
    let mut read_timeout = DEFAULT_READ_TIMEOUT;
    let mut b = hyper::Request::builder()
        .method(method)
        .uri(t.path.as_str());
    for line in req.headers.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("readTimeout") {
            if let Ok(ms) = value.parse::<u64>() {
                read_timeout = Duration::from_millis(ms);
            }
            continue;
        }
        b = b.header(name, value);
    }
    if !req.body.is_empty() {
        b = b.header(hyper::header::CONTENT_LENGTH, req.body.len());
    }
    b = b
        .header("x-forwarded-for", device.ip().to_string())
        .header("x-forwarded-port", device.port().to_string())
        .header(hyper::header::HOST, t.host.as_str())
        .header(hyper::header::CONNECTION, "keep-alive");
    let Ok(request) = b.body(Full::new(req.body.clone())) else {
        return bad();
    };
    let stream =
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&t.connect))
            .await
        {
            Ok(Ok(s)) => s,
            _ => return (None, failure(504, "Gateway Timeout")),
        };
    let _ = stream.set_nodelay(true);
    let exchange = async {
        let (mut sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|_| (503, "Service Unavailable"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let resp = sender.send_request(request).await.map_err(|e| {
            if e.is_body_write_aborted() || e.is_canceled() {
                (503, "Service Unavailable")
            } else {
                (502, "Bad Gateway")
            }
        })?;
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, MAX_CONTENT_LENGTH)
            .collect()
            .await
            .map_err(|_| (502, "Bad Gateway"))?
            .to_bytes();
        Ok::<_, (i32, &str)>((parts, body))
    };
    let (parts, body) = match tokio::time::timeout(read_timeout, exchange).await {
        Ok(Ok(r)) => r,
        Ok(Err((code, reason))) => return (None, failure(code, reason)),
        Err(_) => return (None, failure(408, "Request Timeout")),
    };
    let status = parts.status.as_u16();
    if matches!(status, 300 | 301 | 302 | 303 | 305 | 307) {
        if let Some(loc) = parts
            .headers
            .get(hyper::header::LOCATION)
            .and_then(|v| v.to_str().ok())
        {
            let absolute = if loc.starts_with('/') {
                let scheme_host = uri.splitn(4, '/').take(3).collect::<Vec<_>>().join("/");
                format!("{scheme_host}{loc}")
            } else {
                loc.to_owned()
            };
            return (Some(absolute), failure(502, "Bad Gateway"));
        }
    }
    let mut headers = String::new();
    let mut has_length = false;
    for (name, value) in &parts.headers {
        has_length |= name == hyper::header::CONTENT_LENGTH;
        headers.push_str(name.as_str());
        headers.push(':');
        headers.push_str(&String::from_utf8_lossy(value.as_bytes()));
        headers.push('\n');
    }
    if !body.is_empty() && !has_length {
        headers.push_str(&format!("content-length:{}\n", body.len()));
    }
    let response = HttpResponse {
        status_code: i32::from(status),
        reason_phrase: parts.status.canonical_reason().unwrap_or("").to_owned(),
        headers,
        body,
    };
    (
        None,
        Forwarded {
            response,
            raw: false,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_entries_parse_or_say_why() {
        let mut c = HttpProxyConfig::default();
        c.add_mapping("api.example=127.0.0.1:8080,127.0.0.2:8081")
            .unwrap();
        assert_eq!(c.mapping["api.example"].len(), 2);
        for bad in [
            "",
            "x",
            "=1.2.3.4:5",
            "h=",
            "h=1.2.3.4",
            "h:1=1.2.3.4:5",
            "h=host:80",
        ] {
            assert!(c.add_mapping(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn targets_are_mapped_or_taken_as_they_are() {
        let mut c = HttpProxyConfig::default();
        c.add_mapping("api.example=127.0.0.1:8080").unwrap();
        let t = target(&c, "http://api.example/v1/x?y=1").unwrap();
        assert_eq!(
            (t.connect.as_str(), t.host.as_str(), t.path.as_str()),
            ("127.0.0.1:8080", "127.0.0.1", "/v1/x?y=1")
        );
        let t = target(&c, "https://other:9000?q").unwrap();
        assert_eq!(
            (t.connect.as_str(), t.host.as_str(), t.path.as_str()),
            ("other:9000", "other", "/?q")
        );
        let t = target(&c, "http://h").unwrap();
        assert_eq!((t.connect.as_str(), t.path.as_str()), ("h:80", "/"));
        for bad in ["", "ftp://h/", "http://", "http://h:x/"] {
            assert!(target(&c, bad).is_none(), "{bad:?}");
        }
    }
}
