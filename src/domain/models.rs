//! Model-name resolution and Aether's model-mapping cache (AETHER_COMPAT §3,
//! §11): the keys and JSON values Aether reads, resolution in Aether's order
//! made deterministic (§10 defect 10), a short negative-cache TTL of our own
//! (§10 defect 9), and the cache-monitoring calls. The tables are reached
//! through [`ModelCatalog`] (sea-orm in `crate::db::models`).

pub mod stats;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

pub use self::stats::{CacheBreakdown, CachedMapping, CachedProviderModel, MappingStats, UnmappedName, UnmappedStatus};
use crate::domain::validate;
use crate::error::{Error, Result, StoreError};
use crate::store::CacheStore;

/// TTL of every entry Aether writes (`CacheTTL.MODEL`); ours too, except
/// the negative entries.
pub const MODEL_CACHE_TTL: Duration = Duration::from_secs(300);

/// TTL of the `NOT_FOUND` entries we write. Aether uses 300 s, so a model
/// created after a miss stays unresolvable for up to 5 minutes (§10 defect
/// 9); ours hide it for at most this long.
pub const NEGATIVE_CACHE_TTL: Duration = Duration::from_secs(30);

/// Longest model name accepted, in bytes (`models.provider_model_name` is
/// varchar(200)).
pub const MAX_MODEL_NAME_LEN: usize = 200;

/// Aether's negative-cache value, stored raw (not JSON-quoted).
pub const NOT_FOUND_SENTINEL: &str = "NOT_FOUND";

/// Aether's model-mapping keys.
pub mod keys {
    /// Everything under `model:` (clear-all).
    pub const MODEL: &str = "model:";
    /// Everything under `global_model:` (clear-all).
    pub const GLOBAL_MODEL: &str = "global_model:";
    /// `model:id:{id}` (never written by Aether HEAD; counted and deleted).
    pub const MODEL_BY_ID: &str = "model:id:";
    /// `model:provider_global:{provider_id}:{global_model_id}`.
    pub const PROVIDER_GLOBAL: &str = "model:provider_global:";
    /// `model:provider_global:hits:{provider_id}:{global_model_id}`.
    pub const PROVIDER_GLOBAL_HITS: &str = "model:provider_global:hits:";
    /// `global_model:id:{id}` (counted and deleted only).
    pub const GLOBAL_MODEL_BY_ID: &str = "global_model:id:";
    /// `global_model:name:{name}` (counted and deleted only).
    pub const GLOBAL_MODEL_BY_NAME: &str = "global_model:name:";
    /// `global_model:resolve:{name}`.
    pub const RESOLVE: &str = "global_model:resolve:";

    /// The resolve key of a (trimmed) model name.
    pub fn resolve(name: &str) -> String {
        format!("{RESOLVE}{name}")
    }

    /// The by-name key of a model name.
    pub fn global_model_by_name(name: &str) -> String {
        format!("{GLOBAL_MODEL_BY_NAME}{name}")
    }

    /// The cached provider model of (provider, global model).
    pub fn provider_global(provider_id: &str, global_model_id: &str) -> String {
        format!("{PROVIDER_GLOBAL}{provider_id}:{global_model_id}")
    }

    /// Its hit counter.
    pub fn provider_global_hits(provider_id: &str, global_model_id: &str) -> String {
        format!("{PROVIDER_GLOBAL_HITS}{provider_id}:{global_model_id}")
    }
}

fn null_as_default<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(deserializer: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

fn active_by_default() -> bool {
    true
}

fn available_by_default() -> Option<bool> {
    Some(true)
}

/// A `global_models` row as Aether caches it: these fields, in this order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GlobalModel {
    /// `global_models.id`.
    pub id: String,
    /// Canonical name.
    pub name: String,
    /// Display name.
    #[serde(default, deserialize_with = "null_as_default")]
    pub display_name: String,
    /// Capabilities JSON (a dict without this key is a stale cache entry).
    #[serde(default)]
    pub supported_capabilities: Option<Value>,
    /// Free-form configuration.
    #[serde(default)]
    pub config: Option<Value>,
    /// Default tiered pricing.
    #[serde(default)]
    pub default_tiered_pricing: Option<Value>,
    /// Default price per request in USD.
    #[serde(default)]
    pub default_price_per_request: Option<f64>,
    /// Whether the model is active (Aether defaults a missing value to true).
    #[serde(default = "active_by_default", deserialize_with = "null_as_default")]
    pub is_active: bool,
}

impl GlobalModel {
    /// Aether's cached JSON text.
    pub fn to_aether_json(&self) -> String {
        crate::domain::python_json::to_python_json(self)
    }
}

/// A `models` row as Aether caches it: these fields, in this order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProviderModel {
    /// `models.id`.
    pub id: String,
    /// Owning provider.
    pub provider_id: String,
    /// The global model it implements.
    pub global_model_id: String,
    /// The provider's name for it.
    pub provider_model_name: String,
    /// `[{"name", "priority"}]` as stored.
    #[serde(default)]
    pub provider_model_mappings: Option<Value>,
    /// Whether the row is active.
    pub is_active: bool,
    /// Whether the upstream reports it available (column default true).
    #[serde(default = "available_by_default")]
    pub is_available: Option<bool>,
    /// Price per request in USD; None inherits the global model's.
    #[serde(default)]
    pub price_per_request: Option<f64>,
    /// Tiered pricing; None inherits.
    #[serde(default)]
    pub tiered_pricing: Option<Value>,
    /// Capability overrides; None inherits.
    #[serde(default)]
    pub supports_vision: Option<bool>,
    /// Function-calling override.
    #[serde(default)]
    pub supports_function_calling: Option<bool>,
    /// Streaming override.
    #[serde(default)]
    pub supports_streaming: Option<bool>,
    /// Extended-thinking override.
    #[serde(default)]
    pub supports_extended_thinking: Option<bool>,
    /// Image-generation override.
    #[serde(default)]
    pub supports_image_generation: Option<bool>,
    /// Free-form configuration.
    #[serde(default)]
    pub config: Option<Value>,
}

/// One upstream name of a provider model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameMapping {
    /// Upstream model name (trimmed).
    pub name: String,
    /// Lower is preferred (>= 1).
    pub priority: i32,
}

impl ProviderModel {
    /// Aether's cached JSON text.
    pub fn to_aether_json(&self) -> String {
        crate::domain::python_json::to_python_json(self)
    }

    /// The usable entries of `provider_model_mappings`, by priority, read as
    /// Aether reads them: entries without a non-blank string name are
    /// skipped; a missing or unreadable priority, or one below 1, is 1.
    pub fn name_mappings(&self) -> Vec<NameMapping> {
        let Some(Value::Array(entries)) = &self.provider_model_mappings else {
            return Vec::new();
        };
        let mut mappings: Vec<NameMapping> = entries
            .iter()
            .filter_map(|entry| {
                let name = entry.get("name")?.as_str()?.trim();
                if name.is_empty() {
                    return None;
                }
                Some(NameMapping {
                    name: name.to_owned(),
                    priority: priority(entry.get("priority")),
                })
            })
            .collect();
        mappings.sort_by_key(|m| m.priority);
        mappings
    }
}

/// Python's `int(raw)` clamped to >= 1, 1 when absent or unreadable.
fn priority(raw: Option<&Value>) -> i32 {
    let parsed = match raw {
        Some(Value::Number(n)) => n.as_i64().or_else(|| n.as_f64().map(|f| f.trunc() as i64)),
        Some(Value::String(s)) => s.trim().parse::<i64>().ok(),
        Some(Value::Bool(b)) => Some(i64::from(*b)),
        _ => None,
    };
    parsed.unwrap_or(1).clamp(1, i64::from(i32::MAX)) as i32
}

/// What a cached `global_model:resolve:*` value says.
#[derive(Clone, Debug, PartialEq)]
pub enum CachedResolution {
    /// The negative entry (raw `NOT_FOUND`, or the JSON string, which
    /// Aether's reader takes for it too).
    NotFound,
    /// A usable global model.
    Found(GlobalModel),
    /// JSON that is a dict but not a usable global model, or lacks
    /// `supported_capabilities` (Aether refreshes those).
    Stale,
    /// Not JSON, or JSON that is neither a dict nor the sentinel.
    Invalid,
}

impl CachedResolution {
    /// Reads a cached value as Aether's resolver does.
    pub fn parse(text: &str) -> Self {
        if text == NOT_FOUND_SENTINEL {
            return Self::NotFound;
        }
        match serde_json::from_str::<Value>(text) {
            Ok(Value::String(s)) if s == NOT_FOUND_SENTINEL => Self::NotFound,
            Ok(Value::Object(map)) => {
                if !map.contains_key("supported_capabilities") {
                    return Self::Stale;
                }
                serde_json::from_value(Value::Object(map)).map_or(Self::Stale, Self::Found)
            }
            _ => Self::Invalid,
        }
    }
}

/// How a model name was resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelMatch {
    /// `models.provider_model_name`.
    ProviderModelName,
    /// `global_models.name`.
    GlobalModelName,
    /// Aether's resolve cache (the kind is not recorded there).
    Cache,
}

/// A resolved model name.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolution {
    /// The global model.
    pub global_model: GlobalModel,
    /// How it matched.
    pub matched_by: ModelMatch,
    /// Whether it came from the cache.
    pub from_cache: bool,
    /// The other global models an ambiguous provider model name maps to, by
    /// id (bytewise).
    pub conflicting_global_model_ids: Vec<String>,
}

/// A provider model and where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct ProviderModelLookup {
    /// The row.
    pub model: ProviderModel,
    /// Whether it came from the cache.
    pub from_cache: bool,
}

/// Keys a clear deleted (or would, with dry_run).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClearedKeys {
    /// How many.
    pub count: u64,
    /// Which, in the order tried.
    pub keys: Vec<String>,
}

/// A provider's names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderNames {
    /// `providers.name`.
    pub name: String,
    /// `providers.display_name`.
    pub display_name: String,
}

impl ProviderNames {
    /// Aether's label: the display name, else the name.
    pub fn label(&self) -> &str {
        if self.display_name.is_empty() {
            &self.name
        } else {
            &self.display_name
        }
    }
}

/// A global model's names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GlobalModelNames {
    /// `global_models.name`.
    pub name: String,
    /// `global_models.display_name`.
    pub display_name: String,
}

/// A name under which an active provider serves a global model: an active
/// `models` row of an active provider.
#[derive(Clone, Debug, PartialEq)]
pub struct ServedModel {
    /// `models.global_model_id`.
    pub global_model_id: String,
    /// `models.provider_model_name`.
    pub provider_model_name: String,
    /// `models.provider_model_mappings` as stored.
    pub provider_model_mappings: Option<Value>,
    /// The provider.
    pub provider: ProviderNames,
}

/// What model resolution needs from Aether's tables.
#[async_trait]
pub trait ModelCatalog: Send + Sync + 'static {
    /// Distinct active global models that an active model of an active
    /// provider names `provider_model_name` (exact, case-sensitive), in any
    /// order.
    async fn global_models_by_provider_model_name(
        &self,
        provider_model_name: &str,
    ) -> Result<Vec<GlobalModel>, StoreError>;

    /// The active global model named `name` (exact).
    async fn active_global_model_by_name(&self, name: &str) -> Result<Option<GlobalModel>, StoreError>;

    /// The provider's active model rows for the global model, in any order.
    async fn active_provider_models(
        &self,
        provider_id: &str,
        global_model_id: &str,
    ) -> Result<Vec<ProviderModel>, StoreError>;

    /// Active providers among `ids`.
    async fn active_providers(&self, ids: &[String]) -> Result<HashMap<String, ProviderNames>, StoreError>;

    /// Active global models among `ids`.
    async fn active_global_models(&self, ids: &[String]) -> Result<HashMap<String, GlobalModelNames>, StoreError>;

    /// Active models of active providers for these global models.
    async fn served_models(&self, global_model_ids: &[String]) -> Result<Vec<ServedModel>, StoreError>;
}

/// Settings of the model-mapping use cases.
#[derive(Clone, Debug)]
pub struct ModelMappingSettings {
    /// TTL of the negative entries we write.
    pub negative_ttl: Duration,
    /// Whether the cache is Redis shared with Aether (else this process's
    /// memory).
    pub shared_cache: bool,
}

impl Default for ModelMappingSettings {
    fn default() -> Self {
        Self {
            negative_ttl: NEGATIVE_CACHE_TTL,
            shared_cache: true,
        }
    }
}

/// A model name as Aether takes it: Python's `strip()`, then 1..=200 bytes.
pub fn model_name<'a>(field: &'static str, raw: &'a str) -> Result<&'a str> {
    // Python's str.isspace also covers the C0 separators U+001C..U+001F.
    let name = raw.trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c));
    if name.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    if name.len() > MAX_MODEL_NAME_LEN {
        return Err(Error::invalid(
            field,
            format!("must be at most {MAX_MODEL_NAME_LEN} bytes"),
        ));
    }
    Ok(name)
}

/// Model resolution and the model-mapping cache.
#[derive(Clone)]
pub struct ModelResolver {
    cache: Arc<dyn CacheStore>,
    catalog: Arc<dyn ModelCatalog>,
    settings: ModelMappingSettings,
    cache_fallbacks: Arc<AtomicU64>,
}

impl ModelResolver {
    /// Use cases over `cache` and `catalog`.
    pub fn new(cache: Arc<dyn CacheStore>, catalog: Arc<dyn ModelCatalog>, settings: ModelMappingSettings) -> Self {
        Self {
            cache,
            catalog,
            settings,
            cache_fallbacks: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &ModelMappingSettings {
        &self.settings
    }

    /// Cache operations of ResolveModel / GetProviderModel that failed and
    /// were bypassed (reads served from the database, writes skipped), since
    /// start.
    pub fn cache_fallbacks(&self) -> u64 {
        self.cache_fallbacks.load(Ordering::Relaxed)
    }

    /// Notes a tolerated cache failure.
    fn bypass(&self, operation: &'static str, key: &str, error: &StoreError) {
        self.cache_fallbacks.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%error, operation, key, "model-mapping cache bypassed");
    }

    /// A read that never fails the call: errors count as a miss.
    async fn cached(&self, key: &str) -> Option<String> {
        match self.cache.get(key).await {
            Ok(value) => value,
            Err(error) => {
                self.bypass("get", key, &error);
                None
            }
        }
    }

    /// A write that never fails the call.
    async fn fill(&self, key: &str, value: &str, ttl: Duration) {
        if let Err(error) = self.cache.set_ex(key, value, ttl).await {
            self.bypass("set", key, &error);
        }
    }

    /// Resolves a model name in Aether's order: cache, then provider model
    /// name (lowest global model id wins; the others are listed), then
    /// global model name. A miss is cached for the negative TTL only.
    pub async fn resolve(&self, raw_name: &str) -> Result<Resolution> {
        let name = model_name("model_name", raw_name)?;
        let key = keys::resolve(name);
        if let Some(text) = self.cached(&key).await {
            match CachedResolution::parse(&text) {
                CachedResolution::NotFound => return Err(Error::not_found("model", name)),
                CachedResolution::Found(global_model) => {
                    return Ok(Resolution {
                        global_model,
                        matched_by: ModelMatch::Cache,
                        from_cache: true,
                        conflicting_global_model_ids: Vec::new(),
                    });
                }
                CachedResolution::Stale | CachedResolution::Invalid => {}
            }
        }

        let mut candidates = self.catalog.global_models_by_provider_model_name(name).await?;
        // Byte order, not the database collation: the same winner everywhere.
        candidates.sort_by(|a, b| a.id.cmp(&b.id));
        candidates.dedup_by(|a, b| a.id == b.id);
        let mut candidates = candidates.into_iter();
        let resolution = if let Some(winner) = candidates.next() {
            let conflicting_global_model_ids: Vec<String> = candidates.map(|gm| gm.id).collect();
            if !conflicting_global_model_ids.is_empty() {
                tracing::warn!(
                    model_name = name,
                    winner = %winner.id,
                    others = ?conflicting_global_model_ids,
                    "ambiguous provider model name; the lowest global model id wins"
                );
            }
            Resolution {
                global_model: winner,
                matched_by: ModelMatch::ProviderModelName,
                from_cache: false,
                conflicting_global_model_ids,
            }
        } else if let Some(global_model) = self.catalog.active_global_model_by_name(name).await? {
            Resolution {
                global_model,
                matched_by: ModelMatch::GlobalModelName,
                from_cache: false,
                conflicting_global_model_ids: Vec::new(),
            }
        } else {
            self.fill(&key, NOT_FOUND_SENTINEL, self.settings.negative_ttl).await;
            return Err(Error::not_found("model", name));
        };
        self.fill(&key, &resolution.global_model.to_aether_json(), MODEL_CACHE_TTL)
            .await;
        Ok(resolution)
    }

    /// The provider's active model for a global model, through Aether's
    /// cache: a hit bumps the hit counter (INCR + EXPIRE), a fill resets it
    /// to 1. Several rows: the lowest `models.id` (Aether takes any).
    pub async fn provider_model(&self, provider_id: &str, global_model_id: &str) -> Result<ProviderModelLookup> {
        let provider_id = validate::key_part("provider_id", provider_id)?;
        let global_model_id = validate::key_part("global_model_id", global_model_id)?;
        let key = keys::provider_global(&provider_id, &global_model_id);
        let hits = keys::provider_global_hits(&provider_id, &global_model_id);
        if let Some(text) = self.cached(&key).await
            && let Ok(model) = serde_json::from_str::<ProviderModel>(&text)
        {
            if let Err(error) = self.cache.incr_with_ttl(&hits, MODEL_CACHE_TTL).await {
                self.bypass("incr", &hits, &error);
            }
            return Ok(ProviderModelLookup {
                model,
                from_cache: true,
            });
        }

        let rows = self
            .catalog
            .active_provider_models(&provider_id, &global_model_id)
            .await?;
        let Some(model) = rows.into_iter().min_by(|a, b| a.id.cmp(&b.id)) else {
            return Err(Error::not_found(
                "provider model",
                format!("{provider_id}:{global_model_id}"),
            ));
        };
        self.fill(&key, &model.to_aether_json(), MODEL_CACHE_TTL).await;
        self.fill(&hits, "1", MODEL_CACHE_TTL).await;
        Ok(ProviderModelLookup {
            model,
            from_cache: false,
        })
    }

    /// Deletes every key under `model:` and `global_model:` (in bounded
    /// batches); with `dry_run` only counts. Returns the exact number.
    pub async fn clear_all(&self, dry_run: bool) -> Result<u64> {
        let models = self.cache.delete_prefix(keys::MODEL, dry_run).await?;
        let global_models = self.cache.delete_prefix(keys::GLOBAL_MODEL, dry_run).await?;
        Ok(models + global_models)
    }

    /// Deletes the resolve and by-name keys of a model name (a cached
    /// NOT_FOUND included). The name is a key part, never a pattern.
    pub async fn clear_name(&self, raw_name: &str, dry_run: bool) -> Result<ClearedKeys> {
        let name = model_name("model_name", raw_name)?;
        self.delete_each(vec![keys::resolve(name), keys::global_model_by_name(name)], dry_run)
            .await
    }

    /// Deletes the cached provider model of (provider, global model) and its
    /// hit counter.
    pub async fn clear_provider_model(
        &self,
        provider_id: &str,
        global_model_id: &str,
        dry_run: bool,
    ) -> Result<ClearedKeys> {
        let provider_id = validate::key_part("provider_id", provider_id)?;
        let global_model_id = validate::key_part("global_model_id", global_model_id)?;
        self.delete_each(
            vec![
                keys::provider_global(&provider_id, &global_model_id),
                keys::provider_global_hits(&provider_id, &global_model_id),
            ],
            dry_run,
        )
        .await
    }

    /// Deletes keys one by one, to report exactly which existed.
    async fn delete_each(&self, keys: Vec<String>, dry_run: bool) -> Result<ClearedKeys> {
        let mut cleared = ClearedKeys::default();
        for key in keys {
            let deleted = self.cache.delete(std::slice::from_ref(&key), dry_run).await?;
            if deleted > 0 {
                cleared.count += deleted;
                cleared.keys.push(key);
            }
        }
        Ok(cleared)
    }

    /// The model-mapping cache described, by the rules of Aether's
    /// `/model-mapping/stats` (module `stats`).
    pub async fn stats(&self) -> Result<MappingStats> {
        stats::collect(self.cache.as_ref(), self.catalog.as_ref(), &self.settings).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn global_model() -> GlobalModel {
        GlobalModel {
            id: "gm-1".into(),
            name: "claude-sonnet-4".into(),
            display_name: "Claude Sonnet 4".into(),
            supported_capabilities: Some(json!(["vision"])),
            config: None,
            default_tiered_pricing: Some(json!({"tiers": [{"up_to": null, "input_price_per_1m": 3.0}]})),
            default_price_per_request: Some(0.01),
            is_active: true,
        }
    }

    #[test]
    fn global_model_json_is_aethers_field_for_field() {
        assert_eq!(
            global_model().to_aether_json(),
            r#"{"id": "gm-1", "name": "claude-sonnet-4", "display_name": "Claude Sonnet 4", "supported_capabilities": ["vision"], "config": null, "default_tiered_pricing": {"tiers": [{"input_price_per_1m": 3.0, "up_to": null}]}, "default_price_per_request": 0.01, "is_active": true}"#
        );
        assert_eq!(
            CachedResolution::parse(&global_model().to_aether_json()),
            CachedResolution::Found(global_model())
        );
    }

    #[test]
    fn provider_model_json_is_aethers_field_for_field() {
        let model = ProviderModel {
            id: "m-1".into(),
            provider_id: "p-1".into(),
            global_model_id: "gm-1".into(),
            provider_model_name: "claude-4-sonnet".into(),
            provider_model_mappings: Some(json!([{"name": "sonnet", "priority": 1}])),
            is_active: true,
            is_available: Some(true),
            price_per_request: None,
            tiered_pricing: None,
            supports_vision: Some(true),
            supports_function_calling: None,
            supports_streaming: None,
            supports_extended_thinking: None,
            supports_image_generation: None,
            config: None,
        };
        let text = model.to_aether_json();
        assert_eq!(
            text,
            r#"{"id": "m-1", "provider_id": "p-1", "global_model_id": "gm-1", "provider_model_name": "claude-4-sonnet", "provider_model_mappings": [{"name": "sonnet", "priority": 1}], "is_active": true, "is_available": true, "price_per_request": null, "tiered_pricing": null, "supports_vision": true, "supports_function_calling": null, "supports_streaming": null, "supports_extended_thinking": null, "supports_image_generation": null, "config": null}"#
        );
        assert_eq!(serde_json::from_str::<ProviderModel>(&text).ok(), Some(model));
    }

    #[test]
    fn cached_values_read_as_aether_reads_them() {
        assert_eq!(CachedResolution::parse("NOT_FOUND"), CachedResolution::NotFound);
        assert_eq!(CachedResolution::parse("\"NOT_FOUND\""), CachedResolution::NotFound);
        assert_eq!(
            CachedResolution::parse(r#"{"id": "x", "name": "y"}"#),
            CachedResolution::Stale
        );
        assert_eq!(
            CachedResolution::parse(r#"{"supported_capabilities": null}"#),
            CachedResolution::Stale
        );
        for invalid in ["", "not json", "[1]", "42"] {
            assert_eq!(
                CachedResolution::parse(invalid),
                CachedResolution::Invalid,
                "{invalid:?}"
            );
        }
        // Aether's reader defaults what an older writer left out.
        let minimal = r#"{"id": "x", "name": "y", "display_name": null, "supported_capabilities": null}"#;
        let CachedResolution::Found(model) = CachedResolution::parse(minimal) else {
            panic!("usable");
        };
        assert!(model.is_active);
        assert_eq!(model.display_name, "");
    }

    #[test]
    fn name_mappings_follow_aethers_reading() {
        let model = ProviderModel {
            provider_model_mappings: Some(json!([
                {"name": " b ", "priority": 2},
                {"name": "a"},
                {"name": ""},
                {"priority": 1},
                "loose",
                {"name": "c", "priority": "0"},
                {"name": "d", "priority": 3.7}
            ])),
            ..serde_json::from_str(
                r#"{"id": "m", "provider_id": "p", "global_model_id": "g", "provider_model_name": "n", "is_active": true}"#,
            )
            .expect("minimal model")
        };
        let names: Vec<(String, i32)> = model
            .name_mappings()
            .into_iter()
            .map(|m| (m.name, m.priority))
            .collect();
        assert_eq!(
            names,
            [
                ("a".to_owned(), 1),
                ("c".to_owned(), 1),
                ("b".to_owned(), 2),
                ("d".to_owned(), 3)
            ]
        );
    }

    /// A cache whose every call fails, as Redis does when it is down.
    struct DownCache;

    fn down() -> StoreError {
        StoreError::Unavailable {
            store: crate::error::StoreKind::Redis,
            detail: "down".into(),
        }
    }

    #[async_trait]
    impl CacheStore for DownCache {
        async fn get(&self, _: &str) -> Result<Option<String>, StoreError> {
            Err(down())
        }
        async fn set_ex(&self, _: &str, _: &str, _: Duration) -> Result<(), StoreError> {
            Err(down())
        }
        async fn delete(&self, _: &[String], _: bool) -> Result<u64, StoreError> {
            Err(down())
        }
        async fn incr_with_ttl(&self, _: &str, _: Duration) -> Result<i64, StoreError> {
            Err(down())
        }
        async fn ttl(&self, _: &str) -> Result<Option<Duration>, StoreError> {
            Err(down())
        }
        async fn keys_with_prefix(&self, _: &str, _: usize) -> Result<Vec<String>, StoreError> {
            Err(down())
        }
        async fn delete_prefix(&self, _: &str, _: bool) -> Result<u64, StoreError> {
            Err(down())
        }
    }

    /// One global model, served by one provider as `sonnet`.
    struct OneModel;

    fn served_model() -> ProviderModel {
        serde_json::from_str(
            r#"{"id": "m-1", "provider_id": "p-1", "global_model_id": "gm-1", "provider_model_name": "sonnet", "is_active": true}"#,
        )
        .expect("model")
    }

    #[async_trait]
    impl ModelCatalog for OneModel {
        async fn global_models_by_provider_model_name(&self, name: &str) -> Result<Vec<GlobalModel>, StoreError> {
            Ok(if name == "sonnet" {
                vec![global_model()]
            } else {
                Vec::new()
            })
        }
        async fn active_global_model_by_name(&self, _: &str) -> Result<Option<GlobalModel>, StoreError> {
            Ok(None)
        }
        async fn active_provider_models(&self, _: &str, _: &str) -> Result<Vec<ProviderModel>, StoreError> {
            Ok(vec![served_model()])
        }
        async fn active_providers(&self, _: &[String]) -> Result<HashMap<String, ProviderNames>, StoreError> {
            Ok(HashMap::new())
        }
        async fn active_global_models(&self, _: &[String]) -> Result<HashMap<String, GlobalModelNames>, StoreError> {
            Ok(HashMap::new())
        }
        async fn served_models(&self, _: &[String]) -> Result<Vec<ServedModel>, StoreError> {
            Ok(Vec::new())
        }
    }

    #[tokio::test]
    async fn a_cache_outage_falls_back_to_the_database_and_is_counted() {
        let resolver = ModelResolver::new(Arc::new(DownCache), Arc::new(OneModel), ModelMappingSettings::default());
        let resolved = resolver.resolve("sonnet").await.expect("resolved from the database");
        assert_eq!(
            (resolved.matched_by, resolved.from_cache),
            (ModelMatch::ProviderModelName, false)
        );
        // A failed read and a skipped fill.
        assert_eq!(resolver.cache_fallbacks(), 2);
        assert!(matches!(resolver.resolve("nothing").await, Err(Error::NotFound { .. })));
        assert_eq!(resolver.cache_fallbacks(), 4);
        let found = resolver.provider_model("p-1", "gm-1").await.expect("from the database");
        assert!(!found.from_cache);
        // A failed read and two skipped fills (entry and hit counter).
        assert_eq!(resolver.cache_fallbacks(), 7);
        // The cache-management calls report the outage instead.
        assert!(matches!(resolver.clear_all(true).await, Err(Error::Store(_))));
        assert!(matches!(resolver.stats().await, Err(Error::Store(_))));
    }

    #[test]
    fn model_names_are_stripped_and_bounded() {
        assert_eq!(model_name("model_name", " \u{1f}gpt-4o\t").ok(), Some("gpt-4o"));
        assert!(model_name("model_name", "  ").is_err());
        assert!(model_name("model_name", &"x".repeat(201)).is_err());
        assert!(model_name("model_name", &"x".repeat(200)).is_ok());
        assert_eq!(model_name("model_name", "a*[b]?").ok(), Some("a*[b]?"));
    }
}
