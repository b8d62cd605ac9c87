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
    borrow::Borrow,
    collections::{BTreeMap, BTreeSet, HashMap},
    ops::Bound,
    sync::Arc,
    time::SystemTime,
};

use serde_json::Value;

use crate::{
    catalog::Catalog,
    manifest::{Decoded, Kept, ManifestError, Parsed},
    meta::{ObjKey, rfc3339},
};

/// One object as the store holds it: a single shared record (the store's index, its
/// source's list and translation caches all point at it, so an object costs one
/// allocation, not a copy per place that knows it).
#[derive(Debug)]
pub struct Stored<C: Catalog> {
    pub object: C,
    /// Order of first appearance in manifest files; breaks creation-time ties. Zero for
    /// API objects, whose ties the spec breaks by namespace and name.
    pub seq: u64,
    /// The file (or API object) this came from (shared by the objects of one source).
    /// An `Arc<String>`, not `Arc<str>`: a thin pointer keeps the record a size class
    /// smaller.
    pub source: Arc<String>,
    /// What the API server keeps beside the object; boxed, as manifest objects have none
    /// of it (and it makes every record a size class smaller).
    api: Option<Box<ApiState>>,
    /// A digest of [`Catalog::spec_fingerprint`]: whether the spec changed is all the
    /// store asks of it, and a whole serialised spec per object would double its memory.
    fingerprint: u64,
}

/// What the API server keeps beside an object.
#[derive(Debug, PartialEq)]
struct ApiState {
    /// The status the API server holds, for kinds whose status the binary writes.
    status: Option<Arc<Value>>,
    /// The API server's `resourceVersion` of what is stored (status writes change it).
    resource_version: Option<Box<str>>,
}

impl ApiState {
    fn new(status: Option<Arc<Value>>, resource_version: Option<String>) -> Option<Box<Self>> {
        (status.is_some() || resource_version.is_some()).then(|| {
            Box::new(ApiState {
                status,
                resource_version: resource_version.map(String::into_boxed_str),
            })
        })
    }
}

impl<C: Catalog> Stored<C> {
    /// The status the API server holds, for kinds whose status the binary writes.
    pub fn status(&self) -> Option<&Arc<Value>> {
        self.api.as_ref().and_then(|a| a.status.as_ref())
    }

    /// The API server's `resourceVersion` of what is stored (status writes change it).
    pub fn resource_version(&self) -> Option<&str> {
        self.api
            .as_ref()
            .and_then(|a| a.resource_version.as_deref())
    }

    pub fn key(&self) -> ObjKey<C::Kind> {
        let (ns, name) = self.name_key();
        ObjKey::new(self.object.kind(), ns, name)
    }

    /// `(namespace, name)`, borrowed: the key's order within a kind.
    pub fn name_key(&self) -> (&str, &str) {
        let meta = self.object.meta();
        (meta.ns(), &meta.name)
    }

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

/// An index entry: the record, ordered and found by its key, which it reads from the
/// object itself (a separate key would copy the namespace and name of every object).
#[derive(Debug)]
struct Entry<C: Catalog>(Arc<Stored<C>>);

/// A key, whether owned ([`ObjKey`]) or read from a stored object, so that the index can
/// be searched with either.
trait KeyView<K> {
    fn view(&self) -> (K, &str, &str);
}

impl<K: Copy> KeyView<K> for ObjKey<K> {
    fn view(&self) -> (K, &str, &str) {
        (self.kind, &self.namespace, &self.name)
    }
}

impl<C: Catalog> KeyView<C::Kind> for Entry<C> {
    fn view(&self) -> (C::Kind, &str, &str) {
        Entry::view_of(&self.0)
    }
}

impl<K: Ord> PartialEq for dyn KeyView<K> + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.view() == other.view()
    }
}
impl<K: Ord> Eq for dyn KeyView<K> + '_ {}
impl<K: Ord> PartialOrd for dyn KeyView<K> + '_ {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<K: Ord> Ord for dyn KeyView<K> + '_ {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.view().cmp(&other.view())
    }
}

impl<C: Catalog> PartialEq for Entry<C> {
    fn eq(&self, other: &Self) -> bool {
        self.view() == other.view()
    }
}
impl<C: Catalog> Eq for Entry<C> {}
impl<C: Catalog> PartialOrd for Entry<C> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<C: Catalog> Ord for Entry<C> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.view().cmp(&other.view())
    }
}
impl<C: Catalog> Entry<C> {
    fn view_of(s: &Stored<C>) -> (C::Kind, &str, &str) {
        let (ns, name) = s.name_key();
        (s.object.kind(), ns, name)
    }
}

impl<'a, C: Catalog> Borrow<dyn KeyView<C::Kind> + 'a> for Entry<C> {
    fn borrow(&self) -> &(dyn KeyView<C::Kind> + 'a) {
        self
    }
}

#[derive(Debug)]
struct SourceState<C: Catalog> {
    /// What this source defines, in key order. Only this source changes these objects (a
    /// key another source holds is refused as a conflict), so the list stays current
    /// between two reads of the source. Beside each, the digest of the document it came
    /// from (0: none), for [`Store::unchanged_documents`].
    objects: Vec<(Arc<Stored<C>>, u64)>,
    errors: Vec<ManifestError>,
}

impl<C: Catalog> Default for SourceState<C> {
    fn default() -> Self {
        Self {
            objects: Vec::new(),
            errors: Vec::new(),
        }
    }
}

#[derive(Debug)]
pub struct Store<C: Catalog> {
    objects: BTreeSet<Entry<C>>,
    sources: BTreeMap<String, SourceState<C>>,
    next_seq: u64,
    status_epoch: u64,
    /// Per kind, how many changes its objects have seen (translation caches key on them).
    kind_epochs: BTreeMap<C::Kind, u64>,
}

impl<C: Catalog> Default for Store<C> {
    fn default() -> Self {
        Self {
            objects: BTreeSet::new(),
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

    /// Rebuilds the index with full nodes. Objects inserted one by one in (roughly) key
    /// order, as a directory's files are first read or a Kubernetes list arrives, leave
    /// most nodes of the index half empty (a full node splits in two); built from the
    /// sorted whole, nodes are full: about 10 bytes less per object. For after a bulk
    /// load.
    pub fn compact(&mut self) {
        self.objects = std::mem::take(&mut self.objects).into_iter().collect();
    }

    pub fn get(&self, key: &ObjKey<C::Kind>) -> Option<&Arc<Stored<C>>> {
        self.objects.get(key as &dyn KeyView<C::Kind>).map(|e| &e.0)
    }

    pub fn get_obj(&self, kind: C::Kind, namespace: &str, name: &str) -> Option<&C> {
        self.get(&ObjKey::new(kind, namespace, name))
            .map(|s| &s.object)
    }

    /// Objects of one kind, in key order.
    pub fn kind(&self, kind: C::Kind) -> impl Iterator<Item = &Arc<Stored<C>>> {
        let start = ObjKey::new(kind, "", "");
        self.objects
            .range::<dyn KeyView<C::Kind>, _>((
                Bound::Included(&start as &dyn KeyView<C::Kind>),
                Bound::Unbounded,
            ))
            .take_while(move |e| e.0.object.kind() == kind)
            .map(|e| &e.0)
    }

    /// Every object, in key order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Stored<C>>> {
        self.objects.iter().map(|e| &e.0)
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

    /// The objects of `source` by the digest of the document each came from: what
    /// [`crate::manifest::parse_reusing`] need not parse again.
    pub fn unchanged_documents(&self, source: &str) -> HashMap<u64, Arc<Stored<C>>> {
        self.sources.get(source).map_or_else(HashMap::new, |s| {
            s.objects
                .iter()
                .filter(|(_, d)| *d != 0)
                .map(|(o, d)| (*d, o.clone()))
                .collect()
        })
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
        let now = crate::meta::SharedStr::from(rfc3339(SystemTime::now()));
        let mut changed = Vec::new();
        let state = self.sources.entry(source.to_owned()).or_default();
        state.errors = parsed.errors.iter().map(|(_, e)| e.clone()).collect();
        if parsed.unreadable {
            // Keep everything the source defined before: we cannot tell what it means now.
            return changed;
        }
        let old = std::mem::take(&mut state.objects);
        let defined_before = |k: &ObjKey<C::Kind>| {
            old.binary_search_by(|(s, _)| Entry::view_of(s).cmp(&k.view()))
                .is_ok()
        };
        // Each key this source defines now, with the digest of its document.
        let mut keys = BTreeMap::new();
        // Invalid documents keep their object's last good version, if this source had one.
        for (key, _) in &parsed.errors {
            if let Some(k) = key
                && defined_before(k)
            {
                keys.insert(k.clone(), 0);
            }
        }
        let mut conflicts = Vec::new();
        let shared_source = Arc::new(source.to_owned());
        for item in in_document_order(parsed.objects, parsed.kept) {
            let decoded = match item {
                Item::Kept(kept) => {
                    // Its record stays as it is, unless an earlier document of this pass
                    // took the key.
                    match keys.entry(kept.stored.key()) {
                        std::collections::btree_map::Entry::Occupied(taken) => {
                            conflicts.push(ManifestError {
                                file: source.to_owned(),
                                document: 0,
                                object: Some(taken.key().to_string()),
                                field: None,
                                message: "defined twice in this file; keeping the first".into(),
                            });
                        }
                        std::collections::btree_map::Entry::Vacant(free) => {
                            free.insert(kept.digest);
                        }
                    }
                    continue;
                }
                Item::New(decoded) => decoded,
            };
            let digest_of_document = decoded.digest.unwrap_or(0);
            let mut object = decoded.object;
            let key = ObjKey::new(object.kind(), object.meta().ns(), &object.meta().name);
            let existing = self.get(&key).cloned();
            if let Some(existing) = &existing
                && *existing.source != source
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
            if keys.contains_key(&key) {
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
            let seq = if parsed.from_api {
                0
            } else {
                match &existing {
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
            let api = ApiState::new(decoded.status, decoded.resource_version);
            let record = match existing {
                Some(old) if old.object == object => {
                    // Same object: only what the API server keeps beside it may move.
                    if old.api == api {
                        None
                    } else {
                        if old.status() != api.as_ref().and_then(|a| a.status.as_ref()) {
                            self.status_epoch += 1;
                        }
                        Some(Stored {
                            object,
                            seq: old.seq,
                            source: old.source.clone(),
                            api,
                            fingerprint: old.fingerprint,
                        })
                    }
                }
                _ => {
                    changed.push(key.clone());
                    Some(Stored {
                        object,
                        seq,
                        source: shared_source.clone(),
                        api,
                        fingerprint,
                    })
                }
            };
            if let Some(record) = record {
                self.objects.replace(Entry(Arc::new(record)));
            }
            keys.insert(key, digest_of_document);
        }
        for gone in old
            .iter()
            .map(|(s, _)| s.key())
            .filter(|k| !keys.contains_key(k))
        {
            if self.get(&gone).is_some_and(|s| *s.source == source) {
                self.objects.remove(&gone as &dyn KeyView<C::Kind>);
                changed.push(gone);
            }
        }
        drop(old);
        for key in &changed {
            *self.kind_epochs.entry(key.kind).or_default() += 1;
        }
        // Kept until the source is read again: no growth slack (a hundred files of 90
        // objects held 2 KB of it each).
        let mut objects: Vec<_> = keys
            .iter()
            .filter_map(|(k, d)| {
                self.get(k)
                    .filter(|s| *s.source == source)
                    .map(|s| (s.clone(), *d))
            })
            .collect();
        objects.shrink_to_fit();
        let state = self.sources.get_mut(source).expect("inserted above");
        state.objects = objects;
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

/// A parsed document's object, new or kept.
enum Item<C: Catalog> {
    New(Decoded<C>),
    Kept(Kept<C>),
}

/// Decoded and kept objects merged in document order (both lists are in it), so that the
/// first of two documents defining one key wins whichever of them changed.
fn in_document_order<C: Catalog>(
    decoded: Vec<Decoded<C>>,
    kept: Vec<Kept<C>>,
) -> impl Iterator<Item = Item<C>> {
    let mut decoded = decoded.into_iter().peekable();
    let mut kept = kept.into_iter().peekable();
    std::iter::from_fn(move || match (decoded.peek(), kept.peek()) {
        (Some(d), Some(k)) if k.document < d.document => kept.next().map(Item::Kept),
        (Some(_), _) => decoded.next().map(Item::New),
        (None, _) => kept.next().map(Item::Kept),
    })
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
