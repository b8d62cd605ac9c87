//! The object store: every object the gateway knows, keyed by kind/namespace/name, with
//! where it came from. Both providers (files, Kubernetes watch) fill it; translation reads it.
//!
//! Like the API server, the store keeps the last good version of an object when a new
//! version is invalid, owns `metadata.generation` (bumped when the spec changes) and sets
//! `creationTimestamp` when an object first appears. Objects loaded in one pass also get a
//! sequence number in file order, which breaks ties between equal timestamps.

use std::{
    collections::{BTreeMap, BTreeSet},
    ops::Bound,
    sync::Arc,
    time::SystemTime,
};

use crate::{
    manifest::{ManifestError, Parsed},
    model::{Kind, ObjKey, Object},
};

#[derive(Clone, Debug)]
pub struct Stored {
    pub object: Arc<Object>,
    /// Order of first appearance; breaks creation-time ties.
    pub seq: u64,
    /// The file (or `kube` watch) the object came from.
    pub source: String,
    fingerprint: String,
}

impl Stored {
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

#[derive(Default, Debug)]
struct FileState {
    keys: BTreeSet<ObjKey>,
    errors: Vec<ManifestError>,
}

#[derive(Default, Debug)]
pub struct Store {
    objects: BTreeMap<ObjKey, Stored>,
    files: BTreeMap<String, FileState>,
    next_seq: u64,
}

impl Store {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, key: &ObjKey) -> Option<&Stored> {
        self.objects.get(key)
    }

    pub fn get_obj(&self, kind: Kind, namespace: &str, name: &str) -> Option<&Object> {
        self.objects
            .get(&ObjKey::new(kind, namespace, name))
            .map(|s| s.object.as_ref())
    }

    /// Objects of one kind, in key order.
    pub fn kind(&self, kind: Kind) -> impl Iterator<Item = &Stored> {
        let start = ObjKey::new(kind, "", "");
        self.objects
            .range((Bound::Included(start), Bound::Unbounded))
            .take_while(move |(k, _)| k.kind == kind)
            .map(|(_, v)| v)
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Every current manifest error, by file.
    pub fn errors(&self) -> Vec<ManifestError> {
        self.files
            .values()
            .flat_map(|f| f.errors.iter().cloned())
            .collect()
    }

    /// Replaces what `source` defines with the parse result. Returns the keys that changed.
    pub fn apply_source(&mut self, source: &str, parsed: Parsed) -> Vec<ObjKey> {
        let now = rfc3339(SystemTime::now());
        let mut changed = Vec::new();
        let state = self.files.entry(source.to_owned()).or_default();
        state.errors = parsed.errors.iter().map(|(_, e)| e.clone()).collect();
        if parsed.unreadable {
            // Keep everything the file defined before: we cannot tell what it means now.
            return changed;
        }
        let old_keys = std::mem::take(&mut state.keys);
        let mut new_keys = BTreeSet::new();
        // Invalid documents keep their object's last good version, if this file had one.
        for (key, _) in &parsed.errors {
            if let Some(k) = key
                && old_keys.contains(k)
            {
                new_keys.insert(k.clone());
            }
        }
        let mut conflicts = Vec::new();
        for mut object in parsed.objects {
            let key = object.key();
            if let Some(existing) = self.objects.get(&key)
                && existing.source != source
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
            let fingerprint = object.spec_fingerprint();
            let (seq, generation, created) = match self.objects.get(&key) {
                Some(old) => {
                    let g = old.object.meta().generation;
                    let g = if old.fingerprint == fingerprint {
                        g
                    } else {
                        g + 1
                    };
                    (old.seq, g, old.object.meta().creation_timestamp.clone())
                }
                None => {
                    self.next_seq += 1;
                    (self.next_seq, 1, None)
                }
            };
            let meta = object.meta_mut();
            meta.generation = generation;
            if meta.creation_timestamp.is_none() {
                meta.creation_timestamp = Some(created.unwrap_or_else(|| now.clone()));
            }
            let object = Arc::new(object);
            let unchanged = self
                .objects
                .get(&key)
                .is_some_and(|old| old.object == object);
            if !unchanged {
                self.objects.insert(
                    key.clone(),
                    Stored {
                        object,
                        seq,
                        source: source.to_owned(),
                        fingerprint,
                    },
                );
                changed.push(key);
            }
        }
        for gone in old_keys.difference(&new_keys) {
            if self.objects.get(gone).is_some_and(|s| s.source == source) {
                self.objects.remove(gone);
                changed.push(gone.clone());
            }
        }
        let state = self.files.get_mut(source).expect("inserted above");
        state.keys = new_keys;
        state.errors.extend(conflicts);
        changed
    }

    /// Forgets a source (a deleted file) and everything it defined.
    pub fn remove_source(&mut self, source: &str) -> Vec<ObjKey> {
        let changed = self.apply_source(source, Parsed::default());
        self.files.remove(source);
        changed
    }
}

/// Formats a time as RFC 3339 in UTC with second precision, as Kubernetes does.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
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
    use crate::manifest::parse;
    use std::path::Path;

    fn route(name: &str, path: &str) -> String {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: ns}}\nspec:\n  rules:\n  - matches: [{{path: {{type: PathPrefix, value: {path}}}}}]\n"
        )
    }

    fn apply(store: &mut Store, file: &str, text: &str) -> Vec<ObjKey> {
        store.apply_source(file, parse(Path::new(file), text))
    }

    #[test]
    fn generation_bumps_only_on_spec_change() {
        let mut s = Store::new();
        assert_eq!(apply(&mut s, "a", &route("r", "/a")).len(), 1);
        let key = ObjKey::new(Kind::HttpRoute, "ns", "r");
        assert_eq!(s.get(&key).unwrap().object.meta().generation, 1);
        assert!(
            apply(&mut s, "a", &route("r", "/a")).is_empty(),
            "no-op reload"
        );
        apply(&mut s, "a", &route("r", "/b"));
        assert_eq!(s.get(&key).unwrap().object.meta().generation, 2);
    }

    #[test]
    fn invalid_update_keeps_last_good_version_and_reports() {
        let mut s = Store::new();
        apply(&mut s, "a", &route("r", "/a"));
        let changed = apply(&mut s, "a", &route("r", "no-slash"));
        assert!(changed.is_empty());
        let key = ObjKey::new(Kind::HttpRoute, "ns", "r");
        assert!(s.get(&key).is_some(), "last good version kept");
        let errors = s.errors();
        assert_eq!(errors.len(), 1);
        assert_eq!(
            errors[0].field.as_deref(),
            Some("spec.rules[0].matches[0].path.value")
        );
        // Fixing it clears the error.
        apply(&mut s, "a", &route("r", "/c"));
        assert!(s.errors().is_empty());
    }

    #[test]
    fn unreadable_file_keeps_everything_and_removal_deletes() {
        let mut s = Store::new();
        apply(
            &mut s,
            "a",
            &format!("{}---\n{}", route("r1", "/a"), route("r2", "/b")),
        );
        assert_eq!(s.len(), 2);
        apply(&mut s, "a", "{{{");
        assert_eq!(s.len(), 2);
        assert_eq!(s.errors().len(), 1);
        apply(&mut s, "a", &route("r1", "/a"));
        assert_eq!(s.len(), 1, "r2 removed from the file");
        s.remove_source("a");
        assert!(s.is_empty());
        assert!(s.errors().is_empty());
    }

    #[test]
    fn same_object_in_two_files_keeps_the_first() {
        let mut s = Store::new();
        apply(&mut s, "a", &route("r", "/a"));
        apply(&mut s, "b", &route("r", "/b"));
        assert_eq!(
            s.get(&ObjKey::new(Kind::HttpRoute, "ns", "r"))
                .unwrap()
                .source,
            "a"
        );
        assert!(s.errors()[0].message.contains("also defined in a"));
    }

    #[test]
    fn file_order_breaks_timestamp_ties() {
        let mut s = Store::new();
        apply(
            &mut s,
            "a",
            &format!("{}---\n{}", route("zz", "/a"), route("aa", "/b")),
        );
        let zz = s.get(&ObjKey::new(Kind::HttpRoute, "ns", "zz")).unwrap();
        let aa = s.get(&ObjKey::new(Kind::HttpRoute, "ns", "aa")).unwrap();
        assert!(zz.age_key() < aa.age_key());
    }

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_709_251_199);
        assert_eq!(rfc3339(t), "2024-02-29T23:59:59Z");
    }
}
