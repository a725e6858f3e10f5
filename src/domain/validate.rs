//! Checks on caller-supplied identifiers, shared by every service.

use crate::error::{Error, Result};

/// Longest identifier accepted (Aether's ids are 36-byte uuid4 text).
pub const MAX_IDENTIFIER_LEN: usize = 255;

/// A required opaque identifier: 1..=255 bytes, no whitespace or control
/// characters, and no `:` (the Redis key separator, which would make keys
/// ambiguous). Glob characters are allowed: keys are never used as patterns
/// unescaped.
pub fn key_part(field: &'static str, value: &str) -> Result<String> {
    if value.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    if value.len() > MAX_IDENTIFIER_LEN {
        return Err(Error::invalid(
            field,
            format!("must be at most {MAX_IDENTIFIER_LEN} bytes"),
        ));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Error::invalid(
            field,
            "must not contain whitespace or control characters",
        ));
    }
    if value.contains(':') {
        return Err(Error::invalid(field, "must not contain ':'"));
    }
    Ok(value.to_owned())
}

/// A user-facing identifier (user id, username, email, API key id) as Aether
/// takes it: surrounding whitespace is ignored; 1..=255 bytes remain, with
/// no control characters. Returns the trimmed value.
pub fn identifier<'a>(field: &'static str, value: &'a str) -> Result<&'a str> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    if trimmed.len() > MAX_IDENTIFIER_LEN {
        return Err(Error::invalid(
            field,
            format!("must be at most {MAX_IDENTIFIER_LEN} bytes"),
        ));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(Error::invalid(field, "must not contain control characters"));
    }
    Ok(trimmed)
}

/// An optional identifier: empty means absent, otherwise as [`key_part`].
pub fn optional_key_part(field: &'static str, value: Option<&str>) -> Result<Option<String>> {
    value.map(|v| key_part(field, v)).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_uuid_and_glob_characters() {
        assert!(key_part("f", "11111111-2222-4333-8444-555555555555").is_ok());
        assert!(key_part("f", "a*b?c[d]").is_ok());
    }

    #[test]
    fn identifiers_are_trimmed_and_bounded() {
        assert_eq!(identifier("f", "  alice@example.com ").ok(), Some("alice@example.com"));
        assert!(identifier("f", "   ").is_err());
        assert!(identifier("f", "a\u{0}b").is_err());
        assert!(identifier("f", &"x".repeat(256)).is_err());
    }

    #[test]
    fn rejects_empty_long_separator_and_whitespace() {
        for bad in ["", "a:b", "a b", "a\nb", &"x".repeat(256)] {
            assert!(key_part("f", bad).is_err(), "{bad:?}");
        }
    }
}
