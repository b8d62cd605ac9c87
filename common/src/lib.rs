//! What Cedille's binaries share: log setup, shutdown signals, the directory watcher,
//! manifest errors and Kubernetes timestamps.

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

/// Sends a [`Change`] and the paths it concerns on `tx` when something in `dir`
/// (recursively) changes. Access events
/// other than a close after writing (opens, reads) are ignored: rescanning the directory
/// causes them, and reacting would loop.
/// `None`, logged, when the platform refuses; callers then rely on periodic rescans.
pub fn watch_dir(
    dir: &std::path::Path,
    tx: tokio::sync::mpsc::UnboundedSender<(Change, Vec<std::path::PathBuf>)>,
) -> Option<notify::RecommendedWatcher> {
    use notify::{
        EventKind, Watcher,
        event::{AccessKind, AccessMode, ModifyKind},
    };
    let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(e) = res else { return };
        let change = match e.kind {
            // A file closed after writing, renamed into place, or removed: complete.
            EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Modify(ModifyKind::Name(_))
            | EventKind::Remove(_) => Change::Settled,
            EventKind::Access(_) => return,
            // Data written to a file still open: more may follow.
            _ => Change::InProgress,
        };
        let _ = tx.send((change, e.paths));
    })
    .map_err(|e| tracing::warn!(error = %e, "cannot watch the config directory; polling only"))
    .ok()?;
    if let Err(e) = w.watch(dir, notify::RecursiveMode::Recursive) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the config directory; polling only");
        return None;
    }
    Some(w)
}

/// What a directory watch reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// A file was written and closed, renamed into place or removed: it can be read.
    Settled,
    /// A file is being written: reading it now may see half of it.
    InProgress,
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

/// Formats a time as RFC 3339 in UTC with second precision, as Kubernetes does.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_709_251_199);
        assert_eq!(rfc3339(t), "2024-02-29T23:59:59Z");
    }
}
