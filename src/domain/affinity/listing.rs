//! Operator views of affinities: enrichment with the names Aether's admin
//! API shows, keyword matching, and opaque page tokens.

use std::collections::{HashMap, HashSet};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::Affinity;
use crate::domain::crypto::KeyCipher;
use crate::domain::directory::{ApiKeySummary, ClientKey, Directory, MatchKind, UpstreamNames, UserSummary};
use crate::error::{Error, Result, StoreError};

/// Default and largest page sizes (Aether's `limit`).
pub const DEFAULT_PAGE_SIZE: u64 = 100;
/// Largest page size.
pub const MAX_PAGE_SIZE: u64 = 1000;

/// One affinity with the names an operator reads (Aether's `/affinities` item).
#[derive(Clone, Debug, PartialEq)]
pub struct AffinityDetail {
    /// The entry.
    pub affinity: Affinity,
    /// Client API key name.
    pub user_api_key_name: Option<String>,
    /// Client API key, masked ("" when not stored or undecryptable).
    pub user_api_key_prefix: String,
    /// Whether the client key is standalone.
    pub is_standalone: bool,
    /// Owner id.
    pub user_id: Option<String>,
    /// Owner username.
    pub username: Option<String>,
    /// Owner email.
    pub email: Option<String>,
    /// providers.display_name.
    pub provider_name: Option<String>,
    /// Endpoint API format.
    pub endpoint_api_format: Option<String>,
    /// Endpoint base URL.
    pub endpoint_url: Option<String>,
    /// Provider key name.
    pub key_name: Option<String>,
    /// Provider key, masked.
    pub key_prefix: String,
    /// Provider key multiplier (1.0 when unknown).
    pub rate_multiplier: f64,
    /// Global model name, else the raw id.
    pub global_model_name: String,
    /// Global model display name.
    pub model_display_name: Option<String>,
}

impl AffinityDetail {
    /// Aether's keyword match: case-insensitive substring of affinity key,
    /// API key name, user id, username, email, provider id or provider key id.
    pub fn matches_keyword(&self, keyword_lower: &str) -> bool {
        let fields = [
            Some(self.affinity.key.affinity_key.as_str()),
            self.user_api_key_name.as_deref(),
            self.user_id.as_deref(),
            self.username.as_deref(),
            self.email.as_deref(),
            Some(self.affinity.record.provider_id.as_str()),
            Some(self.affinity.record.key_id.as_str()),
        ];
        fields
            .into_iter()
            .flatten()
            .any(|field| field.to_lowercase().contains(keyword_lower))
    }
}

fn distinct<'a>(values: impl Iterator<Item = &'a str>) -> Vec<String> {
    values.collect::<HashSet<_>>().into_iter().map(str::to_owned).collect()
}

/// The directory rows that name a set of affinities, read by
/// [`EnrichmentRows::look_up`] and attached by [`EnrichmentRows::attach`].
pub struct EnrichmentRows {
    client_keys: HashMap<String, ClientKey>,
    names: UpstreamNames,
}

impl EnrichmentRows {
    /// Reads what `affinities` need: their client keys with owners (one
    /// joined look-up, skipping the keys in `known`) beside the four
    /// upstream name look-ups. A handful of batched queries in one step,
    /// whatever the number of entries.
    pub async fn look_up(
        directory: &dyn Directory,
        affinities: &[Affinity],
        known: Vec<ClientKey>,
    ) -> std::result::Result<Self, StoreError> {
        let mut client_keys: HashMap<String, ClientKey> = known.into_iter().map(|k| (k.key.id.clone(), k)).collect();
        let missing = distinct(
            affinities
                .iter()
                .map(|a| a.key.affinity_key.as_str())
                .filter(|id| !client_keys.contains_key(*id)),
        );
        let provider_ids = distinct(affinities.iter().map(|a| a.record.provider_id.as_str()));
        let endpoint_ids = distinct(affinities.iter().map(|a| a.record.endpoint_id.as_str()));
        let provider_key_ids = distinct(affinities.iter().map(|a| a.record.key_id.as_str()));
        let model_ids = distinct(affinities.iter().map(|a| a.record.model_name.as_str()));
        let (looked_up, names) = futures::future::try_join(
            directory.client_keys(&missing),
            directory.upstream_names(&provider_ids, &endpoint_ids, &provider_key_ids, &model_ids),
        )
        .await?;
        client_keys.extend(looked_up.into_iter().map(|k| (k.key.id.clone(), k)));
        Ok(Self { client_keys, names })
    }

    /// Adds names and masked keys to `affinities`. Each distinct stored key
    /// is decrypted and masked once, however many entries share it.
    pub fn attach(self, cipher: &KeyCipher, affinities: Vec<Affinity>) -> Vec<AffinityDetail> {
        let Self { client_keys, names } = self;
        let mask = |stored: &str| cipher.decrypt_and_mask(stored).display();
        let client_keys: HashMap<&str, (&ClientKey, String)> = client_keys
            .iter()
            .map(|(id, k)| {
                let masked = k.key.key_encrypted.as_deref().map(mask).unwrap_or_default();
                (id.as_str(), (k, masked))
            })
            .collect();
        let provider_key_masks: HashMap<&str, String> = names
            .provider_keys
            .iter()
            .map(|(id, k)| (id.as_str(), mask(&k.api_key_encrypted)))
            .collect();
        affinities
            .into_iter()
            .map(|affinity| {
                let client_key = client_keys.get(affinity.key.affinity_key.as_str());
                let api_key = client_key.map(|(k, _)| &k.key);
                let user = client_key.and_then(|(k, _)| k.owner.as_ref());
                let endpoint = names.endpoints.get(&affinity.record.endpoint_id);
                let provider_key = names.provider_keys.get(&affinity.record.key_id);
                let model = names.global_models.get(&affinity.record.model_name);
                AffinityDetail {
                    user_api_key_name: api_key.and_then(|k| k.name.clone()),
                    user_api_key_prefix: client_key.map(|(_, masked)| masked.clone()).unwrap_or_default(),
                    is_standalone: api_key.is_some_and(|k| k.is_standalone),
                    user_id: api_key.map(|k| k.user_id.clone()),
                    username: user.map(|u| u.username.clone()),
                    email: user.map(|u| u.email.clone()),
                    provider_name: names.provider_display_names.get(&affinity.record.provider_id).cloned(),
                    endpoint_api_format: endpoint.map(|(format, _)| format.clone()),
                    endpoint_url: endpoint.map(|(_, url)| url.clone()),
                    key_name: provider_key.map(|k| k.name.clone()),
                    key_prefix: provider_key_masks
                        .get(affinity.record.key_id.as_str())
                        .cloned()
                        .unwrap_or_default(),
                    rate_multiplier: provider_key.map_or(1.0, |k| k.rate_multiplier),
                    global_model_name: model
                        .map_or_else(|| affinity.record.model_name.clone(), |(name, _)| name.clone()),
                    model_display_name: model.map(|(_, display)| display.clone()),
                    affinity,
                }
            })
            .collect()
    }
}

/// The user an identifier resolved to, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedUser {
    /// The user.
    pub user: UserSummary,
    /// Which kind matched first.
    pub matched_by: MatchKind,
    /// The API key, when matched by key id.
    pub api_key: Option<ApiKeySummary>,
}

/// A resolved user and every API key they own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserWithKeys {
    /// The user and how the identifier matched.
    pub resolved: ResolvedUser,
    /// The user's API keys, the user as owner.
    pub keys: Vec<ClientKey>,
}

/// Resolves an identifier in Aether's order (id, username, email, API key
/// id) and reads the user's keys in the same step: the keys of the users a
/// user column matches come with the match itself. Only a match by API key
/// id alone costs a second step. `None` when nothing matches.
pub async fn find_user_with_keys(directory: &dyn Directory, identifier: &str) -> Result<Option<UserWithKeys>> {
    let (matches, keys_of_matched) = directory.match_user_with_keys(identifier).await?;
    let Some(first) = matches.into_iter().next() else {
        return Ok(None);
    };
    let keys = if first.kind == MatchKind::ApiKeyId {
        // No user column matched (they come first), so the keys read beside
        // the match are not this owner's.
        directory.api_keys_of_user(&first.user.id).await?
    } else {
        keys_of_matched
            .into_iter()
            .filter(|key| key.user_id == first.user.id)
            .collect()
    };
    let keys = keys
        .into_iter()
        .map(|key| ClientKey {
            key,
            owner: Some(first.user.clone()),
        })
        .collect();
    Ok(Some(UserWithKeys {
        resolved: ResolvedUser {
            user: first.user,
            matched_by: first.kind,
            api_key: first.api_key,
        },
        keys,
    }))
}

/// [`find_user_with_keys`], NOT_FOUND when nothing matches.
pub async fn resolve_user(directory: &dyn Directory, identifier: &str) -> Result<UserWithKeys> {
    find_user_with_keys(directory, identifier)
        .await?
        .ok_or_else(|| Error::not_found("user", identifier))
}

/// Where a listing continues. The token binds the keyword, so a token from
/// one query cannot page another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageToken {
    /// Rank to continue from.
    pub offset: u64,
    fingerprint: u64,
}

fn fingerprint(keyword: &str) -> u64 {
    let digest = ring::digest::digest(&ring::digest::SHA256, keyword.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest.as_ref()[..8]);
    u64::from_be_bytes(bytes)
}

impl PageToken {
    /// A token for `offset` in the listing of `keyword`.
    pub fn new(offset: u64, keyword: &str) -> Self {
        Self {
            offset,
            fingerprint: fingerprint(keyword),
        }
    }

    /// The opaque text form.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("v1:{}:{:016x}", self.offset, self.fingerprint))
    }

    /// Parses a token from a previous response for the same keyword.
    pub fn decode(token: &str, keyword: &str) -> Result<Self> {
        let invalid = || Error::invalid("page_token", "is not a token from a previous response to this query");
        let bytes = URL_SAFE_NO_PAD.decode(token.as_bytes()).map_err(|_| invalid())?;
        let text = String::from_utf8(bytes).map_err(|_| invalid())?;
        let mut parts = text.split(':');
        let (Some("v1"), Some(offset), Some(print), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid());
        };
        let offset = offset.parse().map_err(|_| invalid())?;
        let print = u64::from_str_radix(print, 16).map_err(|_| invalid())?;
        if print != fingerprint(keyword) {
            return Err(invalid());
        }
        Ok(Self {
            offset,
            fingerprint: print,
        })
    }
}

/// Validates a page size: 0 means the default; 1..=1000 otherwise.
pub fn page_size(requested: i32) -> Result<u64> {
    match requested {
        0 => Ok(DEFAULT_PAGE_SIZE),
        1..=1000 => Ok(requested as u64),
        _ => Err(Error::invalid(
            "page_size",
            format!("must be between 1 and {MAX_PAGE_SIZE}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_bind_the_keyword() {
        let token = PageToken::new(200, "alice").encode();
        assert_eq!(PageToken::decode(&token, "alice").map(|t| t.offset).ok(), Some(200));
        assert!(PageToken::decode(&token, "bob").is_err());
        for bad in ["", "not base64!", "djE6eDp5", &URL_SAFE_NO_PAD.encode("v1:1:2:3")] {
            assert!(PageToken::decode(bad, "alice").is_err(), "{bad}");
        }
    }

    #[test]
    fn page_sizes_are_bounded() {
        assert_eq!(page_size(0).ok(), Some(100));
        assert_eq!(page_size(1000).ok(), Some(1000));
        assert!(page_size(1001).is_err());
        assert!(page_size(-1).is_err());
    }
}
