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
    // Attachments pinned by an earlier run keep steering traffic; nothing to redo for them.
    info!(pin_dir = %args.bpf_pin_dir.display(), adopted = ?pinned, "agent running");
    cedille_common::shutdown_signal().await?;
    // Exiting leaves links and maps pinned: enrolled pods stay steered (fail-closed) until
    // the next agent adopts them.
    info!("shutting down; eBPF attachments stay pinned");
    Ok(())
}
