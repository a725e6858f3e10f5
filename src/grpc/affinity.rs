//! AffinityService adapter.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::{FutureExt, Stream};
use tokio::sync::{broadcast, watch};
use tonic::{Code, Request, Response, Status};

use serde_json::json;

use super::context::{audited, call_context, details};
use super::convert;
use crate::domain::affinity::engine::{AffinityEngine, WritePolicy};
use crate::domain::affinity::events::{EventFilter, InvalidationReason};
use crate::domain::affinity::stats::render_prometheus;
use crate::domain::affinity::usage::UsageReport;
use crate::domain::affinity::{AffinityKey, AffinityTarget, InvalidationGuard, parse_api_format};
use crate::domain::audit::Auditor;
use crate::domain::validate;
use crate::error::Error;
use crate::metrics::ServiceMetrics;
use crate::proto::affinity_service_server::AffinityService;
use crate::proto::*;

/// gRPC face of the affinity engine.
pub struct AffinityGrpc {
    engine: AffinityEngine,
    draining: watch::Receiver<bool>,
    auditor: Auditor,
    metrics: Arc<ServiceMetrics>,
}

impl AffinityGrpc {
    /// An adapter over `engine`; watch streams end when `draining` turns
    /// true; destructive calls are audited; `metrics` joins ExportMetrics.
    pub fn new(
        engine: AffinityEngine,
        draining: watch::Receiver<bool>,
        auditor: Auditor,
        metrics: Arc<ServiceMetrics>,
    ) -> Self {
        Self {
            engine,
            draining,
            auditor,
            metrics,
        }
    }
}

const SERVICE: &str = "/aether.control.v1.AffinityService/";

type EventStream = Pin<Box<dyn Stream<Item = Result<WatchAffinityEventsResponse, Status>> + Send>>;

fn optional(value: String) -> Option<String> {
    (!value.is_empty()).then_some(value)
}

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
        let outcome = convert::upstream_outcome(r.outcome)?;
        let policy = r.policy.unwrap_or_default();
        let policy = WritePolicy {
            write_on_failure: policy.write_on_failure,
            max_switches_per_minute: policy
                .max_switches_per_minute
                .map(|cap| {
                    u32::try_from(cap)
                        .map_err(|_| Error::invalid("policy.max_switches_per_minute", "must not be negative"))
                })
                .transpose()?,
        };
        let decided = self
            .engine
            .set(&key, target, &r.model_name, ttl, outcome, policy)
            .await?;
        Ok(Response::new(SetAffinityResponse {
            affinity: decided.record.as_ref().map(|record| convert::affinity(&key, record)),
            outcome: SetAffinityOutcome::from(decided.outcome).into(),
            previous: decided.previous.as_ref().map(|p| convert::affinity(&key, p)),
            decision_reason: decided.reason.to_owned(),
        }))
    }

    async fn record_upstream_usage(
        &self,
        request: Request<RecordUpstreamUsageRequest>,
    ) -> Result<Response<RecordUpstreamUsageResponse>, Status> {
        let r = request.into_inner();
        let key = AffinityKey::parse(&r.affinity_key, &r.api_format, &r.global_model_id)?;
        let outcome = convert::upstream_outcome(r.outcome)?.ok_or_else(|| Error::invalid("outcome", "is required"))?;
        let report = UsageReport {
            key,
            target: AffinityTarget {
                provider_id: r.provider_id,
                endpoint_id: r.endpoint_id,
                key_id: r.key_id,
            },
            outcome,
            input_tokens: r.input_tokens,
            cache_read_tokens: r.cache_read_tokens,
            cache_creation_tokens: r.cache_creation_tokens,
        };
        let key = report.key.clone();
        let decided = self.engine.record_usage(report).await?;
        Ok(Response::new(RecordUpstreamUsageResponse {
            binding_matched: decided.binding.is_some(),
            binding_usage: decided.binding.as_ref().map(convert::binding_usage),
            invalidated: decided.invalidated.is_some(),
            invalidated_affinity: decided
                .invalidated
                .as_ref()
                .map(|record| convert::affinity(&key, record)),
            decision_reason: decided.reason.to_owned(),
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
        let reason = InvalidationReason::from(
            crate::proto::InvalidationReason::try_from(r.reason)
                .map_err(|_| Error::invalid("reason", "unknown reason"))?,
        );
        let deleted = self.engine.invalidate(&key, &guard, reason).await?;
        Ok(Response::new(InvalidateAffinityResponse {
            deleted: deleted.is_some(),
            affinity: deleted.as_ref().map(|record| convert::affinity(&key, record)),
        }))
    }

    async fn get_affinity_stats(
        &self,
        _: Request<GetAffinityStatsRequest>,
    ) -> Result<Response<GetAffinityStatsResponse>, Status> {
        let stats = self.engine.stats().await?;
        let modes = self.engine.scheduling_modes().await?;
        Ok(Response::new(GetAffinityStatsResponse {
            stats: Some(convert::stats(&stats)),
            config: Some(convert::config(
                self.engine.settings(),
                self.engine.storage_type(),
                modes,
            )),
        }))
    }

    async fn list_user_affinities(
        &self,
        request: Request<ListUserAffinitiesRequest>,
    ) -> Result<Response<ListUserAffinitiesResponse>, Status> {
        let found = self.engine.list_user(&request.into_inner().user_identifier).await?;
        Ok(Response::new(ListUserAffinitiesResponse {
            user: Some(convert::resolved_user(&found.user)),
            affinities: found
                .details
                .into_iter()
                .map(|detail| convert::affinity_detail(detail, &found.usage))
                .collect(),
            total_endpoints: found.total_endpoints as i32,
        }))
    }

    async fn list_affinities(
        &self,
        request: Request<ListAffinitiesRequest>,
    ) -> Result<Response<ListAffinitiesResponse>, Status> {
        let r = request.into_inner();
        let listing = self
            .engine
            .list(&r.keyword, r.page_size, &r.page_token, r.offset)
            .await?;
        Ok(Response::new(ListAffinitiesResponse {
            affinities: listing
                .details
                .into_iter()
                .map(|detail| convert::affinity_detail(detail, &listing.usage))
                .collect(),
            next_page_token: listing.next_page_token.unwrap_or_default(),
            total_size: i32::try_from(listing.total).unwrap_or(i32::MAX),
            matched_user_id: listing.matched_user_id.unwrap_or_default(),
            matched_api_key_id: listing.matched_api_key_id.unwrap_or_default(),
        }))
    }

    async fn clear_user_affinities(
        &self,
        request: Request<ClearUserAffinitiesRequest>,
    ) -> Result<Response<ClearUserAffinitiesResponse>, Status> {
        let context = call_context(&request, &format!("{SERVICE}ClearUserAffinities"));
        let (r, started) = (request.into_inner(), Instant::now());
        let result = self.engine.clear_user(&r.user_identifier, r.dry_run).await;
        // Aether names a clear by API key id differently from a user clear.
        let by_key = matches!(&result, Ok((_, user)) if user.api_key.is_some());
        let action = if by_key {
            "cache_clear_api_key"
        } else {
            "cache_clear_user"
        };
        let (deleted_count, user) = audited(&self.auditor, &context, action, r.dry_run, started, result, |done| {
            details([
                ("user_identifier", json!(r.user_identifier)),
                ("resolved_user_id", json!(done.map(|(_, u)| u.user.id.clone()))),
                (
                    "resolved_api_key_id",
                    json!(done.and_then(|(_, u)| u.api_key.as_ref().map(|k| k.id.clone()))),
                ),
                ("cleared_count", json!(done.map(|(count, _)| count))),
            ])
        })
        .await?;
        Ok(Response::new(ClearUserAffinitiesResponse {
            deleted_count: deleted_count as i64,
            user: Some(convert::resolved_user(&user)),
            dry_run: r.dry_run,
        }))
    }

    async fn delete_affinity(
        &self,
        request: Request<DeleteAffinityRequest>,
    ) -> Result<Response<DeleteAffinityResponse>, Status> {
        let context = call_context(&request, &format!("{SERVICE}DeleteAffinity"));
        let (r, started) = (request.into_inner(), Instant::now());
        let result = match AffinityKey::parse(&r.affinity_key, &r.api_format, &r.global_model_id) {
            Ok(key) => self.engine.delete_one(&key, &r.endpoint_id).await,
            Err(error) => Err(error),
        };
        let deleted = audited(
            &self.auditor,
            &context,
            "cache_clear_single",
            false,
            started,
            result,
            |_| {
                details([
                    ("affinity_key", json!(r.affinity_key)),
                    ("endpoint_id", json!(r.endpoint_id)),
                    ("model_id", json!(r.global_model_id)),
                    ("api_format", json!(r.api_format)),
                ])
            },
        )
        .await?;
        Ok(Response::new(DeleteAffinityResponse {
            affinity: Some((&deleted).into()),
        }))
    }

    async fn clear_all_affinities(
        &self,
        request: Request<ClearAllAffinitiesRequest>,
    ) -> Result<Response<ClearAllAffinitiesResponse>, Status> {
        let context = call_context(&request, &format!("{SERVICE}ClearAllAffinities"));
        let (r, started) = (request.into_inner(), Instant::now());
        let result = self.engine.clear_all(r.confirm, r.dry_run).await;
        let deleted_count = audited(
            &self.auditor,
            &context,
            "cache_clear_all",
            r.dry_run,
            started,
            result,
            |done| details([("cleared_count", json!(done))]),
        )
        .await?;
        Ok(Response::new(ClearAllAffinitiesResponse {
            deleted_count: deleted_count as i64,
            dry_run: r.dry_run,
        }))
    }

    async fn clear_provider_affinities(
        &self,
        request: Request<ClearProviderAffinitiesRequest>,
    ) -> Result<Response<ClearProviderAffinitiesResponse>, Status> {
        let context = call_context(&request, &format!("{SERVICE}ClearProviderAffinities"));
        let (r, started) = (request.into_inner(), Instant::now());
        let result = self.engine.clear_provider(&r.provider_id, r.dry_run).await;
        let deleted_count = audited(
            &self.auditor,
            &context,
            "cache_clear_provider",
            r.dry_run,
            started,
            result,
            |done| details([("provider_id", json!(r.provider_id)), ("cleared_count", json!(done))]),
        )
        .await?;
        Ok(Response::new(ClearProviderAffinitiesResponse {
            deleted_count: deleted_count as i64,
            dry_run: r.dry_run,
        }))
    }

    async fn get_affinity_config(
        &self,
        _: Request<GetAffinityConfigRequest>,
    ) -> Result<Response<GetAffinityConfigResponse>, Status> {
        let modes = self.engine.scheduling_modes().await?;
        Ok(Response::new(GetAffinityConfigResponse {
            config: Some(convert::config(
                self.engine.settings(),
                self.engine.storage_type(),
                modes,
            )),
        }))
    }

    async fn export_metrics(
        &self,
        _: Request<ExportMetricsRequest>,
    ) -> Result<Response<ExportMetricsResponse>, Status> {
        let stats = self.engine.stats().await?;
        Ok(Response::new(ExportMetricsResponse {
            content_type: "text/plain; version=0.0.4; charset=utf-8".into(),
            text: render_prometheus(&stats) + &self.metrics.render(),
        }))
    }

    type WatchAffinityEventsStream = EventStream;

    async fn watch_affinity_events(
        &self,
        request: Request<WatchAffinityEventsRequest>,
    ) -> Result<Response<Self::WatchAffinityEventsStream>, Status> {
        let r = request.into_inner();
        let filter = EventFilter {
            affinity_key: optional(r.affinity_key)
                .map(|k| validate::key_part("affinity_key", &k))
                .transpose()?,
            provider_id: optional(r.provider_id)
                .map(|p| validate::key_part("provider_id", &p))
                .transpose()?,
            api_format: optional(r.api_format)
                .map(|f| parse_api_format("api_format", &f))
                .transpose()?,
            kinds: r.types.into_iter().map(convert::event_kind).collect::<Result<_, _>>()?,
        };
        let events = self.engine.subscribe();
        let draining = self.draining.clone();
        Ok(Response::new(Box::pin(event_stream(events, filter, draining))))
    }
}

/// Forwards matching events until the client goes, the watcher falls behind
/// (RESOURCE_EXHAUSTED: it is dropped rather than buffered without bound),
/// or the server drains (UNAVAILABLE: reconnect elsewhere).
fn event_stream(
    mut events: broadcast::Receiver<crate::domain::affinity::events::AffinityEvent>,
    filter: EventFilter,
    mut draining: watch::Receiver<bool>,
) -> impl Stream<Item = Result<WatchAffinityEventsResponse, Status>> + Send {
    spawn_stream(move |sender| async move {
        loop {
            tokio::select! {
                // Map away the watch guard: it must not live across the await below.
                _ = draining.wait_for(|d| *d).map(|r| r.is_ok()) => {
                    let _ = sender.send(Err(Status::new(Code::Unavailable, "server is shutting down; reconnect"))).await;
                    return;
                }
                received = events.recv() => match received {
                    Ok(event) if filter.matches(&event) => {
                        if sender.send(Ok(convert::event(&event))).await.is_err() {
                            return; // the client went away
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        let message = format!("watcher fell {missed} events behind and was dropped; reconnect");
                        let _ = sender.send(Err(Status::new(Code::ResourceExhausted, message))).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        let _ = sender.send(Err(Status::new(Code::Unavailable, "event feed closed"))).await;
                        return;
                    }
                }
            }
        }
    })
}

/// Runs `producer` on its own task feeding a small bounded channel, and
/// streams what it sends.
fn spawn_stream<F, Fut>(producer: F) -> impl Stream<Item = Result<WatchAffinityEventsResponse, Status>> + Send
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<WatchAffinityEventsResponse, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (sender, receiver) = tokio::sync::mpsc::channel(16);
    tokio::spawn(producer(sender));
    tokio_stream::wrappers::ReceiverStream::new(receiver)
}
