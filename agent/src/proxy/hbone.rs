//! HBONE, as Istio ambient's ztunnel speaks it: HTTP/2 `CONNECT` over mutual TLS 1.3 to
//! port 15008 of the destination pod, `:authority` the original destination `ip:port`,
//! `forwarded: for=<source pod IP>`. The server answers 200 once it has connected to the
//! application, 400 for a request that is not a `CONNECT` to a pod of this node, 401 when
//! policy denies, 503 when the application does not answer.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Empty;
use hyper::{Method, Request, Response, StatusCode, upgrade::Upgraded};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tracing::{debug, info, warn};

use super::{
    AGENT_MARK, ConnRecord, HBONE_PORT, PodCtx, Proxy, canonical, connect_in, copy, now_ms,
    pool::{Claim, Conn, Key},
    readahead::ReadAhead,
};
use crate::{
    identity::{SpiffeId, Svid, verify},
    metrics::Direction,
    routing,
};

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 flow-control windows: large enough for a bulk stream at LAN speed.
const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
const MAX_FRAME: u32 = 1024 * 1024;
/// Pings find dead peers.
const PING_INTERVAL: Duration = Duration::from_secs(10);
const PING_TIMEOUT: Duration = Duration::from_secs(20);
/// Request headers a client may send (a CONNECT needs a few hundred bytes).
const MAX_HEADER_LIST: u32 = 16 * 1024;

/// A CONNECT stream, open until dropped; it holds its slot on the pooled connection.
pub struct Tunnel {
    io: TokioIo<Upgraded>,
    _claim: Claim,
}

impl AsyncRead for Tunnel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// `forwarded: for=...` as RFC 7239 writes an address.
fn forwarded_for(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("for={v4}"),
        IpAddr::V6(v6) => format!("for=\"[{v6}]\""),
    }
}

/// The address in a `forwarded` header's first `for=`, if it is an IP address.
fn parse_forwarded(v: &str) -> Option<IpAddr> {
    let first = v.split(',').next()?;
    let value = first.split(';').find_map(|kv| {
        kv.trim()
            .strip_prefix("for=")
            .or_else(|| kv.trim().strip_prefix("For="))
    })?;
    let value = value.trim_matches('"');
    let value = value
        .strip_prefix('[')
        .map_or(value, |v| v.split(']').next().unwrap_or(v));
    value.parse().ok()
}

/// Opens a CONNECT stream to `target` (a meshed pod on `node` whose identity must be
/// `dst_id`), as `svid`, on a pooled connection.
pub async fn connect(
    proxy: &Proxy,
    pod: &PodCtx,
    svid: &Arc<Svid>,
    dst_id: SpiffeId,
    node: &str,
    target: SocketAddr,
    source_ip: IpAddr,
) -> io::Result<Tunnel> {
    let key = Key {
        source: svid.id.clone(),
        destination: dst_id.clone(),
        node: node.to_owned(),
    };
    let mut last = None;
    // A pooled connection can close between the claim and the request: try a new one once.
    for _ in 0..2 {
        let claim = match proxy.pool.claim(&key, &svid.serial) {
            Some(c) => c,
            None => {
                let lock = proxy.pool.opening_lock(&key);
                let _held = lock.lock().await;
                match proxy.pool.claim(&key, &svid.serial) {
                    Some(c) => c,
                    None => {
                        let conn = open(proxy, pod, svid, &dst_id, target).await?;
                        let claim = conn.claim().ok_or_else(|| {
                            io::Error::other("new HBONE connection closed at once")
                        })?;
                        proxy.pool.insert(key.clone(), conn);
                        claim
                    }
                }
            }
        };
        let req = Request::builder()
            .method(Method::CONNECT)
            .uri(target.to_string())
            .header("forwarded", forwarded_for(source_ip))
            .body(Empty::<Bytes>::new())
            .map_err(io::Error::other)?;
        let mut send = claim.conn.send.clone();
        let sent = async {
            send.ready().await?;
            send.send_request(req).await
        }
        .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                debug!(error = %e, "pooled HBONE connection failed; retrying on a new one");
                last = Some(io::Error::other(e));
                continue;
            }
        };
        if resp.status() != StatusCode::OK {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("the destination's agent answered {}", resp.status()),
            ));
        }
        let upgraded = hyper::upgrade::on(resp).await.map_err(io::Error::other)?;
        return Ok(Tunnel {
            io: TokioIo::new(upgraded),
            _claim: claim,
        });
    }
    Err(last.unwrap_or_else(|| io::Error::other("no HBONE connection")))
}

/// A new pooled connection: TCP from the source pod's namespace, mutual TLS, HTTP/2.
async fn open(
    proxy: &Proxy,
    pod: &PodCtx,
    svid: &Svid,
    dst_id: &SpiffeId,
    target: SocketAddr,
) -> io::Result<Arc<Conn>> {
    let peer = SocketAddr::new(target.ip(), HBONE_PORT);
    let tcp = connect_in(&pod.netns, None, peer, AGENT_MARK).await?;
    let config = verify::client_config(svid, dst_id.clone()).map_err(io::Error::other)?;
    let tls = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tokio_rustls::TlsConnector::from(config).connect(
            ServerName::IpAddress(target.ip().into()),
            ReadAhead::new(tcp),
        ),
    )
    .await
    .unwrap_or_else(|_| {
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "TLS handshake timed out",
        ))
    });
    let mut tls = match tls {
        Ok(t) => t,
        Err(e) => {
            let reason = verify::classify(&e);
            proxy.metrics.handshake_failure("client", reason);
            warn!(peer = %peer, destination = %dst_id, reason, error = %e, "mutual TLS handshake with the destination failed");
            return Err(e);
        }
    };
    if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
        proxy.metrics.handshake_failure("client", "no_alpn");
        return Err(io::Error::other("the HBONE server did not agree to h2"));
    }
    tls.get_mut().0.enable();
    let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .keep_alive_interval(PING_INTERVAL)
        .keep_alive_timeout(PING_TIMEOUT)
        .keep_alive_while_idle(true)
        .handshake(TokioIo::new(tls))
        .await
        .map_err(io::Error::other)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!(%peer, error = %e, "pooled HBONE connection ended");
        }
    });
    debug!(%peer, destination = %dst_id, "new pooled HBONE connection");
    Ok(Conn::new(send, peer, svid.serial.clone()))
}

/// Serves one connection to `pod`'s port 15008.
pub async fn serve(proxy: Arc<Proxy>, pod: Arc<PodCtx>, stream: TcpStream, peer: SocketAddr) {
    let peer = canonical(peer);
    let Some(tls_config) = pod.tls.clone() else {
        proxy.metrics.handshake_failure("server", "no_identity");
        warn!(pod = %pod.name, %peer, "HBONE connection before the pod has an identity; closing");
        return;
    };
    let accepted = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tokio_rustls::TlsAcceptor::from(tls_config).accept(ReadAhead::new(stream)),
    )
    .await
    .unwrap_or_else(|_| {
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "TLS handshake timed out",
        ))
    });
    let mut tls = match accepted {
        Ok(t) => t,
        Err(e) => {
            let reason = verify::classify(&e);
            proxy.metrics.handshake_failure("server", reason);
            warn!(pod = %pod.name, %peer, reason, error = %e, "mutual TLS handshake refused");
            return;
        }
    };
    let client_id = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|leaf| verify::leaf_id(leaf).ok());
    let Some(client_id) = client_id else {
        proxy.metrics.handshake_failure("server", "bad_san");
        return;
    };
    if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
        proxy.metrics.handshake_failure("server", "no_alpn");
        warn!(pod = %pod.name, %peer, "HBONE client did not negotiate h2; closing");
        return;
    }
    // Authenticated: from now on the socket is read 64 KiB at a time.
    tls.get_mut().0.enable();
    let client_id = Arc::new(client_id);
    let svc_proxy = proxy.clone();
    let service = hyper::service::service_fn(move |req| {
        let proxy = svc_proxy.clone();
        let client_id = client_id.clone();
        let pod = pod.clone();
        async move {
            let code_resp = stream_request(&proxy, &pod, &client_id, peer, req).await;
            proxy.metrics.hbone_response(code_resp.status().as_u16());
            Ok::<_, std::convert::Infallible>(code_resp)
        }
    });
    let served = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_concurrent_streams(super::pool::MAX_STREAMS as u32)
        .max_header_list_size(MAX_HEADER_LIST)
        .keep_alive_interval(Some(PING_INTERVAL))
        .keep_alive_timeout(PING_TIMEOUT)
        .serve_connection(TokioIo::new(tls), service)
        .await;
    if let Err(e) = served {
        debug!(%peer, error = %e, "HBONE connection ended");
    }
}

fn status(code: StatusCode) -> Response<Empty<Bytes>> {
    let mut r = Response::new(Empty::new());
    *r.status_mut() = code;
    r
}

/// Answers one request on an HBONE connection; a 200 leaves a task carrying the stream.
async fn stream_request(
    proxy: &Arc<Proxy>,
    listener_pod: &PodCtx,
    client_id: &SpiffeId,
    peer: SocketAddr,
    mut req: Request<hyper::body::Incoming>,
) -> Response<Empty<Bytes>> {
    if req.method() != Method::CONNECT {
        debug!(pod = %listener_pod.name, %peer, method = %req.method(), "not a CONNECT: 400");
        return status(StatusCode::BAD_REQUEST);
    }
    let Some(dst) = req
        .uri()
        .authority()
        .and_then(|a| a.as_str().parse::<SocketAddr>().ok())
        .map(canonical)
    else {
        debug!(pod = %listener_pod.name, %peer, uri = %req.uri(), "CONNECT authority is not ip:port: 400");
        return status(StatusCode::BAD_REQUEST);
    };
    let Some(pod) = proxy.pods.load().get(&dst.ip()).cloned() else {
        info!(pod = %listener_pod.name, %peer, %dst, "CONNECT to an address that is no pod of this node: 400");
        return status(StatusCode::BAD_REQUEST);
    };
    if dst.port() == HBONE_PORT || proxy.agent_port(dst.port()) {
        return status(StatusCode::BAD_REQUEST);
    }
    // The source address the application sees: the forwarded one when it is a pod with the
    // identity the client proved, else the connection's own.
    let mesh = proxy.mesh.load();
    let claimed = req
        .headers()
        .get("forwarded")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_forwarded);
    let source_ip = match claimed {
        Some(ip)
            if mesh.workloads.get(&ip).is_some_and(|w| {
                w.namespace == client_id.namespace && w.service_account == client_id.service_account
            }) =>
        {
            ip
        }
        _ => peer.ip(),
    };
    let traceparent = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let dst_id = pod.id.as_ref().map(|i| i.to_string()).unwrap_or_default();
    let mut record = ConnRecord {
        pod: pod.name.clone(),
        direction: Direction::Inbound,
        client: SocketAddr::new(source_ip, 0),
        original_dst: dst,
        upstream: Some(dst),
        protocol: "hbone",
        source_identity: Some(client_id.to_string()),
        destination_identity: Some(dst_id.clone()),
        traceparent,
        error: None,
        at_unix_ms: now_ms(),
    };
    if let Err(policy) = proxy.authorize(&pod, dst.port(), Some(client_id)) {
        info!(pod = %pod.name, source = %client_id, %dst, %policy, "denied by policy: 401");
        record.error = Some(format!("denied by {policy}"));
        proxy.remember(record);
        return status(StatusCode::UNAUTHORIZED);
    }
    let source = pod.transparent.then_some(source_ip);
    debug!(pod = %pod.name, source = %client_id, %dst, ?source, "CONNECT authorized; connecting to the application");
    let upstream = match connect_in(&pod.netns, source, dst, routing::DELIVER_MARK).await {
        Ok(u) => u,
        Err(e) => {
            proxy.metrics.connect_error(Direction::Inbound);
            debug!(pod = %pod.name, %dst, error = %e, "the application did not answer: 503");
            record.error = Some(e.to_string());
            proxy.remember(record);
            return status(StatusCode::SERVICE_UNAVAILABLE);
        }
    };
    proxy.remember(record);
    let upgrade = hyper::upgrade::on(&mut req);
    let proxy = proxy.clone();
    let client_id = client_id.clone();
    let pod_name = pod.name.clone();
    tokio::spawn(async move {
        let _active = proxy.metrics.connection(Direction::Inbound);
        let src = client_id.to_string();
        proxy
            .metrics
            .workload_connection(Direction::Inbound, &src, &dst_id);
        let mut upstream = upstream;
        let mut tunnel = match upgrade.await {
            Ok(u) => TokioIo::new(u),
            Err(e) => {
                debug!(pod = %pod_name, error = %e, "CONNECT stream ended before it opened");
                return;
            }
        };
        let (id, closed) = proxy.track(dst.ip(), dst.port(), Some(client_id));
        tokio::select! {
            (sent, received) = copy(&mut tunnel, &mut upstream) => {
                proxy.metrics.bytes(Direction::Inbound, sent, received);
                proxy.metrics.workload_bytes(Direction::Inbound, &src, &dst_id, sent, received);
            }
            Ok(policy) = closed => {
                info!(pod = %pod_name, source = %src, %dst, %policy, "open connection closed: policy now denies it");
            }
        }
        proxy.untrack(id);
    });
    status(StatusCode::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_round_trips() {
        for ip in ["10.0.0.7", "fd00::1"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(parse_forwarded(&forwarded_for(ip)), Some(ip));
        }
        assert_eq!(
            parse_forwarded("by=x;for=192.0.2.60;proto=http, for=10.0.0.1"),
            Some("192.0.2.60".parse().unwrap())
        );
        assert_eq!(parse_forwarded("for=unknown"), None);
    }
}
