//! The TLS material the suite creates at run time (nothing is committed): serving
//! certificates for HTTPS listeners, as `kubernetes.io/tls` Secrets.

use anyhow::Context;
use base64::Engine as _;
use rcgen::{CertificateParams, KeyPair};
use serde_json::{Value, json};

pub struct Generated {
    /// Secret manifests to add to the configuration.
    pub secrets: Vec<Value>,
    /// The certificate HTTPS listeners serve, which the test client pins.
    pub listener_cert_der: Vec<u8>,
}

fn secret(ns: &str, name: &str, cert_pem: &str, key_pem: &str) -> Value {
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
    Ok(Generated {
        secrets: vec![
            secret(
                "gateway-conformance-infra",
                "tls-validity-checks-certificate",
                &crt,
                &key,
            ),
            secret(
                "gateway-conformance-web-backend",
                "certificate",
                &wcrt,
                &wkey,
            ),
        ],
        listener_cert_der: der,
    })
}
