//! Prometheus metrics, prefix `cedille_gateway_`. Labels are bounded by configuration
//! (route and parent identity, status class), never by traffic (no paths, no hosts).

use std::{
    sync::{Arc, atomic::AtomicI64},
    time::Duration,
};

use http::StatusCode;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        MetricType,
        counter::Counter,
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use crate::ir::{RouteId, Target};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    parent_namespace: Arc<str>,
    parent_name: Arc<str>,
    route_namespace: Arc<str>,
    route_name: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    parent_namespace: Arc<str>,
    parent_name: Arc<str>,
    route_namespace: Arc<str>,
    route_name: Arc<str>,
    protocol: &'static str,
    status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamErrorLabels {
    parent_namespace: Arc<str>,
    parent_name: Arc<str>,
    route_namespace: Arc<str>,
    route_name: Arc<str>,
    error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UnmatchedLabels {
    protocol: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    origin: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtocolLabels {
    protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct BackendLabels {
    /// The target's own strings: thousands of backends, one copy of each name.
    namespace: Arc<str>,
    service: Arc<str>,
    port: u16,
}

/// `backend_endpoints`, read from the published snapshot when scraped. A gauge per
/// backend kept up to date on every reload cost a label set, a gauge and a map entry per
/// Service port (0.5 MB with 3,000), and time on the propagation path (collecting the
/// targets of 3,000 routes took a tenth of a change's CPU, `perf record`); a scrape every
/// few seconds walks the snapshot instead.
#[derive(Default)]
struct BackendEndpoints {
    /// What the last snapshot reaches.
    targets: std::sync::Mutex<Option<Arc<dyn Targets>>>,
}

impl std::fmt::Debug for BackendEndpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BackendEndpoints")
    }
}

/// The backends a published configuration uses, as the backend-endpoints gauge reads
/// them (a target may come more than once).
pub trait Targets: Send + Sync {
    fn each(&self, f: &mut dyn FnMut(&Target));
}

impl Targets for crate::ir::Snapshot {
    fn each(&self, f: &mut dyn FnMut(&Target)) {
        self.targets().for_each(|t| f(t));
    }
}

/// A list of targets, as the tests publish them.
#[cfg(test)]
impl Targets for Vec<Arc<Target>> {
    fn each(&self, f: &mut dyn FnMut(&Target)) {
        self.iter().for_each(|t| f(t));
    }
}

impl Collector for BackendEndpoints {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let targets = self
            .targets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut series: Vec<(BackendLabels, usize)> = Vec::new();
        if let Some(targets) = targets {
            targets.each(&mut |t| {
                let labels = BackendLabels {
                    namespace: t.namespace.clone(),
                    service: t.service.clone(),
                    port: t.port,
                };
                series.push((labels, t.endpoints.len()));
            });
        }
        // One series per Service port (several routes, or Gateways with their own
        // client certificate, make targets of one port): the largest count, which is the
        // newest when a reload and a scrape cross.
        series.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        series.dedup_by(|later, first| later.0 == first.0);
        let mut family = encoder.encode_descriptor(
            "backend_endpoints",
            "Ready endpoints of each backend Service port that a route uses",
            None,
            MetricType::Gauge,
        )?;
        for (labels, n) in &series {
            ConstGauge::new(*n as i64).encode(family.encode_family(labels)?)?;
        }
        Ok(())
    }
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

/// The downstream protocols, as the `protocol` label writes them.
pub const PROTOCOLS: [&str; 3] = ["h1", "h2", "h3"];

/// Index of a request's protocol in [`PROTOCOLS`].
pub fn protocol_index(v: http::Version) -> usize {
    match v {
        http::Version::HTTP_2 => 1,
        http::Version::HTTP_3 => 2,
        _ => 0,
    }
}

/// Why a request to a backend failed, as the `error` label writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamError {
    /// No connection could be made (refused, unreachable).
    Connect = 0,
    /// The backend did not answer within the rule's backend timeout.
    Timeout = 1,
    /// The connection failed after it was made (reset, bad response).
    Reset = 2,
    /// TLS to the backend could not be set up (policy or handshake).
    Tls = 3,
    /// The Service has no ready endpoint.
    NoEndpoint = 4,
}

const UPSTREAM_ERRORS: [&str; 5] = ["connect", "timeout", "reset", "tls", "no_endpoint"];

/// Where an error the gateway answered itself comes from: the `origin` label of
/// `cedille_gateway_errors_total` and the first half of the access log's `error` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The request itself: malformed, unroutable, too large (4xx).
    Client,
    /// The configuration: a rule with no usable backend, an invalid reference (500).
    Configuration,
    /// Reaching the backend: no endpoint, connection refused, TLS to it (503, 502).
    UpstreamConnect,
    /// The backend's answer: reset, malformed (502).
    UpstreamProtocol,
    /// A request or backend timeout (504).
    Timeout,
    /// A fault in the gateway (500).
    Internal,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Client => "client",
            Origin::Configuration => "configuration",
            Origin::UpstreamConnect => "upstream_connect",
            Origin::UpstreamProtocol => "upstream_protocol",
            Origin::Timeout => "timeout",
            Origin::Internal => "internal",
        }
    }
}

/// An error response's classification, carried in the response's extensions from where it
/// is made to where it is counted and logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failure {
    pub origin: Origin,
    /// Short and stable: `no_match`, `connect`, `backend_timeout`, ...
    pub reason: &'static str,
}

impl Failure {
    pub const fn new(origin: Origin, reason: &'static str) -> Self {
        Self { origin, reason }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.origin.as_str(), self.reason)
    }
}

/// Why a request matched no route, as the `reason` label writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unmatched {
    MissingHost,
    NoListener,
    Misdirected,
    NoRouteForHost,
    NoMatch,
    /// HTTP/1 framing refused (duplicate Host, Content-Length with Transfer-Encoding, ...).
    BadFraming,
}

impl Unmatched {
    pub fn as_str(self) -> &'static str {
        match self {
            Unmatched::MissingHost => "missing_host",
            Unmatched::NoListener => "no_listener",
            Unmatched::Misdirected => "misdirected",
            Unmatched::NoRouteForHost => "no_route_for_host",
            Unmatched::NoMatch => "no_match",
            Unmatched::BadFraming => "bad_framing",
        }
    }
}

/// One route's handles: requests by protocol and status class, duration, upstream
/// errors, retries and body bytes, so a request never looks a series up by its labels.
pub struct RouteMetrics {
    requests: [[Counter; 5]; 3],
    duration: Histogram,
    upstream_errors: [Counter; 5],
    pub retries: Counter,
    pub request_bytes: Counter,
    pub response_bytes: Counter,
}

impl RouteMetrics {
    pub fn record(&self, protocol: usize, status: StatusCode, took: Duration) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.requests[protocol.min(2)][class].inc();
        self.duration.observe(took.as_secs_f64());
    }

    pub fn upstream_error(&self, e: UpstreamError) {
        self.upstream_errors[e as usize].inc();
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
    upstream_errors: Family<UpstreamErrorLabels, Counter>,
    retries: Family<RouteLabels, Counter>,
    request_bytes: Family<RouteLabels, Counter>,
    response_bytes: Family<RouteLabels, Counter>,
    unmatched: Family<UnmatchedLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    connections: [Counter; 3],
    tls_handshakes: Counter,
    quic_handshakes: Counter,
    quic_handshake_failures: Counter,
    backend_endpoints: Arc<BackendEndpoints>,
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
        let upstream_errors = Family::<UpstreamErrorLabels, Counter>::default();
        let retries = Family::<RouteLabels, Counter>::default();
        let request_bytes = Family::<RouteLabels, Counter>::default();
        let response_bytes = Family::<RouteLabels, Counter>::default();
        let unmatched = Family::<UnmatchedLabels, Counter>::default();
        let connections_family = Family::<ProtocolLabels, Counter>::default();
        let connections = PROTOCOLS.map(|protocol| {
            connections_family
                .get_or_create(&ProtocolLabels { protocol })
                .clone()
        });
        let tls_handshakes = Counter::default();
        let quic_handshakes = Counter::default();
        let quic_handshake_failures = Counter::default();
        let backend_endpoints = Arc::new(BackendEndpoints::default());
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
        registry.register(
            "upstream_errors",
            "Requests to a backend that failed, by route and error (connect, timeout, reset, tls, no_endpoint)",
            upstream_errors.clone(),
        );
        registry.register(
            "upstream_retries",
            "Backend requests retried under the rule's retry policy, by route",
            retries.clone(),
        );
        registry.register(
            "request_body_bytes",
            "Request body bytes received from clients, by route",
            request_bytes.clone(),
        );
        registry.register(
            "response_body_bytes",
            "Response body bytes sent to clients, by route",
            response_bytes.clone(),
        );
        registry.register(
            "unmatched_requests",
            "Requests that matched no route, by protocol and reason (no_listener, no_route_for_host, no_match, misdirected, missing_host)",
            unmatched.clone(),
        );
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "errors",
            "Error responses the gateway answered itself, by origin (client, configuration, upstream_connect, upstream_protocol, timeout, internal) and reason",
            errors.clone(),
        );
        registry.register(
            "connections",
            "Downstream connections accepted, by protocol once known (h1, h2, h3)",
            connections_family,
        );
        registry.register(
            "tls_handshakes",
            "Downstream TLS handshakes completed",
            tls_handshakes.clone(),
        );
        registry.register(
            "quic_handshakes",
            "Downstream QUIC handshakes completed (HTTP/3)",
            quic_handshakes.clone(),
        );
        registry.register(
            "quic_handshake_failures",
            "Downstream QUIC handshakes that failed or timed out (HTTP/3)",
            quic_handshake_failures.clone(),
        );
        registry.register_collector(Box::new(backend_endpoints.clone()));
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
            upstream_errors,
            retries,
            request_bytes,
            response_bytes,
            unmatched,
            errors,
            connections,
            tls_handshakes,
            quic_handshakes,
            quic_handshake_failures,
            backend_endpoints,
        }
    }

    /// The handles one route's requests are counted with; the same route identity always
    /// gets the same underlying series.
    pub fn route(&self, route: &RouteId) -> RouteMetrics {
        // One copy of each label value for this route's series (made on its first request).
        let labels = RouteLabels {
            parent_namespace: route.parent_namespace().into(),
            parent_name: route.parent_name().into(),
            route_namespace: route.namespace().into(),
            route_name: route.name().into(),
        };
        let requests = PROTOCOLS.map(|protocol| {
            STATUS_CLASSES.map(|status_class| {
                self.requests
                    .get_or_create(&RequestLabels {
                        parent_namespace: labels.parent_namespace.clone(),
                        parent_name: labels.parent_name.clone(),
                        route_namespace: labels.route_namespace.clone(),
                        route_name: labels.route_name.clone(),
                        protocol,
                        status_class,
                    })
                    .clone()
            })
        });
        let upstream_errors = UPSTREAM_ERRORS.map(|error| {
            self.upstream_errors
                .get_or_create(&UpstreamErrorLabels {
                    parent_namespace: labels.parent_namespace.clone(),
                    parent_name: labels.parent_name.clone(),
                    route_namespace: labels.route_namespace.clone(),
                    route_name: labels.route_name.clone(),
                    error,
                })
                .clone()
        });
        RouteMetrics {
            requests,
            duration: self.durations.get_or_create(&labels).clone(),
            upstream_errors,
            retries: self.retries.get_or_create(&labels).clone(),
            request_bytes: self.request_bytes.get_or_create(&labels).clone(),
            response_bytes: self.response_bytes.get_or_create(&labels).clone(),
        }
    }

    /// An error response the gateway made itself.
    pub fn error(&self, f: Failure) {
        self.errors
            .get_or_create(&ErrorLabels {
                origin: f.origin.as_str(),
                reason: f.reason,
            })
            .inc();
    }

    pub fn unmatched(&self, protocol: usize, reason: Unmatched) {
        self.unmatched
            .get_or_create(&UnmatchedLabels {
                protocol: PROTOCOLS[protocol.min(2)],
                reason: reason.as_str(),
            })
            .inc();
    }

    /// A downstream connection whose protocol is now known.
    pub fn connection(&self, protocol: usize) {
        self.connections[protocol.min(2)].inc();
    }

    pub fn tls_handshake_done(&self) {
        self.tls_handshakes.inc();
    }

    /// The backends in use (their ready endpoints are counted when scraped).
    pub fn set_backend_endpoints(&self, targets: Arc<dyn Targets>) {
        *self
            .backend_endpoints
            .targets
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(targets);
    }

    pub fn connection_opened(&self) -> ActiveConnection {
        self.active_connections.inc();
        ActiveConnection(self.active_connections.clone())
    }

    pub fn connection_rejected(&self) {
        self.connections_rejected.inc();
    }

    pub fn quic_handshake_done(&self) {
        self.quic_handshakes.inc();
    }

    pub fn quic_handshake_failed(&self) {
        self.quic_handshake_failures.inc();
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The gauge lines, sorted (the family keeps no order).
    fn gauges(m: &Metrics) -> Vec<String> {
        let mut out: Vec<String> = m
            .encode()
            .lines()
            .filter(|l| l.starts_with("cedille_gateway_backend_endpoints{"))
            .map(str::to_owned)
            .collect();
        out.sort();
        out
    }

    fn target(service: &str, port: u16, endpoints: usize) -> Arc<Target> {
        Arc::new(Target {
            namespace: "ns".into(),
            service: service.into(),
            port,
            h2c: false,
            endpoints: (0..endpoints)
                .map(|i| ([10, 0, 0, i as u8], 80).into())
                .collect(),
            tls: None,
        })
    }

    #[test]
    fn backend_endpoints_follow_the_published_set() {
        let m = Metrics::new();
        let (a, b) = (target("a", 80, 2), target("b", 80, 1));
        // A target shared by two rules comes twice.
        m.set_backend_endpoints(Arc::new(vec![a.clone(), b.clone(), a.clone()]));
        assert_eq!(
            gauges(&m),
            [
                r#"cedille_gateway_backend_endpoints{namespace="ns",service="a",port="80"} 2"#,
                r#"cedille_gateway_backend_endpoints{namespace="ns",service="b",port="80"} 1"#,
            ]
        );
        m.set_backend_endpoints(Arc::new(vec![a.clone(), b.clone()]));
        assert_eq!(gauges(&m).len(), 2);
        // b is replaced by an equal target (its route changed): the series stays.
        let b2 = target("b", 80, 1);
        m.set_backend_endpoints(Arc::new(vec![a.clone(), b2.clone()]));
        assert_eq!(gauges(&m).len(), 2);
        // Two targets for a, one goes: a stays.
        let a2 = target("a", 80, 2);
        m.set_backend_endpoints(Arc::new(vec![a.clone(), a2.clone(), b2.clone()]));
        m.set_backend_endpoints(Arc::new(vec![a2.clone(), b2.clone()]));
        assert_eq!(gauges(&m).len(), 2);
        // a changes, b goes, c comes.
        let (a3, c) = (target("a", 80, 3), target("c", 8080, 0));
        m.set_backend_endpoints(Arc::new(vec![a3.clone(), c.clone()]));
        assert_eq!(
            gauges(&m),
            [
                r#"cedille_gateway_backend_endpoints{namespace="ns",service="a",port="80"} 3"#,
                r#"cedille_gateway_backend_endpoints{namespace="ns",service="c",port="8080"} 0"#,
            ]
        );
        // Two targets of one port that disagree (a reload between them): the larger count.
        m.set_backend_endpoints(Arc::new(vec![a.clone(), a3.clone()]));
        assert_eq!(
            gauges(&m),
            [r#"cedille_gateway_backend_endpoints{namespace="ns",service="a",port="80"} 3"#]
        );
        m.set_backend_endpoints(Arc::new(Vec::new()));
        assert!(gauges(&m).is_empty());
    }
}
