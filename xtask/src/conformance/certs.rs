//! The TLS material the suite creates at run time (nothing is committed): serving
//! certificates for HTTPS listeners, as `kubernetes.io/tls` Secrets.

use anyhow::Context;
use base64::Engine as _;
use rcgen::{CertificateParams, KeyPair};
use serde_json::{Value, json};

pub struct Generated {
    /// Secret and ConfigMap manifests to add to the configuration.
    pub secrets: Vec<Value>,
    /// The certificate HTTPS listeners serve, which the test client pins.
    pub listener_cert_der: Vec<u8>,
    /// The same certificate and its key (PEM), for the listeners the HTTP/3 pass serves
    /// over TLS.
    pub listener_cert_pem: (String, String),
    /// Client certificates (DER certificate, PKCS#8 key) by the name of their Secret.
    pub client_certs: std::collections::HashMap<String, (Vec<u8>, Vec<u8>)>,
    /// What the TLS echo backends serve: a leaf for abc.example.com and other.example.com
    /// signed by the CA in ConfigMap tls-checks-ca-certificate.
    pub backend_tls: std::sync::Arc<rustls::ServerConfig>,
    /// The same, but requiring a client certificate from that CA.
    pub backend_tls_client_auth: std::sync::Arc<rustls::ServerConfig>,
    /// The client certificate (PEM) the Gateway must present to that backend.
    pub backend_client_pem: String,
}

/// The TLS backends' CA, and a server certificate it signed.
/// The TLS backends' CA (PEM), their server configuration, the same requiring client
/// certificates from that CA, and a client certificate it signed (PEM cert, PEM key).
struct BackendCa {
    ca_pem: String,
    server: std::sync::Arc<rustls::ServerConfig>,
    server_with_client_auth: std::sync::Arc<rustls::ServerConfig>,
    client_pem: String,
    client_key_pem: String,
}

fn backend_ca() -> anyhow::Result<BackendCa> {
    let ca = new_ca()?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![
        "abc.example.com".to_owned(),
        "other.example.com".to_owned(),
    ])?;
    params
        .subject_alt_names
        .push(rcgen::SanType::URI(rcgen::string::Ia5String::try_from(
            "spiffe://abc.example.com/test-identity",
        )?));
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "default");
    let leaf = params.signed_by(&key, &ca)?;
    let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let config = cedille_echo::tls_server_config(vec![leaf.der().clone()], key_der.clone_key())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // The client certificate the Gateway presents in GatewayTLSBackendClientCertificate.
    let client_key = KeyPair::generate()?;
    let mut cparams = CertificateParams::new(Vec::<String>::new())?;
    cparams
        .distinguished_name
        .push(rcgen::DnType::CommonName, "gateway");
    cparams.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let client = cparams.signed_by(&client_key, &ca)?;
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone())?;
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider.clone())
            .build()?;
    let mut with_auth = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![leaf.der().clone()], key_der)?;
    with_auth.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(BackendCa {
        ca_pem: ca.pem(),
        server: config,
        server_with_client_auth: std::sync::Arc::new(with_auth),
        client_pem: client.pem(),
        client_key_pem: client_key.serialize_pem(),
    })
}

/// A self-signed CA like the suite's (CN gatewayapi).
fn new_ca() -> anyhow::Result<rcgen::CertifiedIssuer<'static, KeyPair>> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "gatewayapi");
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    Ok(rcgen::CertifiedIssuer::self_signed(params, key)?)
}

fn config_map(ns: &str, name: &str, ca_pem: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns}, "data": {"ca.crt": ca_pem}})
}

/// A CA and a client certificate it signed: (CA PEM, client cert PEM, client key PEM,
/// client cert DER, client key DER).
type CaAndClient = (String, String, String, Vec<u8>, Vec<u8>);

fn ca_and_client() -> anyhow::Result<CaAndClient> {
    let ca = new_ca()?;
    let client_key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "client");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let client = params.signed_by(&client_key, &ca)?;
    Ok((
        ca.pem(),
        client.pem(),
        client_key.serialize_pem(),
        client.der().to_vec(),
        client_key.serialize_der(),
    ))
}

pub fn secret(ns: &str, name: &str, cert_pem: &str, key_pem: &str) -> Value {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": ns},
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": b64(cert_pem), "tls.key": b64(key_pem)},
    })
}

fn self_signed(sans: &[&str]) -> anyhow::Result<(String, String, Vec<u8>)> {
    let key = KeyPair::generate().context("generating a key")?;
    let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .context("certificate parameters")?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "default");
    let cert = params.self_signed(&key).context("self-signing")?;
    Ok((cert.pem(), key.serialize_pem(), cert.der().to_vec()))
}

pub fn generate() -> anyhow::Result<Generated> {
    let (crt, key, der) = self_signed(&["*", "*.org", "*.wildcard.org"])?;
    let (wcrt, wkey, _) = self_signed(&["*"])?;
    let infra = "gateway-conformance-infra";
    let (ca_a, client_a, key_a, der_a, kder_a) = ca_and_client()?;
    let (ca_b, client_b, key_b, der_b, kder_b) = ca_and_client()?;
    let (ca_web, ..) = ca_and_client()?;
    let backend = backend_ca()?;
    let (ca_mismatch, ..) = ca_and_client()?;
    let mut client_certs = std::collections::HashMap::new();
    client_certs.insert(
        "tls-validity-checks-client-certificate".to_owned(),
        (der_a, kder_a),
    );
    client_certs.insert(
        "tls-validity-checks-per-port-client-certificate".to_owned(),
        (der_b, kder_b),
    );
    Ok(Generated {
        secrets: vec![
            secret(infra, "tls-validity-checks-certificate", &crt, &key),
            secret(
                "gateway-conformance-web-backend",
                "certificate",
                &wcrt,
                &wkey,
            ),
            config_map(infra, "tls-validity-checks-ca-certificate", &ca_a),
            secret(
                infra,
                "tls-validity-checks-client-certificate",
                &client_a,
                &key_a,
            ),
            config_map(infra, "tls-validity-checks-per-port-ca-certificate", &ca_b),
            secret(
                infra,
                "tls-validity-checks-per-port-client-certificate",
                &client_b,
                &key_b,
            ),
            config_map("gateway-conformance-web-backend", "web-backend-cm", &ca_web),
            config_map(infra, "tls-checks-ca-certificate", &backend.ca_pem),
            secret(
                infra,
                "tls-checks-client-certificate",
                &backend.client_pem,
                &backend.client_key_pem,
            ),
            config_map(infra, "mismatch-ca-certificate", &ca_mismatch),
        ],
        listener_cert_der: der,
        listener_cert_pem: (crt.clone(), key.clone()),
        client_certs,
        backend_tls: backend.server,
        backend_tls_client_auth: backend.server_with_client_auth,
        backend_client_pem: backend.client_pem,
    })
}
