//! Bearer-token checks shared by sluice's listeners (the HTTP source's
//! `auth_token_env`, the admin server's `auth_token_env`).

use crate::error::Invalid;

/// Whether an `Authorization` header value (`None`: no header) carries
/// `Bearer <token>`. The scheme name is case-insensitive (RFC 9110,
/// section 11.1) and followed by one or more spaces; the token is compared
/// in time independent of its content.
pub fn authorized(header: Option<&[u8]>, token: &str) -> bool {
    let Some(given) = header.and_then(credentials) else {
        return false;
    };
    given.len() == token.len()
        && given
            .iter()
            .zip(token.as_bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// The token of `Bearer <token>`.
fn credentials(value: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer";
    if value.len() <= SCHEME.len() || !value[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
        return None;
    }
    let rest = &value[SCHEME.len()..];
    let token_at = rest.iter().position(|&b| b != b' ')?;
    (token_at > 0).then_some(&rest[token_at..])
}

/// The token held by environment variable `var`: an error message when it
/// is unset or empty (a listener configured for a token must not start
/// open).
pub fn token_from_env(var: &str) -> Result<String, Invalid> {
    match std::env::var(var) {
        Ok(t) if !t.is_empty() => Ok(t),
        _ => Err(Invalid::new(format!(
            "auth_token_env names `{var}`, but that environment variable is not set (or empty)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::authorized;

    #[test]
    fn scheme_is_case_insensitive_and_token_exact() {
        for ok in ["Bearer s3cret", "bearer s3cret", "BEARER  s3cret"] {
            assert!(authorized(Some(ok.as_bytes()), "s3cret"), "{ok}");
        }
        for bad in [
            "bearer",
            "bearer ",
            "bearers3cret",
            "Bearer S3CRET",
            "Basic s3cret",
            "Bearer s3cre",
        ] {
            assert!(!authorized(Some(bad.as_bytes()), "s3cret"), "{bad}");
        }
        assert!(!authorized(None, "s3cret"));
    }
}
