//! Development PKI: a throw-away CA plus the leaves and CRLs Vigil needs to
//! run end to end without an external PKI.
//!
//! This backs `vigil certs`, `vigil demo` and the integration tests. It is not
//! meant to be a production CA: there is no key protection beyond file modes,
//! no audit log and no OCSP. Keys are ECDSA P-256 because every TLS stack we
//! care about accepts it and generation is instant.
//!
//! Serial numbers are handled as *canonical* big-endian bytes: the unsigned
//! magnitude without leading zero bytes (DER adds a `0x00` pad when the top bit
//! is set; we strip it). Compare serials only in this form.

use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    PublicKeyData, RevokedCertParams, SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;
use x509_parser::x509::SubjectPublicKeyInfo;

/// File name of the CA certificate inside a certs directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key inside a certs directory.
pub const CA_KEY_FILE: &str = "ca.key";
/// File name of the CRL inside a certs directory.
pub const CRL_FILE: &str = "ca.crl";
/// Common name of the CA created by [`init`].
pub const DEMO_CA_NAME: &str = "Vigil Development CA";
/// Common name of the device certificate created by [`init`].
pub const DEMO_DEVICE_NAME: &str = "demo-laptop";
/// SPIFFE ID of the workload certificate created by [`init`].
pub const DEMO_WORKLOAD_ID: &str = "spiffe://vigil.test/ns/demo/sa/client";

/// RFC 5280 / X.520 upper bound for a common name.
const MAX_COMMON_NAME_LEN: usize = 64;
/// RFC 5280 caps serial numbers at 20 octets.
const MAX_SERIAL_LEN: usize = 20;
const SERIAL_LEN: usize = 16;

const KEY_MODE: u32 = 0o600;
const CERT_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o700;

/// Backdating of `notBefore` / `thisUpdate` so a peer whose clock is slightly
/// behind does not reject a certificate we just minted.
const CLOCK_SKEW: time::Duration = time::Duration::minutes(1);
const LEAF_VALIDITY: time::Duration = time::Duration::days(365);
const CA_VALIDITY: time::Duration = time::Duration::days(3653);
const INIT_CRL_VALIDITY: time::Duration = time::Duration::days(30);

/// Shortest lifetime `issue` accepts. A certificate is backdated a minute for clock skew
/// and must still be valid once it has been copied to where it is used: anything shorter
/// is a typo (`--ttl 0s`), not a short-lived certificate.
pub const MIN_TTL: Duration = Duration::from_secs(60);
/// Shortest `nextUpdate` distance `revoke` accepts. Vigil refuses every client once a
/// loaded CRL's `nextUpdate` has passed (`enforce_crl_expiry`, the default), so a CRL must
/// stay fresh long enough for the next one to be made, copied and reloaded.
pub const MIN_CRL_VALIDITY: Duration = Duration::from_secs(3600);

/// Why a PKI operation failed. Variants carry the file involved where there is
/// one, so CLI output can point at it directly.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// Reading or writing a file or directory failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// rcgen refused to build or sign something (bad ASN.1 string, key the
    /// CA cannot sign with, ...).
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// Input PEM/DER could not be understood; `what` names the file or object.
    #[error("cannot read {what}: {detail}")]
    Parse { what: String, detail: String },
    /// Refusing to overwrite an existing file without `force`.
    #[error("{} already exists (use --force to overwrite)", .0.display())]
    Exists(PathBuf),
    /// The directory holds files that do not belong together (half a key
    /// pair, a leaf or CRL from another CA, ...). `init` refuses to guess.
    #[error("{}: {detail}", path.display())]
    Inconsistent { path: PathBuf, detail: String },
    /// The directory has no usable CA yet.
    #[error("no CA in {}: {} is missing (run `vigil certs init --dir {}` first)", dir.display(), missing.display(), dir.display())]
    NoCa { dir: PathBuf, missing: PathBuf },
    /// The SPIFFE ID is malformed; the string holds the ID and the reason.
    #[error("invalid SPIFFE ID {0}")]
    InvalidSpiffeId(String),
    /// A request that cannot produce a usable certificate (empty names,
    /// inverted validity, bad file stem, ...).
    #[error("{0}")]
    Invalid(String),
    /// The certificate asked for would still be valid after the CA that signs it expires:
    /// every client would refuse it from then on. Usually a `--ttl` longer than the CA has
    /// left, or a CA close to its end.
    #[error(
        "{what} would be valid until {}, after the CA ({ca}) expires at {}: a certificate must not outlive its CA; {}",
        rfc3339(*not_after),
        rfc3339(*ca_not_after),
        longest_hint(*longest)
    )]
    OutlivesCa {
        what: String,
        not_after: OffsetDateTime,
        ca: String,
        ca_not_after: OffsetDateTime,
        /// How long a certificate issued now may live at most.
        longest: Duration,
    },
    /// The system random number generator failed.
    #[error("random number generator failed")]
    Random,
}

impl CertsError {
    fn io(path: &Path, source: io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    fn parse(what: impl Into<String>, detail: impl fmt::Display) -> Self {
        Self::Parse {
            what: what.into(),
            detail: detail.to_string(),
        }
    }
}

/// What a leaf certificate is for. Decides the extended key usage, which is
/// what rustls checks when the certificate is presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A user's machine authenticating to the proxy (clientAuth).
    Device,
    /// A service identified by a SPIFFE ID (clientAuth).
    Workload,
    /// The proxy's own listener certificate (serverAuth).
    Server,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Device => "device",
            Kind::Workload => "workload",
            Kind::Server => "server",
        })
    }
}

/// Everything needed to issue a leaf. Start from [`LeafSpec::device`],
/// [`LeafSpec::workload`] or [`LeafSpec::server`] and adjust fields; the
/// constructors pick validity windows that work with a slightly skewed clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafSpec {
    pub kind: Kind,
    pub common_name: String,
    pub dns_names: Vec<String>,
    pub ip_addrs: Vec<IpAddr>,
    pub emails: Vec<String>,
    /// Emitted as a URI SAN, which is where SPIFFE-aware peers look for it.
    pub spiffe_id: Option<String>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl LeafSpec {
    fn new(kind: Kind, common_name: String) -> Self {
        let now = now();
        Self {
            kind,
            common_name,
            dns_names: Vec::new(),
            ip_addrs: Vec::new(),
            emails: Vec::new(),
            spiffe_id: None,
            not_before: now.saturating_sub(CLOCK_SKEW),
            not_after: now.saturating_add(LEAF_VALIDITY),
        }
    }

    /// For a user's machine; the common name is what policies and logs show.
    /// Valid for a year, since device certs are rotated by hand.
    pub fn device(common_name: impl Into<String>) -> Self {
        Self::new(Kind::Device, common_name.into())
    }

    /// For a service. The common name is only cosmetic (the last path segment
    /// of the ID, so `openssl x509 -subject` stays readable); identity comes
    /// from the URI SAN. Real workloads should use a short TTL via
    /// [`LeafSpec::valid_for`]. The ID is validated when issuing.
    pub fn workload(spiffe_id: impl Into<String>) -> Self {
        let spiffe_id = spiffe_id.into();
        let tail = spiffe_id.strip_prefix("spiffe://").unwrap_or(&spiffe_id);
        let tail = tail.rsplit('/').next().unwrap_or(tail);
        let common_name: String = tail.chars().take(MAX_COMMON_NAME_LEN).collect();
        let mut spec = Self::new(Kind::Workload, common_name);
        spec.spiffe_id = Some(spiffe_id);
        spec
    }

    /// For a TLS listener. Clients match the SANs, not the common name, so at
    /// least one DNS name or IP is required when issuing.
    pub fn server(dns_names: Vec<String>, ips: Vec<IpAddr>) -> Self {
        let common_name = dns_names
            .first()
            .cloned()
            .or_else(|| ips.first().map(IpAddr::to_string))
            .unwrap_or_else(|| "vigil-server".to_owned());
        let mut spec = Self::new(Kind::Server, common_name);
        spec.dns_names = dns_names;
        spec.ip_addrs = ips;
        spec
    }

    /// Short-lived certificates: valid from a minute ago (clock skew) until
    /// `ttl` from now. Absurdly long TTLs saturate instead of overflowing.
    #[must_use]
    pub fn valid_for(mut self, ttl: Duration) -> Self {
        let now = now();
        let ttl = time::Duration::try_from(ttl).unwrap_or(time::Duration::MAX);
        self.not_before = now.saturating_sub(CLOCK_SKEW);
        self.not_after = now.saturating_add(ttl);
        self
    }

    /// Exact validity window, for expired or not-yet-valid test certificates.
    /// Sub-second precision is dropped by X.509 encoding.
    #[must_use]
    pub fn validity(mut self, not_before: OffsetDateTime, not_after: OffsetDateTime) -> Self {
        self.not_before = not_before;
        self.not_after = not_after;
        self
    }
}

/// A freshly issued certificate and its private key, PEM encoded, ready to be
/// written to disk or handed to rustls.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    /// Canonical big-endian serial; what a CRL entry must contain to revoke it.
    pub serial: Vec<u8>,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[elided]")
            .field("serial", &crate::hex::encode(&self.serial))
            .finish()
    }
}

/// One entry of a CRL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// Canonical big-endian serial of the revoked certificate.
    pub serial: Vec<u8>,
    pub at: OffsetDateTime,
}

/// A CA that can issue leaves and CRLs. Holds the private key in memory, so
/// keep it only as long as you need to sign.
pub struct Authority {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    /// Subject key identifier of the CA, reused as the CRL's authority key
    /// identifier so the two always match, even for CAs made by other tools.
    key_id: Vec<u8>,
    subject: String,
    /// End of the CA's own validity: no leaf it signs may be valid after it.
    not_after: OffsetDateTime,
}

impl fmt::Debug for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authority")
            .field("subject", &self.subject)
            .field("key", &"[elided]")
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// A new self-signed root for a fresh dev environment: valid 10 years,
    /// path length 0 (it signs leaves only), allowed to sign CRLs.
    pub fn generate(common_name: &str) -> Result<Self, CertsError> {
        check_common_name(common_name)?;
        let key = KeyPair::generate()?;
        let now = now();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = now.saturating_sub(CLOCK_SKEW);
        params.not_after = now.saturating_add(CA_VALIDITY);
        params.serial_number = Some(random_serial()?);
        let key_id = params.key_identifier(&key);
        let not_after = params.not_after;
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        let cert_der = cert.der().clone();
        Ok(Self {
            cert_pem,
            cert_der,
            issuer: Issuer::new(params, key),
            key_id,
            subject: format!("CN={common_name}"),
            not_after,
        })
    }

    /// Reloads a CA written earlier (or made with another tool). Fails unless
    /// the certificate is a CA and the key belongs to it, so a mixed-up pair
    /// is caught here rather than as a handshake failure later.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CertsError> {
        Self::from_pem_labeled(cert_pem, key_pem, "CA certificate", "CA key")
    }

    fn from_pem_labeled(
        cert_pem: &str,
        key_pem: &str,
        cert_label: &str,
        key_label: &str,
    ) -> Result<Self, CertsError> {
        let cert_der = first_cert_der(cert_pem, cert_label)?;
        let key_der = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| CertsError::parse(key_label, e))?;
        let key = KeyPair::try_from(&key_der).map_err(|e| CertsError::parse(key_label, e))?;

        let x509 = parse_cert(&cert_der, cert_label)?;
        let is_ca = x509
            .basic_constraints()
            .map_err(|e| CertsError::parse(cert_label, e))?
            .is_some_and(|bc| bc.value.ca);
        if !is_ca {
            return Err(CertsError::parse(
                cert_label,
                "not a CA certificate (basicConstraints CA:TRUE missing)",
            ));
        }
        if x509.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
            return Err(CertsError::parse(
                key_label,
                format!("does not match the public key of {cert_label}"),
            ));
        }
        let key_id = x509
            .iter_extensions()
            .find_map(|ext| match ext.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
                _ => None,
            })
            .unwrap_or_else(|| CertificateParams::default().key_identifier(&key));
        let subject = x509.subject().to_string();
        let not_after = x509.validity().not_after.to_datetime();
        drop(x509);

        let issuer = Issuer::from_ca_cert_der(&cert_der, key)?;
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            cert_der,
            issuer,
            key_id,
            subject,
            not_after,
        })
    }

    /// The CA certificate as generated or as passed to [`Authority::from_pem`];
    /// this is what clients and the proxy put in their trust store.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate in DER, for building a rustls root store directly.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA private key (PKCS#8 PEM), for persisting a generated CA.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// When the CA itself expires; [`Authority::issue`] refuses leaves valid after it.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// Refuses a validity that ends after the CA's: clients would trust the leaf until the
    /// CA expires and then, with a date still ahead on the leaf, refuse it all at once.
    fn check_within_validity(
        &self,
        what: &str,
        not_after: OffsetDateTime,
    ) -> Result<(), CertsError> {
        if not_after <= self.not_after {
            Ok(())
        } else {
            Err(self.outlived_by(what, not_after))
        }
    }

    fn outlived_by(&self, what: &str, not_after: OffsetDateTime) -> CertsError {
        let left = (self.not_after - now()).max(time::Duration::ZERO);
        CertsError::OutlivesCa {
            what: what.to_owned(),
            not_after,
            ca: self.subject.clone(),
            ca_not_after: self.not_after,
            longest: Duration::try_from(left).unwrap_or(Duration::ZERO),
        }
    }

    /// `spec` with its end moved back to the CA's `notAfter` if it was later, for the
    /// default lifetimes (`init`, `issue` without `--ttl`): a lifetime nobody asked for
    /// gives way to the CA's, one asked for never does. Fails when the CA has less than
    /// [`MIN_TTL`] left. The flag says whether the end was moved.
    fn fit(&self, mut spec: LeafSpec, what: &str) -> Result<(LeafSpec, bool), CertsError> {
        let shortest = now().saturating_add(time::Duration::try_from(MIN_TTL).unwrap_or_default());
        if self.not_after < shortest {
            return Err(self.outlived_by(what, spec.not_after.max(shortest)));
        }
        let capped = spec.not_after > self.not_after;
        spec.not_after = spec.not_after.min(self.not_after);
        Ok((spec, capped))
    }

    /// Signs a new leaf with a fresh key. The serial is 16 random bytes (top
    /// bit clear, never starting with zero) so it is unique without any state
    /// and has the same canonical form everywhere.
    pub fn issue(&self, spec: &LeafSpec) -> Result<Issued, CertsError> {
        check_spec(spec)?;
        self.check_within_validity(&format!("the {} certificate", spec.kind), spec.not_after)?;
        let serial = random_serial()?;

        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, spec.common_name.as_str());
        params.not_before = spec.not_before;
        params.not_after = spec.not_after;
        params.serial_number = Some(serial.clone());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![match spec.kind {
            Kind::Device | Kind::Workload => ExtendedKeyUsagePurpose::ClientAuth,
            Kind::Server => ExtendedKeyUsagePurpose::ServerAuth,
        }];
        params.use_authority_key_identifier_extension = true;

        let mut sans = Vec::new();
        for name in &spec.dns_names {
            sans.push(SanType::DnsName(Ia5String::try_from(name.as_str())?));
        }
        sans.extend(spec.ip_addrs.iter().copied().map(SanType::IpAddress));
        for email in &spec.emails {
            sans.push(SanType::Rfc822Name(Ia5String::try_from(email.as_str())?));
        }
        if let Some(id) = &spec.spiffe_id {
            sans.push(SanType::URI(Ia5String::try_from(id.as_str())?));
        }
        params.subject_alt_names = sans;

        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial: serial.to_bytes(),
        })
    }

    /// A CRL listing `revoked` serials, numbered `number`, valid until `next_update`.
    ///
    /// Callers own the numbering (it must grow with every CRL they publish).
    /// `thisUpdate` is backdated a minute for clock skew; if `next_update` is
    /// already in the past it is backdated further, which yields a well-formed
    /// but stale CRL — useful for testing stale-CRL handling.
    pub fn crl_pem(
        &self,
        revoked: &[Revoked],
        number: u64,
        next_update: OffsetDateTime,
    ) -> Result<String, CertsError> {
        let this_update = now()
            .saturating_sub(CLOCK_SKEW)
            .min(next_update.saturating_sub(CLOCK_SKEW));
        let params = CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|r| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&r.serial),
                    revocation_time: r.at,
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::PreSpecified(self.key_id.clone()),
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }

    /// Turns a failed signature check of the file at `path` against this CA's
    /// key into an error telling the user how to get out of the mismatch.
    fn check_signed_by_me(
        &self,
        path: &Path,
        verify: impl FnOnce(&SubjectPublicKeyInfo<'_>) -> bool,
    ) -> Result<(), CertsError> {
        let ca = parse_cert(&self.cert_der, "CA certificate")?;
        if verify(ca.public_key()) {
            Ok(())
        } else {
            Err(CertsError::Inconsistent {
                path: path.to_path_buf(),
                detail: format!(
                    "not signed by the CA ({}); delete it or rerun with --force",
                    self.subject
                ),
            })
        }
    }
}

/// Reads a certificate PEM (first certificate) and returns its canonical
/// serial — for `certs revoke --cert FILE`.
pub fn serial_of(cert_pem: &str) -> Result<Vec<u8>, CertsError> {
    let der = first_cert_der(cert_pem, "certificate")?;
    let x509 = parse_cert(&der, "certificate")?;
    Ok(canonical_serial(x509.raw_serial()))
}

/// Reads a CRL PEM and returns its number and revoked entries, so a CRL can
/// be extended instead of rebuilt from scratch. A CRL without a number (not
/// RFC 5280 conformant, but seen in the wild) reads as number 0.
///
/// Does not check the signature; see [`revoke_in_dir`] for that.
pub fn read_crl(crl_pem: &str) -> Result<(u64, Vec<Revoked>), CertsError> {
    let der = CertificateRevocationListDer::from_pem_slice(crl_pem.as_bytes())
        .map_err(|e| CertsError::parse("CRL", e))?;
    let (_, crl) = x509_parser::parse_x509_crl(&der).map_err(|e| CertsError::parse("CRL", e))?;
    let number = match crl.crl_number() {
        None => 0,
        Some(n) => {
            let bytes = canonical_serial(&n.to_bytes_be());
            if bytes.len() > 8 {
                return Err(CertsError::parse(
                    "CRL",
                    "CRL number does not fit in 64 bits",
                ));
            }
            bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
        }
    };
    let entries = crl
        .iter_revoked_certificates()
        .map(|r| Revoked {
            serial: canonical_serial(r.raw_serial()),
            at: r.revocation_date.to_datetime(),
        })
        .collect();
    Ok((number, entries))
}

/// What an operator copies out of `vigil certs` output for each certificate it writes: the
/// SHA-256 fingerprint that the device inventory and `cert_fingerprint` rules take, the
/// serial that `vigil certs revoke --serial` takes, and when the certificate stops being valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSummary {
    /// SHA-256 of the DER certificate in 64 lower-case hex digits, computed by the code that
    /// computes it for a connecting client ([`crate::tls::PeerCert`]).
    pub fingerprint: String,
    /// Canonical serial in lower-case hex.
    pub serial: String,
    pub not_after: OffsetDateTime,
}

impl CertSummary {
    /// Reads the first certificate of a PEM; `what` names it in errors.
    pub fn of_pem(pem: &str, what: &str) -> Result<Self, CertsError> {
        let der = first_cert_der(pem, what)?;
        let peer = crate::tls::PeerCert::from_der(&der).map_err(|e| CertsError::parse(what, e))?;
        let x509 = parse_cert(&der, what)?;
        Ok(Self {
            fingerprint: peer.fingerprint_hex,
            serial: crate::hex::encode(&canonical_serial(x509.raw_serial())),
            not_after: x509.validity().not_after.to_datetime(),
        })
    }
}

/// `sha256=HEX not_after=RFC3339 serial=HEX`: one `key=value` word per fact, so `grep`,
/// `cut -d=` or `awk` can take any of them from a line.
impl fmt::Display for CertSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sha256={} not_after={} serial={}",
            self.fingerprint,
            rfc3339(self.not_after),
            self.serial
        )
    }
}

/// What [`init`] did, so the CLI can tell the user which files are new.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitReport {
    pub dir: PathBuf,
    pub created: Vec<PathBuf>,
    pub kept: Vec<PathBuf>,
    /// Every certificate created or kept (the CA's included), with its [`CertSummary`].
    pub certificates: Vec<(PathBuf, CertSummary)>,
    /// Set when `force` replaced a CA that was there.
    pub replaced_ca: Option<ReplacedCa>,
}

impl InitReport {
    /// One line per file, `created PATH` or `kept    PATH`, followed on a certificate's line
    /// by its [`CertSummary`].
    pub fn lines(&self) -> Vec<String> {
        let created = self.created.iter().map(|p| ("created", p));
        let kept = self.kept.iter().map(|p| ("kept   ", p));
        created
            .chain(kept)
            .map(
                |(verb, path)| match self.certificates.iter().find(|(p, _)| p == path) {
                    Some((_, summary)) => format!("{verb} {} {summary}", path.display()),
                    None => format!("{verb} {}", path.display()),
                },
            )
            .collect()
    }
}

/// The CA that `init --force` replaced, read before it was overwritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplacedCa {
    /// The old CA certificate; `None` when it was missing or could not be read.
    pub old: Option<CertSummary>,
    /// Certificates left in the directory (other than those `init` writes) that the old CA
    /// signed, or every certificate there when the old CA could not be read: no configuration
    /// that trusts the new CA accepts them.
    pub orphans: Vec<PathBuf>,
}

/// The leaves `init` writes, by file stem.
fn init_leaves() -> [(&'static str, LeafSpec); 3] {
    [
        (
            "server",
            LeafSpec::server(
                vec!["localhost".to_owned()],
                vec![
                    IpAddr::V4(Ipv4Addr::LOCALHOST),
                    IpAddr::V6(Ipv6Addr::LOCALHOST),
                ],
            ),
        ),
        ("device", LeafSpec::device(DEMO_DEVICE_NAME)),
        ("workload", LeafSpec::workload(DEMO_WORKLOAD_ID)),
    ]
}

/// `vigil certs init --dir DIR`: ca.pem, ca.key, server.pem/server.key (DNS localhost, IPs 127.0.0.1 and ::1),
/// device.pem/device.key (CN "demo-laptop"), workload.pem/workload.key (SPIFFE ID "spiffe://vigil.test/ns/demo/sa/client"),
/// and ca.crl (an empty CRL, number 1, next update in 30 days) so configs can reference a CRL from day one.
/// Leaves are valid for a year, or until the CA's `notAfter` if that comes first.
///
/// Safe to rerun: if ca.pem and ca.key exist they are reused (kept) and only
/// missing files are issued. Existing leaves and the CRL are checked to be
/// signed by that CA, and half-present pairs are reported rather than
/// patched over. With `force` everything is regenerated, and the CA it replaces is
/// described in [`InitReport::replaced_ca`].
pub fn init(dir: &Path, force: bool) -> Result<InitReport, CertsError> {
    create_dir(dir)?;
    let ca_cert = dir.join(CA_CERT_FILE);
    let ca_key = dir.join(CA_KEY_FILE);
    let crl = dir.join(CRL_FILE);
    let leaves = init_leaves();
    let mut report = InitReport {
        dir: dir.to_path_buf(),
        created: Vec::new(),
        kept: Vec::new(),
        certificates: Vec::new(),
        replaced_ca: None,
    };

    let reuse_ca = !force && pair_present(&ca_cert, &ca_key)?;
    let ca = if reuse_ca {
        let ca = load_authority(dir)?;
        report.kept.extend([ca_cert.clone(), ca_key.clone()]);
        ca
    } else {
        if force {
            report.replaced_ca = replaced_ca(dir)?;
        } else {
            refuse_orphaning(dir, &crl)?;
        }
        let ca = Authority::generate(DEMO_CA_NAME)?;
        write_file(&ca_key, ca.key_pem().as_bytes(), KEY_MODE, force)?;
        write_file(&ca_cert, ca.cert_pem().as_bytes(), CERT_MODE, force)?;
        report.created.extend([ca_cert.clone(), ca_key.clone()]);
        ca
    };
    report.certificates.push((
        ca_cert.clone(),
        CertSummary::of_pem(ca.cert_pem(), &ca_cert.display().to_string())?,
    ));

    for (stem, spec) in leaves {
        let Some((cert_path, key_path)) = leaf_paths(dir, stem) else {
            continue;
        };
        let what = cert_path.display().to_string();
        if reuse_ca && pair_present(&cert_path, &key_path)? {
            let pem = read_to_string(&cert_path)?;
            let der = first_cert_der(&pem, &what)?;
            let leaf = parse_cert(&der, &what)?;
            ca.check_signed_by_me(&cert_path, |spki| leaf.verify_signature(Some(spki)).is_ok())?;
            report
                .certificates
                .push((cert_path.clone(), CertSummary::of_pem(&pem, &what)?));
            report.kept.extend([cert_path, key_path]);
            continue;
        }
        let (spec, _) = ca.fit(spec, &what)?;
        let issued = ca.issue(&spec)?;
        write_file(&key_path, issued.key_pem.as_bytes(), KEY_MODE, force)?;
        write_file(&cert_path, issued.cert_pem.as_bytes(), CERT_MODE, force)?;
        report.certificates.push((
            cert_path.clone(),
            CertSummary::of_pem(&issued.cert_pem, &what)?,
        ));
        report.created.extend([cert_path, key_path]);
    }

    if reuse_ca && exists(&crl)? {
        read_crl_for(&ca, &crl)?;
        report.kept.push(crl);
    } else {
        let next_update = now().saturating_add(INIT_CRL_VALIDITY);
        let pem = ca.crl_pem(&[], 1, next_update)?;
        write_file(&crl, pem.as_bytes(), CERT_MODE, force)?;
        report.created.push(crl);
    }
    Ok(report)
}

/// Without `--force` and without a CA, a new CA would orphan any leaf or CRL already in
/// `dir`; refuse before writing anything.
fn refuse_orphaning(dir: &Path, crl: &Path) -> Result<(), CertsError> {
    let leaf_files = init_leaves()
        .into_iter()
        .filter_map(|(stem, _)| leaf_paths(dir, stem))
        .flat_map(|(cert, key)| [cert, key]);
    for path in leaf_files.chain([crl.to_path_buf()]) {
        if exists(&path)? {
            return Err(CertsError::Inconsistent {
                path,
                detail: format!(
                    "exists but there is no CA ({CA_CERT_FILE} + {CA_KEY_FILE}) next to it; \
                     restore the CA, delete the file, or rerun with --force"
                ),
            });
        }
    }
    Ok(())
}

/// Reads the CA that `init --force` is about to replace, and the certificates in `dir` that
/// it signed and `init` does not rewrite. `None` when there is no CA to replace.
fn replaced_ca(dir: &Path) -> Result<Option<ReplacedCa>, CertsError> {
    let ca_cert = dir.join(CA_CERT_FILE);
    if !exists(&ca_cert)? && !exists(&dir.join(CA_KEY_FILE))? {
        return Ok(None);
    }
    let old_pem = fs::read_to_string(&ca_cert).ok();
    let what = ca_cert.display().to_string();
    let old = old_pem
        .as_deref()
        .and_then(|pem| CertSummary::of_pem(pem, &what).ok());
    let old_der = old_pem
        .as_deref()
        .and_then(|pem| first_cert_der(pem, &what).ok());
    let old_ca = old_der
        .as_deref()
        .and_then(|der| parse_cert(der, &what).ok());
    let rewritten: Vec<PathBuf> = init_leaves()
        .into_iter()
        .filter_map(|(stem, _)| leaf_paths(dir, stem).map(|(cert, _)| cert))
        .chain([ca_cert.clone()])
        .collect();
    let entries = fs::read_dir(dir).map_err(|e| CertsError::io(dir, e))?;
    let mut orphans = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| CertsError::io(dir, e))?.path();
        if path.extension().is_none_or(|e| e != "pem") || rewritten.contains(&path) {
            continue;
        }
        let Some(der) = fs::read_to_string(&path)
            .ok()
            .and_then(|pem| first_cert_der(&pem, "").ok())
        else {
            continue;
        };
        let Ok(leaf) = parse_cert(&der, "") else {
            continue;
        };
        let signed_by_old = old_ca
            .as_ref()
            .is_none_or(|ca| leaf.verify_signature(Some(ca.public_key())).is_ok());
        if signed_by_old {
            orphans.push(path);
        }
    }
    orphans.sort();
    Ok(Some(ReplacedCa { old, orphans }))
}

/// Arguments of `vigil certs issue`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueOptions {
    pub kind: Kind,
    /// File stem and common name.
    pub name: String,
    /// Required for [`Kind::Workload`], optional otherwise.
    pub spiffe_id: Option<String>,
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub emails: Vec<String>,
    /// At least [`MIN_TTL`], and never past the CA's `notAfter`. Without it: one year, or
    /// until the CA's `notAfter` if that comes first.
    pub ttl: Option<Duration>,
    pub force: bool,
}

/// What [`issue_to_dir`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub summary: CertSummary,
    /// The default lifetime (one year) was cut short to end with the CA's `notAfter`.
    pub capped: bool,
}

/// `vigil certs issue`: loads `DIR/ca.pem` + `DIR/ca.key`, writes `DIR/<name>.pem` and `DIR/<name>.key`.
///
/// A `ttl` shorter than [`MIN_TTL`], or one that would outlive the CA, is refused; without a
/// `ttl` the certificate is valid for a year or until the CA's `notAfter`, whichever comes
/// first. Checks both destinations before writing either, so a refused run leaves
/// no half-written pair behind.
pub fn issue_to_dir(dir: &Path, opts: &IssueOptions) -> Result<IssuedFiles, CertsError> {
    check_file_stem(&opts.name)?;
    if let Some(ttl) = opts.ttl.filter(|ttl| *ttl < MIN_TTL) {
        return Err(CertsError::Invalid(format!(
            "--ttl {} is too short: a certificate must be valid for at least {} (it is \
             backdated a minute for clock skew, and must still be valid when it is put to use)",
            humantime::format_duration(ttl),
            humantime::format_duration(MIN_TTL)
        )));
    }
    let ca = load_authority(dir)?;
    let mut spec = match opts.kind {
        Kind::Device => LeafSpec::device(opts.name.clone()),
        Kind::Workload => {
            let Some(id) = &opts.spiffe_id else {
                return Err(CertsError::Invalid(
                    "workload certificates need a SPIFFE ID (--spiffe-id)".to_owned(),
                ));
            };
            LeafSpec::workload(id.clone())
        }
        Kind::Server => LeafSpec::server(Vec::new(), Vec::new()),
    };
    spec.common_name = opts.name.clone();
    spec.spiffe_id = opts.spiffe_id.clone();
    spec.dns_names = opts.dns.clone();
    spec.ip_addrs = opts.ips.clone();
    spec.emails = opts.emails.clone();

    let Some((cert_path, key_path)) = leaf_paths(dir, &opts.name) else {
        return Err(CertsError::Invalid(format!(
            "{:?} cannot be used as a file name",
            opts.name
        )));
    };
    let what = cert_path.display().to_string();
    let (spec, capped) = match opts.ttl {
        Some(ttl) => {
            let spec = spec.valid_for(ttl);
            let asked = format!("{what} (--ttl {})", exact_ttl_text(ttl));
            ca.check_within_validity(&asked, spec.not_after)?;
            (spec, false)
        }
        None => ca.fit(spec, &what)?,
    };
    if !opts.force {
        for path in [&cert_path, &key_path] {
            if exists(path)? {
                return Err(CertsError::Exists(path.clone()));
            }
        }
    }
    let issued = ca.issue(&spec)?;
    write_file(&key_path, issued.key_pem.as_bytes(), KEY_MODE, opts.force)?;
    write_file(
        &cert_path,
        issued.cert_pem.as_bytes(),
        CERT_MODE,
        opts.force,
    )?;
    Ok(IssuedFiles {
        summary: CertSummary::of_pem(&issued.cert_pem, &what)?,
        cert: cert_path,
        key: key_path,
        capped,
    })
}

/// `vigil certs revoke`: loads the CA in DIR, reads DIR/ca.crl if present (keeps its entries, number + 1), adds `serial`
/// (idempotent if already listed), writes the new CRL atomically (write temp file in same dir, then rename).
/// Returns the CRL path and how many entries it now lists.
///
/// Revoking an already listed serial still re-signs the CRL with a new
/// number and next update, which doubles as "refresh the CRL". An existing
/// CRL not signed by this CA is an error rather than silently merged.
pub fn revoke_in_dir(
    dir: &Path,
    serial: &[u8],
    next_update_in: Duration,
) -> Result<(PathBuf, usize), CertsError> {
    if next_update_in < MIN_CRL_VALIDITY {
        return Err(CertsError::Invalid(format!(
            "--next-update {} is too soon: Vigil refuses every client once a CRL's nextUpdate \
             has passed (enforce_crl_expiry, the default), so the CRL must stay fresh until the \
             next one is published; use at least {} (the default is 30d)",
            humantime::format_duration(next_update_in),
            humantime::format_duration(MIN_CRL_VALIDITY)
        )));
    }
    let serial = canonical_serial(serial);
    if serial.is_empty() || serial.len() > MAX_SERIAL_LEN {
        return Err(CertsError::Invalid(format!(
            "serial {} must be 1 to {MAX_SERIAL_LEN} bytes",
            crate::hex::encode(&serial)
        )));
    }
    let ca = load_authority(dir)?;
    let crl_path = dir.join(CRL_FILE);
    let (number, mut entries) = if exists(&crl_path)? {
        read_crl_for(&ca, &crl_path)?
    } else {
        (0, Vec::new())
    };
    let now = now();
    if !entries.iter().any(|e| e.serial == serial) {
        entries.push(Revoked { serial, at: now });
    }
    let Some(number) = number.checked_add(1) else {
        return Err(CertsError::Invalid(format!(
            "{}: CRL number cannot be incremented past {number}",
            crl_path.display()
        )));
    };
    let ttl = time::Duration::try_from(next_update_in).unwrap_or(time::Duration::MAX);
    let pem = ca.crl_pem(&entries, number, now.saturating_add(ttl))?;
    write_replace(&crl_path, pem.as_bytes(), CERT_MODE)?;
    Ok((crl_path, entries.len()))
}

// ---------------------------------------------------------------------------
// Internals
// ---------------------------------------------------------------------------

/// RFC 3339 in UTC to the second (`2027-01-31T09:30:00Z`): how `vigil certs` prints when
/// a certificate or CRL ends. Written out by hand so that no date, however odd, can panic.
pub fn rfc3339(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// A lifetime as `--ttl` reads it, rounded down to whole days, hours or minutes.
fn ttl_text(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        86_400.. => format!("{}d", secs / 86_400),
        3_600.. => format!("{}h", secs / 3_600),
        _ => format!("{}m", secs / 60),
    }
}

/// A lifetime in the largest of days, hours, minutes or seconds that states it exactly
/// (`--ttl 20y` reads back as `7305d`).
fn exact_ttl_text(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0 => humantime::format_duration(d).to_string(),
        _ if secs.is_multiple_of(86_400) => format!("{}d", secs / 86_400),
        _ if secs.is_multiple_of(3_600) => format!("{}h", secs / 3_600),
        _ if secs.is_multiple_of(60) => format!("{}m", secs / 60),
        _ => format!("{secs}s"),
    }
}

/// Names the longest `--ttl` left, a minute short and rounded down, so that the value
/// printed is still accepted when the command is run again with it.
fn longest_hint(longest: Duration) -> String {
    let longest = longest.saturating_sub(Duration::from_secs(60));
    if longest < MIN_TTL {
        "the CA has run out: renew it (for a development CA, `vigil certs init --force`, which \
         replaces every certificate)"
            .to_owned()
    } else {
        format!("the longest --ttl still possible is {}", ttl_text(longest))
    }
}

/// Current time truncated to whole seconds, which is all X.509 can encode;
/// keeps a spec's timestamps equal to what ends up in the certificate.
fn now() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(0).unwrap_or(now)
}

fn random_serial() -> Result<SerialNumber, CertsError> {
    let mut bytes = [0u8; SERIAL_LEN];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| CertsError::Random)?;
    // Positive, and no leading zero byte, so DER encodes exactly these bytes
    // and the canonical form is the same everywhere.
    bytes[0] &= 0x7f;
    if bytes[0] == 0 {
        bytes[0] = 1;
    }
    Ok(SerialNumber::from_slice(&bytes))
}

/// Strips DER sign padding / leading zeros; zero stays `[0]`.
fn canonical_serial(bytes: &[u8]) -> Vec<u8> {
    let stripped: Vec<u8> = bytes.iter().copied().skip_while(|b| *b == 0).collect();
    if stripped.is_empty() && !bytes.is_empty() {
        vec![0]
    } else {
        stripped
    }
}

fn first_cert_der(pem: &str, what: &str) -> Result<CertificateDer<'static>, CertsError> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| CertsError::parse(what, e))
}

fn parse_cert<'a>(der: &'a [u8], what: &str) -> Result<X509Certificate<'a>, CertsError> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, cert)| cert)
        .map_err(|e| CertsError::parse(what, e))
}

fn check_common_name(cn: &str) -> Result<(), CertsError> {
    if cn.trim().is_empty() {
        return Err(CertsError::Invalid("common name is empty".to_owned()));
    }
    if cn.chars().count() > MAX_COMMON_NAME_LEN {
        return Err(CertsError::Invalid(format!(
            "common name {cn:?} is longer than {MAX_COMMON_NAME_LEN} characters"
        )));
    }
    Ok(())
}

fn check_spec(spec: &LeafSpec) -> Result<(), CertsError> {
    if let Some(id) = &spec.spiffe_id {
        crate::tls::spiffe::validate(id)
            .map_err(|why| CertsError::InvalidSpiffeId(format!("{id:?}: {why}")))?;
    }
    if spec.kind == Kind::Workload {
        match &spec.spiffe_id {
            None => {
                return Err(CertsError::Invalid(
                    "workload certificates need a SPIFFE ID".to_owned(),
                ));
            }
            Some(id)
                if id
                    .strip_prefix("spiffe://")
                    .is_some_and(|r| !r.contains('/')) =>
            {
                return Err(CertsError::InvalidSpiffeId(format!(
                    "{id:?}: a workload ID needs a path (e.g. /ns/NAME/sa/NAME)"
                )));
            }
            Some(_) => {}
        }
    }
    check_common_name(&spec.common_name)?;
    if spec.not_after <= spec.not_before {
        return Err(CertsError::Invalid(format!(
            "validity ends ({}) before it starts ({})",
            spec.not_after, spec.not_before
        )));
    }
    if spec.kind == Kind::Server && spec.dns_names.is_empty() && spec.ip_addrs.is_empty() {
        return Err(CertsError::Invalid(
            "server certificates need at least one DNS name or IP address".to_owned(),
        ));
    }
    for name in &spec.dns_names {
        check_dns_name(name)?;
    }
    for email in &spec.emails {
        let ok = email.is_ascii()
            && !email
                .chars()
                .any(|c| c.is_ascii_whitespace() || c.is_ascii_control())
            && email
                .split_once('@')
                .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty());
        if !ok {
            return Err(CertsError::Invalid(format!(
                "{email:?} is not an e-mail address"
            )));
        }
    }
    Ok(())
}

/// Rejects names a TLS client could never match, so the mistake surfaces at
/// issue time instead of as a handshake failure. Allows one leading `*.`.
fn check_dns_name(name: &str) -> Result<(), CertsError> {
    let bad = |why: &str| CertsError::Invalid(format!("DNS name {name:?} {why}"));
    let body = name.strip_prefix("*.").unwrap_or(name);
    if body.is_empty() || name.len() > 253 {
        return Err(bad("must be 1 to 253 characters"));
    }
    if body.parse::<IpAddr>().is_ok() {
        return Err(bad("is an IP address; pass it as an IP instead"));
    }
    for label in body.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(bad("has an empty or over-long label"));
        }
        if !label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(bad("may only contain letters, digits, '-', '_' and '.'"));
        }
    }
    Ok(())
}

/// File stems end up as `DIR/<stem>.pem`; keep them to one plain path
/// component and never let a leaf clobber the CA.
fn check_file_stem(name: &str) -> Result<(), CertsError> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if !ok {
        return Err(CertsError::Invalid(format!(
            "name {name:?} must be non-empty, must not start with '.', and may only contain letters, digits, '.', '-' and '_'"
        )));
    }
    if name == "ca" {
        return Err(CertsError::Invalid(
            "name \"ca\" is reserved for the CA's own files".to_owned(),
        ));
    }
    Ok(())
}

fn leaf_paths(dir: &Path, stem: &str) -> Option<(PathBuf, PathBuf)> {
    if stem.is_empty() || stem.contains('/') {
        return None;
    }
    Some((
        dir.join(format!("{stem}.pem")),
        dir.join(format!("{stem}.key")),
    ))
}

fn exists(path: &Path) -> Result<bool, CertsError> {
    path.try_exists().map_err(|e| CertsError::io(path, e))
}

/// Both halves present → true, neither → false, one → error naming the missing half.
fn pair_present(cert: &Path, key: &Path) -> Result<bool, CertsError> {
    match (exists(cert)?, exists(key)?) {
        (true, true) => Ok(true),
        (false, false) => Ok(false),
        (true, false) => Err(half_pair(cert, key)),
        (false, true) => Err(half_pair(key, cert)),
    }
}

fn half_pair(present: &Path, missing: &Path) -> CertsError {
    CertsError::Inconsistent {
        path: present.to_path_buf(),
        detail: format!(
            "exists but {} does not; restore it, delete both, or rerun with --force",
            missing.display()
        ),
    }
}

fn read_to_string(path: &Path) -> Result<String, CertsError> {
    fs::read_to_string(path).map_err(|e| CertsError::io(path, e))
}

fn load_authority(dir: &Path) -> Result<Authority, CertsError> {
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    for path in [&cert_path, &key_path] {
        if !exists(path)? {
            return Err(CertsError::NoCa {
                dir: dir.to_path_buf(),
                missing: path.clone(),
            });
        }
    }
    let cert_pem = read_to_string(&cert_path)?;
    let key_pem = read_to_string(&key_path)?;
    Authority::from_pem_labeled(
        &cert_pem,
        &key_pem,
        &cert_path.display().to_string(),
        &key_path.display().to_string(),
    )
}

/// Reads a CRL file and insists it was signed by `ca`.
fn read_crl_for(ca: &Authority, path: &Path) -> Result<(u64, Vec<Revoked>), CertsError> {
    let what = path.display().to_string();
    let pem = read_to_string(path)?;
    let der = CertificateRevocationListDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| CertsError::parse(what.as_str(), e))?;
    let (_, crl) =
        x509_parser::parse_x509_crl(&der).map_err(|e| CertsError::parse(what.as_str(), e))?;
    ca.check_signed_by_me(path, |spki| crl.verify_signature(spki).is_ok())?;
    read_crl(&pem).map_err(|e| match e {
        CertsError::Parse { detail, .. } => CertsError::Parse { what, detail },
        other => other,
    })
}

fn create_dir(dir: &Path) -> Result<(), CertsError> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|e| CertsError::io(dir, e))
}

fn write_file(path: &Path, contents: &[u8], mode: u32, force: bool) -> Result<(), CertsError> {
    if force {
        write_replace(path, contents, mode)
    } else {
        write_new(path, contents, mode)
    }
}

/// Creates `path`, failing with [`CertsError::Exists`] if it is already there
/// (checked atomically by the kernel, not by a racy exists() call).
fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), CertsError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => CertsError::Exists(path.to_path_buf()),
            _ => CertsError::io(path, e),
        })?;
    if let Err(e) = file.write_all(contents).and_then(|()| file.sync_all()) {
        // Do not leave a truncated key or cert that a rerun would "keep".
        let _ = fs::remove_file(path);
        return Err(CertsError::io(path, e));
    }
    Ok(())
}

/// Replaces `path` atomically: readers see the old or the new file, never a
/// partial one, and the new file gets `mode` even if the old one was looser.
fn write_replace(path: &Path, contents: &[u8], mode: u32) -> Result<(), CertsError> {
    let Some(file_name) = path.file_name() else {
        return Err(CertsError::Invalid(format!(
            "{} is not a file path",
            path.display()
        )));
    };
    let parent = path.parent().unwrap_or(Path::new(""));
    let mut nonce = [0u8; 8];
    aws_lc_rs::rand::fill(&mut nonce).map_err(|_| CertsError::Random)?;
    let tmp = parent.join(format!(
        ".{}.{}.tmp",
        file_name.to_string_lossy(),
        crate::hex::encode(&nonce)
    ));
    write_new(&tmp, contents, mode)?;
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(CertsError::io(path, e));
    }
    // Make the rename itself durable; failure here does not undo the write
    // and some filesystems refuse to fsync directories, so it is best effort.
    let dir = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use x509_parser::extensions::GeneralName;

    fn der_of(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).expect("cert pem")
    }

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).expect("metadata").permissions().mode() & 0o777
    }

    #[test]
    fn ca_has_ca_extensions() {
        let ca = Authority::generate("Test CA").expect("ca");
        let der = ca.cert_der().clone();
        let (_, x) = x509_parser::parse_x509_certificate(&der).expect("parse");
        let bc = x.basic_constraints().expect("bc").expect("present").value;
        assert!(bc.ca);
        assert_eq!(bc.path_len_constraint, Some(0));
        let ku = x.key_usage().expect("ku").expect("present").value;
        assert!(ku.key_cert_sign() && ku.crl_sign() && ku.digital_signature());
        assert_eq!(x.subject().to_string(), "CN=Test CA");
        x.verify_signature(None).expect("self-signed");
        let lifetime = x.validity().not_after.to_datetime() - x.validity().not_before.to_datetime();
        assert!(lifetime > time::Duration::days(3650));
        assert!(format!("{ca:?}").contains("elided"));
        assert!(!format!("{ca:?}").contains("PRIVATE"));
    }

    #[test]
    fn device_leaf_has_sans_eku_validity_and_chains() {
        let ca = Authority::generate("Test CA").expect("ca");
        let mut spec = LeafSpec::device("alice-laptop");
        spec.emails = vec!["alice@example.com".to_owned()];
        spec.spiffe_id = Some("spiffe://example.org/device/alice".to_owned());
        let issued = ca.issue(&spec).expect("issue");
        let der = der_of(&issued.cert_pem);
        let (_, x) = x509_parser::parse_x509_certificate(&der).expect("parse");

        assert_eq!(x.subject().to_string(), "CN=alice-laptop");
        let eku = x.extended_key_usage().expect("eku").expect("present").value;
        assert!(eku.client_auth && !eku.server_auth);
        let sans = &x
            .subject_alternative_name()
            .expect("san")
            .expect("present")
            .value
            .general_names;
        assert!(sans.contains(&GeneralName::RFC822Name("alice@example.com")));
        assert!(sans.contains(&GeneralName::URI("spiffe://example.org/device/alice")));
        assert_eq!(x.validity().not_before.to_datetime(), spec.not_before);
        assert_eq!(x.validity().not_after.to_datetime(), spec.not_after);
        let now = OffsetDateTime::now_utc();
        assert!(spec.not_before < now && now - spec.not_before < time::Duration::minutes(2));
        assert!(spec.not_after - now > time::Duration::days(364));
        let bc = x.basic_constraints().expect("bc").expect("present").value;
        assert!(!bc.ca);
        let ku = x.key_usage().expect("ku").expect("present").value;
        assert!(ku.digital_signature() && !ku.key_cert_sign());

        let ca_der = ca.cert_der().clone();
        let (_, cax) = x509_parser::parse_x509_certificate(&ca_der).expect("parse ca");
        assert_eq!(x.issuer().as_raw(), cax.subject().as_raw());
        x.verify_signature(Some(cax.public_key()))
            .expect("chains to CA");
        // Key in the PEM belongs to the certificate.
        let key = KeyPair::from_pem(&issued.key_pem).expect("key");
        assert_eq!(
            x.public_key().subject_public_key.data.as_ref(),
            key.der_bytes()
        );
        assert!(!format!("{issued:?}").contains("PRIVATE"));
    }

    #[test]
    fn server_and_workload_leaves() {
        let ca = Authority::generate("Test CA").expect("ca");
        let spec = LeafSpec::server(
            vec!["localhost".to_owned(), "*.vigil.test".to_owned()],
            vec![
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
            ],
        );
        assert_eq!(spec.common_name, "localhost");
        let issued = ca.issue(&spec).expect("issue");
        let der = der_of(&issued.cert_pem);
        let (_, x) = x509_parser::parse_x509_certificate(&der).expect("parse");
        let eku = x.extended_key_usage().expect("eku").expect("present").value;
        assert!(eku.server_auth && !eku.client_auth);
        let sans = &x
            .subject_alternative_name()
            .expect("san")
            .expect("present")
            .value
            .general_names;
        assert!(sans.contains(&GeneralName::DNSName("localhost")));
        assert!(sans.contains(&GeneralName::DNSName("*.vigil.test")));
        assert!(sans.contains(&GeneralName::IPAddress(&[127, 0, 0, 1])));
        assert!(sans.contains(&GeneralName::IPAddress(&Ipv6Addr::LOCALHOST.octets())));

        let spec = LeafSpec::workload(DEMO_WORKLOAD_ID).valid_for(Duration::from_secs(3600));
        assert_eq!(spec.common_name, "client");
        let issued = ca.issue(&spec).expect("issue");
        let der = der_of(&issued.cert_pem);
        let (_, x) = x509_parser::parse_x509_certificate(&der).expect("parse");
        let eku = x.extended_key_usage().expect("eku").expect("present").value;
        assert!(eku.client_auth);
        let sans = &x
            .subject_alternative_name()
            .expect("san")
            .expect("present")
            .value
            .general_names;
        assert_eq!(sans, &vec![GeneralName::URI(DEMO_WORKLOAD_ID)]);
        let lifetime = x.validity().not_after.to_datetime() - x.validity().not_before.to_datetime();
        assert_eq!(lifetime, time::Duration::minutes(61));
    }

    #[test]
    fn expired_and_invalid_specs() {
        let ca = Authority::generate("Test CA").expect("ca");
        let past = OffsetDateTime::now_utc() - time::Duration::days(10);
        let spec = LeafSpec::device("old").validity(past - time::Duration::days(1), past);
        let issued = ca.issue(&spec).expect("expired certs can be issued");
        let der = der_of(&issued.cert_pem);
        let (_, x) = x509_parser::parse_x509_certificate(&der).expect("parse");
        assert!(!x.validity().is_valid());

        let inverted = LeafSpec::device("x").validity(past, past - time::Duration::days(1));
        assert!(matches!(ca.issue(&inverted), Err(CertsError::Invalid(_))));
        let no_sans = LeafSpec::server(Vec::new(), Vec::new());
        assert!(matches!(ca.issue(&no_sans), Err(CertsError::Invalid(_))));
        let bad_dns = LeafSpec::server(vec!["bad name".to_owned()], Vec::new());
        assert!(matches!(ca.issue(&bad_dns), Err(CertsError::Invalid(_))));
        assert!(matches!(
            ca.issue(&LeafSpec::workload("spiffe://vigil.test")),
            Err(CertsError::InvalidSpiffeId(_))
        ));
        assert!(matches!(
            ca.issue(&LeafSpec::workload("spiffe://Vigil.test/x")),
            Err(CertsError::InvalidSpiffeId(_))
        ));
        let mut no_id = LeafSpec::workload("spiffe://vigil.test/a");
        no_id.spiffe_id = None;
        assert!(matches!(ca.issue(&no_id), Err(CertsError::Invalid(_))));
        assert!(matches!(
            ca.issue(&LeafSpec::device("")),
            Err(CertsError::Invalid(_))
        ));
        // Huge TTLs saturate rather than panic, and are refused: the leaf would outlive its CA.
        let far = LeafSpec::device("far").valid_for(Duration::from_secs(u64::MAX));
        assert_eq!(far.not_after.year(), 9999);
        let err = ca.issue(&far).expect_err("outlives the CA");
        assert!(matches!(err, CertsError::OutlivesCa { .. }), "{err}");
        assert!(err.to_string().contains("9999-12-31T23:59:59Z"), "{err}");
    }

    /// A CA like [`Authority::generate`]'s, but ending at `not_after`, written to `dir`.
    fn write_ca_ending(dir: &Path, not_after: OffsetDateTime) -> Authority {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "Short CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = now() - time::Duration::days(400);
        params.not_after = not_after;
        let cert = params.self_signed(&key).expect("ca");
        fs::create_dir_all(dir).expect("mkdir");
        fs::write(dir.join(CA_CERT_FILE), cert.pem()).expect("write");
        fs::write(dir.join(CA_KEY_FILE), key.serialize_pem()).expect("write");
        load_authority(dir).expect("load")
    }

    fn not_after_of(path: &Path) -> OffsetDateTime {
        let der = der_of(&read_to_string(path).expect("read"));
        let (_, x) = x509_parser::parse_x509_certificate(&der).expect("parse");
        x.validity().not_after.to_datetime()
    }

    #[test]
    fn leaves_never_outlive_their_ca() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        let ca_end = now() + time::Duration::days(30) - time::Duration::hours(1);
        let ca = write_ca_ending(dir, ca_end);
        assert_eq!(ca.not_after(), ca_end);

        // init's year-long leaves end with the CA instead.
        let report = init(dir, false).expect("init");
        for stem in ["server", "device", "workload"] {
            assert_eq!(
                not_after_of(&dir.join(format!("{stem}.pem"))),
                ca_end,
                "{stem}"
            );
        }
        assert_eq!(report.certificates.len(), 4);

        // issue: the default lifetime gives way, one asked for is refused with the longest.
        let opts = IssueOptions {
            kind: Kind::Device,
            name: "bob".to_owned(),
            spiffe_id: None,
            dns: Vec::new(),
            ips: Vec::new(),
            emails: Vec::new(),
            ttl: None,
            force: false,
        };
        let issued = issue_to_dir(dir, &opts).expect("default ttl");
        assert!(issued.capped);
        assert_eq!(issued.summary.not_after, ca_end);
        let long = IssueOptions {
            name: "carol".to_owned(),
            ttl: Some(Duration::from_secs(60 * 86_400)),
            ..opts.clone()
        };
        let err = issue_to_dir(dir, &long).expect_err("outlives").to_string();
        assert!(err.contains("--ttl 60d"), "{err}");
        assert!(err.contains(&rfc3339(ca_end)), "{err}");
        assert!(err.contains("longest --ttl still possible is 29d"), "{err}");
        assert!(!dir.join("carol.pem").exists());
        let fits = IssueOptions {
            ttl: Some(Duration::from_secs(29 * 86_400)),
            ..long.clone()
        };
        assert!(!issue_to_dir(dir, &fits).expect("fits").capped);

        // A CA that has run out issues nothing, default lifetime or not.
        let tmp = tempfile::tempdir().expect("tempdir");
        write_ca_ending(tmp.path(), now() - time::Duration::days(1));
        let err = init(tmp.path(), false).expect_err("expired CA").to_string();
        assert!(err.contains("the CA has run out"), "{err}");
        let err = issue_to_dir(tmp.path(), &opts)
            .expect_err("expired CA")
            .to_string();
        assert!(err.contains("the CA has run out"), "{err}");
    }

    #[test]
    fn too_short_lifetimes_are_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        init(dir, false).expect("init");
        let opts = IssueOptions {
            kind: Kind::Device,
            name: "bob".to_owned(),
            spiffe_id: None,
            dns: Vec::new(),
            ips: Vec::new(),
            emails: Vec::new(),
            ttl: Some(Duration::ZERO),
            force: false,
        };
        for (ttl, text) in [(0, "--ttl 0s is too short"), (59, "--ttl 59s is too short")] {
            let opts = IssueOptions {
                ttl: Some(Duration::from_secs(ttl)),
                ..opts.clone()
            };
            let err = issue_to_dir(dir, &opts).expect_err("too short").to_string();
            assert!(err.contains(text) && err.contains("at least 1m"), "{err}");
        }
        let minute = IssueOptions {
            ttl: Some(MIN_TTL),
            ..opts
        };
        issue_to_dir(dir, &minute).expect("a minute is enough");

        let device =
            serial_of(&read_to_string(&dir.join("device.pem")).expect("read")).expect("serial");
        for secs in [0, 1, 3599] {
            let err = revoke_in_dir(dir, &device, Duration::from_secs(secs))
                .expect_err("too soon")
                .to_string();
            assert!(
                err.contains("is too soon") && err.contains("at least 1h"),
                "{err}"
            );
            assert!(err.contains("enforce_crl_expiry"), "{err}");
        }
        revoke_in_dir(dir, &device, MIN_CRL_VALIDITY).expect("an hour is enough");
    }

    #[test]
    fn summaries_carry_what_inventories_take() {
        let ca = Authority::generate("Test CA").expect("ca");
        let issued = ca.issue(&LeafSpec::device("d")).expect("issue");
        let summary = CertSummary::of_pem(&issued.cert_pem, "d.pem").expect("summary");
        let der = der_of(&issued.cert_pem);
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der.as_ref());
        assert_eq!(summary.fingerprint, crate::hex::encode(digest.as_ref()));
        assert_eq!(summary.fingerprint.len(), 64);
        assert_eq!(summary.serial, crate::hex::encode(&issued.serial));
        let line = summary.to_string();
        assert!(line.starts_with(&format!("sha256={} not_after=", summary.fingerprint)));
        assert!(line.ends_with(&format!("Z serial={}", summary.serial)));
        assert!(CertSummary::of_pem("nope", "x.pem").is_err());

        let t = OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("time");
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20Z");
        let east = t.to_offset(time::UtcOffset::from_hms(2, 0, 0).expect("offset"));
        assert_eq!(rfc3339(east), "2023-11-14T22:13:20Z");
        assert_eq!(
            rfc3339(OffsetDateTime::UNIX_EPOCH - time::Duration::days(1)),
            "1969-12-31T00:00:00Z"
        );
        for (secs, floor, exact) in [
            (60, "1m", "1m"),
            (3_599, "59m", "3599s"),
            (7_200, "2h", "2h"),
            (90_000, "1d", "25h"),
            (631_152_000, "7305d", "7305d"),
        ] {
            let d = Duration::from_secs(secs);
            assert_eq!(
                (ttl_text(d).as_str(), exact_ttl_text(d).as_str()),
                (floor, exact),
                "{secs}"
            );
        }
        assert_eq!(exact_ttl_text(Duration::ZERO), "0s");
    }

    #[test]
    fn serial_round_trips() {
        let ca = Authority::generate("Test CA").expect("ca");
        let mut seen = Vec::new();
        for _ in 0..20 {
            let issued = ca.issue(&LeafSpec::device("d")).expect("issue");
            assert_eq!(issued.serial.len(), SERIAL_LEN);
            assert!(issued.serial[0] != 0 && issued.serial[0] < 0x80);
            assert_eq!(serial_of(&issued.cert_pem).expect("serial"), issued.serial);
            assert_eq!(
                crate::hex::parse_serial(&crate::hex::encode(&issued.serial)).expect("hex"),
                issued.serial
            );
            assert!(!seen.contains(&issued.serial));
            seen.push(issued.serial);
        }
        assert!(serial_of("not a pem").is_err());
    }

    #[test]
    fn serial_of_strips_der_padding() {
        // A foreign certificate whose serial has the top bit set is DER-encoded
        // with a 0x00 pad; the canonical form drops it.
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params.serial_number = Some(SerialNumber::from_slice(&[0x00, 0x00, 0x9a, 0x01]));
        let cert = params.self_signed(&key).expect("cert");
        assert_eq!(serial_of(&cert.pem()).expect("serial"), vec![0x9a, 0x01]);
    }

    #[test]
    fn canonical_serials() {
        assert_eq!(canonical_serial(&[0, 0, 1]), vec![1]);
        assert_eq!(canonical_serial(&[0, 0]), vec![0]);
    }

    #[test]
    fn crl_lists_revoked_serials() {
        let ca = Authority::generate("Test CA").expect("ca");
        let a = ca.issue(&LeafSpec::device("a")).expect("a");
        let b = ca.issue(&LeafSpec::device("b")).expect("b");
        let at = now() - time::Duration::hours(1);
        let revoked = vec![
            Revoked {
                serial: a.serial.clone(),
                at,
            },
            Revoked {
                serial: b.serial.clone(),
                at,
            },
        ];
        let next = now() + time::Duration::days(7);
        let pem = ca.crl_pem(&revoked, 42, next).expect("crl");
        assert!(pem.starts_with("-----BEGIN X509 CRL-----"));
        let (number, entries) = read_crl(&pem).expect("read");
        assert_eq!(number, 42);
        assert_eq!(entries, revoked);

        let der = CertificateRevocationListDer::from_pem_slice(pem.as_bytes()).expect("der");
        let (_, crl) = x509_parser::parse_x509_crl(&der).expect("parse");
        let ca_der = ca.cert_der().clone();
        let (_, cax) = x509_parser::parse_x509_certificate(&ca_der).expect("ca");
        crl.verify_signature(cax.public_key())
            .expect("signed by CA");
        assert_eq!(crl.issuer().as_raw(), cax.subject().as_raw());
        assert_eq!(crl.next_update().map(|t| t.to_datetime()), Some(next));

        let (number, entries) = read_crl(&ca.crl_pem(&[], 1, next).expect("empty")).expect("read");
        assert_eq!((number, entries.len()), (1, 0));
        // Stale CRLs are still well formed.
        let stale = ca
            .crl_pem(&[], u64::MAX, now() - time::Duration::days(1))
            .expect("stale");
        assert_eq!(read_crl(&stale).expect("read").0, u64::MAX);
        assert!(read_crl("garbage").is_err());
    }

    #[test]
    fn from_pem_round_trip_issues_chaining_leaf() {
        let ca = Authority::generate("Round Trip CA").expect("ca");
        let again = Authority::from_pem(ca.cert_pem(), &ca.key_pem()).expect("reload");
        assert_eq!(again.cert_pem(), ca.cert_pem());
        assert_eq!(again.key_pem(), ca.key_pem());
        assert_eq!(again.key_id, ca.key_id);

        let issued = again.issue(&LeafSpec::device("d")).expect("issue");
        let der = der_of(&issued.cert_pem);
        let (_, leaf) = x509_parser::parse_x509_certificate(&der).expect("leaf");
        let ca_der = ca.cert_der().clone();
        let (_, cax) = x509_parser::parse_x509_certificate(&ca_der).expect("ca");
        assert_eq!(leaf.issuer().as_raw(), cax.subject().as_raw());
        leaf.verify_signature(Some(cax.public_key()))
            .expect("chains");

        // Wrong key, non-CA cert and garbage are rejected.
        let other = Authority::generate("Other").expect("other");
        assert!(matches!(
            Authority::from_pem(ca.cert_pem(), &other.key_pem()),
            Err(CertsError::Parse { .. })
        ));
        assert!(matches!(
            Authority::from_pem(&issued.cert_pem, &issued.key_pem),
            Err(CertsError::Parse { .. })
        ));
        assert!(Authority::from_pem("nope", &ca.key_pem()).is_err());
        assert!(Authority::from_pem(ca.cert_pem(), "nope").is_err());
    }

    #[test]
    fn init_is_idempotent_and_keys_are_private() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("pki");
        let first = init(&dir, false).expect("init");
        assert_eq!(first.created.len(), 9);
        assert!(first.kept.is_empty());
        assert_eq!(mode_of(&dir), DIR_MODE);
        for path in &first.created {
            let mode = mode_of(path);
            if path.extension().is_some_and(|e| e == "key") {
                assert_eq!(mode, 0o600, "{}", path.display());
            } else {
                assert_eq!(mode & 0o077 & !0o044, 0, "{}", path.display());
            }
        }
        let ca = load_authority(&dir).expect("ca");
        let workload = read_to_string(&dir.join("workload.pem")).expect("workload");
        let der = der_of(&workload);
        let (_, x) = x509_parser::parse_x509_certificate(&der).expect("parse");
        let sans = &x
            .subject_alternative_name()
            .expect("san")
            .expect("present")
            .value
            .general_names;
        assert_eq!(sans, &vec![GeneralName::URI(DEMO_WORKLOAD_ID)]);
        let device = read_to_string(&dir.join("device.pem")).expect("device");
        let der = der_of(&device);
        let (_, x) = x509_parser::parse_x509_certificate(&der).expect("parse");
        assert_eq!(x.subject().to_string(), format!("CN={DEMO_DEVICE_NAME}"));
        let (number, entries) = read_crl_for(&ca, &dir.join(CRL_FILE)).expect("crl");
        assert_eq!((number, entries.len()), (1, 0));

        let before = fs::read(dir.join("server.pem")).expect("read");
        let second = init(&dir, false).expect("rerun");
        assert!(second.created.is_empty());
        assert_eq!(second.kept.len(), 9);
        assert_eq!(fs::read(dir.join("server.pem")).expect("read"), before);

        fs::remove_file(dir.join("device.pem")).expect("rm");
        fs::remove_file(dir.join("device.key")).expect("rm");
        let third = init(&dir, false).expect("fill gaps");
        assert_eq!(
            third.created,
            vec![dir.join("device.pem"), dir.join("device.key")]
        );
        assert_eq!(mode_of(&dir.join("device.key")), 0o600);

        // Half a pair is reported, not papered over.
        fs::remove_file(dir.join("device.key")).expect("rm");
        assert!(matches!(
            init(&dir, false),
            Err(CertsError::Inconsistent { .. })
        ));

        // Loosen a key's mode; --force regenerates everything with a new CA
        // and tightens it again.
        fs::set_permissions(dir.join("server.key"), fs::Permissions::from_mode(0o644))
            .expect("chmod");
        let old_ca = read_to_string(&dir.join(CA_CERT_FILE)).expect("ca");
        let forced = init(&dir, true).expect("force");
        assert_eq!(forced.created.len(), 9);
        assert_ne!(read_to_string(&dir.join(CA_CERT_FILE)).expect("ca"), old_ca);
        assert_eq!(mode_of(&dir.join("server.key")), 0o600);
        assert!(init(&dir, false).expect("rerun").created.is_empty());
        let leftovers: Vec<_> = fs::read_dir(&dir)
            .expect("ls")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn forced_init_describes_the_ca_it_replaces() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        assert_eq!(init(dir, true).expect("first").replaced_ca, None);
        let old = read_to_string(&dir.join(CA_CERT_FILE)).expect("ca");
        let old = CertSummary::of_pem(&old, "ca.pem").expect("summary");
        let opts = IssueOptions {
            kind: Kind::Device,
            name: "bob".to_owned(),
            spiffe_id: None,
            dns: Vec::new(),
            ips: Vec::new(),
            emails: Vec::new(),
            ttl: None,
            force: false,
        };
        issue_to_dir(dir, &opts).expect("bob");
        // Not certificates, or not the old CA's: not listed.
        fs::write(dir.join("notes.pem"), "not a certificate").expect("write");
        let other = Authority::generate("Other").expect("other");
        fs::write(dir.join("other.pem"), other.cert_pem()).expect("write");
        let report = init(dir, true).expect("force");
        let replaced = report.replaced_ca.expect("replaced");
        assert_eq!(replaced.old, Some(old));
        assert_eq!(replaced.orphans, vec![dir.join("bob.pem")]);
        assert!(init(dir, false).expect("rerun").replaced_ca.is_none());

        // An unreadable old CA: every certificate left there is listed.
        fs::write(dir.join(CA_CERT_FILE), "garbage").expect("write");
        let replaced = init(dir, true)
            .expect("force")
            .replaced_ca
            .expect("replaced");
        assert_eq!(replaced.old, None);
        assert_eq!(
            replaced.orphans,
            vec![dir.join("bob.pem"), dir.join("other.pem")]
        );
    }

    #[test]
    fn init_refuses_leaves_from_another_ca() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        init(dir, false).expect("init");
        // Swap in a device cert from a different CA.
        let other = Authority::generate("Other").expect("other");
        let foreign = other.issue(&LeafSpec::device("x")).expect("issue");
        write_replace(
            &dir.join("device.pem"),
            foreign.cert_pem.as_bytes(),
            CERT_MODE,
        )
        .expect("write");
        assert!(matches!(
            init(dir, false),
            Err(CertsError::Inconsistent { .. })
        ));

        // No CA but leftovers: refuse to mint a CA that would orphan them.
        let tmp2 = tempfile::tempdir().expect("tempdir");
        fs::write(tmp2.path().join("server.pem"), "x").expect("write");
        assert!(matches!(
            init(tmp2.path(), false),
            Err(CertsError::Inconsistent { .. })
        ));
        assert!(!tmp2.path().join(CA_CERT_FILE).exists());
    }

    #[test]
    fn issue_to_dir_writes_pair() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        let mut opts = IssueOptions {
            kind: Kind::Workload,
            name: "billing".to_owned(),
            spiffe_id: Some("spiffe://vigil.test/ns/prod/sa/billing".to_owned()),
            dns: Vec::new(),
            ips: Vec::new(),
            emails: Vec::new(),
            ttl: Some(Duration::from_secs(600)),
            force: false,
        };
        assert!(matches!(
            issue_to_dir(dir, &opts),
            Err(CertsError::NoCa { .. })
        ));
        init(dir, false).expect("init");
        let issued = issue_to_dir(dir, &opts).expect("issue");
        let (cert, key, serial) = (issued.cert, issued.key, issued.summary.serial);
        assert!(!issued.capped);
        assert_eq!(cert, dir.join("billing.pem"));
        assert_eq!(key, dir.join("billing.key"));
        assert_eq!(mode_of(&key), 0o600);
        let pem = read_to_string(&cert).expect("read");
        assert_eq!(
            crate::hex::encode(&serial_of(&pem).expect("serial")),
            serial
        );
        let der = der_of(&pem);
        let (_, x) = x509_parser::parse_x509_certificate(&der).expect("parse");
        assert_eq!(x.subject().to_string(), "CN=billing");
        let lifetime = x.validity().not_after.to_datetime() - x.validity().not_before.to_datetime();
        assert_eq!(lifetime, time::Duration::minutes(11));

        assert!(matches!(
            issue_to_dir(dir, &opts),
            Err(CertsError::Exists(_))
        ));
        opts.force = true;
        let again = issue_to_dir(dir, &opts).expect("force");
        assert_ne!(serial, again.summary.serial);

        for name in ["", "../x", "a/b", ".hidden", "ca", "sp ace"] {
            let bad = IssueOptions {
                name: name.to_owned(),
                ..opts.clone()
            };
            assert!(
                matches!(issue_to_dir(dir, &bad), Err(CertsError::Invalid(_))),
                "{name:?}"
            );
        }
        let missing_id = IssueOptions {
            spiffe_id: None,
            ..opts.clone()
        };
        assert!(matches!(
            issue_to_dir(dir, &missing_id),
            Err(CertsError::Invalid(_))
        ));
        let server = IssueOptions {
            kind: Kind::Server,
            name: "api".to_owned(),
            spiffe_id: None,
            dns: vec!["api.vigil.test".to_owned()],
            ips: vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))],
            ..opts.clone()
        };
        issue_to_dir(dir, &server).expect("server");
        let device = IssueOptions {
            kind: Kind::Device,
            name: "bob".to_owned(),
            spiffe_id: None,
            emails: vec!["bob@example.com".to_owned()],
            ttl: None,
            ..opts.clone()
        };
        issue_to_dir(dir, &device).expect("device");
    }

    #[test]
    fn revoke_increments_number_and_is_idempotent() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        assert!(matches!(
            revoke_in_dir(dir, &[1], Duration::from_secs(3600)),
            Err(CertsError::NoCa { .. })
        ));
        init(dir, false).expect("init");
        let device =
            serial_of(&read_to_string(&dir.join("device.pem")).expect("read")).expect("serial");
        let workload =
            serial_of(&read_to_string(&dir.join("workload.pem")).expect("read")).expect("serial");
        let day = Duration::from_secs(86_400);

        let (path, count) = revoke_in_dir(dir, &device, day).expect("revoke");
        assert_eq!((path.clone(), count), (dir.join(CRL_FILE), 1));
        let ca = load_authority(dir).expect("ca");
        let (number, entries) = read_crl_for(&ca, &path).expect("crl");
        assert_eq!(number, 2);
        assert_eq!(entries[0].serial, device);

        // Same serial again (with DER-style padding): still one entry, new number.
        let mut padded = vec![0];
        padded.extend_from_slice(&device);
        let (_, count) = revoke_in_dir(dir, &padded, day).expect("again");
        assert_eq!(count, 1);
        let (number, entries) = read_crl_for(&ca, &path).expect("crl");
        assert_eq!(number, 3);
        assert_eq!(entries.len(), 1);

        let (_, count) = revoke_in_dir(dir, &workload, day).expect("second serial");
        assert_eq!(count, 2);
        let (number, entries) = read_crl(&read_to_string(&path).expect("read")).expect("crl");
        assert_eq!(number, 4);
        assert_eq!(entries[0].serial, device);
        assert_eq!(entries[1].serial, workload);
        assert_eq!(mode_of(&path) & 0o022, 0);

        // Without a CRL the numbering starts at 1.
        fs::remove_file(&path).expect("rm");
        revoke_in_dir(dir, &device, day).expect("fresh");
        assert_eq!(
            read_crl(&read_to_string(&path).expect("read"))
                .expect("crl")
                .0,
            1
        );

        // A CRL from another CA is not merged.
        let other = Authority::generate("Other").expect("other");
        let foreign = other
            .crl_pem(&[], 9, now() + time::Duration::days(1))
            .expect("crl");
        fs::write(&path, foreign).expect("write");
        assert!(matches!(
            revoke_in_dir(dir, &device, day),
            Err(CertsError::Inconsistent { .. })
        ));
        assert!(matches!(
            revoke_in_dir(dir, &[], day),
            Err(CertsError::Invalid(_))
        ));
        assert!(matches!(
            revoke_in_dir(dir, &[1; 21], day),
            Err(CertsError::Invalid(_))
        ));
    }

    #[test]
    fn errors_name_the_file() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        init(dir, false).expect("init");
        fs::write(
            dir.join(CA_KEY_FILE),
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .expect("write");
        let err = load_authority(dir).expect_err("bad key").to_string();
        assert!(err.contains("ca.key"), "{err}");
        let err = CertsError::Exists(dir.join("x.pem")).to_string();
        assert!(err.contains("x.pem") && err.contains("--force"), "{err}");
    }
}
