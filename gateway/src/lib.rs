//! cedille-gateway: the edge gateway's library (Kubernetes Gateway API). `main.rs` is a thin
//! wrapper so tests can run the real gateway in-process.
//!
//! One way through: a provider (manifest files) fills the [`store`]; [`translate`] turns the
//! store into an immutable [`ir::Snapshot`] and the status of every object; the data plane
//! serves the current snapshot.

pub mod admin;
pub mod app;
pub mod duration;
pub mod ir;
pub mod manifest;
pub mod metrics;
pub mod model;
pub mod provider;
pub mod proxy;
pub mod store;
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
pub struct Args {
    /// Directory of Kubernetes-style YAML manifests (standalone mode); watched for changes.
    #[arg(long, env = "CEDILLE_CONFIG_DIR")]
    pub config_dir: PathBuf,
    /// Address of the admin endpoint (/metrics, /readyz, /livez, /status, /config).
    #[arg(long, env = "CEDILLE_ADMIN_ADDR", default_value = "127.0.0.1:9901")]
    pub admin_addr: SocketAddr,
    /// On SIGTERM, how long in-flight requests may take to finish (e.g. 30s, 500ms).
    #[arg(long, env = "CEDILLE_DRAIN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Most downstream connections open at once; more are closed on accept.
    #[arg(long, env = "CEDILLE_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Time allowed to receive a request's headers (also the HTTP/1.1 keep-alive idle limit).
    #[arg(long, env = "CEDILLE_HEADER_READ_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,
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
    #[arg(long, env = "CEDILLE_CHECK_CONFIG")]
    pub check_config: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    duration::parse(s).ok_or_else(|| format!("{s:?} is not a duration like 30s, 1m or 500ms"))
}

impl Args {
    pub fn settings(&self) -> app::Settings {
        app::Settings {
            config_dir: self.config_dir.clone(),
            admin_addr: self.admin_addr,
            drain_timeout: self.drain_timeout,
            max_connections: self.max_connections,
            limits: proxy::conn::Limits {
                tls_handshake_timeout: self.tls_handshake_timeout,
                header_read_timeout: self.header_read_timeout,
                max_header_bytes: self.max_header_bytes,
                ..Default::default()
            },
            rescan_interval: Duration::from_secs(2),
        }
    }
}
