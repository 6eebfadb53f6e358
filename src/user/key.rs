//! The key and the request, made on the user's machine: the private key is only ever written to
//! the user's own files (0600), never sent.

use super::UserError;
pub use crate::cli::KeyType;

/// A PEM private key (PKCS#8). Debug never prints it.
#[derive(Clone)]
pub struct PrivateKeyPem(pub String);

impl std::fmt::Debug for PrivateKeyPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrivateKeyPem(<redacted>)")
    }
}

/// A fresh key and a PEM CERTIFICATE REQUEST for CN=`common_name`, one O per group.
#[derive(Debug)]
pub struct NewRequest {
    pub key: PrivateKeyPem,
    pub request_pem: String,
}

pub fn new_request(
    key_type: KeyType,
    common_name: &str,
    groups: &[String],
) -> Result<NewRequest, UserError> {
    let algorithm = match key_type {
        KeyType::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        KeyType::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
    };
    let key = rcgen::KeyPair::generate_for(algorithm).map_err(|e| UserError::Key(e.to_string()))?;
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    for (i, group) in groups.iter().enumerate() {
        // rcgen keeps one value per attribute type; the second and later O go in by OID, each
        // in its own RDN, which is how the API server reads several groups.
        let kind = if i == 0 {
            rcgen::DnType::OrganizationName
        } else {
            rcgen::DnType::CustomDnType(vec![2, 5, 4, 10])
        };
        params.distinguished_name.push(kind, group.as_str());
    }
    let request_pem = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(|e| UserError::Key(e.to_string()))?;
    Ok(NewRequest {
        key: PrivateKeyPem(key.serialize_pem()),
        request_pem,
    })
}

/// What a PEM certificate says about its lifetime and key, read strictly enough to refuse one
/// that is not for our key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: i64,
    pub not_after: i64,
}

impl Validity {
    /// When a certificate should be replaced: once less than `remaining_fraction` of its life
    /// is left (1/3 by default: kubelet's client rotation starts between 70 % and 90 %).
    pub fn renew_at(&self, remaining_fraction: f64) -> i64 {
        let life = (self.not_after - self.not_before).max(0) as f64;
        let fraction = remaining_fraction.clamp(0.0, 1.0);
        self.not_after - (life * fraction).round() as i64
    }
}

/// The validity of the first certificate in `pem`, after checking that it certifies the
/// public key of `key` (a certificate for another key is useless and must not be stored).
pub fn check_certificate(pem: &str, key: &PrivateKeyPem) -> Result<Validity, UserError> {
    let validity = validity_of(pem)?;
    let key = rcgen::KeyPair::from_pem(&key.0)
        .map_err(|e| UserError::Certificate(format!("the key does not load: {e}")))?;
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| UserError::Certificate(format!("not PEM: {e}")))?;
    let cert = block
        .parse_x509()
        .map_err(|e| UserError::Certificate(format!("not a certificate: {e}")))?;
    if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(UserError::Certificate(
            "it certifies another key than the one this request was made with".into(),
        ));
    }
    Ok(validity)
}

/// notBefore and notAfter (Unix seconds) of the first certificate in `pem`.
pub fn validity_of(pem: &str) -> Result<Validity, UserError> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| UserError::Certificate(format!("not PEM: {e}")))?;
    let cert = block
        .parse_x509()
        .map_err(|e| UserError::Certificate(format!("not a certificate: {e}")))?;
    Ok(Validity {
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_starts_when_a_third_of_the_life_is_left() {
        let v = Validity {
            not_before: 0,
            not_after: 3600,
        };
        assert_eq!(v.renew_at(1.0 / 3.0), 2400);
        assert_eq!(v.renew_at(1.0), 0, "1: renew at every use");
        assert_eq!(v.renew_at(0.0), 3600, "0: only once expired");
    }

    #[test]
    fn a_request_carries_every_group_and_the_key_stays_here() {
        let request = new_request(
            KeyType::EcdsaP256,
            "jane",
            &["developers".into(), "ops".into()],
        )
        .expect("request");
        let inspected =
            crate::x509::inspect::inspect(request.request_pem.as_bytes()).expect("inspect");
        assert_eq!(inspected.common_name.as_deref(), Some("jane"));
        assert_eq!(inspected.organizations, vec!["developers", "ops"]);
        assert!(!request.request_pem.contains("PRIVATE KEY"));
        assert!(request.key.0.contains("PRIVATE KEY"));
        assert_eq!(format!("{:?}", request.key), "PrivateKeyPem(<redacted>)");
    }
}
