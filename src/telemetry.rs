//! Logs and, optionally, traces: the log subscriber (text or JSON) and, when
//! an OTLP endpoint is configured, an OpenTelemetry layer exporting every
//! call's span over OTLP/gRPC, parented to the caller's `traceparent`.
//! Without an endpoint nothing is exported and nothing else changes.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tonic::codegen::http;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;

/// The trace exporter, to flush at exit.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Installs the global subscriber: logs to stderr in `format`, and spans
    /// to `otlp_endpoint` (e.g. `http://collector:4317`) when given.
    pub fn init(format: LogFormat, otlp_endpoint: Option<&str>) -> Result<Self, String> {
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
        let provider = otlp_endpoint
            .map(|endpoint| {
                let exporter = opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(endpoint)
                    .build()
                    .map_err(|e| format!("OTLP exporter: {e}"))?;
                Ok::<_, String>(
                    SdkTracerProvider::builder()
                        .with_batch_exporter(exporter)
                        .with_resource(Resource::builder().with_service_name("aether-control").build())
                        .build(),
                )
            })
            .transpose()?;
        let traces = provider
            .as_ref()
            .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("aether-control")));
        let registry = tracing_subscriber::registry().with(filter).with(traces);
        let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
        let installed = match format {
            LogFormat::Json => registry.with(logs.json()).try_init(),
            LogFormat::Text => registry
                .with(logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())))
                .try_init(),
        };
        installed.map_err(|e| e.to_string())?;
        EXPORTING.store(provider.is_some(), Ordering::Relaxed);
        Ok(Self { provider })
    }

    /// Exports the spans still buffered.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(error) = provider.shutdown()
        {
            eprintln!("aether-control: trace export did not finish: {error}");
        }
    }
}

/// Headers as an OpenTelemetry extractor.
struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Whether spans are exported (an OTLP endpoint was configured).
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Makes `span` a child of the caller's W3C trace context. Only when spans
/// are exported: otherwise nothing would read the link, and the headers are
/// not parsed a second time on every call.
pub fn link_to_caller(span: &tracing::Span, headers: &http::HeaderMap) {
    if !EXPORTING.load(Ordering::Relaxed) {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&Headers(headers));
    // Only fails when the span is disabled; then there is nothing to link.
    let _ = span.set_parent(parent);
}
