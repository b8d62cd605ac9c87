use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::Context;
use cedille_agent::{datapath::Datapath, identity, metrics::Metrics, node};
use clap::{Parser, Subcommand, ValueEnum};
use tracing::info;

/// Cedille node agent: carries enrolled pods' connections, steered into it by eBPF.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
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
    /// The SPIFFE trust domain of workload identities
    /// (spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>).
    #[arg(long, env = "CEDILLE_TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    /// Identity source for standalone mode: a directory with ca.crt (the trust bundle, one
    /// or more PEM roots) and ca.key (the signing key of one of them; ECDSA or RSA, PKCS#8,
    /// SEC1 or PKCS#1). `cedille-agent ca init DIR` makes a development CA.
    #[arg(long, env = "CEDILLE_CA_DIR")]
    ca_dir: Option<PathBuf>,
    /// Lifetime of the workload certificates the agent requests; renewed at half of it.
    #[arg(long, env = "CEDILLE_SVID_LIFETIME", default_value = "24h", value_parser = identity::parse_duration)]
    svid_lifetime: std::time::Duration,
    /// Carry meshed connections without mutual TLS (no identity source). Only for
    /// comparisons and debugging: nothing is encrypted or authenticated.
    #[arg(long, env = "CEDILLE_PLAINTEXT", conflicts_with_all = ["ca_dir", "cert_manager_issuer"])]
    plaintext: bool,
    /// Identity source for Kubernetes mode: the cert-manager issuer that signs workload
    /// certificates (CertificateRequests made in --namespace); the CA key stays with
    /// cert-manager.
    #[arg(
        long,
        env = "CEDILLE_CERT_MANAGER_ISSUER",
        conflicts_with = "ca_dir",
        requires = "kubernetes"
    )]
    cert_manager_issuer: Option<String>,
    /// The issuer's kind: ClusterIssuer or Issuer (in --namespace).
    #[arg(
        long,
        env = "CEDILLE_CERT_MANAGER_ISSUER_KIND",
        default_value = "ClusterIssuer"
    )]
    cert_manager_issuer_kind: String,
    /// The issuer's API group (cert-manager.io, or an external issuer's).
    #[arg(
        long,
        env = "CEDILLE_CERT_MANAGER_ISSUER_GROUP",
        default_value = "cert-manager.io"
    )]
    cert_manager_issuer_group: String,
    /// PEM roots peers' certificates must chain to (with cert-manager; default: the CA
    /// cert-manager returns with each certificate). Read again at each renewal.
    #[arg(long, env = "CEDILLE_TRUST_BUNDLE")]
    trust_bundle: Option<PathBuf>,
    /// Threads carrying connections (0: one per CPU).
    #[arg(long, env = "CEDILLE_WORKER_THREADS", default_value_t = 1)]
    worker_threads: usize,
    /// The agent's namespace, where it makes CertificateRequests.
    #[arg(long, env = "POD_NAMESPACE", default_value = "cedille-system")]
    namespace: String,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The standalone certificate authority.
    Ca {
        #[command(subcommand)]
        action: CaAction,
    },
}

#[derive(Subcommand, Debug)]
enum CaAction {
    /// Writes a development CA (ECDSA P-256, ten years) as DIR/ca.crt and DIR/ca.key.
    Init { dir: PathBuf },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum FailurePolicy {
    Closed,
    Open,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // One thread by default: on the connection path every hop is a socket read, some
    // crypto and a write, and a second worker mostly adds wake-ups between threads (`cargo
    // xtask bench mesh`: less CPU per request and a lower p99 than with two).
    let runtime = match args.worker_threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(if n == 0 {
                std::thread::available_parallelism().map_or(1, |n| n.get())
            } else {
                n
            })
            .enable_all()
            .build()?,
    };
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    if args.print_permissions {
        println!(
            "{}",
            serde_json::to_string_pretty(&cedille_agent::app::permissions())?
        );
        return Ok(());
    }
    if let Some(Command::Ca {
        action: CaAction::Init { dir },
    }) = &args.command
    {
        identity::ca::init(dir, &args.trust_domain).map_err(anyhow::Error::msg)?;
        eprintln!(
            "wrote {} and {}",
            dir.join("ca.crt").display(),
            dir.join("ca.key").display()
        );
        return Ok(());
    }
    cedille_common::init_tracing(&args.log_format, "info").map_err(anyhow::Error::msg)?;
    if !identity::valid_td(&args.trust_domain) {
        anyhow::bail!(
            "--trust-domain {:?}: use lowercase letters, digits, '.', '-' and '_'",
            args.trust_domain
        );
    }
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
    let metrics = Arc::new(Metrics::new());
    let identities = match (&args.ca_dir, args.plaintext) {
        (None, _) if args.cert_manager_issuer.is_some() => {
            let client = cedille_objects::kube::client()
                .await
                .map_err(|e| anyhow::anyhow!("--cert-manager-issuer: {e}"))?;
            let source = identity::certmanager::CertManager::new(
                client,
                identity::certmanager::Settings {
                    namespace: args.namespace.clone(),
                    issuer_name: args.cert_manager_issuer.clone().unwrap_or_default(),
                    issuer_kind: args.cert_manager_issuer_kind.clone(),
                    issuer_group: args.cert_manager_issuer_group.clone(),
                    trust_bundle: args.trust_bundle.clone(),
                    node: node_name.clone(),
                },
            );
            Some(Arc::new(identity::Identities::new(
                Arc::new(source),
                &args.trust_domain,
                args.svid_lifetime,
                metrics.clone(),
            )))
        }
        (Some(dir), _) => {
            let ca =
                identity::ca::CaDir::open(dir).map_err(|e| anyhow::anyhow!("--ca-dir: {e}"))?;
            Some(Arc::new(identity::Identities::new(
                Arc::new(ca),
                &args.trust_domain,
                args.svid_lifetime,
                metrics.clone(),
            )))
        }
        (None, true) => {
            tracing::warn!("--plaintext: meshed connections are carried without mutual TLS");
            None
        }
        (None, false) => anyhow::bail!(
            "no identity source: give --cert-manager-issuer NAME (Kubernetes mode), --ca-dir DIR (a CA directory; `cedille-agent ca init DIR` makes one), or --plaintext to carry connections without mutual TLS"
        ),
    };
    info!(pin_dir = %args.bpf_pin_dir.display(), pinned = pinned.len(), policy = ?args.failure_policy, mtls = identities.is_some(), trust_domain = %args.trust_domain, "starting; pinned attachments are adopted as their pods are enrolled");
    let node = node::Node::new(settings, datapath, metrics, identities)?;
    let _running = cedille_agent::app::start(mode, node_name, node, args.admin_addr).await?;
    cedille_common::shutdown_signal().await?;
    // Exiting leaves links and maps pinned: enrolled pods stay steered (fail-closed) until
    // the next agent adopts them.
    info!("shutting down; eBPF attachments stay pinned");
    Ok(())
}
