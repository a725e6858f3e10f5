//! ModelMappingService adapter.

use std::time::Instant;

use serde_json::json;
use tonic::{Request, Response, Status};

use super::context::{audited, call_context, details};
use crate::domain::audit::Auditor;

use super::convert::models as convert;
use crate::domain::models::ModelResolver;
use crate::proto::model_mapping_service_server::ModelMappingService;
use crate::proto::*;

/// gRPC face of model resolution and the model-mapping cache.
pub struct ModelMappingGrpc {
    resolver: ModelResolver,
    auditor: Auditor,
}

const SERVICE: &str = "/aether.control.v1.ModelMappingService/";

impl ModelMappingGrpc {
    /// An adapter over `resolver`; cache clears are audited.
    pub fn new(resolver: ModelResolver, auditor: Auditor) -> Self {
        Self { resolver, auditor }
    }

    /// The use cases behind it.
    pub fn resolver(&self) -> &ModelResolver {
        &self.resolver
    }
}

#[tonic::async_trait]
impl ModelMappingService for ModelMappingGrpc {
    async fn resolve_model(
        &self,
        request: Request<ResolveModelRequest>,
    ) -> Result<Response<ResolveModelResponse>, Status> {
        let resolution = self.resolver.resolve(&request.into_inner().model_name).await?;
        Ok(Response::new(convert::resolution(resolution)))
    }

    async fn get_provider_model(
        &self,
        request: Request<GetProviderModelRequest>,
    ) -> Result<Response<GetProviderModelResponse>, Status> {
        let r = request.into_inner();
        let found = self.resolver.provider_model(&r.provider_id, &r.global_model_id).await?;
        Ok(Response::new(GetProviderModelResponse {
            model: Some(convert::model(&found.model)),
            from_cache: found.from_cache,
        }))
    }

    async fn get_model_mapping_stats(
        &self,
        _: Request<GetModelMappingStatsRequest>,
    ) -> Result<Response<GetModelMappingStatsResponse>, Status> {
        let stats = self.resolver.stats().await?;
        Ok(Response::new(convert::stats(stats)))
    }

    async fn clear_model_mapping_cache(
        &self,
        request: Request<ClearModelMappingCacheRequest>,
    ) -> Result<Response<ClearModelMappingCacheResponse>, Status> {
        let context = call_context(&request, &format!("{SERVICE}ClearModelMappingCache"));
        let (dry_run, started) = (request.into_inner().dry_run, Instant::now());
        let result = self.resolver.clear_all(dry_run).await;
        let action = "model_mapping_cache_clear_all";
        let deleted = audited(&self.auditor, &context, action, dry_run, started, result, |done| {
            details([("deleted_count", json!(done))])
        })
        .await?;
        Ok(Response::new(ClearModelMappingCacheResponse {
            deleted_count: i64::try_from(deleted).unwrap_or(i64::MAX),
            dry_run,
        }))
    }

    async fn clear_model_mapping_cache_by_name(
        &self,
        request: Request<ClearModelMappingCacheByNameRequest>,
    ) -> Result<Response<ClearModelMappingCacheByNameResponse>, Status> {
        let context = call_context(&request, &format!("{SERVICE}ClearModelMappingCacheByName"));
        let (r, started) = (request.into_inner(), Instant::now());
        let result = self.resolver.clear_name(&r.model_name, r.dry_run).await;
        let action = "model_mapping_cache_clear_by_name";
        let cleared = audited(&self.auditor, &context, action, r.dry_run, started, result, |done| {
            details([
                ("model_name", json!(r.model_name)),
                ("deleted_keys", json!(done.map(|c| &c.keys))),
            ])
        })
        .await?;
        Ok(Response::new(ClearModelMappingCacheByNameResponse {
            deleted_count: i64::try_from(cleared.count).unwrap_or(i64::MAX),
            deleted_keys: cleared.keys,
            dry_run: r.dry_run,
        }))
    }

    async fn clear_provider_model_mapping_cache(
        &self,
        request: Request<ClearProviderModelMappingCacheRequest>,
    ) -> Result<Response<ClearProviderModelMappingCacheResponse>, Status> {
        let context = call_context(&request, &format!("{SERVICE}ClearProviderModelMappingCache"));
        let (r, started) = (request.into_inner(), Instant::now());
        let result = self
            .resolver
            .clear_provider_model(&r.provider_id, &r.global_model_id, r.dry_run)
            .await;
        let action = "provider_model_mapping_cache_clear";
        let cleared = audited(&self.auditor, &context, action, r.dry_run, started, result, |done| {
            details([
                ("provider_id", json!(r.provider_id)),
                ("global_model_id", json!(r.global_model_id)),
                ("deleted_keys", json!(done.map(|c| &c.keys))),
            ])
        })
        .await?;
        Ok(Response::new(ClearProviderModelMappingCacheResponse {
            deleted_count: i64::try_from(cleared.count).unwrap_or(i64::MAX),
            deleted_keys: cleared.keys,
            dry_run: r.dry_run,
        }))
    }
}
