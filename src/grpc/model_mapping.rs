//! ModelMappingService adapter (delivered with the models milestone).

use tonic::{Request, Response, Status};

use super::not_yet;
use crate::proto::model_mapping_service_server::ModelMappingService;
use crate::proto::*;

/// gRPC face of model resolution and the model-mapping cache.
pub struct ModelMappingGrpc;

#[tonic::async_trait]
impl ModelMappingService for ModelMappingGrpc {
    async fn resolve_model(&self, _: Request<ResolveModelRequest>) -> Result<Response<ResolveModelResponse>, Status> {
        not_yet("aether.control.v1.ModelMappingService/ResolveModel")
    }

    async fn get_provider_model(
        &self,
        _: Request<GetProviderModelRequest>,
    ) -> Result<Response<GetProviderModelResponse>, Status> {
        not_yet("aether.control.v1.ModelMappingService/GetProviderModel")
    }

    async fn get_model_mapping_stats(
        &self,
        _: Request<GetModelMappingStatsRequest>,
    ) -> Result<Response<GetModelMappingStatsResponse>, Status> {
        not_yet("aether.control.v1.ModelMappingService/GetModelMappingStats")
    }

    async fn clear_model_mapping_cache(
        &self,
        _: Request<ClearModelMappingCacheRequest>,
    ) -> Result<Response<ClearModelMappingCacheResponse>, Status> {
        not_yet("aether.control.v1.ModelMappingService/ClearModelMappingCache")
    }

    async fn clear_model_mapping_cache_by_name(
        &self,
        _: Request<ClearModelMappingCacheByNameRequest>,
    ) -> Result<Response<ClearModelMappingCacheByNameResponse>, Status> {
        not_yet("aether.control.v1.ModelMappingService/ClearModelMappingCacheByName")
    }

    async fn clear_provider_model_mapping_cache(
        &self,
        _: Request<ClearProviderModelMappingCacheRequest>,
    ) -> Result<Response<ClearProviderModelMappingCacheResponse>, Status> {
        not_yet("aether.control.v1.ModelMappingService/ClearProviderModelMappingCache")
    }
}
