use std::{collections::BTreeMap, fmt};

use serde::{Deserialize, Serialize};

/// The kinds the gateway reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Kind {
    GatewayClass,
    Gateway,
    #[serde(rename = "HTTPRoute")]
    HttpRoute,
    ReferenceGrant,
    ListenerSet,
    BackendTlsPolicy,
    Secret,
    ConfigMap,
    Service,
    EndpointSlice,
    Namespace,
}

impl Kind {
    /// From `apiVersion` and `kind`, as written in a manifest.
    pub fn from_manifest(api_version: &str, kind: &str) -> Option<Self> {
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
        Some(match (group, kind) {
            ("gateway.networking.k8s.io", "GatewayClass") => Kind::GatewayClass,
            ("gateway.networking.k8s.io", "Gateway") => Kind::Gateway,
            ("gateway.networking.k8s.io", "HTTPRoute") => Kind::HttpRoute,
            ("gateway.networking.k8s.io", "ReferenceGrant") => Kind::ReferenceGrant,
            ("gateway.networking.k8s.io", "ListenerSet") => Kind::ListenerSet,
            ("gateway.networking.k8s.io", "BackendTLSPolicy") => Kind::BackendTlsPolicy,
            ("", "Secret") => Kind::Secret,
            ("", "ConfigMap") => Kind::ConfigMap,
            ("", "Service") => Kind::Service,
            ("", "Namespace") => Kind::Namespace,
            ("discovery.k8s.io", "EndpointSlice") => Kind::EndpointSlice,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::GatewayClass => "GatewayClass",
            Kind::Gateway => "Gateway",
            Kind::HttpRoute => "HTTPRoute",
            Kind::ReferenceGrant => "ReferenceGrant",
            Kind::ListenerSet => "ListenerSet",
            Kind::BackendTlsPolicy => "BackendTLSPolicy",

            Kind::Secret => "Secret",
            Kind::ConfigMap => "ConfigMap",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Namespace => "Namespace",
        }
    }

    /// Cluster-scoped kinds have no namespace.
    pub fn cluster_scoped(self) -> bool {
        matches!(self, Kind::GatewayClass | Kind::Namespace)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identity of an object: kind, namespace (empty for cluster-scoped kinds) and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ObjKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl ObjKey {
    pub fn new(kind: Kind, namespace: &str, name: &str) -> Self {
        Self {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }
}

impl fmt::Display for ObjKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Set by the store: starts at 1 and grows when the spec changes.
    #[serde(default)]
    pub generation: i64,
    /// RFC 3339; kept from the manifest when present, else set by the store at first load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
}

impl ObjectMeta {
    pub fn ns(&self) -> &str {
        self.namespace.as_deref().unwrap_or("")
    }
}
