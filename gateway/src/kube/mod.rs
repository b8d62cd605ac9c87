//! Kubernetes mode: what the gateway watches, which Gateway API version the cluster has,
//! leader election, and writing status back.

pub mod lease;
pub mod status;

use std::collections::{BTreeMap, BTreeSet};

use cedille_objects::{
    core::TLS_SECRET_TYPE,
    kube::{KubeSource, WatchHealth, WatchSpec},
};
use kube::Client;
use tracing::{info, warn};

use crate::{
    model::{GATEWAY_GROUP, Kind, Object, gwapi::SecretObjectReference},
    store::Store,
};

#[derive(Clone, Debug)]
pub struct Settings {
    /// Where the Lease lives; the client's default namespace when unset.
    pub namespace: Option<String>,
    /// This replica's identity in the Lease.
    pub pod_name: String,
    pub lease_name: String,
    /// The Service in front of the gateway (namespace, name): its addresses become the
    /// addresses of Gateways that ask for none.
    pub gateway_service: Option<(String, String)>,
    pub lease: lease::Timings,
}

/// A connection to the cluster with the watches running.
pub struct Connected {
    pub client: Client,
    pub source: KubeSource<Object>,
    /// The version the cluster serves for each kind it has.
    pub versions: BTreeMap<Kind, String>,
    /// What the cluster lacks of Gateway API v1.5/v1.6 (see `translate::Env::api_gaps`).
    pub gaps: Vec<String>,
    /// The namespace of the Lease.
    pub namespace: String,
}

/// Connects, reads discovery and starts a watch for every kind the cluster serves:
/// Secrets of type `kubernetes.io/tls` only; ConfigMaps only as referenced (see
/// [`watch_config_maps`]).
pub async fn connect(settings: &Settings) -> Result<Connected, String> {
    let client = cedille_objects::kube::client().await?;
    let versions = cedille_objects::discovery::served_versions::<Object>(&client)
        .await
        .map_err(|e| format!("API discovery: {e}"))?;
    let mut gaps = Vec::new();
    for kind in Kind::ALL {
        let info = kind.info();
        match versions.get(&kind) {
            None if info.group == GATEWAY_GROUP => gaps.push(format!("{kind} is not served")),
            None => return Err(format!("the API server does not serve {kind}")),
            Some(v) if v != info.versions[0] => {
                gaps.push(format!("{kind} only at {}", info.api_version(v)))
            }
            Some(_) => {}
        }
    }
    if gaps.is_empty() {
        info!("Gateway API CRDs at v1: every kind is supported");
    } else {
        warn!(gaps = %gaps.join("; "), "the cluster's Gateway API CRDs are older or incomplete; serving what they have (GatewayClass SupportedVersion=False)");
    }
    let mut source = KubeSource::new(client.clone());
    for (&kind, version) in &versions {
        let spec = WatchSpec::new(kind, version);
        match kind {
            // Only the certificates: never every Secret in the cluster.
            Kind::Secret => {
                source.watch(spec.fields(format!("type={TLS_SECRET_TYPE}")));
            }
            Kind::ConfigMap => {}
            _ => {
                source.watch(spec);
            }
        }
    }
    let namespace = settings
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    Ok(Connected {
        client,
        source,
        versions,
        gaps,
        namespace,
    })
}

/// Watches exactly the ConfigMaps that Gateways (client certificate validation) and
/// BackendTLSPolicies reference as CA bundles. Returns whether the set of watches changed.
pub fn watch_config_maps(c: &mut Connected, store: &Store) -> bool {
    let Some(version) = c.versions.get(&Kind::ConfigMap) else {
        return false;
    };
    let targets = referenced_config_maps(store);
    c.source.set_targets(Kind::ConfigMap, version, &targets)
}

pub fn referenced_config_maps(store: &Store) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    let mut add = |ns: &str, r: &SecretObjectReference| {
        if r.kind.as_deref() == Some("ConfigMap") && r.group.as_deref().unwrap_or("").is_empty() {
            out.insert((
                r.namespace.clone().unwrap_or_else(|| ns.to_owned()),
                r.name.clone(),
            ));
        }
    };
    for s in store.kind(Kind::Gateway) {
        let Object::Gateway(g) = &s.object else {
            continue;
        };
        let Some(front) = g.spec.tls.as_ref().and_then(|t| t.frontend.as_ref()) else {
            continue;
        };
        let configs = front
            .default
            .iter()
            .chain(front.per_port.iter().map(|p| &p.tls));
        for v in configs.filter_map(|t| t.validation.as_ref()) {
            for r in &v.ca_certificate_refs {
                add(g.metadata.ns(), r);
            }
        }
    }
    for s in store.kind(Kind::BackendTlsPolicy) {
        if let Object::BackendTlsPolicy(p) = &s.object {
            for r in &p.spec.validation.ca_certificate_refs {
                add(p.metadata.ns(), r);
            }
        }
    }
    out
}

/// The permissions Kubernetes mode needs: get/list/watch on every kind it watches, patch
/// on the status of the kinds it writes status for, and Leases in its own namespace.
pub fn permissions() -> cedille_objects::rbac::Permissions {
    use cedille_objects::rbac::{Permissions, rules, watching};
    let mut cluster = watching(Kind::ALL.iter().map(|k| k.info()));
    cluster.extend(rules(
        Kind::ALL
            .iter()
            .map(|k| k.info())
            .filter(|i| i.keeps_status)
            .map(|i| (i.group, format!("{}/status", i.plural))),
        &["patch"],
    ));
    Permissions {
        cluster,
        namespace: rules(
            [("coordination.k8s.io", "leases".to_owned())],
            &["get", "create", "update"],
        ),
    }
}

/// What `/status` says about the connection to the cluster.
#[derive(Clone, Debug, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterReport {
    pub leader: bool,
    pub identity: String,
    pub lease: String,
    pub api_gaps: Vec<String>,
    pub watches: Vec<WatchHealth>,
}
