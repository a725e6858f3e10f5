//! AffinityService adapter.

use std::pin::Pin;

use futures::Stream;
use tonic::{Request, Response, Status};

use super::{convert, not_yet};
use crate::domain::affinity::{AffinityEngine, AffinityKey, AffinityTarget, InvalidationGuard};
use crate::domain::validate;
use crate::proto::affinity_service_server::AffinityService;
use crate::proto::*;

/// gRPC face of the affinity engine.
pub struct AffinityGrpc {
    engine: AffinityEngine,
}

impl AffinityGrpc {
    /// An adapter over `engine`.
    pub fn new(engine: AffinityEngine) -> Self {
        Self { engine }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<WatchAffinityEventsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AffinityService for AffinityGrpc {
    async fn get_affinity(
        &self,
        request: Request<GetAffinityRequest>,
    ) -> Result<Response<GetAffinityResponse>, Status> {
        let r = request.into_inner();
        let key = AffinityKey::parse(&r.affinity_key, &r.api_format, &r.global_model_id)?;
        let found = self.engine.get(&key).await?;
        Ok(Response::new(GetAffinityResponse {
            affinity: Some((&found).into()),
        }))
    }

    async fn set_affinity(
        &self,
        request: Request<SetAffinityRequest>,
    ) -> Result<Response<SetAffinityResponse>, Status> {
        let r = request.into_inner();
        let key = AffinityKey::parse(&r.affinity_key, &r.api_format, &r.global_model_id)?;
        let target = AffinityTarget {
            provider_id: r.provider_id,
            endpoint_id: r.endpoint_id,
            key_id: r.key_id,
        };
        let ttl = convert::duration("ttl", r.ttl)?;
        let result = self.engine.set(&key, target, &r.model_name, ttl).await?;
        Ok(Response::new(SetAffinityResponse {
            affinity: Some(convert::affinity(&key, &result.record)),
            outcome: SetAffinityOutcome::from(result.outcome).into(),
            previous: result.previous.as_ref().map(|p| convert::affinity(&key, p)),
        }))
    }

    async fn invalidate_affinity(
        &self,
        request: Request<InvalidateAffinityRequest>,
    ) -> Result<Response<InvalidateAffinityResponse>, Status> {
        let r = request.into_inner();
        let key = AffinityKey::parse(&r.affinity_key, &r.api_format, &r.global_model_id)?;
        let guard = InvalidationGuard {
            endpoint_id: validate::optional_key_part("endpoint_id", r.endpoint_id.as_deref())?,
            key_id: validate::optional_key_part("key_id", r.key_id.as_deref())?,
            provider_id: validate::optional_key_part("provider_id", r.provider_id.as_deref())?,
        };
        let deleted = self.engine.invalidate(&key, &guard).await?;
        Ok(Response::new(InvalidateAffinityResponse {
            deleted: deleted.is_some(),
            affinity: deleted.as_ref().map(|record| convert::affinity(&key, record)),
        }))
    }

    async fn get_affinity_stats(
        &self,
        _: Request<GetAffinityStatsRequest>,
    ) -> Result<Response<GetAffinityStatsResponse>, Status> {
        not_yet("aether.control.v1.AffinityService/GetAffinityStats")
    }

    async fn list_user_affinities(
        &self,
        _: Request<ListUserAffinitiesRequest>,
    ) -> Result<Response<ListUserAffinitiesResponse>, Status> {
        not_yet("aether.control.v1.AffinityService/ListUserAffinities")
    }

    async fn list_affinities(
        &self,
        _: Request<ListAffinitiesRequest>,
    ) -> Result<Response<ListAffinitiesResponse>, Status> {
        not_yet("aether.control.v1.AffinityService/ListAffinities")
    }

    async fn clear_user_affinities(
        &self,
        _: Request<ClearUserAffinitiesRequest>,
    ) -> Result<Response<ClearUserAffinitiesResponse>, Status> {
        not_yet("aether.control.v1.AffinityService/ClearUserAffinities")
    }

    async fn delete_affinity(
        &self,
        _: Request<DeleteAffinityRequest>,
    ) -> Result<Response<DeleteAffinityResponse>, Status> {
        not_yet("aether.control.v1.AffinityService/DeleteAffinity")
    }

    async fn clear_all_affinities(
        &self,
        _: Request<ClearAllAffinitiesRequest>,
    ) -> Result<Response<ClearAllAffinitiesResponse>, Status> {
        not_yet("aether.control.v1.AffinityService/ClearAllAffinities")
    }

    async fn clear_provider_affinities(
        &self,
        _: Request<ClearProviderAffinitiesRequest>,
    ) -> Result<Response<ClearProviderAffinitiesResponse>, Status> {
        not_yet("aether.control.v1.AffinityService/ClearProviderAffinities")
    }

    async fn get_affinity_config(
        &self,
        _: Request<GetAffinityConfigRequest>,
    ) -> Result<Response<GetAffinityConfigResponse>, Status> {
        not_yet("aether.control.v1.AffinityService/GetAffinityConfig")
    }

    async fn export_metrics(
        &self,
        _: Request<ExportMetricsRequest>,
    ) -> Result<Response<ExportMetricsResponse>, Status> {
        not_yet("aether.control.v1.AffinityService/ExportMetrics")
    }

    type WatchAffinityEventsStream = EventStream;

    async fn watch_affinity_events(
        &self,
        _: Request<WatchAffinityEventsRequest>,
    ) -> Result<Response<Self::WatchAffinityEventsStream>, Status> {
        not_yet("aether.control.v1.AffinityService/WatchAffinityEvents")
    }
}
