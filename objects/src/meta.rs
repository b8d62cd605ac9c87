//! Object identity and metadata, shared by every kind.

use std::{
    borrow::Borrow,
    collections::{BTreeMap, HashSet},
    fmt,
    hash::{Hash, Hasher},
    ops::Deref,
    sync::{Arc, Mutex},
};

use serde::{Deserialize, Serialize};

/// Identity of an object: kind, namespace (empty for cluster-scoped kinds) and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ObjKey<K> {
    pub kind: K,
    pub namespace: String,
    pub name: String,
}

impl<K> ObjKey<K> {
    pub fn new(kind: K, namespace: &str, name: &str) -> Self {
        Self {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }
}

impl<K: fmt::Display> fmt::Display for ObjKey<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// The metadata Cedille reads. `resourceVersion` is deliberately absent: it changes on
/// every write (status included), and the store keeps it beside the object so that a
/// status write does not look like a new version of the object.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "MetaWire", into = "MetaWire")]
pub struct ObjectMeta {
    pub name: Box<str>,
    /// Shared between the objects of a namespace (see [`SharedStr::interned`]).
    pub namespace: Option<SharedStr>,
    pub labels: Labels,
    /// From the API server; for manifest files the store starts it at 1 and bumps it when
    /// the spec changes, as the API server would.
    pub generation: i64,
    /// RFC 3339. From the API server, or from the manifest, or set by the store when a
    /// manifest object first appears. Shared: the objects a store reads in one pass all
    /// get the same one.
    pub creation_timestamp: Option<SharedStr>,
    /// The uid and annotations, in one box: manifest objects seldom have either, few
    /// objects are read for them, and every stored object carries this struct.
    rare: Option<Box<Rare>>,
}

#[derive(Clone, Debug, Default, PartialEq)]
struct Rare {
    uid: Option<Box<str>>,
    annotations: Labels,
}

impl ObjectMeta {
    pub fn ns(&self) -> &str {
        self.namespace.as_deref().unwrap_or("")
    }

    pub fn uid(&self) -> Option<&str> {
        self.rare.as_ref().and_then(|r| r.uid.as_deref())
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.rare.as_ref().and_then(|r| r.annotations.get(key))
    }
}

impl Rare {
    fn new(uid: Option<Box<str>>, annotations: Labels) -> Option<Box<Rare>> {
        (uid.is_some() || !annotations.is_empty()).then(|| Box::new(Rare { uid, annotations }))
    }
}

/// [`ObjectMeta`] as it is written.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MetaWire {
    name: Box<str>,
    /// Interned as it is read (see [`SharedStr::interned`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    namespace: Option<SharedStr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    uid: Option<Box<str>>,
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    labels: Labels,
    /// Without `kubectl.kubernetes.io/last-applied-configuration`, which nothing here
    /// reads: `kubectl apply` puts a copy of the whole object there.
    #[serde(
        default,
        skip_serializing_if = "Labels::is_empty",
        deserialize_with = "annotations"
    )]
    annotations: Labels,
    #[serde(default)]
    generation: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    creation_timestamp: Option<Box<str>>,
}

/// A shared string behind a thin pointer: 8 bytes where `Arc<str>` takes 16. Every stored
/// object carries two (its namespace and its creation time, which the store gives all
/// the manifest objects of one pass), and such words decide the size class of a record
/// (`cargo xtask bench routes`, memory per route).
#[derive(Clone)]
pub struct SharedStr(Arc<Box<str>>);

impl SharedStr {
    /// The one copy of a name: a cluster has a few namespaces and every namespaced object
    /// names one; references name a handful of groups and kinds. Only for values that
    /// repeat: a value held once costs a table slot and a larger allocation than a
    /// `Box<str>`. Deserialised `SharedStr`s are interned.
    ///
    /// Before the table grows past twice its size at the last sweep, names nothing else
    /// holds are dropped: it stays within about twice the most names live at once.
    pub fn interned(name: &str) -> Self {
        Self::intern(std::borrow::Cow::Borrowed(name))
    }

    fn intern(name: std::borrow::Cow<'_, str>) -> Self {
        let mut guard = INTERNED.lock().unwrap_or_else(|e| e.into_inner());
        let table = guard.get_or_insert_with(Interned::default);
        if let Some(shared) = table.set.get(&*name) {
            return shared.clone();
        }
        if table.set.len() >= 2 * table.swept + 16 {
            table.set.retain(|k| Arc::strong_count(&k.0) > 1);
            table.set.shrink_to_fit();
            table.swept = table.set.len();
        }
        let shared = SharedStr::from(name.into_owned());
        table.set.insert(shared.clone());
        shared
    }
}

static INTERNED: Mutex<Option<Interned>> = Mutex::new(None);

#[derive(Default)]
struct Interned {
    set: HashSet<SharedStr>,
    /// Its size after the last sweep.
    swept: usize,
}

/// Looked up by `&str` in the table: hashed and compared as the string it holds.
impl Borrow<str> for SharedStr {
    fn borrow(&self) -> &str {
        self
    }
}

impl Deref for SharedStr {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Default for SharedStr {
    fn default() -> Self {
        SharedStr::interned("")
    }
}

impl From<&str> for SharedStr {
    fn from(s: &str) -> Self {
        SharedStr(Arc::new(s.into()))
    }
}

impl From<String> for SharedStr {
    fn from(s: String) -> Self {
        SharedStr(Arc::new(s.into_boxed_str()))
    }
}

impl PartialEq for SharedStr {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for SharedStr {}

impl PartialOrd for SharedStr {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SharedStr {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (**self).cmp(&**other)
    }
}

impl Hash for SharedStr {
    fn hash<H: Hasher>(&self, h: &mut H) {
        (**self).hash(h)
    }
}

impl fmt::Debug for SharedStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl fmt::Display for SharedStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self)
    }
}

impl Serialize for SharedStr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self)
    }
}

impl<'de> Deserialize<'de> for SharedStr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(SharedStr::intern(
            std::borrow::Cow::<'de, str>::deserialize(d)?,
        ))
    }
}

impl From<MetaWire> for ObjectMeta {
    fn from(w: MetaWire) -> Self {
        ObjectMeta {
            name: w.name,
            namespace: w.namespace,
            labels: w.labels,
            generation: w.generation,
            creation_timestamp: w.creation_timestamp.map(|t| t.into_string().into()),
            rare: Rare::new(w.uid, w.annotations),
        }
    }
}

impl From<ObjectMeta> for MetaWire {
    fn from(m: ObjectMeta) -> Self {
        let rare = m.rare.map(|r| *r).unwrap_or_default();
        MetaWire {
            name: m.name,
            namespace: m.namespace,
            uid: rare.uid,
            labels: m.labels,
            annotations: rare.annotations,
            generation: m.generation,
            creation_timestamp: m.creation_timestamp.as_deref().map(Box::from),
        }
    }
}

/// The annotation `kubectl apply` keeps its copy of the object in.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

fn annotations<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Labels, D::Error> {
    let all = Labels::deserialize(d)?;
    if all.get(LAST_APPLIED).is_none() {
        return Ok(all);
    }
    Ok(all.iter().filter(|(k, _)| *k != LAST_APPLIED).collect())
}

pub use cedille_common::rfc3339;

/// Labels or annotations: string pairs sorted by key, in one list. Most objects carry
/// none or one (an EndpointSlice's `kubernetes.io/service-name`), and a `BTreeMap` would
/// give even one pair a node with room for eleven (over 500 bytes per object). Behind a
/// thin pointer, none when empty: every stored object carries labels, most have none.
/// Keys are shared (a cluster uses a few dozen label keys on all its objects).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Labels(Option<Box<Pairs>>);

type Pairs = Box<[(SharedStr, Box<str>)]>;

impl Labels {
    fn pairs(&self) -> &[(SharedStr, Box<str>)] {
        self.0.as_deref().map_or(&[], |p| p)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        let pairs = self.pairs();
        pairs
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| &*pairs[i].1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs().iter().map(|(k, v)| (&**k, &**v))
    }

    pub fn is_empty(&self) -> bool {
        self.pairs().is_empty()
    }

    pub fn len(&self) -> usize {
        self.pairs().len()
    }

    /// An owned map, for callers that add to it.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Labels {
    /// Later pairs win over earlier ones with the same key, as in a map.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let map: BTreeMap<String, String> = iter
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        if map.is_empty() {
            return Self(None);
        }
        Self(Some(Box::new(
            map.into_iter()
                .map(|(k, v)| (SharedStr::interned(&k), v.into_boxed_str()))
                .collect(),
        )))
    }
}

impl Serialize for Labels {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Labels {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // `null` reads as empty, as the API server treats it.
        let map = Option::<BTreeMap<String, String>>::deserialize(d)?;
        Ok(map.unwrap_or_default().into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_read_and_write_as_a_map() {
        let l: Labels = serde_json::from_str(r#"{"b": "2", "a": "1", "c": ""}"#).unwrap();
        assert_eq!(l.get("a"), Some("1"));
        assert_eq!(l.get("b"), Some("2"));
        assert_eq!(l.get("c"), Some(""));
        assert_eq!(l.get("d"), None);
        assert_eq!(l.len(), 3);
        assert_eq!(
            serde_json::to_string(&l).unwrap(),
            r#"{"a":"1","b":"2","c":""}"#
        );
        let n: Labels = serde_json::from_str("null").unwrap();
        assert!(n.is_empty());
        let dup: Labels = [("k", "1"), ("k", "2")].into_iter().collect();
        assert_eq!(dup.get("k"), Some("2"));
        assert_eq!(dup.to_map().len(), 1);
    }

    #[test]
    fn kubectls_copy_of_the_object_is_not_kept() {
        let m: ObjectMeta = serde_json::from_str(&format!(
            r#"{{"name": "a", "annotations": {{"{LAST_APPLIED}": "{{\"kind\": \"Pod\"}}", "x": "1"}}}}"#
        ))
        .unwrap();
        assert_eq!(m.annotation(LAST_APPLIED), None);
        assert_eq!(m.annotation("x"), Some("1"));
        let none: ObjectMeta =
            serde_json::from_str(r#"{"name": "a", "annotations": null}"#).unwrap();
        assert_eq!(
            none,
            ObjectMeta {
                name: "a".into(),
                ..Default::default()
            }
        );
    }

    #[test]
    fn keys_display_like_kubectl_names() {
        assert_eq!(ObjKey::new("Pod", "shop", "a").to_string(), "Pod shop/a");
        assert_eq!(
            ObjKey::new("Namespace", "", "shop").to_string(),
            "Namespace shop"
        );
    }

    #[test]
    fn namespaces_are_shared_and_the_table_forgets_unused_ones() {
        let m = |text: &str| serde_json::from_str::<ObjectMeta>(text).unwrap();
        let a = m(r#"{"name": "a", "namespace": "interned-shop"}"#);
        let b = m(r#"{"name": "b", "namespace": "interned-shop"}"#);
        let (na, nb) = (a.namespace.unwrap(), b.namespace.unwrap());
        assert_eq!(&*na, "interned-shop");
        assert!(Arc::ptr_eq(&na.0, &nb.0), "one copy per namespace");
        // Names nobody holds any more are swept: a thousand passing namespaces leave the
        // table within twice what is live.
        for i in 0..1000 {
            drop(SharedStr::interned(&format!("passing-{i}")));
        }
        let again = SharedStr::interned("interned-shop");
        assert!(Arc::ptr_eq(&again.0, &na.0), "a live name stays shared");
        // Other tests running beside this one may hold a few names of their own.
        let table = INTERNED.lock().unwrap().as_ref().unwrap().set.len();
        assert!(table < 100, "{table} names in the table");
        assert_eq!(Arc::strong_count(&na.0), 4, "three holders and the table");
        assert_eq!(
            serde_json::to_value(ObjectMeta {
                name: "a".into(),
                namespace: Some(again),
                ..Default::default()
            })
            .unwrap(),
            serde_json::json!({"name": "a", "namespace": "interned-shop", "generation": 0})
        );
    }

    #[test]
    fn empty_labels_hold_nothing() {
        let none: Labels = std::iter::empty::<(String, String)>().collect();
        assert_eq!(none, Labels::default());
        assert!(none.0.is_none());
        let one: Labels = [("k", "v")].into_iter().collect();
        assert_eq!(one.iter().collect::<Vec<_>>(), [("k", "v")]);
    }
}
