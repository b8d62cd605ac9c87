//! The agent's view of the cluster in standalone mode: Pods, Namespaces, Services and
//! EndpointSlices read from a directory of manifests. A document that does not parse or
//! validate is reported with its file, document, object and field, and the object's last
//! good version (if any) stays in effect; nothing else is affected.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use serde::{Deserialize, de::DeserializeOwned};
use serde_json::Value;

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Meta {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub uid: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pod {
    pub metadata: Meta,
    #[serde(default)]
    pub spec: PodSpec,
    #[serde(default)]
    pub status: PodStatus,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    #[serde(default)]
    pub node_name: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    #[serde(default, rename = "podIP")]
    pub pod_ip: Option<IpAddr>,
    #[serde(default, rename = "podIPs")]
    pub pod_ips: Vec<PodIp>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct PodIp {
    pub ip: IpAddr,
}

impl Pod {
    /// The pod's addresses, `podIPs` and `podIP` merged without duplicates.
    pub fn ips(&self) -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> = self.status.pod_ips.iter().map(|p| p.ip).collect();
        if let Some(ip) = self.status.pod_ip
            && !out.contains(&ip)
        {
            out.insert(0, ip);
        }
        out
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct Namespace {
    pub metadata: Meta,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    pub metadata: Meta,
    #[serde(default)]
    pub spec: ServiceSpec,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// "None" for headless Services.
    #[serde(default, rename = "clusterIP")]
    pub cluster_ip: Option<String>,
    #[serde(default, rename = "clusterIPs")]
    pub cluster_ips: Vec<String>,
    #[serde(default)]
    pub ports: Vec<ServicePort>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    #[serde(default)]
    pub name: Option<String>,
    pub port: u16,
    #[serde(default)]
    pub protocol: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSlice {
    pub metadata: Meta,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    #[serde(default)]
    pub ports: Vec<EndpointPort>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Endpoint {
    pub addresses: Vec<IpAddr>,
    #[serde(default)]
    pub conditions: Conditions,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Conditions {
    /// Absent means ready, as in Kubernetes.
    #[serde(default)]
    pub ready: Option<bool>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct EndpointPort {
    #[serde(default)]
    pub name: Option<String>,
    pub port: u16,
}

/// One object of a kind the agent reads.
#[derive(Clone, Debug)]
pub enum Object {
    Pod(Box<Pod>),
    Namespace(Namespace),
    Service(Service),
    EndpointSlice(EndpointSlice),
}

impl Object {
    fn meta(&self) -> &Meta {
        match self {
            Object::Pod(o) => &o.metadata,
            Object::Namespace(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
        }
    }
}

/// `Kind namespace/name` (or `Kind name` for cluster-scoped kinds).
pub type ObjectKey = String;

pub use cedille_common::ManifestError;

/// Kinds the agent reads; any other kind in the directory is ignored (it may be meant for
/// the gateway).
fn kind_of(v: &Value) -> Option<&str> {
    let kind = v.get("kind")?.as_str()?;
    matches!(kind, "Pod" | "Namespace" | "Service" | "EndpointSlice").then_some(kind)
}

fn typed<T: DeserializeOwned>(v: Value) -> Result<T, (Option<String>, String)> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        ((path != ".").then_some(path), e.into_inner().to_string())
    })
}

fn key_of(kind: &str, v: &Value) -> Option<ObjectKey> {
    let m = v.get("metadata")?;
    let name = m.get("name")?.as_str()?;
    Some(match m.get("namespace").and_then(Value::as_str) {
        Some(ns) if kind != "Namespace" => format!("{kind} {ns}/{name}"),
        _ if kind == "Namespace" => format!("{kind} {name}"),
        _ => format!("{kind} default/{name}"),
    })
}

/// A file's objects that loaded, and the documents that did not (with their object key
/// when it could be read).
pub type Parsed = (
    Vec<(ObjectKey, Object)>,
    Vec<(Option<ObjectKey>, ManifestError)>,
);

/// Parses one file's text: the objects that loaded and the documents that did not (with
/// their object key when it could be read).
pub fn parse(file: &Path, text: &str) -> Parsed {
    let file_s = file.display().to_string();
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    for (i, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let err = |object: Option<String>, field: Option<String>, message: String| ManifestError {
            file: file_s.clone(),
            document: i + 1,
            object,
            field,
            message,
        };
        let v = match Value::deserialize(de) {
            Ok(v) => v,
            Err(e) => {
                // The rest of the file cannot be trusted either.
                errors.push((None, err(None, None, format!("invalid YAML: {e}"))));
                break;
            }
        };
        let Some(kind) = kind_of(&v) else { continue };
        let kind = kind.to_owned();
        let key = key_of(&kind, &v);
        let obj = match kind.as_str() {
            "Pod" => typed::<Pod>(v).map(|p| Object::Pod(Box::new(p))),
            "Namespace" => typed(v).map(Object::Namespace),
            "Service" => typed(v).map(Object::Service),
            _ => typed(v).map(Object::EndpointSlice),
        };
        let checked = obj.and_then(|o| validate(&o).map(|()| o));
        match (checked, key) {
            (Ok(o), Some(k)) => objects.push((k, o)),
            (Ok(_), None) => errors.push((
                None,
                err(None, Some("metadata.name".into()), "missing".into()),
            )),
            (Err((field, message)), key) => errors.push((key.clone(), err(key, field, message))),
        }
    }
    (objects, errors)
}

fn validate(o: &Object) -> Result<(), (Option<String>, String)> {
    let m = o.meta();
    if m.name.is_empty() {
        return Err((Some("metadata.name".into()), "must not be empty".into()));
    }
    if let Object::Pod(p) = o {
        match &p.metadata.uid {
            Some(uid)
                if !uid.is_empty() && uid.chars().all(|c| c.is_ascii_hexdigit() || c == '-') => {}
            _ => {
                return Err((
                    Some("metadata.uid".into()),
                    "required: a UID (hex digits and dashes) names the pod's cgroup".into(),
                ));
            }
        }
    }
    Ok(())
}

/// Every file's objects and errors, as last read.
#[derive(Default)]
pub struct Store {
    files: BTreeMap<PathBuf, FileState>,
}

#[derive(Default)]
struct FileState {
    stamp: Option<(std::time::SystemTime, u64)>,
    objects: BTreeMap<ObjectKey, Object>,
    errors: Vec<ManifestError>,
}

impl Store {
    /// Re-reads the files of `dir` that changed. Returns whether anything changed.
    pub fn sync(&mut self, dir: &Path) -> bool {
        let mut paths = Vec::new();
        walk(dir, &mut paths, 0);
        let mut changed = false;
        let before = self.files.len();
        self.files.retain(|p, _| paths.contains(p));
        changed |= self.files.len() != before;
        for path in paths {
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            let stamp = meta.modified().ok().map(|m| (m, meta.len()));
            let state = self.files.entry(path.clone()).or_default();
            if stamp.is_some() && state.stamp == stamp {
                continue;
            }
            changed = true;
            state.stamp = stamp;
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    state.errors = vec![ManifestError {
                        file: path.display().to_string(),
                        document: 0,
                        object: None,
                        field: None,
                        message: format!("cannot read: {e}"),
                    }];
                    continue;
                }
            };
            let (objects, errors) = parse(&path, &text);
            let mut next: BTreeMap<ObjectKey, Object> = objects.into_iter().collect();
            // A rejected object keeps its last good version.
            for (key, _) in &errors {
                if let Some(k) = key
                    && let Some(prev) = state.objects.get(k)
                {
                    next.entry(k.clone()).or_insert_with(|| prev.clone());
                }
            }
            for (_, e) in &errors {
                tracing::warn!(file = %e.file, document = e.document, object = e.object.as_deref().unwrap_or("-"),
                    field = e.field.as_deref().unwrap_or("-"), "rejected manifest: {}", e.message);
            }
            state.objects = next;
            state.errors = errors.into_iter().map(|(_, e)| e).collect();
        }
        changed
    }

    pub fn objects(&self) -> impl Iterator<Item = &Object> {
        self.files.values().flat_map(|f| f.objects.values())
    }

    pub fn errors(&self) -> Vec<ManifestError> {
        self.files.values().flat_map(|f| f.errors.clone()).collect()
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>, depth: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        match e.file_type() {
            Ok(t) if t.is_dir() && depth < 8 => walk(&p, out, depth + 1),
            Ok(_)
                if matches!(
                    p.extension().and_then(|x| x.to_str()),
                    Some("yaml" | "yml" | "json")
                ) =>
            {
                out.push(p)
            }
            _ => {}
        }
    }
    out.sort();
}

/// What the agent needs from the objects: this node's pods with their enrollment decision,
/// and Service addresses resolved to endpoints.
#[derive(Default, Debug, Clone)]
pub struct Mesh {
    pub pods: Vec<PodView>,
    /// (cluster IP, port) → ready endpoint addresses.
    pub services: BTreeMap<SocketAddr, Vec<SocketAddr>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub ips: Vec<IpAddr>,
    /// Why the pod is (or is not) meshed.
    pub enroll: Result<(), String>,
}

pub const MESH_LABEL: &str = "cedille.io/mesh";

impl Mesh {
    pub fn build(store: &Store, node: &str) -> Self {
        let mut namespaces = BTreeMap::new();
        let mut pods = Vec::new();
        let mut services = Vec::new();
        let mut slices = Vec::new();
        for o in store.objects() {
            match o {
                Object::Namespace(n) => {
                    namespaces.insert(n.metadata.name.clone(), n);
                }
                Object::Pod(p) => pods.push(p),
                Object::Service(s) => services.push(s),
                Object::EndpointSlice(e) => slices.push(e),
            }
        }
        let mut out = Mesh::default();
        for p in pods {
            if p.spec.node_name.as_deref() != Some(node) {
                continue;
            }
            let ns = p
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into());
            let enroll = match namespaces.get(&ns) {
                None => Err(format!("namespace {ns} not found")),
                Some(n)
                    if n.metadata.labels.get(MESH_LABEL).map(String::as_str) != Some("enabled") =>
                {
                    Err(format!(
                        "namespace {ns} is not labelled {MESH_LABEL}=enabled"
                    ))
                }
                Some(_)
                    if p.metadata.annotations.get(MESH_LABEL).map(String::as_str)
                        == Some("disabled") =>
                {
                    Err(format!("annotated {MESH_LABEL}: disabled"))
                }
                Some(_) => Ok(()),
            };
            out.pods.push(PodView {
                namespace: ns,
                name: p.metadata.name.clone(),
                uid: p.metadata.uid.clone().unwrap_or_default(),
                ips: p.ips(),
                enroll,
            });
        }
        out.pods
            .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        for s in services {
            let ns = s.metadata.namespace.as_deref().unwrap_or("default");
            let ips: Vec<IpAddr> = s
                .spec
                .cluster_ips
                .iter()
                .chain(&s.spec.cluster_ip)
                .filter_map(|ip| ip.parse().ok())
                .collect();
            for sp in s
                .spec
                .ports
                .iter()
                .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            {
                let mut eps = Vec::new();
                for slice in slices.iter().filter(|e| {
                    e.metadata.namespace.as_deref().unwrap_or("default") == ns
                        && e.metadata.labels.get("kubernetes.io/service-name")
                            == Some(&s.metadata.name)
                }) {
                    let Some(port) = slice.ports.iter().find(|p| p.name == sp.name) else {
                        continue;
                    };
                    for ep in slice
                        .endpoints
                        .iter()
                        .filter(|e| e.conditions.ready != Some(false))
                    {
                        eps.extend(ep.addresses.iter().map(|a| SocketAddr::new(*a, port.port)));
                    }
                }
                for ip in &ips {
                    out.services
                        .insert(SocketAddr::new(*ip, sp.port), eps.clone());
                }
            }
        }
        out
    }

    /// Where a connection to `dst` goes: a ready endpoint when `dst` is a Service address,
    /// else `dst` itself. `None` for a Service without a ready endpoint.
    pub fn resolve(&self, dst: SocketAddr) -> Option<SocketAddr> {
        match self.services.get(&dst) {
            None => Some(dst),
            Some(eps) if eps.is_empty() => None,
            Some(eps) => Some(eps[rand_index(eps.len())]),
        }
    }
}

fn rand_index(n: usize) -> usize {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    nanos as usize % n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(files: &[(&str, &str)]) -> (tempdir::Dir, Store) {
        let dir = tempdir::Dir::new();
        for (name, text) in files {
            std::fs::write(dir.0.join(name), text).unwrap();
        }
        let mut s = Store::default();
        s.sync(&dir.0);
        (dir, s)
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                let p = std::env::temp_dir().join(format!(
                    "cedille-agent-manifest-{}-{:?}",
                    std::process::id(),
                    std::thread::current().id()
                ));
                let _ = std::fs::remove_dir_all(&p);
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    const NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {cedille.io/mesh: enabled}}\n";

    fn pod(name: &str, uid: &str, node: &str, extra: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop, uid: {uid}{extra}}}\nspec: {{nodeName: {node}}}\nstatus: {{podIP: 10.0.0.1}}\n"
        )
    }

    #[test]
    fn enrollment_follows_label_annotation_and_node() {
        let text = [
            NS.to_owned(),
            pod("a", "aaaa-1", "n1", ""),
            pod(
                "b",
                "bbbb-2",
                "n1",
                ", annotations: {cedille.io/mesh: disabled}",
            ),
            pod("c", "cccc-3", "n2", ""),
        ]
        .join("---\n");
        let (_d, s) = store(&[("x.yaml", &text)]);
        let mesh = Mesh::build(&s, "n1");
        let names: Vec<_> = mesh
            .pods
            .iter()
            .map(|p| (p.name.as_str(), p.enroll.is_ok()))
            .collect();
        assert_eq!(names, vec![("a", true), ("b", false)]);
    }

    #[test]
    fn a_bad_document_names_object_and_field_and_keeps_the_rest() {
        let text = [
            NS.to_owned(),
            pod("a", "not a uid!", "n1", ""),
            pod("b", "bbbb", "n1", ""),
        ]
        .join("---\n");
        let (_d, s) = store(&[("x.yaml", &text)]);
        let errors = s.errors();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].object.as_deref(), Some("Pod shop/a"));
        assert_eq!(errors[0].field.as_deref(), Some("metadata.uid"));
        assert_eq!(errors[0].document, 2);
        let mesh = Mesh::build(&s, "n1");
        assert_eq!(mesh.pods.len(), 1);
        assert_eq!(mesh.pods[0].name, "b");
    }

    #[test]
    fn type_errors_carry_the_field_path() {
        let text =
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a, uid: ab}\nstatus: {podIP: nonsense}\n";
        let (objects, errors) = parse(Path::new("f.yaml"), text);
        assert!(objects.is_empty());
        assert_eq!(errors[0].1.field.as_deref(), Some("status.podIP"));
    }

    #[test]
    fn service_addresses_resolve_to_ready_endpoints() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80}]}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints: [{addresses: [10.0.0.7]}, {addresses: [10.0.0.8], conditions: {ready: false}}]\n";
        let (_d, s) = store(&[("svc.yaml", text)]);
        let mesh = Mesh::build(&s, "n1");
        let vip: SocketAddr = "10.96.0.10:80".parse().unwrap();
        assert_eq!(mesh.resolve(vip), Some("10.0.0.7:8080".parse().unwrap()));
        let other: SocketAddr = "10.1.1.1:80".parse().unwrap();
        assert_eq!(mesh.resolve(other), Some(other));
    }
}
