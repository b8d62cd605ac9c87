//! Standalone mode's source: a directory of manifests, watched. A change to any file
//! re-reads that file only; everything else in the store stays as it was.

use std::{
    collections::{BTreeMap, BTreeSet},
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
    events: mpsc::UnboundedReceiver<(Change, Vec<PathBuf>)>,
    /// Paths reported changed since the last sync: read alone, without walking the tree.
    pending: BTreeSet<PathBuf>,
    /// The next sync walks the whole tree (the first, every rescan, a directory changed).
    full: bool,
    _watcher: Option<notify::RecommendedWatcher>,
    /// `None` for a one-off read ([`DirSource::once`], which may run outside a runtime).
    rescan: Option<tokio::time::Interval>,
    synced: bool,
    _kinds: PhantomData<fn() -> C>,
}

/// `dir` as the watch reports paths under it: joined to the working directory if relative.
fn absolute(dir: PathBuf) -> PathBuf {
    if dir.is_absolute() {
        return dir;
    }
    std::env::current_dir().map_or(dir.clone(), |cwd| cwd.join(dir))
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
        // The watch reports absolute paths (it joins a relative directory to the working
        // directory), so the source keeps the directory the same way: with a relative
        // `--config-dir`, every reported path would otherwise fall outside it and only the
        // periodic rescan would see changes.
        let dir = absolute(dir.into());
        let (tx, events) = mpsc::unbounded_channel();
        let watcher = cedille_common::watch_dir(&dir, tx);
        // The first sync walks the tree anyway: the first rescan is one period away.
        let mut rescan = tokio::time::interval_at(tokio::time::Instant::now() + rescan, rescan);
        rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            dir,
            seen: BTreeMap::new(),
            events,
            pending: BTreeSet::new(),
            full: true,
            _watcher: watcher,
            rescan: Some(rescan),
            synced: false,
            _kinds: PhantomData,
        }
    }

    /// A source that is read on demand only (no watch, no timer): `--check-config`.
    pub fn once(dir: impl Into<PathBuf>) -> Self {
        let (_, events) = mpsc::unbounded_channel();
        Self {
            dir: dir.into(),
            seen: BTreeMap::new(),
            events,
            pending: BTreeSet::new(),
            full: true,
            _watcher: None,
            rescan: None,
            synced: false,
            _kinds: PhantomData,
        }
    }

    /// True once the directory has been read.
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// Returns when the directory should be read again: at once when a file was written
    /// and closed, renamed into place or removed (whatever else arrived meanwhile is read in
    /// the same pass, so a burst costs one pass per translation, not one per file); when a
    /// file is still being written, once it is closed or [`SETTLE`] passes without news;
    /// and at every rescan.
    pub async fn changed(&mut self) {
        let (first, paths) = tokio::select! {
            Some(e) = self.events.recv() => e,
            _ = async {
                match &mut self.rescan {
                    Some(r) => {
                        r.tick().await;
                    }
                    None => std::future::pending().await,
                }
            } => {
                self.full = true;
                return;
            }
        };
        self.pending.extend(paths);
        let mut settled = first == Change::Settled;
        while let Ok((c, paths)) = self.events.try_recv() {
            settled |= c == Change::Settled;
            self.pending.extend(paths);
        }
        if settled {
            return;
        }
        let quiet = tokio::time::sleep(SETTLE);
        tokio::pin!(quiet);
        loop {
            tokio::select! {
                e = self.events.recv() => match e {
                    Some((Change::Settled, paths)) => {
                        self.pending.extend(paths);
                        return;
                    }
                    Some((Change::InProgress, paths)) => {
                        self.pending.extend(paths);
                        quiet.as_mut().reset(tokio::time::Instant::now() + SETTLE);
                    }
                    None => return,
                },
                _ = &mut quiet => return,
            }
        }
    }

    /// Whether a reported path asks for a walk of the tree: a directory (created, renamed
    /// or removed), rather than a manifest file or something to ignore.
    fn needs_walk(&self, p: &Path) -> bool {
        if is_manifest(p) && !p.is_dir() {
            return false;
        }
        if is_hidden(p) {
            return false;
        }
        p.is_dir() || self.seen.keys().any(|s| s.starts_with(p) && s != p)
    }

    /// Whether `p` is a file the walk would read: under the directory, no hidden
    /// component, not too deep.
    fn in_tree(&self, p: &Path) -> bool {
        let Ok(rel) = p.strip_prefix(&self.dir) else {
            return false;
        };
        let parts: Vec<_> = rel.components().collect();
        is_manifest(p)
            && parts.len() <= 9
            && parts
                .iter()
                .all(|c| !c.as_os_str().to_string_lossy().starts_with('.'))
    }

    /// Reads one manifest file into the store (`stamp` is what it was read at).
    fn load(&mut self, path: &Path, stamp: Stamp, store: &mut Store<C>) -> bool {
        let source = path.display().to_string();
        let text = match fs::read(path) {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) => {
                warn!(file = %source, error = %e, "cannot read manifest file");
                return false;
            }
        };
        // Documents unchanged since the last read keep their objects without a parse.
        let previous = store.unchanged_documents(&source);
        let parsed = manifest::parse_reusing::<C>(path, &text, &previous);
        drop(previous);
        for (_, e) in &parsed.errors {
            warn!(file = %e.file, document = e.document, object = e.object.as_deref().unwrap_or("-"),
                field = e.field.as_deref().unwrap_or("-"), "rejected manifest: {}", e.message);
        }
        let keys = store.apply_source(&source, parsed);
        if !keys.is_empty() {
            info!(file = %source, objects = keys.len(), "manifest file applied");
        }
        self.seen.insert(path.to_owned(), stamp);
        true
    }

    fn forget(&mut self, path: &Path, store: &mut Store<C>) -> bool {
        if self.seen.remove(path).is_none() {
            return false;
        }
        let source = path.display().to_string();
        let keys = store.remove_source(&source);
        info!(file = %source, objects = keys.len(), "manifest file removed");
        true
    }

    /// Brings the store in line with the directory. Returns whether anything changed: an
    /// object, or what is known to be wrong with a file (status reports both). Only the
    /// paths the watch reported are read, unless a walk of the tree is due.
    pub fn sync(&mut self, store: &mut Store<C>) -> bool {
        let pending = std::mem::take(&mut self.pending);
        if self.full || !self.synced || pending.iter().any(|p| self.needs_walk(p)) {
            self.full = false;
            return self.sync_all(store);
        }
        let mut changed = false;
        for path in pending {
            if !self.in_tree(&path) {
                continue;
            }
            match fs::metadata(&path) {
                Ok(meta) if meta.is_file() => {
                    let stamp = Stamp {
                        modified: meta.modified().ok(),
                        len: meta.len(),
                    };
                    if self.seen.get(&path) != Some(&stamp) {
                        changed |= self.load(&path, stamp, store);
                    }
                }
                _ => changed |= self.forget(&path, store),
            }
        }
        changed
    }

    /// Walks the whole tree.
    fn sync_all(&mut self, store: &mut Store<C>) -> bool {
        let mut files = Vec::new();
        walk(&self.dir, &mut files, 0);
        files.sort();
        let mut changed = false;
        let mut present = BTreeSet::new();
        for path in files {
            let Ok(meta) = fs::metadata(&path) else {
                continue;
            };
            let stamp = Stamp {
                modified: meta.modified().ok(),
                len: meta.len(),
            };
            present.insert(path.clone());
            if self.seen.get(&path) == Some(&stamp) {
                continue;
            }
            if !self.load(&path, stamp, store) {
                present.remove(&path);
                continue;
            }
            changed = true;
        }
        let gone: Vec<PathBuf> = self
            .seen
            .keys()
            .filter(|p| !present.contains(*p))
            .cloned()
            .collect();
        for p in gone {
            changed |= self.forget(&p, store);
        }
        if !self.synced {
            // The first walk read every file.
            store.compact();
        }
        self.synced = true;
        changed
    }
}
