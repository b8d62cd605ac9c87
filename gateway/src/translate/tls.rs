//! Certificates from `kubernetes.io/tls` Secrets: `tls.crt` (leaf, then chain) and `tls.key`
//! (PKCS#1, PKCS#8 or SEC1), turned into rustls signing keys.

use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use crate::model::core::Secret;

pub fn certified_key(secret: &Secret) -> Result<Arc<CertifiedKey>, String> {
    let crt = secret
        .value("tls.crt")?
        .ok_or("the Secret has no tls.crt")?;
    let key = secret
        .value("tls.key")?
        .ok_or("the Secret has no tls.key")?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&crt)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.crt: {e}"))?;
    if certs.is_empty() {
        return Err("tls.crt holds no PEM certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(&key).map_err(|e| format!("tls.key: {e}"))?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let ck = CertifiedKey::from_der(certs, key, &provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            "tls.key does not match the certificate in tls.crt".to_owned()
        }
        other => format!("tls.crt/tls.key: {other}"),
    })?;
    Ok(Arc::new(ck))
}

/// Adds the CA certificates in ConfigMap `ns/name` (`ca.crt`, PEM) to `roots`. `Err` says
/// why none could be added.
pub(crate) fn add_config_map_cas(
    ctx: &super::Ctx<'_>,
    ns: &str,
    name: &str,
    roots: &mut rustls::RootCertStore,
) -> Result<(), String> {
    use crate::model::{Kind, Object};
    let Some(Object::ConfigMap(cm)) = ctx.store.get_obj(Kind::ConfigMap, ns, name) else {
        return Err(format!("ConfigMap {ns}/{name} does not exist"));
    };
    let pem = cm
        .data
        .get("ca.crt")
        .map(String::as_bytes)
        .unwrap_or_default();
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect();
    match roots.add_parsable_certificates(certs) {
        (0, _) => Err(format!(
            "ConfigMap {ns}/{name} has no valid PEM certificate in ca.crt"
        )),
        _ => Ok(()),
    }
}
