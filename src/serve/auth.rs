//! Bearer-token authorization: with a token set, every route it guards
//! answers 401 unless the request carries `Authorization: Bearer <token>`.
//! The comparison takes the same time wherever the given token first
//! differs, so the answer's timing does not reveal how much of a guess was
//! right.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::Metrics;

/// The token a guarded route requires, and where its refusals are counted.
#[derive(Clone)]
pub(super) struct Token {
    token: Arc<[u8]>,
    metrics: Arc<Metrics>,
}

impl Token {
    pub(super) fn new(token: &str, metrics: Arc<Metrics>) -> Self {
        Token {
            token: token.as_bytes().into(),
            metrics,
        }
    }

    /// Whether an `Authorization` header value grants access.
    fn admits(&self, value: Option<&HeaderValue>) -> bool {
        let Some(given) = value.map(HeaderValue::as_bytes) else {
            return false;
        };
        let Some(given) = given
            .strip_prefix(b"Bearer ")
            .or_else(|| given.strip_prefix(b"bearer "))
        else {
            return false;
        };
        // Lengths are compared first (the length is not the secret); the
        // bytes in constant time.
        bool::from(given.ct_eq(&self.token))
    }
}

/// Refuse a token that cannot be sent in a header or guesses easily.
pub(super) fn check_token(token: &str) -> Result<(), String> {
    if token.len() < 16 {
        return Err(format!(
            "the token has {} characters; use at least 16 (e.g. `openssl rand -hex 32`)",
            token.len()
        ));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the token must be printable ASCII without spaces".into());
    }
    Ok(())
}

/// The middleware: pass the request on, or answer 401.
pub(super) async fn require(State(t): State<Token>, req: Request, next: Next) -> Response {
    if t.admits(req.headers().get(header::AUTHORIZATION)) {
        return next.run(req).await;
    }
    let t0 = Instant::now();
    let mut r = super::error_response(
        StatusCode::UNAUTHORIZED,
        "missing or wrong token: send `Authorization: Bearer <token>`".into(),
    );
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    t.metrics.request(401, t0.elapsed().as_secs_f64());
    r.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> Token {
        Token::new("0123456789abcdef", Arc::new(Metrics::default()))
    }

    #[test]
    fn admits_only_the_exact_bearer_token() {
        let t = token();
        let v = |s: &str| HeaderValue::from_str(s).unwrap();
        assert!(t.admits(Some(&v("Bearer 0123456789abcdef"))));
        assert!(t.admits(Some(&v("bearer 0123456789abcdef"))));
        for bad in [
            "Bearer 0123456789abcdeF",
            "Bearer 0123456789abcde",
            "Bearer 0123456789abcdef0",
            "Basic 0123456789abcdef",
            "0123456789abcdef",
            "Bearer",
            "",
        ] {
            assert!(!t.admits(Some(&v(bad))), "{bad:?}");
        }
        assert!(!t.admits(None));
    }

    #[test]
    fn weak_tokens_are_refused() {
        assert!(check_token("short").is_err());
        assert!(check_token("0123456789abcdef with space").is_err());
        assert!(check_token("0123456789abcdef").is_ok());
    }
}
