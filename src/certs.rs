//! Development certificates: a fleet CA, a server certificate and device certificates, made with
//! rcgen. `inferd certs` writes them so that the README can show TLS in two commands; the tests use the
//! same code to build every certificate they need (expired, wrong usage, revoked).
//!
//! These are for development and tests. A fleet's real CA lives elsewhere; inferd only reads PEM files.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SerialNumber,
};
use time::{Duration, OffsetDateTime};

pub use rcgen::Error;

/// A certificate authority that can issue server and device certificates and sign CRLs.
pub struct Ca {
    /// The CA certificate, PEM.
    pub cert_pem: String,
    /// The CA's private key, PEM.
    pub key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("key_pem", &"***")
            .finish_non_exhaustive()
    }
}

/// An issued certificate and its key.
#[derive(Clone)]
pub struct Leaf {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PEM.
    pub key_pem: String,
}

impl std::fmt::Debug for Leaf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leaf")
            .field("key_pem", &"***")
            .finish_non_exhaustive()
    }
}

/// Validity used for development certificates: from yesterday (clock skew) for a year.
fn validity(params: &mut CertificateParams) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::days(1);
    params.not_after = now + Duration::days(365);
}

impl Ca {
    /// A new self-signed CA called `name`.
    ///
    /// # Errors
    /// rcgen's, if key generation or signing fails.
    pub fn new(name: &str) -> Result<Ca, Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        Ok(Ca {
            cert_pem: cert.pem(),
            key_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    ///
    /// # Errors
    /// rcgen's.
    pub fn server(&self, names: &[String], serial: u64) -> Result<Leaf, Error> {
        let mut params = CertificateParams::new(names.to_vec())?;
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().map_or("inferd", String::as_str),
        );
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        validity(&mut params);
        params.serial_number = Some(SerialNumber::from(serial));
        self.issue(params)
    }

    /// A device (client) certificate whose identity is `name` (its CN and DNS SAN).
    ///
    /// # Errors
    /// rcgen's.
    pub fn device(&self, name: &str, serial: u64) -> Result<Leaf, Error> {
        let mut params = CertificateParams::new(vec![name.to_owned()])?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        validity(&mut params);
        params.serial_number = Some(SerialNumber::from(serial));
        self.issue(params)
    }

    /// Issues a certificate from arbitrary parameters (tests use it for expired or misused ones).
    ///
    /// # Errors
    /// rcgen's.
    pub fn issue(&self, mut params: CertificateParams) -> Result<Leaf, Error> {
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A CRL revoking the certificates with these serial numbers, valid for a week.
    ///
    /// # Errors
    /// rcgen's.
    pub fn crl(&self, revoked: &[u64], number: u64) -> Result<String, Error> {
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now - Duration::minutes(5),
            next_update: now + Duration::days(7),
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|&serial| RevokedCertParams {
                    serial_number: SerialNumber::from(serial),
                    revocation_time: now - Duration::minutes(1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params.signed_by(&self.issuer)?.pem()
    }
}
