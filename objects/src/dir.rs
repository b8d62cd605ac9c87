//! Standalone mode's source: a directory of manifests, watched. A change to any file
//! re-reads that file only; everything else in the store stays as it was.

use std::{
    collections::BTreeMap,
    fs,
    marker::PhantomData,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use tokio::sync::mpsc;
use tracing::{info, warn};

use cedille_common::Change;

use crate::{catalog::Catalog, manifest, store::Store};

/// How long a file being written may stay quiet before it is read anyway (a writer that
/// never closes it, or a platform that does not report closes).
const SETTLE: Duration = Duration::from_millis(20);

#[derive(Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

pub struct DirSource<C> {
    dir: PathBuf,
    seen: BTreeMap<PathBuf, Stamp>,
    events: mpsc::Receiver<Change>,
    _watcher: Option<notify::RecommendedWatcher>,
    rescan: tokio::time::Interval,
    synced: bool,
    _kinds: PhantomData<fn() -> C>,
}

/// Manifest files are `*.yaml`, `*.yml` and `*.json`, hidden files and directories aside.
fn is_manifest(p: &Path) -> bool {
    !is_hidden(p)
        && matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        )
}

fn is_hidden(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>, depth: usize) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() && !is_hidden(&p) && depth < 8 => walk(&p, out, depth + 1),
            Ok(_) if is_manifest(&p) => out.push(p),
            _ => {}
        }
    }
}

impl<C: Catalog> DirSource<C> {
    /// Watches `dir`; `rescan` is the period of full rescans, in case a change notification
    /// was missed (or the platform gives none).
    pub fn new(dir: impl Into<PathBuf>, rescan: Duration) -> Self {
        let dir = dir.into();
        let (tx, events) = mpsc::channel(256);
        let watcher = cedille_common::watch_dir(&dir, tx);
        let mut rescan = tokio::time::interval(rescan);
        rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            dir,
            seen: BTreeMap::new(),
            events,
            _watcher: watcher,
            rescan,
            synced: false,
            _kinds: PhantomData,
        }
    }

    /// A source that is read on demand only (no watch, no timer): `--check-config`.
    pub fn once(dir: impl Into<PathBuf>) -> Self {
        let (_, events) = mpsc::channel(1);
        Self {
            dir: dir.into(),
            seen: BTreeMap::new(),
            events,
            _watcher: None,
            rescan: tokio::time::interval(Duration::from_secs(3600)),
            synced: false,
            _kinds: PhantomData,
        }
    }

    /// True once the directory has been read.
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// Completes when something in the directory may have changed: a notification (after
    /// letting a burst of writes settle) or the rescan period.
    /// Returns when the directory should be read again: at once when a file was written
    /// and closed, renamed into place or removed (whatever else arrived meanwhile is read in
    /// the same pass, so a burst costs one pass per translation, not one per file); when a
    /// file is still being written, once it is closed or [`SETTLE`] passes without news;
    /// and at every rescan.
    pub async fn changed(&mut self) {
        let first = tokio::select! {
            Some(c) = self.events.recv() => c,
            _ = self.rescan.tick() => return,
        };
        let mut settled = first == Change::Settled;
        while let Ok(c) = self.events.try_recv() {
            settled |= c == Change::Settled;
        }
        if settled {
            return;
        }
        let quiet = tokio::time::sleep(SETTLE);
        tokio::pin!(quiet);
        loop {
            tokio::select! {
                c = self.events.recv() => match c {
                    Some(Change::Settled) | None => return,
                    Some(Change::InProgress) => quiet.as_mut().reset(tokio::time::Instant::now() + SETTLE),
                },
                _ = &mut quiet => return,
            }
        }
    }

    /// Brings the store in line with the directory. Returns whether anything changed: an
    /// object, or what is known to be wrong with a file (status reports both).
    pub fn sync(&mut self, store: &mut Store<C>) -> bool {
        let mut files = Vec::new();
        walk(&self.dir, &mut files, 0);
        files.sort();
        let mut changed = false;
        let mut now = BTreeMap::new();
        for path in files {
            let Ok(meta) = fs::metadata(&path) else {
                continue;
            };
            let stamp = Stamp {
                modified: meta.modified().ok(),
                len: meta.len(),
            };
            now.insert(path.clone(), stamp);
            if self.seen.get(&path) == Some(&stamp) {
                continue;
            }
            let source = path.display().to_string();
            let text = match fs::read(&path) {
                Ok(b) => String::from_utf8_lossy(&b).into_owned(),
                Err(e) => {
                    warn!(file = %source, error = %e, "cannot read manifest file");
                    now.remove(&path);
                    continue;
                }
            };
            let parsed = manifest::parse::<C>(&path, &text);
            for (_, e) in &parsed.errors {
                warn!(file = %e.file, document = e.document, object = e.object.as_deref().unwrap_or("-"),
                    field = e.field.as_deref().unwrap_or("-"), "rejected manifest: {}", e.message);
            }
            let keys = store.apply_source(&source, parsed);
            if !keys.is_empty() {
                info!(file = %source, objects = keys.len(), "manifest file applied");
            }
            changed = true;
        }
        for gone in self.seen.keys().filter(|p| !now.contains_key(*p)) {
            let source = gone.display().to_string();
            let keys = store.remove_source(&source);
            info!(file = %source, objects = keys.len(), "manifest file removed");
            changed = true;
        }
        self.seen = now;
        self.synced = true;
        changed
    }
}
