//! ModelMappingService adapter.

use tonic::{Request, Response, Status};

use super::convert::models as convert;
use crate::domain::models::ModelResolver;
use crate::proto::model_mapping_service_server::ModelMappingService;
use crate::proto::*;

/// gRPC face of model resolution and the model-mapping cache.
pub struct ModelMappingGrpc {
    resolver: ModelResolver,
}

impl ModelMappingGrpc {
    /// An adapter over `resolver`.
    pub fn new(resolver: ModelResolver) -> Self {
        Self { resolver }
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
        let dry_run = request.into_inner().dry_run;
        let deleted = self.resolver.clear_all(dry_run).await?;
        Ok(Response::new(ClearModelMappingCacheResponse {
            deleted_count: i64::try_from(deleted).unwrap_or(i64::MAX),
            dry_run,
        }))
    }

    async fn clear_model_mapping_cache_by_name(
        &self,
        request: Request<ClearModelMappingCacheByNameRequest>,
    ) -> Result<Response<ClearModelMappingCacheByNameResponse>, Status> {
        let r = request.into_inner();
        let cleared = self.resolver.clear_name(&r.model_name, r.dry_run).await?;
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
        let r = request.into_inner();
        let cleared = self
            .resolver
            .clear_provider_model(&r.provider_id, &r.global_model_id, r.dry_run)
            .await?;
        Ok(Response::new(ClearProviderModelMappingCacheResponse {
            deleted_count: i64::try_from(cleared.count).unwrap_or(i64::MAX),
            deleted_keys: cleared.keys,
            dry_run: r.dry_run,
        }))
    }
}
