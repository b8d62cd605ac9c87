//! The store and the manifest reader with a small catalog of core kinds.

use std::path::Path;

use serde_json::Value;

use crate::{
    catalog::{Catalog, KindInfo},
    core,
    manifest::{self, parse, typed},
    meta::{ObjKey, ObjectMeta},
    store::Store,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
enum K {
    Namespace,
    ConfigMap,
    Pod,
}

impl std::fmt::Display for K {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(Obj::info(*self).kind)
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Obj {
    Namespace(core::Namespace),
    ConfigMap(core::ConfigMap),
    Pod(core::Pod),
}

static CM: KindInfo = KindInfo {
    keeps_status: true,
    ..core::CONFIG_MAP
};

impl Catalog for Obj {
    type Kind = K;
    fn kinds() -> &'static [K] {
        &[K::Namespace, K::ConfigMap, K::Pod]
    }
    fn info(kind: K) -> &'static KindInfo {
        match kind {
            K::Namespace => &core::NAMESPACE,
            K::ConfigMap => &CM,
            K::Pod => &core::POD,
        }
    }
    fn decode(kind: K, value: Value) -> Result<Self, (String, String)> {
        Ok(match kind {
            K::Namespace => Obj::Namespace(typed(value)?),
            K::ConfigMap => {
                let cm: core::ConfigMap = typed(value)?;
                if cm.data.contains_key("invalid") {
                    return Err(("data.invalid".into(), "not allowed".into()));
                }
                Obj::ConfigMap(cm)
            }
            K::Pod => Obj::Pod(typed(value)?),
        })
    }
    fn kind(&self) -> K {
        match self {
            Obj::Namespace(_) => K::Namespace,
            Obj::ConfigMap(_) => K::ConfigMap,
            Obj::Pod(_) => K::Pod,
        }
    }
    fn meta(&self) -> &ObjectMeta {
        match self {
            Obj::Namespace(o) => &o.metadata,
            Obj::ConfigMap(o) => &o.metadata,
            Obj::Pod(o) => &o.metadata,
        }
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Obj::Namespace(o) => &mut o.metadata,
            Obj::ConfigMap(o) => &mut o.metadata,
            Obj::Pod(o) => &mut o.metadata,
        }
    }
    fn spec_fingerprint(&self) -> String {
        match self {
            Obj::Namespace(o) => serde_json::to_string(&o.metadata.labels),
            Obj::ConfigMap(o) => serde_json::to_string(&o.data),
            Obj::Pod(o) => serde_json::to_string(&o.spec),
        }
        .unwrap_or_default()
    }
}

fn cm(name: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: ns}}\ndata: {{{value}: x}}\n"
    )
}

fn apply(store: &mut Store<Obj>, file: &str, text: &str) -> Vec<ObjKey<K>> {
    store.apply_source(file, parse(Path::new(file), text))
}

fn key(name: &str) -> ObjKey<K> {
    ObjKey::new(K::ConfigMap, "ns", name)
}

#[test]
fn generation_bumps_only_on_spec_change() {
    let mut s = Store::new();
    assert_eq!(apply(&mut s, "a", &cm("c", "a")).len(), 1);
    assert_eq!(s.get(&key("c")).unwrap().object.meta().generation, 1);
    assert!(apply(&mut s, "a", &cm("c", "a")).is_empty(), "no-op reload");
    apply(&mut s, "a", &cm("c", "b"));
    assert_eq!(s.get(&key("c")).unwrap().object.meta().generation, 2);
}

#[test]
fn invalid_update_keeps_last_good_version_and_reports() {
    let mut s = Store::new();
    apply(&mut s, "a", &cm("c", "a"));
    assert!(apply(&mut s, "a", &cm("c", "invalid")).is_empty());
    let kept = s.get(&key("c")).expect("last good version kept");
    assert!(matches!(&kept.object, Obj::ConfigMap(c) if c.data.contains_key("a")));
    let errors = s.errors();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].field.as_deref(), Some("data.invalid"));
    assert_eq!(errors[0].object.as_deref(), Some("ConfigMap ns/c"));
    apply(&mut s, "a", &cm("c", "b"));
    assert!(s.errors().is_empty(), "fixing it clears the error");
}

#[test]
fn unreadable_file_keeps_everything_and_removal_deletes() {
    let mut s = Store::new();
    apply(
        &mut s,
        "a",
        &format!("{}---\n{}", cm("c1", "a"), cm("c2", "b")),
    );
    assert_eq!(s.len(), 2);
    apply(&mut s, "a", "{{{");
    assert_eq!(s.len(), 2);
    assert_eq!(s.errors().len(), 1);
    apply(&mut s, "a", &cm("c1", "a"));
    assert_eq!(s.len(), 1, "c2 removed from the file");
    s.remove_source("a");
    assert!(s.is_empty());
    assert!(s.errors().is_empty());
}

#[test]
fn same_object_in_two_files_keeps_the_first() {
    let mut s = Store::new();
    apply(&mut s, "a", &cm("c", "a"));
    apply(&mut s, "b", &cm("c", "b"));
    assert_eq!(&*s.get(&key("c")).unwrap().source, "a");
    assert!(s.errors()[0].message.contains("also defined in a"));
}

#[test]
fn file_order_breaks_timestamp_ties() {
    let mut s = Store::new();
    apply(
        &mut s,
        "a",
        &format!("{}---\n{}", cm("zz", "a"), cm("aa", "b")),
    );
    let zz = s.get(&key("zz")).unwrap();
    let aa = s.get(&key("aa")).unwrap();
    assert!(zz.age_key() < aa.age_key());
}

#[test]
fn kind_list_documents_expand_and_foreign_kinds_are_skipped() {
    let text = "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Namespace, metadata: {name: shop}}\n- {apiVersion: apps/v1, kind: Deployment, metadata: {name: d}}\n- {apiVersion: v1, kind: ConfigMap, metadata: {name: c}}\n";
    let p = parse::<Obj>(Path::new("l.yaml"), text);
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    assert_eq!(p.objects.len(), 2);
    assert_eq!(
        p.objects[1].object.meta().ns(),
        "default",
        "namespace defaults like kubectl's"
    );
    assert_eq!(p.objects[0].object.meta().namespace, None, "cluster-scoped");
}

#[test]
fn a_wrong_type_names_file_document_object_and_field() {
    let text = format!(
        "{}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p, namespace: shop}}\nstatus: {{podIP: nonsense}}\n",
        cm("c", "a")
    );
    let p = parse::<Obj>(Path::new("a.yaml"), &text);
    assert_eq!(p.objects.len(), 1, "the ConfigMap still loads");
    let (key, e) = &p.errors[0];
    assert_eq!(key.as_ref().unwrap().name, "p");
    assert_eq!(e.document, 2);
    assert_eq!(e.field.as_deref(), Some("status.podIP"));
    assert!(
        e.to_string()
            .starts_with("a.yaml document 2: Pod shop/p: field status.podIP:"),
        "{e}"
    );
}

#[test]
fn missing_name_and_broken_yaml_are_reported() {
    let p = parse::<Obj>(
        Path::new("c.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {}\n",
    );
    assert_eq!(p.errors[0].1.field.as_deref(), Some("metadata.name"));
    let p = parse::<Obj>(Path::new("b.yaml"), "kind: [unclosed");
    assert!(p.unreadable);
    assert!(p.errors[0].1.message.contains("invalid YAML"));
}

#[test]
fn api_objects_keep_the_servers_metadata_and_status_moves_alone() {
    let mut s = Store::<Obj>::new();
    let obj = |rv: &str, status: &str, data: &str| {
        serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "namespace": "ns", "generation": 7, "resourceVersion": rv,
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "data": {data: "x"}, "status": {"phase": status}})
    };
    let changed = s.apply_source("k", manifest::from_api("kubernetes", obj("10", "a", "d")));
    assert_eq!(changed.len(), 1);
    let st = s.get(&key("c")).unwrap();
    assert_eq!(st.object.meta().generation, 7, "generation is the server's");
    assert_eq!(st.seq, 0, "ties between API objects fall to namespace/name");
    assert_eq!(st.resource_version(), Some("10"));
    let epoch = s.status_epoch();
    // A status write echoed back: not a change of the object, but the status is kept.
    let changed = s.apply_source("k", manifest::from_api("kubernetes", obj("11", "b", "d")));
    assert!(changed.is_empty());
    assert_eq!(s.status_epoch(), epoch + 1);
    let st = s.get(&key("c")).unwrap();
    assert_eq!(st.resource_version(), Some("11"));
    assert_eq!(st.status().unwrap()["phase"], "b");
    // A bad version from the API keeps the last good one, reported as from the API.
    let changed = s.apply_source(
        "k",
        manifest::from_api("kubernetes", obj("12", "b", "invalid")),
    );
    assert!(changed.is_empty());
    assert!(s.get(&key("c")).is_some());
    assert_eq!(
        s.errors()[0].to_string(),
        "kubernetes: ConfigMap ns/c: field data.invalid: not allowed"
    );
}

/// The directory source reads what the watch reports, without walking the tree, and walks
/// it when a directory comes or goes: files written in place or renamed into place, removed,
/// in a new subdirectory and with it removed, hidden ones ignored; every step matches a
/// fresh read of the whole directory.
#[tokio::test]
async fn the_directory_source_follows_files_and_directories() {
    let dir = tempfile::tempdir().unwrap();
    follows_files_and_directories(dir.path()).await;
}

/// The same with the directory given as a relative path, as `--config-dir conf` gives it:
/// the watch's reports (absolute paths) still count, so no step waits for a rescan.
#[tokio::test]
async fn the_directory_source_follows_a_relative_directory() {
    let dir = tempfile::tempdir_in(".").unwrap();
    let cwd = std::env::current_dir().unwrap();
    let relative = dir.path().strip_prefix(&cwd).unwrap();
    assert!(relative.is_relative());
    follows_files_and_directories(relative).await;
}

async fn follows_files_and_directories(d: &std::path::Path) {
    use crate::dir::DirSource;
    let mut src = DirSource::<Obj>::new(d, std::time::Duration::from_secs(3600));
    let mut store = Store::new();
    src.sync(&mut store);
    let names = |s: &Store<Obj>| -> Vec<String> {
        let mut v: Vec<String> = s.iter().map(|o| o.object.meta().name.to_string()).collect();
        v.sort();
        v
    };
    let fresh = || {
        let mut s = Store::new();
        DirSource::<Obj>::once(d).sync(&mut s);
        names(&s)
    };
    // Each step changes the directory, waits for the watch, syncs, and compares.
    type Step<'a> = (&'a str, Box<dyn Fn() + 'a>, Vec<&'a str>);
    let steps: Vec<Step> = vec![
        (
            "a file written",
            Box::new(|| std::fs::write(d.join("a.yaml"), cm("a", "k")).unwrap()),
            vec!["a"],
        ),
        (
            "a file renamed into place",
            Box::new(|| {
                std::fs::write(d.join(".b.yaml.tmp"), cm("b", "k")).unwrap();
                std::fs::rename(d.join(".b.yaml.tmp"), d.join("b.yaml")).unwrap();
            }),
            vec!["a", "b"],
        ),
        (
            "a hidden file",
            Box::new(|| std::fs::write(d.join(".c.yaml"), cm("c", "k")).unwrap()),
            vec!["a", "b"],
        ),
        (
            "a new subdirectory with a file",
            Box::new(|| {
                std::fs::create_dir(d.join(".sub.tmp")).unwrap();
                std::fs::write(d.join(".sub.tmp/e.yaml"), cm("e", "k")).unwrap();
                std::fs::rename(d.join(".sub.tmp"), d.join("sub")).unwrap();
            }),
            vec!["a", "b", "e"],
        ),
        (
            "a file removed",
            Box::new(|| std::fs::remove_file(d.join("a.yaml")).unwrap()),
            vec!["b", "e"],
        ),
        (
            "the subdirectory removed",
            Box::new(|| std::fs::remove_dir_all(d.join("sub")).unwrap()),
            vec!["b"],
        ),
    ];
    for (what, change, want) in steps {
        change();
        // The watch's report, then a sync; a change can take more than one report.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let _ =
                tokio::time::timeout(std::time::Duration::from_millis(200), src.changed()).await;
            src.sync(&mut store);
            if names(&store) == want || tokio::time::Instant::now() > deadline {
                break;
            }
        }
        assert_eq!(names(&store), want, "after {what}");
        assert_eq!(names(&store), fresh(), "after {what}: a fresh read agrees");
    }
}

/// Applies `text` as the directory source does: unchanged documents are not parsed again.
fn apply_reusing(store: &mut Store<Obj>, file: &str, text: &str) -> Vec<ObjKey<K>> {
    let previous = store.unchanged_documents(file);
    let parsed = manifest::parse_reusing(Path::new(file), text, &previous);
    store.apply_source(file, parsed)
}

/// A `kind: List` of two ConfigMaps, `la` and `lb`, `lb` with `value`.
fn list(value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: List\nitems:\n- {{apiVersion: v1, kind: ConfigMap, metadata: {{name: la, namespace: ns}}, data: {{x: x}}}}\n- {{apiVersion: v1, kind: ConfigMap, metadata: {{name: lb, namespace: ns}}, data: {{{value}: x}}}}\n"
    )
}

/// What a store holds, to compare two stores: objects with their generation, and errors.
fn contents(s: &Store<Obj>) -> (Vec<(String, Obj)>, Vec<String>) {
    let objects = s
        .iter()
        .map(|o| (o.key().to_string(), o.object.clone()))
        .collect();
    let errors = s.errors().iter().map(|e| e.to_string()).collect();
    (objects, errors)
}

#[test]
fn unchanged_documents_keep_their_records_and_a_changed_one_is_read() {
    let mut s = Store::new();
    let docs = |b: &str| format!("{}---\n{}---\n{}", cm("a", "x"), cm("b", b), cm("c", "z"));
    apply_reusing(&mut s, "f", &docs("y"));
    let before: Vec<_> = ["a", "b", "c"]
        .map(|n| s.get(&key(n)).unwrap().clone())
        .into();
    let parsed = manifest::parse_reusing::<Obj>(
        Path::new("f"),
        &docs("changed"),
        &s.unchanged_documents("f"),
    );
    assert_eq!(parsed.kept.len(), 2, "a and c are not parsed again");
    assert_eq!(parsed.objects.len(), 1);
    assert_eq!(s.apply_source("f", parsed), vec![key("b")]);
    assert!(std::sync::Arc::ptr_eq(
        &before[0],
        s.get(&key("a")).unwrap()
    ));
    assert!(std::sync::Arc::ptr_eq(
        &before[2],
        s.get(&key("c")).unwrap()
    ));
    let b = s.get(&key("b")).unwrap();
    assert!(matches!(&b.object, Obj::ConfigMap(c) if c.data.contains_key("changed")));
    assert_eq!(b.object.meta().generation, 2);
    // Removing a document removes its object; the others stay kept.
    let two = format!("{}---\n{}", cm("a", "x"), cm("c", "z"));
    assert_eq!(apply_reusing(&mut s, "f", &two), vec![key("b")]);
    assert!(std::sync::Arc::ptr_eq(
        &before[0],
        s.get(&key("a")).unwrap()
    ));
    assert!(s.get(&key("b")).is_none());
}

#[test]
fn reading_documents_again_or_not_gives_the_same_store() {
    // Each step is a whole file; the store fed by the reusing reader must always equal
    // one fed by whole-file parses, duplicate keys and invalid documents included.
    let steps = [
        format!("{}---\n{}", cm("a", "x"), cm("b", "y")),
        // b changes to a's key: the first of the two (a) wins, b's document is refused.
        format!("{}---\n{}", cm("a", "x"), cm("a", "y")),
        // The first document now takes c; the second (unchanged) is a again and wins a.
        format!("{}---\n{}", cm("c", "x"), cm("a", "y")),
        // The first takes a back: it comes first, so the unchanged second is refused.
        format!("{}---\n{}", cm("a", "x"), cm("a", "y")),
        // An invalid document keeps the last good version of its object.
        format!(
            "# leading comment\n{}---\n{}",
            cm("a", "invalid"),
            cm("b", "y")
        ),
        format!("{}--- \n{}\n---\n", cm("a", "x"), cm("b", "y")),
        // Broken YAML: nothing changes, and the error names the file's line.
        format!(
            "{}---\n{}---\nkind: [unclosed\n",
            cm("a", "x"),
            cm("b", "y")
        ),
        format!("{}---\n{}", cm("a", "x"), cm("b", "y")),
        // A document end marker: the file is parsed whole.
        format!("{}...\n---\n{}", cm("a", "w"), cm("b", "y")),
        format!("{}---\n{}", cm("a", "x"), cm("b", "y")),
        // A header of comments before the first `---`: errors give the same document
        // numbers (the header is no document of its own).
        format!(
            "# licence\n\n---\n{}---\n{}",
            cm("a", "invalid"),
            cm("b", "y")
        ),
        format!(
            "# licence\n\n---\n{}---\n{}",
            cm("a", "x"),
            cm("b", "invalid")
        ),
        // A List whose second item turns invalid keeps that item's last good version and
        // its error, also when the file is read again unchanged.
        format!("{}---\n{}", cm("a", "x"), list("y")),
        format!("{}---\n{}", cm("a", "x"), list("invalid")),
        format!("{}---\n{}", cm("a", "x"), list("invalid")),
        format!("{}---\n{}", cm("a", "z"), list("invalid")),
    ];
    let (mut reusing, mut whole) = (Store::new(), Store::new());
    for (i, text) in steps.iter().enumerate() {
        let a = apply_reusing(&mut reusing, "f", text);
        let b = apply(&mut whole, "f", text);
        assert_eq!(a, b, "step {i}: changed keys");
        assert_eq!(contents(&reusing), contents(&whole), "step {i}: contents");
    }
    let broken = manifest::parse_reusing::<Obj>(
        Path::new("f"),
        &steps[6],
        &reusing.unchanged_documents("f"),
    );
    assert!(broken.unreadable);
    assert!(
        broken.errors[0].1.message.contains("line 11"),
        "{:?}",
        broken.errors
    );
}

#[test]
fn a_service_keeps_its_cluster_ips_in_one_list() {
    let spec = |text: &str| serde_json::from_str::<core::ServiceSpec>(text).unwrap();
    fn ips(s: &core::ServiceSpec) -> Vec<&str> {
        s.cluster_ips.iter().map(|i| &**i).collect()
    }
    assert_eq!(ips(&spec(r#"{"clusterIP": "10.0.0.1"}"#)), ["10.0.0.1"]);
    let both = spec(r#"{"clusterIP": "10.0.0.1", "clusterIPs": ["10.0.0.1", "fd00::1"]}"#);
    assert_eq!(ips(&both), ["10.0.0.1", "fd00::1"]);
    assert_eq!(
        ips(&spec(
            r#"{"clusterIP": "10.0.0.2", "clusterIPs": ["fd00::1"]}"#
        )),
        ["fd00::1", "10.0.0.2"]
    );
    assert_eq!(ips(&spec(r#"{"clusterIP": "None"}"#)), ["None"]);
    assert!(ips(&spec("{}")).is_empty());
    // Written back as the API server writes it: clusterIP is the first of clusterIPs.
    assert_eq!(
        serde_json::to_value(&both).unwrap(),
        serde_json::json!({"ports": [], "clusterIP": "10.0.0.1", "clusterIPs": ["10.0.0.1", "fd00::1"]})
    );
    assert_eq!(spec(&serde_json::to_string(&both).unwrap()), both);
}

#[test]
fn compacting_the_index_keeps_every_object_and_its_order() {
    let mut s = Store::new();
    for i in 0..300 {
        apply(&mut s, &format!("f{i:03}"), &cm(&format!("c{i:03}"), "a"));
    }
    let before: Vec<_> = s.kind(K::ConfigMap).cloned().collect();
    s.compact();
    let after: Vec<_> = s.kind(K::ConfigMap).cloned().collect();
    assert_eq!(before.len(), 300);
    assert_eq!(after.len(), 300);
    assert!(
        before
            .iter()
            .zip(&after)
            .all(|(a, b)| std::sync::Arc::ptr_eq(a, b))
    );
    assert!(std::sync::Arc::ptr_eq(
        s.get(&key("c123")).unwrap(),
        &before[123]
    ));
    // The index still takes changes.
    apply(&mut s, "f500", &cm("c050x", "a"));
    s.remove_source("f010");
    let names: Vec<_> = s
        .kind(K::ConfigMap)
        .map(|o| o.object.meta().name.to_string())
        .collect();
    assert_eq!(names.len(), 300);
    assert_eq!(names[49..51], ["c050", "c050x"]);
    assert!(s.get(&key("c010")).is_none());
}
