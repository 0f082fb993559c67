//! The server side of TLS: rustls with the ring provider, TLS 1.3 only unless configured otherwise, no
//! 0-RTT, optional client certificates checked against a fleet CA (and CRLs).
//!
//! The material is read from PEM files and can be reloaded (SIGHUP) without touching established
//! connections: new handshakes use the new configuration. Each configuration has its own session
//! cache, so a session resumed after a reload cannot carry a certificate that the new CA or CRL would
//! refuse.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::{ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::{RootCertStore, ServerConfig};

/// Where the TLS material lives, and the protocol choices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Server certificate chain, PEM.
    pub cert: PathBuf,
    /// Server private key, PEM.
    pub key: PathBuf,
    /// CA bundle for client certificates; `Some` makes client certificates mandatory.
    pub client_ca: Option<PathBuf>,
    /// Certificate revocation lists, PEM (needs `client_ca`).
    pub crl: Option<PathBuf>,
    /// Also accept TLS 1.2 (off by default).
    pub allow_tls12: bool,
}

/// Sessions remembered for resumption, per configuration.
const SESSION_CACHE: usize = 1024;

/// The current server configuration, swappable.
#[derive(Debug)]
pub struct TlsState {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
}

impl TlsState {
    /// Loads the material.
    ///
    /// # Errors
    /// A message naming the file that could not be read or used.
    pub fn load(files: TlsFiles) -> Result<TlsState, String> {
        let config = build(&files)?;
        Ok(TlsState {
            files,
            current: RwLock::new(config),
        })
    }

    /// Reloads the material from the same paths; on failure the old configuration stays in force.
    ///
    /// # Errors
    /// As [`TlsState::load`].
    pub fn reload(&self) -> Result<(), String> {
        let config = build(&self.files)?;
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = config;
        Ok(())
    }

    /// An acceptor using the configuration in force now.
    pub fn acceptor(&self) -> futures_rustls::TlsAcceptor {
        let config = Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        futures_rustls::TlsAcceptor::from(config)
    }

    /// Whether client certificates are required.
    pub fn mutual(&self) -> bool {
        self.files.client_ca.is_some()
    }
}

fn build(files: &TlsFiles) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if files.allow_tls12 {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions)
        .map_err(|e| format!("TLS versions: {e}"))?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in certs(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", ca.display()))?;
            }
            let mut verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider));
            if let Some(crl) = &files.crl {
                verifier = verifier.with_crls(crls(crl)?);
            }
            let verifier = verifier
                .build()
                .map_err(|e| format!("client verifier: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        None if files.crl.is_some() => return Err("a CRL needs a client CA".into()),
        None => builder.with_no_client_auth(),
    };
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("{}: {e}", files.key.display()))?;
    let mut config = builder
        .with_single_cert(certs(&files.cert)?, key)
        .map_err(|e| format!("{} / {}: {e}", files.cert.display(), files.key.display()))?;
    // A fresh cache per configuration: sessions never outlive the rules they were checked against.
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
    config.max_early_data_size = 0;
    Ok(Arc::new(config))
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate", path.display()));
    }
    Ok(certs)
}

fn crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    CertificateRevocationListDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The identity a client certificate names: its first DNS or URI subject alternative name, else its
/// common name.
pub fn identity(cert: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(n) | GeneralName::URI(n) => return Some((*n).to_owned()),
                _ => {}
            }
        }
    }
    let cn = parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned);
    cn
}
