//! Aether's admin access tokens: HS256 JWTs signed with JWT_SECRET_KEY,
//! verified exactly as Aether does (PyJWT, zero leeway, `type: access`).
//! Only HS256 is accepted: `none` and every other algorithm are refused
//! before any signature work.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use serde::Deserialize;

/// Why a token was refused (for logs and stable error reasons).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not three base64url parts of JSON.
    #[error("malformed token")]
    Malformed,
    /// Header algorithm is not HS256.
    #[error("unsupported algorithm")]
    Algorithm,
    /// The signature does not verify.
    #[error("bad signature")]
    Signature,
    /// `exp` is missing, not a number, or not in the future.
    #[error("expired")]
    Expired,
    /// `type` is not `access`.
    #[error("not an access token")]
    NotAccess,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

#[derive(Deserialize)]
struct Claims {
    user_id: String,
    exp: serde_json::Value,
    #[serde(rename = "type")]
    token_type: Option<String>,
}

/// Verifies access tokens with one secret.
pub struct JwtVerifier {
    key: hmac::Key,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtVerifier { .. }")
    }
}

impl JwtVerifier {
    /// A verifier for tokens signed with `secret` (UTF-8 bytes, as PyJWT).
    pub fn new(secret: &str) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()),
        }
    }

    /// The `user_id` of a valid access token at `now` (epoch seconds).
    pub fn verify(&self, token: &str, now: f64) -> Result<String, JwtError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed);
        };
        let decode = |part: &str| {
            URL_SAFE_NO_PAD
                .decode(part.trim_end_matches('='))
                .map_err(|_| JwtError::Malformed)
        };
        let header: Header = serde_json::from_slice(&decode(header)?).map_err(|_| JwtError::Malformed)?;
        if header.alg != "HS256" {
            return Err(JwtError::Algorithm);
        }
        let signed = &token[..token.len() - signature.len() - 1];
        hmac::verify(&self.key, signed.as_bytes(), &decode(signature)?).map_err(|_| JwtError::Signature)?;
        let claims: Claims = serde_json::from_slice(&decode(payload)?).map_err(|_| JwtError::Malformed)?;
        // PyJWT with leeway 0: expired once exp <= now.
        let exp = claims.exp.as_f64().ok_or(JwtError::Expired)?;
        if exp <= now {
            return Err(JwtError::Expired);
        }
        if claims.token_type.as_deref() != Some("access") {
            return Err(JwtError::NotAccess);
        }
        if claims.user_id.is_empty() {
            return Err(JwtError::Malformed);
        }
        Ok(claims.user_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // AETHER_COMPAT.md §7 vectors.
    const SECRET: &str = "aether-compat-jwt-secret-0123456789abcdef";
    const USER: &str = "11111111-2222-4333-8444-555555555555";
    const ACCESS: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ1c2VyX2lkIjoiMTExMTExMTEtMjIyMi00MzMzLTg0NDQtNTU1NTU1NTU1NTU1IiwiZW1haWwiOiJhZG1pbkBleGFtcGxlLmNvbSIsInJvbGUiOiJhZG1pbiIsImNyZWF0ZWRfYXQiOiIyMDI1LTAxLTAxVDAwOjAwOjAwKzAwOjAwIiwiZXhwIjo0MTAyNDQ0ODAwLCJ0eXBlIjoiYWNjZXNzIn0.kyKe_V5IDU1zPofXER8cKDOVUB2oHL6Zc-vnlwJQSkM";
    const EXPIRED: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ1c2VyX2lkIjoiMTExMTExMTEtMjIyMi00MzMzLTg0NDQtNTU1NTU1NTU1NTU1IiwiZW1haWwiOiJhZG1pbkBleGFtcGxlLmNvbSIsInJvbGUiOiJhZG1pbiIsImNyZWF0ZWRfYXQiOiIyMDI1LTAxLTAxVDAwOjAwOjAwKzAwOjAwIiwiZXhwIjoxNTc3ODM2ODAwLCJ0eXBlIjoiYWNjZXNzIn0.xZ9HJw1AYUEGxbuD75mC9xFxi3Tuj7gjyGJLMpVdsAk";
    const REFRESH: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ1c2VyX2lkIjoiMTExMTExMTEtMjIyMi00MzMzLTg0NDQtNTU1NTU1NTU1NTU1IiwiZW1haWwiOiJhZG1pbkBleGFtcGxlLmNvbSIsImV4cCI6NDEwMjQ0NDgwMCwidHlwZSI6InJlZnJlc2gifQ.6dQTF_kBg0-xnIPox6sUsleolOvISLxYS4VSdmaoWyo";
    const NOW: f64 = 1_800_000_000.0;

    #[test]
    fn aether_vectors() {
        let verifier = JwtVerifier::new(SECRET);
        assert_eq!(verifier.verify(ACCESS, NOW).as_deref(), Ok(USER));
        assert_eq!(verifier.verify(EXPIRED, NOW), Err(JwtError::Expired));
        assert_eq!(verifier.verify(REFRESH, NOW), Err(JwtError::NotAccess));
        assert_eq!(
            JwtVerifier::new("another-secret").verify(ACCESS, NOW),
            Err(JwtError::Signature)
        );
    }

    #[test]
    fn zero_leeway_at_the_second_of_expiry() {
        let verifier = JwtVerifier::new(SECRET);
        assert!(verifier.verify(ACCESS, 4_102_444_799.9).is_ok());
        assert_eq!(verifier.verify(ACCESS, 4_102_444_800.0), Err(JwtError::Expired));
    }

    #[test]
    fn unsigned_and_other_algorithms_are_refused() {
        let verifier = JwtVerifier::new(SECRET);
        let payload = ACCESS.split('.').nth(1).unwrap();
        for alg in ["none", "HS512", "RS256", "hs256"] {
            let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#));
            assert_eq!(
                verifier.verify(&format!("{header}.{payload}."), NOW),
                Err(JwtError::Algorithm),
                "{alg}"
            );
        }
        for bad in ["", "a.b", "a.b.c.d", "!!!.e30.e30", ACCESS.trim_end_matches('M')] {
            assert!(verifier.verify(bad, NOW).is_err(), "{bad}");
        }
    }
}
