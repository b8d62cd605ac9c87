use anyhow::Context;
use clap::Parser;
use tracing::error;

fn main() -> anyhow::Result<()> {
    let args = cedille_gateway::Args::parse();
    init_tracing(&args.log_format)?;
    if args.check_config {
        return check(&args);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let running = cedille_gateway::app::start(args.settings()).await?;
        shutdown_signal().await?;
        running.shutdown().await;
        Ok(())
    })
}

/// `--check-config`: parse and validate every manifest, and translate, without serving.
fn check(args: &cedille_gateway::Args) -> anyhow::Result<()> {
    let mut store = cedille_gateway::store::Store::new();
    let mut provider = cedille_gateway::provider::FileProvider::new(&args.config_dir);
    provider.sync(&mut store);
    let errors = store.errors();
    for e in &errors {
        error!("{e}");
    }
    let out = cedille_gateway::translate::translate(
        &store,
        None,
        "1970-01-01T00:00:00Z",
        &Default::default(),
    );

    println!("{}", serde_json::to_string_pretty(&out.status)?);
    if !errors.is_empty() {
        anyhow::bail!("{} manifest document(s) rejected", errors.len());
    }
    Ok(())
}

fn init_tracing(format: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,access=off"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
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
