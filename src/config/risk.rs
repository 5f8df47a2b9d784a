//! `[risk]`: the weight of each risk signal, the thresholds of the levels, and what counts as
//! a trusted network or an allowed country.

use super::compiler::Compiler;
use super::schema::RiskSection;
use crate::posture::RiskSettings;
use crate::posture::geo::GeoIp;
use std::sync::Arc;

impl Compiler<'_> {
    pub(super) fn risk(&mut self, r: Option<&RiskSection>) -> Option<RiskSettings> {
        let r = r?;
        let trusted = self.networks("risk.trusted_networks", &r.trusted_networks);
        if r.medium == 0 || r.high < r.medium {
            self.problem("risk", "thresholds need 0 < medium <= high");
        }
        let geoip = match &r.geoip_database {
            Some(path) => GeoIp::open(&self.file(path))
                .map(Arc::new)
                .map_err(|e| self.problem("risk.geoip_database", e))
                .ok(),
            None => None,
        };
        let allowed_countries = self.allowed_countries(r);
        Some(RiskSettings {
            device_unknown: r.device_unknown,
            device_noncompliant: r.device_noncompliant,
            stale_check_in: r.stale_check_in,
            untrusted_network: r.untrusted_network,
            idp_risk_medium: r.idp_risk_medium,
            idp_risk_high: r.idp_risk_high,
            recent_denial: r.recent_denial,
            first_seen_device: r.first_seen_device,
            medium: r.medium,
            high: r.high,
            trusted_networks: trusted,
            check_in_max_age: r.check_in_max_age.0,
            denial_window: r.denial_window.0,
            step_up_max_age: r.step_up_max_age.0,
            allowed_countries,
            geoip,
            country_not_allowed: r.country_not_allowed,
            country_unknown: r.country_unknown,
        })
    }

    /// `allowed_countries`: ISO 3166 codes, upper case; they need the country database.
    fn allowed_countries(&mut self, r: &RiskSection) -> Vec<String> {
        let mut allowed = Vec::new();
        for (i, c) in r.allowed_countries.iter().enumerate() {
            if c.len() == 2 && c.bytes().all(|b| b.is_ascii_alphabetic()) {
                allowed.push(c.to_ascii_uppercase());
            } else {
                self.problem(
                    &format!("risk.allowed_countries.{i}"),
                    format!("{c:?} is not an ISO 3166 country code like \"DE\""),
                );
            }
        }
        if !allowed.is_empty() && r.geoip_database.is_none() {
            self.problem(
                "risk.allowed_countries",
                "allowed_countries needs geoip_database",
            );
        }
        allowed
    }
}
