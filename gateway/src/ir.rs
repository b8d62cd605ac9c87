//! The routing snapshot: an immutable, fully resolved description of what every bound
//! socket serves. Translation builds it; the data plane swaps it in atomically, and requests
//! in flight finish on the snapshot they started with.

use std::{
    collections::BTreeMap, collections::HashMap, net::SocketAddr, sync::Arc, time::Duration,
};

use cedille_objects::SharedStr;
use http::{HeaderName, HeaderValue, Method};
use regex::Regex;
use rustls::sign::CertifiedKey;
use serde::Serialize;

#[derive(Default)]
pub struct Snapshot {
    /// Every socket to bind, with what it serves.
    pub ports: BTreeMap<SocketAddr, Arc<PortConfig>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Protocol {
    Http,
    Https,
}

pub struct PortConfig {
    pub addr: SocketAddr,
    pub protocol: Protocol,
    /// Client certificate validation for this HTTPS port.
    pub client_auth: Option<Arc<ClientAuth>>,
    /// Listeners sharing this socket, most specific hostname first.
    pub listeners: Vec<Arc<IrListener>>,
}

impl std::fmt::Debug for PortConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortConfig")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl PortConfig {
    /// The listener a hostname (Host header or SNI) selects: the most specific match.
    pub fn listener_for(&self, host: Option<&str>) -> Option<&Arc<IrListener>> {
        self.listeners.iter().find(|l| match (&l.hostname, host) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(pattern), Some(h)) => hostname_matches(pattern, h),
        })
    }
}

/// Whether `host` (lowercase, no port) matches a listener or route hostname pattern.
pub fn hostname_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('*') {
        // "*.example.com" matches any name with at least one more label.
        Some(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        None => pattern == host,
    }
}

/// Identity of a Gateway listener, for status, logs and metric labels.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ListenerId {
    pub namespace: String,
    pub gateway: String,
    pub listener: String,
}

/// Frontend client certificate validation (Gateway spec.tls.frontend).
pub struct ClientAuth {
    pub roots: Arc<rustls::RootCertStore>,
    /// `AllowValidOnly`: a certificate from these roots is required. Otherwise
    /// (`AllowInsecureFallback`) one is asked for, but a missing or invalid one is let in.
    pub required: bool,
}

pub struct IrListener {
    pub id: ListenerId,
    pub port: u16,
    pub hostname: Option<String>,
    /// Certificates for HTTPS, in the order of `certificateRefs` (the first usable one is
    /// served, which with several key types lets rustls pick per client).
    pub certs: Vec<Arc<CertifiedKey>>,
    pub client_auth: Option<Arc<ClientAuth>>,
    pub vhosts: VirtualHosts,
}

#[derive(Default)]
pub struct VirtualHosts {
    pub exact: HashMap<String, Arc<VirtualHost>>,
    /// `(suffix with leading dot, host)`, longest suffix first.
    pub wildcard: Vec<(String, Arc<VirtualHost>)>,
    pub any: Option<Arc<VirtualHost>>,
}

impl VirtualHosts {
    /// The most specific virtual host for `host`: exact, then longest wildcard, then the
    /// catch-all. There is no fall-through to a less specific one.
    pub fn find(&self, host: &str) -> Option<&Arc<VirtualHost>> {
        if let Some(v) = self.exact.get(host) {
            return Some(v);
        }
        for (suffix, v) in &self.wildcard {
            if host.len() > suffix.len() && host.ends_with(suffix.as_str()) {
                return Some(v);
            }
        }
        self.any.as_ref()
    }
}

#[derive(Default)]
pub struct VirtualHost {
    /// Matches in precedence order; the first that matches wins.
    pub entries: Vec<RouteEntry>,
}

pub struct RouteEntry {
    /// Shared with the route it came from (a route's matches are built once).
    pub matcher: Arc<Matcher>,
    pub rule: Arc<Rule>,
}

/// The paths are shared strings: the same paths ("/", "/api") recur across routes, and
/// the route objects hold the same strings (a prefix written with a trailing slash gets
/// one of its own).
#[derive(Clone, Debug)]
pub enum PathMatch {
    Exact(SharedStr),
    /// Normalised: no trailing slash except for "/" itself.
    Prefix(SharedStr),
    /// Boxed, here and in [`ValueMatch`]: a regex is 32 bytes, few matches have one, and
    /// every matcher carries this enum.
    Regex(Box<Regex>),
}

impl PathMatch {
    /// The path as the route wrote it: the exact path, the prefix, or the expression.
    pub fn pattern(&self) -> String {
        match self {
            PathMatch::Exact(p) | PathMatch::Prefix(p) => p.to_string(),
            PathMatch::Regex(r) => r.as_str().to_owned(),
        }
    }

    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => path == &**p,
            PathMatch::Prefix(p) => {
                &**p == "/"
                    || (path.starts_with(&**p)
                        && matches!(path.as_bytes().get(p.len()), None | Some(b'/')))
            }
            PathMatch::Regex(r) => r.is_match(path),
        }
    }
}

#[derive(Clone, Debug)]
pub enum ValueMatch {
    Exact(Box<str>),
    Regex(Box<Regex>),
}

impl ValueMatch {
    pub fn matches(&self, v: &str) -> bool {
        match self {
            ValueMatch::Exact(e) => **e == *v,
            ValueMatch::Regex(r) => r.is_match(v),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Matcher {
    pub path: PathMatch,
    /// Boxed: few matches name a method, and a matcher without one is a size class
    /// smaller.
    pub method: Option<Box<Method>>,
    /// Boxed slices, here and below: what lives as long as a snapshot keeps no growth
    /// slack or capacity word.
    pub headers: Box<[(HeaderName, ValueMatch)]>,
    /// Few matches name query parameters.
    pub query: ThinList<(Box<str>, ValueMatch)>,
}

/// A list behind one thin pointer, null when empty: for lists that most matches, rules
/// and backends leave empty, in structures every route has (a boxed slice is two words).
pub struct ThinList<T>(Option<Box<Box<[T]>>>);

impl<T> From<Vec<T>> for ThinList<T> {
    fn from(v: Vec<T>) -> Self {
        ThinList((!v.is_empty()).then(|| Box::new(v.into_boxed_slice())))
    }
}

impl<T: Clone> Clone for ThinList<T> {
    fn clone(&self) -> Self {
        ThinList(self.0.clone())
    }
}

impl<T> std::ops::Deref for ThinList<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.0.as_deref().map_or(&[], |b| b)
    }
}

impl<'a, T> IntoIterator for &'a ThinList<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for ThinList<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Where a rule's traffic comes from, for status, logs and metric labels: the route as
/// stored (its namespace and name; the snapshot holds the record anyway) and the parent
/// it attached through, `(namespace, name)`, shared by the routes of that parent. Two
/// pointers: every route of every parent has one.
#[derive(Clone)]
pub struct RouteId {
    route: Arc<crate::store::Stored>,
    /// None for a route's rules before they attach to a parent.
    parent: Option<Arc<(String, String)>>,
}

impl RouteId {
    pub fn new(route: Arc<crate::store::Stored>, parent: Option<Arc<(String, String)>>) -> Self {
        RouteId { route, parent }
    }
    pub fn namespace(&self) -> &str {
        self.route.name_key().0
    }
    pub fn name(&self) -> &str {
        self.route.name_key().1
    }
    pub fn parent_namespace(&self) -> &str {
        self.parent.as_ref().map_or("", |p| &p.0)
    }
    pub fn parent_name(&self) -> &str {
        self.parent.as_ref().map_or("", |p| &p.1)
    }
}

impl std::fmt::Debug for RouteId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteId")
            .field("namespace", &self.namespace())
            .field("name", &self.name())
            .field("parent_namespace", &self.parent_namespace())
            .field("parent_name", &self.parent_name())
            .finish()
    }
}

#[derive(Clone)]
pub struct Rule {
    /// Shared by every rule of the route attached through the same parent.
    pub route: Arc<RouteId>,
    pub index: usize,
    pub filters: ThinList<Filter>,
    pub backends: Box<[Backend]>,
    /// Timeouts and retry, boxed together: few rules have any, and every rule lives as
    /// long as its snapshot.
    pub limits: Option<Box<Limits>>,
    /// This rule's metric handles, looked up on its first request (label lookups are too
    /// costly to repeat on every request).
    pub metrics: std::sync::OnceLock<Arc<crate::metrics::RouteMetrics>>,
}

#[derive(Clone, Debug)]
pub struct Limits {
    pub request_timeout: Option<Duration>,
    pub backend_timeout: Option<Duration>,
    pub retry: Option<Retry>,
}

impl Rule {
    /// Sum of backend weights; 0 with backends present means every backend has weight 0.
    /// Summed when asked (a rule has a few backends): a field would make every rule a size
    /// class larger.
    pub fn total_weight(&self) -> u64 {
        self.backends.iter().map(|b| u64::from(b.weight)).sum()
    }

    pub fn request_timeout(&self) -> Option<Duration> {
        self.limits.as_ref().and_then(|l| l.request_timeout)
    }

    pub fn backend_timeout(&self) -> Option<Duration> {
        self.limits.as_ref().and_then(|l| l.backend_timeout)
    }

    pub fn retry(&self) -> Option<&Retry> {
        self.limits.as_ref().and_then(|l| l.retry.as_ref())
    }
}

#[derive(Clone, Debug)]
pub struct Retry {
    pub codes: Vec<u16>,
    /// Total attempts, the first included.
    pub attempts: u32,
    pub backoff: Duration,
}

#[derive(Clone)]
pub struct HeaderEdit {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

#[derive(Clone)]
pub enum PathRewrite {
    Full(String),
    /// Replace the part matched by the rule's PathPrefix with this.
    Prefix(String),
}

#[derive(Clone)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub port: Option<u16>,
    pub path: Option<PathRewrite>,
    pub status: u16,
}

#[derive(Clone)]
pub struct Cors {
    pub allow_origins: Vec<String>,
    pub allow_credentials: bool,
    pub allow_methods: Vec<String>,
    pub allow_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    pub max_age: Option<u32>,
}

#[derive(Clone)]
pub enum Filter {
    RequestHeaders(HeaderEdit),
    ResponseHeaders(HeaderEdit),
    Redirect(Redirect),
    Rewrite {
        hostname: Option<String>,
        path: Option<PathRewrite>,
    },
    Mirror {
        target: Arc<Target>,
        /// Share of requests mirrored, as numerator / denominator.
        numerator: u32,
        denominator: u32,
    },
    Cors(Cors),
}

#[derive(Clone)]
pub struct Backend {
    pub weight: u32,
    pub kind: BackendKind,
    /// Filters on this backendRef, applied after the rule's.
    pub filters: ThinList<Filter>,
}

#[derive(Clone)]
pub enum BackendKind {
    /// A resolved Service port.
    Service(Arc<Target>),
    /// An invalid reference: requests that pick it get a 500.
    Invalid,
}

/// A Service port resolved to its ready endpoints.
#[derive(Debug, Serialize)]
pub struct Target {
    /// Shared with the backend-endpoint gauge's labels.
    pub namespace: Arc<str>,
    pub service: Arc<str>,
    pub port: u16,
    pub h2c: bool,
    pub endpoints: Box<[SocketAddr]>,
    /// TLS to the endpoints, from a BackendTLSPolicy. Boxed: most Services have none,
    /// and a target without it is a size class smaller.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<Box<BackendTls>>,
}

/// How to reach a Service over TLS; `Invalid` when its policy cannot be applied (requests
/// then fail rather than go out in clear text).
#[derive(Clone, Debug, Serialize)]
pub enum BackendTls {
    Ready(#[serde(skip)] Arc<UpstreamTls>),
    Invalid(String),
}

pub struct UpstreamTls {
    /// Identifies this configuration (policy and generation), for connection pooling.
    pub key: String,
    /// SNI sent to the backend.
    pub server_name: String,
    /// DNS names the backend certificate may match (the hostname, or the policy's
    /// Hostname subjectAltNames).
    pub accepted_names: Vec<String>,
    /// URIs (the policy's URI subjectAltNames) the certificate may carry instead.
    pub accepted_uris: Vec<String>,
    /// Presented when the backend asks (the Gateway's spec.tls.backend.clientCertificateRef).
    pub client_cert: Option<Arc<CertifiedKey>>,
    pub roots: Arc<rustls::RootCertStore>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("key", &self.key)
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl Snapshot {
    /// Every Service port a route's rule sends to, once per target (a target shared by
    /// several rules comes up once for each).
    pub fn targets(&self) -> impl Iterator<Item = &Arc<Target>> {
        self.ports.values().flat_map(|p| {
            p.listeners.iter().flat_map(|l| {
                let v = &l.vhosts;
                v.exact
                    .values()
                    .chain(v.wildcard.iter().map(|(_, v)| v))
                    .chain(v.any.iter())
                    .flat_map(|v| &v.entries)
                    .flat_map(|e| &e.rule.backends)
                    .filter_map(|b| match &b.kind {
                        BackendKind::Service(t) => Some(t),
                        BackendKind::Invalid => None,
                    })
            })
        })
    }

    /// The effective routing table as JSON, for `/config`.
    pub fn describe(&self) -> serde_json::Value {
        use serde_json::json;
        let ports: Vec<_> = self
            .ports
            .values()
            .map(|p| {
                let listeners: Vec<_> = p
                    .listeners
                    .iter()
                    .map(|l| {
                        let mut hosts: Vec<(String, &Arc<VirtualHost>)> =
                            l.vhosts.exact.iter().map(|(h, v)| (h.clone(), v)).collect();
                        hosts.sort_by(|a, b| a.0.cmp(&b.0));
                        hosts.extend(l.vhosts.wildcard.iter().map(|(s, v)| (format!("*{s}"), v)));
                        hosts.extend(l.vhosts.any.iter().map(|v| ("*".to_owned(), v)));
                        let vhosts: Vec<_> = hosts
                            .into_iter()
                            .map(|(h, v)| json!({"host": h, "routes": v.entries.iter().map(describe_entry).collect::<Vec<_>>()}))
                            .collect();
                        json!({
                            "gateway": format!("{}/{}", l.id.namespace, l.id.gateway),
                            "listener": l.id.listener,
                            "hostname": l.hostname,
                            "certificates": l.certs.len(),
                            "virtualHosts": vhosts,
                        })
                    })
                    .collect();
                json!({"address": p.addr.to_string(), "protocol": p.protocol, "listeners": listeners})
            })
            .collect();
        json!({ "sockets": ports })
    }
}

fn describe_entry(e: &RouteEntry) -> serde_json::Value {
    use serde_json::json;
    let m = &e.matcher;
    let path = match &m.path {
        PathMatch::Exact(p) => json!({"exact": p}),
        PathMatch::Prefix(p) => json!({"prefix": p}),
        PathMatch::Regex(r) => json!({"regex": r.as_str()}),
    };
    let backends: Vec<_> = e
        .rule
        .backends
        .iter()
        .map(|b| match &b.kind {
            BackendKind::Service(t) => json!({"weight": b.weight, "service": format!("{}/{}", t.namespace, t.service), "port": t.port, "h2c": t.h2c, "endpoints": t.endpoints}),
            BackendKind::Invalid => json!({"weight": b.weight, "invalid": true}),
        })
        .collect();
    json!({
        "route": format!("{}/{}", e.rule.route.namespace(), e.rule.route.name()),
        "rule": e.rule.index,
        "path": path,
        "method": m.method.as_deref().map(Method::as_str),
        "headers": m.headers.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        "queryParams": m.query.iter().map(|(n, _)| &**n).collect::<Vec<_>>(),
        "filters": e.rule.filters.len(),
        "backends": backends,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_matches_whole_segments() {
        let p = PathMatch::Prefix("/foo".into());
        assert!(p.matches("/foo"));
        assert!(p.matches("/foo/"));
        assert!(p.matches("/foo/bar"));
        assert!(!p.matches("/foobar"));
        assert!(!p.matches("/fo"));
        assert!(PathMatch::Prefix("/".into()).matches("/anything"));
    }

    #[test]
    fn wildcard_needs_an_extra_label() {
        assert!(hostname_matches("*.example.com", "a.example.com"));
        assert!(hostname_matches("*.example.com", "a.b.example.com"));
        assert!(!hostname_matches("*.example.com", "example.com"));
        assert!(hostname_matches("example.com", "example.com"));
        assert!(!hostname_matches("example.com", "a.example.com"));
    }
}
