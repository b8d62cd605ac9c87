//! GatewayClasses, Gateways and their listeners: validation, certificates, conflicts,
//! status, and finally the per-socket listener table of the snapshot.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
};

use rustls::sign::CertifiedKey;

use super::{
    Ctx, hostnames,
    routes::RouteResult,
    status::{
        Conditions, Entry, GatewayClassStatus, GatewayStatus, GatewayStatusAddress, ListenerStatus,
        StatusReport, SupportedKind,
    },
};
use crate::{
    ir::{self, IrListener, ListenerId, PortConfig, Protocol, Snapshot, VirtualHosts},
    model::{CONTROLLER_NAME, GATEWAY_GROUP, Kind, Object, gwapi},
};

pub(crate) struct GatewayState<'a> {
    pub namespace: String,
    pub name: String,
    pub gateway: &'a gwapi::Gateway,
    pub age: (&'a str, u64),
    pub conditions: Conditions,
    pub addresses: Vec<IpAddr>,
    /// The Gateway's own listeners, then those of its ListenerSets, in precedence order.
    pub listeners: Vec<ListenerState<'a>>,
    pub sets: Vec<SetState>,
}

/// A ListenerSet aimed at a Gateway of ours.
pub(crate) struct SetState {
    pub namespace: String,
    pub name: String,
    pub generation: i64,
    /// Why the Gateway does not take it, if it does not.
    pub refused: Option<String>,
}

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
    pub entries: Vec<(Option<String>, Arc<super::routes::BuiltRoute>)>,
}

impl ListenerState<'_> {
    /// Routes may attach: the listener itself was accepted.
    pub fn accepts_routes(&self) -> bool {
        self.conditions.get("Accepted") == Some(true)
    }

    fn programmed(&self) -> bool {
        self.conditions.get("Programmed") == Some(true)
    }
}

pub(crate) struct Gateways<'a> {
    pub classes: BTreeMap<String, Entry<GatewayClassStatus>>,
    pub gateways: BTreeMap<(String, String), GatewayState<'a>>,
}

pub(crate) fn translate<'a>(ctx: &Ctx<'a>) -> Gateways<'a> {
    let mut classes = BTreeMap::new();
    for stored in ctx.store.kind(Kind::GatewayClass) {
        let Object::GatewayClass(c) = stored.object.as_ref() else {
            continue;
        };
        if c.spec.controller_name != CONTROLLER_NAME {
            continue;
        }
        let mut conds = Conditions::default();
        if c.spec.parameters_ref.is_some() {
            conds.set(
                "Accepted",
                false,
                "InvalidParameters",
                "cedille-gateway takes no parameters",
            );
        } else {
            conds.set(
                "Accepted",
                true,
                "Accepted",
                "accepted by cedille.io/gateway-controller",
            );
        }
        conds.set(
            "SupportedVersion",
            true,
            "SupportedVersion",
            "Gateway API v1.6 CRDs are supported",
        );
        let prev = ctx
            .prev
            .and_then(|p| p.gateway_classes.get(&c.metadata.name))
            .map(|e| e.status.conditions.as_slice());
        let generation = c.metadata.generation;
        classes.insert(
            c.metadata.name.clone(),
            Entry {
                namespace: String::new(),
                name: c.metadata.name.clone(),
                generation,
                status: GatewayClassStatus {
                    conditions: conds.finish(generation, prev, ctx.now),
                },
            },
        );
    }

    let mut gateways = BTreeMap::new();
    for stored in ctx.store.kind(Kind::Gateway) {
        let Object::Gateway(g) = stored.object.as_ref() else {
            continue;
        };
        if !classes.contains_key(&g.spec.gateway_class_name) {
            continue;
        }
        let ns = g.metadata.ns().to_owned();
        let mut state = GatewayState {
            namespace: ns.clone(),
            name: g.metadata.name.clone(),
            gateway: g,
            age: stored.age_key(),
            conditions: Conditions::default(),
            addresses: Vec::new(),
            listeners: g
                .spec
                .listeners
                .iter()
                .map(|l| listener(ctx, &ns, None, frontend(g), l))
                .collect(),
            sets: Vec::new(),
        };
        listener_sets(ctx, &mut state);
        conflicts(&mut state.listeners);
        gateway_conditions(&mut state);
        backend_client_certificate(ctx, &mut state);
        gateways.insert((ns, g.metadata.name.clone()), state);
    }
    Gateways { classes, gateways }
}

fn listener<'a>(
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

fn frontend(g: &gwapi::Gateway) -> Option<&gwapi::FrontendTls> {
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

fn certificate(
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
fn listener_sets<'a>(ctx: &Ctx<'a>, state: &mut GatewayState<'a>) {
    let mut sets: Vec<_> = ctx
        .store
        .kind(Kind::ListenerSet)
        .filter_map(|stored| match stored.object.as_ref() {
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
            let owner = Some((ns.clone(), ls.metadata.name.clone()));
            state.listeners.extend(
                ls.spec
                    .listeners
                    .iter()
                    .map(|l| listener(ctx, &ns, owner.clone(), frontend(gateway), l)),
            );
        }
        state.sets.push(SetState {
            namespace: ns,
            name: ls.metadata.name.clone(),
            generation: ls.metadata.generation,
            refused,
        });
    }
}

/// Listener precedence: the Gateway's own listeners in order, then each ListenerSet's. A
/// listener that clashes with an earlier one on its port (another protocol, or the same
/// hostname) is not accepted; the earlier one keeps serving.
fn conflicts(listeners: &mut [ListenerState<'_>]) {
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

/// `spec.tls.backend.clientCertificateRef`: reported in the Gateway's own ResolvedRefs.
fn backend_client_certificate(ctx: &Ctx<'_>, state: &mut GatewayState<'_>) {
    let Some(r) = state
        .gateway
        .spec
        .tls
        .as_ref()
        .and_then(|t| t.backend.as_ref())
        .and_then(|b| b.client_certificate_ref.as_ref())
    else {
        return;
    };
    match certificate(ctx, "Gateway", &state.namespace, r) {
        // Backend TLS is not implemented yet: the reference is validated and reported.
        Ok(_) => state
            .conditions
            .set("ResolvedRefs", true, "ResolvedRefs", ""),
        Err((reason, msg)) => {
            let reason = if reason == "RefNotPermitted" {
                reason
            } else {
                "InvalidClientCertificateRef"
            };
            state.conditions.set(
                "ResolvedRefs",
                false,
                reason,
                format!("spec.tls.backend.clientCertificateRef: {msg}"),
            );
        }
    }
}

fn gateway_conditions(state: &mut GatewayState<'_>) {
    let g = state.gateway;
    let mut unsupported_address = None;
    for a in &g.spec.addresses {
        let t = a.type_.as_deref().unwrap_or("IPAddress");
        if t != "IPAddress" {
            unsupported_address = Some(format!("address type {t} is not supported; use IPAddress"));
        } else if a.value.is_empty() {
            // An address without a value is ours to choose: all interfaces.
            state.addresses.push(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        } else if let Ok(ip) = a.value.parse() {
            state.addresses.push(ip);
        }
    }
    state.addresses.dedup();
    if state.addresses.is_empty() {
        state.addresses.push(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    }
    let c = &mut state.conditions;
    let params = g
        .spec
        .infrastructure
        .as_ref()
        .and_then(|i| i.get("parametersRef"));
    let own = state.listeners.iter().filter(|l| l.owner.is_none());
    let (valid, total) = own.fold((0, 0), |(v, t), l| {
        (v + usize::from(l.accepts_routes()), t + 1)
    });
    let insecure = frontend(g).is_some_and(|f| {
        f.default
            .iter()
            .chain(f.per_port.iter().map(|p| &p.tls))
            .any(|t| {
                t.validation.as_ref().and_then(|v| v.mode.as_deref())
                    == Some("AllowInsecureFallback")
            })
    });
    if insecure {
        c.set(
            "InsecureFrontendValidationMode",
            true,
            "ConfigurationChanged",
            "client certificates are requested but not required (AllowInsecureFallback)",
        );
    }
    if params.is_some() {
        c.set(
            "Accepted",
            false,
            "InvalidParameters",
            "spec.infrastructure.parametersRef: cedille-gateway takes no parameters",
        );
    } else if let Some(msg) = unsupported_address {
        c.set("Accepted", false, "UnsupportedAddress", msg);
    } else if valid == total {
        c.set("Accepted", true, "Accepted", "");
    } else if valid > 0 {
        c.set(
            "Accepted",
            true,
            "ListenersNotValid",
            "some listeners are not valid; see their status",
        );
    } else {
        c.set(
            "Accepted",
            false,
            "ListenersNotValid",
            "no listener is valid; see their status",
        );
    }
}

/// Builds the snapshot and the final statuses once routes have attached.
pub(crate) fn finish(
    ctx: &Ctx<'_>,
    mut gws: Gateways<'_>,
    routes: RouteResult,
) -> (Snapshot, StatusReport) {
    // Gateways sharing a socket are merged; on conflicts the oldest keeps the socket.
    let mut order: Vec<&(String, String)> = gws.gateways.keys().collect();
    order.sort_by_key(|k| (gws.gateways[*k].age, *k));
    let order: Vec<(String, String)> = order.into_iter().cloned().collect();
    let mut sockets: BTreeMap<SocketAddr, (Protocol, Vec<Arc<IrListener>>)> = BTreeMap::new();
    for key in &order {
        let gw = gws.gateways.get_mut(key).expect("key from map");
        let gw_accepted = gw.conditions.get("Accepted") == Some(true);
        for l in gw.listeners.iter_mut() {
            let Some(protocol) = l.protocol else { continue };
            if !gw_accepted || !l.programmed() {
                continue;
            }
            let port = l.spec.port as u16;
            let hostname = l.spec.hostname.clone();
            let mut conflict = None;
            for ip in &gw.addresses {
                let addr = SocketAddr::new(*ip, port);
                if let Some((p, existing)) = sockets.get(&addr) {
                    if *p != protocol {
                        conflict = Some((
                            "ProtocolConflict",
                            format!("{addr} is already served as {p:?} by another Gateway"),
                        ));
                    } else if existing.iter().any(|e| e.hostname == hostname) {
                        conflict = Some((
                            "HostnameConflict",
                            format!("another Gateway's listener on {addr} has the same hostname"),
                        ));
                    }
                }
            }
            if let Some((reason, msg)) = conflict {
                l.conditions.set("Conflicted", true, reason, msg.clone());
                l.conditions.set("Programmed", false, "Invalid", msg);
                continue;
            }
            let listener = Arc::new(IrListener {
                id: ListenerId {
                    namespace: gw.namespace.clone(),
                    gateway: gw.name.clone(),
                    listener: l.spec.name.clone(),
                },
                port,
                hostname,
                certs: l.certs.clone(),
                client_auth: l.client_auth.clone(),
                vhosts: vhosts(&l.entries),
            });
            for ip in &gw.addresses {
                sockets
                    .entry(SocketAddr::new(*ip, port))
                    .or_insert_with(|| (protocol, Vec::new()))
                    .1
                    .push(listener.clone());
            }
        }
    }
    let mut snapshot = Snapshot::default();
    for (addr, (protocol, mut listeners)) in sockets {
        listeners.sort_by_key(|l| hostnames::specificity(l.hostname.as_deref()));
        snapshot.ports.insert(
            addr,
            Arc::new(PortConfig {
                addr,
                protocol,
                // Validation is configured per port, so every listener here shares it.
                client_auth: listeners.iter().find_map(|l| l.client_auth.clone()),
                listeners,
            }),
        );
    }

    let mut report = StatusReport {
        gateway_classes: std::mem::take(&mut gws.classes),
        ..Default::default()
    };
    for ((ns, name), gw) in gws.gateways {
        let prev = ctx
            .prev
            .and_then(|p| p.gateways.get(&format!("{ns}/{name}")));
        let generation = gw.gateway.metadata.generation;
        let programmed = gw.listeners.iter().any(|l| l.programmed());
        let unusable: Vec<SocketAddr> = gw
            .listeners
            .iter()
            .flat_map(|l| {
                gw.addresses
                    .iter()
                    .map(|ip| SocketAddr::new(*ip, l.spec.port as u16))
            })
            .filter(|a| ctx.unusable.contains(a))
            .collect();
        let mut conds = gw.conditions;
        if conds.get("Accepted") != Some(true) {
            conds.set(
                "Programmed",
                false,
                "Invalid",
                "the Gateway is not accepted",
            );
        } else if let Some(a) = unusable.first() {
            conds.set(
                "Programmed",
                false,
                "AddressNotUsable",
                format!(
                    "cannot listen on {a}; is the address assigned to this host, and the port free?"
                ),
            );
        } else if programmed {
            conds.set("Programmed", true, "Programmed", "");
        } else {
            conds.set(
                "Programmed",
                false,
                "Invalid",
                "no listener could be programmed",
            );
        }
        // Listener statuses: the Gateway's own on the Gateway, the others on their set.
        let mut own = Vec::new();
        let mut by_set: BTreeMap<(String, String), Vec<ListenerStatus>> = BTreeMap::new();
        for l in gw.listeners {
            let set_key = l.owner.clone();
            let prev_list = match &set_key {
                None => prev.map(|p| p.status.listeners.as_slice()),
                Some((ns, n)) => ctx
                    .prev
                    .and_then(|p| p.listener_sets.get(&format!("{ns}/{n}")))
                    .map(|e| e.status.listeners.as_slice()),
            };
            let prev_l = prev_list.and_then(|ls| ls.iter().find(|pl| pl.name == l.spec.name));
            let set_gen = set_key
                .as_ref()
                .and_then(|(ns, n)| gw.sets.iter().find(|s| &s.namespace == ns && &s.name == n))
                .map(|s| s.generation);
            let st = ListenerStatus {
                name: l.spec.name.clone(),
                supported_kinds: l.kinds,
                attached_routes: l.attached_routes,
                conditions: l.conditions.finish(
                    set_gen.unwrap_or(generation),
                    prev_l.map(|p| p.conditions.as_slice()),
                    ctx.now,
                ),
            };
            match set_key {
                None => own.push(st),
                Some(k) => by_set.entry(k).or_default().push(st),
            }
        }
        let listeners = own;
        let mut attached_sets = 0;
        for set in &gw.sets {
            let key = format!("{}/{}", set.namespace, set.name);
            let lists = by_set
                .remove(&(set.namespace.clone(), set.name.clone()))
                .unwrap_or_default();
            let mut c = Conditions::default();
            // Valid: at least one of its listeners can serve.
            let ok = lists.iter().any(|l| {
                l.conditions
                    .iter()
                    .any(|c| c.type_ == "Programmed" && c.status == "True")
            });

            match (&set.refused, ok) {
                (Some(why), _) => {
                    c.set("Accepted", false, "NotAllowed", why.clone());
                    c.set("Programmed", false, "NotAllowed", why.clone());
                }
                (None, false) => {
                    c.set(
                        "Accepted",
                        false,
                        "ListenersNotValid",
                        "no listener of this ListenerSet is valid; see their status",
                    );
                    c.set(
                        "Programmed",
                        false,
                        "ListenersNotValid",
                        "no listener of this ListenerSet is valid; see their status",
                    );
                }
                (None, true) => {
                    attached_sets += 1;
                    c.set("Accepted", true, "Accepted", "");
                    c.set("Programmed", true, "Programmed", "");
                }
            }
            let prev_set = ctx
                .prev
                .and_then(|p| p.listener_sets.get(&key))
                .map(|e| e.status.conditions.as_slice());
            report.listener_sets.insert(
                key,
                Entry {
                    namespace: set.namespace.clone(),
                    name: set.name.clone(),
                    generation: set.generation,
                    status: super::status::ListenerSetStatus {
                        conditions: c.finish(set.generation, prev_set, ctx.now),
                        listeners: lists,
                    },
                },
            );
        }
        // The addresses the Gateway is reachable on: those it listens on, minus any that
        // could not be bound.
        let addresses = gw
            .addresses
            .iter()
            .filter(|ip| !unusable.iter().any(|a| a.ip() == **ip))
            .map(|ip| GatewayStatusAddress {
                type_: "IPAddress".into(),
                value: ip.to_string(),
            })
            .collect();

        report.gateways.insert(
            format!("{ns}/{name}"),
            Entry {
                namespace: ns,
                name,
                generation,
                status: GatewayStatus {
                    addresses,
                    conditions: conds.finish(
                        generation,
                        prev.map(|p| p.status.conditions.as_slice()),
                        ctx.now,
                    ),
                    listeners,
                    attached_listener_sets: attached_sets,
                },
            },
        );
    }
    report.http_routes = routes.statuses;
    (snapshot, report)
}

/// Groups a listener's attached rules into virtual hosts, each in precedence order.
fn vhosts(entries: &[(Option<String>, Arc<super::routes::BuiltRoute>)]) -> VirtualHosts {
    let mut by_host: BTreeMap<Option<String>, Vec<&Arc<super::routes::BuiltRoute>>> =
        BTreeMap::new();
    for (host, route) in entries {
        by_host.entry(host.clone()).or_default().push(route);
    }
    let mut out = VirtualHosts::default();
    let mut wildcard = Vec::new();
    for (host, routes) in by_host {
        let vhost = Arc::new(super::routes::virtual_host(&routes));
        match host {
            None => out.any = Some(vhost),
            Some(h) => match h.strip_prefix('*') {
                Some(suffix) => wildcard.push((suffix.to_owned(), vhost)),
                None => {
                    out.exact.insert(h, vhost);
                }
            },
        }
    }
    wildcard.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
    out.wildcard = wildcard;
    out
}
