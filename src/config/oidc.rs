//! `[oidc]`, `[session]` and `[verify]`: the OpenID Provider people log in with, the sealed
//! sessions that follow a login, and how often a session is confirmed with the provider.

use super::compiler::Compiler;
use super::load::RawConfig;
use super::schema::{OidcSection, SessionSection, VerifySection};
use crate::identity::Sessions;
use crate::identity::oidc::{Provider, Settings};
use crate::identity::seal::KeyRing;
use openidconnect::core::CoreJwsSigningAlgorithm;
use std::sync::Arc;

/// Claims every login keeps; others are kept only when a rule or header names them.
const STANDARD_CLAIMS: [&str; 8] = [
    "sub", "email", "name", "groups", "amr", "acr", "device", "workload",
];

impl Compiler<'_> {
    /// The provider, kept from the previous snapshot when its settings are unchanged (so its
    /// discovery document and keys stay cached).
    pub(super) fn oidc(&mut self, raw: &RawConfig) -> Option<Arc<Provider>> {
        let o = raw.oidc.as_ref()?;
        self.longer_than_zero(&[("oidc.login_timeout", o.login_timeout.0)]);
        let before = self.reported();
        if url::Url::parse(&o.issuer).map_or(true, |u| !matches!(u.scheme(), "https" | "http")) {
            self.problem(
                "oidc.issuer",
                format!("{:?} is not an http(s) URL", o.issuer),
            );
        }
        let secret = self.client_secret(o);
        let algorithms = self.algorithms(o);
        if !o.scopes.iter().any(|s| s == "openid") {
            self.problem("oidc.scopes", "scopes must include \"openid\"");
        }
        if let Some(url) = &o.redirect_url
            && !url.starts_with("https://")
        {
            self.problem("oidc.redirect_url", "the redirect URL must be https://");
        }
        let ca = self.optional_file("oidc.ca", o.ca.as_ref());
        if self.reported() > before {
            return None;
        }
        let settings = Settings {
            issuer: o.issuer.clone(),
            client_id: o.client_id.clone(),
            client_secret: secret?,
            redirect_url: o.redirect_url.clone(),
            scopes: o.scopes.clone(),
            groups_claim: o.groups_claim.clone(),
            risk_claim: o.risk_claim.clone(),
            keep_claims: keep_claims(raw),
            mfa_amr: o.mfa_amr.clone(),
            post_logout_redirect: o.post_logout_redirect_url.clone(),
            userinfo: o.userinfo,
            algorithms,
            clock_skew: o.clock_skew.0,
            login_timeout: o.login_timeout.0,
            check_interval: o.check_interval.0,
            ca,
        };
        if let Some(previous) = self.previous.and_then(|p| p.oidc.clone())
            && previous.settings == settings
        {
            return Some(previous);
        }
        Provider::new(settings)
            .map(Arc::new)
            .map_err(|e| self.problem("oidc", e))
            .ok()
    }

    /// The client secret, from exactly one of a file and an environment variable.
    fn client_secret(&mut self, o: &OidcSection) -> Option<String> {
        match (&o.client_secret_file, &o.client_secret_env) {
            (Some(file), None) => std::fs::read_to_string(self.file(file))
                .map(|s| s.trim_end_matches(['\r', '\n']).to_owned())
                .map_err(|e| {
                    let why = crate::error::file_error(&e);
                    self.problem("oidc.client_secret_file", format!("{file}: {why}"))
                })
                .ok(),
            (None, Some(var)) => std::env::var(var)
                .map_err(|_| {
                    self.problem(
                        "oidc.client_secret_env",
                        format!("environment variable {var} is not set"),
                    )
                })
                .ok(),
            _ => {
                self.problem_help(
                    "oidc",
                    "give exactly one of client_secret_file and client_secret_env",
                    "secrets never go in the configuration file itself",
                );
                None
            }
        }
    }

    fn algorithms(&mut self, o: &OidcSection) -> Vec<CoreJwsSigningAlgorithm> {
        let mut algorithms = Vec::new();
        for (i, name) in o.algorithms.iter().enumerate() {
            match crate::identity::oidc::algorithm(name) {
                Some(a) => algorithms.push(a),
                None => self.problem_help(
                    &format!("oidc.algorithms.{i}"),
                    format!("algorithm {name:?} is not accepted"),
                    "asymmetric algorithms only: RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA",
                ),
            }
        }
        algorithms
    }

    pub(super) fn sessions(&mut self, s: Option<&SessionSection>) -> Option<Arc<Sessions>> {
        let s = s?;
        self.longer_than_zero(&[
            ("session.lifetime", s.lifetime.0),
            ("session.idle", s.idle.0),
        ]);
        let ring = KeyRing::from_file(&self.file(&s.keys_file))
            .map_err(|e| self.problem("session.keys_file", e))
            .ok()?;
        if s.idle.0 > s.lifetime.0 {
            self.problem(
                "session.idle",
                "the idle timeout is longer than the lifetime",
            );
        }
        Some(Arc::new(Sessions {
            ring,
            lifetime: s.lifetime.0,
            idle: s.idle.0,
        }))
    }

    pub(super) fn verify(&mut self, v: &VerifySection) -> crate::identity::verify::Settings {
        self.longer_than_zero(&[("verify.interval", v.interval.0)]);
        crate::identity::verify::Settings {
            interval: v.interval.0,
            max_stale: v.max_stale.0,
        }
    }
}

/// The non-standard claims the routes' rules and identity headers name, each once.
fn keep_claims(raw: &RawConfig) -> Vec<String> {
    let mut keep: Vec<String> = raw
        .routes
        .iter()
        .flatten()
        .flat_map(|r| {
            r.allow
                .iter()
                .flat_map(|rule| rule.claims.keys().cloned())
                .chain(r.headers.values().cloned())
        })
        .filter(|c| !STANDARD_CLAIMS.contains(&c.as_str()))
        .collect();
    keep.sort();
    keep.dedup();
    keep
}
