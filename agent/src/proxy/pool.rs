//! Pooled HBONE client connections. Streams of one source identity to one destination
//! identity on one destination node share connections, at most [`MAX_STREAMS`] streams each.
//! (The destination identity is part of the key because the client verifies it: a
//! connection authenticated to one service account cannot carry streams for another.)
//! HTTP/2 pings detect dead peers; connections idle for [`IDLE`] are closed.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Empty;
use hyper::client::conn::http2::SendRequest;

use crate::identity::SpiffeId;

pub const MAX_STREAMS: usize = 100;
/// How long an unused pooled connection stays open.
pub const IDLE: Duration = Duration::from_secs(180);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    pub source: SpiffeId,
    pub destination: SpiffeId,
    pub node: String,
}

pub struct Conn {
    pub send: SendRequest<Empty<Bytes>>,
    pub peer: SocketAddr,
    /// The serial of the client certificate it was authenticated with: once the identity
    /// is renewed, new streams go on connections made with the new certificate.
    pub serial: String,
    streams: AtomicUsize,
    idle_since: Mutex<Instant>,
}

/// One stream's claim on a pooled connection; released when dropped.
pub struct Claim {
    pub conn: Arc<Conn>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.conn.streams.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self
                .conn
                .idle_since
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Instant::now();
        }
    }
}

impl Conn {
    pub fn new(send: SendRequest<Empty<Bytes>>, peer: SocketAddr, serial: String) -> Arc<Self> {
        Arc::new(Self {
            send,
            peer,
            serial,
            streams: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
        })
    }

    /// Takes a stream slot if the connection is open and not full.
    pub fn claim(self: &Arc<Self>) -> Option<Claim> {
        if self.send.is_closed() {
            return None;
        }
        self.streams
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_STREAMS).then_some(n + 1)
            })
            .ok()?;
        Some(Claim { conn: self.clone() })
    }

    pub fn streams(&self) -> usize {
        self.streams.load(Ordering::Acquire)
    }
}

#[derive(Default)]
pub struct Pool {
    conns: Mutex<HashMap<Key, Vec<Arc<Conn>>>>,
    /// One connection attempt at a time per key, so a burst of new streams opens one
    /// connection rather than one each.
    opening: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>,
}

impl Pool {
    /// A slot on an open connection for `key` made with the certificate `serial`, if one
    /// has room. Idle connections made with an older certificate are dropped on the way.
    pub fn claim(&self, key: &Key, serial: &str) -> Option<Claim> {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        let v = conns.get_mut(key)?;
        v.retain(|c| c.serial == serial || c.streams() > 0);
        v.iter()
            .filter(|c| c.serial == serial)
            .find_map(|c| c.claim())
    }

    pub fn opening_lock(&self, key: &Key) -> Arc<tokio::sync::Mutex<()>> {
        self.opening
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.clone())
            .or_default()
            .clone()
    }

    pub fn insert(&self, key: Key, conn: Arc<Conn>) {
        self.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_default()
            .push(conn);
    }

    /// Drops closed connections and those idle for longer than `idle`; returns how many
    /// remain open.
    pub fn sweep(&self, idle: Duration) -> usize {
        let now = Instant::now();
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns.retain(|_, v| {
            v.retain(|c| {
                let idle_for =
                    now.duration_since(*c.idle_since.lock().unwrap_or_else(|e| e.into_inner()));
                !c.send.is_closed() && (c.streams() > 0 || idle_for < idle)
            });
            !v.is_empty()
        });
        let open = conns.values().map(Vec::len).sum();
        drop(conns);
        let mut opening = self.opening.lock().unwrap_or_else(|e| e.into_inner());
        opening.retain(|_, m| Arc::strong_count(m) > 1);
        open
    }

    /// For `/config`: (key, peer, open streams) of each pooled connection.
    pub fn report(&self) -> Vec<(Key, SocketAddr, usize)> {
        let conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> = conns
            .iter()
            .flat_map(|(k, v)| v.iter().map(move |c| (k.clone(), c.peer, c.streams())))
            .collect();
        out.sort_by_key(|(k, peer, _)| (k.source.to_string(), *peer));
        out
    }
}
