//! Prometheus metrics, prefix `cedille_gateway_`. Labels are bounded by configuration
//! (route and parent identity, status class), never by traffic (no paths, no hosts).

use std::{sync::atomic::AtomicI64, time::Duration};

use http::StatusCode;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use crate::ir::RouteId;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    parent_namespace: String,
    parent_name: String,
    route_namespace: String,
    route_name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    parent_namespace: String,
    parent_name: String,
    route_namespace: String,
    route_name: String,
    status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusWriteLabels {
    kind: &'static str,
    result: &'static str,
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// One route's request counters (by status class) and duration histogram.
pub struct RouteMetrics {
    requests: [Counter; 5],
    duration: Histogram,
}

impl RouteMetrics {
    pub fn record(&self, status: StatusCode, took: Duration) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.requests[class].inc();
        self.duration.observe(took.as_secs_f64());
    }
}

fn duration_histogram() -> Histogram {
    // 0.25 ms to about 16 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 17))
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Family<RouteLabels, Histogram, fn() -> Histogram>,
    active_connections: Gauge,
    connections_rejected: Counter,
    tls_handshake_failures: Counter,
    config_reloads: Family<ResultLabels, Counter>,
    invalid_manifests: Gauge,
    bound_sockets: Gauge,
    status_writes: Family<StatusWriteLabels, Counter>,
    leader: Gauge,
}

/// Decrements the active connection gauge when dropped.
pub struct ActiveConnection(Gauge<i64, AtomicI64>);

impl Drop for ActiveConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("cedille_gateway");
        let requests = Family::<RequestLabels, Counter>::default();
        let durations = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            duration_histogram as fn() -> Histogram,
        );
        let active_connections = Gauge::default();
        let connections_rejected = Counter::default();
        let tls_handshake_failures = Counter::default();
        let config_reloads = Family::<ResultLabels, Counter>::default();
        let invalid_manifests = Gauge::default();
        let bound_sockets = Gauge::default();
        let status_writes = Family::<StatusWriteLabels, Counter>::default();
        let leader = Gauge::default();
        registry.register(
            "requests",
            "HTTP requests that matched a route, by route and status class",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request headers to response headers, by route",
            durations.clone(),
        );
        registry.register(
            "active_connections",
            "Downstream connections open now",
            active_connections.clone(),
        );
        registry.register(
            "connections_rejected",
            "Downstream connections closed at once because the connection limit was reached",
            connections_rejected.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "Downstream TLS handshakes that failed or timed out",
            tls_handshake_failures.clone(),
        );
        registry.register("config_reloads", "Configuration reloads, by result (success: applied; error: some manifests were rejected)", config_reloads.clone());
        registry.register(
            "invalid_manifests",
            "Manifest documents currently rejected (see /status invalidManifests)",
            invalid_manifests.clone(),
        );
        registry.register("bound_sockets", "Listening sockets", bound_sockets.clone());
        registry.register(
            "status_writes",
            "Status writes to the Kubernetes API server, by kind and result (written, skipped, failed)",
            status_writes.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease and writes status (Kubernetes mode)",
            leader.clone(),
        );
        Self {
            registry,
            requests,
            durations,
            active_connections,
            connections_rejected,
            tls_handshake_failures,
            config_reloads,
            invalid_manifests,
            bound_sockets,
            status_writes,
            leader,
        }
    }

    /// The handles one route's requests are counted with; the same route identity always
    /// gets the same underlying series.
    pub fn route(&self, route: &RouteId) -> RouteMetrics {
        let requests = STATUS_CLASSES.map(|status_class| {
            self.requests
                .get_or_create(&RequestLabels {
                    parent_namespace: route.parent_namespace.clone(),
                    parent_name: route.parent_name.clone(),
                    route_namespace: route.namespace.clone(),
                    route_name: route.name.clone(),
                    status_class,
                })
                .clone()
        });
        let duration = self
            .durations
            .get_or_create(&RouteLabels {
                parent_namespace: route.parent_namespace.clone(),
                parent_name: route.parent_name.clone(),
                route_namespace: route.namespace.clone(),
                route_name: route.name.clone(),
            })
            .clone();
        RouteMetrics { requests, duration }
    }

    pub fn connection_opened(&self) -> ActiveConnection {
        self.active_connections.inc();
        ActiveConnection(self.active_connections.clone())
    }

    pub fn connection_rejected(&self) {
        self.connections_rejected.inc();
    }

    pub fn tls_handshake_failed(&self) {
        self.tls_handshake_failures.inc();
    }

    pub fn reloaded(&self, invalid_manifests: usize) {
        let result = if invalid_manifests == 0 {
            "success"
        } else {
            "error"
        };
        self.config_reloads
            .get_or_create(&ResultLabels { result })
            .inc();
        self.invalid_manifests.set(invalid_manifests as i64);
    }

    pub fn status_write(&self, kind: &'static str, result: &'static str) {
        self.status_writes
            .get_or_create(&StatusWriteLabels { kind, result })
            .inc();
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    pub fn set_bound_sockets(&self, n: usize) {
        self.bound_sockets.set(n as i64);
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
