use std::path::PathBuf;

use anyhow::Context;
use cedille_agent::datapath::Datapath;
use clap::Parser;
use tracing::info;

/// Cedille node agent: steers enrolled pods' connections through the agent with eBPF.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_tracing(&args.log_format)?;
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
    // Attachments pinned by an earlier run keep steering traffic; nothing to redo for them.
    info!(pin_dir = %args.bpf_pin_dir.display(), adopted = ?pinned, "agent running");
    shutdown_signal().await?;
    // Exiting leaves links and maps pinned: enrolled pods stay steered (fail-closed) until
    // the next agent adopts them.
    info!("shutting down; eBPF attachments stay pinned");
    Ok(())
}

fn init_tracing(format: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        "text" => builder.init(),
        "json" => builder.json().init(),
        other => anyhow::bail!("--log-format {other:?}: expected `text` or `json`"),
    }
    Ok(())
}

async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
