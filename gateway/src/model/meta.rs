use std::fmt;

use cedille_objects::KindInfo;
use serde::Serialize;

pub use cedille_objects::ObjectMeta;

/// Identity of an object the gateway reads.
pub type ObjKey = cedille_objects::ObjKey<Kind>;

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

const fn gw(
    kind: &'static str,
    plural: &'static str,
    versions: &'static [&'static str],
) -> KindInfo {
    KindInfo {
        group: super::GATEWAY_GROUP,
        versions,
        kind,
        plural,
        namespaced: true,
        keeps_status: true,
    }
}

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

// Versions the gateway can read, newest first: v1 is what Gateway API v1.5 and v1.6 serve;
// the older ones are what earlier releases (and their experimental channel) served.
static GATEWAY_CLASS: KindInfo = KindInfo {
    namespaced: false,
    ..gw("GatewayClass", "gatewayclasses", &["v1", "v1beta1"])
};
static GATEWAY: KindInfo = gw("Gateway", "gateways", &["v1", "v1beta1"]);
static HTTP_ROUTE: KindInfo = gw("HTTPRoute", "httproutes", &["v1", "v1beta1"]);
static REFERENCE_GRANT: KindInfo = gw("ReferenceGrant", "referencegrants", &["v1", "v1beta1"]);
static LISTENER_SET: KindInfo = gw("ListenerSet", "listenersets", &["v1"]);
static BACKEND_TLS_POLICY: KindInfo = gw(
    "BackendTLSPolicy",
    "backendtlspolicies",
    &["v1", "v1alpha3"],
);
static SECRET: KindInfo = core("Secret", "secrets", true);
static CONFIG_MAP: KindInfo = core("ConfigMap", "configmaps", true);
static SERVICE: KindInfo = core("Service", "services", true);
static NAMESPACE: KindInfo = core("Namespace", "namespaces", false);
static ENDPOINT_SLICE: KindInfo = KindInfo {
    group: "discovery.k8s.io",
    versions: &["v1"],
    kind: "EndpointSlice",
    plural: "endpointslices",
    namespaced: true,
    keeps_status: false,
};

impl Kind {
    pub const ALL: [Kind; 11] = [
        Kind::GatewayClass,
        Kind::Gateway,
        Kind::ListenerSet,
        Kind::HttpRoute,
        Kind::ReferenceGrant,
        Kind::BackendTlsPolicy,
        Kind::Namespace,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Secret,
        Kind::ConfigMap,
    ];

    pub fn info(self) -> &'static KindInfo {
        match self {
            Kind::GatewayClass => &GATEWAY_CLASS,
            Kind::Gateway => &GATEWAY,
            Kind::HttpRoute => &HTTP_ROUTE,
            Kind::ReferenceGrant => &REFERENCE_GRANT,
            Kind::ListenerSet => &LISTENER_SET,
            Kind::BackendTlsPolicy => &BACKEND_TLS_POLICY,
            Kind::Secret => &SECRET,
            Kind::ConfigMap => &CONFIG_MAP,
            Kind::Service => &SERVICE,
            Kind::EndpointSlice => &ENDPOINT_SLICE,
            Kind::Namespace => &NAMESPACE,
        }
    }

    pub fn as_str(self) -> &'static str {
        self.info().kind
    }

    /// Cluster-scoped kinds have no namespace.
    pub fn cluster_scoped(self) -> bool {
        !self.info().namespaced
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
