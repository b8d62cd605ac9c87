//! One request: pick the listener and virtual host, find the first matching route entry,
//! apply its filters, and forward to a backend with the rule's timeouts and retries.

use std::{
    net::SocketAddr,
    panic::AssertUnwindSafe,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures_util::FutureExt;
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, header,
    uri::PathAndQuery,
};
use http_body_util::{BodyExt, Limited};
use hyper::body::Frame;
use tracing::{debug, error, info};

use super::{Body, BoxError, empty, full, headers, upstream::Upstreams};
use crate::{
    ir::{self, BackendKind, Filter, PathMatch, PathRewrite, PortConfig, Protocol, RouteEntry},
    metrics::{Failure, Metrics, Origin, RouteMetrics, Unmatched, UpstreamError, protocol_index},
    telemetry::{Span, Tracer},
};

/// Largest request body buffered for retries and mirrors.
const MAX_BUFFERED_BODY: usize = 4 << 20;
/// How long a mirrored request may take before it is abandoned.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Shared {
    pub upstreams: Upstreams,
    pub metrics: Arc<Metrics>,
    /// Request tracing, when an OTLP endpoint is configured.
    pub tracer: Option<Arc<Tracer>>,
    /// An upgraded connection (WebSocket) with no bytes either way for this long is closed.
    pub idle_timeout: std::time::Duration,
}

/// What the connection a request arrived on knows.
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The peer's address as an X-Forwarded-For value, formatted once per connection.
    pub peer_ip: HeaderValue,

    pub tls: bool,
    pub sni: Option<String>,
    /// The `alt-svc` value a TCP connection's responses carry when the socket also serves
    /// HTTP/3.
    pub alt_svc: Option<HeaderValue>,
}

impl ConnInfo {
    /// `tls` is the TLS server name the client sent, if the connection is TLS.
    pub fn new(peer: SocketAddr, tls: Option<Option<String>>) -> Self {
        let ip = peer.ip().to_canonical().to_string();
        Self {
            peer,
            peer_ip: HeaderValue::from_str(&ip).expect("an IP address is a valid header value"),
            tls: tls.is_some(),
            sni: tls.flatten(),
            alt_svc: None,
        }
    }
}

/// An error the gateway answers itself, classified (see [`Failure`]): the class travels in
/// the response's extensions to the error metric and the access log.
fn fail(why: Failure, status: StatusCode, msg: &str) -> Response<Body> {
    let mut r = Response::new(full(format!("{msg}\n")));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r.extensions_mut().insert(why);
    r
}

/// A refusal after which the connection must not be reused: the request's framing cannot
/// be trusted, so whatever follows it on the connection is not read.
fn refuse_and_close(why: Failure, status: StatusCode, msg: &str) -> Response<Body> {
    let mut r = fail(why, status, msg);
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// HTTP/1.x framing a proxy must refuse rather than interpret (request smuggling): more
/// than one Host field (RFC 9112 3.2); Transfer-Encoding together with Content-Length
/// (refused outright, as Envoy does, rather than letting chunked win, RFC 9112 6.3);
/// chunked not the final coding (400) or a coding we do not implement (501, RFC 9112 6.1).
fn framing_error<B>(req: &Request<B>) -> Option<(StatusCode, &'static str)> {
    if req.version() >= hyper::Version::HTTP_2 {
        return None;
    }
    let h = req.headers();
    if h.get_all(header::HOST).iter().count() > 1 {
        return Some((StatusCode::BAD_REQUEST, "more than one Host header"));
    }
    let te: Vec<String> = h
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("\u{0}").split(','))
        .map(|c| c.trim().to_ascii_lowercase())
        .filter(|c| !c.is_empty())
        .collect();
    if te.is_empty() {
        return None;
    }
    if h.contains_key(header::CONTENT_LENGTH) {
        return Some((
            StatusCode::BAD_REQUEST,
            "both Content-Length and Transfer-Encoding",
        ));
    }
    if te.last().map(String::as_str) != Some("chunked") {
        return Some((
            StatusCode::BAD_REQUEST,
            "chunked must be the final transfer coding",
        ));
    }
    if te.len() > 1 {
        return Some((
            StatusCode::NOT_IMPLEMENTED,
            "transfer codings other than chunked are not implemented",
        ));
    }
    None
}

/// The client's request body failed while it was being forwarded (a malformed chunk, say):
/// the client's fault, answered 400, not a backend failure.
#[derive(Debug)]
struct ClientBodyError(BoxError);

impl std::fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the client's request body: {}", self.0)
    }
}

impl std::error::Error for ClientBodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// Whether `e`, or an error it was caused by, is the client's body failing.
fn caused_by_client_body(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<ClientBodyError>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// A request body the handler can forward: hyper's on TCP connections, the request stream's
/// on HTTP/3.
pub trait RequestBody:
    hyper::body::Body<Data = Bytes, Error: Into<BoxError>> + Send + Sync + Unpin + 'static
{
}

impl<T> RequestBody for T where
    T: hyper::body::Body<Data = Bytes, Error: Into<BoxError>> + Send + Sync + Unpin + 'static
{
}

pub async fn handle<B: RequestBody>(
    shared: Arc<Shared>,
    port: Arc<PortConfig>,
    conn: Arc<ConnInfo>,
    req: Request<B>,
) -> Response<Body> {
    let head = req.method() == Method::HEAD;
    let metrics = shared.metrics.clone();
    // A panic while handling one request answers that request with 500 (counted, logged)
    // instead of ending the connection and every stream on it.
    let alt_svc = conn.alt_svc.clone();
    let mut resp = AssertUnwindSafe(traced(shared, port, conn, req))
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("?");
            error!(panic = what, "request handler panicked; answered 500");
            fail(
                Failure::new(Origin::Internal, "panic"),
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error",
            )
        });
    if let Some(f) = resp.extensions().get::<Failure>() {
        metrics.error(*f);
    }
    // HTTP/3 on the same port, advertised unless a filter or the backend said otherwise.
    if let Some(v) = alt_svc
        && !resp.headers().contains_key(header::ALT_SVC)
    {
        resp.headers_mut().insert(header::ALT_SVC, v);
    }
    if head {
        // HTTP/1.1 drops a HEAD response's body by itself; HTTP/2 would send it as DATA.
        let (parts, _) = resp.into_parts();
        return Response::from_parts(parts, empty());
    }
    resp
}

/// [`route`], in a trace span when tracing is on.
async fn traced<B: RequestBody>(
    shared: Arc<Shared>,
    port: Arc<PortConfig>,
    conn: Arc<ConnInfo>,
    req: Request<B>,
) -> Response<Body> {
    match shared.tracer.clone() {
        None => route(shared, port, conn, req, None).await,
        Some(tracer) => {
            let span = tracer.start(req.headers(), req.method().as_str().to_owned());
            span.set("http.request.method", req.method().as_str());
            span.set("url.path", req.uri().path());
            span.set("url.scheme", if conn.tls { "https" } else { "http" });
            span.set(
                "network.protocol.version",
                match req.version() {
                    http::Version::HTTP_2 => "2",
                    http::Version::HTTP_3 => "3",
                    _ => "1.1",
                },
            );
            span.set("client.address", conn.peer.ip().to_string());
            let resp = route(shared, port, conn, req, Some(&span)).await;
            span.set(
                "http.response.status_code",
                i64::from(resp.status().as_u16()),
            );
            tracer.finish(span, resp.status().is_server_error());
            resp
        }
    }
}

async fn route<B: RequestBody>(
    shared: Arc<Shared>,
    port: Arc<PortConfig>,
    conn: Arc<ConnInfo>,
    req: Request<B>,
    span: Option<&Span>,
) -> Response<Body> {
    let start = Instant::now();
    let protocol = protocol_index(req.version());
    let unmatched = |why: Unmatched, status: StatusCode, msg: &str| {
        shared.metrics.unmatched(protocol, why);
        let resp = fail(Failure::new(Origin::Client, why.as_str()), status, msg);
        log_unmatched(&conn, &req, &resp, start);
        resp
    };

    if let Some((status, why)) = framing_error(&req) {
        shared.metrics.unmatched(protocol, Unmatched::BadFraming);
        let resp = refuse_and_close(
            Failure::new(Origin::Client, Unmatched::BadFraming.as_str()),
            status,
            why,
        );
        log_unmatched(&conn, &req, &resp, start);
        return resp;
    }
    let Some(host) = headers::request_host(&req) else {
        return unmatched(
            Unmatched::MissingHost,
            StatusCode::BAD_REQUEST,
            "missing Host header",
        );
    };
    let Some(listener) = port.listener_for(Some(&host)) else {
        return unmatched(
            Unmatched::NoListener,
            StatusCode::NOT_FOUND,
            "no listener for this host",
        );
    };
    if conn.tls {
        let by_sni = port.listener_for(conn.sni.as_deref());
        if !by_sni.is_some_and(|l| Arc::ptr_eq(l, listener)) {
            return unmatched(
                Unmatched::Misdirected,
                StatusCode::MISDIRECTED_REQUEST,
                "the Host does not match the TLS server name",
            );
        }
    }
    let Some(vhost) = listener.vhosts.find(&host) else {
        return unmatched(
            Unmatched::NoRouteForHost,
            StatusCode::NOT_FOUND,
            "no route for this host",
        );
    };
    let query = parse_query(req.uri().query());
    let Some(entry) = vhost
        .entries
        .iter()
        .find(|e| matches(&e.matcher, &req, &query))
    else {
        return unmatched(
            Unmatched::NoMatch,
            StatusCode::NOT_FOUND,
            "no route matches",
        );
    };
    let rule = entry.rule.clone();
    if let Some(span) = span {
        span.set("server.address", host.clone());
        span.set(
            "cedille.route",
            format!("{}/{}", rule.route.namespace(), rule.route.name()),
        );
        span.set(
            "cedille.gateway",
            format!(
                "{}/{}",
                rule.route.parent_namespace(),
                rule.route.parent_name()
            ),
        );
        span.set("http.route", entry.matcher.path.pattern());
    }
    let metrics = rule
        .metrics
        .get_or_init(|| Arc::new(shared.metrics.route(&rule.route)));
    // Captured for the access log only when it is on.
    let logged = tracing::enabled!(target: "access", tracing::Level::INFO)
        .then(|| (req.method().clone(), req.uri().path().to_owned()));
    let observe = Observe { metrics, span };
    let fut = process(&shared, &port, &conn, entry, req, host, observe);
    let resp = match rule.request_timeout() {
        Some(t) => tokio::time::timeout(t, fut).await.unwrap_or_else(|_| {
            fail(
                Failure::new(Origin::Timeout, "request_timeout"),
                StatusCode::GATEWAY_TIMEOUT,
                "request timeout",
            )
        }),
        None => fut.await,
    };
    metrics.record(protocol, resp.status(), start.elapsed());
    if let Some((method, path)) = logged {
        let error = resp.extensions().get::<Failure>();
        info!(target: "access", peer = %conn.peer, %method, path, status = resp.status().as_u16(),
            route = %format_args!("{}/{}", rule.route.namespace(), rule.route.name()),
            error = error.map(tracing::field::display),
            duration_ms = start.elapsed().as_secs_f64() * 1e3);
    }
    resp
}

/// The access log line of a request that reached no route.
fn log_unmatched<B>(conn: &ConnInfo, req: &Request<B>, resp: &Response<Body>, start: Instant) {
    if tracing::enabled!(target: "access", tracing::Level::INFO) {
        let error = resp.extensions().get::<Failure>();
        info!(target: "access", peer = %conn.peer, method = %req.method(), path = req.uri().path(),
            status = resp.status().as_u16(), error = error.map(tracing::field::display),
            duration_ms = start.elapsed().as_secs_f64() * 1e3);
    }
}

fn matches<B>(m: &ir::Matcher, req: &Request<B>, query: &[(String, String)]) -> bool {
    if !m.path.matches(req.uri().path()) {
        return false;
    }
    if m.method.as_deref().is_some_and(|x| x != req.method()) {
        return false;
    }
    for (name, v) in &m.headers {
        let values: Vec<&str> = req
            .headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if values.is_empty() || !v.matches(&values.join(",")) {
            return false;
        }
    }
    for (name, v) in &m.query {
        // The first value of a repeated parameter is the one matched.
        match query.iter().find(|(k, _)| **k == **name) {
            Some((_, value)) if v.matches(value) => {}
            _ => return false,
        }
    }
    true
}

fn parse_query(q: Option<&str>) -> Vec<(String, String)> {
    let Some(q) = q else { return Vec::new() };
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// Form-style percent decoding ('+' is a space), lossy on invalid UTF-8.
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn process<B: RequestBody>(
    shared: &Arc<Shared>,
    port: &PortConfig,
    conn: &ConnInfo,
    entry: &RouteEntry,
    mut req: Request<B>,
    host: String,
    observe: Observe<'_>,
) -> Response<Body> {
    let Observe { metrics, span } = observe;
    let rule = &entry.rule;
    // An HTTP/1.1 protocol upgrade (WebSocket): forwarded, then the two connections are
    // joined once the backend agrees.
    let upgrade = headers::is_upgrade(req.headers()).then(|| hyper::upgrade::on(&mut req));
    let scheme = if port.protocol == Protocol::Https {
        "https"
    } else {
        "http"
    };

    let cors = rule.filters.iter().find_map(|f| match f {
        Filter::Cors(c) => Some(c),
        _ => None,
    });
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let (Some(c), Some(o)) = (cors, origin.as_deref())
        && req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        return super::cors::preflight(c, o, req.headers());
    }

    if let Some(redirect) = rule.filters.iter().find_map(|f| match f {
        Filter::Redirect(r) => Some(r),
        _ => None,
    }) {
        return redirect_response(
            redirect,
            &entry.matcher.path,
            scheme,
            &host,
            port.addr.port(),
            req.uri(),
        );
    }

    // Weighted choice of backend; invalid or absent backends answer 500.
    let total_weight = rule.total_weight();
    if rule.backends.is_empty() || total_weight == 0 {
        return fail(
            Failure::new(Origin::Configuration, "no_backend"),
            StatusCode::INTERNAL_SERVER_ERROR,
            "the route rule has no usable backend",
        );
    }
    let mut pick = rand::random_range(0..total_weight);
    let backend = rule
        .backends
        .iter()
        .find(|b| {
            let w = u64::from(b.weight);
            if pick < w {
                true
            } else {
                pick -= w;
                false
            }
        })
        .expect("pick < total weight");
    let BackendKind::Service(target) = &backend.kind else {
        return fail(
            Failure::new(Origin::Configuration, "invalid_backend"),
            StatusCode::INTERNAL_SERVER_ERROR,
            "the backend reference is invalid; see the route's status",
        );
    };

    let (mut parts, body) = req.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, upgrade.is_some());
    if upgrade.is_some() {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    let Rewritten {
        path_and_query,
        response_edits,
        mirrors,
    } = request_filters(
        entry, backend, target, conn, scheme, &host, span, &mut parts,
    );

    // Bodies are buffered only when a retry or a mirror needs to send them again.
    let needs_copy = rule.retry().is_some() || !mirrors.is_empty();
    let (buffered, streamed): (Option<Bytes>, Option<Body>) = if needs_copy {
        match Limited::new(body, MAX_BUFFERED_BODY).collect().await {
            Ok(c) => {
                let b = c.to_bytes();
                metrics.request_bytes.inc_by(b.len() as u64);
                (Some(b), None)
            }
            Err(_) => {
                return fail(
                    Failure::new(Origin::Client, "body_too_large"),
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request body too large to retry or mirror",
                );
            }
        }
    } else {
        let counted = metrics.request_bytes.clone();
        (
            None,
            Some(
                body.map_frame(move |f| count(&counted, f))
                    .map_err(|e| Box::new(ClientBodyError(e.into())) as BoxError)
                    .boxed(),
            ),
        )
    };

    for m in mirrors {
        if let Some((addr, guard)) = shared.upstreams.pick(&m, None) {
            let req = build(
                &parts.method,
                parts.headers.clone(),
                &path_and_query,
                full(buffered.clone().unwrap_or_default()),
            );
            let shared = shared.clone();
            // Mirrors are fire-and-forget; their outcome never affects the client.
            tokio::spawn(async move {
                let _guard = guard;
                let sent = shared.upstreams.send(&m, addr, req);
                if let Ok(Ok(resp)) = tokio::time::timeout(MIRROR_TIMEOUT, sent).await {
                    let _ = resp.into_body().collect().await;
                }
            });
        }
    }

    let sent = Sent {
        method: &parts.method,
        headers: &mut parts.headers,
        path_and_query: &path_and_query,
        buffered: &buffered,
        streamed,
    };
    let mut resp = match forward(shared, rule, target, metrics, span, sent).await {
        Ok(r) => r,
        Err(refused) => return refused,
    };
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if let (Some(client), true) = (upgrade, switching) {
        let backend = hyper::upgrade::on(&mut resp);
        tokio::spawn(super::tunnel::join(client, backend, shared.idle_timeout));
    }
    let (mut rparts, rbody) = resp.into_parts();
    // The gateway answers in its own HTTP version, whatever the backend's (RFC 9110
    // 6.2): an HTTP/1.0 status line would end the client's keep-alive.
    rparts.version = hyper::Version::HTTP_11;
    headers::strip_hop_by_hop(&mut rparts.headers, switching);
    if switching {
        rparts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }

    for e in &response_edits {
        apply_edit(&mut rparts.headers, e);
    }
    if let (Some(c), Some(o)) = (cors, origin.as_deref()) {
        super::cors::decorate(c, o, &mut rparts.headers);
    }
    let counted = metrics.response_bytes.clone();
    let rbody = rbody
        .map_frame(move |f| count(&counted, f))
        .map_err(|e| Box::new(e) as BoxError)
        .boxed();
    Response::from_parts(rparts, rbody)
}

/// What the request filters made of a request: the path to send, the response header
/// edits to apply on the way back, and the mirrors to copy it to.
struct Rewritten<'r> {
    path_and_query: PathAndQuery,
    response_edits: Vec<&'r ir::HeaderEdit>,
    mirrors: Vec<Arc<ir::Target>>,
}

/// The rule's and the backend's request filters (header edits, URL rewrites, mirrors), the
/// Host the backend sees, `forwarded`/`x-forwarded-*` and the trace context.
#[allow(clippy::too_many_arguments)]
fn request_filters<'r>(
    entry: &'r RouteEntry,
    backend: &'r ir::Backend,
    target: &ir::Target,
    conn: &ConnInfo,
    scheme: &'static str,
    host: &str,
    span: Option<&Span>,
    parts: &mut http::request::Parts,
) -> Rewritten<'r> {
    // Shared with the request's URI (no copy) unless a filter rewrites it.
    let mut path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    // The target's authority wins over the Host field (an absolute-form request-target,
    // RFC 9112 3.2.2; HTTP/2's :authority). `None`: the Host field stays as it is.
    let mut authority: Option<String> = if let Some(a) = parts.uri.authority() {
        Some(a.as_str().to_owned())
    } else if parts.headers.contains_key(header::HOST) {
        None
    } else {
        Some(host.to_owned())
    };
    let filters = entry.rule.filters.iter().chain(backend.filters.iter());
    let mut response_edits = Vec::new();
    let mut mirrors = Vec::new();
    for f in filters {
        match f {
            Filter::RequestHeaders(e) => apply_edit(&mut parts.headers, e),
            Filter::ResponseHeaders(e) => response_edits.push(e),
            Filter::Rewrite { hostname, path } => {
                if let Some(h) = hostname {
                    authority = Some(h.clone());
                }
                if let Some(p) = path {
                    let query = parts
                        .uri
                        .query()
                        .map(|q| format!("?{q}"))
                        .unwrap_or_default();
                    let rewritten = format!(
                        "{}{query}",
                        rewrite_path(p, &entry.matcher.path, parts.uri.path())
                    );
                    // (A rewrite that makes no valid path sends "/", never the original.)
                    path_and_query = PathAndQuery::try_from(rewritten)
                        .unwrap_or_else(|_| PathAndQuery::from_static("/"));
                }
            }
            Filter::Mirror {
                target,
                numerator,
                denominator,
            } => {
                if *numerator >= *denominator || rand::random_range(0..*denominator) < *numerator {
                    mirrors.push(target.clone());
                }
            }
            Filter::Redirect(_) | Filter::Cors(_) => {}
        }
    }
    if let Some(v) = authority.and_then(|a| HeaderValue::try_from(a).ok()) {
        parts.headers.insert(header::HOST, v);
    }
    append_forwarded(&mut parts.headers, conn, scheme);
    if let Some(span) = span {
        // The backend continues the trace with the gateway's span as its parent;
        // `tracestate` passes through untouched.
        parts.headers.insert(TRACEPARENT, span.traceparent());
        span.set(
            "cedille.backend",
            format!("{}/{}:{}", target.namespace, target.service, target.port),
        );
    }

    Rewritten {
        path_and_query,
        response_edits,
        mirrors,
    }
}

/// What is sent to the backend, once or again on a retry.
struct Sent<'a> {
    method: &'a Method,
    headers: &'a mut HeaderMap,
    path_and_query: &'a PathAndQuery,
    /// The whole body when a retry or a mirror needs it again.
    buffered: &'a Option<Bytes>,
    /// Otherwise the body as it streams in (sent once).
    streamed: Option<Body>,
}

/// The forwarding loop: an endpoint, the request, the backend timeout, retries with
/// backoff. The backend's response, or the gateway's own error response.
async fn forward(
    shared: &Arc<Shared>,
    rule: &ir::Rule,
    target: &ir::Target,
    metrics: &RouteMetrics,
    span: Option<&Span>,
    sent: Sent<'_>,
) -> Result<Response<super::h1pool::UpstreamBody>, Response<Body>> {
    let Sent {
        method,
        headers: req_headers,
        path_and_query,
        buffered,
        mut streamed,
    } = sent;
    let attempts = rule.retry().map_or(1, |r| r.attempts.max(1));
    let mut last_addr = None;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let Some((addr, _guard)) = shared.upstreams.pick(target, last_addr) else {
            metrics.upstream_error(UpstreamError::NoEndpoint);
            return Err(fail(
                Failure::new(Origin::UpstreamConnect, "no_endpoint"),
                StatusCode::SERVICE_UNAVAILABLE,
                "no ready endpoint for the backend Service",
            ));
        };
        last_addr = Some(addr);
        if let Some(span) = span {
            span.set("cedille.backend.address", addr.to_string());
        }
        let body = match (buffered, streamed.take()) {
            (Some(b), _) => full(b.clone()),
            (None, Some(s)) => s,
            (None, None) => empty(),
        };
        // The last attempt may take the headers instead of copying them.
        let headers = if attempt >= attempts {
            std::mem::take(req_headers)
        } else {
            req_headers.clone()
        };
        let req = build(method, headers, path_and_query, body);
        let sent = shared.upstreams.send(target, addr, req);
        let result = match rule.backend_timeout() {
            Some(t) => tokio::time::timeout(t, sent).await.map_err(|_| ()),
            None => Ok(sent.await),
        };
        let retry = rule.retry().filter(|_| attempt < attempts);
        let resp = match result {
            Err(()) => {
                metrics.upstream_error(UpstreamError::Timeout);
                if let Some(r) = retry.filter(|r| r.codes.contains(&504)) {
                    metrics.retries.inc();
                    tokio::time::sleep(r.backoff).await;
                    continue;
                }
                return Err(fail(
                    Failure::new(Origin::Timeout, "backend_timeout"),
                    StatusCode::GATEWAY_TIMEOUT,
                    "backend request timeout",
                ));
            }
            Ok(Err(super::upstream::SendError::Http(e))) if caused_by_client_body(e.as_ref()) => {
                debug!(%addr, error = %e, "the client's request body failed");
                return Err(refuse_and_close(
                    Failure::new(Origin::Client, "bad_body"),
                    StatusCode::BAD_REQUEST,
                    "malformed request body",
                ));
            }
            Ok(Err(e)) => {
                debug!(%addr, error = %e, "upstream request failed");
                let status = if e.is_connect() {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::BAD_GATEWAY
                };
                metrics.upstream_error(match &e {
                    super::upstream::SendError::Policy(_) => UpstreamError::Tls,
                    _ if e.is_connect() => UpstreamError::Connect,
                    _ => UpstreamError::Reset,
                });
                if let Some(r) =
                    retry.filter(|r| e.is_connect() || r.codes.contains(&status.as_u16()))
                {
                    metrics.retries.inc();
                    tokio::time::sleep(r.backoff).await;
                    continue;
                }
                if let super::upstream::SendError::Policy(why) = &e {
                    return Err(fail(
                        Failure::new(Origin::UpstreamConnect, "tls"),
                        StatusCode::BAD_GATEWAY,
                        &format!("backend TLS: {why}"),
                    ));
                }
                let why = if e.is_connect() {
                    Failure::new(Origin::UpstreamConnect, "connect")
                } else {
                    Failure::new(Origin::UpstreamProtocol, "reset")
                };
                return Err(fail(why, status, "upstream connection failed"));
            }
            Ok(Ok(resp)) => resp,
        };
        if let Some(r) = retry
            && r.codes.contains(&resp.status().as_u16())
        {
            metrics.retries.inc();
            let _ = resp.into_body().collect().await;
            tokio::time::sleep(r.backoff).await;
            continue;
        }
        return Ok(resp);
    }
}

/// What records a request: its route's metrics, and its span when tracing.
struct Observe<'a> {
    metrics: &'a RouteMetrics,
    span: Option<&'a Span>,
}

/// Adds a body frame's data length to `counter`.
fn count(counter: &prometheus_client::metrics::counter::Counter, f: Frame<Bytes>) -> Frame<Bytes> {
    if let Some(d) = f.data_ref() {
        counter.inc_by(d.len() as u64);
    }
    f
}

fn build(
    method: &Method,
    headers: HeaderMap,
    path_and_query: &PathAndQuery,
    body: Body,
) -> Request<Body> {
    let mut req = Request::new(body);
    *req.method_mut() = method.clone();
    // Origin form; the endpoint is the upstream's to add where its client needs it.
    *req.uri_mut() = Uri::from(path_and_query.clone());
    *req.headers_mut() = headers;
    req
}

fn apply_edit(h: &mut HeaderMap, e: &ir::HeaderEdit) {
    for (n, v) in &e.set {
        h.insert(n.clone(), v.clone());
    }
    for (n, v) in &e.add {
        h.append(n.clone(), v.clone());
    }
    for n in &e.remove {
        h.remove(n);
    }
}

/// Names made once, at compile time (a name given as a string is parsed at every use).
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

fn append_forwarded(h: &mut HeaderMap, conn: &ConnInfo, scheme: &'static str) {
    let xff = match h.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) => {
            HeaderValue::from_str(&format!("{prev}, {}", conn.peer.ip().to_canonical())).ok()
        }
        None => Some(conn.peer_ip.clone()),
    };
    if let Some(v) = xff {
        h.insert(X_FORWARDED_FOR, v);
    }
    h.insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
}

/// The path after a URLRewrite or redirect path modifier.
fn rewrite_path(p: &PathRewrite, matched: &PathMatch, path: &str) -> String {
    match (p, matched) {
        (PathRewrite::Full(full), _) => full.clone(),
        (PathRewrite::Prefix(rep), PathMatch::Prefix(prefix)) => {
            let rest = if &**prefix == "/" {
                path
            } else {
                &path[prefix.len().min(path.len())..]
            };
            let rep = rep.trim_end_matches('/');
            let joined = match (rep.is_empty(), rest.is_empty()) {
                (true, true) => "/".to_owned(),
                (true, false) => rest.to_owned(),
                (false, _) if rest.is_empty() || rest.starts_with('/') => format!("{rep}{rest}"),
                (false, _) => format!("{rep}/{rest}"),
            };
            if joined.is_empty() {
                "/".into()
            } else {
                joined
            }
        }
        (PathRewrite::Prefix(rep), _) => rep.clone(),
    }
}

fn redirect_response(
    r: &ir::Redirect,
    matched: &PathMatch,
    scheme: &str,
    host: &str,
    listener_port: u16,
    uri: &Uri,
) -> Response<Body> {
    let new_scheme = r.scheme.as_deref().unwrap_or(scheme);
    let new_host = r.hostname.as_deref().unwrap_or(host);
    let port = match (r.port, &r.scheme) {
        (Some(p), _) => Some(p),
        // A scheme change without a port goes to that scheme's well-known port.
        (None, Some(_)) => None,
        (None, None) => Some(listener_port),
    };
    let default = if new_scheme == "https" { 443 } else { 80 };
    let port = port
        .filter(|p| *p != default)
        .map(|p| format!(":{p}"))
        .unwrap_or_default();
    let path = match &r.path {
        Some(p) => rewrite_path(p, matched, uri.path()),
        None => uri.path().to_owned(),
    };
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    let location = format!("{new_scheme}://{new_host}{port}{path}{query}");
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::from_u16(r.status).unwrap_or(StatusCode::FOUND);
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_rewrites() {
        let m = PathMatch::Prefix("/prefix/one".into());
        let rw = |rep: &str, path: &str| rewrite_path(&PathRewrite::Prefix(rep.into()), &m, path);
        assert_eq!(rw("/one", "/prefix/one/two"), "/one/two");
        assert_eq!(rw("/", "/prefix/one/two"), "/two");
        assert_eq!(rw("/", "/prefix/one"), "/");
        assert_eq!(rw("/one/", "/prefix/one"), "/one");
        let root = PathMatch::Prefix("/".into());
        assert_eq!(
            rewrite_path(&PathRewrite::Prefix("/x".into()), &root, "/a/b"),
            "/x/a/b"
        );
    }

    #[test]
    fn query_decoding() {
        assert_eq!(
            parse_query(Some("a=b%20c&d=e+f&g")),
            vec![
                ("a".into(), "b c".into()),
                ("d".into(), "e f".into()),
                ("g".into(), "".into())
            ]
        );
        assert_eq!(decode("%zz%4"), "%zz%4");
    }
}
