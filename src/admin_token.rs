//! The admin token must be a secret: not a placeholder from the examples, not short enough to guess.

/// Shortest token accepted: 16 characters (`openssl rand -hex 32` makes 64).
pub const MIN_LEN: usize = 16;

/// What the shipped examples and the README used as a stand-in; a server must never accept them.
const PLACEHOLDERS: [&str; 4] = ["replace-me", "change-me", "changeme", "example"];

const HOW: &str = "make one with `openssl rand -hex 32 > deploy/secrets/admin_token` \
     (Kubernetes: deploy/k8s/secrets/admin_token), or set no token to keep admin off";

/// Why a token cannot be a secret; every message says how to make one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminTokenError {
    #[error("the admin token is a placeholder (it contains {0:?}); {HOW}")]
    Placeholder(&'static str),
    #[error(
        "the admin token has {0} characters, fewer than {MIN_LEN}: too short to be a secret; {HOW}"
    )]
    TooShort(usize),
    #[error("the admin token contains whitespace; {HOW}")]
    Whitespace,
}

/// Accepts a token (already trimmed) that can be a secret; else says why not and how to make one.
pub fn check_admin_token(token: &str) -> Result<(), AdminTokenError> {
    let lower = token.to_ascii_lowercase();
    if let Some(p) = PLACEHOLDERS.iter().find(|p| lower.contains(*p)) {
        return Err(AdminTokenError::Placeholder(p));
    }
    let len = token.chars().count();
    if len < MIN_LEN {
        return Err(AdminTokenError::TooShort(len));
    }
    if token.chars().any(char::is_whitespace) {
        return Err(AdminTokenError::Whitespace);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_the_shipped_placeholders() {
        for t in [
            "replace-me-with-a-long-random-token",
            "REPLACE-ME-with-a-long-random-token",
            "change-me",
            "please-changeme-0123456789",
            "example-example-example",
        ] {
            let e = check_admin_token(t).expect_err(t).to_string();
            assert!(
                e.contains("placeholder") && e.contains("openssl rand -hex 32"),
                "{e}"
            );
        }
    }

    #[test]
    fn refuses_short_tokens_and_says_how_long() {
        let e = check_admin_token("t0ken").expect_err("short").to_string();
        assert!(e.contains("5 characters") && e.contains("16"), "{e}");
        assert!(e.contains("openssl rand -hex 32"), "{e}");
        assert!(check_admin_token(&"x".repeat(MIN_LEN - 1)).is_err());
        assert!(check_admin_token("").is_err());
    }

    #[test]
    fn refuses_inner_whitespace() {
        assert!(check_admin_token("0123456789abcdef 0123456789abcdef").is_err());
    }

    #[test]
    fn accepts_a_random_token() {
        assert_eq!(check_admin_token(&"x".repeat(MIN_LEN)), Ok(()));
        assert_eq!(
            check_admin_token("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"),
            Ok(())
        );
    }
}
