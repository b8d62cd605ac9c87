//! Peer verification as SPIFFE X.509-SVID requires, and the TLS settings HBONE uses (as
//! ztunnel speaks it): TLS 1.3 only, AES-GCM suites, ALPN `h2`, client certificate required,
//! no SNI.
//!
//! A peer's chain must end at a root of the bundle, be valid now, carry a leaf that is not a
//! CA and holds exactly one URI SAN, a Kubernetes workload SPIFFE ID in our trust domain. A
//! client additionally checks that the server is the identity the destination pod should
//! have. Every refusal carries a [`Reject`] whose [`Reject::reason`] labels the metric.

use std::{
    fmt,
    sync::{Arc, OnceLock},
    time::SystemTime,
};

use arc_swap::ArcSwapOption;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{CryptoProvider, WebPkiSupportedAlgorithms},
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime},
    server::danger::{ClientCertVerified, ClientCertVerifier},
    sign::CertifiedKey,
};
use webpki::{EndEntityCert, KeyUsage};

use super::{SpiffeId, Svid};

/// The roots peers must chain to, for one trust domain.
pub struct Bundle {
    pub trust_domain: String,
    pub roots: Vec<CertificateDer<'static>>,
    anchors: Vec<rustls::pki_types::TrustAnchor<'static>>,
}

impl fmt::Debug for Bundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bundle")
            .field("trust_domain", &self.trust_domain)
            .field("roots", &self.roots.len())
            .finish()
    }
}

impl Bundle {
    pub fn new(roots: Vec<CertificateDer<'static>>, trust_domain: &str) -> Result<Self, String> {
        let mut anchors = Vec::new();
        for r in &roots {
            let a = webpki::anchor_from_trusted_cert(r)
                .map_err(|e| format!("a trust bundle certificate is not usable as a root: {e}"))?;
            anchors.push(a.to_owned());
        }
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            roots,
            anchors,
        })
    }
}

/// Why a peer's certificate was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reject {
    /// Not signed by a root of the bundle (another CA).
    UnknownCa,
    Expired,
    NotYetValid,
    /// The leaf is a CA certificate.
    CaLeaf,
    /// Not exactly one URI SAN, or it is not a workload SPIFFE ID.
    BadSan(String),
    /// A SPIFFE ID of another trust domain.
    WrongTrustDomain(String),
    /// A valid SVID, but not the identity the destination pod should have.
    WrongIdentity {
        expected: String,
        got: String,
    },
    /// Anything else wrong with the certificate (encoding, key usage, signature).
    BadCertificate(String),
}

impl Reject {
    /// The `reason` label of the handshake failure metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Reject::UnknownCa => "unknown_ca",
            Reject::Expired => "expired",
            Reject::NotYetValid => "not_yet_valid",
            Reject::CaLeaf => "ca_leaf",
            Reject::BadSan(_) => "bad_san",
            Reject::WrongTrustDomain(_) => "wrong_trust_domain",
            Reject::WrongIdentity { .. } => "wrong_identity",
            Reject::BadCertificate(_) => "bad_certificate",
        }
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reject::UnknownCa => f.write_str("not signed by a root of the trust bundle"),
            Reject::Expired => f.write_str("certificate expired"),
            Reject::NotYetValid => f.write_str("certificate not valid yet"),
            Reject::CaLeaf => f.write_str("the leaf certificate is a CA"),
            Reject::BadSan(s) => write!(f, "not an SVID: {s}"),
            Reject::WrongTrustDomain(td) => write!(f, "SPIFFE ID of trust domain {td:?}"),
            Reject::WrongIdentity { expected, got } => {
                write!(f, "server is {got}, the destination should be {expected}")
            }
            Reject::BadCertificate(s) => write!(f, "bad certificate: {s}"),
        }
    }
}

impl std::error::Error for Reject {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    /// The peer is a server (we are the client).
    Server,
    /// The peer is a client.
    Client,
}

/// The HBONE crypto provider: aws-lc-rs with only the TLS 1.3 AES-GCM suites.
pub fn provider() -> Arc<CryptoProvider> {
    static P: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| {
        let mut p = rustls::crypto::aws_lc_rs::default_provider();
        use rustls::crypto::aws_lc_rs::cipher_suite::{
            TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384,
        };
        p.cipher_suites = vec![TLS13_AES_256_GCM_SHA384, TLS13_AES_128_GCM_SHA256];
        Arc::new(p)
    })
    .clone()
}

fn algorithms() -> WebPkiSupportedAlgorithms {
    provider().signature_verification_algorithms
}

/// Verifies a peer's chain (leaf first) and returns its SPIFFE ID.
pub fn verify_svid(
    chain: &[CertificateDer<'_>],
    bundle: &Bundle,
    now: SystemTime,
    usage: Usage,
) -> Result<SpiffeId, Reject> {
    let leaf = chain
        .first()
        .ok_or_else(|| Reject::BadCertificate("no certificate".into()))?;
    let ee = EndEntityCert::try_from(leaf).map_err(|e| Reject::BadCertificate(e.to_string()))?;
    let time = UnixTime::since_unix_epoch(
        now.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default(),
    );
    let ku = match usage {
        Usage::Server => KeyUsage::server_auth(),
        Usage::Client => KeyUsage::client_auth(),
    };
    ee.verify_for_usage(
        algorithms().all,
        &bundle.anchors,
        &chain[1..],
        time,
        ku,
        None,
        None,
    )
    .map_err(|e| match e {
        webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey => {
            Reject::UnknownCa
        }
        webpki::Error::CertExpired { .. } => Reject::Expired,
        webpki::Error::CertNotValidYet { .. } => Reject::NotYetValid,
        webpki::Error::CaUsedAsEndEntity => Reject::CaLeaf,
        other => Reject::BadCertificate(format!("{other:?}")),
    })?;
    let id = leaf_id(leaf)?;
    if id.trust_domain != bundle.trust_domain {
        return Err(Reject::WrongTrustDomain(id.trust_domain));
    }
    Ok(id)
}

/// The SPIFFE ID of a leaf certificate: its one URI SAN (no chain checks).
pub fn leaf_id(leaf: &CertificateDer<'_>) -> Result<SpiffeId, Reject> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| Reject::BadCertificate(e.to_string()))?;
    if cert.is_ca() {
        return Err(Reject::CaLeaf);
    }
    let names = cert
        .subject_alternative_name()
        .map_err(|e| Reject::BadSan(e.to_string()))?
        .map(|s| s.value.general_names.clone())
        .unwrap_or_default();
    let uris: Vec<&str> = names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    let uri = match uris.as_slice() {
        [one] => *one,
        [] => return Err(Reject::BadSan("no URI SAN".into())),
        many => return Err(Reject::BadSan(format!("{} URI SANs", many.len()))),
    };
    SpiffeId::parse(uri).map_err(Reject::BadSan)
}

/// The reason a TLS handshake failed, for the metric: the [`Reject`] our verifier raised,
/// or what the TLS layer reported.
pub fn classify(e: &std::io::Error) -> &'static str {
    if e.kind() == std::io::ErrorKind::TimedOut {
        return "timeout";
    }
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return "connection";
    };
    match tls {
        rustls::Error::InvalidCertificate(CertificateError::Other(o)) => {
            match o.0.downcast_ref::<Reject>() {
                Some(r) => r.reason(),
                None => "bad_certificate",
            }
        }
        rustls::Error::InvalidCertificate(_) => "bad_certificate",
        rustls::Error::NoCertificatesPresented => "no_certificate",
        rustls::Error::AlertReceived(_) => "peer_refused",
        rustls::Error::PeerIncompatible(_) => "incompatible",
        rustls::Error::NoApplicationProtocol => "no_alpn",
        _ => "protocol",
    }
}

/// HBONE is TLS 1.3 only.
fn tls12_refused() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::PeerIncompatible(
        rustls::PeerIncompatible::Tls12NotOffered,
    ))
}

fn tls13_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(message, cert, dss, &algorithms())
}

fn to_rustls(r: Reject) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(r))))
}

fn chain_of<'a>(
    end_entity: &CertificateDer<'a>,
    intermediates: &[CertificateDer<'a>],
) -> Vec<CertificateDer<'a>> {
    let mut chain = Vec::with_capacity(1 + intermediates.len());
    chain.push(end_entity.clone());
    chain.extend(intermediates.iter().cloned());
    chain
}

/// The client's check of an HBONE server.
#[derive(Debug)]
pub struct ServerVerifier {
    pub bundle: Arc<Bundle>,
    pub expected: SpiffeId,
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let id = verify_svid(
            &chain_of(end_entity, intermediates),
            &self.bundle,
            SystemTime::now(),
            Usage::Server,
        )
        .map_err(to_rustls)?;
        if id != self.expected {
            return Err(to_rustls(Reject::WrongIdentity {
                expected: self.expected.to_string(),
                got: id.to_string(),
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_refused()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}

/// The server's check of HBONE clients: any SVID of our trust domain from the bundle. The
/// bundle is read at each handshake, so a rotated CA applies to the next connection.
#[derive(Debug)]
pub struct ClientVerifier {
    pub svid: Arc<ArcSwapOption<Svid>>,
}

impl ClientCertVerifier for ClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let svid = self.svid.load_full().ok_or_else(|| {
            rustls::Error::General("this pod's identity is not issued yet".into())
        })?;
        verify_svid(
            &chain_of(end_entity, intermediates),
            &svid.bundle,
            SystemTime::now(),
            Usage::Client,
        )
        .map_err(to_rustls)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_refused()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}

/// Serves the pod's current SVID (renewals apply to the next handshake).
#[derive(Debug)]
struct Resolver(Arc<ArcSwapOption<Svid>>);

impl rustls::server::ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.load().as_ref().map(|s| s.certified.clone())
    }
}

/// The TLS server side of a pod's HBONE listener.
pub fn server_config(svid: Arc<ArcSwapOption<Svid>>) -> Arc<rustls::ServerConfig> {
    let mut c = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3 with the AES-GCM suites is a valid configuration")
        .with_client_cert_verifier(Arc::new(ClientVerifier { svid: svid.clone() }))
        .with_cert_resolver(Arc::new(Resolver(svid)));
    c.alpn_protocols = vec![b"h2".to_vec()];
    c.max_early_data_size = 0;
    Arc::new(c)
}

/// The TLS client side of one HBONE connection from `svid` to a server that must be
/// `expected`.
pub fn client_config(svid: &Svid, expected: SpiffeId) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut c = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ServerVerifier {
            bundle: svid.bundle.clone(),
            expected,
        }))
        .with_client_auth_cert(svid.chain.clone(), svid.key.clone_key())
        .map_err(|e| format!("our own certificate: {e}"))?;
    c.alpn_protocols = vec![b"h2".to_vec()];
    c.enable_sni = false;
    c.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(c))
}

/// Builds an [`Svid`] from a signed chain and its key, reading the leaf's validity and serial.
pub fn svid_from_parts(
    id: SpiffeId,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    bundle: Arc<Bundle>,
) -> Result<Svid, String> {
    let leaf = chain.first().ok_or("empty certificate chain")?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| format!("the issued certificate does not parse: {e}"))?;
    let secs = |t: x509_parser::time::ASN1Time| {
        SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(t.timestamp().max(0) as u64)
    };
    let not_before = secs(cert.validity().not_before);
    let not_after = secs(cert.validity().not_after);
    let serial = cert.raw_serial_as_string().replace(':', "").to_uppercase();
    let signing = provider()
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| format!("the issued key: {e}"))?;
    let certified = Arc::new(CertifiedKey::new(chain.clone(), signing));
    Ok(Svid {
        id,
        chain,
        key,
        not_before,
        not_after,
        issued_at: SystemTime::now(),
        serial,
        bundle,
        certified,
    })
}

#[cfg(test)]
mod tests {
    //! Each refusal a peer can earn, from certificates made here.

    use std::time::Duration;

    use rcgen::{CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};

    use super::*;

    struct Ca {
        key: KeyPair,
        params: CertificateParams,
        der: CertificateDer<'static>,
    }

    fn ca(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let der = params.self_signed(&key).unwrap().der().clone();
        Ca { key, params, der }
    }

    fn leaf(ca: &Ca, f: impl FnOnce(&mut CertificateParams)) -> CertificateDer<'static> {
        let now = SystemTime::now();
        let mut p = crate::identity::ca::svid_params(
            &SpiffeId::new("cluster.local", "shop", "web"),
            now - Duration::from_secs(60),
            now + Duration::from_secs(3600),
        )
        .unwrap();
        f(&mut p);
        let issuer = Issuer::from_params(&ca.params, &ca.key);
        p.signed_by(&KeyPair::generate().unwrap(), &issuer)
            .unwrap()
            .der()
            .clone()
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(s.try_into().unwrap())
    }

    #[test]
    fn each_bad_peer_gets_its_reason() {
        let ours = ca("ours");
        let bundle = Bundle::new(vec![ours.der.clone()], "cluster.local").unwrap();
        let check = |der: CertificateDer<'static>| {
            verify_svid(&[der], &bundle, SystemTime::now(), Usage::Client)
        };
        assert_eq!(
            check(leaf(&ours, |_| {})).unwrap(),
            SpiffeId::new("cluster.local", "shop", "web")
        );
        let theirs = ca("theirs");
        assert_eq!(check(leaf(&theirs, |_| {})), Err(Reject::UnknownCa));
        assert_eq!(
            check(leaf(&ours, |p| {
                p.subject_alt_names = vec![uri("spiffe://other.domain/ns/shop/sa/web")]
            })),
            Err(Reject::WrongTrustDomain("other.domain".into()))
        );
        assert_eq!(
            check(leaf(&ours, |p| {
                p.subject_alt_names = vec![
                    uri("spiffe://cluster.local/ns/shop/sa/web"),
                    uri("spiffe://cluster.local/ns/shop/sa/admin"),
                ]
            })),
            Err(Reject::BadSan("2 URI SANs".into()))
        );
        assert_eq!(
            check(leaf(&ours, |p| {
                p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained)
            })),
            Err(Reject::CaLeaf)
        );
        assert_eq!(
            check(leaf(&ours, |p| {
                let past = SystemTime::now() - Duration::from_secs(7200);
                p.not_before = past.into();
                p.not_after = (past + Duration::from_secs(60)).into();
            })),
            Err(Reject::Expired)
        );
        assert!(matches!(
            check(leaf(&ours, |p| {
                p.subject_alt_names = vec![SanType::DnsName("web.shop".try_into().unwrap())]
            })),
            Err(Reject::BadSan(_))
        ));
        assert!(matches!(
            check(leaf(&ours, |p| {
                p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth]
            })),
            Err(Reject::BadCertificate(_))
        ));
    }
}
