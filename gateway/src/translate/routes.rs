//! HTTPRoutes: semantic checks, backend resolution, attachment to listeners (section name,
//! port, allowed namespaces and kinds, hostnames), route status, and the precedence order of
//! matches inside a virtual host.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, HashSet},
    sync::Arc,
    time::Duration,
};

use cedille_objects::SharedStr;
use http::{HeaderName, HeaderValue, Method};
use regex::Regex;

use super::{
    Ctx, backends,
    gateways::Gateways,
    hostnames,
    status::{
        Condition, Conditions, RouteParentStatus, RouteStatus, RouteStatusEntry, RouteStatuses,
    },
};
use crate::{
    duration,
    ir::{
        self, Backend, BackendKind, Filter, Matcher, PathMatch, RouteEntry, RouteId, Rule,
        ValueMatch,
    },
    model::{CONTROLLER_NAME, GATEWAY_GROUP, Kind, Object, gwapi},
    store::Stored,
};

/// A rule's matchers (each shared by the rule's copies for its parents).
type Matchers = Box<[Arc<Matcher>]>;

/// A route's rules as attached through one parent Gateway.
pub(crate) struct BuiltRoute {
    /// The route as stored, for its age (precedence between routes).
    stored: Arc<Stored>,
    route: Arc<RouteId>,
    rules: Box<[(Arc<Rule>, Matchers)]>,
}

impl BuiltRoute {
    fn age(&self) -> (&str, u64) {
        self.stored.age_key()
    }
}

pub(crate) struct RouteResult {
    pub statuses: RouteStatuses,
}

/// What earlier translations made of each route: its attachments to listeners and its
/// status. They are valid while the route object is the same and nothing else changed: no
/// object of another kind (checks read Services, EndpointSlices, ReferenceGrants, policies;
/// attachment reads Gateways, ListenerSets, Namespaces) and the same environment.
#[derive(Default)]
pub(crate) struct Cache {
    /// The epochs of every kind but routes, and the environment, when `routes` was filled.
    deps: (Vec<u64>, String),
    /// In the store's order of routes (namespace, name), so that a translation finds
    /// them walking both in step: a list, not a map, as thousands of routes are cached.
    routes: Vec<Outcome>,
    /// What thousands of routes usually share a handful of, one copy each: parents as
    /// route statuses name them (defaults filled in), Gateways and ListenerSets,
    /// hostnames.
    shared: Shared,
}

#[derive(Default)]
struct Shared {
    parents: Interner<gwapi::ParentReference>,
    gateways: Interner<(String, String)>,
    hosts: Interner<str>,
    /// The namespace and Service names of targets.
    names: Interner<str>,
    conditions: Interner<[Condition]>,
    /// Route statuses' parent lists.
    statuses: Interner<Box<[RouteParentStatus]>>,
}

type Interner<T> = HashSet<Arc<T>, foldhash::fast::RandomState>;

/// The shared copy of a name (namespaces and Service names): thousands of routes name a
/// few namespaces, and routes often share a Service.
pub(crate) struct Names<'a>(&'a mut Interner<str>);

impl Names<'_> {
    pub(crate) fn get(&mut self, name: &str) -> Arc<str> {
        intern(self.0, name, || name.into())
    }
}

/// The shared copy of `value`, made by `make` the first time.
fn intern<T: ?Sized + Eq + std::hash::Hash>(
    set: &mut Interner<T>,
    value: &T,
    make: impl FnOnce() -> Arc<T>,
) -> Arc<T> {
    if let Some(shared) = set.get(value) {
        return shared.clone();
    }
    let shared = make();
    set.insert(shared.clone());
    shared
}

struct Outcome {
    /// The route it was made from: valid while the store holds this same record.
    stored: Arc<Stored>,
    attachments: Box<[Attachment]>,
    status: Option<RouteStatus>,
}

/// A route's rules bound to one listener, under the hostnames they share.
struct Attachment {
    gateway: Arc<(String, String)>,
    listener: usize,
    /// Boxed: no growth slack (collected in place from the intersection's strings, a
    /// vector kept their allocation, half of it unused).
    hosts: Box<[Option<Arc<str>>]>,
    built: Arc<BuiltRoute>,
}

/// A route's rules before they are bound to a parent.
struct Checked {
    rules: Vec<(Rule, Matchers)>,
    /// First unresolved reference, for ResolvedRefs.
    unresolved: Option<(&'static str, String)>,
}

pub(crate) fn translate(ctx: &Ctx<'_>, gws: &mut Gateways<'_>, cache: &mut Cache) -> RouteResult {
    let deps: Vec<u64> = crate::model::Kind::ALL
        .iter()
        .filter(|k| **k != Kind::HttpRoute)
        .map(|k| ctx.store.kind_epoch(*k))
        .collect();
    let deps = (deps, format!("{:?}", ctx.env));
    if deps != cache.deps {
        tracing::debug!("translation: objects other than routes changed; every route again");
        cache.routes.clear();
        cache.deps = deps;
    }
    let mut translated = 0usize;
    // The last translation's outcomes, walked in step with the routes (both in key
    // order): an outcome is reused when its route is the same record; the others, of
    // routes gone or changed, are dropped on the way.
    let mut old = std::mem::take(&mut cache.routes).into_iter().peekable();
    let mut outcomes = Vec::with_capacity(ctx.store.kind(Kind::HttpRoute).count());
    for stored in ctx.store.kind(Kind::HttpRoute) {
        let Object::HttpRoute(route) = &stored.object else {
            continue;
        };
        let ns = route.metadata.ns();
        let key = stored.name_key();
        while old.next_if(|o| o.stored.name_key() < key).is_some() {}
        if let Some(o) = old.next_if(|o| Arc::ptr_eq(&o.stored, stored)) {
            for a in &o.attachments {
                if let Some(gw) = gws.gateways.get_mut(&a.gateway) {
                    let l = &mut gw.listeners[a.listener];
                    l.attached_routes += 1;
                    for h in &a.hosts {
                        l.entries.push((h.clone(), a.built.clone()));
                    }
                }
            }
            outcomes.push(o);
            continue;
        }
        translated += 1;
        let checked = check(ctx, stored, route, &mut Names(&mut cache.shared.names));
        let mut attachments = Vec::new();
        let mut parents = Vec::new();
        for pref in &route.spec.parent_refs {
            let group = pref.group.as_deref().unwrap_or(GATEWAY_GROUP);
            let kind = pref.kind.as_deref().unwrap_or("Gateway");
            let parent_ns = pref.namespace.as_deref().unwrap_or(ns);
            // The Gateway whose listeners the parentRef reaches, and the ListenerSet in
            // between when the parent is one.
            let (gw_key, owner) = match (group, kind) {
                (GATEWAY_GROUP, "Gateway") => ((parent_ns.to_owned(), pref.name.to_string()), None),
                (GATEWAY_GROUP, "ListenerSet") => {
                    let Some(Object::ListenerSet(ls)) =
                        ctx.store.get_obj(Kind::ListenerSet, parent_ns, &pref.name)
                    else {
                        continue;
                    };
                    let p = &ls.spec.parent_ref;
                    let gw_ns = p.namespace.as_deref().unwrap_or(parent_ns);
                    (
                        (gw_ns.to_owned(), p.name.clone()),
                        Some((parent_ns.to_owned(), pref.name.to_string())),
                    )
                }
                _ => continue,
            };
            let Some(gw) = gws.gateways.get_mut(&gw_key) else {
                continue;
            };
            let mut conds = Conditions::default();
            let accepted = match &checked {
                Err(msg) => Err(("UnsupportedValue", msg.clone())),
                Ok(c) => {
                    let gateways = &mut cache.shared.gateways;
                    let gateway = intern(gateways, &gw_key, || Arc::new(gw_key.clone()));
                    // What the route's ids name as its parent: the ListenerSet, or the
                    // Gateway.
                    let parent = match &owner {
                        Some(o) => intern(gateways, o, || Arc::new(o.clone())),
                        None => gateway.clone(),
                    };
                    let at = Attach {
                        gateway,
                        parent,
                        hosts: &mut cache.shared.hosts,
                        owner: owner.as_ref(),
                        checked: c,
                        stored,
                    };
                    attach(ctx, route, pref, gw, at, &mut attachments)
                }
            };
            match accepted {
                Ok(()) => conds.set("Accepted", true, "Accepted", ""),
                Err((reason, msg)) => conds.set("Accepted", false, reason, msg),
            }
            match checked.as_ref().ok().and_then(|c| c.unresolved.clone()) {
                None => conds.set("ResolvedRefs", true, "ResolvedRefs", ""),
                Some((reason, msg)) => conds.set("ResolvedRefs", false, reason, msg),
            }
            // Status names the parent with defaults filled in, as the API server would.
            let mut parent_ref = pref.clone();
            parent_ref.group = Some(GATEWAY_GROUP.into());
            parent_ref.kind = Some(kind.into());
            parent_ref.namespace = Some(parent_ns.into());
            let parent_ref = intern(&mut cache.shared.parents, &parent_ref, || {
                Arc::new(parent_ref.clone())
            });
            let prev = ctx
                .prev
                .and_then(|p| p.http_routes.get(ns, &route.metadata.name))
                .and_then(|e| e.status.parents.iter().find(|p| p.parent_ref == parent_ref))
                .map(|p| &p.conditions[..]);
            let conditions = conds.finish(route.metadata.generation, prev, &ctx.now);
            let conditions = intern(&mut cache.shared.conditions, &conditions[..], || {
                Arc::from(conditions.as_slice())
            });
            parents.push(RouteParentStatus {
                parent_ref,
                controller_name: CONTROLLER_NAME,
                conditions,
            });
        }
        // Attachments live as long as the route does: no growth slack (a vector grown by
        // pushes holds room for four).
        let attachments = attachments.into_boxed_slice();
        let status = (!parents.is_empty()).then(|| {
            let parents = parents.into_boxed_slice();
            RouteStatus {
                parents: intern(&mut cache.shared.statuses, &parents, || {
                    Arc::new(parents.clone())
                }),
            }
        });
        outcomes.push(Outcome {
            stored: stored.clone(),
            attachments,
            status,
        });
    }
    // Outcomes of routes gone or changed since go, and with them their objects.
    drop(old);
    cache.routes = outcomes;
    let shared = &mut cache.shared;
    // Parent lists first: they hold parents and conditions.
    shared.statuses.retain(|s| Arc::strong_count(s) > 1);
    shared.parents.retain(|p| Arc::strong_count(p) > 1);
    shared.gateways.retain(|g| Arc::strong_count(g) > 1);
    shared.hosts.retain(|h| Arc::strong_count(h) > 1);
    shared.names.retain(|n| Arc::strong_count(n) > 1);
    shared.conditions.retain(|c| Arc::strong_count(c) > 1);
    tracing::debug!(
        translated,
        "translation: routes translated (the others reused)"
    );
    RouteResult {
        statuses: {
            // In the store's order, which is the order of namespace and name. Sized
            // for every route (most have a status): no growth slack.
            let mut list = Vec::with_capacity(cache.routes.len());
            list.extend(cache.routes.iter().filter_map(|o| {
                let status = o.status.clone()?;
                Some(RouteStatusEntry::new(o.stored.clone(), status))
            }));
            RouteStatuses::from_sorted(list)
        },
    }
}

/// Where a route is being attached, and what it brings.
struct Attach<'a> {
    gateway: Arc<(String, String)>,
    /// The parent the route's ids name: `gateway`, or the ListenerSet in between.
    parent: Arc<(String, String)>,
    hosts: &'a mut Interner<str>,
    owner: Option<&'a (String, String)>,
    checked: &'a Checked,
    /// The route as stored (its creation order ranks it against others).
    stored: &'a Arc<Stored>,
}

/// Attaches the route to the listeners `pref` selects. `Err` carries the Accepted reason.
fn attach(
    ctx: &Ctx<'_>,
    route: &gwapi::HttpRoute,
    pref: &gwapi::ParentReference,
    gw: &mut super::gateways::GatewayState<'_>,
    at: Attach<'_>,
    attachments: &mut Vec<Attachment>,
) -> Result<(), (&'static str, String)> {
    let Attach {
        gateway,
        owner,
        checked,
        parent,
        stored,
        hosts: shared_hosts,
    } = at;
    let route_ns = route.metadata.ns();
    let mut candidates: Vec<usize> = (0..gw.listeners.len())
        .filter(|&i| {
            // A Gateway parent reaches the Gateway's own listeners, a ListenerSet its own.
            let owned = gw.listeners[i].owner.as_ref() == owner;
            let l = gw.listeners[i].spec;
            owned
                && pref.section_name.as_deref().is_none_or(|s| s == l.name)
                && pref.port.is_none_or(|p| p == l.port)
        })
        .collect();
    if candidates.is_empty() {
        return Err((
            "NoMatchingParent",
            "no listener matches the parentRef's sectionName and port".into(),
        ));
    }
    let ns_labels = ctx.namespace_labels(route_ns);
    candidates.retain(|&i| {
        let l = &gw.listeners[i];
        l.accepts_routes()
            && l.kinds.iter().any(|k| k.kind == "HTTPRoute")
            && namespace_allowed(l.spec, &l.owner_ns, route_ns, &ns_labels)
    });
    if candidates.is_empty() {
        return Err((
            "NotAllowedByListeners",
            "no listener allows this route (allowedRoutes namespaces or kinds)".into(),
        ));
    }
    let mut attached_any = false;
    let parent = Arc::new(RouteId::new(stored.clone(), Some(parent)));
    let built = Arc::new(BuiltRoute {
        stored: stored.clone(),
        route: parent.clone(),
        rules: checked
            .rules
            .iter()
            .map(|(r, m)| {
                let mut r = r.clone();
                r.route = parent.clone();
                if let Some(ck) = &gw.backend_client_cert {
                    with_client_cert(&mut r, ck, &gw.namespace, &gw.name);
                }
                (Arc::new(r), m.clone())
            })
            .collect(),
    });
    for i in candidates {
        let l = &mut gw.listeners[i];
        let hosts = hostnames::intersect(l.spec.hostname.as_deref(), &route.spec.hostnames);
        if hosts.is_empty() {
            continue;
        }
        attached_any = true;
        l.attached_routes += 1;
        let hosts: Box<[Option<Arc<str>>]> = hosts
            .into_iter()
            .map(|h| h.map(|h| intern(shared_hosts, h.as_str(), || Arc::from(h.as_str()))))
            .collect();
        for h in &hosts {
            l.entries.push((h.clone(), built.clone()));
        }
        attachments.push(Attachment {
            gateway: gateway.clone(),
            listener: i,
            hosts,
            built: built.clone(),
        });
    }
    if !attached_any {
        return Err((
            "NoMatchingListenerHostname",
            "no listener hostname intersects the route's hostnames".into(),
        ));
    }
    Ok(())
}

/// Backends reached over TLS through this Gateway present its client certificate.
fn with_client_cert(rule: &mut Rule, ck: &Arc<rustls::sign::CertifiedKey>, gw_ns: &str, gw: &str) {
    for b in &mut rule.backends {
        let BackendKind::Service(t) = &b.kind else {
            continue;
        };
        let Some(ir::BackendTls::Ready(tls)) = t.tls.as_deref() else {
            continue;
        };
        let tls = ir::UpstreamTls {
            key: format!("{}+{gw_ns}/{gw}", tls.key),
            server_name: tls.server_name.clone(),
            accepted_names: tls.accepted_names.clone(),
            accepted_uris: tls.accepted_uris.clone(),
            roots: tls.roots.clone(),
            client_cert: Some(ck.clone()),
        };
        b.kind = BackendKind::Service(Arc::new(ir::Target {
            namespace: t.namespace.clone(),
            service: t.service.clone(),
            port: t.port,
            h2c: t.h2c,
            endpoints: t.endpoints.clone(),
            tls: Some(Box::new(ir::BackendTls::Ready(Arc::new(tls)))),
        }));
    }
}

fn namespace_allowed(
    l: &gwapi::Listener,
    gw_ns: &str,
    route_ns: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    let ns = l
        .allowed_routes
        .as_ref()
        .and_then(|a| a.namespaces.as_ref());
    match ns.and_then(|n| n.from.as_deref()).unwrap_or("Same") {
        "All" => true,
        "Same" => gw_ns == route_ns,
        "Selector" => ns
            .and_then(|n| n.selector.as_ref())
            .is_some_and(|s| s.matches(labels)),
        _ => false,
    }
}

/// Semantic checks and resolution, independent of the parent. `Err` makes the route not
/// Accepted with reason UnsupportedValue.
fn check(
    ctx: &Ctx<'_>,
    stored: &Arc<Stored>,
    route: &gwapi::HttpRoute,
    names: &mut Names<'_>,
) -> Result<Checked, String> {
    let ns = route.metadata.ns();
    let mut unresolved = None;
    let mut rules = Vec::new();
    let unattached = Arc::new(RouteId::new(stored.clone(), None));
    for (ri, rule) in route.spec.rules.iter().enumerate() {
        let at = |f: &str| format!("spec.rules[{ri}].{f}");
        let default_match = [gwapi::HttpRouteMatch::default()];
        let matches = if rule.matches.is_empty() {
            &default_match[..]
        } else {
            &rule.matches[..]
        };
        let matchers = matches
            .iter()
            .enumerate()
            .map(|(mi, m)| {
                matcher(m)
                    .map(Arc::new)
                    .map_err(|e| format!("{}: {e}", at(&format!("matches[{mi}]"))))
            })
            .collect::<Result<Box<[_]>, _>>()?;
        let rule_filters = filters(ctx, names, ns, &rule.filters, &mut unresolved)
            .map_err(|e| format!("{}: {e}", at("filters")))?;
        let mut backends_out = Vec::new();
        for (bi, b) in rule.backend_refs.iter().enumerate() {
            let kind = match backends::resolve(ctx, names, ns, &b.backend) {
                Ok(t) => BackendKind::Service(t),
                Err(e) => {
                    unresolved.get_or_insert(e);
                    BackendKind::Invalid
                }
            };
            let bf = filters(ctx, names, ns, b.filters(), &mut unresolved)
                .map_err(|e| format!("{}: {e}", at(&format!("backendRefs[{bi}].filters"))))?;
            backends_out.push(Backend {
                weight: b.weight.unwrap_or(1).max(0) as u32,
                kind,
                filters: bf.into(),
            });
        }
        let timeout =
            |v: Option<&String>| v.and_then(|s| duration::parse(s)).filter(|d| !d.is_zero());
        let retry = rule.retry().map(|r| ir::Retry {
            codes: r.codes.clone(),
            attempts: r.attempts.unwrap_or(1).max(0) as u32,
            backoff: r
                .backoff
                .as_deref()
                .and_then(duration::parse)
                .unwrap_or(Duration::from_millis(25)),
        });
        let limits = ir::Limits {
            request_timeout: timeout(rule.timeouts().and_then(|t| t.request.as_ref())),
            backend_timeout: timeout(rule.timeouts().and_then(|t| t.backend_request.as_ref())),
            retry,
        };
        let has_limits = limits.request_timeout.is_some()
            || limits.backend_timeout.is_some()
            || limits.retry.is_some();
        let rule_ir = Rule {
            // Set when the route attaches to a parent.
            route: unattached.clone(),
            index: ri,
            filters: rule_filters.into(),
            backends: backends_out.into(),
            limits: has_limits.then(|| Box::new(limits)),
            metrics: Default::default(),
        };
        rules.push((rule_ir, matchers));
    }
    Ok(Checked { rules, unresolved })
}

fn matcher(m: &gwapi::HttpRouteMatch) -> Result<Matcher, String> {
    let path = match &m.path {
        None => PathMatch::Prefix(SharedStr::interned("/")),
        Some(p) => {
            // The route's own (shared) string where it is the matcher's.
            let value = || p.value.clone().unwrap_or_else(|| SharedStr::interned("/"));
            let v = p.value.as_deref().unwrap_or("/");
            match p.type_.as_deref().unwrap_or("PathPrefix") {
                "Exact" => PathMatch::Exact(value()),
                "PathPrefix" => {
                    let trimmed = v.trim_end_matches('/');
                    PathMatch::Prefix(if trimmed.is_empty() {
                        SharedStr::interned("/")
                    } else if trimmed.len() == v.len() {
                        value()
                    } else {
                        SharedStr::interned(trimmed)
                    })
                }
                "RegularExpression" => PathMatch::Regex(Box::new(anchored(v)?)),
                other => return Err(format!("path match type {other} is not supported")),
            }
        }
    };
    let method = match &m.method {
        None => None,
        Some(s) => Some(Box::new(
            Method::from_bytes(s.as_bytes()).map_err(|_| format!("method {s:?} is not valid"))?,
        )),
    };
    let mut headers = Vec::new();
    for h in &m.headers {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| format!("header name {:?} is not valid", h.name))?;
        // The first match for a header name wins, as the spec requires.
        if headers.iter().any(|(n, _)| *n == name) {
            continue;
        }
        headers.push((name, value_match(h)?));
    }
    let mut query = Vec::new();
    for q in &m.query_params {
        if query.iter().any(|(n, _)| n == &q.name) {
            continue;
        }
        query.push((q.name.clone(), value_match(q)?));
    }
    Ok(Matcher {
        path,
        method,
        headers: headers.into(),
        query: query.into(),
    })
}

fn value_match(h: &gwapi::HttpHeaderMatch) -> Result<ValueMatch, String> {
    match h.type_.as_deref().unwrap_or("Exact") {
        "Exact" => Ok(ValueMatch::Exact(h.value.clone())),
        "RegularExpression" => Ok(ValueMatch::Regex(Box::new(anchored(&h.value)?))),
        other => Err(format!("match type {other} is not supported")),
    }
}

/// Gateway API regular expressions match the whole value.
fn anchored(re: &str) -> Result<Regex, String> {
    Regex::new(&format!("^(?:{re})$"))
        .map_err(|e| format!("invalid regular expression {re:?}: {e}"))
}

fn filters(
    ctx: &Ctx<'_>,
    names: &mut Names<'_>,
    ns: &str,
    list: &[gwapi::HttpRouteFilter],
    unresolved: &mut Option<(&'static str, String)>,
) -> Result<Vec<Filter>, String> {
    let mut out = Vec::new();
    for f in list {
        match &*f.type_ {
            "RequestHeaderModifier" => out.push(Filter::RequestHeaders(header_edit(
                f.request_header_modifier.as_deref(),
            )?)),
            "ResponseHeaderModifier" => out.push(Filter::ResponseHeaders(header_edit(
                f.response_header_modifier.as_deref(),
            )?)),
            "RequestRedirect" => {
                let r = f.request_redirect.clone().unwrap_or_default();
                out.push(Filter::Redirect(ir::Redirect {
                    scheme: r.scheme,
                    hostname: r.hostname,
                    port: r.port.map(|p| p as u16),
                    path: path_rewrite(r.path.as_ref())?,
                    status: r.status_code.unwrap_or(302) as u16,
                }));
            }
            "URLRewrite" => {
                let r = f.url_rewrite.clone().unwrap_or_default();
                out.push(Filter::Rewrite {
                    hostname: r.hostname,
                    path: path_rewrite(r.path.as_ref())?,
                });
            }
            "RequestMirror" => {
                let m = f
                    .request_mirror
                    .as_ref()
                    .ok_or("requestMirror is missing")?;
                let (numerator, denominator) = match (&m.fraction, m.percent) {
                    (Some(fr), _) => (
                        fr.numerator.max(0) as u32,
                        fr.denominator.unwrap_or(100).max(1) as u32,
                    ),
                    (None, Some(p)) => (p.clamp(0, 100) as u32, 100),
                    (None, None) => (1, 1),
                };
                match backends::resolve(ctx, names, ns, &m.backend_ref) {
                    Ok(target) => out.push(Filter::Mirror {
                        target,
                        numerator,
                        denominator,
                    }),
                    Err(e) => {
                        unresolved.get_or_insert(e);
                    }
                }
            }
            "CORS" => {
                let c = f.cors.clone().unwrap_or_default();
                out.push(Filter::Cors(ir::Cors {
                    allow_origins: c.allow_origins,
                    allow_credentials: c.allow_credentials.unwrap_or(false),
                    allow_methods: c.allow_methods,
                    allow_headers: c.allow_headers,
                    expose_headers: c.expose_headers,
                    max_age: c.max_age.map(|a| a.max(0) as u32),
                }));
            }
            other => return Err(format!("filter type {other} is not supported")),
        }
    }
    Ok(out)
}

fn header_edit(m: Option<&gwapi::HttpHeaderFilter>) -> Result<ir::HeaderEdit, String> {
    let m = m.cloned().unwrap_or_default();
    let pair = |h: &gwapi::HttpHeader| -> Result<(HeaderName, HeaderValue), String> {
        Ok((
            HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| format!("header name {:?} is not valid", h.name))?,
            HeaderValue::from_str(&h.value)
                .map_err(|_| format!("header value {:?} is not valid", h.value))?,
        ))
    };
    Ok(ir::HeaderEdit {
        set: m.set.iter().map(pair).collect::<Result<_, _>>()?,
        add: m.add.iter().map(pair).collect::<Result<_, _>>()?,
        remove: m
            .remove
            .iter()
            .map(|n| {
                HeaderName::from_bytes(n.as_bytes())
                    .map_err(|_| format!("header name {n:?} is not valid"))
            })
            .collect::<Result<_, _>>()?,
    })
}

fn path_rewrite(p: Option<&gwapi::HttpPathModifier>) -> Result<Option<ir::PathRewrite>, String> {
    let Some(p) = p else { return Ok(None) };
    match p.type_.as_str() {
        "ReplaceFullPath" => Ok(Some(ir::PathRewrite::Full(
            p.replace_full_path.clone().unwrap_or_else(|| "/".into()),
        ))),
        "ReplacePrefixMatch" => Ok(Some(ir::PathRewrite::Prefix(
            p.replace_prefix_match.clone().unwrap_or_else(|| "/".into()),
        ))),
        other => Err(format!("path modifier type {other} is not supported")),
    }
}

/// Orders every match of the routes in one virtual host by the spec's precedence: exact
/// path, then longest prefix (regular expressions between the two), method, most headers,
/// most query parameters, oldest route, route namespace/name, rule order, match order.
pub(crate) fn virtual_host(routes: &[&Arc<BuiltRoute>]) -> ir::VirtualHost {
    type Key<'k> = (
        u8,
        Reverse<usize>,
        u8,
        Reverse<usize>,
        Reverse<usize>,
        (&'k str, u64),
        &'k str,
        &'k str,
        usize,
        usize,
    );
    let count = routes
        .iter()
        .flat_map(|r| &r.rules)
        .map(|(_, m)| m.len())
        .sum();
    let mut entries: Vec<(Key<'_>, RouteEntry)> = Vec::with_capacity(count);
    for r in routes {
        for (ri, (rule, matchers)) in r.rules.iter().enumerate() {
            for (mi, m) in matchers.iter().enumerate() {
                let (rank, len) = match &m.path {
                    PathMatch::Exact(p) => (0, p.len()),
                    PathMatch::Regex(re) => (1, re.as_str().len()),
                    PathMatch::Prefix(p) => (2, p.len()),
                };
                let key = (
                    rank,
                    Reverse(len),
                    u8::from(m.method.is_none()),
                    Reverse(m.headers.len()),
                    Reverse(m.query.len()),
                    r.age(),
                    r.route.namespace(),
                    r.route.name(),
                    ri,
                    mi,
                );
                entries.push((
                    key,
                    RouteEntry {
                        matcher: m.clone(),
                        rule: rule.clone(),
                    },
                ));
            }
        }
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    // Into a new vector of its own size: collecting in place would keep the allocation
    // sized for the sort keys for as long as the snapshot lives.
    let mut out = Vec::with_capacity(entries.len());
    out.extend(entries.into_iter().map(|(_, e)| e));
    ir::VirtualHost { entries: out }
}
