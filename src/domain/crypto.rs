//! Aether-compatible decryption and masking of stored API keys
//! (`AETHER_COMPAT.md` §6, Aether's `src/core/crypto.py`).
//!
//! Stored value = `urlsafe_b64encode(fernet_token)`, so base64 is applied twice.
//! Both layers are decoded as Python's lenient `base64.urlsafe_b64decode` does,
//! so every value Aether can read, we can read. Fernet tokens are checked with
//! a constant-time MAC and no TTL or clock-skew limit, as Aether does.
//! Domain logic: no tonic, no fred, no sea-orm types here.

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE;
use fernet::Fernet;
use ring::{digest, pbkdf2};

/// Aether's development secret, used when `ENCRYPTION_KEY` is unset outside
/// production.
pub const DEV_DEFAULT_SECRET: &str = "dev-encryption-key-do-not-use-in-production";

/// PBKDF2 iterations of Aether's key derivation.
const PBKDF2_ITERATIONS: NonZeroU32 = NonZeroU32::new(100_000).expect("non-zero literal");

/// Aether hashes this to get its PBKDF2 salt (`sha256(b"aether-v1")[:16]`).
const SALT_SEED: &[u8] = b"aether-v1";

/// Most masks a cipher remembers; past it the memo starts afresh.
const MASK_MEMO_CAP: usize = 10_000;

/// Longer stored values are not remembered, so a full memo stays under
/// about 6 MB (an API key's stored value is about 200 bytes).
const MASK_MEMO_MAX_STORED_LEN: usize = 512;

/// Fernet keys are 32 bytes: 16 to sign, then 16 to encrypt.
const FERNET_KEY_LEN: usize = 32;

/// The fernet crate rejects tokens stamped more than this many seconds after
/// "now" (its private `MAX_CLOCK_SKEW`).
const FERNET_MAX_CLOCK_SKEW_SECS: u64 = 60;

/// "Now" for `decrypt_at_time`: the latest instant whose skew check cannot
/// overflow, so no token timestamp is ever in the future (Python's
/// `Fernet.decrypt` without `ttl` checks no timestamp at all).
const NO_CLOCK: u64 = u64::MAX - FERNET_MAX_CLOCK_SKEW_SECS;

/// The mask between the visible prefix and suffix.
const MASK: &str = "********";

/// Aether's `mask_api_key(k, 8, 4)`: visible prefix and suffix, in characters.
const AETHER_PREFIX_CHARS: usize = 8;
const AETHER_SUFFIX_CHARS: usize = 4;

/// Keys of at most this many characters are masked by
/// [`mask_api_key_safe`]'s short-key rule (Aether defect #11).
pub const SAFE_MASK_SHORT_KEY_MAX_CHARS: usize = AETHER_PREFIX_CHARS + AETHER_SUFFIX_CHARS;

/// Why a key could not be built or a stored value not read. Messages never
/// contain a secret, a ciphertext or a plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// Production without `ENCRYPTION_KEY` (Aether refuses to start too).
    #[error("ENCRYPTION_KEY must be set in production (Aether's secret for stored API keys)")]
    MissingKey,
    /// Not a Fernet token under this key: wrong `ENCRYPTION_KEY`, corrupted or
    /// tampered value, or a plaintext that is not UTF-8.
    #[error("stored value could not be decrypted (wrong ENCRYPTION_KEY or corrupted value)")]
    Undecryptable,
}

/// Where the secret came from. Safe to log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    /// `ENCRYPTION_KEY` was set.
    Environment,
    /// `ENCRYPTION_KEY` was unset or empty outside production:
    /// [`DEV_DEFAULT_SECRET`].
    DevelopmentDefault,
}

/// How the Fernet key was obtained from the secret. Safe to log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyDerivation {
    /// The secret itself decodes (leniently) to 32 bytes.
    Direct,
    /// PBKDF2-HMAC-SHA256 of the secret.
    Pbkdf2,
}

/// Aether's Fernet cipher for stored API keys. The key is zeroed on drop (by
/// the fernet crate) and never printed: `Debug` shows `KeyCipher { .. }`.
#[derive(Clone)]
pub struct KeyCipher {
    fernet: Fernet,
    source: KeySource,
    derivation: KeyDerivation,
    /// Stored value -> its mask. A mask depends only on the stored value
    /// (under this key), so it is never stale; listings show the same keys
    /// again and again and each decrypt costs microseconds. Holds no
    /// plaintext: only what the database and the listings already show.
    masks: Arc<Mutex<HashMap<Box<str>, MaskedKey>>>,
    #[cfg(test)]
    key_b64: String,
}

impl fmt::Debug for KeyCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyCipher").finish_non_exhaustive()
    }
}

impl KeyCipher {
    /// Builds the cipher from `ENCRYPTION_KEY` as Aether does. An empty secret
    /// counts as unset (Python's `if not encryption_key`): an error in
    /// production, [`DEV_DEFAULT_SECRET`] elsewhere. Then the secret is the
    /// Fernet key itself if Python's lenient `urlsafe_b64decode` makes 32
    /// bytes of it, else PBKDF2-HMAC-SHA256 (salt `sha256(b"aether-v1")[:16]`,
    /// 100 000 iterations) derives the key. The PBKDF2 path takes a noticeable
    /// fraction of a second: build once at startup.
    ///
    /// # Errors
    /// [`CryptoError::MissingKey`] in production without a secret.
    ///
    /// # Panics
    /// Never: the only `expect` guards a fixed-length invariant.
    pub fn from_secret(secret: Option<&str>, production: bool) -> Result<Self, CryptoError> {
        let (secret, source) = match secret {
            Some(s) if !s.is_empty() => (s, KeySource::Environment),
            _ if production => return Err(CryptoError::MissingKey),
            _ => (DEV_DEFAULT_SECRET, KeySource::DevelopmentDefault),
        };

        let mut key = [0u8; FERNET_KEY_LEN];
        let mut decoded = python_urlsafe_b64decode(secret.as_bytes()).unwrap_or_default();
        let derivation = if decoded.len() == FERNET_KEY_LEN {
            key.copy_from_slice(&decoded);
            KeyDerivation::Direct
        } else {
            let salt = digest::digest(&digest::SHA256, SALT_SEED);
            pbkdf2::derive(
                pbkdf2::PBKDF2_HMAC_SHA256,
                PBKDF2_ITERATIONS,
                &salt.as_ref()[..16],
                secret.as_bytes(),
                &mut key,
            );
            KeyDerivation::Pbkdf2
        };
        wipe(&mut decoded);

        let key_b64 = URL_SAFE.encode(key);
        wipe(&mut key);
        // Invariant, not input: a 32-byte key always makes a Fernet.
        let fernet = Fernet::new(&key_b64).expect("a 32-byte key is a valid Fernet key");
        let cipher = Self {
            fernet,
            source,
            derivation,
            masks: Arc::default(),
            #[cfg(test)]
            key_b64: key_b64.clone(),
        };
        wipe(&mut key_b64.into_bytes());
        Ok(cipher)
    }

    /// Where the secret came from (for a startup log line).
    #[must_use]
    pub const fn source(&self) -> KeySource {
        self.source
    }

    /// How the key was derived (for a startup log line).
    #[must_use]
    pub const fn derivation(&self) -> KeyDerivation {
        self.derivation
    }

    /// The Fernet key, urlsafe base64 with padding. Tests only: key material
    /// is never exposed by the service.
    #[cfg(test)]
    pub fn fernet_key_b64(&self) -> String {
        self.key_b64.clone()
    }

    /// Reads a stored value (`api_keys.key_encrypted`,
    /// `provider_api_keys.api_key`). `""` is returned as `""`, as Aether
    /// does. No TTL and no future-timestamp limit apply.
    ///
    /// # Errors
    /// [`CryptoError::Undecryptable`] if the value is not a Fernet token under
    /// this key with a UTF-8 plaintext (Aether raises `DecryptionException`).
    pub fn decrypt(&self, stored: &str) -> Result<String, CryptoError> {
        if stored.is_empty() {
            return Ok(String::new());
        }
        let outer = python_urlsafe_b64decode(stored.as_bytes()).ok_or(CryptoError::Undecryptable)?;
        // Python's Fernet decodes the token leniently too; re-encode it in the
        // canonical form the fernet crate parses.
        let token = python_urlsafe_b64decode(&outer).ok_or(CryptoError::Undecryptable)?;
        let plaintext = self
            .fernet
            .decrypt_at_time(&URL_SAFE.encode(token), None, NO_CLOCK)
            .map_err(|_| CryptoError::Undecryptable)?;
        String::from_utf8(plaintext).map_err(|e| {
            let mut bytes = e.into_bytes();
            wipe(&mut bytes);
            CryptoError::Undecryptable
        })
    }

    /// Encrypts as Aether does (random IV, current timestamp), in the stored
    /// format: `urlsafe_b64encode(fernet_token)`, padded. `""` stays `""`.
    #[must_use]
    pub fn encrypt(&self, plaintext: &str) -> String {
        if plaintext.is_empty() {
            return String::new();
        }
        URL_SAFE.encode(self.fernet.encrypt(plaintext.as_bytes()))
    }

    /// Decrypts a stored key and masks it for display with
    /// [`mask_api_key_safe`] (the service's choice, see there). Empty stored
    /// values and empty plaintexts are [`MaskedKey::Empty`]; a value that does
    /// not decrypt is [`MaskedKey::Undecryptable`], never the ciphertext
    /// (Aether shows `None` for both).
    #[must_use]
    pub fn decrypt_and_mask(&self, stored: &str) -> MaskedKey {
        // A poisoned memo only costs the decrypt.
        if let Some(known) = self.masks.lock().ok().and_then(|masks| masks.get(stored).cloned()) {
            return known;
        }
        let masked = match self.decrypt(stored) {
            Ok(plaintext) => {
                let masked = mask_api_key_safe(&plaintext).map_or(MaskedKey::Empty, MaskedKey::Masked);
                let mut bytes = plaintext.into_bytes();
                wipe(&mut bytes);
                masked
            }
            Err(_) => MaskedKey::Undecryptable,
        };
        if stored.len() <= MASK_MEMO_MAX_STORED_LEN
            && let Ok(mut masks) = self.masks.lock()
        {
            if masks.len() >= MASK_MEMO_CAP {
                masks.clear();
            }
            masks.insert(stored.into(), masked.clone());
        }
        masked
    }
}

/// A stored key as shown to operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MaskedKey {
    /// The masked key.
    Masked(String),
    /// Nothing stored (or an empty key).
    Empty,
    /// The stored value does not decrypt under the configured key.
    Undecryptable,
}

impl MaskedKey {
    /// Display text: the mask, `""` for `Empty`, `"<undecryptable>"` for
    /// `Undecryptable`.
    #[must_use]
    pub fn display(&self) -> String {
        match self {
            Self::Masked(masked) => masked.clone(),
            Self::Empty => String::new(),
            Self::Undecryptable => "<undecryptable>".to_owned(),
        }
    }
}

/// Aether's `mask_api_key(key, 8, 4)`, character for character (Python slices
/// code points; so does this): `None` for `""`; up to 12 characters, the first
/// 8 then `********`; longer, the first 8, `********`, the last 4.
///
/// Kept for compatibility only: it has Aether's defect #11 (a key of 9–12
/// characters shows 8 of them, one of 8 or fewer is shown whole). Show
/// [`mask_api_key_safe`] instead.
#[must_use]
pub fn mask_api_key(key: &str) -> Option<String> {
    if key.is_empty() {
        return None;
    }
    let len = key.chars().count();
    let prefix: String = key.chars().take(AETHER_PREFIX_CHARS).collect();
    if len <= AETHER_PREFIX_CHARS + AETHER_SUFFIX_CHARS {
        return Some(format!("{prefix}{MASK}"));
    }
    let suffix: String = key.chars().skip(len - AETHER_SUFFIX_CHARS).collect();
    Some(format!("{prefix}{MASK}{suffix}"))
}

/// The mask the service shows. For keys of up to
/// [`SAFE_MASK_SHORT_KEY_MAX_CHARS`] (12) characters it shows only the first
/// `len / 3` characters then `********`, so at most a third of a short key is
/// revealed (Aether reveals up to all of it, defect #11). Longer keys get
/// exactly Aether's [`mask_api_key`] output, so operators see the same text in
/// both admin UIs for every realistic key. `None` for `""`.
#[must_use]
pub fn mask_api_key_safe(key: &str) -> Option<String> {
    if key.is_empty() {
        return None;
    }
    let len = key.chars().count();
    if len <= SAFE_MASK_SHORT_KEY_MAX_CHARS {
        let prefix: String = key.chars().take(len / 3).collect();
        return Some(format!("{prefix}{MASK}"));
    }
    mask_api_key(key)
}

/// Python's `base64.urlsafe_b64decode(bytes)`, i.e. `-_` mapped to `+/` then
/// `binascii.a2b_base64(strict_mode=False)` (`CPython` 3.11+): both alphabets
/// decode; any other byte (whitespace, punctuation, non-ASCII) is skipped;
/// `=` before the third character of a quantum is ignored; enough `=` to end
/// a quantum ends the input (the rest is ignored); unused trailing bits are
/// dropped unchecked; a quantum left unfinished is an error (`None`).
fn python_urlsafe_b64decode(input: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len() / 4 * 3 + 3);
    let mut quad_pos = 0u8;
    let mut left = 0u8;
    let mut pads = 0u8;
    for &byte in input {
        if byte == b'=' {
            if quad_pos >= 2 {
                pads += 1;
                if quad_pos + pads >= 4 {
                    return Some(out);
                }
            }
            continue;
        }
        let Some(sextet) = b64_sextet(byte) else {
            continue;
        };
        pads = 0;
        match quad_pos {
            0 => {
                left = sextet;
                quad_pos = 1;
            }
            1 => {
                out.push((left << 2) | (sextet >> 4));
                left = sextet & 0x0f;
                quad_pos = 2;
            }
            2 => {
                out.push((left << 4) | (sextet >> 2));
                left = sextet & 0x03;
                quad_pos = 3;
            }
            _ => {
                out.push((left << 6) | sextet);
                quad_pos = 0;
            }
        }
    }
    (quad_pos == 0).then_some(out)
}

/// The 6-bit value of a base64 character of either alphabet.
fn b64_sextet(byte: u8) -> Option<u8> {
    match byte {
        b'A'..=b'Z' => Some(byte - b'A'),
        b'a'..=b'z' => Some(byte - b'a' + 26),
        b'0'..=b'9' => Some(byte - b'0' + 52),
        b'+' | b'-' => Some(62),
        b'/' | b'_' => Some(63),
        _ => None,
    }
}

/// Best-effort zeroing of a transient copy of key material or plaintext
/// (`black_box` keeps the writes from being optimised away).
fn wipe(bytes: &mut [u8]) {
    bytes.fill(0);
    std::hint::black_box(bytes);
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use super::*;

    const S: &str = "aether-compat-test-secret-2024";
    const F: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const N: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

    const KEY_S: &str = "tb8u7Qo9TUSidbip0N3ZpxoB7sVnbRBTYakzDpgYzDk=";
    const KEY_D: &str = "qGVbbzTSey8Hi1DRtS6wkb2jL33pRBHXTQW-GO6qne0=";
    const KEY_N: &str = "WGhBodNT2Z7WVPrIunFY7dj-VhFD5fNfbIVBreHMa5s=";

    const LONG: &str = "sk-test-1234567890abcdef";

    const S_LONG: &str = "Z0FBQUFBQm5kSVdBQUFFQ0F3UUZCZ2NJQ1FvTERBME9ENWMxd0sxdkMyVFQwbHpLYkkyVnhWNkx3aGlBTGNXdnNNdTVlUWhVcl9mdHhsc042aDdweV9XUUY1ejgwTGNyTDNVd2JrOGhwTWpQbEtaZkJ1TXJlZ2c9";
    const S_ABC: &str = "Z0FBQUFBQm5kSVdBQUFFQ0F3UUZCZ2NJQ1FvTERBME9ENER2VTN2c3F5UXc5djF3N3NtTEh4R2lNVlVRaDhrdXg1eHMzelAyMWlXR0IwZW1ETWNabmZ6bGFxZHhGdDBPQXc9PQ==";
    const D_LONG: &str = "Z0FBQUFBQm5kSVdBQUFFQ0F3UUZCZ2NJQ1FvTERBME9EOERFamRwdWhGZmE4LVhhR0NDV3ZTTzduYXpneVpiVUNfSTZyYTYwR2N4TWJRcVdZc2dyMjlpa2dLZnhoY2dLWm5QTnBnN1dpZ1BKMGZBZTlBVC15WWM9";
    const D_ABC: &str = "Z0FBQUFBQm5kSVdBQUFFQ0F3UUZCZ2NJQ1FvTERBME9ENjNtSlJtSV9oQnhabkNEY3R6Y0FseFFrQmc5UE9lQ3lrMF9LZm50bk9BMVhLelZHVFMwYm5fR21HUlRwMXc5M1E9PQ==";
    const F_ABC: &str = "Z0FBQUFBQm5kSVdBQUFFQ0F3UUZCZ2NJQ1FvTERBME9EeU8tMnRFbEstbzIyelJIRkpuOHBBQXpOdURBQkZDcjBzSi1kN3BMa1JBbTV2Nm9zY1BhU0dtTHpIZXdDRmJvN2c9PQ==";
    const N_ABC: &str = "Z0FBQUFBQm5kSVdBQUFFQ0F3UUZCZ2NJQ1FvTERBME9EMVJCM2dsMks2NDdWVFBJSVU4eWxpWXB2QXFycWd5TzF1aEFDbFViaEJNVE1LbkRHRG1aWVpVdnVoWDQwTzRZWUE9PQ==";

    /// PBKDF2 is slow in debug builds: derive each vector key once.
    fn cipher_s() -> &'static KeyCipher {
        static C: OnceLock<KeyCipher> = OnceLock::new();
        C.get_or_init(|| KeyCipher::from_secret(Some(S), false).unwrap())
    }
    fn cipher_d() -> &'static KeyCipher {
        static C: OnceLock<KeyCipher> = OnceLock::new();
        C.get_or_init(|| KeyCipher::from_secret(None, false).unwrap())
    }
    fn cipher_f() -> &'static KeyCipher {
        static C: OnceLock<KeyCipher> = OnceLock::new();
        C.get_or_init(|| KeyCipher::from_secret(Some(F), false).unwrap())
    }
    fn cipher_n() -> &'static KeyCipher {
        static C: OnceLock<KeyCipher> = OnceLock::new();
        C.get_or_init(|| KeyCipher::from_secret(Some(N), false).unwrap())
    }

    fn strict_decode(s: &str) -> Vec<u8> {
        URL_SAFE.decode(s).unwrap()
    }

    /// Wraps a raw Fernet token (bytes) in the stored format.
    fn stored_from_token(token: &[u8]) -> String {
        URL_SAFE.encode(URL_SAFE.encode(token))
    }

    /// A token with a valid MAC under `cipher` around arbitrary bytes.
    fn signed_token(cipher: &KeyCipher, body: &[u8]) -> Vec<u8> {
        let key = strict_decode(&cipher.fernet_key_b64());
        let signing = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key[..16]);
        let mut token = body.to_vec();
        token.extend_from_slice(ring::hmac::sign(&signing, body).as_ref());
        token
    }

    #[test]
    fn salt_is_aethers() {
        let salt = digest::digest(&digest::SHA256, SALT_SEED);
        let hex: String = salt.as_ref()[..16].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "8797080a7a4b45b4810e934d1af36261");
    }

    #[test]
    fn derivation_vectors() {
        assert_eq!(cipher_s().fernet_key_b64(), KEY_S);
        assert_eq!(cipher_s().derivation(), KeyDerivation::Pbkdf2);
        assert_eq!(cipher_s().source(), KeySource::Environment);

        assert_eq!(cipher_d().fernet_key_b64(), KEY_D);
        assert_eq!(cipher_d().derivation(), KeyDerivation::Pbkdf2);
        assert_eq!(cipher_d().source(), KeySource::DevelopmentDefault);

        assert_eq!(cipher_f().fernet_key_b64(), F);
        assert_eq!(cipher_f().derivation(), KeyDerivation::Direct);

        assert_eq!(cipher_n().fernet_key_b64(), KEY_N);
        assert_eq!(cipher_n().derivation(), KeyDerivation::Pbkdf2);
    }

    #[test]
    fn dev_default_is_the_documented_secret() {
        let explicit = KeyCipher::from_secret(Some(DEV_DEFAULT_SECRET), false).unwrap();
        assert_eq!(explicit.fernet_key_b64(), KEY_D);
        assert_eq!(explicit.source(), KeySource::Environment);
    }

    #[test]
    fn empty_secret_counts_as_unset() {
        let dev = KeyCipher::from_secret(Some(""), false).unwrap();
        assert_eq!(dev.fernet_key_b64(), KEY_D);
        assert_eq!(dev.source(), KeySource::DevelopmentDefault);
        assert_eq!(
            KeyCipher::from_secret(Some(""), true).unwrap_err(),
            CryptoError::MissingKey
        );
    }

    #[test]
    fn production_without_key_is_missing_key_and_names_no_secret() {
        let err = KeyCipher::from_secret(None, true).unwrap_err();
        assert_eq!(err, CryptoError::MissingKey);
        let text = err.to_string();
        assert!(text.contains("ENCRYPTION_KEY"), "{text}");
        assert!(!text.contains(DEV_DEFAULT_SECRET));
        assert!(!text.contains(KEY_D));
        // A set key works in production.
        assert_eq!(KeyCipher::from_secret(Some(F), true).unwrap().fernet_key_b64(), F);
    }

    #[test]
    fn debug_shows_no_key_material() {
        let shown = format!("{:?} {:#?}", cipher_f(), cipher_s());
        assert_eq!(format!("{:?}", cipher_f()), "KeyCipher { .. }");
        for secret in [F, KEY_S, "AAECAwQF", S] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }

    #[test]
    fn stored_vectors_decrypt() {
        let cases: [(&KeyCipher, &str, &str); 6] = [
            (cipher_s(), S_LONG, LONG),
            (cipher_s(), S_ABC, "abc"),
            (cipher_d(), D_LONG, LONG),
            (cipher_d(), D_ABC, "abc"),
            (cipher_f(), F_ABC, "abc"),
            (cipher_n(), N_ABC, "abc"),
        ];
        for (cipher, stored, plaintext) in cases {
            assert!(stored.starts_with("Z0FBQUFB"));
            assert_eq!(cipher.decrypt(stored).as_deref(), Ok(plaintext), "{stored}");
        }
    }

    #[test]
    fn vectors_are_stamped_2025_01_01_with_iv_0_to_15() {
        let token = strict_decode(std::str::from_utf8(&strict_decode(S_ABC)).unwrap());
        assert_eq!(token[0], 0x80);
        assert_eq!(u64::from_be_bytes(token[1..9].try_into().unwrap()), 1_735_689_600);
        assert_eq!(token[9..25], (0u8..16).collect::<Vec<_>>()[..]);
    }

    #[test]
    fn wrong_key_is_undecryptable() {
        let others = [cipher_d(), cipher_f(), cipher_n()];
        for other in others {
            assert_eq!(other.decrypt(S_LONG), Err(CryptoError::Undecryptable));
        }
        assert_eq!(cipher_s().decrypt(F_ABC), Err(CryptoError::Undecryptable));
        assert_eq!(cipher_f().decrypt(N_ABC), Err(CryptoError::Undecryptable));
    }

    #[test]
    fn tampered_values_are_undecryptable() {
        // Flip every character that carries token bits to another alphabet
        // character. The last few characters are left out: their low bits
        // may be padding bits that lenient decoding drops (see below).
        let bytes = S_LONG.as_bytes();
        for i in 0..bytes.len() - 8 {
            let mut tampered = bytes.to_vec();
            tampered[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let tampered = String::from_utf8(tampered).unwrap();
            assert_eq!(
                cipher_s().decrypt(&tampered),
                Err(CryptoError::Undecryptable),
                "position {i}"
            );
        }
        // A character replaced by a non-alphabet one is dropped, which
        // misaligns everything after it.
        let mut dropped = S_LONG.to_owned();
        dropped.replace_range(20..21, "!");
        assert_eq!(cipher_s().decrypt(&dropped), Err(CryptoError::Undecryptable));
        // A flipped bit in the raw token (body or MAC).
        let token = strict_decode(std::str::from_utf8(&strict_decode(S_LONG)).unwrap());
        for i in [0, 5, 12, 30, token.len() - 40, token.len() - 1] {
            let mut bad = token.clone();
            bad[i] ^= 0x01;
            assert_eq!(
                cipher_s().decrypt(&stored_from_token(&bad)),
                Err(CryptoError::Undecryptable),
                "byte {i}"
            );
        }
    }

    #[test]
    fn unused_low_bits_are_ignored_like_python() {
        // The inner token of S_LONG ends "…egg=": 18 bits for 2 bytes, so the
        // last 'g' (0b100000) has 2 unused bits; "…egh=" is the same token.
        // Aether decrypts it (checked against CPython), and so do we.
        let inner = String::from_utf8(strict_decode(S_LONG)).unwrap();
        assert!(inner.ends_with("egg="), "{inner}");
        let variant = format!("{}h=", &inner[..inner.len() - 2]);
        assert_eq!(cipher_s().decrypt(&URL_SAFE.encode(variant)).as_deref(), Ok(LONG));
        // Same on the outer layer: S_ABC ends "PQ==", 'Q' has 4 unused bits.
        let outer = format!("{}PR==", &S_ABC[..S_ABC.len() - 4]);
        assert_eq!(cipher_s().decrypt(&outer).as_deref(), Ok("abc"));
    }

    #[test]
    fn lenient_layers_like_python() {
        // Line breaks, spaces, the standard alphabet, junk after the padding:
        // all accepted by Python's urlsafe_b64decode, on both layers.
        let wrapped: String = S_LONG
            .as_bytes()
            .chunks(20)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join("\n ");
        assert_eq!(cipher_s().decrypt(&wrapped).as_deref(), Ok(LONG));
        assert_eq!(cipher_s().decrypt(&format!("{S_LONG}trailing")).as_deref(), Ok(LONG));
        let inner = String::from_utf8(strict_decode(S_LONG)).unwrap();
        let standard_inner = inner.replace('-', "+").replace('_', "/");
        assert_ne!(standard_inner, inner);
        assert_eq!(
            cipher_s().decrypt(&URL_SAFE.encode(standard_inner)).as_deref(),
            Ok(LONG)
        );
        // Padding is required on both layers ("Incorrect padding" in Python).
        let unpadded_inner = URL_SAFE.encode(inner.trim_end_matches('='));
        assert_eq!(cipher_s().decrypt(&unpadded_inner), Err(CryptoError::Undecryptable));
        assert_eq!(
            cipher_s().decrypt(S_ABC.trim_end_matches('=')),
            Err(CryptoError::Undecryptable)
        );
    }

    #[test]
    fn garbage_is_undecryptable_and_empty_passes_through() {
        assert_eq!(cipher_s().decrypt(""), Ok(String::new()));
        for garbage in [
            " ",
            "====",
            "not base64 at all!",
            "Z0FBQUFB",
            "Z0FBQUFBQm5kSVdB",
            "sk-test-1234567890abcdef",
            "gAAAAABndIWAAAECAwQFBgcICQoLDA0ODw==",
            "\u{1F511}\u{1F511}",
        ] {
            assert_eq!(
                cipher_s().decrypt(garbage),
                Err(CryptoError::Undecryptable),
                "{garbage:?}"
            );
        }
        // The raw Fernet token (base64 once) is not a stored value.
        let raw = String::from_utf8(strict_decode(S_LONG)).unwrap();
        assert_eq!(cipher_s().decrypt(&raw), Err(CryptoError::Undecryptable));
        // Every proper prefix fails.
        for end in 1..S_LONG.len() {
            assert_eq!(
                cipher_s().decrypt(&S_LONG[..end]),
                Err(CryptoError::Undecryptable),
                "{end}"
            );
        }
    }

    #[test]
    fn error_text_has_no_ciphertext_key_or_plaintext() {
        let err = cipher_d().decrypt(S_LONG).unwrap_err();
        let text = format!("{err} {err:?}");
        for secret in [S_LONG, &S_LONG[..16], LONG, KEY_D, KEY_S, "Z0FBQUFB"] {
            assert!(!text.contains(secret), "{text}");
        }
    }

    #[test]
    fn any_timestamp_is_accepted() {
        for ts in [0, 1_735_689_600, 4_102_444_800, u64::MAX - 61, u64::MAX] {
            let token = cipher_s().fernet.encrypt_at_time(b"stamped", ts);
            let stored = URL_SAFE.encode(token);
            assert_eq!(cipher_s().decrypt(&stored).as_deref(), Ok("stamped"), "ts {ts}");
        }
    }

    #[test]
    fn non_utf8_plaintext_is_undecryptable() {
        let token = cipher_s().fernet.encrypt(&[0xff, 0xfe, 0x00, 0x80]);
        assert_eq!(
            cipher_s().decrypt(&URL_SAFE.encode(token)),
            Err(CryptoError::Undecryptable)
        );
    }

    #[test]
    fn correctly_signed_but_malformed_tokens_are_undecryptable() {
        let header = {
            let mut h = vec![0x80];
            h.extend_from_slice(&1_735_689_600u64.to_be_bytes());
            h.extend((0u8..16).collect::<Vec<_>>());
            h
        };
        let mut bodies: Vec<Vec<u8>> = vec![
            header.clone(),                     // no ciphertext
            [&header[..], &[7u8; 15]].concat(), // not a whole block
            [&header[..], &[7u8; 16]].concat(), // bad PKCS#7 padding (most likely)
            header[..9].to_vec(),               // no IV
            vec![0x80],                         // no timestamp
            vec![0x81; 41],                     // wrong version
            vec![],
        ];
        bodies.push([&header[..], &[0u8; 33]].concat());
        for body in bodies {
            let stored = stored_from_token(&signed_token(cipher_s(), &body));
            assert_eq!(cipher_s().decrypt(&stored), Err(CryptoError::Undecryptable), "{body:?}");
        }
        // A body-less token shorter than a MAC.
        assert_eq!(
            cipher_s().decrypt(&stored_from_token(&[0x80; 20])),
            Err(CryptoError::Undecryptable)
        );
    }

    #[test]
    fn encrypt_round_trip_in_aethers_format() {
        for plaintext in [LONG, "abc", "x", "ключ-🔑-鍵", &"k".repeat(1000)] {
            let stored = cipher_s().encrypt(plaintext);
            assert!(stored.starts_with("Z0FBQUFB"), "{stored}");
            // Both layers are strict, padded urlsafe base64, as Python writes.
            let inner = String::from_utf8(strict_decode(&stored)).unwrap();
            let token = strict_decode(&inner);
            assert_eq!(token[0], 0x80);
            assert_eq!(cipher_s().decrypt(&stored).as_deref(), Ok(plaintext));
            assert_eq!(cipher_d().decrypt(&stored), Err(CryptoError::Undecryptable));
        }
        assert_eq!(cipher_s().encrypt(""), "");
        // Random IV: two encryptions differ.
        assert_ne!(cipher_s().encrypt("abc"), cipher_s().encrypt("abc"));
    }

    #[test]
    fn python_decoder_matches_cpython_311() {
        // Expected results taken from CPython 3.11 `base64.urlsafe_b64decode`.
        let cases: &[(&[u8], Option<&[u8]>)] = &[
            (b"", Some(b"")),
            (b"QQ==", Some(b"A")),
            (b"QQ=", None),
            (b"QQ", None),
            (b"Q", None),
            (b"QUI=", Some(b"AB")),
            (b"QUI", None),
            (b"QUJD", Some(b"ABC")),
            (b"Q Q = =", Some(b"A")),
            (b"QQ==garbage", Some(b"A")),
            (b"QQ=\n=", Some(b"A")),
            (b"Q=Q==", Some(b"A")),
            (b"QUI=QUJD", Some(b"AB")),
            (b"QUJD====", Some(b"ABC")),
            (b"=QUJD", Some(b"ABC")),
            (b"Q!U@J#D", Some(b"ABC")),
            (b"-_-_", Some(&[0xfb, 0xff, 0xbf])),
            (b"+/+/", Some(&[0xfb, 0xff, 0xbf])),
            (b"-_+/", Some(&[0xfb, 0xff, 0xbf])),
            (b"QR==", Some(b"A")),
            (b"QUJ=", Some(b"AB")),
            (b"QUJ\xc3\xa9=", Some(b"AB")),
            (b"QQ=A", None),
            (b"QQ=A=", Some(&[0x41, 0x00])),
            (b"====", Some(b"")),
            (b"QUJDQQ", None),
            (b"QUJDRA==", Some(b"ABCD")),
            (b"Zz=", None),
            (b"Zz0=", Some(&[0x67, 0x3d])),
            (b"Zz1=", Some(&[0x67, 0x3d])),
        ];
        for (input, expected) in cases {
            assert_eq!(
                python_urlsafe_b64decode(input).as_deref(),
                *expected,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn direct_key_is_decoded_leniently_like_python() {
        // Standard alphabet, whitespace, non-ASCII and junk after the padding
        // do not stop a 32-byte key from being used directly.
        let url = "-_-_AwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        let standard = url.replace('-', "+").replace('_', "/");
        let noisy = format!(" {}\n{} é=ignored", &url[..20], &url[20..]);
        let expected = KeyCipher::from_secret(Some(url), false).unwrap();
        assert_eq!(expected.derivation(), KeyDerivation::Direct);
        for variant in [standard.as_str(), noisy.as_str()] {
            let cipher = KeyCipher::from_secret(Some(variant), false).unwrap();
            assert_eq!(cipher.derivation(), KeyDerivation::Direct, "{variant:?}");
            assert_eq!(cipher.fernet_key_b64(), expected.fernet_key_b64());
        }
        // generate_keys.py output: 43 characters, no padding: PBKDF2.
        assert_eq!(cipher_n().derivation(), KeyDerivation::Pbkdf2);
    }

    #[test]
    fn mask_table_matches_aether() {
        assert_eq!(mask_api_key(LONG).as_deref(), Some("sk-test-********cdef"));
        assert_eq!(mask_api_key("sk-abcdefghi").as_deref(), Some("sk-abcde********"));
        assert_eq!(mask_api_key("abc").as_deref(), Some("abc********"));
        assert_eq!(mask_api_key(""), None);
        // 13 characters: the long form.
        assert_eq!(mask_api_key("sk-abcdefghij").as_deref(), Some("sk-abcde********ghij"));
    }

    #[test]
    fn mask_counts_characters_not_bytes() {
        assert_eq!(
            mask_api_key("ключ-123456789abcdé").as_deref(),
            Some("ключ-123********bcdé")
        );
        assert_eq!(mask_api_key("🔑🔑🔑").as_deref(), Some("🔑🔑🔑********"));
        assert_eq!(
            mask_api_key("鍵鍵鍵鍵鍵鍵鍵鍵鍵鍵鍵鍵").as_deref(),
            Some("鍵鍵鍵鍵鍵鍵鍵鍵********")
        );
        assert_eq!(mask_api_key_safe("🔑🔑🔑🔑🔑🔑").as_deref(), Some("🔑🔑********"));
        assert_eq!(mask_api_key_safe("é").as_deref(), Some("********"));
    }

    #[test]
    fn safe_mask_reveals_at_most_a_third_of_short_keys() {
        let alphabet: Vec<char> = "sk-abcdefghijé🔑".chars().collect();
        for len in 1..=SAFE_MASK_SHORT_KEY_MAX_CHARS {
            let key: String = (0..len).map(|i| alphabet[i % alphabet.len()]).collect();
            let masked = mask_api_key_safe(&key).unwrap();
            let shown = masked.strip_suffix(MASK).unwrap();
            assert!(key.starts_with(shown));
            assert!(shown.chars().count() * 3 <= len, "{key:?} -> {masked:?}");
        }
        assert_eq!(mask_api_key_safe("abc").as_deref(), Some("a********"));
        assert_eq!(mask_api_key_safe("sk-abcdefghi").as_deref(), Some("sk-a********"));
        assert_eq!(mask_api_key_safe("ab").as_deref(), Some("********"));
        assert_eq!(mask_api_key_safe(""), None);
        // Longer keys: exactly Aether's text.
        assert_eq!(mask_api_key_safe(LONG), mask_api_key(LONG));
        assert_eq!(mask_api_key_safe("sk-abcdefghij"), mask_api_key("sk-abcdefghij"));
    }

    #[test]
    fn decrypt_and_mask_marks_every_outcome() {
        let masked = cipher_s().decrypt_and_mask(S_LONG);
        assert_eq!(masked, MaskedKey::Masked("sk-test-********cdef".to_owned()));
        assert_eq!(masked.display(), "sk-test-********cdef");

        // Short keys use the safe mask.
        assert_eq!(
            cipher_s().decrypt_and_mask(S_ABC),
            MaskedKey::Masked("a********".to_owned())
        );

        assert_eq!(cipher_s().decrypt_and_mask(""), MaskedKey::Empty);
        assert_eq!(MaskedKey::Empty.display(), "");

        let bad = cipher_d().decrypt_and_mask(S_LONG);
        assert_eq!(bad, MaskedKey::Undecryptable);
        assert_eq!(bad.display(), "<undecryptable>");
        assert_eq!(cipher_s().decrypt_and_mask("garbage"), MaskedKey::Undecryptable);
    }

    #[test]
    fn remembered_masks_are_per_key_and_bounded() {
        let cipher = KeyCipher::from_secret(Some(F), false).unwrap();
        let other = KeyCipher::from_secret(Some(KEY_D), false).unwrap();
        let stored = cipher.encrypt(LONG);
        let masked = MaskedKey::Masked("sk-test-********cdef".to_owned());
        assert_eq!(cipher.decrypt_and_mask(&stored), masked);
        assert_eq!(cipher.decrypt_and_mask(&stored), masked, "the remembered mask");
        assert_eq!(cipher.clone().decrypt_and_mask(&stored), masked, "clones share it");
        assert_eq!(
            other.decrypt_and_mask(&stored),
            MaskedKey::Undecryptable,
            "another key remembers nothing of this one"
        );

        for i in 0..=MASK_MEMO_CAP {
            let _ = cipher.decrypt_and_mask(&format!("not-a-token-{i}"));
        }
        let remembered = cipher.masks.lock().unwrap().len();
        assert!(remembered <= MASK_MEMO_CAP, "{remembered} masks remembered");
        assert_eq!(cipher.decrypt_and_mask(&stored), masked, "recomputed after a reset");

        let long = "x".repeat(MASK_MEMO_MAX_STORED_LEN + 1);
        assert_eq!(cipher.decrypt_and_mask(&long), MaskedKey::Undecryptable);
        assert!(
            !cipher.masks.lock().unwrap().contains_key(long.as_str()),
            "too long to keep"
        );
    }

    #[test]
    fn decrypt_never_panics_on_arbitrary_input() {
        // xorshift64*: deterministic, dependency-free.
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_F491_4F6C_DD1D)
        };
        let pieces: &[&str] = &[
            "A", "Z", "z", "0", "9", "-", "_", "+", "/", "=", "==", " ", "\n", "!", "é", "🔑", "\0", "Z0FBQUFB",
            "gAAAAA",
        ];
        let cipher = cipher_s();
        let mut decrypted = 0;
        for round in 0..600 {
            let candidate = match round % 3 {
                // Random concatenations of base64-ish and hostile pieces.
                0 => {
                    let len = (next() % 200) as usize;
                    (0..len)
                        .map(|_| pieces[(next() % pieces.len() as u64) as usize])
                        .collect::<String>()
                }
                // A valid value with random bytes overwritten, cut or extended.
                1 => {
                    let mut bytes = S_LONG.as_bytes().to_vec();
                    for _ in 0..=(next() % 4) {
                        let i = (next() % bytes.len() as u64) as usize;
                        bytes[i] = b"AZaz09-_+/=!"[(next() % 12) as usize];
                    }
                    bytes.truncate((next() % (bytes.len() as u64 + 1)) as usize);
                    String::from_utf8(bytes).unwrap()
                }
                // Well-formed double base64 around random bytes.
                _ => {
                    let len = (next() % 120) as usize;
                    let mut raw: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                    if let Some(first) = raw.first_mut() {
                        *first = 0x80;
                    }
                    stored_from_token(&raw)
                }
            };
            if cipher.decrypt(&candidate).is_ok() {
                decrypted += 1;
            }
            let _ = cipher.decrypt_and_mask(&candidate).display();
            let _ = python_urlsafe_b64decode(candidate.as_bytes());
        }
        // Only mutated copies of the valid value (a third of the rounds) can
        // still decrypt, when a mutation hit nothing that matters.
        assert!(decrypted <= 200, "{decrypted}");
    }
}
