//! The process's one HTTP server: `serve`'s admin API, `run`'s `--metrics`, and (issue 13)
//! the control API are all [`Router`]s served by [`serve`] or [`spawn`].
//!
//! Why axum on tokio: tokio is already the runtime of the reference server and of the Redis
//! client, and axum is the tokio project's own router on hyper, the most used and best kept
//! HTTP stack in Rust. It parses HTTP properly (keep-alive, chunked bodies, pipelining),
//! which two hand-written responders did not, and adding an endpoint is one `.route(..)` on
//! a [`Router`] with typed extractors. Only its `http1` and `tokio` features are on: no JSON
//! extractor (the admin API keeps its own error texts), no HTTP/2, no macros.
//!
//! - [`serve`]: on a listener inside a runtime that already runs (the server's admin API).
//! - [`spawn`]: on its own thread and current-thread runtime, for a caller with no runtime
//!   (the fleet's control plane and its metrics endpoint).
//! - [`metrics`]: the `GET /metrics` route of the Prometheus text from
//!   [`crate::stats::prometheus`].

pub mod auth;
pub mod metrics;

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::Request;
use axum::ServiceExt as _;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tower::ServiceExt as _;

pub use axum::Router;

/// How long a stopping server lets open requests finish before it cuts them off (a client
/// that connects and says nothing must not hold a shutdown).
const GRACE: Duration = Duration::from_secs(1);

/// Serves `router` on `listener` until `stop` completes, then lets in-flight requests finish
/// for at most a second. A path with a trailing slash is served as the path without it
/// (`/stats/` is `/stats`), as the admin API always did.
pub async fn serve<F>(listener: TcpListener, router: Router, stop: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let app = router.map_request(trim_trailing_slash).into_make_service();
    let (stopped_tx, mut stopped_rx) = watch::channel(false);
    let signal = async move {
        stop.await;
        let _ = stopped_tx.send(true);
    };
    let server = axum::serve(listener, app).with_graceful_shutdown(signal);
    let cut_off = async move {
        // Err: the signal was dropped with the server, which has ended then anyway.
        let _ = stopped_rx.wait_for(|stopped| *stopped).await;
        tokio::time::sleep(GRACE).await;
    };
    tokio::select! {
        result = std::future::IntoFuture::into_future(server) => {
            if let Err(e) = result {
                tracing::warn!(error = %e, "HTTP server failed");
            }
        }
        () = cut_off => {}
    }
}

fn trim_trailing_slash(mut req: Request) -> Request {
    let path = req.uri().path();
    if path.len() > 1 && path.ends_with('/') {
        let trimmed = path.trim_end_matches('/');
        let trimmed = if trimmed.is_empty() { "/" } else { trimmed };
        let rebuilt = match req.uri().query() {
            Some(q) => format!("{trimmed}?{q}"),
            None => trimmed.to_owned(),
        };
        if let Ok(uri) = rebuilt.parse() {
            *req.uri_mut() = uri;
        }
    }
    req
}

/// An HTTP server on its own thread; stops when shut down or dropped.
pub struct HttpServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl HttpServer {
    /// The address it listens on (the real port when started on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the server and waits for its thread.
    pub fn shutdown(mut self) {
        self.stop_thread();
    }

    fn stop_thread(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

/// Binds `addr` (port 0 picks a free port) and serves `router` on a thread named `name`
/// with its own current-thread runtime: one scrape or call at a time needs no more.
///
/// # Errors
///
/// The address cannot be bound, or the thread or its runtime cannot be started.
pub fn spawn(addr: SocketAddr, router: Router, name: &str) -> anyhow::Result<HttpServer> {
    let listener =
        std::net::TcpListener::bind(addr).with_context(|| format!("binding {name} on {addr}"))?;
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .with_context(|| format!("starting the {name} runtime"))?;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            rt.block_on(async move {
                let listener = match TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(error = %e, "HTTP listener unusable");
                        return;
                    }
                };
                serve(listener, router, async move {
                    // Err: the handle was dropped without a word, which means stop too.
                    let _ = stop_rx.await;
                })
                .await;
            });
        })
        .with_context(|| format!("spawning the {name} thread"))?;
    Ok(HttpServer {
        addr,
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trimmed(uri: &str) -> String {
        let req = Request::builder()
            .uri(uri)
            .body(axum::body::Body::empty())
            .unwrap();
        trim_trailing_slash(req).uri().to_string()
    }

    #[test]
    fn trailing_slashes_are_trimmed_and_queries_kept() {
        assert_eq!(trimmed("/stats/"), "/stats");
        assert_eq!(trimmed("/fault/delay-ms/5//?x=1"), "/fault/delay-ms/5?x=1");
        assert_eq!(trimmed("/"), "/");
        assert_eq!(trimmed("/metrics"), "/metrics");
    }
}
