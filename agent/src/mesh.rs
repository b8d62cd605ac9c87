//! The agent's view of the cluster: this node's pods with their enrollment decision, and
//! Service addresses resolved to ready endpoints. Built from the object store, whichever
//! source (manifest directory or Kubernetes API) filled it.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use crate::{
    objects::{Object, Store},
    policy::Policies,
};

/// What the agent needs from the objects: this node's pods with their enrollment decision,
/// and Service addresses resolved to endpoints.
#[derive(Default, Debug, Clone)]
pub struct Mesh {
    pub pods: Vec<PodView>,
    /// (cluster IP, port) → ready endpoint addresses.
    pub services: BTreeMap<SocketAddr, Vec<SocketAddr>>,
    /// Every meshed pod of the cluster (any node), by IP: where HBONE goes and which
    /// identity the destination must prove.
    pub workloads: HashMap<IpAddr, Arc<Workload>>,
    pub policies: Arc<Policies>,
}

/// A meshed pod anywhere in the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub service_account: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub ips: Vec<IpAddr>,
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
    /// Its namespace is labelled `cedille.io/mtls: strict`: plaintext from outside the mesh
    /// is refused.
    pub strict: bool,
    /// Why the pod is (or is not) meshed.
    pub enroll: Result<(), String>,
}

pub const MESH_LABEL: &str = "cedille.io/mesh";
/// Namespace label: `strict` refuses plaintext inbound, `permissive` (default) accepts it.
pub const MTLS_LABEL: &str = "cedille.io/mtls";

impl Mesh {
    pub fn build(store: &Store, node: &str) -> Self {
        let mut namespaces = BTreeMap::new();
        let mut pods = Vec::new();
        let mut services = Vec::new();
        let mut slices = Vec::new();
        let mut policies = Vec::new();
        for s in store.iter() {
            match &s.object {
                Object::Namespace(n) => {
                    namespaces.insert(n.metadata.name.to_string(), n);
                }
                Object::Pod(p) => pods.push(p),
                Object::Service(s) => services.push(s),
                Object::EndpointSlice(e) => slices.push(e),
                Object::AuthorizationPolicy(p) => policies.push(p.as_ref()),
            }
        }
        let mut out = Mesh {
            policies: Arc::new(Policies::new(policies)),
            ..Mesh::default()
        };
        for p in pods {
            let ns = p.metadata.ns().to_owned();
            let service_account = p
                .spec
                .service_account_name
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".to_owned());
            let meshed = namespaces
                .get(&ns)
                .is_some_and(|n| n.metadata.labels.get(MESH_LABEL) == Some("enabled"))
                && p.metadata.annotation(MESH_LABEL) != Some("disabled")
                && p.spec.host_network != Some(true);
            if meshed && let Some(pod_node) = &p.spec.node_name {
                let w = Arc::new(Workload {
                    namespace: ns.clone(),
                    name: p.metadata.name.to_string(),
                    node: pod_node.clone(),
                    service_account: service_account.clone(),
                });
                for ip in p.ips() {
                    out.workloads.insert(ip, w.clone());
                }
            }
            if p.spec.node_name.as_deref() != Some(node) {
                continue;
            }
            let enroll = match namespaces.get(&ns) {
                None => Err(format!("namespace {ns} not found")),
                Some(n) if n.metadata.labels.get(MESH_LABEL) != Some("enabled") => Err(format!(
                    "namespace {ns} is not labelled {MESH_LABEL}=enabled"
                )),
                Some(_) if p.metadata.annotation(MESH_LABEL) == Some("disabled") => {
                    Err(format!("annotated {MESH_LABEL}: disabled"))
                }
                Some(_) if p.spec.host_network == Some(true) => {
                    Err("uses the host's network namespace".to_owned())
                }
                Some(_) => Ok(()),
            };
            let strict = namespaces
                .get(&ns)
                .is_some_and(|n| n.metadata.labels.get(MTLS_LABEL) == Some("strict"));
            out.pods.push(PodView {
                namespace: ns,
                name: p.metadata.name.to_string(),
                uid: p.metadata.uid().unwrap_or_default().to_owned(),
                ips: p.ips(),
                service_account,
                labels: p.metadata.labels.to_map(),
                strict,
                enroll,
            });
        }
        out.pods
            .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        for s in services {
            let ns = s.metadata.ns();
            let ips = s.cluster_ips();
            for sp in s
                .spec
                .ports
                .iter()
                .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            {
                let mut eps = Vec::new();
                for slice in slices.iter().filter(|e| {
                    e.metadata.ns() == ns && e.service_name() == Some(&*s.metadata.name)
                }) {
                    let Some(port) = slice
                        .ports
                        .iter()
                        .find(|p| p.name == sp.name)
                        .and_then(|p| u16::try_from(p.port?).ok())
                    else {
                        continue;
                    };
                    for ep in slice.endpoints.iter().filter(|e| e.ready()) {
                        eps.extend(
                            ep.addresses
                                .iter()
                                .filter_map(|a| a.parse::<IpAddr>().ok())
                                .map(|a| SocketAddr::new(a, port)),
                        );
                    }
                }
                let Ok(port) = u16::try_from(sp.port) else {
                    continue;
                };
                for ip in &ips {
                    out.services.insert(SocketAddr::new(*ip, port), eps.clone());
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

    use std::path::Path;

    fn store(text: &str) -> Store {
        let mut s = Store::default();
        s.apply_source(
            "x.yaml",
            cedille_objects::manifest::parse(Path::new("x.yaml"), text),
        );
        s
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
        let s = store(&text);
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
        let s = store(&text);
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
        let p = cedille_objects::manifest::parse::<Object>(Path::new("f.yaml"), text);
        assert!(p.objects.is_empty());
        assert_eq!(p.errors[0].1.field.as_deref(), Some("status.podIP"));
    }

    #[test]
    fn service_addresses_resolve_to_ready_endpoints() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80}]}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints: [{addresses: [10.0.0.7]}, {addresses: [10.0.0.8], conditions: {ready: false}}]\n";
        let s = store(text);
        let mesh = Mesh::build(&s, "n1");
        let vip: SocketAddr = "10.96.0.10:80".parse().unwrap();
        assert_eq!(mesh.resolve(vip), Some("10.0.0.7:8080".parse().unwrap()));
        let other: SocketAddr = "10.1.1.1:80".parse().unwrap();
        assert_eq!(mesh.resolve(other), Some(other));
    }
}
