//! cedille-gateway: the edge gateway's library (Kubernetes Gateway API). `main.rs` is a thin
//! wrapper so tests can run the real gateway in-process.
//!
//! The routing data plane arrives with its own issue; this crate currently holds the
//! command-line interface it will keep.

use std::{net::SocketAddr, path::PathBuf};

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
}
