//! Test helpers: an in-process echo server on a real socket, and raw hyper clients.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use cedille_echo::{Echo, EchoConfig};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::rt::{Read, Write};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const POD: &str = "infra-backend-v1-abc";
pub const NAMESPACE: &str = "gateway-conformance-infra";
pub const SERVICE: &str = "infra-backend-v1";

/// An echo server on 127.0.0.1, stopped by [`Server::stop`].
pub struct Server {
    pub addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<io::Result<()>>,
}

impl Server {
    pub async fn start(tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let echo = Arc::new(Echo::new(EchoConfig {
            pod: POD.into(),
            namespace: NAMESPACE.into(),
            service: SERVICE.into(),
        }));
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let task = tokio::spawn(cedille_echo::serve(listener, echo, tls, shutdown));
        Self { addr, stop, task }
    }

    /// Stops the server and waits until it has returned.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

/// What a client got back.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Sends `req` over a new HTTP/1.1 connection on `io`.
pub async fn http1<I>(io: I, req: Request<Full<Bytes>>) -> hyper::Result<Answer>
where
    I: Read + Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(conn);
    collect(sender.send_request(req).await?).await
}

/// Sends `req` over a new HTTP/2 connection on `io` (prior knowledge on cleartext).
pub async fn http2<I>(io: I, req: Request<Full<Bytes>>) -> hyper::Result<Answer>
where
    I: Read + Write + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
    tokio::spawn(conn);
    collect(sender.send_request(req).await?).await
}

async fn collect(resp: http::Response<hyper::body::Incoming>) -> hyper::Result<Answer> {
    let (parts, body) = resp.into_parts();
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await?.to_bytes(),
    })
}

/// A cleartext connection to `addr`.
pub async fn connect(addr: SocketAddr) -> TokioIo<TcpStream> {
    TokioIo::new(TcpStream::connect(addr).await.unwrap())
}

/// A GET with a Host header, for HTTP/1.1.
pub fn get(target: &str) -> http::request::Builder {
    Request::get(target).header("host", "echo.example")
}

/// A self-signed certificate for `name`, generated now.
pub struct TestCert {
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCert {
    pub fn new(name: &str) -> Self {
        let certified = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        Self {
            cert: certified.cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der()).into(),
            cert_pem: certified.cert.pem(),
            key_pem: certified.signing_key.serialize_pem(),
        }
    }

    /// A TLS connection to `addr` trusting only this certificate, with SNI `sni` and the
    /// given ALPN protocols.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        sni: &str,
        alpn: &[&[u8]],
    ) -> TokioIo<tokio_rustls::client::TlsStream<TcpStream>> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from(sni.to_owned()).unwrap();
        TokioIo::new(connector.connect(name, tcp).await.unwrap())
    }
}
