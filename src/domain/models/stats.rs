//! GetModelMappingStats, by the rules of Aether's `/model-mapping/stats`
//! (AETHER_COMPAT §11): keys counted by kind (hit counters excluded), the
//! first [`PARSE_LIMIT`] resolve keys and provider-model keys read, names
//! from the database in batched queries.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;

use super::{CachedResolution, MODEL_CACHE_TTL, ModelCatalog, ModelMappingSettings, keys};
use crate::error::Result;
use crate::store::CacheStore;

/// Resolve keys, and provider-model keys, read per call (Aether's limit).
pub const PARSE_LIMIT: usize = 100;

/// Most `model:provider_global:` keys listed to find [`PARSE_LIMIT`] that are
/// not hit counters (a hit counter outlives its entry, so they interleave).
const PROVIDER_GLOBAL_SCAN_LIMIT: usize = 5_000;

/// Model-mapping keys by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheBreakdown {
    /// `model:id:*`.
    pub model_by_id: u64,
    /// `model:provider_global:*` without the hit counters.
    pub model_by_provider_global: u64,
    /// `global_model:id:*`.
    pub global_model_by_id: u64,
    /// `global_model:name:*`.
    pub global_model_by_name: u64,
    /// `global_model:resolve:*`, NOT_FOUND included.
    pub global_model_resolve: u64,
}

impl CacheBreakdown {
    /// All of them (Aether's `total_keys`).
    pub fn total(&self) -> u64 {
        self.model_by_id
            + self.model_by_provider_global
            + self.global_model_by_id
            + self.global_model_by_name
            + self.global_model_resolve
    }
}

/// A cached alias: a name resolving to a global model of another name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedMapping {
    /// The requested name.
    pub mapping_name: String,
    /// The global model's name, as cached.
    pub global_model_name: String,
    /// Its display name, as cached.
    pub global_model_display_name: String,
    /// Labels of the active providers serving the name, sorted.
    pub providers: Vec<String>,
    /// Time left; None without expiry.
    pub ttl: Option<Duration>,
}

/// A cached provider model that renames its global model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedProviderModel {
    /// Provider id.
    pub provider_id: String,
    /// Provider label.
    pub provider_name: String,
    /// Global model id.
    pub global_model_id: String,
    /// Global model name.
    pub global_model_name: String,
    /// Global model display name.
    pub global_model_display_name: String,
    /// The provider's model name, as cached.
    pub provider_model_name: String,
    /// The cached mapping names, else the global model's name.
    pub aliases: Vec<String>,
    /// Time left; None without expiry.
    pub ttl: Option<Duration>,
    /// The hit counter (0 when missing or unreadable).
    pub hit_count: i64,
}

/// Why a cached name does not resolve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnmappedStatus {
    /// The negative entry.
    NotFound,
    /// Not JSON, or JSON that is not a global model dict.
    Invalid,
    /// The cache did not answer for this key.
    Error,
}

/// A cached name that does not resolve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnmappedName {
    /// The requested name.
    pub mapping_name: String,
    /// Why.
    pub status: UnmappedStatus,
    /// Time left; None without expiry (or on error).
    pub ttl: Option<Duration>,
}

/// The model-mapping cache described.
#[derive(Clone, Debug, PartialEq)]
pub struct MappingStats {
    /// Whether the cache is Redis shared with Aether.
    pub shared_cache: bool,
    /// TTL of the entries (Aether's 300 s).
    pub ttl: Duration,
    /// Keys by kind.
    pub breakdown: CacheBreakdown,
    /// Cached aliases, by name.
    pub mappings: Vec<CachedMapping>,
    /// Cached provider models, by provider label then global model name.
    pub provider_models: Vec<CachedProviderModel>,
    /// Cached names that do not resolve, by name.
    pub unmapped: Vec<UnmappedName>,
}

/// A zero TTL is no TTL (Redis reports <= 0 for none; memory may reach 0).
fn live_ttl(ttl: Option<Duration>) -> Option<Duration> {
    ttl.filter(|t| !t.is_zero())
}

/// A cached resolve entry that names a global model other than its key.
struct AliasEntry {
    mapping_name: String,
    global_model_id: Option<String>,
    global_model_name: String,
    global_model_display_name: String,
    ttl: Option<Duration>,
}

/// A cached provider-model entry, before enrichment.
struct ProviderEntry {
    provider_id: String,
    global_model_id: String,
    provider_model_name: String,
    mapping_names: Vec<String>,
    ttl: Option<Duration>,
    hit_count: i64,
}

fn text_field(object: &serde_json::Map<String, Value>, field: &str) -> Option<String> {
    object.get(field).and_then(Value::as_str).map(str::to_owned)
}

/// Collects the stats; store failures fail the call, except a resolve key
/// that cannot be read, which is listed as [`UnmappedStatus::Error`].
pub(super) async fn collect(
    cache: &dyn CacheStore,
    catalog: &dyn ModelCatalog,
    settings: &ModelMappingSettings,
) -> Result<MappingStats> {
    let count = |prefix: &'static str| cache.delete_prefix(prefix, true);
    let provider_global_and_hits = count(keys::PROVIDER_GLOBAL).await?;
    let hits = count(keys::PROVIDER_GLOBAL_HITS).await?;
    let breakdown = CacheBreakdown {
        model_by_id: count(keys::MODEL_BY_ID).await?,
        model_by_provider_global: provider_global_and_hits.saturating_sub(hits),
        global_model_by_id: count(keys::GLOBAL_MODEL_BY_ID).await?,
        global_model_by_name: count(keys::GLOBAL_MODEL_BY_NAME).await?,
        global_model_resolve: count(keys::RESOLVE).await?,
    };

    let (mut mappings, mut unmapped) = resolve_entries(cache, catalog).await?;
    mappings.sort_by(|a, b| a.mapping_name.cmp(&b.mapping_name));
    unmapped.sort_by(|a, b| a.mapping_name.cmp(&b.mapping_name));

    let scan_limit = usize::try_from(hits)
        .unwrap_or(usize::MAX)
        .saturating_add(PARSE_LIMIT)
        .min(PROVIDER_GLOBAL_SCAN_LIMIT);
    let mut provider_models = provider_entries(cache, catalog, scan_limit).await?;
    provider_models.sort_by(|a, b| {
        (
            &a.provider_name,
            &a.global_model_name,
            &a.provider_id,
            &a.global_model_id,
        )
            .cmp(&(
                &b.provider_name,
                &b.global_model_name,
                &b.provider_id,
                &b.global_model_id,
            ))
    });

    Ok(MappingStats {
        shared_cache: settings.shared_cache,
        ttl: MODEL_CACHE_TTL,
        breakdown,
        mappings,
        provider_models,
        unmapped,
    })
}

/// The first [`PARSE_LIMIT`] resolve keys: aliases (names equal to their
/// global model's name skipped) and names that do not resolve.
async fn resolve_entries(
    cache: &dyn CacheStore,
    catalog: &dyn ModelCatalog,
) -> Result<(Vec<CachedMapping>, Vec<UnmappedName>)> {
    let mut aliases = Vec::new();
    let mut unmapped = Vec::new();
    for key in cache.keys_with_prefix(keys::RESOLVE, PARSE_LIMIT).await? {
        let Some(mapping_name) = key.strip_prefix(keys::RESOLVE).map(str::to_owned) else {
            continue;
        };
        let read = async { Ok::<_, crate::error::StoreError>((cache.get(&key).await?, cache.ttl(&key).await?)) };
        let (value, ttl) = match read.await {
            Ok((Some(value), ttl)) if !value.is_empty() => (value, live_ttl(ttl)),
            // Gone since the scan, or empty (Aether skips both).
            Ok(_) => continue,
            Err(error) => {
                tracing::warn!(%error, key, "model-mapping stats: cannot read a resolve entry");
                unmapped.push(UnmappedName {
                    mapping_name,
                    status: UnmappedStatus::Error,
                    ttl: None,
                });
                continue;
            }
        };
        let object = match CachedResolution::parse(&value) {
            CachedResolution::NotFound => {
                unmapped.push(UnmappedName {
                    mapping_name,
                    status: UnmappedStatus::NotFound,
                    ttl,
                });
                continue;
            }
            CachedResolution::Invalid => {
                unmapped.push(UnmappedName {
                    mapping_name,
                    status: UnmappedStatus::Invalid,
                    ttl,
                });
                continue;
            }
            // Aether lists any dict, stale or not, by its id / name fields.
            CachedResolution::Found(_) | CachedResolution::Stale => match serde_json::from_str::<Value>(&value) {
                Ok(Value::Object(object)) => object,
                _ => continue,
            },
        };
        let global_model_name = text_field(&object, "name");
        if global_model_name.as_deref() == Some(mapping_name.as_str()) {
            continue;
        }
        aliases.push(AliasEntry {
            mapping_name,
            global_model_id: text_field(&object, "id"),
            global_model_name: global_model_name.unwrap_or_default(),
            global_model_display_name: text_field(&object, "display_name").unwrap_or_default(),
            ttl,
        });
    }

    let ids: Vec<String> = aliases.iter().filter_map(|a| a.global_model_id.clone()).collect();
    let served = if ids.is_empty() {
        Vec::new()
    } else {
        catalog.served_models(&ids).await?
    };
    let mappings = aliases
        .into_iter()
        .map(|alias| {
            let providers: BTreeSet<String> = served
                .iter()
                .filter(|s| alias.global_model_id.as_deref() == Some(s.global_model_id.as_str()))
                .filter(|s| {
                    s.provider_model_name == alias.mapping_name
                        || mapping_names(s.provider_model_mappings.as_ref()).contains(&alias.mapping_name)
                })
                .map(|s| s.provider.label().to_owned())
                .collect();
            CachedMapping {
                mapping_name: alias.mapping_name,
                global_model_name: alias.global_model_name,
                global_model_display_name: alias.global_model_display_name,
                providers: providers.into_iter().collect(),
                ttl: alias.ttl,
            }
        })
        .collect();
    Ok((mappings, unmapped))
}

/// Names of `provider_model_mappings` entries as Aether's stats read them:
/// dicts with a non-empty string name, verbatim.
fn mapping_names(mappings: Option<&Value>) -> Vec<String> {
    let Some(Value::Array(entries)) = mappings else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|entry| entry.get("name")?.as_str())
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The first [`PARSE_LIMIT`] provider-model keys (hit counters skipped) whose
/// provider and global model are active and whose cached name differs from
/// the global model's or carries mappings.
async fn provider_entries(
    cache: &dyn CacheStore,
    catalog: &dyn ModelCatalog,
    scan_limit: usize,
) -> Result<Vec<CachedProviderModel>> {
    let entry_keys: Vec<String> = cache
        .keys_with_prefix(keys::PROVIDER_GLOBAL, scan_limit)
        .await?
        .into_iter()
        .filter(|k| !k.starts_with(keys::PROVIDER_GLOBAL_HITS))
        .take(PARSE_LIMIT)
        .collect();
    let mut entries = Vec::new();
    for key in entry_keys {
        let Some(rest) = key.strip_prefix(keys::PROVIDER_GLOBAL) else {
            continue;
        };
        let parts: Vec<&str> = rest.split(':').collect();
        let [provider_id, global_model_id] = parts.as_slice() else {
            continue;
        };
        let Some(value) = cache.get(&key).await? else {
            continue;
        };
        let ttl = live_ttl(cache.ttl(&key).await?);
        let hit_count = cache
            .get(&keys::provider_global_hits(provider_id, global_model_id))
            .await?
            .and_then(|raw| raw.trim().parse::<i64>().ok())
            .unwrap_or(0);
        let Ok(Value::Object(object)) = serde_json::from_str::<Value>(&value) else {
            continue;
        };
        let provider_model_name = text_field(&object, "provider_model_name").unwrap_or_default();
        if provider_model_name.is_empty() {
            continue;
        }
        entries.push(ProviderEntry {
            provider_id: (*provider_id).to_owned(),
            global_model_id: (*global_model_id).to_owned(),
            provider_model_name,
            mapping_names: mapping_names(object.get("provider_model_mappings")),
            ttl,
            hit_count,
        });
    }
    if entries.is_empty() {
        return Ok(Vec::new());
    }

    let provider_ids: Vec<String> = entries.iter().map(|e| e.provider_id.clone()).collect();
    let global_model_ids: Vec<String> = entries.iter().map(|e| e.global_model_id.clone()).collect();
    let providers = catalog.active_providers(&provider_ids).await?;
    let global_models = catalog.active_global_models(&global_model_ids).await?;
    Ok(entries
        .into_iter()
        .filter_map(|entry| {
            let provider = providers.get(&entry.provider_id)?;
            let global_model = global_models.get(&entry.global_model_id)?;
            let renamed = global_model.name != entry.provider_model_name;
            if !renamed && entry.mapping_names.is_empty() {
                return None;
            }
            let aliases = if entry.mapping_names.is_empty() {
                vec![global_model.name.clone()]
            } else {
                entry.mapping_names
            };
            Some(CachedProviderModel {
                provider_id: entry.provider_id,
                provider_name: provider.label().to_owned(),
                global_model_id: entry.global_model_id,
                global_model_name: global_model.name.clone(),
                global_model_display_name: global_model.display_name.clone(),
                provider_model_name: entry.provider_model_name,
                aliases,
                ttl: entry.ttl,
                hit_count: entry.hit_count,
            })
        })
        .collect())
}
