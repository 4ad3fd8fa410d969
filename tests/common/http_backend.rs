//! An HTTP server of the test's own on loopback: an axum router on its own thread and
//! current-thread runtime, for as long as the test process lives.

use std::net::SocketAddr;

/// Serves `app` on a free loopback port; returns where.
pub fn spawn(app: axum::Router) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    let addr = listener.local_addr().expect("local addr");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            let _ = axum::serve(l, app).await;
        });
    });
    addr
}
