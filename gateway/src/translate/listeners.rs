//! Listeners: each one's validation (protocol, route kinds, certificates, client
//! certificate validation), the ListenerSets that add listeners to a Gateway, and the
//! precedence that settles conflicts between listeners sharing a port.

use std::sync::Arc;

use rustls::sign::CertifiedKey;

use super::{
    Ctx,
    gateways::{GatewayState, SetState},
    status::{Conditions, SupportedKind},
};
use crate::{
    ir::{self, Protocol},
    model::{GATEWAY_GROUP, Kind, Object, gwapi},
};

pub(crate) struct ListenerState<'a> {
    pub spec: &'a gwapi::Listener,
    /// The ListenerSet `(namespace, name)` it comes from; `None` for the Gateway's own.
    pub owner: Option<(String, String)>,
    /// Namespace of the Gateway or ListenerSet that defines it ("Same" in allowedRoutes).
    pub owner_ns: String,
    /// `None` when the protocol is not supported.
    pub protocol: Option<Protocol>,
    pub kinds: Vec<SupportedKind>,
    pub conditions: Conditions,
    pub certs: Vec<Arc<CertifiedKey>>,
    pub client_auth: Option<Arc<ir::ClientAuth>>,
    pub attached_routes: i32,
    /// Rules attached to this listener, per effective hostname (`None` = any).
    pub entries: Vec<(Option<Arc<str>>, Arc<super::routes::BuiltRoute>)>,
}

impl ListenerState<'_> {
    /// Routes may attach: the listener itself was accepted.
    pub fn accepts_routes(&self) -> bool {
        self.conditions.get("Accepted") == Some(true)
    }

    pub(super) fn programmed(&self) -> bool {
        self.conditions.get("Programmed") == Some(true)
    }
}

pub(super) fn listener<'a>(
    ctx: &Ctx<'a>,
    gw_ns: &str,
    owner: Option<(String, String)>,
    frontend: Option<&gwapi::FrontendTls>,
    spec: &'a gwapi::Listener,
) -> ListenerState<'a> {
    let from_kind = if owner.is_some() {
        "ListenerSet"
    } else {
        "Gateway"
    };
    let mut conds = Conditions::default();
    let protocol = match spec.protocol.as_str() {
        "HTTP" => Some(Protocol::Http),
        "HTTPS" => Some(Protocol::Https),
        _ => None,
    };
    let mut state = ListenerState {
        spec,
        owner,
        owner_ns: gw_ns.to_owned(),
        protocol,
        kinds: Vec::new(),
        conditions: Conditions::default(),
        certs: Vec::new(),
        client_auth: None,
        attached_routes: 0,
        entries: Vec::new(),
    };
    if protocol.is_none() {
        conds.set(
            "Accepted",
            false,
            "UnsupportedProtocol",
            format!(
                "protocol {} is not supported; use HTTP or HTTPS",
                spec.protocol
            ),
        );
        conds.set("ResolvedRefs", true, "ResolvedRefs", "");
        conds.set("Programmed", false, "Invalid", "listener is not accepted");
        conds.set("Conflicted", false, "NoConflicts", "");
        state.conditions = conds;
        return state;
    }
    conds.set("Accepted", true, "Accepted", "");
    conds.set("Conflicted", false, "NoConflicts", "");
    let mut resolved: Result<(), (&str, String)> = Ok(());

    // Route kinds.
    let requested = spec
        .allowed_routes
        .as_ref()
        .map(|a| a.kinds.as_slice())
        .unwrap_or(&[]);
    if requested.is_empty() {
        state.kinds.push(SupportedKind {
            group: GATEWAY_GROUP.into(),
            kind: "HTTPRoute".into(),
        });
    } else {
        for k in requested {
            let group = k.group.as_deref().unwrap_or(GATEWAY_GROUP);
            if group == GATEWAY_GROUP && k.kind == "HTTPRoute" {
                state.kinds.push(SupportedKind {
                    group: group.into(),
                    kind: k.kind.clone(),
                });
            } else if resolved.is_ok() {
                resolved = Err((
                    "InvalidRouteKinds",
                    format!("route kind {group}/{} is not supported", k.kind),
                ));
            }
        }
    }

    // Certificates.
    if protocol == Some(Protocol::Https) {
        let tls = spec.tls.as_ref();
        let mode = tls.and_then(|t| t.mode.as_deref()).unwrap_or("Terminate");
        let refs = tls.map(|t| t.certificate_refs.as_slice()).unwrap_or(&[]);
        if mode != "Terminate" {
            resolved = resolved.and(Err((
                "InvalidCertificateRef",
                format!("TLS mode {mode} is not supported on HTTPS listeners"),
            )));
        } else if refs.is_empty() {
            resolved = resolved.and(Err((
                "InvalidCertificateRef",
                "an HTTPS listener needs tls.certificateRefs".to_owned(),
            )));
        }
        for r in refs {
            match certificate(ctx, from_kind, gw_ns, r) {
                Ok(ck) => state.certs.push(ck),
                Err(e) => resolved = resolved.and(Err(e)),
            }
        }
        if let Some(v) = validation_for(frontend, spec.port) {
            let (auth, err) = client_auth(ctx, gw_ns, v);
            if let Some(e) = err {
                resolved = resolved.and(Err(e));
            }
            match auth {
                Some(a) => state.client_auth = Some(a),
                None => {
                    // No usable CA: serving without the validation asked for would be
                    // wrong, so the listener is not accepted.
                    conds.set(
                        "Accepted",
                        false,
                        "NoValidCACertificate",
                        "no caCertificateRef of the frontend validation is usable",
                    );
                }
            }
        }
    }
    match resolved {
        Ok(()) => {
            conds.set("ResolvedRefs", true, "ResolvedRefs", "");
            conds.set("Programmed", true, "Programmed", "");
        }
        Err((reason, msg)) => {
            conds.set("ResolvedRefs", false, reason, msg.clone());
            // Invalid route kinds alone do not stop the listener serving the kinds it supports.
            if reason == "InvalidRouteKinds" && !state.kinds.is_empty() {
                conds.set("Programmed", true, "Programmed", "");
            } else {
                conds.set("Programmed", false, "Invalid", msg);
            }
        }
    }
    state.conditions = conds;
    state
}

pub(super) fn frontend(g: &gwapi::Gateway) -> Option<&gwapi::FrontendTls> {
    g.spec.tls.as_ref().and_then(|t| t.frontend.as_ref())
}

/// The client validation that applies on `port`: its perPort entry, else the default.
fn validation_for(
    frontend: Option<&gwapi::FrontendTls>,
    port: i32,
) -> Option<&gwapi::FrontendValidation> {
    let f = frontend?;
    match f.per_port.iter().find(|p| p.port == port) {
        Some(p) => p.tls.validation.as_ref(),
        None => f.default.as_ref().and_then(|d| d.validation.as_ref()),
    }
}

type RefProblem = (&'static str, String);

/// Client certificate roots from ConfigMaps (`ca.crt`). Returns the validation (when at
/// least one CA is usable) and the first problem with a reference.
fn client_auth(
    ctx: &Ctx<'_>,
    gw_ns: &str,
    v: &gwapi::FrontendValidation,
) -> (Option<Arc<ir::ClientAuth>>, Option<RefProblem>) {
    let mut roots = rustls::RootCertStore::empty();
    let mut problem = None;
    for r in &v.ca_certificate_refs {
        let group = r.group.as_deref().unwrap_or("");
        let kind = r.kind.as_deref().unwrap_or("ConfigMap");
        let ns = r.namespace.as_deref().unwrap_or(gw_ns);
        let err = if !group.is_empty() || kind != "ConfigMap" {
            Some((
                "InvalidCACertificateKind",
                format!(
                    "caCertificateRef {group}/{kind} {ns}/{} is not a ConfigMap",
                    r.name
                ),
            ))
        } else if !ctx.ref_allowed(
            (GATEWAY_GROUP, "Gateway", gw_ns),
            ("", "ConfigMap", ns, &r.name),
        ) {
            Some((
                "RefNotPermitted",
                format!(
                    "ConfigMap {ns}/{} is in another namespace and no ReferenceGrant allows it",
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
    let auth = (!roots.is_empty()).then(|| {
        Arc::new(ir::ClientAuth {
            roots: Arc::new(roots),
            required: v.mode.as_deref() != Some("AllowInsecureFallback"),
        })
    });
    (auth, problem)
}

pub(super) fn certificate(
    ctx: &Ctx<'_>,
    from_kind: &str,
    gw_ns: &str,
    r: &gwapi::SecretObjectReference,
) -> Result<Arc<CertifiedKey>, (&'static str, String)> {
    let group = r.group.as_deref().unwrap_or("");
    let kind = r.kind.as_deref().unwrap_or("Secret");
    let ns = r.namespace.as_deref().unwrap_or(gw_ns);
    if !group.is_empty() || kind != "Secret" {
        return Err((
            "InvalidCertificateRef",
            format!(
                "certificateRef {group}/{kind} {ns}/{} is not a Secret",
                r.name
            ),
        ));
    }
    if !ctx.ref_allowed(
        (GATEWAY_GROUP, from_kind, gw_ns),
        ("", "Secret", ns, &r.name),
    ) {
        return Err((
            "RefNotPermitted",
            format!(
                "Secret {ns}/{} is in another namespace and no ReferenceGrant allows it",
                r.name
            ),
        ));
    }
    let Some(Object::Secret(secret)) = ctx.store.get_obj(Kind::Secret, ns, &r.name) else {
        return Err((
            "InvalidCertificateRef",
            format!("Secret {ns}/{} does not exist", r.name),
        ));
    };
    super::tls::certified_key(secret).map_err(|e| {
        (
            "InvalidCertificateRef",
            format!("Secret {ns}/{}: {e}", r.name),
        )
    })
}

/// ListenerSets aimed at this Gateway, oldest first: refused unless the Gateway's
/// `allowedListeners` admits their namespace, otherwise their listeners join the Gateway's.
pub(super) fn listener_sets<'a>(ctx: &Ctx<'a>, state: &mut GatewayState<'a>) {
    let mut sets: Vec<_> = ctx
        .store
        .kind(Kind::ListenerSet)
        .filter_map(|stored| match &stored.object {
            Object::ListenerSet(ls) => Some((stored.age_key(), ls)),
            _ => None,
        })
        .filter(|(_, ls)| {
            let p = &ls.spec.parent_ref;
            p.group.as_deref().unwrap_or(GATEWAY_GROUP) == GATEWAY_GROUP
                && p.kind.as_deref().unwrap_or("Gateway") == "Gateway"
                && p.name == state.name
                && p.namespace.as_deref().unwrap_or(ls.metadata.ns()) == state.namespace
        })
        .collect();
    sets.sort_by(|a, b| {
        (a.0, a.1.metadata.ns(), &a.1.metadata.name).cmp(&(
            b.0,
            b.1.metadata.ns(),
            &b.1.metadata.name,
        ))
    });
    let allowed = state
        .gateway
        .spec
        .allowed_listeners
        .as_ref()
        .and_then(|a| a.namespaces.as_ref());
    let gateway = state.gateway;
    for (_, ls) in sets {
        let ns = ls.metadata.ns().to_owned();
        let admitted = match allowed.and_then(|a| a.from.as_deref()).unwrap_or("None") {
            "All" => true,
            "Same" => ns == state.namespace,
            "Selector" => allowed
                .and_then(|a| a.selector.as_ref())
                .is_some_and(|sel| sel.matches(&ctx.namespace_labels(&ns))),
            _ => false,
        };
        let refused = (!admitted).then(|| {
            format!(
                "Gateway {}/{} does not allow ListenerSets from namespace {ns} (spec.allowedListeners)",
                state.namespace, state.name
            )
        });
        if admitted {
            let owner = Some((ns.clone(), ls.metadata.name.to_string()));
            state.listeners.extend(
                ls.spec
                    .listeners
                    .iter()
                    .map(|l| listener(ctx, &ns, owner.clone(), frontend(gateway), l)),
            );
        }
        state.sets.push(SetState {
            namespace: ns,
            name: ls.metadata.name.to_string(),
            generation: ls.metadata.generation,
            refused,
        });
    }
}

/// Listener precedence: the Gateway's own listeners in order, then each ListenerSet's. A
/// listener that clashes with an earlier one on its port (another protocol, or the same
/// hostname) is not accepted; the earlier one keeps serving.
pub(super) fn conflicts(listeners: &mut [ListenerState<'_>]) {
    let mut kept: Vec<(i32, String, Option<String>)> = Vec::new();
    for l in listeners.iter_mut() {
        let (port, proto, host) = (l.spec.port, &l.spec.protocol, &l.spec.hostname);
        let clash = kept.iter().find_map(|(p, pr, h)| {
            if *p != port {
                None
            } else if pr != proto {
                Some("ProtocolConflict")
            } else if h == host {
                Some("HostnameConflict")
            } else {
                None
            }
        });
        match clash {
            Some(reason) => {
                let msg = format!("an earlier listener on port {port} takes precedence ({reason})");
                l.conditions.set("Accepted", false, reason, msg.clone());
                l.conditions.set("Programmed", false, reason, msg.clone());
                l.conditions.set("Conflicted", true, reason, msg);
            }
            None => kept.push((port, proto.clone(), host.clone())),
        }
    }
}
