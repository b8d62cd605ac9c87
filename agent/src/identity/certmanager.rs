//! The Kubernetes identity source: cert-manager signs. For each SVID the agent makes a key
//! pair, sends a `cert-manager.io/v1` CertificateRequest (a CSR holding only the SPIFFE URI,
//! both usages, the lifetime as `duration`) to the configured issuer, waits for the signed
//! certificate and deletes the request. The CA key never reaches a node.
//!
//! Trust bundle: the PEM file given with `--trust-bundle` (a ConfigMap from trust-manager or
//! the CA's certificate, mounted; read again at every issuance, so a CA rotation reaches the
//! next renewal), else the `status.ca` cert-manager returns.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use base64::Engine;
use kube::{
    Api, Client,
    api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, PostParams},
};
use rcgen::KeyPair;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, pem::PemObject};
use serde_json::json;
use tracing::{debug, warn};

use super::{BoxFuture, Source, SpiffeId, Svid, ca::svid_params, verify};

/// Where CertificateRequests go and who signs them.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The namespace the requests are made in (the agent's own).
    pub namespace: String,
    pub issuer_name: String,
    pub issuer_kind: String,
    pub issuer_group: String,
    pub trust_bundle: Option<PathBuf>,
    /// This node's name, for the requests' labels.
    pub node: String,
}

pub struct CertManager {
    client: Client,
    settings: Settings,
    /// How long to wait for cert-manager to sign.
    timeout: Duration,
}

fn resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cert-manager.io", "v1", "CertificateRequest"),
        "certificaterequests",
    )
}

impl CertManager {
    pub fn new(client: Client, settings: Settings) -> Self {
        Self {
            client,
            settings,
            timeout: Duration::from_secs(60),
        }
    }

    async fn issue_now(&self, id: &SpiffeId, lifetime: Duration) -> Result<Svid, String> {
        let s = &self.settings;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| format!("generating a key: {e}"))?;
        let now = SystemTime::now();
        // The CSR carries only the subject alternative name; the issuer sets the validity.
        let mut params = svid_params(id, now, now + lifetime)?;
        params.serial_number = None;
        params.use_authority_key_identifier_extension = false;
        let csr = params
            .serialize_request(&key)
            .map_err(|e| format!("making the CSR: {e}"))?
            .pem()
            .map_err(|e| format!("encoding the CSR: {e}"))?;
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &s.namespace, &resource());
        let mut obj = DynamicObject::new("", &resource()).within(&s.namespace);
        obj.metadata.generate_name = Some(
            format!("cedille-{}-{}-", id.namespace, id.service_account)
                .chars()
                .take(50)
                .collect(),
        );
        obj.metadata.labels = Some(
            [
                (
                    "app.kubernetes.io/managed-by".to_owned(),
                    "cedille-agent".to_owned(),
                ),
                ("cedille.io/node".to_owned(), label_value(&s.node)),
            ]
            .into(),
        );
        obj.metadata.annotations =
            Some([("cedille.io/spiffe-id".to_owned(), id.to_string())].into());
        obj.data = json!({
            "spec": {
                "request": base64::engine::general_purpose::STANDARD.encode(csr.as_bytes()),
                "issuerRef": {"name": s.issuer_name, "kind": s.issuer_kind, "group": s.issuer_group},
                "usages": ["digital signature", "key encipherment", "server auth", "client auth"],
                "duration": format!("{}s", lifetime.as_secs().max(1)),
                "isCA": false,
            }
        });
        let created = api
            .create(&PostParams::default(), &obj)
            .await
            .map_err(|e| format!("creating a CertificateRequest in {}: {e}", s.namespace))?;
        let name = created.metadata.name.clone().unwrap_or_default();
        let outcome = self.wait(&api, &name).await;
        if let Err(e) = api.delete(&name, &DeleteParams::default()).await {
            debug!(request = %name, error = %e, "deleting the CertificateRequest");
        }
        let (chain_pem, ca_pem) = outcome?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&chain_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("CertificateRequest {name}: status.certificate: {e}"))?;
        let leaf = chain
            .first()
            .ok_or_else(|| format!("CertificateRequest {name}: empty status.certificate"))?;
        let got = verify::leaf_id(leaf)
            .map_err(|e| format!("CertificateRequest {name}: the signed certificate: {e}"))?;
        if &got != id {
            return Err(format!(
                "CertificateRequest {name}: signed for {got}, asked for {id}"
            ));
        }
        let (_, cert) = x509_parser::parse_x509_certificate(leaf)
            .map_err(|e| format!("CertificateRequest {name}: {e}"))?;
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(format!(
                "CertificateRequest {name}: the signed certificate is not for our key"
            ));
        }
        let roots_pem = match &s.trust_bundle {
            Some(path) => {
                std::fs::read(path).map_err(|e| format!("--trust-bundle {}: {e}", path.display()))?
            }
            None => ca_pem.ok_or_else(|| {
                format!("CertificateRequest {name}: cert-manager returned no status.ca; give the agent a trust bundle (--trust-bundle)")
            })?,
        };
        let roots: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&roots_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("trust bundle: {e}"))?;
        if roots.is_empty() {
            return Err("trust bundle: no certificate in it".into());
        }
        let bundle = Arc::new(verify::Bundle::new(roots, &id.trust_domain)?);
        // Our own certificate must verify as a peer's would.
        verify::verify_svid(&chain, &bundle, SystemTime::now(), verify::Usage::Client)
            .map_err(|e| format!("CertificateRequest {name}: the signed certificate does not verify against the trust bundle: {e}"))?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        verify::svid_from_parts(id.clone(), chain, key_der, bundle)
    }

    /// Polls the request until it is signed (certificate, CA) or refused.
    async fn wait(
        &self,
        api: &Api<DynamicObject>,
        name: &str,
    ) -> Result<(Vec<u8>, Option<Vec<u8>>), String> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(100);
        loop {
            let o = api
                .get(name)
                .await
                .map_err(|e| format!("reading CertificateRequest {name}: {e}"))?;
            let status = &o.data["status"];
            let b64 = |v: &serde_json::Value| {
                v.as_str()
                    .filter(|s| !s.is_empty())
                    .map(|s| base64::engine::general_purpose::STANDARD.decode(s))
            };
            if let Some(cert) = b64(&status["certificate"]) {
                let cert = cert
                    .map_err(|e| format!("CertificateRequest {name}: status.certificate: {e}"))?;
                let ca = b64(&status["ca"]).and_then(Result::ok);
                return Ok((cert, ca));
            }
            for c in status["conditions"].as_array().into_iter().flatten() {
                let refused = match c["type"].as_str() {
                    Some("Denied") | Some("InvalidRequest") => c["status"] == "True",
                    Some("Ready") => c["status"] == "False" && c["reason"] == "Failed",
                    _ => false,
                };
                if refused {
                    return Err(format!(
                        "CertificateRequest {name} refused: {} ({})",
                        c["reason"].as_str().unwrap_or(""),
                        c["message"].as_str().unwrap_or("")
                    ));
                }
            }
            if started.elapsed() > self.timeout {
                warn!(request = %name, "cert-manager has not signed; is the issuer ready and the request approved?");
                return Err(format!(
                    "CertificateRequest {name}: not signed within {:?} (is issuer {} {} ready, and the request approved?)",
                    self.timeout, self.settings.issuer_kind, self.settings.issuer_name
                ));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }
}

/// A label value: at most 63 characters of `[A-Za-z0-9._-]`.
fn label_value(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect()
}

impl Source for CertManager {
    fn issue<'a>(
        &'a self,
        id: &'a SpiffeId,
        lifetime: Duration,
    ) -> BoxFuture<'a, Result<Svid, String>> {
        Box::pin(self.issue_now(id, lifetime))
    }

    fn describe(&self) -> String {
        let s = &self.settings;
        format!(
            "cert-manager {} {}.{} (CertificateRequests in namespace {})",
            s.issuer_kind, s.issuer_name, s.issuer_group, s.namespace
        )
    }
}
