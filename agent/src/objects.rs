//! The kinds the agent reads (Pod, Namespace, Service, EndpointSlice), as a catalog of the
//! shared object layer: the same store and sources as the gateway, from a manifest
//! directory or the Kubernetes API.

use std::fmt;

use cedille_objects::{
    KindInfo, ObjectMeta,
    core::{self, EndpointSlice, Namespace, Pod, Service},
    manifest::typed,
};
use serde_json::Value;

use crate::policy::AuthorizationPolicy;

pub use cedille_objects::ManifestError;

pub type ObjKey = cedille_objects::ObjKey<Kind>;
pub type Store = cedille_objects::Store<Object>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Kind {
    Pod,
    Namespace,
    Service,
    EndpointSlice,
    AuthorizationPolicy,
}

/// `cedille.io/v1alpha1` AuthorizationPolicy (CRD under `helm/cedille/crds/`).
pub static AUTHORIZATION_POLICY: KindInfo = KindInfo {
    group: "cedille.io",
    versions: &["v1alpha1"],
    kind: "AuthorizationPolicy",
    plural: "authorizationpolicies",
    namespaced: true,
    keeps_status: false,
};

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Namespace,
        Kind::Pod,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::AuthorizationPolicy,
    ];

    pub fn info(self) -> &'static KindInfo {
        match self {
            Kind::Pod => &core::POD,
            Kind::Namespace => &core::NAMESPACE,
            Kind::Service => &core::SERVICE,
            Kind::EndpointSlice => &core::ENDPOINT_SLICE,
            Kind::AuthorizationPolicy => &AUTHORIZATION_POLICY,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.info().kind)
    }
}

/// One object of a kind the agent reads.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Pod(Box<Pod>),
    Namespace(Namespace),
    Service(Service),
    EndpointSlice(EndpointSlice),
    AuthorizationPolicy(Box<AuthorizationPolicy>),
}

impl cedille_objects::Catalog for Object {
    type Kind = Kind;

    fn kinds() -> &'static [Kind] {
        &Kind::ALL
    }
    fn info(kind: Kind) -> &'static KindInfo {
        kind.info()
    }
    fn decode(kind: Kind, value: Value) -> Result<Self, (String, String)> {
        let o = match kind {
            Kind::Pod => Object::Pod(Box::new(typed(value)?)),
            Kind::Namespace => Object::Namespace(typed(value)?),
            Kind::Service => Object::Service(typed(value)?),
            Kind::EndpointSlice => Object::EndpointSlice(typed(value)?),
            Kind::AuthorizationPolicy => Object::AuthorizationPolicy(Box::new(typed(value)?)),
        };
        validate(&o)?;
        Ok(o)
    }
    fn kind(&self) -> Kind {
        match self {
            Object::Pod(_) => Kind::Pod,
            Object::Namespace(_) => Kind::Namespace,
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
        }
    }
    fn meta(&self) -> &ObjectMeta {
        match self {
            Object::Pod(o) => &o.metadata,
            Object::Namespace(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::AuthorizationPolicy(o) => &o.metadata,
        }
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Object::Pod(o) => &mut o.metadata,
            Object::Namespace(o) => &mut o.metadata,
            Object::Service(o) => &mut o.metadata,
            Object::EndpointSlice(o) => &mut o.metadata,
            Object::AuthorizationPolicy(o) => &mut o.metadata,
        }
    }
    fn spec_fingerprint(&self) -> String {
        match self {
            Object::Pod(o) => serde_json::to_string(&o.spec),
            Object::Namespace(o) => serde_json::to_string(&o.metadata.labels),
            Object::Service(o) => serde_json::to_string(&o.spec),
            Object::EndpointSlice(o) => serde_json::to_string(&(&o.endpoints, &o.ports)),
            Object::AuthorizationPolicy(o) => serde_json::to_string(&o.spec),
        }
        .unwrap_or_default()
    }
}

/// What the agent needs beyond the API's types: a pod's UID names its cgroup.
fn validate(o: &Object) -> Result<(), (String, String)> {
    if let Object::Pod(p) = o {
        match p.metadata.uid() {
            Some(uid)
                if !uid.is_empty() && uid.chars().all(|c| c.is_ascii_hexdigit() || c == '-') => {}
            _ => {
                return Err((
                    "metadata.uid".into(),
                    "required: a UID (hex digits and dashes) names the pod's cgroup".into(),
                ));
            }
        }
    }
    if let Object::AuthorizationPolicy(p) = o {
        crate::policy::validate(p)?;
    }
    if let Object::EndpointSlice(s) = o {
        for (i, e) in s.endpoints.iter().enumerate() {
            for (j, a) in e.addresses.iter().enumerate() {
                if &*s.address_type != "FQDN" && a.parse::<std::net::IpAddr>().is_err() {
                    return Err((
                        format!("endpoints[{i}].addresses[{j}]"),
                        format!("{a:?} is not an IP address"),
                    ));
                }
            }
        }
    }
    Ok(())
}
