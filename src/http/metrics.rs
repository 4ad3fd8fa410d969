//! `--metrics`: `GET /metrics`, the fleet's figures as Prometheus text
//! ([`crate::stats::prometheus::render`]). A scrape calls the source once, so the figures
//! are the control plane's latest merge, never a shard's live state.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::{HttpServer, Router};
use crate::stats::servers::Labels;
use crate::stats::{prometheus, ShardStats};

/// What the endpoint reads on each scrape.
pub type StatsSource = Arc<dyn Fn() -> ShardStats + Send + Sync>;

/// The metrics routes: `GET /metrics`; another GET is 404, another method 405.
pub fn router(source: StatsSource) -> Router {
    // One label table for the endpoint's life: per-server series stay put between scrapes.
    let labels = Arc::new(Mutex::new(Labels::default()));
    Router::new()
        .route(
            "/metrics",
            get(move || scrape(source.clone(), labels.clone())),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, "try /metrics\n") })
}

async fn scrape(source: StatsSource, labels: Arc<Mutex<Labels>>) -> Response {
    let stats = source();
    let text = {
        let mut labels = labels.lock().unwrap_or_else(PoisonError::into_inner);
        prometheus::render_labelled(&stats, &mut labels)
    };
    match text {
        Ok(body) => ([(header::CONTENT_TYPE, prometheus::CONTENT_TYPE)], body).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Starts the endpoint on `addr` (port 0 picks a free port), on its own thread.
///
/// # Errors
///
/// The address cannot be bound, or the thread cannot be spawned.
pub fn serve_metrics(addr: SocketAddr, source: StatsSource) -> anyhow::Result<HttpServer> {
    super::spawn(addr, router(source), "metrics")
}

/// The running endpoint.
pub type MetricsServer = HttpServer;
