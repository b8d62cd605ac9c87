//! cedille-gateway: the edge gateway's library (Kubernetes Gateway API). `main.rs` is a thin
//! wrapper so tests can run the real gateway in-process.
//!
//! One way through: a source (manifest files, or the Kubernetes API in [`kube`] mode) fills
//! the [`store`]; [`translate`] turns the store into an immutable [`ir::Snapshot`] and the
//! status of every object; the data plane serves the current snapshot. In Kubernetes mode
//! the replica holding the Lease writes the status back.

pub mod admin;
pub mod app;
pub mod duration;
#[doc(hidden)]
pub mod fuzzing;
pub mod ir;
pub mod kube;
pub mod manifest;
pub mod metrics;
pub mod model;
pub mod proxy;
pub mod store;
pub mod telemetry;
pub mod translate;
pub mod validate;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

/// The gateway's command line; every flag can also be set from the environment (for Helm).
#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "cedille-gateway",
    version,
    about = "Cedille edge gateway (Kubernetes Gateway API)"
)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["config_dir", "kubernetes", "print_permissions"])))]
pub struct Args {
    /// Directory of Kubernetes-style YAML manifests (standalone mode); watched for changes.
    #[arg(long, env = "CEDILLE_CONFIG_DIR", conflicts_with = "kubernetes")]
    pub config_dir: Option<PathBuf>,
    /// Read the objects from the Kubernetes API server (in-cluster service account, else
    /// KUBECONFIG, else ~/.kube/config) and write status back while leader.
    #[arg(long, env = "CEDILLE_KUBERNETES")]
    pub kubernetes: bool,
    /// Kubernetes mode: namespace of the leader Lease (default: the pod's namespace, or the
    /// kubeconfig context's).
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: Option<String>,
    /// Kubernetes mode: this replica's identity in the Lease (default: the host name).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// Kubernetes mode: name of the leader Lease.
    #[arg(long, env = "CEDILLE_LEASE_NAME", default_value = "cedille-gateway")]
    pub lease_name: String,
    /// Kubernetes mode: NAMESPACE/NAME of the Service in front of the gateway; its load
    /// balancer ingress (or cluster IP) becomes the addresses of Gateways that set none.
    #[arg(long, env = "CEDILLE_GATEWAY_SERVICE", value_parser = parse_namespaced)]
    pub gateway_service: Option<(String, String)>,
    /// Kubernetes mode: how long a Lease is held without renewal before another replica
    /// may take it.
    #[arg(long, env = "CEDILLE_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    /// Kubernetes mode: how long the leader keeps trying to renew before it stops writing.
    #[arg(long, env = "CEDILLE_LEASE_RENEW_DEADLINE", default_value = "10s", value_parser = parse_duration)]
    pub lease_renew_deadline: Duration,
    /// Kubernetes mode: how often the Lease is renewed or tried.
    #[arg(long, env = "CEDILLE_LEASE_RETRY_PERIOD", default_value = "2s", value_parser = parse_duration)]
    pub lease_retry_period: Duration,
    /// Address of the admin endpoint (/metrics, /readyz, /livez, /status, /config).
    #[arg(long, env = "CEDILLE_ADMIN_ADDR", default_value = "127.0.0.1:9901")]
    pub admin_addr: SocketAddr,
    /// On SIGTERM, how long in-flight requests may take to finish (e.g. 30s, 500ms).
    #[arg(long, env = "CEDILLE_DRAIN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// On SIGTERM, how long to keep serving with readiness off before closing the listeners
    /// (lets load balancers and Service endpoints catch up; the Helm chart sets 5s).
    #[arg(long, env = "CEDILLE_SHUTDOWN_DELAY", default_value = "0s", value_parser = parse_duration)]
    pub shutdown_delay: Duration,
    /// Most downstream connections open at once; more are closed on accept.
    #[arg(long, env = "CEDILLE_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Time allowed to receive a request's headers (also the HTTP/1.1 keep-alive idle limit).
    #[arg(long, env = "CEDILLE_HEADER_READ_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,
    /// An HTTP/2 connection without requests, or an upgraded (WebSocket) connection without
    /// traffic, for this long is closed (HTTP/2 with a GOAWAY).
    #[arg(long, env = "CEDILLE_IDLE_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Serve HTTP/3 over QUIC on every HTTPS listener (same address, UDP), and advertise it
    /// on the TCP side with `alt-svc`. `--http3=false` turns it off.
    #[arg(long, env = "CEDILLE_HTTP3", default_value_t = true, action = clap::ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub http3: bool,
    /// Time allowed for a TLS handshake.
    #[arg(long, env = "CEDILLE_TLS_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub tls_handshake_timeout: Duration,
    /// Largest request header block accepted, in bytes.
    #[arg(long, env = "CEDILLE_MAX_HEADER_BYTES", default_value_t = 65_536)]
    pub max_header_bytes: usize,
    /// Log format: `text` or `json`.
    #[arg(long, env = "CEDILLE_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
    /// Validate the manifests in --config-dir, print what is wrong, and exit (non-zero if
    /// anything is rejected).
    #[arg(long, env = "CEDILLE_CHECK_CONFIG", requires = "config_dir")]
    pub check_config: bool,
    /// Print the Kubernetes permissions Kubernetes mode needs (JSON RBAC rules) and exit.
    #[arg(long, exclusive = true)]
    pub print_permissions: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    duration::parse(s).ok_or_else(|| format!("{s:?} is not a duration like 30s, 1m or 500ms"))
}

fn parse_namespaced(s: &str) -> Result<(String, String), String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_owned(), name.to_owned()))
        }
        _ => Err(format!("{s:?} is not NAMESPACE/NAME")),
    }
}

/// The host name, the default Lease identity outside a pod.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("cedille-gateway-{}", std::process::id()))
}

impl Args {
    pub fn settings(&self) -> app::Settings {
        let mode = match &self.config_dir {
            Some(dir) => app::Mode::Dir(dir.clone()),
            None => app::Mode::Kubernetes(kube::Settings {
                namespace: self.namespace.clone(),
                pod_name: self.pod_name.clone().unwrap_or_else(host_name),
                lease_name: self.lease_name.clone(),
                gateway_service: self.gateway_service.clone(),
                lease: kube::lease::Timings {
                    lease_duration: self.lease_duration,
                    renew_deadline: self.lease_renew_deadline,
                    retry_period: self.lease_retry_period,
                },
            }),
        };
        app::Settings {
            mode,
            admin_addr: self.admin_addr,
            drain_timeout: self.drain_timeout,
            shutdown_delay: self.shutdown_delay,
            max_connections: self.max_connections,
            limits: proxy::conn::Limits {
                tls_handshake_timeout: self.tls_handshake_timeout,
                header_read_timeout: self.header_read_timeout,
                max_header_bytes: self.max_header_bytes,
                idle_timeout: self.idle_timeout,
                ..Default::default()
            },
            rescan_interval: Duration::from_secs(2),
            http3: self.http3,
        }
    }
}
