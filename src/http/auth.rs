//! Who may speak to an API that can act for every device or the whole server: the admin API
//! of `serve` and (issue 13) the fleet's control API.
//!
//! The rule: on a loopback address a token is optional; on any other address one is
//! required, or the process refuses to start. With a token, every request must carry
//! `Authorization: Bearer <token>`; one without it, or with another token, gets 401. Tokens
//! are compared in constant time (for the token's length), so the time of a refusal does not
//! tell how much of a guess was right.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};

use super::Router;

/// A bearer token: its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(pub String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

/// Whether `addr` may listen with `token` (`flag` names the address flag in the message).
///
/// # Errors
/// A non-loopback address without a token, or an empty token.
pub fn check_exposure(addr: SocketAddr, token: Option<&str>, flag: &str) -> anyhow::Result<()> {
    if token.is_some_and(str::is_empty) {
        anyhow::bail!("{flag}: the token must not be empty");
    }
    if !addr.ip().is_loopback() && token.is_none() {
        anyhow::bail!(
            "{flag} {addr} is not a loopback address: whoever reaches it can act for every \
             device; give a token (--{}-token or its environment variable) or listen on 127.0.0.1",
            flag.trim_start_matches("--")
        );
    }
    Ok(())
}

/// `router` with every request checked for the bearer token, if there is one.
pub fn require_bearer(router: Router, token: Option<&str>) -> Router {
    match token {
        Some(t) => router.layer(axum::middleware::from_fn_with_state(
            Arc::<[u8]>::from(t.as_bytes()),
            check,
        )),
        None => router,
    }
}

async fn check(State(token): State<Arc<[u8]>>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
    if given.is_some_and(|g| constant_time_eq(g, &token)) {
        return next.run(req).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "{\"error\":\"unauthorized: give Authorization: Bearer <token>\"}\n",
    )
        .into_response()
}

/// Equal bytes, in time that depends on the lengths only.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for (i, &x) in a.iter().enumerate() {
        // Walks all of `a` whatever `b` is; a shorter `b` compares against its bytes again.
        let y = if b.is_empty() { 0 } else { b[i % b.len()] };
        diff |= x ^ y;
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule() {
        let lo: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let lo6: SocketAddr = "[::1]:1".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:1".parse().unwrap();
        assert!(check_exposure(lo, None, "--admin").is_ok());
        assert!(check_exposure(lo6, None, "--admin").is_ok());
        let e = check_exposure(any, None, "--admin")
            .unwrap_err()
            .to_string();
        assert!(e.contains("--admin-token"), "{e}");
        assert!(check_exposure(any, Some("s3cret"), "--admin").is_ok());
        assert!(check_exposure(lo, Some(""), "--admin").is_err());
    }

    #[test]
    fn equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        for (a, b) in [
            (&b"abd"[..], &b"abc"[..]),
            (b"ab", b"abc"),
            (b"abcd", b"abc"),
            (b"", b"a"),
            (b"a", b""),
        ] {
            assert!(!constant_time_eq(a, b), "{a:?} {b:?}");
        }
        assert!(constant_time_eq(b"", b""));
    }
}
