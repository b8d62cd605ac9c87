//! Translation: a pure function from the object store to a routing snapshot plus the status
//! of every object. It never fails as a whole; every problem lands in some object's status.
//!
//! Translation is incremental through a [`Cache`] kept between calls: a route whose object
//! and whose dependencies (every kind but routes) did not change reuses its checked rules,
//! its rules as bound to each parent, and the virtual hosts built only from such routes. A
//! changed route recomputes what depends on it; the rest is reused as it was.

mod backend_tls;
mod backends;
mod gateways;
pub mod hostnames;
mod listeners;
mod routes;
pub mod status;
mod tls;

use std::{collections::BTreeSet, net::SocketAddr};

use crate::{
    ir::Snapshot,
    model::{Kind, Object, gwapi::ReferenceGrant},
    store::Store,
};
pub use status::StatusReport;

/// What one translation leaves for the next (see the module's documentation). Entries not
/// used by a translation are dropped by it, so the cache holds no more than the snapshot.
#[derive(Default)]
pub struct Cache {
    routes: routes::Cache,
    slices: Option<backends::SliceIndex>,
    vhosts: gateways::VhostCache,
}

pub struct Output {
    pub snapshot: Snapshot,
    pub status: StatusReport,
}

/// What translation needs to know besides the objects.
#[derive(Clone, Debug, Default)]
pub struct Env {
    /// Sockets the data plane could not bind: their Gateways are not Programmed.
    pub unusable: BTreeSet<SocketAddr>,
    /// What the cluster lacks of the Gateway API version the gateway implements (kinds not
    /// served, or served only at an older version); empty in standalone mode. Reported on
    /// each GatewayClass as `SupportedVersion`.
    pub api_gaps: Vec<String>,
    /// The Service (namespace, name) in front of the gateway: its load balancer ingress, or
    /// else its cluster IPs, become the addresses of Gateways that ask for none.
    pub gateway_service: Option<(String, String)>,
}

/// Translates the store. `prev` is the previous status, whose lastTransitionTimes are kept
/// for conditions that did not change; `now` stamps the others.
pub fn translate(store: &Store, prev: Option<&StatusReport>, now: &str, env: &Env) -> Output {
    translate_with(&mut Cache::default(), store, prev, now, env)
}

/// [`translate`], reusing what `cache` kept from the previous call on the same store.
pub fn translate_with(
    cache: &mut Cache,
    store: &Store,
    prev: Option<&StatusReport>,
    now: &str,
    env: &Env,
) -> Output {
    let slices = backends::SliceIndex::current(cache.slices.take(), store);
    let mut ctx = Ctx::new(store, prev, now, &slices);
    ctx.unusable = &env.unusable;
    ctx.env = env;
    let (policies, checked) = backend_tls::index(&ctx);
    ctx.policies = policies;
    let mut gws = gateways::translate(&ctx);
    let ours: Vec<(String, String)> = gws.gateways.keys().cloned().collect();
    let routes = routes::translate(&ctx, &mut gws, &mut cache.routes);
    let (snapshot, mut status) = gateways::finish(&ctx, gws, routes, &mut cache.vhosts);
    status.backend_tls_policies = backend_tls::statuses(&ctx, checked, &ours);
    status.invalid_manifests = store.errors();
    drop(ctx);
    cache.slices = Some(slices);
    Output { snapshot, status }
}

pub(crate) struct Ctx<'a> {
    pub store: &'a Store,
    pub prev: Option<&'a StatusReport>,
    pub now: std::sync::Arc<str>,
    grants: Vec<&'a ReferenceGrant>,
    pub slices: &'a backends::SliceIndex,
    pub unusable: &'a BTreeSet<SocketAddr>,
    pub policies: backend_tls::PolicyIndex,
    pub env: &'a Env,
}

static NONE_UNUSABLE: BTreeSet<SocketAddr> = BTreeSet::new();
static NO_ENV: Env = Env {
    unusable: BTreeSet::new(),
    api_gaps: Vec::new(),
    gateway_service: None,
};

impl<'a> Ctx<'a> {
    fn new(
        store: &'a Store,
        prev: Option<&'a StatusReport>,
        now: &'a str,
        slices: &'a backends::SliceIndex,
    ) -> Self {
        let grants = store
            .kind(Kind::ReferenceGrant)
            .filter_map(|s| match &s.object {
                Object::ReferenceGrant(g) => Some(&**g),
                _ => None,
            })
            .collect();
        Self {
            store,
            prev,
            now: now.into(),
            grants,
            slices,
            unusable: &NONE_UNUSABLE,
            policies: Default::default(),
            env: &NO_ENV,
        }
    }

    /// Whether a reference from a `from_kind` in `from_ns` to `to_kind` `to_ns/to_name` is
    /// allowed: always within a namespace, across namespaces only with a ReferenceGrant in
    /// the target namespace.
    pub fn ref_allowed(
        &self,
        (from_group, from_kind, from_ns): (&str, &str, &str),
        (to_group, to_kind, to_ns, to_name): (&str, &str, &str, &str),
    ) -> bool {
        if from_ns == to_ns {
            return true;
        }
        self.grants.iter().any(|g| {
            g.metadata.ns() == to_ns
                && g.spec
                    .from
                    .iter()
                    .any(|f| f.group == from_group && f.kind == from_kind && f.namespace == from_ns)
                && g.spec.to.iter().any(|t| {
                    t.group == to_group
                        && t.kind == to_kind
                        && t.name
                            .as_deref()
                            .is_none_or(|n| n.is_empty() || n == to_name)
                })
        })
    }

    /// A namespace's labels, with `kubernetes.io/metadata.name` as the API server sets it.
    pub fn namespace_labels(&self, ns: &str) -> std::collections::BTreeMap<String, String> {
        let mut labels = match self.store.get_obj(Kind::Namespace, "", ns) {
            Some(Object::Namespace(n)) => n.metadata.labels.to_map(),
            _ => Default::default(),
        };
        labels.insert("kubernetes.io/metadata.name".into(), ns.to_owned());
        labels
    }
}

#[cfg(test)]
mod tests;
