//! The Kubernetes objects the gateway reads, as serde types. Only the fields the gateway
//! uses are modelled; unknown fields are ignored like a client of a newer API server would.

pub mod gwapi;
pub mod meta;

pub use cedille_objects::core;
pub use meta::{Kind, ObjKey, ObjectMeta};

/// Group of the Gateway API kinds.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
/// The controller name this gateway serves.
pub const CONTROLLER_NAME: &str = "cedille.io/gateway-controller";

/// One object of a kind the gateway understands. Kinds of which a cluster has a few are
/// boxed, so that the enum, the size of every stored object, is that of the common ones.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    GatewayClass(Box<gwapi::GatewayClass>),
    Gateway(Box<gwapi::Gateway>),
    HttpRoute(gwapi::HttpRoute),
    ReferenceGrant(Box<gwapi::ReferenceGrant>),
    ListenerSet(Box<gwapi::ListenerSet>),
    BackendTlsPolicy(Box<gwapi::BackendTlsPolicy>),
    Secret(Box<core::Secret>),
    ConfigMap(core::ConfigMap),
    Service(core::Service),
    EndpointSlice(core::EndpointSlice),
    Namespace(core::Namespace),
}

impl Object {
    pub fn meta(&self) -> &ObjectMeta {
        match self {
            Object::GatewayClass(o) => &o.metadata,
            Object::Gateway(o) => &o.metadata,
            Object::HttpRoute(o) => &o.metadata,
            Object::ReferenceGrant(o) => &o.metadata,
            Object::ListenerSet(o) => &o.metadata,
            Object::BackendTlsPolicy(o) => &o.metadata,
            Object::Secret(o) => &o.metadata,
            Object::ConfigMap(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::Namespace(o) => &o.metadata,
        }
    }

    pub fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Object::GatewayClass(o) => &mut o.metadata,
            Object::Gateway(o) => &mut o.metadata,
            Object::HttpRoute(o) => &mut o.metadata,
            Object::ReferenceGrant(o) => &mut o.metadata,
            Object::ListenerSet(o) => &mut o.metadata,
            Object::BackendTlsPolicy(o) => &mut o.metadata,
            Object::Secret(o) => &mut o.metadata,
            Object::ConfigMap(o) => &mut o.metadata,
            Object::Service(o) => &mut o.metadata,
            Object::EndpointSlice(o) => &mut o.metadata,
            Object::Namespace(o) => &mut o.metadata,
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            Object::GatewayClass(_) => Kind::GatewayClass,
            Object::Gateway(_) => Kind::Gateway,
            Object::HttpRoute(_) => Kind::HttpRoute,
            Object::ReferenceGrant(_) => Kind::ReferenceGrant,
            Object::ListenerSet(_) => Kind::ListenerSet,
            Object::BackendTlsPolicy(_) => Kind::BackendTlsPolicy,
            Object::Secret(_) => Kind::Secret,
            Object::ConfigMap(_) => Kind::ConfigMap,
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::Namespace(_) => Kind::Namespace,
        }
    }

    pub fn key(&self) -> ObjKey {
        let m = self.meta();
        ObjKey::new(self.kind(), m.namespace.as_deref().unwrap_or(""), &m.name)
    }

    /// The typed object from its JSON, validated as the API server would (CRD schemas and
    /// CEL rules): `Err((field path, message))`.
    pub fn decode(kind: Kind, value: serde_json::Value) -> Result<Self, (String, String)> {
        use cedille_objects::manifest::typed;
        let object = match kind {
            Kind::GatewayClass => Object::GatewayClass(Box::new(typed(value)?)),
            Kind::Gateway => Object::Gateway(Box::new(typed(value)?)),
            Kind::HttpRoute => Object::HttpRoute(typed(value)?),
            Kind::ReferenceGrant => Object::ReferenceGrant(typed(value)?),
            Kind::ListenerSet => Object::ListenerSet(Box::new(typed(value)?)),
            Kind::BackendTlsPolicy => Object::BackendTlsPolicy(Box::new(typed(value)?)),
            Kind::Secret => Object::Secret(typed(value)?),
            Kind::ConfigMap => Object::ConfigMap(typed(value)?),
            Kind::Service => Object::Service(typed(value)?),
            Kind::EndpointSlice => Object::EndpointSlice(typed(value)?),
            Kind::Namespace => Object::Namespace(typed(value)?),
        };
        match crate::validate::object(&object).into_iter().next() {
            Some(problem) => Err(problem),
            None => Ok(object),
        }
    }

    /// The part of the object whose change bumps `metadata.generation` (the spec, or the
    /// data for kinds without one), serialised for comparison.
    pub fn spec_fingerprint(&self) -> String {
        let v = match self {
            Object::GatewayClass(o) => serde_json::to_string(&o.spec),
            Object::Gateway(o) => serde_json::to_string(&o.spec),
            Object::HttpRoute(o) => serde_json::to_string(&o.spec),
            Object::ReferenceGrant(o) => serde_json::to_string(&o.spec),
            Object::ListenerSet(o) => serde_json::to_string(&o.spec),
            Object::BackendTlsPolicy(o) => serde_json::to_string(&o.spec),
            Object::Secret(o) => serde_json::to_string(&(&o.type_, &o.data, &o.string_data)),
            Object::Service(o) => serde_json::to_string(&o.spec),
            Object::ConfigMap(o) => serde_json::to_string(&o.data),
            Object::EndpointSlice(o) => serde_json::to_string(&(&o.endpoints, &o.ports)),
            Object::Namespace(o) => serde_json::to_string(&o.metadata.labels),
        };
        v.unwrap_or_default()
    }
}

impl cedille_objects::Catalog for Object {
    type Kind = Kind;

    fn kinds() -> &'static [Kind] {
        &Kind::ALL
    }
    fn info(kind: Kind) -> &'static cedille_objects::KindInfo {
        kind.info()
    }
    fn decode(kind: Kind, value: serde_json::Value) -> Result<Self, (String, String)> {
        Object::decode(kind, value)
    }
    fn kind(&self) -> Kind {
        Object::kind(self)
    }
    fn meta(&self) -> &ObjectMeta {
        Object::meta(self)
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        Object::meta_mut(self)
    }
    fn spec_fingerprint(&self) -> String {
        Object::spec_fingerprint(self)
    }
}
