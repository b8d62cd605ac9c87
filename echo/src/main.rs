use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use cedille_echo::{Echo, EchoConfig, load_tls_server_config};
use clap::Parser;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::info;

/// Echo HTTP backend for Gateway API conformance testing: answers every request with a
/// JSON description of it (the conformance suite's echo protocol).
///
/// Prints one line per listener to stdout once it is bound, `listening http://ADDR` or
/// `listening https://ADDR` (useful with port 0); logs go to stderr.
#[derive(Parser, Debug)]
#[command(version)]
#[command(group = clap::ArgGroup::new("listeners").required(true).multiple(true))]
struct Args {
    /// Cleartext listener (HTTP/1.1 and h2c), HOST:PORT; repeatable. In the environment,
    /// comma-separated.
    #[arg(
        long,
        env = "CEDILLE_ECHO_LISTEN",
        value_delimiter = ',',
        group = "listeners"
    )]
    listen: Vec<SocketAddr>,
    /// TLS listener (HTTP/1.1 and h2 by ALPN), HOST:PORT; repeatable; needs --tls-cert and
    /// --tls-key. In the environment, comma-separated.
    #[arg(
        long,
        env = "CEDILLE_ECHO_TLS_LISTEN",
        value_delimiter = ',',
        group = "listeners",
        requires_all = ["tls_cert", "tls_key"]
    )]
    tls_listen: Vec<SocketAddr>,
    /// PEM certificate chain (leaf first) for the TLS listeners.
    #[arg(long, env = "CEDILLE_ECHO_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for the TLS listeners.
    #[arg(long, env = "CEDILLE_ECHO_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Reported as `pod` in every response.
    #[arg(long, env = "POD_NAME", default_value = "")]
    pod: String,
    /// Reported as `namespace` in every response.
    #[arg(long, env = "NAMESPACE", default_value = "")]
    namespace: String,
    /// Reported as `service` in every response.
    #[arg(long, env = "SERVICE_NAME", default_value = "")]
    service: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) if !args.tls_listen.is_empty() => {
            Some(load_tls_server_config(cert, key).context("loading the TLS certificate")?)
        }
        _ => None,
    };
    let echo = Arc::new(Echo::new(EchoConfig {
        pod: args.pod,
        namespace: args.namespace,
        service: args.service,
    }));

    let (stop, stopped) = watch::channel(false);
    let mut servers = JoinSet::new();
    let plain = args.listen.iter().map(|addr| (addr, None));
    let secure = args.tls_listen.iter().map(|addr| (addr, tls.clone()));
    for (addr, tls) in plain.chain(secure) {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        println!("listening {scheme}://{}", listener.local_addr()?);
        let mut stopped = stopped.clone();
        let shutdown = async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        servers.spawn(cedille_echo::serve(
            listener,
            Arc::clone(&echo),
            tls,
            shutdown,
        ));
    }

    cedille_common::shutdown_signal().await?;
    info!("shutting down");
    let _ = stop.send(true);
    while let Some(result) = servers.join_next().await {
        result.context("echo server task")??;
    }
    Ok(())
}
