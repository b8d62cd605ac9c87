//! GatewayClasses, Gateways and their listeners: validation, certificates, conflicts,
//! status, and finally the per-socket listener table of the snapshot.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
};

pub(crate) use super::listeners::ListenerState;
use super::{
    Ctx, hostnames,
    listeners::{certificate, conflicts, frontend, listener, listener_sets},
    routes::{BuiltRoute, RouteResult},
    status::{
        Conditions, Entry, GatewayClassStatus, GatewayStatus, GatewayStatusAddress, ListenerStatus,
        StatusReport,
    },
};
use crate::{
    ir::{IrListener, ListenerId, PortConfig, Protocol, Snapshot, VirtualHost, VirtualHosts},
    model::{CONTROLLER_NAME, Kind, Object, gwapi},
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
    /// Presented to TLS backends (spec.tls.backend.clientCertificateRef).
    pub backend_client_cert: Option<Arc<rustls::sign::CertifiedKey>>,
}

/// A ListenerSet aimed at a Gateway of ours.
pub(crate) struct SetState {
    pub namespace: String,
    pub name: String,
    pub generation: i64,
    /// Why the Gateway does not take it, if it does not.
    pub refused: Option<String>,
}

pub(crate) struct Gateways<'a> {
    pub classes: BTreeMap<String, Entry<GatewayClassStatus>>,
    pub gateways: BTreeMap<(String, String), GatewayState<'a>>,
}

pub(crate) fn translate<'a>(ctx: &Ctx<'a>) -> Gateways<'a> {
    let mut classes = BTreeMap::new();
    for stored in ctx.store.kind(Kind::GatewayClass) {
        let Object::GatewayClass(c) = &stored.object else {
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
        if ctx.env.api_gaps.is_empty() {
            conds.set(
                "SupportedVersion",
                true,
                "SupportedVersion",
                "Gateway API v1.6 CRDs are supported",
            );
        } else {
            conds.set(
                "SupportedVersion",
                false,
                "UnsupportedVersion",
                format!(
                    "the cluster's Gateway API CRDs are older than v1.5 or incomplete ({}); what they have works, install v1.6 for the rest",
                    ctx.env.api_gaps.join("; ")
                ),
            );
        }
        let prev = ctx
            .prev
            .and_then(|p| p.gateway_classes.get(&*c.metadata.name))
            .map(|e| e.status.conditions.as_slice());
        let generation = c.metadata.generation;
        classes.insert(
            c.metadata.name.to_string(),
            Entry {
                namespace: "".into(),
                name: (&*c.metadata.name).into(),
                generation,
                status: GatewayClassStatus {
                    conditions: conds.finish(generation, prev, &ctx.now),
                },
            },
        );
    }

    let mut gateways = BTreeMap::new();
    for stored in ctx.store.kind(Kind::Gateway) {
        let Object::Gateway(g) = &stored.object else {
            continue;
        };
        if !classes.contains_key(&g.spec.gateway_class_name) {
            continue;
        }
        let ns = g.metadata.ns().to_owned();
        let mut state = GatewayState {
            namespace: ns.clone(),
            name: g.metadata.name.to_string(),
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
            backend_client_cert: None,
        };
        listener_sets(ctx, &mut state);
        conflicts(&mut state.listeners);
        gateway_conditions(&mut state);
        backend_client_certificate(ctx, &mut state);
        gateways.insert((ns, g.metadata.name.to_string()), state);
    }
    Gateways { classes, gateways }
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
        Ok(ck) => {
            state.backend_client_cert = Some(ck);
            state
                .conditions
                .set("ResolvedRefs", true, "ResolvedRefs", "");
        }
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
    cache: &mut VhostCache,
) -> (Snapshot, StatusReport) {
    let mut old = std::mem::take(&mut cache.built);
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
                vhosts: vhosts(&l.entries, &mut old, &mut cache.built),
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
                    &ctx.now,
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
                    namespace: set.namespace.as_str().into(),
                    name: set.name.as_str().into(),
                    generation: set.generation,
                    status: super::status::ListenerSetStatus {
                        conditions: c.finish(set.generation, prev_set, &ctx.now),
                        listeners: lists,
                    },
                },
            );
        }
        // The addresses the Gateway is reachable on: the Service in front of the gateway
        // for Gateways that ask for none, else those it listens on, minus any that could
        // not be bound.
        let addresses = match service_addresses(ctx, gw.gateway) {
            Some(a) => a,
            None => gw
                .addresses
                .iter()
                .filter(|ip| !unusable.iter().any(|a| a.ip() == **ip))
                .map(|ip| GatewayStatusAddress {
                    type_: "IPAddress".into(),
                    value: ip.to_string(),
                })
                .collect(),
        };

        report.gateways.insert(
            format!("{ns}/{name}"),
            Entry {
                namespace: ns.into(),
                name: name.into(),
                generation,
                status: GatewayStatus {
                    addresses,
                    conditions: conds.finish(
                        generation,
                        prev.map(|p| p.status.conditions.as_slice()),
                        &ctx.now,
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

/// With `--gateway-service`, the addresses of that Service for a Gateway without
/// `spec.addresses`: load balancer ingress (IPs and hostnames) when it has any, else its
/// cluster IPs. `None` when not applicable.
fn service_addresses(ctx: &Ctx<'_>, g: &gwapi::Gateway) -> Option<Vec<GatewayStatusAddress>> {
    let (ns, name) = ctx.env.gateway_service.as_ref()?;
    if !g.spec.addresses.is_empty() {
        return None;
    }
    let Some(Object::Service(svc)) = ctx.store.get_obj(Kind::Service, ns, name) else {
        return Some(Vec::new());
    };
    let mut out = Vec::new();
    for i in svc.load_balancer_ingress() {
        if let Some(ip) = i.ip.as_deref().filter(|s| !s.is_empty()) {
            out.push(GatewayStatusAddress {
                type_: "IPAddress".into(),
                value: ip.to_owned(),
            });
        } else if let Some(h) = i.hostname.as_deref().filter(|s| !s.is_empty()) {
            out.push(GatewayStatusAddress {
                type_: "Hostname".into(),
                value: h.to_owned(),
            });
        }
    }
    if out.is_empty() {
        out = svc
            .cluster_ips()
            .into_iter()
            .map(|ip| GatewayStatusAddress {
                type_: "IPAddress".into(),
                value: ip.to_string(),
            })
            .collect();
    }
    Some(out)
}

/// Virtual hosts built by earlier translations, by the routes they were built from (their
/// addresses, in order; the entry holds the routes, so no address is reused meanwhile).
#[derive(Default)]
pub(crate) struct VhostCache {
    built: VhostMap,
}

type VhostMap =
    HashMap<Vec<usize>, (Vec<Arc<BuiltRoute>>, Arc<VirtualHost>), foldhash::fast::RandomState>;

/// Groups a listener's attached rules into virtual hosts, each in precedence order. A
/// virtual host whose routes are the very ones of a cached one is that one; what is used
/// moves from `old` to `new`.
fn vhosts(
    entries: &[(Option<Arc<str>>, Arc<BuiltRoute>)],
    old: &mut VhostMap,
    new: &mut VhostMap,
) -> VirtualHosts {
    let mut by_host: BTreeMap<Option<Arc<str>>, Vec<&Arc<BuiltRoute>>> = BTreeMap::new();
    for (host, route) in entries {
        by_host.entry(host.clone()).or_default().push(route);
    }
    let mut out = VirtualHosts::default();
    let mut wildcard = Vec::new();
    for (host, routes) in by_host {
        let key: Vec<usize> = routes.iter().map(|r| Arc::as_ptr(r) as usize).collect();
        let vhost = match new.get(&key).or_else(|| old.get(&key)) {
            Some((_, v)) => v.clone(),
            None => Arc::new(super::routes::virtual_host(&routes)),
        };
        if let std::collections::hash_map::Entry::Vacant(e) = new.entry(key) {
            old.remove(e.key());
            let held = routes.iter().map(|r| (*r).clone()).collect();
            e.insert((held, vhost.clone()));
        }
        match host {
            None => out.any = Some(vhost),
            Some(h) => match h.strip_prefix('*') {
                Some(suffix) => wildcard.push((suffix.to_owned(), vhost)),
                None => {
                    out.exact.insert(h.to_string(), vhost);
                }
            },
        }
    }
    wildcard.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
    out.wildcard = wildcard;
    out
}
