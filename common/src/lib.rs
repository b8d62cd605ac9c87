//! What Cedille's binaries share: log setup and the shutdown signals.

/// Logs to stderr as `text` (locally) or `json` (in a cluster), filtered by `RUST_LOG`, or
/// by `default_filter` when it is unset.
pub fn init_tracing(format: &str, default_filter: &str) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        "text" => builder.init(),
        "json" => builder.json().init(),
        other => return Err(format!("log format {other:?}: expected `text` or `json`")),
    }
    Ok(())
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// Sends `()` on `tx` when something in `dir` (recursively) changes. Access events (opens,
/// reads) are ignored: rescanning the directory causes them, and reacting would loop.
/// `None`, logged, when the platform refuses; callers then rely on periodic rescans.
pub fn watch_dir(
    dir: &std::path::Path,
    tx: tokio::sync::mpsc::Sender<()>,
) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok_and(|e| !e.kind.is_access()) {
            let _ = tx.try_send(());
        }
    })
    .map_err(|e| tracing::warn!(error = %e, "cannot watch the config directory; polling only"))
    .ok()?;
    if let Err(e) = w.watch(dir, notify::RecursiveMode::Recursive) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the config directory; polling only");
        return None;
    }
    Some(w)
}

/// Why one manifest document (or a whole file) was not loaded, shared by the gateway and
/// the agent: it names the file, the document, the object and the field, so an operator can
/// fix it without guessing.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ManifestError {
    pub file: String,
    /// 1-based document index in the file; 0 for errors about the whole file.
    pub document: usize,
    /// `Kind namespace/name` when known.
    pub object: Option<String>,
    /// Dotted path of the offending field (`spec.listeners[0].port`) when known.
    pub field: Option<String>,
    pub message: String,
}

impl std::fmt::Display for ManifestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file)?;
        if self.document > 0 {
            write!(f, " document {}", self.document)?;
        }
        if let Some(o) = &self.object {
            write!(f, ": {o}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": field {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}
