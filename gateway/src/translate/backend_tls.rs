//! BackendTLSPolicy: which Service ports the gateway reaches over TLS, how it verifies
//! them, and each policy's status (per ancestor Gateway).

use std::{collections::BTreeMap, collections::HashMap, sync::Arc};

use super::{
    Ctx,
    status::{Conditions, Entry, PolicyAncestorStatus, PolicyStatus},
};
use crate::{
    ir::{BackendTls, UpstreamTls},
    model::{CONTROLLER_NAME, GATEWAY_GROUP, Kind, Object, gwapi},
};

/// Effective TLS by (Service namespace, Service name, port name or `None` for all ports).
pub(crate) type PolicyIndex = HashMap<(String, String, Option<String>), BackendTls>;

struct Checked<'a> {
    policy: &'a gwapi::BackendTlsPolicy,
    conditions: Conditions,
}

/// Validates every policy, resolves conflicts (the oldest policy for a target wins; a
/// policy naming a port beats one that does not) and indexes the winners.
pub(crate) fn index(ctx: &Ctx<'_>) -> (PolicyIndex, Vec<(String, String, i64, Conditions)>) {
    let mut policies: Vec<_> = ctx
        .store
        .kind(Kind::BackendTlsPolicy)
        .filter_map(|s| match &s.object {
            Object::BackendTlsPolicy(p) => Some((s.age_key(), p)),
            _ => None,
        })
        .collect();
    policies.sort_by(|a, b| {
        (a.0, a.1.metadata.ns(), &a.1.metadata.name).cmp(&(
            b.0,
            b.1.metadata.ns(),
            &b.1.metadata.name,
        ))
    });
    let mut idx = PolicyIndex::new();
    let mut out = Vec::new();
    for (_, p) in policies {
        let ns = p.metadata.ns().to_owned();
        let mut checked = Checked {
            policy: p,
            conditions: Conditions::default(),
        };
        let tls = validate(ctx, &mut checked);
        let mut conflicted = false;
        let mut claimed = Vec::new();
        for t in &p.spec.target_refs {
            if !t.group.is_empty() || t.kind != "Service" {
                continue;
            }
            let key = (ns.clone(), t.name.clone(), t.section_name.clone());
            if idx.contains_key(&key) {
                conflicted = true;
            } else {
                claimed.push(key);
            }
        }
        if conflicted {
            checked.conditions.set(
                "Accepted",
                false,
                "Conflicted",
                "an older BackendTLSPolicy already targets this Service (port)",
            );
        } else {
            for key in claimed {
                idx.insert(key, tls.clone());
            }
        }
        out.push((
            ns,
            p.metadata.name.to_string(),
            p.metadata.generation,
            checked.conditions,
        ));
    }
    (idx, out)
}

fn validate(ctx: &Ctx<'_>, c: &mut Checked<'_>) -> BackendTls {
    let p = c.policy;
    let ns = p.metadata.ns();
    let v = &p.spec.validation;
    let mut roots = rustls::RootCertStore::empty();
    let mut problem: Option<(&str, String)> = None;
    for r in &v.ca_certificate_refs {
        let group = r.group.as_deref().unwrap_or("");
        let kind = r.kind.as_deref().unwrap_or("ConfigMap");
        let err = if !group.is_empty() || kind != "ConfigMap" {
            Some((
                "InvalidKind",
                format!(
                    "caCertificateRef {group}/{kind} {} is not a ConfigMap",
                    r.name
                ),
            ))
        } else {
            super::tls::add_config_map_cas(ctx, ns, &r.name, &mut roots)
                .err()
                .map(|msg| ("InvalidCACertificateRef", msg))
        };
        if problem.is_none() {
            problem = err;
        }
    }
    if v.well_known_ca_certificates.is_some() && problem.is_none() {
        problem = Some((
            "InvalidKind",
            "wellKnownCACertificates is not supported; reference a CA ConfigMap".into(),
        ));
    }
    match &problem {
        Some((reason, msg)) => c.conditions.set("ResolvedRefs", false, reason, msg.clone()),
        None => c.conditions.set("ResolvedRefs", true, "ResolvedRefs", ""),
    }
    let dns_sans: Vec<String> = v
        .subject_alt_names
        .iter()
        .filter(|s| s.type_ == "Hostname")
        .filter_map(|s| s.hostname.clone())
        .collect();
    let uris: Vec<String> = v
        .subject_alt_names
        .iter()
        .filter(|s| s.type_ == "URI")
        .filter_map(|s| s.uri.clone())
        .collect();
    if roots.is_empty() {
        let msg = problem
            .map(|p| p.1)
            .unwrap_or_else(|| "no CA certificate".into());
        c.conditions
            .set("Accepted", false, "NoValidCACertificate", msg.clone());
        return BackendTls::Invalid(msg);
    }
    c.conditions.set("Accepted", true, "Accepted", "");
    // With subjectAltNames, they alone decide; the hostname is then only the SNI.
    let sans_given = !v.subject_alt_names.is_empty();
    BackendTls::Ready(Arc::new(UpstreamTls {
        key: format!("{ns}/{}@{}", p.metadata.name, p.metadata.generation),
        server_name: v.hostname.clone(),
        accepted_names: if sans_given {
            dns_sans
        } else {
            vec![v.hostname.clone()]
        },
        accepted_uris: uris,
        client_cert: None,
        roots: Arc::new(roots),
    }))
}

/// The policy that applies to a Service port: one naming the port, else one for the
/// whole Service.
pub(crate) fn lookup<'i>(
    idx: &'i PolicyIndex,
    ns: &str,
    svc: &str,
    port_name: Option<&str>,
) -> Option<&'i BackendTls> {
    let key = |p: Option<&str>| (ns.to_owned(), svc.to_owned(), p.map(str::to_owned));
    port_name
        .and_then(|p| idx.get(&key(Some(p))))
        .or_else(|| idx.get(&key(None)))
}

/// Policy statuses, one entry per Gateway of ours whose routes use a targeted Service.
pub(crate) fn statuses(
    ctx: &Ctx<'_>,
    checked: Vec<(String, String, i64, Conditions)>,
    our_gateways: &[(String, String)],
) -> BTreeMap<String, Entry<PolicyStatus>> {
    if checked.is_empty() {
        return BTreeMap::new();
    }
    // Services each Gateway routes to.
    let mut uses: Vec<((String, String), (String, String))> = Vec::new();
    for s in ctx.store.kind(Kind::HttpRoute) {
        let Object::HttpRoute(r) = &s.object else {
            continue;
        };
        let rns = r.metadata.ns();
        let gws: Vec<(String, String)> = r
            .spec
            .parent_refs
            .iter()
            .filter(|p| p.kind.as_deref().unwrap_or("Gateway") == "Gateway")
            .map(|p| {
                (
                    p.namespace.as_deref().unwrap_or(rns).to_owned(),
                    p.name.to_string(),
                )
            })
            .filter(|g| our_gateways.contains(g))
            .collect();
        for rule in &r.spec.rules {
            for b in &rule.backend_refs {
                let svc = (
                    b.backend.namespace.as_deref().unwrap_or(rns).to_owned(),
                    b.backend.name.to_string(),
                );
                for g in &gws {
                    uses.push((g.clone(), svc.clone()));
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    for (ns, name, generation, conds) in checked {
        let Some(Object::BackendTlsPolicy(p)) =
            ctx.store.get_obj(Kind::BackendTlsPolicy, &ns, &name)
        else {
            continue;
        };
        let mut ancestors: Vec<(String, String)> = uses
            .iter()
            .filter(|(_, svc)| {
                p.spec
                    .target_refs
                    .iter()
                    .any(|t| t.kind == "Service" && svc.0 == ns && svc.1 == t.name)
            })
            .map(|(g, _)| g.clone())
            .collect();
        ancestors.sort();
        ancestors.dedup();
        if ancestors.is_empty() {
            continue;
        }
        let key = format!("{ns}/{name}");
        let prev = ctx.prev.and_then(|p| p.backend_tls_policies.get(&key));
        let finished = |gw: &(String, String)| {
            let prev_c = prev
                .and_then(|e| {
                    e.status
                        .ancestors
                        .iter()
                        .find(|a| *a.ancestor_ref.name == *gw.1)
                })
                .map(|a| a.conditions.as_slice());
            PolicyAncestorStatus {
                ancestor_ref: gwapi::ParentReference {
                    group: Some(GATEWAY_GROUP.into()),
                    kind: Some("Gateway".into()),
                    namespace: Some(gw.0.as_str().into()),
                    name: gw.1.as_str().into(),
                    section_name: None,
                    port: None,
                },
                controller_name: CONTROLLER_NAME,
                conditions: conds.clone_for(generation, prev_c, &ctx.now),
            }
        };
        let status = PolicyStatus {
            ancestors: ancestors.iter().map(finished).collect(),
        };
        out.insert(
            key,
            Entry {
                namespace: ns.as_str().into(),
                name: name.as_str().into(),
                generation,
                status,
            },
        );
    }
    out
}
