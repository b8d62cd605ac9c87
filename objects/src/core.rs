//! The core and discovery kinds both binaries read: Namespace, Service, EndpointSlice,
//! Secret, ConfigMap and Pod. Only the fields Cedille uses are modelled; unknown fields are
//! ignored, as a client of a newer API server would.

use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Serialize};

use crate::{
    catalog::KindInfo,
    meta::{ObjectMeta, SharedStr},
};

/// A core-group (`v1`) kind.
const fn core(kind: &'static str, plural: &'static str, namespaced: bool) -> KindInfo {
    KindInfo {
        group: "",
        versions: &["v1"],
        kind,
        plural,
        namespaced,
        keeps_status: false,
    }
}

/// Where the API serves the kinds of this module.
pub static NAMESPACE: KindInfo = core("Namespace", "namespaces", false);
pub static SERVICE: KindInfo = core("Service", "services", true);
pub static SECRET: KindInfo = core("Secret", "secrets", true);
pub static CONFIG_MAP: KindInfo = core("ConfigMap", "configmaps", true);
pub static POD: KindInfo = core("Pod", "pods", true);
pub static ENDPOINT_SLICE: KindInfo = KindInfo {
    group: "discovery.k8s.io",
    versions: &["v1"],
    kind: "EndpointSlice",
    plural: "endpointslices",
    namespaced: true,
    keeps_status: false,
};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Namespace {
    pub metadata: ObjectMeta,
}

impl Namespace {
    /// The namespace's labels with `kubernetes.io/metadata.name`, which the API server
    /// always sets (a manifest may leave it out).
    pub fn labels_with_name(&self) -> BTreeMap<String, String> {
        let mut l = self.metadata.labels.to_map();
        l.insert(
            "kubernetes.io/metadata.name".into(),
            self.metadata.name.to_string(),
        );
        l
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Secret {
    pub metadata: ObjectMeta,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// Base64-encoded values, as in the API.
    #[serde(default)]
    pub data: BTreeMap<String, String>,
    /// Plain values; merged over `data` like the API server does.
    #[serde(default)]
    pub string_data: BTreeMap<String, String>,
}

/// The Secret type cert-manager writes and the gateway watches.
pub const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";

impl Secret {
    /// The decoded value of `key`; `Err` names the key when its base64 is invalid.
    pub fn value(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        use base64::Engine;
        if let Some(v) = self.string_data.get(key) {
            return Ok(Some(v.as_bytes().to_vec()));
        }
        match self.data.get(key) {
            None => Ok(None),
            Some(b64) => {
                let compact: String = b64.split_whitespace().collect();
                base64::engine::general_purpose::STANDARD
                    .decode(compact)
                    .map(Some)
                    .map_err(|e| format!("data.{key}: invalid base64: {e}"))
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMap {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub data: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ServiceSpec,
    /// Boxed: only LoadBalancer Services have one, and every Service is stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Box<ServiceStatus>>,
}

impl Service {
    /// The Service's cluster addresses (`clusterIPs` and `clusterIP` merged), none for a
    /// headless Service.
    pub fn cluster_ips(&self) -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> = Vec::new();
        for ip in self.spec.cluster_ips.iter() {
            if let Ok(ip) = ip.parse()
                && !out.contains(&ip)
            {
                out.push(ip);
            }
        }
        out
    }

    /// Load balancer ingress points: IPs first-class, hostnames as given.
    pub fn load_balancer_ingress(&self) -> Vec<&LoadBalancerIngress> {
        self.status
            .iter()
            .flat_map(|s| s.load_balancer.iter())
            .flat_map(|lb| lb.ingress.iter())
            .collect()
    }
}

/// What the binaries read of a Service's spec. Every Service is stored, so fields nobody
/// reads (`type`, `externalName`, a port's `targetPort`, ...) are not kept: a record with
/// them would be a size class larger (`cargo xtask bench routes`, memory per route).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "ServiceSpecWire", into = "ServiceSpecWire")]
pub struct ServiceSpec {
    pub ports: Box<[ServicePort]>,
    /// `clusterIPs`, then `clusterIP` if that list does not hold it (the API server keeps
    /// `clusterIP` as the first of `clusterIPs`; a manifest may give either); "None" for
    /// headless Services. One list: a second field would make every record a size class
    /// larger. Written back, `clusterIP` is the first of the list.
    pub cluster_ips: Box<[Box<str>]>,
}

/// [`ServiceSpec`] as it is written.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServiceSpecWire {
    #[serde(default)]
    ports: Box<[ServicePort]>,
    #[serde(default, rename = "clusterIP", skip_serializing_if = "Option::is_none")]
    cluster_ip: Option<Box<str>>,
    #[serde(
        default,
        rename = "clusterIPs",
        skip_serializing_if = "<[Box<str>]>::is_empty"
    )]
    cluster_ips: Box<[Box<str>]>,
}

impl From<ServiceSpecWire> for ServiceSpec {
    fn from(w: ServiceSpecWire) -> Self {
        let cluster_ips = match w.cluster_ip {
            Some(ip) if !w.cluster_ips.contains(&ip) => {
                w.cluster_ips.into_iter().chain([ip]).collect()
            }
            _ => w.cluster_ips,
        };
        ServiceSpec {
            ports: w.ports,
            cluster_ips,
        }
    }
}

impl From<ServiceSpec> for ServiceSpecWire {
    fn from(s: ServiceSpec) -> Self {
        ServiceSpecWire {
            ports: s.ports,
            cluster_ip: s.cluster_ips.first().cloned(),
            cluster_ips: s.cluster_ips,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<SharedStr>,
    pub port: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<SharedStr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<SharedStr>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadBalancerStatus {
    #[serde(default)]
    pub ingress: Vec<LoadBalancerIngress>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadBalancerIngress {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSlice {
    pub metadata: ObjectMeta,
    /// Shared: IPv4, IPv6 or FQDN.
    #[serde(default)]
    pub address_type: SharedStr,
    #[serde(default)]
    pub endpoints: Box<[Endpoint]>,
    #[serde(default)]
    pub ports: Box<[EndpointPort]>,
}

/// Label naming the Service an EndpointSlice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

impl EndpointSlice {
    /// The Service this slice belongs to, from its `kubernetes.io/service-name` label.
    pub fn service_name(&self) -> Option<&str> {
        self.metadata.labels.get(SERVICE_NAME_LABEL)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    #[serde(default)]
    pub addresses: Box<[Box<str>]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<EndpointConditions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<SharedStr>,
}

impl Endpoint {
    /// Ready unless said otherwise, as the API defines (nil means ready).
    pub fn ready(&self) -> bool {
        self.conditions
            .as_ref()
            .and_then(|c| c.ready)
            .unwrap_or(true)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EndpointConditions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminating: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<SharedStr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<SharedStr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<SharedStr>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pod {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PodSpec,
    #[serde(default)]
    pub status: PodStatus,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_network: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, rename = "podIP", skip_serializing_if = "Option::is_none")]
    pub pod_ip: Option<IpAddr>,
    #[serde(default, rename = "podIPs", skip_serializing_if = "Vec::is_empty")]
    pub pod_ips: Vec<PodIp>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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

    /// `spec.serviceAccountName`, `default` when unset as the API server defaults it.
    pub fn service_account(&self) -> &str {
        self.spec
            .service_account_name
            .as_deref()
            .filter(|s| !s.is_empty())
            .unwrap_or("default")
    }
}
