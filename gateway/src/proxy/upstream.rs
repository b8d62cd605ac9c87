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
    time::Duration,
};

use hyper::Response;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};

use super::Body;
use crate::ir::Target;

pub struct Upstreams {
    h1: Client<HttpConnector, Body>,
    h2c: Client<HttpConnector, Body>,
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
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.enforce_http(true);
        let h1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector.clone());
        let h2c = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        Self {
            h1,
            h2c,
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
        let eps: Vec<SocketAddr> = if target.endpoints.len() > 1 {
            target
                .endpoints
                .iter()
                .copied()
                .filter(|e| Some(*e) != exclude)
                .collect()
        } else {
            target.endpoints.clone()
        };
        let addr = match eps.len() {
            0 => return None,
            1 => eps[0],
            n => {
                let a = eps[rand::random_range(0..n)];
                let mut b = eps[rand::random_range(0..n - 1)];
                if b == a {
                    b = eps[n - 1];
                }
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

    pub async fn send(
        &self,
        h2c: bool,
        req: hyper::Request<Body>,
    ) -> Result<Response<hyper::body::Incoming>, hyper_util::client::legacy::Error> {
        if h2c {
            self.h2c.request(req).await
        } else {
            self.h1.request(req).await
        }
    }
}
