//! The downstream TLS endpoint: TLS 1.3 only, a verified client certificate on every connection.

pub mod peer;

pub use peer::PeerCert;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ProducesTickets, StoresServerSessions, WebPkiClientVerifier};
use rustls::{RootCertStore, ServerConfig};
use std::path::Path;
use std::sync::Arc;

/// The crypto provider, once, so that every config uses the same one (aws-lc-rs).
///
/// TLS 1.3 suites are listed AES-128-GCM/SHA-256 first: SHA-256 runs on the CPU's SHA
/// extensions where SHA-384 does not, which is measurable on every handshake; the server's
/// order wins (`ignore_client_order`).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::aws_lc_rs::cipher_suite;
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites = vec![
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        cipher_suite::TLS13_AES_256_GCM_SHA384,
        cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        cipher_suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(provider)
}

/// Resumption state that outlives any one configuration, so a reload does not invalidate
/// every client's session tickets.
#[derive(Debug, Clone)]
pub struct Resumption {
    cache: Arc<dyn StoresServerSessions>,
    ticketer: Arc<dyn ProducesTickets>,
}

impl Resumption {
    pub fn new() -> Result<Self, rustls::Error> {
        Ok(Self {
            cache: rustls::server::ServerSessionMemoryCache::new(4096),
            ticketer: rustls::crypto::aws_lc_rs::Ticketer::new()?,
        })
    }
}

/// What the server side of TLS needs, already read from disk.
pub struct ServerTls {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub client_roots: RootCertStore,
    pub crls: Vec<CertificateRevocationListDer<'static>>,
    pub allow_unknown_revocation: bool,
    pub enforce_crl_expiry: bool,
    pub session_tickets: bool,
}

impl ServerTls {
    /// Builds the rustls configuration, and returns the client verifier too: resumed sessions
    /// skip certificate verification in TLS, so the server re-checks them with it (a ticket
    /// may predate the CRL now in force). Errors are phrased for the operator.
    pub fn build(
        self,
        resumption: Option<&Resumption>,
    ) -> Result<(Arc<ServerConfig>, Arc<dyn ClientCertVerifier>), String> {
        let provider = provider();
        let mut verifier = WebPkiClientVerifier::builder_with_provider(
            Arc::new(self.client_roots),
            provider.clone(),
        )
        .with_crls(self.crls);
        if self.allow_unknown_revocation {
            verifier = verifier.allow_unknown_revocation_status();
        }
        if self.enforce_crl_expiry {
            verifier = verifier.enforce_revocation_expiration();
        }
        let verifier = verifier
            .build()
            .map_err(|e| format!("client CA / CRL setup failed: {e}"))?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| format!("TLS 1.3 unavailable: {e}"))?
            .with_client_cert_verifier(verifier.clone())
            .with_single_cert(self.chain, self.key)
            .map_err(|e| format!("server certificate and key do not fit together: {e}"))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config.ignore_client_order = true;
        match resumption {
            Some(r) => {
                config.session_storage = r.cache.clone();
                if self.session_tickets {
                    config.ticketer = r.ticketer.clone();
                    // One ticket is enough for the next connection; each costs work and bytes.
                    config.send_tls13_tickets = 1;
                } else {
                    config.send_tls13_tickets = 0;
                }
            }
            None => {
                config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
                config.send_tls13_tickets = 0;
            }
        }
        Ok((Arc::new(config), verifier))
    }
}

pub fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if chain.is_empty() {
        return Err(format!("{}: no PEM certificate found", path.display()));
    }
    Ok(chain)
}

pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| pem_error(path, e))
}

/// Adds every certificate of a PEM bundle to `roots`.
pub fn read_roots(path: &Path, roots: &mut RootCertStore) -> Result<(), String> {
    for cert in read_chain(path)? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
    }
    Ok(())
}

/// A CRL in PEM, or raw DER when the file is not PEM.
pub fn read_crl(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let pem: Result<Vec<_>, _> = CertificateRevocationListDer::pem_slice_iter(&bytes).collect();
    let crls = match pem {
        Ok(list) if !list.is_empty() => list,
        _ => vec![CertificateRevocationListDer::from(bytes)],
    };
    // Parse now, so a broken CRL is a config error instead of every handshake failing.
    for crl in &crls {
        webpki_check_crl(crl).map_err(|e| format!("{}: not a valid CRL: {e}", path.display()))?;
    }
    Ok(crls)
}

fn webpki_check_crl(crl: &CertificateRevocationListDer<'_>) -> Result<(), String> {
    use x509_parser::prelude::FromDer;
    match x509_parser::revocation_list::CertificateRevocationList::from_der(crl.as_ref()) {
        Ok(([], _)) => Ok(()),
        Ok(_) => Err("trailing data after the CRL".into()),
        Err(e) => Err(e.to_string()),
    }
}

fn pem_error(path: &Path, e: rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => format!("{}: {io}", path.display()),
        other => format!("{}: not valid PEM: {other:?}", path.display()),
    }
}

/// Why a handshake failed, as a metric label. Each names a likely cause for on-call.
pub fn handshake_failure_reason(err: &std::io::Error) -> &'static str {
    use rustls::Error;
    if err.kind() == std::io::ErrorKind::TimedOut {
        return "timeout";
    }
    let Some(tls) = err.get_ref().and_then(|e| e.downcast_ref::<Error>()) else {
        return match err.kind() {
            std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::BrokenPipe => "closed_by_client",
            _ => "io",
        };
    };
    tls_failure_reason(tls)
}

/// The metric label for a rustls error.
pub fn tls_failure_reason(tls: &rustls::Error) -> &'static str {
    use rustls::{CertificateError, Error, PeerIncompatible};
    match tls {
        Error::NoCertificatesPresented => "no_certificate",
        Error::InvalidCertificate(cert) => match cert {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "not_yet_valid"
            }
            CertificateError::UnknownIssuer => "unknown_issuer",
            CertificateError::Revoked => "revoked",
            CertificateError::UnknownRevocationStatus => "unknown_revocation_status",
            CertificateError::ExpiredRevocationList
            | CertificateError::ExpiredRevocationListContext { .. } => "expired_crl",
            CertificateError::BadSignature => "bad_signature",
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "wrong_purpose"
            }
            _ => "bad_certificate",
        },
        Error::PeerIncompatible(
            PeerIncompatible::SupportedVersionsExtensionRequired
            | PeerIncompatible::Tls12NotOffered
            | PeerIncompatible::Tls12NotOfferedOrEnabled,
        ) => "protocol_version",
        Error::PeerIncompatible(_) => "incompatible",
        Error::AlertReceived(_) => "alert_from_client",
        Error::InvalidMessage(_) | Error::PeerMisbehaved(_) => "protocol_error",
        _ => "other",
    }
}
