//! The downstream TLS endpoint: TLS 1.3 only, a verified client certificate on every connection.

pub mod crl;
pub mod lifecycle;
pub mod outbound;
pub mod peer;
pub mod spiffe;

pub use crl::Crls;
pub use peer::PeerCert;

use rustls::crypto::SupportedKxGroup;
use rustls::crypto::aws_lc_rs::kx_group;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
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
///
/// Key exchange: [`DEFAULT_KEY_EXCHANGE`], hybrid post-quantum X25519MLKEM768 first. This is
/// what Vigil's outbound connections (upstreams, the OpenID Provider, the device inventory)
/// offer, in this order: they send an X25519MLKEM768 key share and, for free, its X25519 half,
/// so a server without ML-KEM answers X25519 without a retry. The downstream listener takes its
/// groups from `[tls] key_exchange` ([`ServerTls::key_exchange`]).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(base_provider())
}

fn base_provider() -> rustls::crypto::CryptoProvider {
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
    provider.kx_groups = DEFAULT_KEY_EXCHANGE
        .iter()
        .filter_map(|name| key_exchange_group(name))
        .collect();
    provider
}

/// The key-exchange groups `[tls] key_exchange` may name, by their names in the IANA TLS
/// Supported Groups registry. The first two are hybrids of a classical curve with ML-KEM-768
/// (FIPS 203); MLKEM768 and MLKEM1024 are ML-KEM alone, without a classical half.
pub const KEY_EXCHANGE_NAMES: &[&str] = &[
    "X25519MLKEM768",
    "SecP256r1MLKEM768",
    "X25519",
    "secp256r1",
    "secp384r1",
    "MLKEM768",
    "MLKEM1024",
];

/// The default of `[tls] key_exchange`, and what outbound connections offer: the groups
/// rustls offered before, with the post-quantum hybrid moved first.
pub const DEFAULT_KEY_EXCHANGE: &[&str] = &["X25519MLKEM768", "X25519", "secp256r1", "secp384r1"];

/// The group a [`KEY_EXCHANGE_NAMES`] name stands for (ASCII case does not matter).
pub fn key_exchange_group(name: &str) -> Option<&'static dyn SupportedKxGroup> {
    let groups: [&'static dyn SupportedKxGroup; 7] = [
        kx_group::X25519MLKEM768,
        kx_group::SECP256R1MLKEM768,
        kx_group::X25519,
        kx_group::SECP256R1,
        kx_group::SECP384R1,
        kx_group::MLKEM768,
        kx_group::MLKEM1024,
    ];
    KEY_EXCHANGE_NAMES
        .iter()
        .zip(groups)
        .find(|(known, _)| known.eq_ignore_ascii_case(name))
        .map(|(_, group)| group)
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
    /// Verified against their issuers already ([`Crls`]).
    pub crls: Vec<CertificateRevocationListDer<'static>>,
    pub allow_unknown_revocation: bool,
    pub enforce_crl_expiry: bool,
    pub session_tickets: bool,
    /// The groups a client may use for the key exchange; empty means [`DEFAULT_KEY_EXCHANGE`].
    /// Which of them a handshake uses is the client's choice (rustls follows the client's
    /// order among the groups both sides support), so this is an allow-list, not a preference.
    pub key_exchange: Vec<&'static dyn SupportedKxGroup>,
}

impl ServerTls {
    /// Builds the rustls configuration, and returns the client verifier too: resumed sessions
    /// skip certificate verification in TLS, so the server re-checks them with it (a ticket
    /// may predate the CRL now in force). Errors are phrased for the operator.
    pub fn build(
        self,
        resumption: Option<&Resumption>,
    ) -> Result<(Arc<ServerConfig>, Arc<dyn ClientCertVerifier>), String> {
        let mut provider = base_provider();
        if !self.key_exchange.is_empty() {
            provider.kx_groups = self.key_exchange;
        }
        let provider = Arc::new(provider);
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

/// Whether `key` is the private key of the first certificate of `chain`, in the operator's
/// words when it is not.
pub fn key_fits(
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
) -> Result<(), String> {
    match rustls::sign::CertifiedKey::from_der(chain.to_vec(), key.clone_key(), &base_provider()) {
        Ok(_) => Ok(()),
        Err(rustls::Error::InconsistentKeys(_)) => {
            Err("this key does not belong to the certificate (their public keys differ)".into())
        }
        Err(e) => Err(format!("the key cannot be used with the certificate: {e}")),
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

/// Adds every certificate of a PEM bundle to `roots`, and returns them (a CRL is verified
/// against the CA certificate that issued it, see [`Crls`]).
pub fn read_roots(
    path: &Path,
    roots: &mut RootCertStore,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = read_chain(path)?;
    for cert in &chain {
        roots
            .add(cert.clone())
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
    }
    Ok(chain)
}

fn pem_error(path: &Path, e: rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    let why = match e {
        Error::Io(io) => crate::error::file_error(&io),
        Error::NoItemsFound => "no PEM item of the kind expected here".to_owned(),
        Error::MissingSectionEnd { .. } => "not valid PEM: a section has no END line".to_owned(),
        Error::IllegalSectionStart { .. } => "not valid PEM: a BEGIN line is malformed".to_owned(),
        Error::Base64Decode(e) => format!("not valid PEM: bad base64 ({e})"),
        other => format!("not valid PEM: {other}"),
    };
    format!("{}: {why}", path.display())
}

/// Verifies a client's certificate chain (leaf first) again, against the CAs and CRLs that
/// `verifier` holds now, at `now`. TLS skips verification on a resumed session, whose ticket
/// may predate the CRL in force; and a connection verified at its handshake may outlive its
/// CA or a revocation after a reload. A refusal is the reason label a handshake failing the
/// same way would have (see [`tls_failure_reason`]), `no_certificate` for an empty chain.
pub fn verify_again(
    verifier: &dyn ClientCertVerifier,
    chain: &[CertificateDer<'_>],
    now: UnixTime,
) -> Result<(), &'static str> {
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Err("no_certificate");
    };
    match verifier.verify_client_cert(leaf, intermediates, now) {
        Ok(_) => Ok(()),
        Err(e) => Err(tls_failure_reason(&e)),
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
    use rustls::{CertRevocationListError, CertificateError, Error, PeerIncompatible};
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
        // Every CRL was verified against its issuer at load; one can still fail here when two CAs
        // in client_ca share a name and the client's CA is not the one that signed the CRL.
        #[allow(deprecated)]
        Error::InvalidCertRevocationList(
            CertRevocationListError::BadSignature
            | CertRevocationListError::UnsupportedSignatureAlgorithm
            | CertRevocationListError::UnsupportedSignatureAlgorithmContext { .. }
            | CertRevocationListError::UnsupportedSignatureAlgorithmForPublicKeyContext { .. },
        ) => "bad_signature",
        Error::InvalidCertRevocationList(_) => "bad_crl",
        Error::PeerIncompatible(PeerIncompatible::NoKxGroupsInCommon) => "no_shared_key_exchange",
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

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{CertRevocationListError, CertificateError, Error, PeerIncompatible};

    #[test]
    fn failures_map_to_the_reasons_the_docs_list() {
        let cases: Vec<(Error, &str)> = vec![
            (Error::NoCertificatesPresented, "no_certificate"),
            (CertificateError::UnknownIssuer.into(), "unknown_issuer"),
            (CertificateError::Expired.into(), "expired"),
            (CertificateError::NotValidYet.into(), "not_yet_valid"),
            (CertificateError::Revoked.into(), "revoked"),
            (
                CertificateError::UnknownRevocationStatus.into(),
                "unknown_revocation_status",
            ),
            (
                CertificateError::ExpiredRevocationList.into(),
                "expired_crl",
            ),
            (CertificateError::BadSignature.into(), "bad_signature"),
            (CertificateError::InvalidPurpose.into(), "wrong_purpose"),
            (CertificateError::BadEncoding.into(), "bad_certificate"),
            // A CRL whose signature does not verify with the client's CA.
            (
                Error::InvalidCertRevocationList(CertRevocationListError::BadSignature),
                "bad_signature",
            ),
            (
                Error::InvalidCertRevocationList(CertRevocationListError::IssuerInvalidForCrl),
                "bad_crl",
            ),
            (
                Error::PeerIncompatible(PeerIncompatible::NoKxGroupsInCommon),
                "no_shared_key_exchange",
            ),
            (
                Error::PeerIncompatible(PeerIncompatible::SupportedVersionsExtensionRequired),
                "protocol_version",
            ),
            (
                Error::PeerIncompatible(PeerIncompatible::NoCipherSuitesInCommon),
                "incompatible",
            ),
            (
                Error::AlertReceived(rustls::AlertDescription::BadCertificate),
                "alert_from_client",
            ),
            (
                Error::PeerMisbehaved(rustls::PeerMisbehaved::OfferedDuplicateKeyShares),
                "protocol_error",
            ),
        ];
        for (error, reason) in cases {
            assert_eq!(tls_failure_reason(&error), reason, "{error:?}");
            let io = std::io::Error::new(std::io::ErrorKind::InvalidData, error);
            assert_eq!(handshake_failure_reason(&io), reason);
        }
        let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        assert_eq!(handshake_failure_reason(&eof), "closed_by_client");
        let timeout = std::io::Error::from(std::io::ErrorKind::TimedOut);
        assert_eq!(handshake_failure_reason(&timeout), "timeout");
    }

    mod verify_again {
        use super::super::{provider, verify_again};
        use crate::certs::{Authority, LeafSpec, Revoked};
        use rustls::RootCertStore;
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
        use rustls::server::WebPkiClientVerifier;
        use rustls::server::danger::ClientCertVerifier;
        use std::sync::Arc;
        use time::{Duration, OffsetDateTime};

        fn verifier(ca: &Authority, revoked: &[Revoked]) -> Arc<dyn ClientCertVerifier> {
            let mut roots = RootCertStore::empty();
            roots.add(ca.cert_der().clone()).expect("CA certificate");
            let next_update = OffsetDateTime::now_utc() + Duration::days(1);
            let crl = ca.crl_pem(revoked, 1, next_update).expect("CRL");
            let crl = CertificateRevocationListDer::from_pem_slice(crl.as_bytes()).expect("CRL");
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .with_crls([crl])
                .build()
                .expect("verifier")
        }

        fn chain(ca: &Authority, spec: &LeafSpec) -> (Vec<CertificateDer<'static>>, Vec<u8>) {
            let issued = ca.issue(spec).expect("leaf");
            let leaf = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).expect("PEM");
            (vec![leaf], issued.serial)
        }

        #[test]
        fn passes_a_valid_chain_and_names_why_others_fail() {
            let ca = Authority::generate("Vigil Test CA").expect("CA");
            let other = Authority::generate("Another CA").expect("CA");
            let now = UnixTime::now();
            let (good, _) = chain(&ca, &LeafSpec::device("laptop"));
            let (revoked, serial) = chain(&ca, &LeafSpec::device("stolen"));
            let yesterday = OffsetDateTime::now_utc() - Duration::days(1);
            let lapsed = LeafSpec::device("old").validity(yesterday - Duration::days(1), yesterday);
            let (expired, _) = chain(&ca, &lapsed);
            let (foreign, _) = chain(&other, &LeafSpec::device("elsewhere"));
            let at = yesterday;
            let verifier = verifier(&ca, &[Revoked { serial, at }]);
            let cases: [(&[CertificateDer<'_>], Result<(), &str>); 5] = [
                (&good, Ok(())),
                (&[], Err("no_certificate")),
                (&revoked, Err("revoked")),
                (&expired, Err("expired")),
                (&foreign, Err("unknown_issuer")),
            ];
            for (chain, want) in cases {
                assert_eq!(verify_again(verifier.as_ref(), chain, now), want);
            }
        }
    }

    #[test]
    fn key_exchange_names_resolve_and_the_default_puts_post_quantum_first() {
        for name in KEY_EXCHANGE_NAMES {
            assert!(key_exchange_group(name).is_some(), "{name}");
        }
        assert_eq!(
            key_exchange_group("x25519").map(|g| g.name()),
            Some(rustls::NamedGroup::X25519)
        );
        assert!(key_exchange_group("X448").is_none());
        let offered: Vec<_> = provider().kx_groups.iter().map(|g| g.name()).collect();
        assert_eq!(
            offered,
            [
                rustls::NamedGroup::X25519MLKEM768,
                rustls::NamedGroup::X25519,
                rustls::NamedGroup::secp256r1,
                rustls::NamedGroup::secp384r1,
            ]
        );
    }
}
