//! Who is on the other end of a connection, read once from the verified client certificate.

use aws_lc_rs::digest;
use x509_parser::prelude::*;

/// Identity facts of a verified client certificate. Computed once per connection, shared by
/// every request on it. Its JSON form (the `certificate` of a facts document) writes the
/// serial and the fingerprint in lower-case hex.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(into = "CertificateJson", try_from = "CertificateJson")]
pub struct PeerCert {
    /// Subject distinguished name, RFC 4514 style.
    pub subject: String,
    pub common_name: Option<String>,
    pub issuer: String,
    pub dns: Vec<String>,
    pub emails: Vec<String>,
    pub uris: Vec<String>,
    /// Set only when the certificate carries exactly one URI SAN that is a well-formed SPIFFE ID.
    pub spiffe_id: Option<String>,
    /// Serial number, big-endian bytes.
    pub serial: Vec<u8>,
    /// SHA-256 over the DER certificate.
    pub fingerprint: [u8; 32],
    /// `fingerprint` in lower-case hex, as used in headers, logs and rules.
    pub fingerprint_hex: String,
    /// Validity bounds, Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// The certificate as a decision line's facts show it, written once for every line of
    /// the connection (`policy::facts`).
    pub written: Written,
}

/// JSON written once and reused; not part of the value (equal whatever it holds, and a clone
/// starts empty, so a changed copy never shows the original's).
#[derive(Debug, Default)]
pub struct Written(std::sync::OnceLock<Box<serde_json::value::RawValue>>);

impl Clone for Written {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl Written {
    /// What was written, writing it with `write` the first time.
    pub fn get_or_write(
        &self,
        write: impl FnOnce() -> serde_json::Result<Box<serde_json::value::RawValue>>,
    ) -> Option<&serde_json::value::RawValue> {
        if self.0.get().is_none()
            && let Ok(raw) = write()
        {
            let _ = self.0.set(raw);
        }
        self.0.get().map(|raw| &**raw)
    }
}

impl PartialEq for Written {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Written {}

impl PeerCert {
    /// Reads the leaf the TLS layer already verified. Fails only on a certificate x509-parser
    /// cannot read, which rustls would not have accepted in the first place.
    pub fn from_der(der: &[u8]) -> Result<Self, String> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        let mut dns = Vec::new();
        let mut emails = Vec::new();
        let mut uris = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(d) => dns.push((*d).to_owned()),
                    GeneralName::RFC822Name(e) => emails.push((*e).to_owned()),
                    GeneralName::URI(u) => uris.push((*u).to_owned()),
                    _ => {}
                }
            }
        }
        let spiffe: Vec<&String> = uris
            .iter()
            .filter(|u| u.to_ascii_lowercase().starts_with("spiffe://"))
            .collect();
        let spiffe_id = match spiffe.as_slice() {
            [one] if crate::tls::spiffe::validate(one).is_ok() => Some((*one).clone()),
            _ => None,
        };
        let fingerprint: [u8; 32] = digest::digest(&digest::SHA256, der)
            .as_ref()
            .try_into()
            .map_err(|_| "SHA-256 digest is not 32 bytes".to_owned())?;
        Ok(Self {
            subject: cert.subject().to_string(),
            common_name,
            issuer: cert.issuer().to_string(),
            dns,
            emails,
            uris,
            spiffe_id,
            serial: cert.raw_serial().to_vec(),
            fingerprint_hex: crate::hex::encode(&fingerprint),
            fingerprint,
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            written: Written::default(),
        })
    }

    /// Serial number in lower-case hex.
    pub fn serial_hex(&self) -> String {
        crate::hex::encode(&self.serial)
    }

    /// Every SAN, for rules that match any of them.
    pub fn sans(&self) -> impl Iterator<Item = &str> {
        self.dns
            .iter()
            .chain(&self.emails)
            .chain(&self.uris)
            .map(String::as_str)
    }
}

/// [`PeerCert`] as JSON: what a facts document says of the client certificate.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CertificateJson {
    subject: String,
    #[serde(default)]
    common_name: Option<String>,
    issuer: String,
    #[serde(default)]
    dns: Vec<String>,
    #[serde(default)]
    emails: Vec<String>,
    #[serde(default)]
    uris: Vec<String>,
    #[serde(default)]
    spiffe_id: Option<String>,
    /// Lower-case hex, big-endian.
    serial: String,
    /// SHA-256 of the DER certificate, 64 hex digits.
    fingerprint: String,
    not_before: i64,
    not_after: i64,
}

impl From<PeerCert> for CertificateJson {
    fn from(p: PeerCert) -> Self {
        Self {
            serial: p.serial_hex(),
            subject: p.subject,
            common_name: p.common_name,
            issuer: p.issuer,
            dns: p.dns,
            emails: p.emails,
            uris: p.uris,
            spiffe_id: p.spiffe_id,
            fingerprint: p.fingerprint_hex,
            not_before: p.not_before,
            not_after: p.not_after,
        }
    }
}

impl TryFrom<CertificateJson> for PeerCert {
    type Error = String;

    fn try_from(c: CertificateJson) -> Result<Self, String> {
        let fingerprint = sha256_hex(&c.fingerprint).ok_or(
            "fingerprint must be 64 hex digits (SHA-256), optionally in colon-separated pairs",
        )?;
        if let Some(id) = &c.spiffe_id {
            crate::tls::spiffe::validate(id).map_err(|why| format!("spiffe_id {why}"))?;
        }
        Ok(Self {
            serial: crate::hex::parse_serial(&c.serial)?,
            fingerprint_hex: crate::hex::encode(&fingerprint),
            fingerprint,
            subject: c.subject,
            common_name: c.common_name,
            issuer: c.issuer,
            dns: c.dns,
            emails: c.emails,
            uris: c.uris,
            spiffe_id: c.spiffe_id,
            not_before: c.not_before,
            not_after: c.not_after,
            written: Written::default(),
        })
    }
}

/// A SHA-256 fingerprint as written in documents: 64 hex digits, or 32 colon-separated pairs.
fn sha256_hex(text: &str) -> Option<[u8; 32]> {
    let digits: String = if text.contains(':') {
        let pairs: Vec<&str> = text.split(':').collect();
        if pairs.len() != 32 || pairs.iter().any(|p| p.len() != 2) {
            return None;
        }
        pairs.concat()
    } else {
        text.to_owned()
    };
    if digits.len() != 64 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(digits.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}
