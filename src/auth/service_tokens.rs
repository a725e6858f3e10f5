//! Service tokens for internal callers: configured as SHA-256 hashes with
//! scopes, never as secrets; a presented token is hashed and compared with
//! every configured hash in constant time (ring's HMAC verify).

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::{digest, hmac, rand};

use super::Scopes;

/// Prefix of generated tokens, so they are recognisable in a secret scanner.
pub const TOKEN_PREFIX: &str = "actl_";

/// Name of the token generated for the embedded default.
pub const LOCAL_ADMIN: &str = "local-admin";

/// File in the data dir holding the generated token (mode 0600).
pub const LOCAL_ADMIN_FILE: &str = "admin-token";

struct Entry {
    name: String,
    scopes: Scopes,
    digest: [u8; 32],
}

/// The configured service tokens.
pub struct ServiceTokens {
    entries: Vec<Entry>,
    /// Per-process random key: comparisons go through HMAC verify, which
    /// is constant time, without revealing anything about stored hashes.
    mac: hmac::Key,
}

/// A service-token configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("service token #{index}: {reason} (expected name:scope+scope:sha256hex)")]
pub struct TokenConfigError {
    /// 1-based position in the list.
    pub index: usize,
    /// What is wrong (never the hash itself).
    pub reason: &'static str,
}

fn sha256(text: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, text.as_bytes()).as_ref());
    out
}

/// Hex SHA-256 of a token, the form the configuration takes.
pub fn hash_hex(token: &str) -> String {
    sha256(token).iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

impl ServiceTokens {
    /// Parses `name:scope+scope:sha256hex` entries separated by commas.
    pub fn parse(config: &str) -> Result<Self, TokenConfigError> {
        let mut tokens = Self::empty();
        for (position, entry) in config.split(',').map(str::trim).filter(|e| !e.is_empty()).enumerate() {
            let index = position + 1;
            let fail = |reason| TokenConfigError { index, reason };
            let mut parts = entry.split(':');
            let (Some(name), Some(scopes), Some(hex), None) = (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(fail("needs three ':'-separated parts"));
            };
            if name.is_empty() {
                return Err(fail("empty name"));
            }
            let scopes =
                Scopes::parse(scopes).ok_or_else(|| fail("scopes must be read, write or admin joined by '+'"))?;
            let digest = parse_hex(&hex.to_ascii_lowercase()).ok_or_else(|| fail("hash must be 64 hex digits"))?;
            tokens.entries.push(Entry {
                name: name.to_owned(),
                scopes,
                digest,
            });
        }
        Ok(tokens)
    }

    /// No tokens.
    pub fn empty() -> Self {
        let rng = rand::SystemRandom::new();
        let mac =
            hmac::Key::generate(hmac::HMAC_SHA256, &rng).unwrap_or_else(|_| hmac::Key::new(hmac::HMAC_SHA256, b""));
        Self {
            entries: Vec::new(),
            mac,
        }
    }

    /// Whether any token is configured.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds a token by its plaintext (the generated local one).
    pub fn add(&mut self, name: &str, scopes: Scopes, token: &str) {
        self.entries.push(Entry {
            name: name.to_owned(),
            scopes,
            digest: sha256(token),
        });
    }

    /// The name and scopes of the token, if it is one of ours.
    pub fn authenticate(&self, token: &str) -> Option<(&str, Scopes)> {
        let presented = sha256(token);
        let tag = hmac::sign(&self.mac, &presented);
        // Check every entry, so timing does not tell which one matched.
        let mut found = None;
        for entry in &self.entries {
            if hmac::verify(&self.mac, &entry.digest, tag.as_ref()).is_ok() && found.is_none() {
                found = Some((entry.name.as_str(), entry.scopes));
            }
        }
        found
    }
}

/// Reads the embedded default's admin token from the data dir, creating it
/// (mode 0600, 32 random bytes) on first start. Returns the token and its
/// path; the token itself is never logged.
pub fn local_admin_token(data_dir: &Path) -> std::io::Result<(String, PathBuf, bool)> {
    let path = data_dir.join(LOCAL_ADMIN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) if text.trim().starts_with(TOKEN_PREFIX) => return Ok((text.trim().to_owned(), path, false)),
        Ok(_) => {
            return Err(std::io::Error::other(format!(
                "{} does not hold a token",
                path.display()
            )));
        }
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
        Err(_) => {}
    }
    let mut bytes = [0u8; 32];
    rand::SecureRandom::fill(&rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| std::io::Error::other("no system randomness"))?;
    let token = format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
    std::fs::create_dir_all(data_dir)?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    std::io::Write::write_all(&mut options.open(&path)?, format!("{token}\n").as_bytes())?;
    Ok((token, path, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_hashes_match_only_their_token() {
        let config = format!(
            "gateway:read+write:{},ops:admin:{}",
            hash_hex("tok-a"),
            hash_hex("tok-b").to_uppercase()
        );
        let tokens = ServiceTokens::parse(&config).expect("valid config");
        let (name, scopes) = tokens.authenticate("tok-a").expect("known");
        assert_eq!(name, "gateway");
        assert!(scopes.contains(Scopes::WRITE) && !scopes.contains(Scopes::ADMIN));
        assert_eq!(tokens.authenticate("tok-b").map(|(n, _)| n), Some("ops"));
        assert!(tokens.authenticate("tok-c").is_none());
        assert!(tokens.authenticate("").is_none());
    }

    #[test]
    fn bad_configs_name_the_entry_without_the_hash() {
        for (config, index) in [
            ("a:read", 1),
            ("a:read:zz", 1),
            (
                &format!("a:read:{}, b:root:{}", "0".repeat(64), "0".repeat(64)) as &str,
                2,
            ),
        ] {
            let error = ServiceTokens::parse(config).err().expect("rejected");
            assert_eq!(error.index, index, "{config}");
        }
    }

    #[test]
    fn local_token_is_created_once_with_0600() {
        let dir = tempfile::tempdir().unwrap();
        let (token, path, created) = local_admin_token(dir.path()).unwrap();
        assert!(created && token.starts_with(TOKEN_PREFIX) && token.len() > 40);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let (again, _, created) = local_admin_token(dir.path()).unwrap();
        assert_eq!((again, created), (token, false));
    }
}
