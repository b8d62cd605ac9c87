//! Prometheus metrics, prefix `cedille_agent_`.

use std::sync::{
    Mutex,
    atomic::{AtomicI64, AtomicU64},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::datapath::{MapCounts, Stats};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub direction: Direction,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Outbound,
    Inbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

/// Lower case, as in `/config` and as Prometheus label values usually are.
impl prometheus_client::encoding::EncodeLabelValue for Direction {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
    ) -> std::fmt::Result {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BytesLabels {
    direction: Direction,
    /// `sent`: from the connection's client to its server; `received`: back.
    flow: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabels {
    map: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProgramLabels {
    program: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkloadLabels {
    direction: Direction,
    /// The SPIFFE ID of the client (`unknown` for plaintext from outside the mesh).
    source_identity: String,
    /// The SPIFFE ID of the server (`unknown` for a destination outside the mesh).
    destination_identity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkloadBytesLabels {
    direction: Direction,
    source_identity: String,
    destination_identity: String,
    flow: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabels {
    /// `server` (a peer connecting to our HBONE listener) or `client` (our connection out).
    side: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabels {
    /// `namespace/name` of the deny policy that matched, `<namespace>/(no allow policy
    /// matched)`, or `strict-mtls` for plaintext refused by a strict namespace.
    policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IdentityLabels {
    identity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub enrolled_pods: Gauge,
    pub waiting_pods: Gauge,
    connections: Family<DirectionLabels, Counter>,
    active: Family<DirectionLabels, Gauge<i64, AtomicI64>>,
    bytes: Family<BytesLabels, Counter>,
    connect_errors: Family<DirectionLabels, Counter>,
    map_entries: Family<MapLabels, Gauge>,
    map_capacity: Family<MapLabels, Gauge>,
    bpf_events: Family<EventLabels, Counter<u64, AtomicU64>>,
    program_ns: Family<ProgramLabels, Counter<u64, AtomicU64>>,
    program_runs: Family<ProgramLabels, Counter<u64, AtomicU64>>,
    pub invalid_manifests: Gauge,
    workload_connections: Family<WorkloadLabels, Counter>,
    workload_bytes: Family<WorkloadBytesLabels, Counter>,
    handshake_failures: Family<HandshakeLabels, Counter>,
    policy_denials: Family<PolicyLabels, Counter>,
    cert_expiry: Family<IdentityLabels, Gauge>,
    cert_errors: Family<IdentityLabels, Counter>,
    hbone_responses: Family<CodeLabels, Counter>,
    pub hbone_pool_connections: Gauge,
    /// Kernel counters as last read, so the Prometheus counters advance by the difference.
    last: Mutex<Last>,
}

#[derive(Default)]
struct Last {
    stats: Stats,
    programs: std::collections::BTreeMap<&'static str, (u64, u64)>,
}

/// Decrements the active connection gauge when dropped.
pub struct ActiveGuard(Gauge<i64, AtomicI64>);

impl Drop for ActiveGuard {
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
        let mut r = Registry::with_prefix("cedille_agent");
        let m = Self {
            registry: Registry::default(),
            enrolled_pods: Gauge::default(),
            waiting_pods: Gauge::default(),
            connections: Family::default(),
            active: Family::default(),
            bytes: Family::default(),
            connect_errors: Family::default(),
            map_entries: Family::default(),
            map_capacity: Family::default(),
            bpf_events: Family::default(),
            program_ns: Family::default(),
            program_runs: Family::default(),
            invalid_manifests: Gauge::default(),
            workload_connections: Family::default(),
            workload_bytes: Family::default(),
            handshake_failures: Family::default(),
            policy_denials: Family::default(),
            cert_expiry: Family::default(),
            cert_errors: Family::default(),
            hbone_responses: Family::default(),
            hbone_pool_connections: Gauge::default(),
            last: Mutex::default(),
        };
        r.register(
            "enrolled_pods",
            "Pods whose connections go through the agent",
            m.enrolled_pods.clone(),
        );
        r.register("waiting_pods", "Pods to enroll that cannot be yet (no cgroup or process yet, or an error; see /config)", m.waiting_pods.clone());
        r.register(
            "captured_connections",
            "Connections captured, by direction",
            m.connections.clone(),
        );
        r.register(
            "active_connections",
            "Captured connections open now, by direction",
            m.active.clone(),
        );
        r.register(
            "bytes",
            "Bytes carried, by direction and flow (sent: client to server)",
            m.bytes.clone(),
        );
        r.register(
            "connect_errors",
            "Captured connections whose onward connect failed, by direction",
            m.connect_errors.clone(),
        );
        r.register(
            "bpf_map_entries",
            "Entries in each eBPF map",
            m.map_entries.clone(),
        );
        r.register(
            "bpf_map_capacity",
            "Most entries each eBPF map holds (bpf_map_entries over this is its fill)",
            m.map_capacity.clone(),
        );
        r.register("bpf_events", "Kernel-side events: map_full (a map update the kernel refused), inbound_refused (fail-closed drops), failed_open, note_lost (a redirected connect whose destination was overwritten; the agent closes it)", m.bpf_events.clone());
        r.register(
            "bpf_program_run_time_ns",
            "Kernel time spent in each eBPF program (needs sysctl kernel.bpf_stats_enabled=1)",
            m.program_ns.clone(),
        );
        r.register(
            "bpf_program_runs",
            "Runs of each eBPF program (needs sysctl kernel.bpf_stats_enabled=1)",
            m.program_runs.clone(),
        );
        r.register(
            "invalid_manifests",
            "Manifest documents currently rejected",
            m.invalid_manifests.clone(),
        );
        r.register(
            "workload_connections",
            "Connections by direction and by source and destination workload identity (SPIFFE ID)",
            m.workload_connections.clone(),
        );
        r.register(
            "workload_bytes",
            "Bytes by direction, source and destination workload identity, and flow (sent: client to server)",
            m.workload_bytes.clone(),
        );
        r.register(
            "tls_handshake_failures",
            "Mutual TLS handshakes that failed, by side and reason (unknown_ca, expired, not_yet_valid, ca_leaf, bad_san, wrong_trust_domain, wrong_identity, bad_certificate, no_certificate, peer_refused, timeout, protocol, ...)",
            m.handshake_failures.clone(),
        );
        r.register(
            "policy_denials",
            "Connections refused or closed by authorization, by policy",
            m.policy_denials.clone(),
        );
        r.register(
            "certificate_expiry_timestamp_seconds",
            "When each held identity's certificate expires (Unix seconds)",
            m.cert_expiry.clone(),
        );
        r.register(
            "certificate_issue_errors",
            "Failed attempts to issue or renew an identity's certificate",
            m.cert_errors.clone(),
        );
        r.register(
            "hbone_responses",
            "Answers of the HBONE server to CONNECT requests, by status code",
            m.hbone_responses.clone(),
        );
        r.register(
            "hbone_pool_connections",
            "Open pooled HBONE client connections",
            m.hbone_pool_connections.clone(),
        );
        Self { registry: r, ..m }
    }

    pub fn connection(&self, direction: Direction) -> ActiveGuard {
        let l = DirectionLabels { direction };
        self.connections.get_or_create(&l).inc();
        let g = self.active.get_or_create(&l).clone();
        g.inc();
        ActiveGuard(g)
    }

    pub fn connect_error(&self, direction: Direction) {
        self.connect_errors
            .get_or_create(&DirectionLabels { direction })
            .inc();
    }

    pub fn bytes(&self, direction: Direction, sent: u64, received: u64) {
        self.bytes
            .get_or_create(&BytesLabels {
                direction,
                flow: "sent",
            })
            .inc_by(sent);
        self.bytes
            .get_or_create(&BytesLabels {
                direction,
                flow: "received",
            })
            .inc_by(received);
    }

    /// One connection between two workloads (identity strings, `unknown` outside the mesh).
    pub fn workload_connection(&self, direction: Direction, source: &str, destination: &str) {
        self.workload_connections
            .get_or_create(&WorkloadLabels {
                direction,
                source_identity: source.to_owned(),
                destination_identity: destination.to_owned(),
            })
            .inc();
    }

    pub fn workload_bytes(
        &self,
        direction: Direction,
        source: &str,
        destination: &str,
        sent: u64,
        received: u64,
    ) {
        for (flow, n) in [("sent", sent), ("received", received)] {
            self.workload_bytes
                .get_or_create(&WorkloadBytesLabels {
                    direction,
                    source_identity: source.to_owned(),
                    destination_identity: destination.to_owned(),
                    flow,
                })
                .inc_by(n);
        }
    }

    pub fn handshake_failure(&self, side: &'static str, reason: &'static str) {
        self.handshake_failures
            .get_or_create(&HandshakeLabels { side, reason })
            .inc();
    }

    pub fn policy_denial(&self, policy: &str) {
        self.policy_denials
            .get_or_create(&PolicyLabels {
                policy: policy.to_owned(),
            })
            .inc();
    }

    pub fn hbone_response(&self, code: u16) {
        self.hbone_responses
            .get_or_create(&CodeLabels { code })
            .inc();
    }

    pub fn identity_issued(&self, identity: &str, expiry_unix: u64) {
        self.cert_expiry
            .get_or_create(&IdentityLabels {
                identity: identity.to_owned(),
            })
            .set(expiry_unix as i64);
    }

    pub fn identity_error(&self, identity: &str) {
        self.cert_errors
            .get_or_create(&IdentityLabels {
                identity: identity.to_owned(),
            })
            .inc();
    }

    /// Drops the series of an identity the node no longer holds.
    pub fn forget_identity(&self, identity: &str) {
        let l = IdentityLabels {
            identity: identity.to_owned(),
        };
        self.cert_expiry.remove(&l);
        self.cert_errors.remove(&l);
    }

    /// Brings the kernel-sourced series up to date (called on each scrape).
    pub fn kernel(&self, counts: MapCounts, stats: Stats, programs: &[(&'static str, u64, u64)]) {
        use cedille_ebpf::{CONNECTION_MAP_ENTRIES, TARGET_MAP_ENTRIES};
        for (map, n, capacity) in [
            ("targets", counts.targets, TARGET_MAP_ENTRIES),
            ("original_dst", counts.original_dsts, CONNECTION_MAP_ENTRIES),
            ("inbound_addrs", counts.inbound_addrs, TARGET_MAP_ENTRIES),
            (
                "inbound_sockets",
                counts.inbound_sockets,
                TARGET_MAP_ENTRIES,
            ),
        ] {
            self.map_entries
                .get_or_create(&MapLabels { map })
                .set(n as i64);
            self.map_capacity
                .get_or_create(&MapLabels { map })
                .set(i64::from(capacity));
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        for (event, now, before) in [
            (
                "map_full",
                stats.map_update_failed,
                last.stats.map_update_failed,
            ),
            (
                "inbound_refused",
                stats.inbound_refused,
                last.stats.inbound_refused,
            ),
            ("failed_open", stats.failed_open, last.stats.failed_open),
            ("note_lost", stats.note_lost, last.stats.note_lost),
        ] {
            self.bpf_events
                .get_or_create(&EventLabels { event })
                .inc_by(now.saturating_sub(before));
        }
        last.stats = stats;
        for (program, ns, runs) in programs {
            let (ns0, runs0) = last.programs.get(program).copied().unwrap_or((0, 0));
            self.program_ns
                .get_or_create(&ProgramLabels { program })
                .inc_by(ns.saturating_sub(ns0));
            self.program_runs
                .get_or_create(&ProgramLabels { program })
                .inc_by(runs.saturating_sub(runs0));
            last.programs.insert(program, (*ns, *runs));
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direction_labels_are_lower_case() {
        let m = Metrics::new();
        let _active = m.connection(Direction::Outbound);
        m.bytes(Direction::Inbound, 10, 20);
        let text = m.encode();
        assert!(
            text.contains("cedille_agent_captured_connections_total{direction=\"outbound\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("cedille_agent_active_connections{direction=\"outbound\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("cedille_agent_bytes_total{direction=\"inbound\",flow=\"received\"} 20"),
            "{text}"
        );
    }
}
