//! Resolving backendRefs to Service ports and their ready endpoints.

use std::{collections::HashMap, net::SocketAddr, sync::Arc};

use super::Ctx;
use crate::{
    ir::Target,
    model::{
        GATEWAY_GROUP, Kind, Object,
        core::{SERVICE_NAME_LABEL, Service},
        gwapi::BackendObjectReference,
    },
    store::Store,
};

/// The names of the EndpointSlices of each Service (`namespace/service`), kept between
/// translations while no EndpointSlice changes.
pub(crate) struct SliceIndex {
    epoch: u64,
    by_service: HashMap<String, Vec<String>, foldhash::fast::RandomState>,
}

impl SliceIndex {
    /// `cached` if it is still current, else a new index.
    pub(crate) fn current(cached: Option<SliceIndex>, store: &Store) -> SliceIndex {
        let epoch = store.kind_epoch(Kind::EndpointSlice);
        if let Some(c) = cached.filter(|c| c.epoch == epoch) {
            return c;
        }
        let mut by_service: HashMap<String, Vec<String>, _> = HashMap::default();
        for s in store.kind(Kind::EndpointSlice) {
            if let Object::EndpointSlice(es) = &s.object
                && let Some(svc) = es.metadata.labels.get(SERVICE_NAME_LABEL)
            {
                by_service
                    .entry(format!("{}/{svc}", es.metadata.ns()))
                    .or_default()
                    .push(es.metadata.name.clone());
            }
        }
        for names in by_service.values_mut() {
            names.shrink_to_fit();
        }
        SliceIndex { epoch, by_service }
    }
}

/// Why a reference does not resolve: `(ResolvedRefs reason, message)`.
pub(crate) type RefError = (&'static str, String);

pub(crate) fn resolve(
    ctx: &Ctx<'_>,
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
        namespace: ns.to_owned(),
        service: r.name.clone(),
        port: port as u16,
        h2c,
        endpoints: endpoints(ctx, svc, sp.name.as_deref()),
        tls,
    }))
}

/// Ready endpoint addresses of a Service port, from its EndpointSlices.
fn endpoints(ctx: &Ctx<'_>, svc: &Service, port_name: Option<&str>) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    let port_name = port_name.unwrap_or("");
    let ns = svc.metadata.ns();
    let Some(names) = ctx
        .slices
        .by_service
        .get(&format!("{ns}/{}", svc.metadata.name))
    else {
        return out;
    };
    let slices = names
        .iter()
        .filter_map(|n| match ctx.store.get_obj(Kind::EndpointSlice, ns, n) {
            Some(Object::EndpointSlice(es)) => Some(es),
            _ => None,
        });
    for es in slices {
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
    // Kept as long as the snapshot: no growth slack.
    out.shrink_to_fit();
    out
}
