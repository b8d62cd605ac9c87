use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::Context;
use cedille_agent::{datapath::Datapath, metrics::Metrics, node};
use clap::{Parser, ValueEnum};
use tracing::info;

/// Cedille node agent: carries enrolled pods' connections, steered into it by eBPF.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Directory of Pod, Namespace, Service and EndpointSlice manifests (watched).
    #[arg(long, env = "CEDILLE_CONFIG_DIR", conflicts_with = "kubernetes")]
    config_dir: Option<PathBuf>,
    /// Read this node's pods, and the Namespaces, Services and EndpointSlices, from the
    /// Kubernetes API server (in-cluster service account, else KUBECONFIG, else
    /// ~/.kube/config).
    #[arg(long, env = "CEDILLE_KUBERNETES")]
    kubernetes: bool,
    /// This node's name: only pods whose spec.nodeName is this are enrolled.
    #[arg(long, env = "CEDILLE_NODE_NAME")]
    node_name: Option<String>,
    /// Root of the kubelet's pod cgroups (cgroup v2), searched for pod<uid> directories.
    #[arg(long, env = "CEDILLE_CGROUP_ROOT", default_value = "/sys/fs/cgroup")]
    cgroup_root: PathBuf,
    /// Admin endpoint: /metrics /readyz /livez /config.
    #[arg(long, env = "CEDILLE_ADMIN_ADDR", default_value = "127.0.0.1:15020")]
    admin_addr: SocketAddr,
    /// What an enrolled pod's new connections do while the agent is down: `closed` (fail)
    /// or `open` (bypass the agent).
    #[arg(long, env = "CEDILLE_FAILURE_POLICY", value_enum, default_value_t = FailurePolicy::Closed)]
    failure_policy: FailurePolicy,
    /// The agent's outbound listener port inside each pod (loopback).
    #[arg(long, env = "CEDILLE_OUTBOUND_PORT", default_value_t = 15001)]
    outbound_port: u16,
    /// The agent's inbound listener port inside each pod.
    #[arg(long, env = "CEDILLE_INBOUND_PORT", default_value_t = 15006)]
    inbound_port: u16,
    /// Open the pods' listeners but attach no eBPF (for an iptables REDIRECT capture, as
    /// the benchmark's sidecar-style comparison does).
    #[arg(long, hide = true)]
    no_ebpf: bool,
    /// bpffs directory where the agent pins its maps and links; pins survive agent restarts.
    #[arg(
        long,
        env = "CEDILLE_BPF_PIN_DIR",
        default_value = "/sys/fs/bpf/cedille"
    )]
    bpf_pin_dir: PathBuf,
    /// Load and verify the eBPF programs in the kernel, then exit.
    #[arg(long, env = "CEDILLE_CHECK")]
    check: bool,
    /// Detach every pinned attachment and remove the pin directory, then exit (uninstall).
    #[arg(long, env = "CEDILLE_UNINSTALL")]
    uninstall: bool,
    /// Log format: `text` or `json`.
    #[arg(long, env = "CEDILLE_LOG_FORMAT", default_value = "text")]
    log_format: String,
    /// Print the Kubernetes permissions Kubernetes mode needs (JSON RBAC rules) and exit.
    #[arg(long, exclusive = true)]
    print_permissions: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum FailurePolicy {
    Closed,
    Open,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.print_permissions {
        println!(
            "{}",
            serde_json::to_string_pretty(&cedille_agent::app::permissions())?
        );
        return Ok(());
    }
    cedille_common::init_tracing(&args.log_format, "info").map_err(anyhow::Error::msg)?;
    let mut datapath = Datapath::load(&args.bpf_pin_dir)
        .with_context(|| format!("loading eBPF datapath in {}", args.bpf_pin_dir.display()))?;
    let pinned = datapath.pinned_ids()?;
    if args.check {
        info!(pin_dir = %args.bpf_pin_dir.display(), attachments = pinned.len(), "eBPF programs verified by the kernel");
        return Ok(());
    }
    if args.uninstall {
        for id in &pinned {
            datapath.detach(id)?;
        }
        drop(datapath);
        std::fs::remove_dir_all(&args.bpf_pin_dir)
            .with_context(|| format!("removing {}", args.bpf_pin_dir.display()))?;
        info!(detached = pinned.len(), "uninstalled");
        return Ok(());
    }
    let mode = match (args.config_dir, args.kubernetes) {
        (Some(dir), false) => cedille_agent::app::Mode::Dir(dir),
        (None, true) => cedille_agent::app::Mode::Kubernetes,
        _ => anyhow::bail!(
            "say where the objects come from: --config-dir DIR (standalone) or --kubernetes"
        ),
    };
    let node_name = args
        .node_name
        .context("--node-name (or CEDILLE_NODE_NAME) is required")?;
    let settings = node::Settings {
        cgroup_root: args.cgroup_root,
        fail_open: args.failure_policy == FailurePolicy::Open,
        outbound_port: args.outbound_port,
        inbound_port: args.inbound_port,
        no_ebpf: args.no_ebpf,
    };
    info!(pin_dir = %args.bpf_pin_dir.display(), pinned = pinned.len(), policy = ?args.failure_policy, "starting; pinned attachments are adopted as their pods are enrolled");
    let node = node::Node::new(settings, datapath, Arc::new(Metrics::new()))?;
    let _running = cedille_agent::app::start(mode, node_name, node, args.admin_addr).await?;
    cedille_common::shutdown_signal().await?;
    // Exiting leaves links and maps pinned: enrolled pods stay steered (fail-closed) until
    // the next agent adopts them.
    info!("shutting down; eBPF attachments stay pinned");
    Ok(())
}
