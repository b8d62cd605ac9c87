//! The standalone identity source: a CA directory holding `ca.crt` (the trust bundle: one or
//! more PEM roots; several during a CA rotation) and `ca.key` (the signing key of one of
//! them: ECDSA or RSA, PKCS#8, SEC1 or PKCS#1). Both are read again for every issuance, so
//! a rotated CA reaches the next renewal without a restart.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, pem::PemObject};

use super::{BoxFuture, Source, SpiffeId, Svid, verify::Bundle};

pub struct CaDir {
    dir: PathBuf,
}

/// What the directory holds, checked.
pub struct Loaded {
    pub bundle: Vec<CertificateDer<'static>>,
    /// The root (or intermediate) that `ca.key` belongs to.
    pub issuer_cert: CertificateDer<'static>,
    pub key: KeyPair,
    pub issuer_not_after: SystemTime,
}

impl CaDir {
    /// Opens the directory and checks it once, so that a missing or bad CA stops the agent
    /// at start with a message naming the file.
    pub fn open(dir: &Path) -> Result<Self, String> {
        let ca = Self {
            dir: dir.to_owned(),
        };
        ca.load()?;
        Ok(ca)
    }

    pub fn load(&self) -> Result<Loaded, String> {
        let crt = self.dir.join("ca.crt");
        let key = self.dir.join("ca.key");
        let crt_pem = std::fs::read(&crt).map_err(|e| format!("{}: {e}", crt.display()))?;
        let bundle: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&crt_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{}: not PEM certificates: {e}", crt.display()))?;
        if bundle.is_empty() {
            return Err(format!("{}: no certificate in it", crt.display()));
        }
        let key_pem =
            std::fs::read_to_string(&key).map_err(|e| format!("{}: {e}", key.display()))?;
        let key_pair = KeyPair::from_pem(&key_pem).map_err(|e| {
            format!(
                "{}: not a usable private key (PEM PKCS#8, SEC1 or PKCS#1, ECDSA or RSA): {e}",
                key.display()
            )
        })?;
        let public = key_pair.public_key_raw().to_vec();
        let mut found = None;
        for der in &bundle {
            let (_, cert) = x509_parser::parse_x509_certificate(der)
                .map_err(|e| format!("{}: a certificate does not parse: {e}", crt.display()))?;
            if cert.public_key().subject_public_key.data.as_ref() == public.as_slice() {
                let is_ca = cert
                    .basic_constraints()
                    .ok()
                    .flatten()
                    .is_some_and(|b| b.value.ca);
                if !is_ca {
                    return Err(format!(
                        "{}: the certificate of ca.key is not a CA (basicConstraints cA is not true)",
                        crt.display()
                    ));
                }
                let not_after = SystemTime::UNIX_EPOCH
                    + Duration::from_secs(cert.validity().not_after.timestamp().max(0) as u64);
                found = Some((der.clone(), not_after));
            }
        }
        let (issuer_cert, issuer_not_after) = found.ok_or_else(|| {
            format!(
                "{}: no certificate in {} matches this key",
                key.display(),
                crt.display()
            )
        })?;
        Ok(Loaded {
            bundle,
            issuer_cert,
            key: key_pair,
            issuer_not_after,
        })
    }

    fn issue_now(&self, id: &SpiffeId, lifetime: Duration) -> Result<Svid, String> {
        let ca = self.load()?;
        let issuer = Issuer::from_ca_cert_der(&ca.issuer_cert, &ca.key)
            .map_err(|e| format!("{}: reading the CA certificate: {e}", self.dir.display()))?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| format!("generating a key: {e}"))?;
        let now = SystemTime::now();
        let not_before = now - Duration::from_secs(60);
        let not_after = (now + lifetime).min(ca.issuer_not_after);
        if not_after <= now {
            return Err(format!(
                "{}: the CA certificate has expired",
                self.dir.display()
            ));
        }
        let params = svid_params(id, not_before, not_after)?;
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|e| format!("signing: {e}"))?;
        let bundle = Arc::new(Bundle::new(ca.bundle, &id.trust_domain)?);
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        super::verify::svid_from_parts(id.clone(), vec![cert.der().clone()], key_der, bundle)
    }
}

/// The certificate an SVID is: ECDSA P-256, exactly one URI SAN, no subject, not a CA,
/// serverAuth and clientAuth.
pub fn svid_params(
    id: &SpiffeId,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<CertificateParams, String> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(
        id.to_string()
            .try_into()
            .map_err(|e| format!("{id}: {e}"))?,
    )];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    let mut serial = [0u8; 16];
    rand::fill(&mut serial);
    serial[0] &= 0x7f;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

impl Source for CaDir {
    fn issue<'a>(
        &'a self,
        id: &'a SpiffeId,
        lifetime: Duration,
    ) -> BoxFuture<'a, Result<Svid, String>> {
        Box::pin(async move { self.issue_now(id, lifetime) })
    }

    fn describe(&self) -> String {
        format!("CA directory {}", self.dir.display())
    }
}

/// `cedille-agent ca init DIR`: writes a development CA (ECDSA P-256, ten years) as
/// `ca.crt` and `ca.key` (mode 0600). Refuses to overwrite an existing key.
pub fn init(dir: &Path, trust_domain: &str) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let key_path = dir.join("ca.key");
    if key_path.exists() {
        return Err(format!(
            "{} exists; remove it first to make a new CA",
            key_path.display()
        ));
    }
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| format!("generating a key: {e}"))?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::OrganizationName, trust_domain);
    params
        .distinguished_name
        .push(DnType::CommonName, "cedille development CA");
    params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(3600)).into();
    params.not_after = (now + Duration::from_secs(10 * 365 * 86400)).into();
    let cert = params
        .self_signed(&key)
        .map_err(|e| format!("signing: {e}"))?;
    write_private(&key_path, key.serialize_pem().as_bytes())?;
    let crt = dir.join("ca.crt");
    std::fs::write(&crt, cert.pem()).map_err(|e| format!("{}: {e}", crt.display()))?;
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(bytes)
        .map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_then_issue_an_svid_shaped_as_spiffe_requires() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), "cluster.local").unwrap();
        assert!(init(dir.path(), "cluster.local").is_err(), "no overwrite");
        let ca = CaDir::open(dir.path()).unwrap();
        let id = SpiffeId::new("cluster.local", "shop", "web");
        let svid = ca.issue_now(&id, Duration::from_secs(3600)).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&svid.chain[0]).unwrap();
        assert!(cert.subject().iter().next().is_none(), "no subject");
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert!(san.critical, "SAN critical with an empty subject");
        assert_eq!(
            san.value.general_names,
            vec![x509_parser::extensions::GeneralName::URI(
                "spiffe://cluster.local/ns/shop/sa/web"
            )]
        );
        assert!(!cert.is_ca());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        // It verifies against the bundle as a SPIFFE SVID.
        let got = super::super::verify::verify_svid(
            &svid.chain,
            &svid.bundle,
            SystemTime::now(),
            super::super::verify::Usage::Client,
        )
        .unwrap();
        assert_eq!(got, id);
        let mode = std::fs::metadata(dir.path().join("ca.key")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn rsa_pkcs1_and_pkcs8_ca_keys_sign() {
        for pkcs1 in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let key = KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
                .unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(DnType::CommonName, "Istio-style RSA root");
            let cert = params.self_signed(&key).unwrap();
            std::fs::write(dir.path().join("ca.crt"), cert.pem()).unwrap();
            let pem = if pkcs1 {
                let doc = rustls::pki_types::PrivateKeyDer::from_pem_slice(
                    key.serialize_pem().as_bytes(),
                )
                .unwrap();
                pkcs8_to_pkcs1_pem(doc.secret_der())
            } else {
                key.serialize_pem()
            };
            std::fs::write(dir.path().join("ca.key"), pem).unwrap();
            let ca = CaDir::open(dir.path()).unwrap();
            let id = SpiffeId::new("cluster.local", "a", "b");
            let svid = ca.issue_now(&id, Duration::from_secs(60)).unwrap();
            super::super::verify::verify_svid(
                &svid.chain,
                &svid.bundle,
                SystemTime::now(),
                super::super::verify::Usage::Server,
            )
            .unwrap();
        }
    }

    /// The RSAPrivateKey inside a PKCS#8 RSA key (its OCTET STRING payload), as PKCS#1 PEM.
    fn pkcs8_to_pkcs1_pem(pkcs8: &[u8]) -> String {
        use x509_parser::der_parser::der::parse_der;
        let (_, seq) = parse_der(pkcs8).unwrap();
        let items = seq.as_sequence().unwrap();
        let inner = items[2].as_slice().unwrap();
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(inner);
        let mut out = String::from("-----BEGIN RSA PRIVATE KEY-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(chunk).unwrap());
            out.push('\n');
        }
        out.push_str("-----END RSA PRIVATE KEY-----\n");
        out
    }

    #[test]
    fn a_bad_ca_directory_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let e = CaDir::open(dir.path()).err().unwrap();
        assert!(e.contains("ca.crt"), "{e}");
        init(dir.path(), "cluster.local").unwrap();
        std::fs::write(
            dir.path().join("ca.key"),
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let e = CaDir::open(dir.path()).err().unwrap();
        assert!(
            e.contains("ca.key") && e.contains("not a usable private key"),
            "{e}"
        );
        // A key of another CA.
        let other = tempfile::tempdir().unwrap();
        init(other.path(), "cluster.local").unwrap();
        std::fs::copy(other.path().join("ca.key"), dir.path().join("ca.key")).unwrap();
        let e = CaDir::open(dir.path()).err().unwrap();
        assert!(e.contains("matches this key"), "{e}");
    }
}
