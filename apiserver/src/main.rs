//! `cedille-apiserver`: the test API server as a process, for kubectl and the conformance
//! replay. Prints the address it listens on, writes a kubeconfig if asked.

use std::{net::SocketAddr, path::PathBuf};

use clap::Parser;

#[derive(Parser)]
#[command(about = "Test-only Kubernetes API server (what Cedille uses of kube-apiserver)")]
struct Args {
    /// Address to listen on (plain HTTP).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Directories of CustomResourceDefinitions to serve from the start.
    #[arg(long)]
    crds: Vec<PathBuf>,
    /// Write a kubeconfig for this server here.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    cedille_common::init_tracing("text", "info").map_err(anyhow::Error::msg)?;
    let args = Args::parse();
    let mut crds = Vec::new();
    for d in &args.crds {
        crds.extend(cedille_apiserver::load_crds(d)?);
    }
    let server = cedille_apiserver::ApiServer::start(
        args.listen,
        cedille_apiserver::Options {
            crds,
            ..Default::default()
        },
    )
    .await?;
    if let Some(p) = &args.kubeconfig {
        server.write_kubeconfig(p)?;
    }
    println!("listening on {}", server.url());
    cedille_common::shutdown_signal().await?;
    Ok(())
}
