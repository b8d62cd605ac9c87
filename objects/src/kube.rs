//! Kubernetes mode's source: list+watch of each kind a binary reads (kube-rs's watcher:
//! resume from the last resourceVersion, relist on 410, backoff on errors), decoded by the
//! same code as manifest files and applied to the same store.
//!
//! Objects arrive as raw JSON (`DynamicObject`), not as typed objects: a typed watcher fails
//! a whole list when one object does not deserialise, while decoding each object here keeps
//! the last good version of just that object and reports its field, as for a file.
//!
//! A relist (the first list, or after a 410) is buffered and swapped into the store when
//! it completes, so the store never goes through an empty or partial state.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    time::Duration,
};

use futures_util::StreamExt;
use kube::{
    Api, Client,
    api::DynamicObject,
    runtime::{WatchStreamExt, watcher},
};
use serde::Serialize;
use serde_json::Value;
use tokio::{sync::mpsc, task::AbortHandle};
use tracing::{debug, info, warn};

use crate::{catalog::Catalog, manifest, meta::ObjKey, store::Store};

/// What to watch: one kind, at the version the cluster serves, optionally narrowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchSpec<K> {
    pub kind: K,
    pub version: String,
    /// Only this namespace (else the whole cluster).
    pub namespace: Option<String>,
    pub field_selector: Option<String>,
}

impl<K> WatchSpec<K> {
    pub fn new(kind: K, version: &str) -> Self {
        Self {
            kind,
            version: version.to_owned(),
            namespace: None,
            field_selector: None,
        }
    }

    pub fn fields(mut self, selector: impl Into<String>) -> Self {
        self.field_selector = Some(selector.into());
        self
    }
}

type WatchId = u64;

enum Msg {
    Init(WatchId),
    InitApply(WatchId, DynamicObject),
    InitDone(WatchId),
    Apply(WatchId, DynamicObject),
    Delete(WatchId, DynamicObject),
    Failed(WatchId, String),
}

struct Watch<K> {
    spec: WatchSpec<K>,
    task: AbortHandle,
    /// Objects of a relist in progress.
    buffer: Option<Vec<Value>>,
    /// Keys this watch has put in the store.
    keys: BTreeSet<ObjKey<K>>,
    listed: bool,
    last_error: Option<String>,
}

/// How one watch is doing, for `/status`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WatchHealth {
    pub kind: String,
    pub version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field_selector: Option<String>,
    pub listed: bool,
    pub objects: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

pub struct KubeSource<C: Catalog> {
    client: Client,
    tx: mpsc::Sender<Msg>,
    rx: mpsc::Receiver<Msg>,
    pending: VecDeque<Msg>,
    watches: BTreeMap<WatchId, Watch<C::Kind>>,
    next_id: WatchId,
    /// Keys of watches that were dropped, to remove from the store at the next sync.
    dropped: Vec<ObjKey<C::Kind>>,
}

/// The store source of one API object.
fn source_of<K: std::fmt::Display>(key: &ObjKey<K>) -> String {
    format!("kubernetes {key}")
}

/// Where errors about API objects say they came from.
pub const ORIGIN: &str = "kubernetes";

impl<C: Catalog> KubeSource<C> {
    pub fn new(client: Client) -> Self {
        let (tx, rx) = mpsc::channel(1024);
        Self {
            client,
            tx,
            rx,
            pending: VecDeque::new(),
            watches: BTreeMap::new(),
            next_id: 0,
            dropped: Vec::new(),
        }
    }

    /// Starts watching. The watch runs until [`KubeSource::unwatch`] or the source is
    /// dropped.
    pub fn watch(&mut self, spec: WatchSpec<C::Kind>) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        let info = C::info(spec.kind);
        let ar = info.api_resource(&spec.version);
        let api: Api<DynamicObject> = match (&spec.namespace, info.namespaced) {
            (Some(ns), true) => Api::namespaced_with(self.client.clone(), ns, &ar),
            _ => Api::all_with(self.client.clone(), &ar),
        };
        let mut config = watcher::Config::default();
        if let Some(f) = &spec.field_selector {
            config = config.fields(f);
        }
        let tx = self.tx.clone();
        let label = format!("{}", spec.kind);
        let task = tokio::spawn(async move {
            let stream = watcher(api, config).default_backoff();
            futures_util::pin_mut!(stream);
            while let Some(ev) = stream.next().await {
                let msg = match ev {
                    Ok(watcher::Event::Init) => Msg::Init(id),
                    Ok(watcher::Event::InitApply(o)) => Msg::InitApply(id, o),
                    Ok(watcher::Event::InitDone) => Msg::InitDone(id),
                    Ok(watcher::Event::Apply(o)) => Msg::Apply(id, o),
                    Ok(watcher::Event::Delete(o)) => Msg::Delete(id, o),
                    Err(e) => Msg::Failed(id, error_chain(&e)),
                };
                if tx.send(msg).await.is_err() {
                    return;
                }
            }
            debug!(kind = %label, "watch stream ended");
        });
        self.watches.insert(
            id,
            Watch {
                spec,
                task: task.abort_handle(),
                buffer: None,
                keys: BTreeSet::new(),
                listed: false,
                last_error: None,
            },
        );
        id
    }

    /// Stops a watch; what it put in the store goes at the next sync.
    pub fn unwatch(&mut self, id: u64) {
        if let Some(w) = self.watches.remove(&id) {
            w.task.abort();
            self.dropped.extend(w.keys);
        }
    }

    /// Watches exactly the objects `targets` (namespace, name) of `kind`, one watch each
    /// (field selector on the name), starting and stopping watches as the set changes.
    /// Returns whether the set of watches changed.
    pub fn set_targets(
        &mut self,
        kind: C::Kind,
        version: &str,
        targets: &BTreeSet<(String, String)>,
    ) -> bool {
        let current: BTreeMap<(String, String), u64> = self
            .watches
            .iter()
            .filter(|(_, w)| w.spec.kind == kind && is_targeted(&w.spec))
            .map(|(id, w)| {
                let name = w
                    .spec
                    .field_selector
                    .as_deref()
                    .and_then(|f| f.strip_prefix("metadata.name="))
                    .unwrap_or("")
                    .to_owned();
                ((w.spec.namespace.clone().unwrap_or_default(), name), *id)
            })
            .collect();
        let mut changed = false;
        for (target, id) in &current {
            if !targets.contains(target) {
                self.unwatch(*id);
                changed = true;
            }
        }
        for (ns, name) in targets {
            if !current.contains_key(&(ns.clone(), name.clone())) {
                let mut spec =
                    WatchSpec::new(kind, version).fields(format!("metadata.name={name}"));
                spec.namespace = Some(ns.clone());
                self.watch(spec);
                changed = true;
            }
        }
        changed
    }

    /// True once every watch has completed its first list.
    pub fn synced(&self) -> bool {
        self.watches.values().all(|w| w.listed)
    }

    pub fn health(&self) -> Vec<WatchHealth> {
        self.watches
            .values()
            .map(|w| WatchHealth {
                kind: w.spec.kind.to_string(),
                version: w.spec.version.clone(),
                namespace: w.spec.namespace.clone(),
                field_selector: w.spec.field_selector.clone(),
                listed: w.listed,
                objects: w.keys.len(),
                last_error: w.last_error.clone(),
            })
            .collect()
    }

    /// Completes when a watch has news (or a dropped watch left objects to remove).
    pub async fn changed(&mut self) {
        if !self.pending.is_empty() || !self.dropped.is_empty() {
            return;
        }
        if let Some(m) = self.rx.recv().await {
            self.pending.push_back(m);
        }
    }

    /// Applies everything the watches have delivered. Returns whether an object changed.
    pub fn sync(&mut self, store: &mut Store<C>) -> bool {
        let mut changed = false;
        for key in std::mem::take(&mut self.dropped) {
            changed |= !store.remove_source(&source_of(&key)).is_empty();
        }
        let mut listed = false;
        while let Some(m) = self.pending.pop_front().or_else(|| self.rx.try_recv().ok()) {
            listed |= matches!(m, Msg::InitDone(_));
            changed |= self.handle(m, store);
        }
        if listed {
            // A list arrives in key order: the index is rebuilt once what arrived is in
            // (see [`Store::compact`]).
            store.compact();
        }
        changed
    }

    fn handle(&mut self, msg: Msg, store: &mut Store<C>) -> bool {
        let id = match &msg {
            Msg::Init(id)
            | Msg::InitApply(id, _)
            | Msg::InitDone(id)
            | Msg::Apply(id, _)
            | Msg::Delete(id, _)
            | Msg::Failed(id, _) => *id,
        };
        // A message from a watch stopped since.
        let Some(w) = self.watches.get_mut(&id) else {
            return false;
        };
        let kind = w.spec.kind;
        let api_version = C::info(kind).api_version(&w.spec.version);
        match msg {
            Msg::Init(_) => {
                w.buffer = Some(Vec::new());
                false
            }
            Msg::InitApply(_, o) => {
                w.buffer
                    .get_or_insert_with(Vec::new)
                    .push(raw(o, &api_version, kind));
                false
            }
            Msg::InitDone(_) => {
                let items = w.buffer.take().unwrap_or_default();
                let mut seen = BTreeSet::new();
                let mut changed = false;
                for v in items {
                    if let Some(key) = key_of::<C>(kind, &v) {
                        changed |= apply(store, &key, v);
                        seen.insert(key);
                    }
                }
                for gone in w.keys.difference(&seen) {
                    changed |= !store.remove_source(&source_of(gone)).is_empty();
                }
                if !w.listed {
                    info!(kind = %kind, version = %w.spec.version, objects = seen.len(), "initial list received");
                } else {
                    info!(kind = %kind, objects = seen.len(), "relisted");
                }
                w.keys = seen;
                w.listed = true;
                w.last_error = None;
                changed
            }
            Msg::Apply(_, o) => {
                w.last_error = None;
                let v = raw(o, &api_version, kind);
                match key_of::<C>(kind, &v) {
                    Some(key) => {
                        w.keys.insert(key.clone());
                        apply(store, &key, v)
                    }
                    None => false,
                }
            }
            Msg::Delete(_, o) => {
                let v = raw(o, &api_version, kind);
                match key_of::<C>(kind, &v) {
                    Some(key) => {
                        w.keys.remove(&key);
                        let source = source_of(&key);
                        let had_errors = !store.errors_of(&source).is_empty();
                        !store.remove_source(&source).is_empty() || had_errors
                    }
                    None => false,
                }
            }
            Msg::Failed(_, e) => {
                warn!(kind = %kind, version = %w.spec.version, error = %e,
                    "watch failed; retrying with backoff, serving the last snapshot meanwhile");
                w.last_error = Some(e);
                false
            }
        }
    }
}

impl<C: Catalog> Drop for KubeSource<C> {
    fn drop(&mut self) {
        for w in self.watches.values() {
            w.task.abort();
        }
    }
}

fn is_targeted<K>(spec: &WatchSpec<K>) -> bool {
    spec.field_selector
        .as_deref()
        .is_some_and(|f| f.starts_with("metadata.name="))
}

/// The object as JSON, with `apiVersion` and `kind` (list items of built-in kinds come
/// without them).
fn raw<K: std::fmt::Display>(o: DynamicObject, api_version: &str, kind: K) -> Value {
    let mut v = serde_json::to_value(o).unwrap_or(Value::Null);
    if let Some(m) = v.as_object_mut() {
        m.insert("apiVersion".into(), Value::String(api_version.to_owned()));
        m.insert("kind".into(), Value::String(kind.to_string()));
    }
    v
}

fn key_of<C: Catalog>(kind: C::Kind, v: &Value) -> Option<ObjKey<C::Kind>> {
    let name = v.pointer("/metadata/name")?.as_str()?;
    let ns = if C::info(kind).namespaced {
        v.pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default")
    } else {
        ""
    };
    Some(ObjKey::new(kind, ns, name))
}

fn apply<C: Catalog>(store: &mut Store<C>, key: &ObjKey<C::Kind>, v: Value) -> bool {
    let parsed = manifest::from_api::<C>(ORIGIN, v);
    for (_, e) in &parsed.errors {
        warn!(
            object = e.object.as_deref().unwrap_or("-"),
            field = e.field.as_deref().unwrap_or("-"),
            "rejected object from the API server, keeping its last good version: {}",
            e.message
        );
    }
    let source = source_of(key);
    let errors_before = store.errors_of(&source).to_vec();
    let changed = !store.apply_source(&source, parsed).is_empty();
    // A rejected version changes no object, but what /status reports about it.
    changed || store.errors_of(&source) != errors_before.as_slice()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Connects with kube's standard inference: the in-cluster service account, else
/// `KUBECONFIG`, else `~/.kube/config`.
pub async fn client() -> Result<Client, String> {
    let config = kube::Config::infer()
        .await
        .map_err(|e| format!("finding a Kubernetes configuration: {}", error_chain(&e)))?;
    let server = config.cluster_url.to_string();
    let mut config = config;
    // Watches are long requests: the read timeout must not cut them.
    config.read_timeout = Some(Duration::from_secs(330));
    let client = Client::try_from(config)
        .map_err(|e| format!("Kubernetes client for {server}: {}", error_chain(&e)))?;
    info!(%server, "connecting to the Kubernetes API server");
    Ok(client)
}
