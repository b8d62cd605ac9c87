//! Resolving backendRefs to Service ports and their ready endpoints.

use std::{net::SocketAddr, sync::Arc};

use super::Ctx;
use crate::{
    ir::Target,
    model::{
        GATEWAY_GROUP, Kind, Object,
        core::{EndpointSlice, Service},
        gwapi::BackendObjectReference,
    },
    store::{Store, Stored},
};

/// The EndpointSlices that name a Service, kept between translations while no
/// EndpointSlice changes: the stored records, sorted by namespace and Service name (a
/// pointer per slice; a map of owned names took a hundred bytes per slice).
pub(crate) struct SliceIndex {
    epoch: u64,
    slices: Vec<Arc<Stored>>,
}

/// The namespace and Service an EndpointSlice names, if it is one that names a Service.
fn slice_service(s: &Stored) -> Option<(&str, &str)> {
    match &s.object {
        Object::EndpointSlice(es) => Some((es.metadata.ns(), es.service_name()?)),
        _ => None,
    }
}

impl SliceIndex {
    /// `cached` if it is still current, else a new index.
    pub(crate) fn current(cached: Option<SliceIndex>, store: &Store) -> SliceIndex {
        let epoch = store.kind_epoch(Kind::EndpointSlice);
        if let Some(c) = cached.filter(|c| c.epoch == epoch) {
            return c;
        }
        let mut slices: Vec<Arc<Stored>> = store
            .kind(Kind::EndpointSlice)
            .filter(|s| slice_service(s).is_some())
            .cloned()
            .collect();
        // Stable: a Service's slices stay in the store's (name) order.
        slices.sort_by(|a, b| slice_service(a).cmp(&slice_service(b)));
        slices.shrink_to_fit();
        SliceIndex { epoch, slices }
    }

    /// The EndpointSlices of Service `namespace/service`.
    fn of(&self, namespace: &str, service: &str) -> impl Iterator<Item = &EndpointSlice> {
        let key = Some((namespace, service));
        let start = self.slices.partition_point(|s| slice_service(s) < key);
        self.slices[start..]
            .iter()
            .take_while(move |s| slice_service(s) == key)
            .filter_map(|s| match &s.object {
                Object::EndpointSlice(es) => Some(es),
                _ => None,
            })
    }
}

/// Why a reference does not resolve: `(ResolvedRefs reason, message)`.
pub(crate) type RefError = (&'static str, String);

pub(crate) fn resolve(
    ctx: &Ctx<'_>,
    names: &mut super::routes::Names<'_>,
    route_ns: &str,
    r: &BackendObjectReference,
) -> Result<Arc<Target>, RefError> {
    let group = r.group.as_deref().unwrap_or("");
    let kind = r.kind.as_deref().unwrap_or("Service");
    let ns = r.namespace.as_deref().unwrap_or(route_ns);
    if !group.is_empty() || kind != "Service" {
        return Err((
            "InvalidKind",
            format!("backendRef {group}/{kind} {ns}/{} is not a Service", r.name),
        ));
    }
    if !ctx.ref_allowed(
        (GATEWAY_GROUP, "HTTPRoute", route_ns),
        ("", "Service", ns, &r.name),
    ) {
        return Err((
            "RefNotPermitted",
            format!(
                "Service {ns}/{} is in another namespace and no ReferenceGrant allows it",
                r.name
            ),
        ));
    }
    let Some(Object::Service(svc)) = ctx.store.get_obj(Kind::Service, ns, &r.name) else {
        return Err((
            "BackendNotFound",
            format!("Service {ns}/{} does not exist", r.name),
        ));
    };
    let Some(port) = r.port else {
        return Err((
            "BackendNotFound",
            format!("backendRef to Service {ns}/{} has no port", r.name),
        ));
    };
    let Some(sp) = svc.spec.ports.iter().find(|p| p.port == port) else {
        return Err((
            "BackendNotFound",
            format!("Service {ns}/{} has no port {port}", r.name),
        ));
    };
    let app = sp.app_protocol.as_deref().map(str::to_ascii_lowercase);
    let (h2c, wants_tls) = match app.as_deref() {
        None | Some("http" | "kubernetes.io/ws") => (false, false),
        Some("kubernetes.io/h2c") => (true, false),
        Some("https" | "kubernetes.io/https" | "kubernetes.io/wss") => (false, true),
        Some(other) => {
            return Err((
                "UnsupportedProtocol",
                format!(
                    "Service {ns}/{} port {port} has appProtocol {other}, which is not supported",
                    r.name
                ),
            ));
        }
    };
    let mut tls =
        super::backend_tls::lookup(&ctx.policies, ns, &r.name, sp.name.as_deref()).cloned();
    if wants_tls && tls.is_none() {
        // TLS is asked for but nothing says how to verify the backend: never send in clear.
        tls = Some(crate::ir::BackendTls::Invalid(format!(
            "Service {ns}/{} port {port} speaks HTTPS but no BackendTLSPolicy targets it",
            r.name
        )));
    }
    Ok(Arc::new(Target {
        namespace: names.get(ns),
        service: names.get(&r.name),
        port: port as u16,
        h2c,
        endpoints: endpoints(ctx, svc, sp.name.as_deref()).into(),
        tls: tls.map(Box::new),
    }))
}

/// Ready endpoint addresses of a Service port, from its EndpointSlices.
fn endpoints(ctx: &Ctx<'_>, svc: &Service, port_name: Option<&str>) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    let port_name = port_name.unwrap_or("");
    for es in ctx.slices.of(svc.metadata.ns(), &svc.metadata.name) {
        let Some(port) = es
            .ports
            .iter()
            .find(|p| p.name.as_deref().unwrap_or("") == port_name)
            .and_then(|p| p.port)
        else {
            continue;
        };
        for ep in es.endpoints.iter().filter(|e| e.ready()) {
            for a in &ep.addresses {
                if let Ok(ip) = a.parse() {
                    let addr = SocketAddr::new(ip, port as u16);
                    if !out.contains(&addr) {
                        out.push(addr);
                    }
                }
            }
        }
    }
    out
}
