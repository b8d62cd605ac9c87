//! Standalone mode: a directory of manifests, watched. A change to any file re-reads that
//! file only; everything else in the store stays as it was.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    time::SystemTime,
};

use tracing::{info, warn};

use crate::{manifest, store::Store};

#[derive(Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

pub struct FileProvider {
    dir: PathBuf,
    seen: BTreeMap<PathBuf, Stamp>,
}

/// Manifest files are `*.yaml`, `*.yml` and `*.json`, hidden files and directories aside.
fn is_manifest(p: &Path) -> bool {
    let hidden = p
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'));
    !hidden
        && matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        )
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>, depth: usize) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let hidden = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        match e.file_type() {
            Ok(t) if t.is_dir() && !hidden && depth < 8 => walk(&p, out, depth + 1),
            Ok(_) if is_manifest(&p) => out.push(p),
            _ => {}
        }
    }
}

impl FileProvider {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            seen: BTreeMap::new(),
        }
    }

    /// Brings the store in line with the directory. Returns whether anything changed: an
    /// object, or what is known to be wrong with a file (status reports both).
    pub fn sync(&mut self, store: &mut Store) -> bool {
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
            let parsed = manifest::parse(&path, &text);
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
            changed |= !keys.is_empty();
        }
        self.seen = now;
        changed
    }
}
