//! TLS termination: one rustls configuration per socket whose certificate resolver reads the
//! socket's current listener table, so a Secret change reaches the next handshake.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::{
    DistinguishedName, ServerConfig, SignatureScheme,
    client::danger::HandshakeSignatureValid,
    pki_types::{CertificateDer, UnixTime},
    server::{
        ClientHello, ResolvesServerCert, WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
    sign::CertifiedKey,
};
use tracing::debug;

use crate::ir::{ClientAuth, PortConfig};

#[derive(Debug)]
struct SniResolver {
    port: Arc<ArcSwap<PortConfig>>,
}

#[derive(Debug)]
struct RefuseAll;

impl ResolvesServerCert for RefuseAll {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        None
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let cfg = self.port.load();
        let sni = hello.server_name().map(str::to_ascii_lowercase);
        // The listener the name selects; a name no listener claims falls back to a listener
        // without hostname, as an unnamed client would get.
        let listener = cfg
            .listener_for(sni.as_deref())
            .or_else(|| cfg.listener_for(None))?;
        let schemes = hello.signature_schemes();
        listener
            .certs
            .iter()
            .find(|ck| ck.key.choose_scheme(schemes).is_some())
            .cloned()
    }
}

/// `AllowInsecureFallback`: asks for a client certificate and checks it, but lets the
/// handshake go on whether it is missing, valid or not.
#[derive(Debug)]
struct Lenient(Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for Lenient {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        ee: &CertificateDer<'_>,
        chain: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if let Err(e) = self.0.verify_client_cert(ee, chain, now) {
            debug!(error = %e, "client certificate not valid; accepted (AllowInsecureFallback)");
        }
        Ok(ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// A server configuration for one TCP socket: TLS 1.2 and 1.3 with aws-lc-rs, ALPN h2 then
/// http/1.1, certificates chosen per handshake from `port`, and the port's client
/// certificate validation if it has one.
pub fn server_config(
    port: Arc<ArcSwap<PortConfig>>,
    client_auth: Option<&ClientAuth>,
) -> Arc<ServerConfig> {
    build(
        port,
        client_auth,
        rustls::DEFAULT_VERSIONS,
        vec![b"h2".to_vec(), b"http/1.1".to_vec()],
    )
}

/// The same for the socket's QUIC side: TLS 1.3 only (QUIC has no other), ALPN h3, the same
/// certificates and client certificate validation. No early data (0-RTT), whose requests
/// could be replayed: rustls's `max_early_data_size` stays 0.
pub fn quic_server_config(
    port: Arc<ArcSwap<PortConfig>>,
    client_auth: Option<&ClientAuth>,
) -> Arc<ServerConfig> {
    build(
        port,
        client_auth,
        &[&rustls::version::TLS13],
        vec![b"h3".to_vec()],
    )
}

fn build(
    port: Arc<ArcSwap<PortConfig>>,
    client_auth: Option<&ClientAuth>,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: Vec<Vec<u8>>,
) -> Arc<ServerConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .expect("aws-lc-rs supports TLS 1.2 and 1.3");
    let verifier: Option<Arc<dyn ClientCertVerifier>> = client_auth.and_then(|a| {
        let b = WebPkiClientVerifier::builder_with_provider(a.roots.clone(), provider);
        let built = if a.required { b.build() } else { b.allow_unauthenticated().build() };
        match built {
            Ok(v) if a.required => Some(v),
            Ok(v) => Some(Arc::new(Lenient(v)) as Arc<dyn ClientCertVerifier>),
            Err(e) => {
                // Translation only hands over non-empty root stores, so this is unexpected.
                tracing::error!(error = %e, "cannot build the client certificate verifier; refusing handshakes");
                None
            }
        }
    });
    let mut cfg = match (client_auth, verifier) {
        (None, _) => builder
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(SniResolver { port })),
        (Some(_), Some(v)) => builder
            .with_client_cert_verifier(v)
            .with_cert_resolver(Arc::new(SniResolver { port })),
        // Validation was asked for but cannot be done: fail closed, no handshake succeeds.
        (Some(_), None) => builder
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(RefuseAll)),
    };
    cfg.alpn_protocols = alpn;
    Arc::new(cfg)
}
