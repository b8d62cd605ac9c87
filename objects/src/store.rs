//! The typed object store: every object a binary knows, keyed by kind/namespace/name, with
//! the source it came from (a manifest file, or one object of the API server). Both sources
//! fill it through [`Store::apply_source`]; nothing that reads it can tell which one did.
//!
//! The keep-last-good rule: when a new version of an object does not decode or validate,
//! the store keeps the last good version and records why. For manifest files the store also
//! plays the API server's part: it owns `metadata.generation` (bumped when the spec changes)
//! and sets `creationTimestamp` when an object first appears; objects loaded in one pass
//! get a sequence number in file order, which breaks ties between equal timestamps.

use std::{
    collections::{BTreeMap, BTreeSet},
    ops::Bound,
    sync::Arc,
    time::SystemTime,
};

use serde_json::Value;

use crate::{
    catalog::Catalog,
    manifest::{ManifestError, Parsed},
    meta::{ObjKey, rfc3339},
};

#[derive(Debug)]
pub struct Stored<C> {
    pub object: Arc<C>,
    /// Order of first appearance in manifest files; breaks creation-time ties. Zero for
    /// API objects, whose ties the spec breaks by namespace and name.
    pub seq: u64,
    /// The file (or API object) this came from (shared by the objects of one source).
    pub source: Arc<str>,
    /// The status the API server holds, for kinds whose status the binary writes.
    pub status: Option<Arc<Value>>,
    /// The API server's `resourceVersion` of what is stored (status writes change it).
    pub resource_version: Option<String>,
    /// A digest of [`Catalog::spec_fingerprint`]: whether the spec changed is all the
    /// store asks of it, and a whole serialised spec per object would double its memory.
    fingerprint: u64,
}

impl<C> Clone for Stored<C> {
    fn clone(&self) -> Self {
        Self {
            object: self.object.clone(),
            seq: self.seq,
            source: self.source.clone(),
            status: self.status.clone(),
            resource_version: self.resource_version.clone(),
            fingerprint: self.fingerprint,
        }
    }
}

impl<C: Catalog> Stored<C> {
    /// The order used for "oldest first" precedence.
    pub fn age_key(&self) -> (&str, u64) {
        (
            self.object
                .meta()
                .creation_timestamp
                .as_deref()
                .unwrap_or(""),
            self.seq,
        )
    }
}

#[derive(Debug)]
struct SourceState<K> {
    keys: BTreeSet<ObjKey<K>>,
    errors: Vec<ManifestError>,
}

impl<K> Default for SourceState<K> {
    fn default() -> Self {
        Self {
            keys: BTreeSet::new(),
            errors: Vec::new(),
        }
    }
}

#[derive(Debug)]
pub struct Store<C: Catalog> {
    objects: BTreeMap<ObjKey<C::Kind>, Stored<C>>,
    sources: BTreeMap<String, SourceState<C::Kind>>,
    next_seq: u64,
    status_epoch: u64,
    /// Per kind, how many changes its objects have seen (translation caches key on them).
    kind_epochs: BTreeMap<C::Kind, u64>,
}

impl<C: Catalog> Default for Store<C> {
    fn default() -> Self {
        Self {
            objects: BTreeMap::new(),
            sources: BTreeMap::new(),
            next_seq: 0,
            status_epoch: 0,
            kind_epochs: BTreeMap::new(),
        }
    }
}

impl<C: Catalog> Store<C> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, key: &ObjKey<C::Kind>) -> Option<&Stored<C>> {
        self.objects.get(key)
    }

    pub fn get_obj(&self, kind: C::Kind, namespace: &str, name: &str) -> Option<&C> {
        self.objects
            .get(&ObjKey::new(kind, namespace, name))
            .map(|s| s.object.as_ref())
    }

    /// Objects of one kind, in key order.
    pub fn kind(&self, kind: C::Kind) -> impl Iterator<Item = &Stored<C>> {
        let start = ObjKey::new(kind, "", "");
        self.objects
            .range((Bound::Included(start), Bound::Unbounded))
            .take_while(move |(k, _)| k.kind == kind)
            .map(|(_, v)| v)
    }

    /// Every object, in key order.
    pub fn iter(&self) -> impl Iterator<Item = &Stored<C>> {
        self.objects.values()
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Grows whenever a kept status changes without the object changing (the API server's
    /// echo of a status write, or another writer's).
    pub fn status_epoch(&self) -> u64 {
        self.status_epoch
    }

    /// Grows whenever an object of `kind` is added, changed or removed.
    pub fn kind_epoch(&self, kind: C::Kind) -> u64 {
        self.kind_epochs.get(&kind).copied().unwrap_or(0)
    }

    /// Every current error, by source.
    pub fn errors(&self) -> Vec<ManifestError> {
        self.sources
            .values()
            .flat_map(|f| f.errors.iter().cloned())
            .collect()
    }

    /// The current errors of one source.
    pub fn errors_of(&self, source: &str) -> &[ManifestError] {
        self.sources
            .get(source)
            .map_or(&[], |s| s.errors.as_slice())
    }

    /// Replaces what `source` defines with the parse result. Returns the keys whose object
    /// changed (status-only changes are not included: see [`Store::status_epoch`]).
    pub fn apply_source(&mut self, source: &str, parsed: Parsed<C>) -> Vec<ObjKey<C::Kind>> {
        let now = rfc3339(SystemTime::now());
        let mut changed = Vec::new();
        let state = self.sources.entry(source.to_owned()).or_default();
        state.errors = parsed.errors.iter().map(|(_, e)| e.clone()).collect();
        if parsed.unreadable {
            // Keep everything the source defined before: we cannot tell what it means now.
            return changed;
        }
        let old_keys = std::mem::take(&mut state.keys);
        let mut new_keys = BTreeSet::new();
        // Invalid documents keep their object's last good version, if this source had one.
        for (key, _) in &parsed.errors {
            if let Some(k) = key
                && old_keys.contains(k)
            {
                new_keys.insert(k.clone());
            }
        }
        let mut conflicts = Vec::new();
        let shared_source: Arc<str> = Arc::from(source);
        for decoded in parsed.objects {
            let mut object = decoded.object;
            let key = ObjKey::new(object.kind(), object.meta().ns(), &object.meta().name);
            if let Some(existing) = self.objects.get(&key)
                && &*existing.source != source
            {
                conflicts.push(ManifestError {
                    file: source.to_owned(),
                    document: 0,
                    object: Some(key.to_string()),
                    field: None,
                    message: format!(
                        "also defined in {}; keeping that definition",
                        existing.source
                    ),
                });
                continue;
            }
            if !new_keys.insert(key.clone()) {
                conflicts.push(ManifestError {
                    file: source.to_owned(),
                    document: 0,
                    object: Some(key.to_string()),
                    field: None,
                    message: "defined twice in this file; keeping the first".into(),
                });
                continue;
            }
            let fingerprint = digest(&object.spec_fingerprint());
            let old = self.objects.get(&key);
            let seq = if parsed.from_api {
                0
            } else {
                match old {
                    Some(old) => {
                        let g = old.object.meta().generation;
                        let g = if old.fingerprint == fingerprint {
                            g
                        } else {
                            g + 1
                        };
                        let created = old.object.meta().creation_timestamp.clone();
                        let meta = object.meta_mut();
                        meta.generation = g;
                        if meta.creation_timestamp.is_none() {
                            meta.creation_timestamp = created;
                        }
                        old.seq
                    }
                    None => {
                        self.next_seq += 1;
                        let meta = object.meta_mut();
                        meta.generation = 1;
                        if meta.creation_timestamp.is_none() {
                            meta.creation_timestamp = Some(now.clone());
                        }
                        self.next_seq
                    }
                }
            };
            match self.objects.get_mut(&key) {
                Some(old) if *old.object == object => {
                    // Same object: only what the API server keeps beside it may move.
                    if old.status != decoded.status {
                        old.status = decoded.status;
                        self.status_epoch += 1;
                    }
                    old.resource_version = decoded.resource_version;
                }
                _ => {
                    self.objects.insert(
                        key.clone(),
                        Stored {
                            object: Arc::new(object),
                            seq,
                            source: shared_source.clone(),
                            status: decoded.status,
                            resource_version: decoded.resource_version,
                            fingerprint,
                        },
                    );
                    changed.push(key);
                }
            }
        }
        for gone in old_keys.difference(&new_keys) {
            if self.objects.get(gone).is_some_and(|s| &*s.source == source) {
                self.objects.remove(gone);
                changed.push(gone.clone());
            }
        }
        for key in &changed {
            *self.kind_epochs.entry(key.kind).or_default() += 1;
        }
        let state = self.sources.get_mut(source).expect("inserted above");
        state.keys = new_keys;
        state.errors.extend(conflicts);
        changed
    }

    /// Forgets a source (a deleted file or API object) and everything it defined.
    pub fn remove_source(&mut self, source: &str) -> Vec<ObjKey<C::Kind>> {
        if !self.sources.contains_key(source) {
            return Vec::new();
        }
        let changed = self.apply_source(source, Parsed::default());
        self.sources.remove(source);
        changed
    }
}

/// A 64-bit digest of a serialised spec (`DefaultHasher::new()` has fixed keys, so equal
/// specs always agree). Two different specs colliding, which would miss one generation
/// bump, has a chance of about one in 2^64 per change.
fn digest(serialised: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    serialised.hash(&mut h);
    h.finish()
}
