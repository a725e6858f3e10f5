//! The per-call envelope, outermost of the tower layers: a request id (taken
//! from `x-request-id` or made here, returned in the response metadata and
//! carried by every log line of the call), load shedding past the
//! concurrency limit (RESOURCE_EXHAUSTED at once, never a queue), the
//! deadline (the caller's `grpc-timeout`, capped by ours; DEADLINE_EXCEEDED,
//! not CANCELLED), and per-RPC metrics. Health and reflection get an id but
//! are never shed or timed out, so probes answer under load.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::sync::Semaphore;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::http::{self, HeaderValue};
use tower::{Layer, Service};
use tracing::Instrument;

use crate::auth::required_scope;
use crate::error::Error;
use crate::metrics::ServiceMetrics;

/// Metadata key of the request id.
pub const REQUEST_ID: &str = "x-request-id";

/// Settings of the envelope.
pub struct Envelope {
    /// Where call metrics go.
    pub metrics: Arc<ServiceMetrics>,
    /// Calls allowed in flight at once (streams count until their headers).
    pub max_in_flight: usize,
    /// Longest a call may take when the caller sets no shorter deadline.
    pub default_timeout: Duration,
}

/// The layer.
#[derive(Clone)]
pub struct EnvelopeLayer {
    envelope: Arc<Envelope>,
    permits: Arc<Semaphore>,
}

impl EnvelopeLayer {
    /// A layer with these settings.
    pub fn new(envelope: Envelope) -> Self {
        let permits = Arc::new(Semaphore::new(envelope.max_in_flight));
        Self {
            envelope: Arc::new(envelope),
            permits,
        }
    }
}

impl<S> Layer<S> for EnvelopeLayer {
    type Service = EnvelopeService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        EnvelopeService {
            inner,
            envelope: self.envelope.clone(),
            permits: self.permits.clone(),
        }
    }
}

/// The service the layer produces.
#[derive(Clone)]
pub struct EnvelopeService<S> {
    inner: S,
    envelope: Arc<Envelope>,
    permits: Arc<Semaphore>,
}

/// A caller's request id if it is a sane token, else a fresh one.
fn request_id(headers: &http::HeaderMap) -> String {
    let given = headers.get(REQUEST_ID).and_then(|v| v.to_str().ok()).filter(|id| {
        (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    });
    match given {
        Some(id) => id.to_owned(),
        None => {
            let mut bytes = [0u8; 8];
            let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
            bytes.iter().map(|b| format!("{b:02x}")).collect()
        }
    }
}

/// The `grpc-timeout` header (gRPC over HTTP/2: at most 8 digits and a unit).
pub fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let text = headers.get("grpc-timeout")?.to_str().ok()?;
    let digits = text.get(..text.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let value: u64 = digits.parse().ok()?;
    Some(match &text[digits.len()..] {
        "H" => Duration::from_secs(value * 3600),
        "M" => Duration::from_secs(value * 60),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

/// The gRPC status code of a response: from trailers-only headers, else OK
/// (an error a stream reports later in its trailers is not seen here).
fn status_code(response: &http::Response<Body>) -> i32 {
    response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

impl<S, B> Service<http::Request<B>> for EnvelopeService<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let envelope = self.envelope.clone();
        let path = request.uri().path().to_owned();
        let id = request_id(request.headers());
        if let Ok(value) = HeaderValue::from_str(&id) {
            request.headers_mut().insert(REQUEST_ID, value);
        }
        let guarded = required_scope(&path).is_some();
        let permit = if guarded {
            Some(self.permits.clone().try_acquire_owned())
        } else {
            None
        };
        let deadline =
            grpc_timeout(request.headers()).map_or(envelope.default_timeout, |t| t.min(envelope.default_timeout));
        let trace_id = request
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(crate::trace::trace_id_of);
        let span = tracing::info_span!(
            "rpc",
            method = %path,
            request_id = %id,
            trace_id = tracing::field::Empty
        );
        if let Some(trace_id) = &trace_id {
            span.record("trace_id", trace_id.as_str());
            crate::telemetry::link_to_caller(&span, request.headers());
        }
        Box::pin(crate::trace::with_trace_id(
            trace_id,
            async move {
                let started = Instant::now();
                let mut response = match permit {
                    Some(Err(_)) => Status::from(Error::Overloaded).into_http(),
                    Some(Ok(_permit)) => match tokio::time::timeout(deadline, inner.call(request)).await {
                        Ok(result) => result?,
                        Err(_) => Status::from(Error::DeadlineExceeded).into_http(),
                    },
                    None => inner.call(request).await?,
                };
                if let Ok(value) = HeaderValue::from_str(&id) {
                    response.headers_mut().insert(REQUEST_ID, value);
                }
                let code = status_code(&response);
                let elapsed = started.elapsed();
                if guarded {
                    envelope.metrics.record(&path, code, elapsed);
                    if code == 0 {
                        tracing::debug!(code, elapsed_ms = elapsed.as_millis() as u64, "call done");
                    } else {
                        tracing::info!(code, elapsed_ms = elapsed.as_millis() as u64, "call failed");
                    }
                }
                Ok(response)
            }
            .instrument(span),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn grpc_timeouts_parse_per_spec() {
        assert_eq!(
            grpc_timeout(&headers(&[("grpc-timeout", "250m")])),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            grpc_timeout(&headers(&[("grpc-timeout", "3S")])),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            grpc_timeout(&headers(&[("grpc-timeout", "1H")])),
            Some(Duration::from_secs(3600))
        );
        for bad in ["", "m", "123456789m", "10x", "-1S", "1.5S"] {
            assert_eq!(grpc_timeout(&headers(&[("grpc-timeout", bad)])), None, "{bad}");
        }
    }

    /// An inner service that answers OK after `delay`.
    fn slow(
        delay: Duration,
    ) -> impl Service<
        http::Request<()>,
        Response = http::Response<Body>,
        Error = std::convert::Infallible,
        Future = BoxFuture<'static, Result<http::Response<Body>, std::convert::Infallible>>,
    > + Clone
    + Send
    + 'static {
        tower::service_fn(
            move |_: http::Request<()>| -> BoxFuture<'static, Result<http::Response<Body>, std::convert::Infallible>> {
                Box::pin(async move {
                    tokio::time::sleep(delay).await;
                    Ok(http::Response::new(Body::empty()))
                })
            },
        )
    }

    fn envelope(max_in_flight: usize, timeout: Duration) -> EnvelopeLayer {
        EnvelopeLayer::new(Envelope {
            metrics: Arc::new(ServiceMetrics::default()),
            max_in_flight,
            default_timeout: timeout,
        })
    }

    fn rpc(timeout: Option<&str>) -> http::Request<()> {
        let mut request = http::Request::builder()
            .uri("/aether.control.v1.AffinityService/GetAffinity")
            .body(())
            .unwrap();
        if let Some(value) = timeout {
            request
                .headers_mut()
                .insert("grpc-timeout", HeaderValue::from_str(value).unwrap());
        }
        request
    }

    fn code(response: &http::Response<Body>) -> i32 {
        status_code(response)
    }

    #[tokio::test]
    async fn deadlines_answer_deadline_exceeded_and_honour_grpc_timeout() {
        let layer = envelope(8, Duration::from_secs(5));
        let mut service = layer.layer(slow(Duration::from_millis(300)));
        let response = service.call(rpc(Some("20m"))).await.unwrap();
        assert_eq!(code(&response), tonic::Code::DeadlineExceeded as i32);
        assert!(response.headers().contains_key(REQUEST_ID));
        let mut service = envelope(8, Duration::from_millis(20)).layer(slow(Duration::from_millis(300)));
        assert_eq!(
            code(&service.call(rpc(Some("10S"))).await.unwrap()),
            tonic::Code::DeadlineExceeded as i32,
            "ours caps theirs"
        );
        let mut service = envelope(8, Duration::from_secs(5)).layer(slow(Duration::from_millis(1)));
        assert_eq!(code(&service.call(rpc(None)).await.unwrap()), 0);
    }

    #[tokio::test]
    async fn calls_past_the_limit_are_shed_at_once() {
        let layer = envelope(1, Duration::from_secs(5));
        let mut first = layer.layer(slow(Duration::from_millis(300)));
        let mut second = layer.layer(slow(Duration::from_millis(1)));
        let running = tokio::spawn(first.call(rpc(None)));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = Instant::now();
        let shed = second.call(rpc(None)).await.unwrap();
        assert_eq!(code(&shed), tonic::Code::ResourceExhausted as i32);
        assert!(started.elapsed() < Duration::from_millis(100), "no queueing");
        assert_eq!(code(&running.await.unwrap().unwrap()), 0);
        // Probes are never shed.
        let mut health = layer.layer(slow(Duration::from_millis(1)));
        let probe = http::Request::builder()
            .uri("/grpc.health.v1.Health/Check")
            .body(())
            .unwrap();
        let blocker = tokio::spawn(first.call(rpc(None)));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(code(&health.call(probe).await.unwrap()), 0);
        blocker.await.unwrap().unwrap();
    }

    #[test]
    fn request_ids_are_kept_when_sane_and_made_otherwise() {
        assert_eq!(request_id(&headers(&[(REQUEST_ID, "abc-123_x.y")])), "abc-123_x.y");
        let made = request_id(&headers(&[(REQUEST_ID, "bad id with spaces")]));
        assert_eq!(made.len(), 16);
        assert_ne!(request_id(&http::HeaderMap::new()), request_id(&http::HeaderMap::new()));
    }
}
