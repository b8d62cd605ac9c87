//! TLS helpers: the certificate a handshake gets, and TLS Secrets made at run time.

use std::sync::Arc;

use base64::Engine as _;
use rustls::{
    DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{CertificateDer, ServerName, UnixTime},
};

/// Records the certificate the server presented.
#[derive(Debug, Default)]
struct Capture(std::sync::Mutex<Vec<u8>>);

impl ServerCertVerifier for Capture {
    fn verify_server_cert(
        &self,
        ee: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.0.lock().unwrap() = ee.to_vec();
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A TLS handshake with SNI `name`: the stream and the certificate it got.
async fn handshake(
    addr: std::net::SocketAddr,
    name: &str,
) -> Option<(
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    Vec<u8>,
)> {
    let capture = Arc::new(Capture::default());
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(capture.clone())
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .ok()?;
    let der = capture.0.lock().unwrap().clone();
    Some((tls, der))
}

/// The certificate a new TLS handshake with SNI `name` gets.
pub async fn presented(addr: std::net::SocketAddr, name: &str) -> Option<Vec<u8>> {
    handshake(addr, name).await.map(|(_, der)| der)
}

/// A TLS Secret `name` with a new self-signed certificate for `host`, and the certificate
/// (DER).
pub fn tls_secret(name: &str, host: &str) -> (String, Vec<u8>) {
    let (yaml, cert) = secret_and_cert(name, host);
    (yaml, cert.der().to_vec())
}

/// [`tls_secret`], with the certificate as PEM (a CA file for clients that verify it).
pub fn tls_secret_pem(name: &str, host: &str) -> (String, String) {
    let (yaml, cert) = secret_and_cert(name, host);
    (yaml, cert.pem())
}

fn secret_and_cert(name: &str, host: &str) -> (String, rcgen::Certificate) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![host.to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let b64 = |s: String| base64::engine::general_purpose::STANDARD.encode(s);
    let yaml = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: default}}\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n",
        b64(cert.pem()),
        b64(key.serialize_pem())
    );
    (yaml, cert)
}

/// An open HTTP/1.1-over-TLS connection and the certificate its handshake got.
pub struct OpenTls {
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
    cert: Vec<u8>,
}

pub async fn open_tls(addr: std::net::SocketAddr, name: &str) -> OpenTls {
    let capture = Arc::new(Capture::default());
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(capture.clone())
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let sni = ServerName::try_from(name.to_owned()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(sni, tcp)
        .await
        .unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let cert = capture.0.lock().unwrap().clone();
    OpenTls { sender, cert }
}

/// Sends a request on the open connection: the certificate of its session if the gateway
/// answered on it.
pub async fn still_open(mut open: OpenTls) -> Option<Vec<u8>> {
    let req = http::Request::get("/")
        .header("host", "a.example.com")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    open.sender.ready().await.ok()?;
    open.sender.send_request(req).await.ok()?;
    Some(open.cert)
}
