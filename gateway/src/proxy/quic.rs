//! HTTP/3: every HTTPS socket also serves QUIC on the same address and UDP port, with the
//! same certificates (chosen by SNI from the socket's current listener table), the same
//! client certificate rules, and the same request handler as its TCP side.
//!
//! Limits on what a client controls: the handshake time (`tls_handshake_timeout`), the idle
//! time (QUIC's idle timeout and a GOAWAY after `idle_timeout` without requests), concurrent
//! bidirectional streams (`h2_max_concurrent_streams`), unidirectional streams (the three
//! HTTP/3 needs and a few spare), per-stream and per-connection receive windows, the header
//! block size (`max_header_bytes`, answered 431) and the time to send it
//! (`header_read_timeout`). No 0-RTT.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use arc_swap::ArcSwap;
use bytes::{Buf, Bytes};
use h3::error::Code;
use http::{HeaderMap, HeaderName, Response, header};
use http_body_util::BodyExt;
use hyper::body::Frame;
use quinn::{VarInt, crypto::rustls::QuicServerConfig};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore, watch},
    task::{JoinHandle, JoinSet},
};
use tracing::{debug, info, warn};

use super::{
    Body, BoxError,
    conn::Limits,
    handler::{ConnInfo, Shared, handle},
    idle::Activity,
    quic_fields::{self, FieldCounts},
};
use crate::ir::{ClientAuth, PortConfig};

/// Receive buffer asked of the kernel for a QUIC socket: a burst of full-size datagrams from
/// many clients must not be dropped before quinn reads them.
const SOCKET_BUFFER: usize = 4 << 20;
/// Flow control: what one stream, and one connection in all, may have in flight towards the
/// gateway before it reads (quinn's connection default is unbounded).
const STREAM_RECEIVE_WINDOW: u32 = 1 << 20;
const CONNECTION_RECEIVE_WINDOW: u32 = 8 << 20;
/// HTTP/3 needs three unidirectional streams from the client (control, QPACK encoder and
/// decoder); a few more leave room for extensions and GREASE, which are read and dropped.
const MAX_UNI_STREAMS: u32 = 8;

/// The QUIC side of one HTTPS socket.
pub(crate) struct QuicListener {
    endpoint: quinn::Endpoint,
    ctx: Arc<Ctx>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

struct Ctx {
    port: Arc<ArcSwap<PortConfig>>,
    shared: Arc<Shared>,
    limits: Limits,
    connections: Arc<Semaphore>,
    drain: watch::Receiver<bool>,
    /// The client validation the endpoint's TLS configuration was built for.
    client_auth: Mutex<Option<Arc<ClientAuth>>>,
}

impl QuicListener {
    /// Binds `addr` over UDP and starts accepting QUIC connections.
    pub fn bind(
        addr: SocketAddr,
        port: Arc<ArcSwap<PortConfig>>,
        shared: Arc<Shared>,
        limits: Limits,
        connections: Arc<Semaphore>,
        drain: watch::Receiver<bool>,
    ) -> io::Result<Self> {
        let socket = udp_socket(addr)?;
        let client_auth = port.load().client_auth.clone();
        let server = server_config(&port, client_auth.as_deref(), &limits)?;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )?;
        let ctx = Arc::new(Ctx {
            port,
            shared,
            limits,
            connections,
            drain,
            client_auth: Mutex::new(client_auth),
        });
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(endpoint.clone(), ctx.clone(), stop_rx));
        Ok(Self {
            endpoint,
            ctx,
            stop,
            task,
        })
    }

    /// After the socket's listener table changed: a new client certificate rule needs a new
    /// TLS configuration (certificates are read per handshake and need nothing).
    pub fn refresh(&self) {
        let cfg = self.ctx.port.load();
        let mut current = self
            .ctx
            .client_auth
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let same = match (&*current, &cfg.client_auth) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        if same {
            return;
        }
        match server_config(&self.ctx.port, cfg.client_auth.as_deref(), &self.ctx.limits) {
            Ok(server) => {
                self.endpoint.set_server_config(Some(server));
                *current = cfg.client_auth.clone();
            }
            Err(e) => {
                warn!(error = %e, "cannot rebuild the QUIC TLS configuration; keeping the previous one")
            }
        }
    }

    /// Stops accepting and asks every connection to finish (GOAWAY); they finish on their
    /// own, and the UDP socket closes with the last of them.
    pub async fn stop(self) {
        self.stop_accepting();
        let _ = self.task.await;
    }

    /// [`Self::stop`] without waiting for the accept loop to end.
    pub fn stop_accepting(&self) {
        self.endpoint.set_server_config(None);
        let _ = self.stop.send(true);
    }
}

fn server_config(
    port: &Arc<ArcSwap<PortConfig>>,
    client_auth: Option<&ClientAuth>,
    limits: &Limits,
) -> io::Result<quinn::ServerConfig> {
    let tls = super::tls::quic_server_config(port.clone(), client_auth);
    let crypto = QuicServerConfig::try_from(tls).map_err(io::Error::other)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    let idle =
        quinn::IdleTimeout::try_from(limits.idle_timeout).unwrap_or_else(|_| VarInt::MAX.into());
    transport
        .max_idle_timeout(Some(idle))
        .max_concurrent_bidi_streams(VarInt::from_u32(limits.h2_max_concurrent_streams))
        .max_concurrent_uni_streams(VarInt::from_u32(MAX_UNI_STREAMS))
        .stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW))
        .receive_window(VarInt::from_u32(CONNECTION_RECEIVE_WINDOW))
        .send_window(u64::from(CONNECTION_RECEIVE_WINDOW));
    server.transport_config(Arc::new(transport));
    Ok(server)
}

/// A UDP socket for `addr`, with large buffers where the kernel grants them (a refusal is
/// logged: QUIC works with less, with more loss under bursts).
fn udp_socket(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    for (what, set, get) in [
        (
            "receive",
            Socket::set_recv_buffer_size as fn(&Socket, usize) -> io::Result<()>,
            Socket::recv_buffer_size as fn(&Socket) -> io::Result<usize>,
        ),
        (
            "send",
            Socket::set_send_buffer_size,
            Socket::send_buffer_size,
        ),
    ] {
        match set(&socket, SOCKET_BUFFER).and_then(|()| get(&socket)) {
            // Linux reports twice what it grants (the doubling covers its bookkeeping).
            Ok(got) if got / 2 >= SOCKET_BUFFER => {}
            Ok(got) => info!(
                %addr, buffer = what, asked = SOCKET_BUFFER, granted = got / 2,
                "the kernel granted a smaller UDP socket buffer (net.core.rmem_max / wmem_max cap it)"
            ),
            Err(e) => warn!(%addr, buffer = what, error = %e, "cannot size the UDP socket buffer"),
        }
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

async fn accept_loop(endpoint: quinn::Endpoint, ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>) {
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => break,
            },
            _ = stop.changed() => break,
        };
        let Ok(permit) = ctx.connections.clone().try_acquire_owned() else {
            ctx.shared.metrics.connection_rejected();
            debug!(peer = %incoming.remote_address(), "connection limit reached; refusing QUIC connection");
            incoming.refuse();
            continue;
        };
        tokio::spawn(serve(ctx.clone(), incoming, permit, stop.clone()));
    }
}

async fn serve(
    ctx: Arc<Ctx>,
    incoming: quinn::Incoming,
    _permit: OwnedSemaphorePermit,
    mut stop: watch::Receiver<bool>,
) {
    let metrics = ctx.shared.metrics.clone();
    let _active = metrics.connection_opened();
    let peer = incoming.remote_address();
    let handshake = async {
        let connecting = incoming.accept()?;
        connecting.await
    };
    let conn = match tokio::time::timeout(ctx.limits.tls_handshake_timeout, handshake).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            metrics.quic_handshake_failed();
            debug!(%peer, error = %e, "QUIC handshake failed");
            return;
        }
        Err(_) => {
            metrics.quic_handshake_failed();
            debug!(%peer, "QUIC handshake timed out");
            return;
        }
    };
    metrics.quic_handshake_done();
    metrics.connection(2);
    let sni = conn
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.server_name)
        .map(|s| s.to_ascii_lowercase());
    let info = Arc::new(ConnInfo::new(peer, Some(sni)));
    let counts = Arc::new(FieldCounts::default());
    let inspected =
        quic_fields::Connection::new(conn, counts.clone(), ctx.limits.max_header_bytes + 1024);
    let mut h3 = match h3::server::builder()
        .max_field_section_size(ctx.limits.max_header_bytes as u64)
        .build::<_, Bytes>(inspected)
        .await
    {
        Ok(h) => h,
        Err(e) => {
            debug!(%peer, error = %e, "HTTP/3 connection setup failed");
            return;
        }
    };

    let activity = Activity::new();
    let mut requests = JoinSet::new();
    let mut drain = ctx.drain.clone();
    let mut closing = false;
    loop {
        tokio::select! {
            r = h3.accept() => match r {
                Ok(Some(resolver)) => {
                    activity.touch();
                    requests.spawn(request(
                        ctx.clone(),
                        info.clone(),
                        resolver,
                        activity.clone(),
                        counts.clone(),
                    ));
                }
                Ok(None) => break,
                Err(e) => {
                    debug!(%peer, error = %e, "HTTP/3 connection ended with an error");
                    break;
                }
            },
            Some(_) = requests.join_next(), if !requests.is_empty() => {}
            _ = async { drain.wait_for(|d| *d).await.map(|_| ()) }, if !closing => {
                closing = true;
                let _ = h3.shutdown(0).await;
            }
            _ = async { stop.wait_for(|s| *s).await.map(|_| ()) }, if !closing => {
                closing = true;
                let _ = h3.shutdown(0).await;
            }
            _ = activity.idle_for(ctx.limits.idle_timeout), if !closing && requests.is_empty() => {
                debug!(%peer, "idle HTTP/3 connection: closing gracefully");
                closing = true;
                let _ = h3.shutdown(0).await;
            }
        }
    }
    // Requests still in flight finish before the connection is dropped (which closes it).
    while requests.join_next().await.is_some() {}
}

type Resolver = h3::server::RequestResolver<quic_fields::Connection, Bytes>;

async fn request(
    ctx: Arc<Ctx>,
    info: Arc<ConnInfo>,
    resolver: Resolver,
    activity: Arc<Activity>,
    counts: Arc<FieldCounts>,
) {
    let (req, mut stream) = match tokio::time::timeout(
        ctx.limits.header_read_timeout,
        resolver.resolve_request(),
    )
    .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            debug!(peer = %info.peer, error = %e, "HTTP/3 request refused");
            return;
        }
        Err(_) => {
            debug!(peer = %info.peer, "HTTP/3 request headers timed out");
            return;
        }
    };
    let repeated = counts
        .repeated_pseudo_header(stream.id(), &req)
        .then_some("a pseudo-header field more than once");
    if let Some(why) = repeated.or_else(|| malformed(req.headers())) {
        // RFC 9114 4.1.2: a malformed request is a stream error of type H3_MESSAGE_ERROR.
        debug!(peer = %info.peer, why, "malformed HTTP/3 request; stream reset");
        ctx.shared
            .metrics
            .unmatched(2, crate::metrics::Unmatched::BadFraming);
        stream.stop_sending(Code::H3_MESSAGE_ERROR);
        stream.stop_stream(Code::H3_MESSAGE_ERROR);
        return;
    }
    let (mut send, recv) = stream.split();
    let body = RecvBody::new(recv, req.headers());
    let req = req.map(|()| body);
    let resp = handle(ctx.shared.clone(), ctx.port.load_full(), info.clone(), req).await;
    if let Err(e) = respond(&mut send, resp).await {
        // Whatever part of the response went out must not pass for all of it.
        send.stop_stream(Code::H3_INTERNAL_ERROR);
        debug!(peer = %info.peer, error = %e, "HTTP/3 response not delivered");
    }
    activity.touch();
}

/// Headers that describe an HTTP/1.1 connection and make an HTTP/3 message malformed (RFC
/// 9114 4.2), and `te` with anything but `trailers`.
fn malformed(h: &HeaderMap) -> Option<&'static str> {
    const CONNECTION_SPECIFIC: [&str; 5] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
    ];
    if CONNECTION_SPECIFIC.iter().any(|n| h.contains_key(*n)) {
        return Some("connection-specific header");
    }
    if h.get_all(header::TE).iter().any(|v| v != "trailers") {
        return Some("te other than trailers");
    }
    None
}

/// Sends a response the handler made: head, body frames, trailers.
async fn respond(
    send: &mut h3::server::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>,
    resp: Response<Body>,
) -> Result<(), BoxError> {
    let (mut parts, mut body) = resp.into_parts();
    // Nothing connection-specific goes out either (the handler's own answers may say
    // `connection: close` for HTTP/1.1).
    for n in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        parts.headers.remove(n);
    }
    parts.version = http::Version::HTTP_3;
    send.send_response(Response::from_parts(parts, ())).await?;
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        match frame.into_data() {
            Ok(data) => {
                if !data.is_empty() {
                    send.send_data(data).await?;
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    send.send_trailers(trailers).await?;
                }
            }
        }
    }
    send.finish().await?;
    Ok(())
}

/// Unread request body the gateway still reads (and drops) after the response is done, so
/// that the stream ends cleanly, and for how long.
const DRAIN_BYTES: usize = 64 * 1024;
const DRAIN_TIME: Duration = Duration::from_secs(1);

/// A request's body as it arrives on its HTTP/3 stream: DATA frames, then trailers.
struct RecvBody {
    /// Taken only when dropped.
    stream: Option<h3::server::RequestStream<quic_fields::RecvStream, Bytes>>,
    /// 0: DATA frames; 1: trailers; 2: ended.
    stage: u8,
    /// A frame read while looking whether the body is empty.
    first: Option<Frame<Bytes>>,
    /// The request's `content-length`, so that the body goes upstream with that length.
    length: Option<u64>,
}

impl RecvBody {
    /// Looks, without waiting, whether the stream already ended with its headers (a GET
    /// usually does): such a body is empty from the start, so that it goes upstream as no
    /// body at all rather than as a chunked one.
    fn new(
        stream: h3::server::RequestStream<quic_fields::RecvStream, Bytes>,
        headers: &HeaderMap,
    ) -> Self {
        let length = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok());
        let mut body = Self {
            stream: Some(stream),
            stage: 0,
            first: None,
            length,
        };
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match hyper::body::Body::poll_frame(Pin::new(&mut body), &mut cx) {
            Poll::Ready(Some(Ok(f))) => body.first = Some(f),
            Poll::Ready(None) => body.stage = 2,
            Poll::Ready(Some(Err(_))) | Poll::Pending => {}
        }
        body
    }
}

impl Drop for RecvBody {
    fn drop(&mut self) {
        if self.stage == 2 {
            return;
        }
        // The request body is not read to its end (a GET whose end came in a packet of its
        // own, or a response that did not need the body). Dropping the stream would make
        // quinn send STOP_SENDING with code 0, which clients take for an error; and
        // h3-quinn 0.0.10 panics on an explicit STOP_SENDING while a read is pending. So a
        // little more is read, in the background, to the end of the stream; past that
        // bound the client is told to stop.
        let (Some(mut stream), Ok(rt)) =
            (self.stream.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        rt.spawn(async move {
            let mut read = 0;
            let drained = tokio::time::timeout(DRAIN_TIME, async {
                while let Ok(Some(b)) = stream.recv_data().await {
                    read += b.remaining();
                    if read > DRAIN_BYTES {
                        return false;
                    }
                }
                true
            })
            .await;
            if drained == Ok(false) {
                // No read is pending here: the last one returned.
                stream.stop_sending(Code::H3_NO_ERROR);
            }
        });
    }
}

impl hyper::body::Body for RecvBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(f) = this.first.take() {
            return Poll::Ready(Some(Ok(f)));
        }
        let Some(stream) = this.stream.as_mut() else {
            return Poll::Ready(None);
        };
        if this.stage == 0 {
            match std::task::ready!(stream.poll_recv_data(cx)) {
                Ok(Some(mut buf)) => {
                    let bytes = buf.copy_to_bytes(buf.remaining());
                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                }
                Ok(None) => this.stage = 1,
                Err(e) => {
                    this.stage = 2;
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
            }
        }
        if this.stage == 2 {
            return Poll::Ready(None);
        }
        let polled = std::task::ready!(stream.poll_recv_trailers(cx));
        this.stage = 2;
        match polled {
            Ok(Some(t)) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(Box::new(e)))),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match (self.length, &self.first) {
            (Some(n), None) if self.stage == 0 => hyper::body::SizeHint::with_exact(n),
            _ => hyper::body::SizeHint::default(),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.stage == 2 && self.first.is_none()
    }
}
