use std::fmt;

use cedille_objects::{KindInfo, core};
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

// Versions the gateway can read, newest first: v1 is what Gateway API v1.5 and v1.6 serve;
// the older ones are what earlier releases (and their experimental channel) served.
static GATEWAY_CLASS: KindInfo = KindInfo {
    namespaced: false,
    ..gw("GatewayClass", "gatewayclasses", &["v1", "v1beta1"])
};
static GATEWAY: KindInfo = gw("Gateway", "gateways", &["v1", "v1beta1"]);
static HTTP_ROUTE: KindInfo = gw("HTTPRoute", "httproutes", &["v1", "v1beta1"]);
// ReferenceGrants have no status.
static REFERENCE_GRANT: KindInfo = KindInfo {
    keeps_status: false,
    ..gw("ReferenceGrant", "referencegrants", &["v1", "v1beta1"])
};
static LISTENER_SET: KindInfo = gw("ListenerSet", "listenersets", &["v1"]);
static BACKEND_TLS_POLICY: KindInfo = gw(
    "BackendTLSPolicy",
    "backendtlspolicies",
    &["v1", "v1alpha3"],
);
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
            Kind::Secret => &core::SECRET,
            Kind::ConfigMap => &core::CONFIG_MAP,
            Kind::Service => &core::SERVICE,
            Kind::EndpointSlice => &core::ENDPOINT_SLICE,
            Kind::Namespace => &core::NAMESPACE,
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
