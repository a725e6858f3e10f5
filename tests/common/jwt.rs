//! Aether-style admin tokens for tests (AETHER_COMPAT.md §7 vectors, and a
//! signer for other users).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

pub const SECRET: &str = "aether-compat-jwt-secret-0123456789abcdef";
pub const ACCESS_ADMIN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ1c2VyX2lkIjoiMTExMTExMTEtMjIyMi00MzMzLTg0NDQtNTU1NTU1NTU1NTU1IiwiZW1haWwiOiJhZG1pbkBleGFtcGxlLmNvbSIsInJvbGUiOiJhZG1pbiIsImNyZWF0ZWRfYXQiOiIyMDI1LTAxLTAxVDAwOjAwOjAwKzAwOjAwIiwiZXhwIjo0MTAyNDQ0ODAwLCJ0eXBlIjoiYWNjZXNzIn0.kyKe_V5IDU1zPofXER8cKDOVUB2oHL6Zc-vnlwJQSkM";
pub const EXPIRED_ADMIN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ1c2VyX2lkIjoiMTExMTExMTEtMjIyMi00MzMzLTg0NDQtNTU1NTU1NTU1NTU1IiwiZW1haWwiOiJhZG1pbkBleGFtcGxlLmNvbSIsInJvbGUiOiJhZG1pbiIsImNyZWF0ZWRfYXQiOiIyMDI1LTAxLTAxVDAwOjAwOjAwKzAwOjAwIiwiZXhwIjoxNTc3ODM2ODAwLCJ0eXBlIjoiYWNjZXNzIn0.xZ9HJw1AYUEGxbuD75mC9xFxi3Tuj7gjyGJLMpVdsAk";
pub const REFRESH_ADMIN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ1c2VyX2lkIjoiMTExMTExMTEtMjIyMi00MzMzLTg0NDQtNTU1NTU1NTU1NTU1IiwiZW1haWwiOiJhZG1pbkBleGFtcGxlLmNvbSIsImV4cCI6NDEwMjQ0NDgwMCwidHlwZSI6InJlZnJlc2gifQ.6dQTF_kBg0-xnIPox6sUsleolOvISLxYS4VSdmaoWyo";

fn payload(user_id: &str, exp: i64, token_type: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!(
        r#"{{"user_id":"{user_id}","email":"{user_id}@example.com","role":"admin","created_at":null,"exp":{exp},"type":"{token_type}"}}"#
    ))
}

/// An HS256 token as PyJWT writes it.
pub fn sign(secret: &str, user_id: &str, exp: i64, token_type: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
    let signed = format!("{header}.{}", payload(user_id, exp, token_type));
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(ring::hmac::sign(&key, signed.as_bytes()).as_ref());
    format!("{signed}.{signature}")
}

/// An `alg: none` token, which must never be accepted.
pub fn unsigned(user_id: &str, exp: i64) -> String {
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
    format!("{header}.{}.", payload(user_id, exp, "access"))
}
