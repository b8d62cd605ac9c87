//! The HTTP side: paths and verbs as kube-apiserver serves them, list pagination, and watch
//! streams (replay from a resourceVersion, selectors with ADDED/DELETED for objects moving
//! in and out, bookmarks, in-stream 410 once compacted).

use std::{
    collections::HashMap,
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tracing::debug;

use crate::{
    discovery,
    resources::Resource,
    selectors::{FieldSelector, LabelSelector, labels},
    store::{ApiError, EventType, PatchType, Store, Write},
};

pub type Body = BoxBody<Bytes, Infallible>;

pub struct Shared {
    pub store: Mutex<Store>,
    /// The latest resourceVersion; watch streams wake on it.
    pub changed: watch::Sender<u64>,
    /// Bumped to end every open watch stream (as an API server restart would).
    pub kill_watches: watch::Sender<u64>,
    pub bookmark_interval: Duration,
    pub addr: Mutex<String>,
}

impl Shared {
    pub fn new(store: Store, bookmark_interval: Duration) -> Self {
        let rv = store.resource_version();
        Self {
            store: Mutex::new(store),
            changed: watch::channel(rv).0,
            kill_watches: watch::channel(0).0,
            bookmark_interval,
            addr: Mutex::new(String::new()),
        }
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes watch streams after a write.
    pub fn notify(&self) {
        let rv = self.lock().resource_version();
        self.changed.send_replace(rv);
    }
}

fn full(status: StatusCode, ctype: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(ctype) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    full(status, "application/json", v.to_string())
}

fn error(e: &ApiError) -> Response<Body> {
    let status = StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, &e.to_status())
}

enum Route {
    Version,
    Health,
    CoreVersions,
    Groups,
    Group(String),
    Resources(String, String),
    OpenApiRoot,
    OpenApi(String, String),
    Object(Target),
}

struct Target {
    group: String,
    version: String,
    namespace: Option<String>,
    plural: String,
    name: Option<String>,
    subresource: Option<String>,
}

fn route(path: &str) -> Option<Route> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    match segs.as_slice() {
        ["version"] => Some(Route::Version),
        ["healthz"] | ["readyz"] | ["livez"] => Some(Route::Health),
        ["api"] => Some(Route::CoreVersions),
        ["apis"] => Some(Route::Groups),
        ["apis", g] => Some(Route::Group(g.to_string())),
        ["api", v] => Some(Route::Resources(String::new(), v.to_string())),
        ["apis", g, v] => Some(Route::Resources(g.to_string(), v.to_string())),
        ["openapi", "v3"] => Some(Route::OpenApiRoot),
        ["openapi", "v3", "api", v] => Some(Route::OpenApi(String::new(), v.to_string())),
        ["openapi", "v3", "apis", g, v] => Some(Route::OpenApi(g.to_string(), v.to_string())),
        ["api", v, rest @ ..] => target("", v, &owned(rest)),
        ["apis", g, v, rest @ ..] => target(g, v, &owned(rest)),
        _ => None,
    }
}

fn target(group: &str, version: &str, rest: &[String]) -> Option<Route> {
    let t = |ns: Option<&String>, plural: &String, name: Option<&String>, sub: Option<&String>| {
        Some(Route::Object(Target {
            group: group.to_owned(),
            version: version.to_owned(),
            namespace: ns.cloned(),
            plural: plural.clone(),
            name: name.cloned(),
            subresource: sub.cloned(),
        }))
    };
    match rest {
        [p] => t(None, p, None, None),
        [p, n] => t(None, p, Some(n), None),
        // `namespaces/<ns>/<plural>` or a cluster-scoped object's subresource.
        [ns_kw, ns, p] if ns_kw == "namespaces" && !matches!(p.as_str(), "status" | "finalize") => {
            t(Some(ns), p, None, None)
        }
        [p, n, sub] => t(None, p, Some(n), Some(sub)),
        [ns_kw, ns, p, n] if ns_kw == "namespaces" => t(Some(ns), p, Some(n), None),
        [ns_kw, ns, p, n, sub] if ns_kw == "namespaces" => t(Some(ns), p, Some(n), Some(sub)),
        _ => None,
    }
}

fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .map(|q| {
            q.split('&')
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    Some((decode(k)?, decode(v)?))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Percent-decoding (and `+` as space) of a query component.
fn decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 3 <= b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3]).ok()?;
                out.push(u8::from_str_radix(h, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn wants_table(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| {
            a.split(',')
                .next()
                .is_some_and(|first| first.contains("as=Table"))
        })
}

pub async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    debug!(method = %req.method(), uri = %req.uri(), "request");
    let Some(r) = route(&path) else {
        return error(&ApiError::not_found_path());
    };
    if req.method() != Method::GET && !matches!(r, Route::Object(_)) {
        return error(&ApiError::method_not_allowed(
            "the server does not allow this method on the requested resource".into(),
        ));
    }
    let resources = || shared.lock().resources.clone();
    let found = |v: Option<Value>| match v {
        Some(v) => json_response(StatusCode::OK, &v),
        None => error(&ApiError::not_found_path()),
    };
    match r {
        Route::Version => json_response(
            StatusCode::OK,
            &json!({"major": "1", "minor": "32", "gitVersion": "v1.32.0-cedille-test",
                "gitCommit": "", "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
                "goVersion": "none", "compiler": "none", "platform": "linux/amd64"}),
        ),
        Route::Health => full(StatusCode::OK, "text/plain", "ok"),
        Route::CoreVersions => {
            let addr = shared
                .addr
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            json_response(StatusCode::OK, &discovery::core_versions(&addr))
        }
        Route::Groups => json_response(StatusCode::OK, &discovery::group_list(&resources())),
        Route::Group(g) => found(discovery::group(&resources(), &g)),
        Route::Resources(g, v) => found(discovery::resource_list(&resources(), &g, &v)),
        Route::OpenApiRoot => json_response(StatusCode::OK, &discovery::openapi_root(&resources())),
        Route::OpenApi(g, v) => found(discovery::openapi_gv(&resources(), &g, &v)),
        Route::Object(t) => object(shared, req, t).await,
    }
}

/// Sets the version the client asked for.
fn out(mut obj: Value, r: &Resource, version: &str) -> Value {
    obj["apiVersion"] = json!(r.api_version(version));
    obj["kind"] = json!(r.kind);
    obj
}

async fn object(shared: Arc<Shared>, req: Request<Incoming>, t: Target) -> Response<Body> {
    let Some(r) = shared
        .lock()
        .resource(&t.group, &t.version, &t.plural)
        .cloned()
    else {
        return error(&ApiError::not_found_path());
    };
    if t.namespace.is_some() && !r.namespaced {
        return error(&ApiError::not_found_path());
    }
    let status_only = match t.subresource.as_deref() {
        None => false,
        Some("status") if r.status => true,
        Some(_) => return error(&ApiError::not_found_path()),
    };
    let q = query(&req);
    let table = wants_table(&req);
    let dry_run = q.get("dryRun").is_some_and(|v| v == "All");
    let ns_for_object = if r.namespaced {
        t.namespace.clone().unwrap_or_default()
    } else {
        String::new()
    };
    if r.namespaced && t.name.is_some() && t.namespace.is_none() {
        return error(&ApiError::not_found_path());
    }
    let method = req.method().clone();
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return error(&ApiError::bad_request(format!("reading the body: {e}"))),
    };
    let parse_body = || -> Result<Value, ApiError> {
        if content_type.contains("yaml") {
            let text =
                std::str::from_utf8(&body).map_err(|e| ApiError::bad_request(e.to_string()))?;
            serde_yaml_ng::from_str(text).map_err(|e| ApiError::bad_request(e.to_string()))
        } else {
            serde_json::from_slice(&body).map_err(|e| {
                ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
            })
        }
    };
    let key = r.key();
    let result: Result<(StatusCode, Value), ApiError> = match (&method, &t.name) {
        (&Method::GET, Some(name)) => shared.lock().get(&key, &ns_for_object, name).map(|o| {
            let o = out(o, &r, &t.version);
            if table {
                (StatusCode::OK, discovery::table(&r, &[o], None))
            } else {
                (StatusCode::OK, o)
            }
        }),
        (&Method::GET, None) => {
            let lsel = match LabelSelector::parse(q.get("labelSelector").map_or("", String::as_str))
            {
                Ok(s) => s,
                Err(e) => return error(&ApiError::bad_request(e)),
            };
            let fsel = match FieldSelector::parse(q.get("fieldSelector").map_or("", String::as_str))
            {
                Ok(s) => s,
                Err(e) => return error(&ApiError::bad_request(e)),
            };
            if let Some(f) = fsel.unsupported(|f| r.field_supported(f)) {
                return error(&ApiError::bad_request(format!(
                    "field label not supported: {f}"
                )));
            }
            if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
                return watch(shared, r, t, q, lsel, fsel, table);
            }
            let limit = q.get("limit").and_then(|l| l.parse().ok());
            shared
                .lock()
                .list(
                    &key,
                    t.namespace.as_deref(),
                    &lsel,
                    &fsel,
                    limit,
                    q.get("continue").map(String::as_str),
                )
                .map(|l| {
                    let items: Vec<Value> = l
                        .items
                        .into_iter()
                        .map(|o| out(o, &r, &t.version))
                        .collect();
                    if table {
                        return (
                            StatusCode::OK,
                            discovery::table(&r, &items, Some(l.resource_version)),
                        );
                    }
                    let mut meta = json!({"resourceVersion": l.resource_version.to_string()});
                    if let Some(c) = l.continue_token {
                        meta["continue"] = json!(c);
                    }
                    if let Some(n) = l.remaining {
                        meta["remainingItemCount"] = json!(n);
                    }
                    (
                        StatusCode::OK,
                        json!({"kind": r.list_kind, "apiVersion": r.api_version(&t.version),
                            "metadata": meta, "items": items}),
                    )
                })
        }
        (&Method::POST, None) => parse_body().and_then(|b| {
            shared
                .lock()
                .create(&key, t.namespace.as_deref(), b, dry_run)
                .map(|o| (StatusCode::CREATED, out(o, &r, &t.version)))
        }),
        (&Method::PUT, Some(name)) => parse_body().and_then(|b| {
            shared
                .lock()
                .replace(
                    &key,
                    &ns_for_object,
                    name,
                    b,
                    Write {
                        status_only,
                        put: true,
                        dry_run,
                    },
                )
                .map(|o| (StatusCode::OK, out(o, &r, &t.version)))
        }),
        (&Method::PATCH, Some(name)) => {
            let typ = match content_type.split(';').next().unwrap_or("").trim() {
                "application/merge-patch+json" => PatchType::Merge,
                "application/json-patch+json" => PatchType::Json,
                "application/strategic-merge-patch+json" => PatchType::Strategic,
                "application/apply-patch+yaml" | "application/apply-patch+cbor" => PatchType::Apply,
                other => {
                    return error(&ApiError::unsupported_media_type(format!(
                        "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml{}; got {other:?}",
                        if r.custom {
                            ""
                        } else {
                            ", application/strategic-merge-patch+json"
                        }
                    )));
                }
            };
            shared
                .lock()
                .patch(
                    &key,
                    t.namespace.as_deref(),
                    name,
                    typ,
                    &body,
                    status_only,
                    q.get("fieldManager").map(String::as_str),
                    dry_run,
                )
                .map(|(o, created)| {
                    let code = if created {
                        StatusCode::CREATED
                    } else {
                        StatusCode::OK
                    };
                    (code, out(o, &r, &t.version))
                })
        }
        (&Method::DELETE, Some(name)) => {
            let pre: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let rv = pre
                .pointer("/preconditions/resourceVersion")
                .and_then(Value::as_str);
            shared
                .lock()
                .delete(&key, &ns_for_object, name, rv)
                .map(|o| (StatusCode::OK, out(o, &r, &t.version)))
        }
        _ => Err(ApiError::method_not_allowed(
            "the server does not allow this method on the requested resource".into(),
        )),
    };
    if method != Method::GET {
        shared.notify();
    }
    match result {
        Ok((code, v)) => json_response(code, &v),
        Err(e) => error(&e),
    }
}

/// A watch stream. Starting without a resourceVersion (or at "0") sends the current
/// objects as ADDED first; starting at a compacted version sends a 410 ERROR event.
fn watch(
    shared: Arc<Shared>,
    r: Resource,
    t: Target,
    q: HashMap<String, String>,
    lsel: LabelSelector,
    fsel: FieldSelector,
    table: bool,
) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let start = q.get("resourceVersion").cloned().unwrap_or_default();
    let ns = t.namespace.clone();
    let version = t.version.clone();
    let matches = move |o: &Value| lsel.matches(&labels(o)) && fsel.matches(o);
    let encode = move |typ: &str, obj: Value| -> Bytes {
        let obj = if table && typ != "ERROR" && typ != "BOOKMARK" {
            discovery::table(&r, &[obj], None)
        } else {
            obj
        };
        let mut line = json!({"type": typ, "object": obj}).to_string();
        line.push('\n');
        Bytes::from(line)
    };
    let res = (t.group.clone(), t.plural.clone());
    let kind_api = shared
        .lock()
        .resources
        .get(&res)
        .map(|r| (r.kind.clone(), r.api_version(&version)));
    let resource = shared.lock().resources.get(&res).cloned();
    tokio::spawn(async move {
        let Some((kind, api_version)) = kind_api else {
            return;
        };
        let Some(resource) = resource else { return };
        let mut changed = shared.changed.subscribe();
        let mut kill = shared.kill_watches.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut cursor: u64 = if start.is_empty() || start == "0" {
            let (objs, rv) = {
                let s = shared.lock();
                (s.snapshot(&res, ns.as_deref()), s.resource_version())
            };
            for o in objs.into_iter().filter(|o| matches(o)) {
                if tx
                    .send(encode("ADDED", out(o, &resource, &version)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            rv
        } else {
            match start.parse() {
                Ok(rv) => rv,
                Err(_) => {
                    let e = ApiError::bad_request(format!(
                        "resourceVersion: Invalid value: {start:?}: must be a number"
                    ));
                    let _ = tx.send(encode("ERROR", e.to_status())).await;
                    return;
                }
            }
        };
        loop {
            let batch = {
                let s = shared.lock();
                match s.events_after(cursor) {
                    Err(oldest) => Err(oldest),
                    Ok(events) => Ok((events, s.resource_version())),
                }
            };
            let (events, latest) = match batch {
                Ok(b) => b,
                Err(oldest) => {
                    let e =
                        ApiError::expired(format!("too old resource version: {cursor} ({oldest})"));
                    let _ = tx.send(encode("ERROR", e.to_status())).await;
                    return;
                }
            };
            for e in events {
                if e.res != res || ns.as_ref().is_some_and(|n| *n != e.namespace) {
                    continue;
                }
                let now_in = matches(&e.object);
                let was_in = e.prev.as_ref().is_some_and(&matches);
                let (typ, obj) = match (e.typ, was_in, now_in) {
                    (EventType::Added, _, true) => ("ADDED", e.object),
                    (EventType::Modified, false, true) => ("ADDED", e.object),
                    (EventType::Modified, true, true) => ("MODIFIED", e.object),
                    (EventType::Modified, true, false) => {
                        // Out of the selector: the previous content, at this version.
                        let mut p = e.prev.clone().unwrap_or_default();
                        p["metadata"]["resourceVersion"] = json!(e.rv.to_string());
                        ("DELETED", p)
                    }
                    (EventType::Deleted, _, true) => ("DELETED", e.object),
                    _ => continue,
                };
                if tx
                    .send(encode(typ, out(obj, &resource, &version)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            cursor = cursor.max(latest);
            tokio::select! {
                r = changed.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(shared.bookmark_interval) => {
                    if bookmarks {
                        let mark = json!({"kind": kind, "apiVersion": api_version,
                            "metadata": {"resourceVersion": cursor.to_string()}});
                        if tx.send(encode("BOOKMARK", mark)).await.is_err() {
                            return;
                        }
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return,
                _ = kill.changed() => return,
                _ = tx.closed() => return,
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    let mut resp = Response::new(StreamBody::new(stream).boxed());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}
