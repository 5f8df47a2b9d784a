//! `[tls]`: the proxy listener's certificate, the CAs and CRLs client certificates are checked
//! against, and the key exchange groups offered.

use super::compiler::Compiler;
use super::diagnostics::{Problem, suggest};
use super::load::RawConfig;
use super::schema::TlsSection;
use crate::tls::lifecycle::{self, Material};
use crate::tls::{Crls, Resumption, ServerTls, key_fits, read_chain, read_key, read_roots};
use rustls::crypto::SupportedKxGroup;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
use rustls::server::danger::ClientCertVerifier;
use std::sync::Arc;

/// `[tls]`, compiled.
pub(super) struct Tls {
    pub config: Arc<rustls::ServerConfig>,
    /// The verifier inside `config`, to re-check certificates of resumed sessions.
    pub client_verifier: Arc<dyn ClientCertVerifier>,
    /// The dates of the server certificate, the client CAs and the CRLs.
    pub material: Arc<Material>,
}

impl Compiler<'_> {
    /// `[tls]`, which every configuration needs: Vigil only speaks TLS.
    pub(super) fn tls(&mut self, raw: &RawConfig, resumption: &Resumption) -> Option<Tls> {
        let Some(tls) = &raw.tls else {
            if !raw.lacks("tls") {
                return None;
            }
            self.report(
                Problem::at(None, "missing [tls] section")
                    .with_help("Vigil only speaks TLS: give cert, key and client_ca"),
            );
            return None;
        };
        let chain = read_chain(&self.file(&tls.cert))
            .map_err(|e| self.problem("tls.cert", e))
            .ok();
        let key = read_key(&self.file(&tls.key))
            .map_err(|e| self.problem("tls.key", e))
            .ok();
        let fits = self.key_fits(
            "tls.key",
            &tls.cert,
            &tls.key,
            chain.as_deref(),
            key.as_ref(),
        );
        let (roots, issuers, client_cas) = self.client_roots(tls);
        let (crls, crl_dates) = self.read_crls(tls, issuers, &raw.admin.client_ca, true);
        let key_exchange = self.key_exchange(tls);
        let server = chain.as_ref().and_then(|chain| {
            lifecycle::Cert::read(&tls.cert, "tls.cert", chain.first()?.as_ref())
                .map_err(|e| self.problem("tls.cert", e))
                .ok()
        });
        let material = Material {
            server,
            client_cas,
            crls: crl_dates,
            enforce_crl_expiry: tls.enforce_crl_expiry,
            warning: tls.expiry_warning.0,
        };
        self.judge_material(&material, raw);
        let (chain, key, roots) = (chain?, key?, roots?);
        if !fits {
            return None;
        }
        let (config, client_verifier) = ServerTls {
            chain,
            key,
            client_roots: roots,
            crls,
            allow_unknown_revocation: tls.allow_unknown_revocation,
            enforce_crl_expiry: tls.enforce_crl_expiry,
            session_tickets: tls.session_tickets,
            key_exchange: key_exchange?,
        }
        .build(Some(resumption))
        .map_err(|e| self.problem("tls", e))
        .ok()?;
        Some(Tls {
            config,
            client_verifier,
            material: Arc::new(material),
        })
    }

    /// Whether `key` is the private key of `cert`'s certificate; a problem at `at` (the
    /// `key =` setting) when it is not. True when either could not be read (that problem
    /// is reported where it was read).
    pub(super) fn key_fits(
        &mut self,
        at: &str,
        cert: &str,
        key: &str,
        chain: Option<&[CertificateDer<'static>]>,
        private: Option<&rustls::pki_types::PrivateKeyDer<'static>>,
    ) -> bool {
        let (Some(chain), Some(private)) = (chain, private) else {
            return true;
        };
        match key_fits(chain, private) {
            Ok(()) => true,
            Err(e) => {
                self.problem_help(
                    at,
                    format!("{key}: {e}"),
                    format!("give the key {cert} was issued for"),
                );
                false
            }
        }
    }

    /// `[tls] client_ca`: the roots client certificates must chain to (`None` when one cannot
    /// be read, or there are none), the same certificates as CRL issuers, and their dates.
    fn client_roots(
        &mut self,
        tls: &TlsSection,
    ) -> (
        Option<rustls::RootCertStore>,
        Vec<CertificateDer<'static>>,
        Vec<lifecycle::Cert>,
    ) {
        let mut roots = rustls::RootCertStore::empty();
        if tls.client_ca.is_empty() {
            self.problem_help(
                "tls.client_ca",
                "no client CA: every client certificate would be refused",
                "list the PEM bundles of the CAs that issue device and workload certificates",
            );
        }
        let mut roots_ok = true;
        let mut issuers = Vec::new();
        let mut dates = Vec::new();
        for (i, ca) in tls.client_ca.iter().enumerate() {
            let key = format!("tls.client_ca.{i}");
            match read_roots(&self.file(ca), &mut roots) {
                Ok(certs) => {
                    for cert in &certs {
                        match lifecycle::Cert::read(ca, &key, cert.as_ref()) {
                            Ok(c) => dates.push(c),
                            Err(e) => self.problem(&key, e),
                        }
                    }
                    issuers.extend(certs);
                }
                Err(e) => {
                    self.problem(&key, e);
                    roots_ok = false;
                }
            }
        }
        let roots = (roots_ok && !roots.is_empty()).then_some(roots);
        (roots, issuers, dates)
    }

    /// `[tls] crl`, each verified against the CA that issued it, which must be in
    /// `[tls] client_ca` or `[admin] client_ca` (whose own errors are reported where they are
    /// read). Both listeners get the same list; `report` is off for the second reading.
    pub(super) fn crls(
        &mut self,
        tls: &TlsSection,
        issuers: Vec<CertificateDer<'static>>,
        more_issuers: &[String],
        report: bool,
    ) -> Vec<CertificateRevocationListDer<'static>> {
        self.read_crls(tls, issuers, more_issuers, report).0
    }

    /// [`Compiler::crls`], with the dates of each CRL read.
    fn read_crls(
        &mut self,
        tls: &TlsSection,
        mut issuers: Vec<CertificateDer<'static>>,
        more_issuers: &[String],
        report: bool,
    ) -> (
        Vec<CertificateRevocationListDer<'static>>,
        Vec<lifecycle::Crl>,
    ) {
        for ca in more_issuers {
            let mut scratch = rustls::RootCertStore::empty();
            if let Ok(certs) = read_roots(&self.file(ca), &mut scratch) {
                issuers.extend(certs);
            }
        }
        let mut crls = Crls::new(issuers);
        let mut dates = Vec::new();
        for (i, crl) in tls.crl.iter().enumerate() {
            let key = format!("tls.crl.{i}");
            let before = crls.as_slice().len();
            match crls.read(&self.file(crl)) {
                Err(e) if report => self.problem(&key, e),
                Err(_) => {}
                Ok(()) => {
                    for der in &crls.as_slice()[before..] {
                        match lifecycle::Crl::read(crl, &key, der.as_ref()) {
                            Ok(c) => dates.push(c),
                            Err(e) if report => self.problem(&key, e),
                            Err(_) => {}
                        }
                    }
                }
            }
        }
        (crls.into_vec(), dates)
    }

    /// `[tls] key_exchange`: known group names, each once, at least one.
    fn key_exchange(&mut self, tls: &TlsSection) -> Option<Vec<&'static dyn SupportedKxGroup>> {
        let names = crate::tls::KEY_EXCHANGE_NAMES;
        if tls.key_exchange.is_empty() {
            self.problem_help(
                "tls.key_exchange",
                "no key exchange group: every handshake would fail",
                format!(
                    "leave the key out for the default {:?}",
                    crate::tls::DEFAULT_KEY_EXCHANGE
                ),
            );
            return None;
        }
        let mut groups: Vec<&'static dyn SupportedKxGroup> = Vec::new();
        let mut ok = true;
        for (i, name) in tls.key_exchange.iter().enumerate() {
            let key = format!("tls.key_exchange.{i}");
            match crate::tls::key_exchange_group(name) {
                Some(g) if groups.iter().any(|have| have.name() == g.name()) => {
                    self.problem(&key, format!("{name:?} is listed twice"));
                    ok = false;
                }
                Some(g) => groups.push(g),
                None => {
                    let help = suggest(name, names)
                        .unwrap_or_else(|| format!("known groups: {}", names.join(", ")));
                    self.problem_help(&key, format!("unknown key exchange group {name:?}"), help);
                    ok = false;
                }
            }
        }
        ok.then_some(groups)
    }
}
