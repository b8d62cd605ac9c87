//! Upstream connections: pooled HTTP/1.1 and h2c clients, and load-aware endpoint choice
//! (power of two choices on requests in flight), which avoids piling onto a slow endpoint
//! the way round robin does.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU32, Ordering},
    },
};

use hyper::Response;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};

use super::h1pool::{
    CONNECT_TIMEOUT, Failed, H1Pool, IDLE_TIMEOUT, MAX_IDLE_PER_ENDPOINT, UpstreamBody,
};
use super::{Body, BoxError};
use crate::ir::{BackendTls, Target, UpstreamTls};

pub struct Upstreams {
    /// Cleartext HTTP/1.1, the common case: connections kept per endpoint.
    h1: Arc<H1Pool>,
    h2c: Client<HttpConnector, Body>,
    /// One pooled client per BackendTLSPolicy configuration.
    tls: RwLock<HashMap<String, Client<super::backend_tls::TlsConnector, Body>>>,
    inflight: RwLock<HashMap<SocketAddr, Arc<AtomicU32>>>,
}

/// Counts a request in flight to an endpoint until dropped.
pub struct InflightGuard(Arc<AtomicU32>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Default for Upstreams {
    fn default() -> Self {
        Self::new()
    }
}

impl Upstreams {
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.enforce_http(true);
        let h1 = Arc::new(H1Pool::default());
        // Idle connections past their time are closed even if their endpoint is never
        // used again.
        let weak = Arc::downgrade(&h1);
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(IDLE_TIMEOUT / 2);
                loop {
                    tick.tick().await;
                    let Some(pool) = weak.upgrade() else { break };
                    pool.sweep();
                }
            });
        }
        let h2c = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .pool_idle_timeout(IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        Self {
            h1,
            h2c,
            tls: RwLock::new(HashMap::new()),
            inflight: RwLock::new(HashMap::new()),
        }
    }

    fn counter(&self, addr: SocketAddr) -> Arc<AtomicU32> {
        if let Some(c) = self
            .inflight
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&addr)
        {
            return c.clone();
        }
        let mut map = self.inflight.write().unwrap_or_else(|e| e.into_inner());
        // Bounded by configuration: endpoints come from EndpointSlices, not from traffic.
        if map.len() > 65_536 {
            map.retain(|_, c| c.load(Ordering::Relaxed) > 0);
        }
        map.entry(addr).or_default().clone()
    }

    /// Picks an endpoint of `target`, avoiding `exclude` when there is another choice.
    pub fn pick(
        &self,
        target: &Target,
        exclude: Option<SocketAddr>,
    ) -> Option<(SocketAddr, InflightGuard)> {
        let all = &target.endpoints;
        // With another choice, the excluded endpoint (the one that just failed) is skipped.
        let skip = match exclude {
            Some(x) if all.len() > 1 => all.iter().position(|e| *e == x),
            _ => None,
        };
        let n = all.len() - usize::from(skip.is_some());
        // The i-th endpoint of the list without the skipped one.
        let nth = |i: usize| match skip {
            Some(s) if i >= s => all[i + 1],
            _ => all[i],
        };
        let addr = match n {
            0 => return None,
            1 => nth(0),
            n => {
                // Two distinct random endpoints; the one with fewer requests in flight wins.
                let i = rand::random_range(0..n);
                let j = (i + rand::random_range(1..n)) % n;
                let (a, b) = (nth(i), nth(j));

                let (ca, cb) = (self.counter(a), self.counter(b));
                if cb.load(Ordering::Relaxed) < ca.load(Ordering::Relaxed) {
                    b
                } else {
                    a
                }
            }
        };
        let c = self.counter(addr);
        c.fetch_add(1, Ordering::Relaxed);
        Some((addr, InflightGuard(c)))
    }

    /// Sends `req` (its URI in origin form) to `addr`, an endpoint of `target`, over TLS
    /// when a policy says so.
    pub async fn send(
        &self,
        target: &Target,
        addr: SocketAddr,
        mut req: hyper::Request<Body>,
    ) -> Result<Response<UpstreamBody>, SendError> {
        let plain = |r: Result<Response<hyper::body::Incoming>, _>| {
            r.map(|resp| resp.map(UpstreamBody::plain))
                .map_err(SendError::from_client)
        };
        match target.tls.as_deref() {
            None if !target.h2c => match self.h1.send(addr, req).await {
                Ok(r) => Ok(r),
                Err(Failed::Connect(e)) => Err(SendError::Connect(e)),
                Err(Failed::Request(e)) => Err(SendError::Http(e)),
            },
            Some(BackendTls::Invalid(why)) => Err(SendError::Policy(why.clone())),
            // hyper-util's clients find the endpoint in the URI.
            None => {
                *req.uri_mut() = absolute_uri(addr, req.uri());
                plain(self.h2c.request(req).await)
            }
            Some(BackendTls::Ready(tls)) => {
                let client = self
                    .tls_client(tls)
                    .map_err(|e| SendError::Policy(e.to_string()))?;
                *req.uri_mut() = absolute_uri(addr, req.uri());
                plain(client.request(req).await)
            }
        }
    }

    fn tls_client(
        &self,
        tls: &UpstreamTls,
    ) -> Result<Client<super::backend_tls::TlsConnector, Body>, super::BoxError> {
        if let Some(c) = self
            .tls
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&tls.key)
        {
            return Ok(c.clone());
        }
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(IDLE_TIMEOUT)
            .pool_max_idle_per_host(MAX_IDLE_PER_ENDPOINT)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(super::backend_tls::TlsConnector::new(tls)?);
        let mut map = self.tls.write().unwrap_or_else(|e| e.into_inner());
        // Policies come from configuration; old generations are dropped wholesale.
        if map.len() > 1024 {
            map.clear();
        }
        map.insert(tls.key.clone(), client.clone());
        Ok(client)
    }
}

/// Why a request could not be sent upstream.
#[derive(Debug)]
pub enum SendError {
    /// No connection to the endpoint.
    Connect(BoxError),
    /// The exchange failed on a connection (reset, a malformed response, the client's
    /// request body failing on the way).
    Http(BoxError),
    /// The backend's TLS policy cannot be applied.
    Policy(String),
}

impl SendError {
    pub fn is_connect(&self) -> bool {
        matches!(self, SendError::Connect(_))
    }

    fn from_client(e: hyper_util::client::legacy::Error) -> Self {
        if e.is_connect() {
            SendError::Connect(Box::new(e))
        } else {
            SendError::Http(Box::new(e))
        }
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(e) => write!(f, "connect: {e}"),
            SendError::Http(e) => write!(f, "{e}"),
            SendError::Policy(p) => write!(f, "backend TLS policy: {p}"),
        }
    }
}

/// `http://<addr><origin's path and query>`, the endpoint's authority formatted once per
/// endpoint and thread.
fn absolute_uri(addr: SocketAddr, origin: &hyper::Uri) -> hyper::Uri {
    use std::cell::RefCell;
    thread_local! {
        static AUTHORITIES: RefCell<std::collections::HashMap<SocketAddr, http::uri::Authority, foldhash::fast::RandomState>> =
            RefCell::default();
    }
    let authority = AUTHORITIES.with_borrow_mut(|m| {
        if m.len() > 4096 {
            // Endpoints come and go; a bound on what old ones hold.
            m.clear();
        }
        m.entry(addr)
            .or_insert_with(|| {
                http::uri::Authority::try_from(addr.to_string())
                    .expect("a socket address is an authority")
            })
            .clone()
    });
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(http::uri::Scheme::HTTP);
    parts.authority = Some(authority);
    parts.path_and_query = origin.path_and_query().cloned();
    hyper::Uri::from_parts(parts).unwrap_or_else(|_| hyper::Uri::from_static("/"))
}
