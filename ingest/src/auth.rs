//! Bearer-token authentication, compared in constant time.

use axum::http::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use crate::error::ApiError;

/// The accepted tokens, kept only as SHA-256 digests: comparing fixed-size digests in constant
/// time leaks neither a token's content nor its length.
#[derive(Clone)]
pub struct Tokens {
    digests: Vec<[u8; 32]>,
}

impl Tokens {
    pub fn new(tokens: &[SecretString]) -> Self {
        Self {
            digests: tokens.iter().map(|t| digest(t.expose_secret())).collect(),
        }
    }

    /// Checks an `Authorization` header.
    pub fn check(&self, authorization: Option<&HeaderValue>) -> Result<(), ApiError> {
        let header = authorization.ok_or(ApiError::Unauthorized(
            "an Authorization: Bearer <token> header is required",
        ))?;
        let presented = header
            .to_str()
            .ok()
            .and_then(|value| {
                let (scheme, token) = value.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .ok_or(ApiError::Unauthorized(
                "the Authorization header must be `Bearer <token>`",
            ))?;
        let presented = digest(presented);
        // Every token is compared, so the time taken does not tell which one was close.
        let matched = self.digests.iter().fold(Choice::from(0), |found, known| {
            found | known.ct_eq(&presented)
        });
        if bool::from(matched) {
            Ok(())
        } else {
            Err(ApiError::Unauthorized("the bearer token is not valid"))
        }
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        Tokens::new(&[
            SecretString::from("old-token-0123456789"),
            SecretString::from("new-token-0123456789"),
        ])
    }

    #[test]
    fn any_configured_token_is_accepted() {
        for token in ["old-token-0123456789", "new-token-0123456789"] {
            let header = HeaderValue::from_str(&format!("Bearer {token}")).expect("header");
            assert!(tokens().check(Some(&header)).is_ok());
        }
        let lowercase = HeaderValue::from_static("bearer new-token-0123456789");
        assert!(tokens().check(Some(&lowercase)).is_ok());
    }

    #[test]
    fn missing_malformed_and_wrong_tokens_are_refused_with_a_reason() {
        let reason = |header: Option<&HeaderValue>| match tokens().check(header) {
            Err(ApiError::Unauthorized(reason)) => reason,
            other => panic!("expected 401, got {other:?}"),
        };
        assert!(reason(None).contains("required"));
        assert!(reason(Some(&HeaderValue::from_static("Basic abc"))).contains("Bearer <token>"));
        assert!(
            reason(Some(&HeaderValue::from_static("new-token-0123456789")))
                .contains("Bearer <token>")
        );
        assert!(
            reason(Some(&HeaderValue::from_static(
                "Bearer new-token-012345678"
            )))
            .contains("not valid")
        );
    }
}
