//! Health: probes every store on an interval and publishes the result
//! through the standard gRPC health service, overall ("") and per service.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::proto::{affinity_service_server, model_mapping_service_server, user_service_server};
use crate::store::HealthProbe;

/// Which stores each service needs. "" (overall) needs all of them.
pub struct ServiceDependencies {
    /// gRPC service name.
    pub service: &'static str,
    /// Indexes into the probe list.
    pub needs: Vec<usize>,
}

/// The probes and what depends on them.
pub struct HealthPlan {
    /// Stores to probe.
    pub probes: Vec<Arc<dyn HealthProbe>>,
    /// Per-service dependencies.
    pub services: Vec<ServiceDependencies>,
}

impl HealthPlan {
    /// Affinities need the affinity store (when it is Redis), users and
    /// models need the database.
    pub fn new(database: Arc<dyn HealthProbe>, redis: Option<Arc<dyn HealthProbe>>) -> Self {
        let mut probes = vec![database];
        let redis_index = redis.map(|r| {
            probes.push(r);
            1
        });
        let services = vec![
            ServiceDependencies {
                service: affinity_service_server::SERVICE_NAME,
                needs: redis_index.into_iter().collect(),
            },
            ServiceDependencies {
                service: user_service_server::SERVICE_NAME,
                needs: vec![0],
            },
            ServiceDependencies {
                service: model_mapping_service_server::SERVICE_NAME,
                needs: vec![0],
            },
        ];
        Self { probes, services }
    }

    /// Every service name the reporter knows, overall first.
    pub fn service_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        std::iter::once("").chain(self.services.iter().map(|s| s.service))
    }
}

/// Probes until `stop` turns true, then marks everything NOT_SERVING (the
/// drain has begun).
pub async fn monitor(reporter: HealthReporter, plan: HealthPlan, interval: Duration, mut stop: watch::Receiver<bool>) {
    let mut healthy: Vec<Option<bool>> = vec![None; plan.probes.len()];
    loop {
        for (index, probe) in plan.probes.iter().enumerate() {
            let result = tokio::time::timeout(interval.max(Duration::from_millis(200)), probe.probe()).await;
            let ok = matches!(result, Ok(Ok(())));
            if healthy[index] != Some(ok) {
                match &result {
                    Ok(Ok(())) => tracing::info!(store = probe.name(), "store is reachable"),
                    Ok(Err(error)) => tracing::warn!(store = probe.name(), %error, "store is unreachable"),
                    Err(_) => tracing::warn!(store = probe.name(), "store health probe timed out"),
                }
                healthy[index] = Some(ok);
            }
        }
        let all = healthy.iter().all(|h| *h == Some(true));
        reporter.set_service_status("", status(all)).await;
        for service in &plan.services {
            let ok = service.needs.iter().all(|&i| healthy[i] == Some(true));
            reporter.set_service_status(service.service, status(ok)).await;
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|stopped| *stopped) => break,
        }
    }
    for name in plan.service_names() {
        reporter.set_service_status(name, ServingStatus::NotServing).await;
    }
}

fn status(ok: bool) -> ServingStatus {
    if ok {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}
