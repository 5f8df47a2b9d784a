//! Certificate revocation lists, verified against the CA that issued them when they are loaded.
//!
//! rustls (webpki) checks a CRL's signature only when a handshake needs it. A CRL that does
//! not verify (a corrupted file, a CRL from another CA that happens to carry the same name)
//! would then be accepted by `vigil check` and by a reload, and make every handshake of that
//! CA's clients fail. So every CRL is verified here, with the same signature algorithms the
//! handshake uses, and a bad one is a configuration error naming its file: at start-up Vigil
//! refuses to start, and a reload keeps the last good snapshot serving.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use x509_parser::asn1_rs::{Any, FromDer, Tag};
use x509_parser::certificate::X509Certificate;
use x509_parser::oid_registry::OID_X509_EXT_ISSUER_DISTRIBUTION_POINT;
use x509_parser::revocation_list::CertificateRevocationList;

/// How far in the future a CRL's `thisUpdate` may lie: clocks of the machine that signed it and
/// of this one disagree a little. Beyond this the CRL was signed with a wrong clock (or is a
/// forgery made to outlive its issuer's next one).
pub const CRL_CLOCK_SKEW_SECS: u64 = 300;

/// The CRLs of a configuration, each verified against the CA certificate that issued it as it
/// is added.
pub struct Crls {
    issuers: Vec<CertificateDer<'static>>,
    crls: Vec<CertificateRevocationListDer<'static>>,
    /// What each CRL speaks for (issuer name and issuing distribution point) and where it came
    /// from: for one scope the handshake consults only the first CRL listed, so a second one
    /// would be ignored silently, revocations and all.
    scopes: Vec<(Scope, PathBuf)>,
    now: UnixTime,
}

impl Crls {
    /// `issuers`: the CA certificates a CRL may come from (the client CA bundles).
    pub fn new(issuers: Vec<CertificateDer<'static>>) -> Self {
        Self::at(issuers, UnixTime::now())
    }

    /// As [`Crls::new`], judging `thisUpdate` against `now`.
    pub fn at(issuers: Vec<CertificateDer<'static>>, now: UnixTime) -> Self {
        Self {
            issuers,
            crls: Vec::new(),
            scopes: Vec::new(),
            now,
        }
    }

    /// Reads every CRL in the file (PEM, or DER when it is not PEM) and verifies each. Errors
    /// name the file and are phrased for the operator.
    pub fn read(&mut self, path: &Path) -> Result<(), String> {
        let found = read_file(path)?;
        let mut scopes = Vec::with_capacity(found.len());
        for crl in &found {
            let scope = verify(crl.as_ref(), &self.issuers, self.now)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let earlier = self
                .scopes
                .iter()
                .chain(scopes.iter())
                .find(|(s, _)| *s == scope);
            if let Some((_, other)) = earlier {
                return Err(format!(
                    "{}: {} already has a CRL in {}; only the first one listed would be \
                     consulted: list one current CRL per CA",
                    path.display(),
                    scope.issuer_text,
                    other.display()
                ));
            }
            scopes.push((scope, path.to_path_buf()));
        }
        self.crls.extend(found);
        self.scopes.extend(scopes);
        Ok(())
    }

    /// The CRLs read so far, in order.
    pub fn as_slice(&self) -> &[CertificateRevocationListDer<'static>] {
        &self.crls
    }

    pub fn into_vec(self) -> Vec<CertificateRevocationListDer<'static>> {
        self.crls
    }
}

/// The CRLs of a PEM file (every `X509 CRL` block), or the file as one DER CRL.
fn read_file(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let bytes = std::fs::read(path)
        .map_err(|e| format!("{}: {}", path.display(), crate::error::file_error(&e)))?;
    let pem: Result<Vec<_>, _> = CertificateRevocationListDer::pem_slice_iter(&bytes).collect();
    Ok(match pem {
        Ok(list) if !list.is_empty() => list,
        _ => vec![CertificateRevocationListDer::from(bytes)],
    })
}

/// What a CRL speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// The issuer's name, DER.
    issuer: Vec<u8>,
    /// The issuing distribution point extension's value, DER, when there is one.
    distribution_point: Option<Vec<u8>>,
    /// The issuer's name for messages.
    issuer_text: String,
}

/// Verifies one DER CRL: it parses the way the handshake will parse it, was issued by a
/// certificate in `issuers` (same name, and signed with that certificate's key, using one of the
/// signature algorithms the handshake accepts), that certificate may sign CRLs (when it has a
/// key usage extension it asserts cRLSign), and its `thisUpdate` is not in the future by more
/// than [`CRL_CLOCK_SKEW_SECS`].
///
/// A `nextUpdate` in the past is not an error here: with `[tls] enforce_crl_expiry` the
/// handshake refuses every client of that CA (`expired_crl`, fail closed), otherwise the CRL
/// keeps applying. Refusing it at load would keep an older CRL, with fewer revocations, in force.
pub fn verify(der: &[u8], issuers: &[CertificateDer<'_>], now: UnixTime) -> Result<Scope, String> {
    let crl = match CertificateRevocationList::from_der(der) {
        Ok(([], crl)) => crl,
        Ok(_) => return Err("not a valid CRL: trailing data after the CRL".into()),
        Err(e) => return Err(format!("not a valid CRL: {e}")),
    };
    let issuer_text = crl.issuer().to_string();
    let this_update = crl.last_update().timestamp();
    let now_secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    let skew = CRL_CLOCK_SKEW_SECS as i64;
    if this_update > now_secs.saturating_add(skew) {
        return Err(format!(
            "CRL of {issuer_text} was issued in the future (thisUpdate {}, {} s from now): \
             check the clocks of this machine and of the CA",
            crl.last_update(),
            this_update - now_secs
        ));
    }
    if let Some(next) = crl.next_update()
        && next.timestamp() < this_update
    {
        return Err(format!(
            "CRL of {issuer_text} has its nextUpdate ({next}) before its thisUpdate ({})",
            crl.last_update()
        ));
    }
    let signed = SignedParts::of(der).map_err(|e| format!("not a valid CRL: {e}"))?;
    let issuer_name = crl.issuer().as_raw();
    let candidates: Vec<X509Certificate<'_>> = issuers
        .iter()
        .filter_map(|c| X509Certificate::from_der(c.as_ref()).ok().map(|(_, c)| c))
        .filter(|c| c.subject().as_raw() == issuer_name)
        .collect();
    if candidates.is_empty() {
        return Err(format!(
            "CRL issued by {issuer_text}, which is not a CA in client_ca: add that CA's \
             certificate to client_ca, or remove the CRL"
        ));
    }
    let mut last = None;
    let mut verified = None;
    for ca in &candidates {
        match check_signature(&signed, ca) {
            Ok(()) => {
                verified = Some(ca);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let Some(ca) = verified else {
        return Err(last.unwrap_or_else(|| "signature does not verify".into()));
    };
    match ca.key_usage() {
        Ok(Some(ku)) if !ku.value.crl_sign() => {
            return Err(format!(
                "CRL issued by {issuer_text}, whose certificate may not sign CRLs (its key \
                 usage lacks cRLSign)"
            ));
        }
        Err(e) => return Err(format!("the certificate of {issuer_text}: {e}")),
        _ => {}
    }
    // The rest of what the handshake requires of a CRL (version 2, a nextUpdate, no delta or
    // indirect CRL, known extensions): let rustls parse it now, alone, so its complaint names
    // this file.
    webpki_accepts(der, ca.as_raw()).map_err(|e| format!("not a CRL Vigil can use: {e}"))?;
    let distribution_point = crl
        .extensions()
        .iter()
        .find(|e| e.oid == OID_X509_EXT_ISSUER_DISTRIBUTION_POINT)
        .map(|e| e.value.to_vec());
    Ok(Scope {
        issuer: issuer_name.to_vec(),
        distribution_point,
        issuer_text,
    })
}

/// The three parts of a signed X.509 structure (CRL or certificate).
struct SignedParts<'a> {
    /// The to-be-signed part, DER with its header: what the signature covers.
    tbs: &'a [u8],
    /// The contents of the signature AlgorithmIdentifier (without its SEQUENCE header), the
    /// form rustls' algorithms name themselves in.
    algorithm: &'a [u8],
    signature: &'a [u8],
}

impl<'a> SignedParts<'a> {
    fn of(der: &'a [u8]) -> Result<Self, String> {
        let seq = |any: &Any<'a>, what: &str| {
            (any.header.tag() == Tag::Sequence)
                .then_some(())
                .ok_or_else(|| format!("{what} is not a SEQUENCE"))
        };
        let (_, outer) = Any::from_der(der).map_err(|e| e.to_string())?;
        seq(&outer, "the CRL")?;
        let body = outer.data;
        let (rest, tbs) = Any::from_der(body).map_err(|e| e.to_string())?;
        seq(&tbs, "tbsCertList")?;
        let tbs_len = body.len() - rest.len();
        let (rest, algorithm) = Any::from_der(rest).map_err(|e| e.to_string())?;
        seq(&algorithm, "signatureAlgorithm")?;
        let (rest, bits) = Any::from_der(rest).map_err(|e| e.to_string())?;
        if bits.header.tag() != Tag::BitString || !rest.is_empty() {
            return Err("signatureValue is not the last field, a BIT STRING".into());
        }
        // A signature is whole bytes: the unused-bits count must be 0.
        let signature = match bits.data.split_first() {
            Some((0, signature)) => signature,
            _ => return Err("signatureValue is not a whole number of bytes".into()),
        };
        Ok(Self {
            tbs: &body[..tbs_len],
            algorithm: algorithm.data,
            signature,
        })
    }
}

/// Checks the signature with `ca`'s public key, with the signature algorithms of the handshake
/// ([`super::provider`]), exactly as webpki will when a client of that CA connects.
fn check_signature(signed: &SignedParts<'_>, ca: &X509Certificate<'_>) -> Result<(), String> {
    let subject = ca.subject().to_string();
    let spki = ca.public_key();
    let (_, spki_any) = Any::from_der(spki.raw).map_err(|e| format!("{subject}: {e}"))?;
    let (_, key_algorithm) = Any::from_der(spki_any.data).map_err(|e| format!("{subject}: {e}"))?;
    let key = spki.subject_public_key.data.as_ref();
    let provider = super::provider();
    let mut named = false;
    for alg in provider.signature_verification_algorithms.all {
        if alg.signature_alg_id().as_ref() != signed.algorithm {
            continue;
        }
        named = true;
        if alg.public_key_alg_id().as_ref() != key_algorithm.data {
            continue;
        }
        return alg
            .verify_signature(key, signed.tbs, signed.signature)
            .map_err(|_| {
                format!(
                    "the CRL's signature does not verify with the key of {subject} in client_ca: \
                     the file is corrupt, or it comes from another CA with the same name"
                )
            });
    }
    Err(if named {
        format!(
            "the CRL is signed with an algorithm that does not fit the key of {subject} in \
             client_ca: it comes from another CA with the same name"
        )
    } else {
        format!(
            "the CRL is signed with an unsupported algorithm (AlgorithmIdentifier {}); \
             supported: ECDSA P-256/P-384/P-521, Ed25519, RSA PKCS#1 and RSA-PSS with SHA-256/384/512",
            crate::hex::encode(signed.algorithm)
        )
    })
}

/// Builds a client verifier with this CRL alone, which is where rustls parses CRLs.
fn webpki_accepts(der: &[u8], issuer: &[u8]) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(issuer.to_vec()))
        .map_err(|e| e.to_string())?;
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), super::provider())
        .with_crls([CertificateRevocationListDer::from(der.to_vec())])
        .build()
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{Authority, Revoked};
    use time::{Duration, OffsetDateTime};

    fn der_of(pem: &str) -> Vec<u8> {
        CertificateRevocationListDer::from_pem_slice(pem.as_bytes())
            .map(|d| d.as_ref().to_vec())
            .unwrap_or_default()
    }

    fn crl(ca: &Authority) -> Vec<u8> {
        let next = OffsetDateTime::now_utc() + Duration::days(1);
        der_of(&ca.crl_pem(&[], 1, next).unwrap_or_default())
    }

    fn issuers(cas: &[&Authority]) -> Vec<CertificateDer<'static>> {
        cas.iter().map(|c| c.cert_der().clone()).collect()
    }

    #[test]
    fn a_crl_from_the_right_ca_is_accepted() -> Result<(), Box<dyn std::error::Error>> {
        let ca = Authority::generate("Test CA")?;
        let other = Authority::generate("Other CA")?;
        let revoked = Revoked {
            serial: vec![0x42],
            at: OffsetDateTime::now_utc(),
        };
        let next = OffsetDateTime::now_utc() + Duration::days(1);
        let der = der_of(&ca.crl_pem(&[revoked], 7, next)?);
        verify(&der, &issuers(&[&other, &ca]), UnixTime::now())?;
        Ok(())
    }

    #[test]
    fn one_flipped_bit_in_the_signature_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let ca = Authority::generate("Test CA")?;
        let mut der = crl(&ca);
        let last = der.len() - 1;
        der[last] ^= 0x01;
        let err = verify(&der, &issuers(&[&ca]), UnixTime::now()).unwrap_err();
        assert!(err.contains("does not verify"), "{err}");
        Ok(())
    }

    #[test]
    fn one_flipped_bit_in_the_content_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let ca = Authority::generate("Test CA")?;
        let mut der = crl(&ca);
        // A byte near the end of the signed part (after the 4-byte outer header).
        let signed = SignedParts::of(&der)?;
        let at = signed.tbs.len() - 10;
        der[4 + at] ^= 0x01;
        assert!(verify(&der, &issuers(&[&ca]), UnixTime::now()).is_err());
        Ok(())
    }

    #[test]
    fn a_crl_from_another_ca_with_the_same_name_is_refused()
    -> Result<(), Box<dyn std::error::Error>> {
        let ca = Authority::generate("Test CA")?;
        let impostor = Authority::generate("Test CA")?;
        let err = verify(&crl(&impostor), &issuers(&[&ca]), UnixTime::now()).unwrap_err();
        assert!(err.contains("another CA with the same name"), "{err}");
        // With both in client_ca, each CA's own CRL verifies.
        verify(
            &crl(&impostor),
            &issuers(&[&ca, &impostor]),
            UnixTime::now(),
        )?;
        Ok(())
    }

    #[test]
    fn a_crl_from_an_unrelated_ca_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let ca = Authority::generate("Test CA")?;
        let unrelated = Authority::generate("Unrelated CA")?;
        let err = verify(&crl(&unrelated), &issuers(&[&ca]), UnixTime::now()).unwrap_err();
        assert!(
            err.contains("CN=Unrelated CA, which is not a CA in client_ca"),
            "{err}"
        );
        Ok(())
    }

    #[test]
    fn a_crl_from_the_future_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let ca = Authority::generate("Test CA")?;
        let der = crl(&ca);
        let later = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            UnixTime::now().as_secs() - 3600,
        ));
        let err = verify(&der, &issuers(&[&ca]), later).unwrap_err();
        assert!(err.contains("issued in the future"), "{err}");
        // Within the skew is fine.
        let skewed = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            UnixTime::now().as_secs() - 200,
        ));
        verify(&der, &issuers(&[&ca]), skewed)?;
        Ok(())
    }

    #[test]
    fn an_expired_crl_is_loaded() -> Result<(), Box<dyn std::error::Error>> {
        // The handshake refuses its clients (`expired_crl`) when `enforce_crl_expiry` is on.
        let ca = Authority::generate("Test CA")?;
        let past = OffsetDateTime::now_utc() - Duration::days(1);
        let der = der_of(&ca.crl_pem(&[], 1, past)?);
        verify(&der, &issuers(&[&ca]), UnixTime::now())?;
        Ok(())
    }

    #[test]
    fn a_ca_without_crl_sign_may_not_issue_crls() -> Result<(), Box<dyn std::error::Error>> {
        use rcgen::{
            BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, IsCa,
            KeyIdMethod, KeyPair, KeyUsagePurpose, SerialNumber,
        };
        let key = KeyPair::generate()?;
        let params = |usages: Vec<KeyUsagePurpose>| {
            let mut p = CertificateParams::default();
            p.distinguished_name.push(DnType::CommonName, "No CRL CA");
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages = usages;
            p
        };
        // The certificate in client_ca says the key may sign certificates only; the CRL is
        // signed with that same key (rcgen would not sign it for that certificate).
        let cert = params(vec![KeyUsagePurpose::KeyCertSign]).self_signed(&key)?;
        let signer = rcgen::Issuer::new(
            params(vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign]),
            key,
        );
        let now = OffsetDateTime::now_utc();
        let crl = CertificateRevocationListParams {
            this_update: now - Duration::minutes(1),
            next_update: now + Duration::days(1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: vec![],
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&signer)?;
        let err = verify(crl.der().as_ref(), &[cert.der().clone()], UnixTime::now()).unwrap_err();
        assert!(err.contains("cRLSign"), "{err}");
        Ok(())
    }

    #[test]
    fn a_second_crl_for_the_same_ca_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let ca = Authority::generate("Test CA")?;
        let next = OffsetDateTime::now_utc() + Duration::days(1);
        let (a, b) = (dir.path().join("a.crl"), dir.path().join("b.crl"));
        std::fs::write(&a, ca.crl_pem(&[], 1, next)?)?;
        std::fs::write(&b, ca.crl_pem(&[], 2, next)?)?;
        let mut crls = Crls::new(issuers(&[&ca]));
        crls.read(&a)?;
        let err = crls.read(&b).unwrap_err();
        assert!(err.contains("already has a CRL in"), "{err}");
        assert_eq!(crls.into_vec().len(), 1);
        Ok(())
    }

    #[test]
    fn errors_name_the_file() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let ca = Authority::generate("Test CA")?;
        let impostor = Authority::generate("Test CA")?;
        let path = dir.path().join("impostor.crl");
        let next = OffsetDateTime::now_utc() + Duration::days(1);
        std::fs::write(&path, impostor.crl_pem(&[], 1, next)?)?;
        let err = Crls::new(issuers(&[&ca])).read(&path).unwrap_err();
        assert!(err.starts_with(&format!("{}: ", path.display())), "{err}");
        Ok(())
    }
}
