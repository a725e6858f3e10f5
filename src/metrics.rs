//! Per-RPC metrics and the service's own counters, rendered in the
//! Prometheus text format with OpenTelemetry-style names
//! (`rpc_server_duration_seconds`, `rpc.grpc.status_code` as a label).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
struct RpcTable {
    /// Calls by (service, method, code).
    calls: BTreeMap<(String, String, i32), u64>,
    /// Latency by (service, method).
    latency: BTreeMap<(String, String), Histogram>,
}

/// A counter fed from elsewhere (cache fallbacks, audit failures).
pub type CounterSource = Box<dyn Fn() -> u64 + Send + Sync>;

/// Every metric the service exports besides the affinity statistics.
#[derive(Default)]
pub struct ServiceMetrics {
    rpcs: Mutex<RpcTable>,
    counters: Mutex<Vec<(&'static str, &'static str, CounterSource)>>,
}

/// `/pkg.Service/Method` split into (service, method).
fn split_path(path: &str) -> (String, String) {
    let trimmed = path.trim_start_matches('/');
    match trimmed.split_once('/') {
        Some((service, method)) => (service.to_owned(), method.to_owned()),
        None => (trimmed.to_owned(), String::new()),
    }
}

impl ServiceMetrics {
    /// Records one finished call.
    pub fn record(&self, path: &str, code: i32, elapsed: Duration) {
        let (service, method) = split_path(path);
        let Ok(mut table) = self.rpcs.lock() else { return };
        *table.calls.entry((service.clone(), method.clone(), code)).or_default() += 1;
        let histogram = table.latency.entry((service, method)).or_default();
        let seconds = elapsed.as_secs_f64();
        for (bucket, bound) in histogram.counts.iter_mut().zip(BUCKETS) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
        histogram.count += 1;
        histogram.sum += seconds;
    }

    /// Registers a monotonic counter read at export time.
    pub fn register_counter(&self, name: &'static str, help: &'static str, source: CounterSource) {
        if let Ok(mut counters) = self.counters.lock() {
            counters.push((name, help, source));
        }
    }

    /// The Prometheus text of every metric here.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Ok(counters) = self.counters.lock() {
            for (name, help, source) in counters.iter() {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", source());
            }
        }
        let Ok(table) = self.rpcs.lock() else { return out };
        let _ = writeln!(
            out,
            "# HELP rpc_server_requests_total gRPC calls by method and status code."
        );
        let _ = writeln!(out, "# TYPE rpc_server_requests_total counter");
        for ((service, method, code), count) in &table.calls {
            let _ = writeln!(
                out,
                "rpc_server_requests_total{{rpc_system=\"grpc\",rpc_service=\"{service}\",rpc_method=\"{method}\",rpc_grpc_status_code=\"{code}\"}} {count}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP rpc_server_duration_seconds gRPC call latency until the response headers."
        );
        let _ = writeln!(out, "# TYPE rpc_server_duration_seconds histogram");
        for ((service, method), histogram) in &table.latency {
            let labels = format!("rpc_system=\"grpc\",rpc_service=\"{service}\",rpc_method=\"{method}\"");
            for (count, bound) in histogram.counts.iter().zip(BUCKETS) {
                let _ = writeln!(
                    out,
                    "rpc_server_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "rpc_server_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                histogram.count
            );
            let _ = writeln!(out, "rpc_server_duration_seconds_sum{{{labels}}} {}", histogram.sum);
            let _ = writeln!(out, "rpc_server_duration_seconds_count{{{labels}}} {}", histogram.count);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let metrics = ServiceMetrics::default();
        metrics.record(
            "/aether.control.v1.AffinityService/GetAffinity",
            0,
            Duration::from_millis(3),
        );
        metrics.record(
            "/aether.control.v1.AffinityService/GetAffinity",
            5,
            Duration::from_millis(30),
        );
        metrics.register_counter("aether_control_test_total", "A test counter.", Box::new(|| 7));
        let text = metrics.render();
        let labels = "rpc_system=\"grpc\",rpc_service=\"aether.control.v1.AffinityService\",rpc_method=\"GetAffinity\"";
        assert!(text.contains(&format!(
            "rpc_server_requests_total{{{labels},rpc_grpc_status_code=\"5\"}} 1"
        )));
        assert!(text.contains(&format!(
            "rpc_server_duration_seconds_bucket{{{labels},le=\"0.005\"}} 1"
        )));
        assert!(text.contains(&format!("rpc_server_duration_seconds_bucket{{{labels},le=\"0.05\"}} 2")));
        assert!(text.contains(&format!("rpc_server_duration_seconds_count{{{labels}}} 2")));
        assert!(text.contains("aether_control_test_total 7"));
    }
}
