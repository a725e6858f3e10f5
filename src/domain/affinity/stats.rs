//! Affinity counters: counted in-process without a store round trip, added
//! to the shared store (Redis hash, or memory) in batches by a background
//! flush, so every instance sees the same totals.

use std::collections::HashMap;
use std::sync::Mutex;

use super::events::{InvalidationReason, decision};
use super::usage::{UpstreamOutcome, UsageCounters, UsageGroup, UsageTotals};

/// Counter names, shared by the store and the metrics.
pub mod names {
    /// Entries created.
    pub const TOTAL_AFFINITIES: &str = "total_affinities";
    /// GetAffinity found a live entry.
    pub const CACHE_HITS: &str = "cache_hits";
    /// GetAffinity found none.
    pub const CACHE_MISSES: &str = "cache_misses";
    /// Switches that changed the provider.
    pub const PROVIDER_SWITCHES: &str = "provider_switches";
    /// Switches of any kind (Aether's key_switches).
    pub const KEY_SWITCHES: &str = "key_switches";
    /// Entries removed, all reasons.
    pub const INVALIDATIONS: &str = "invalidations";
    /// Prefix of the per-reason invalidation counters.
    pub const INVALIDATIONS_BY_REASON: &str = "invalidations:";
    /// Prefix of the per-reason counters of refused SetAffinity calls.
    pub const REFUSALS_BY_REASON: &str = "refusals:";
}

/// The reasons a SetAffinity may be refused for.
pub const REFUSAL_REASONS: [&str; 2] = [decision::UPSTREAM_FAILURE, decision::FLAPPING_GUARD];

/// Deltas not yet added to the shared store.
#[derive(Default)]
pub struct CounterBuffer {
    pending: Mutex<HashMap<String, i64>>,
}

impl CounterBuffer {
    /// Adds `delta` to `name`.
    pub fn add(&self, name: &str, delta: i64) {
        if let Ok(mut pending) = self.pending.lock() {
            *pending.entry(name.to_owned()).or_default() += delta;
        }
    }

    /// Counts one invalidation with its reason.
    pub fn invalidated(&self, reason: InvalidationReason, count: i64) {
        self.add(names::INVALIDATIONS, count);
        self.add(&format!("{}{}", names::INVALIDATIONS_BY_REASON, reason.as_str()), count);
    }

    /// Takes every pending delta (for a flush).
    pub fn take(&self) -> Vec<(String, i64)> {
        self.pending
            .lock()
            .map(|mut pending| pending.drain().collect())
            .unwrap_or_default()
    }

    /// Puts deltas back after a failed flush, so nothing is lost.
    pub fn restore(&self, deltas: Vec<(String, i64)>) {
        for (name, delta) in deltas {
            self.add(&name, delta);
        }
    }

    /// Pending deltas without taking them (for reads between flushes).
    pub fn snapshot(&self) -> HashMap<String, i64> {
        self.pending.lock().map(|pending| pending.clone()).unwrap_or_default()
    }
}

/// The affinity statistics, derived from the counters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AffinityStats {
    /// "redis" or "memory".
    pub storage_type: &'static str,
    /// Live entries.
    pub active_affinities: u64,
    /// Entries created.
    pub total_affinities: i64,
    /// Hits.
    pub cache_hits: i64,
    /// Misses.
    pub cache_misses: i64,
    /// Provider switches.
    pub provider_switches: i64,
    /// All switches.
    pub key_switches: i64,
    /// Invalidations, all reasons.
    pub invalidations: i64,
    /// Invalidations by reason label.
    pub invalidations_by_reason: HashMap<String, i64>,
    /// Refused writes by reason.
    pub refusals_by_reason: HashMap<String, i64>,
    /// Upstream usage reported back.
    pub upstream: UsageTotals,
    /// Entries the memory store evicted at its cap.
    pub evictions: u64,
    /// Events this instance dropped because its publish queue was full.
    pub events_dropped: u64,
}

impl AffinityStats {
    /// Builds the stats from stored counters plus this instance's unflushed deltas.
    pub fn from_counters(
        storage_type: &'static str,
        active_affinities: u64,
        stored: &HashMap<String, i64>,
        pending: &HashMap<String, i64>,
    ) -> Self {
        let get = |name: &str| stored.get(name).copied().unwrap_or(0) + pending.get(name).copied().unwrap_or(0);
        let invalidations_by_reason = InvalidationReason::ALL
            .iter()
            .map(|reason| {
                let label = reason.as_str();
                (
                    label.to_owned(),
                    get(&format!("{}{label}", names::INVALIDATIONS_BY_REASON)),
                )
            })
            .collect();
        Self {
            storage_type,
            active_affinities,
            total_affinities: get(names::TOTAL_AFFINITIES),
            cache_hits: get(names::CACHE_HITS),
            cache_misses: get(names::CACHE_MISSES),
            provider_switches: get(names::PROVIDER_SWITCHES),
            key_switches: get(names::KEY_SWITCHES),
            invalidations: get(names::INVALIDATIONS),
            invalidations_by_reason,
            refusals_by_reason: REFUSAL_REASONS
                .iter()
                .map(|reason| {
                    (
                        (*reason).to_owned(),
                        get(&format!("{}{reason}", names::REFUSALS_BY_REASON)),
                    )
                })
                .collect(),
            ..Default::default()
        }
    }

    /// hits / (hits + misses), 0 when both are 0.
    pub fn hit_rate(&self) -> f64 {
        let total = self.cache_hits + self.cache_misses;
        if total == 0 {
            0.0
        } else {
            self.cache_hits as f64 / total as f64
        }
    }
}

/// The Prometheus text exposition of the stats: our counters (monotonic,
/// `_total`, shared by every instance) and gauges, then the seed's
/// `cache_affinity_*` gauges under Aether's names so its dashboards keep
/// working. Aether's `cache_scheduler_*` metrics live in Aether's process and
/// are not ours to report.
pub fn render_prometheus(stats: &AffinityStats) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(2048);
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let singles: [(&str, &str, &str, f64); 6] = [
        (
            "aether_control_affinity_active",
            "gauge",
            "Live cache affinities.",
            stats.active_affinities as f64,
        ),
        (
            "aether_control_affinity_created_total",
            "counter",
            "Affinities created.",
            stats.total_affinities as f64,
        ),
        (
            "aether_control_affinity_hits_total",
            "counter",
            "GetAffinity calls that found a live affinity.",
            stats.cache_hits as f64,
        ),
        (
            "aether_control_affinity_misses_total",
            "counter",
            "GetAffinity calls that found none.",
            stats.cache_misses as f64,
        ),
        (
            "aether_control_affinity_provider_switches_total",
            "counter",
            "Switches to another provider.",
            stats.provider_switches as f64,
        ),
        (
            "aether_control_affinity_switches_total",
            "counter",
            "Switches to another endpoint or provider key.",
            stats.key_switches as f64,
        ),
    ];
    for (name, kind, help, value) in singles {
        family(name, kind, help, &[(String::new(), value)]);
    }
    let mut reasons: Vec<(String, f64)> = stats
        .invalidations_by_reason
        .iter()
        .map(|(reason, count)| (format!("{{reason=\"{reason}\"}}"), *count as f64))
        .collect();
    reasons.sort_by(|a, b| a.0.cmp(&b.0));
    family(
        "aether_control_affinity_invalidations_total",
        "counter",
        "Affinities removed, by reason.",
        &reasons,
    );
    let labelled = |label: &str, counts: &HashMap<String, i64>| {
        let mut samples: Vec<(String, f64)> = counts
            .iter()
            .map(|(value, count)| (format!("{{{label}=\"{}\"}}", label_value(value)), *count as f64))
            .collect();
        samples.sort_by(|a, b| a.0.cmp(&b.0));
        samples
    };
    family(
        "aether_control_affinity_refusals_total",
        "counter",
        "SetAffinity calls that wrote nothing, by reason.",
        &labelled("reason", &stats.refusals_by_reason),
    );
    family(
        "aether_control_affinity_evictions_total",
        "counter",
        "Entries the in-memory store evicted at its cap.",
        &[(String::new(), stats.evictions as f64)],
    );
    family(
        "aether_control_affinity_events_dropped_total",
        "counter",
        "Events this instance dropped because its publish queue was full.",
        &[(String::new(), stats.events_dropped as f64)],
    );
    render_upstream(&mut family, &stats.upstream);
    let storage = format!("{{storage=\"{}\"}}", stats.storage_type);
    family(
        "aether_control_affinity_store_info",
        "gauge",
        "Where affinities are stored.",
        &[(storage, 1.0)],
    );

    let aether_gauges: [(&str, &str, f64); 7] = [
        (
            "cache_affinity_total",
            "Affinities created (Aether name).",
            stats.total_affinities as f64,
        ),
        (
            "cache_affinity_hits",
            "Affinity hits (Aether name).",
            stats.cache_hits as f64,
        ),
        (
            "cache_affinity_misses",
            "Affinity misses (Aether name).",
            stats.cache_misses as f64,
        ),
        (
            "cache_affinity_hit_rate",
            "Affinity hit rate (Aether name).",
            stats.hit_rate(),
        ),
        (
            "cache_affinity_invalidations",
            "Affinity invalidations (Aether name).",
            stats.invalidations as f64,
        ),
        (
            "cache_affinity_provider_switches",
            "Provider switches (Aether name).",
            stats.provider_switches as f64,
        ),
        (
            "cache_affinity_key_switches",
            "Key switches (Aether name).",
            stats.key_switches as f64,
        ),
    ];
    for (name, help, value) in aether_gauges {
        family(name, "gauge", help, &[(String::new(), value)]);
    }
    out
}

/// A Prometheus label value: `\`, `"` and line feeds escaped.
fn label_value(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The upstream usage families: outcomes and tokens overall and per
/// provider and global model (per provider key only in GetAffinityStats:
/// keys are too many for a metrics label), and the derived cache-read ratio.
fn render_upstream(family: &mut impl FnMut(&str, &str, &str, &[(String, f64)]), usage: &UsageTotals) {
    let scopes = |group: Option<UsageGroup>| -> Vec<(String, UsageCounters)> {
        match group {
            None => vec![(String::new(), usage.total)],
            Some(group) => usage
                .group(group)
                .map(|(id, counters)| {
                    let label = match group {
                        UsageGroup::Model => "global_model_id",
                        _ => "provider_id",
                    };
                    (format!("{label}=\"{}\"", label_value(id)), *counters)
                })
                .collect(),
        }
    };
    let join = |scope: &str, extra: &str| match (scope.is_empty(), extra.is_empty()) {
        (true, true) => String::new(),
        (true, false) => format!("{{{extra}}}"),
        (false, true) => format!("{{{scope}}}"),
        (false, false) => format!("{{{scope},{extra}}}"),
    };
    for (suffix, group) in [
        ("", None),
        ("_by_provider", Some(UsageGroup::Provider)),
        ("_by_model", Some(UsageGroup::Model)),
    ] {
        let scoped = scopes(group);
        let mut requests = Vec::new();
        let mut tokens = Vec::new();
        let mut ratios = Vec::new();
        for (scope, counters) in &scoped {
            for outcome in UpstreamOutcome::ALL {
                let count = counters.outcome_count(outcome);
                requests.push((join(scope, &format!("outcome=\"{}\"", outcome.as_str())), count as f64));
            }
            for (kind, count) in [
                ("input", counters.input_tokens),
                ("cache_read", counters.cache_read_tokens),
                ("cache_creation", counters.cache_creation_tokens),
            ] {
                tokens.push((join(scope, &format!("kind=\"{kind}\"")), count as f64));
            }
            ratios.push((join(scope, ""), counters.cache_read_ratio()));
        }
        family(
            &format!("aether_control_upstream_requests{suffix}_total"),
            "counter",
            "Upstream requests reported by RecordUpstreamUsage, by outcome.",
            &requests,
        );
        family(
            &format!("aether_control_upstream_tokens{suffix}_total"),
            "counter",
            "Prompt tokens reported by RecordUpstreamUsage: input (cache reads and writes included), cache_read, cache_creation.",
            &tokens,
        );
        family(
            &format!("aether_control_upstream_cache_read_ratio{suffix}"),
            "gauge",
            "Share of prompt tokens the upstream's cache served (cache_read / input).",
            &ratios,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_typed_families() {
        let stats = AffinityStats {
            storage_type: "redis",
            cache_hits: 3,
            ..Default::default()
        };
        let text = render_prometheus(&stats);
        assert!(
            text.contains("# TYPE aether_control_affinity_hits_total counter\naether_control_affinity_hits_total 3\n")
        );
        assert!(text.contains("# TYPE cache_affinity_hits gauge\ncache_affinity_hits 3\n"));
        assert!(text.contains("aether_control_affinity_store_info{storage=\"redis\"} 1"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap_or_default();
            assert!(value.parse::<f64>().is_ok(), "sample line {line:?}");
        }
    }

    #[test]
    fn pending_deltas_are_added_to_stored_counters() {
        let buffer = CounterBuffer::default();
        buffer.add(names::CACHE_HITS, 3);
        buffer.add(names::CACHE_MISSES, 1);
        buffer.invalidated(InvalidationReason::Admin, 2);
        let stored = HashMap::from([(names::CACHE_HITS.to_owned(), 5)]);
        let stats = AffinityStats::from_counters("memory", 0, &stored, &buffer.snapshot());
        assert_eq!((stats.cache_hits, stats.cache_misses, stats.invalidations), (8, 1, 2));
        assert_eq!(stats.invalidations_by_reason["admin"], 2);
        assert!((stats.hit_rate() - 8.0 / 9.0).abs() < 1e-9);
        let taken = buffer.take();
        assert_eq!(taken.len(), 4);
        assert!(buffer.snapshot().is_empty());
        buffer.restore(taken);
        assert_eq!(buffer.snapshot()[names::CACHE_HITS], 3);
    }
}
