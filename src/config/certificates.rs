//! What a load says about the dates and names of the TLS material (`tls::lifecycle`): a server
//! certificate clients would refuse is a problem; what expires within `[tls] expiry_warning`,
//! and a route host the server certificate does not name, are warnings.

use super::compiler::Compiler;
use super::load::RawConfig;
use crate::tls::lifecycle::{Material, Part, Status, unix_now};

impl Compiler<'_> {
    /// Judges `material` now. A server certificate that is expired or not valid yet refuses
    /// the load (`vigil run` does not start, a reload keeps the snapshot in force); a CRL past
    /// its `nextUpdate` with `enforce_crl_expiry` is a problem for `vigil check` only (see
    /// `diagnostics::Warnings::for_check`); the rest are warnings.
    pub(super) fn judge_material(&mut self, material: &Material, raw: &RawConfig) {
        let status = Status::at(material, unix_now());
        for f in status.findings() {
            match (f.part, f.refuses_clients) {
                (Part::ServerCertificate, true) => self.problem_help(
                    &f.key,
                    f.message.clone(),
                    "the listener cannot serve with it; `[tls] cert` must name a certificate \
                     valid now",
                ),
                (_, true) => self.check_problem(
                    &f.key,
                    f.message.clone(),
                    "Vigil starts with it and refuses every client of that CA until a fresh \
                     CRL is loaded; set `enforce_crl_expiry = false` to accept them meanwhile",
                ),
                (_, false) => self.warning(&f.key, f.message.clone()),
            }
        }
        self.hosts_named(material, raw);
    }

    /// Warns about each route whose `host` is not among the server certificate's names:
    /// clients that check the name (browsers, curl, most libraries) would refuse the
    /// certificate on it. A route for `*` (any host) is not checked.
    fn hosts_named(&mut self, material: &Material, raw: &RawConfig) {
        let Some(server) = &material.server else {
            return;
        };
        for (i, route) in raw.routes.iter().enumerate() {
            let Some(route) = route else { continue };
            let host = route.host.trim().trim_end_matches('.').to_ascii_lowercase();
            if host == "*" || host.is_empty() || server.covers(&host) {
                continue;
            }
            let names: Vec<String> = server
                .dns_names
                .iter()
                .cloned()
                .chain(server.ip_addresses.iter().map(|ip| ip.to_string()))
                .collect();
            self.warning(
                &format!("route.{i}.host"),
                format!(
                    "route {:?}: the server certificate ({}) does not name {host:?} (its names: \
                     {}); clients that check the name will refuse the connection",
                    route.name,
                    server.file,
                    if names.is_empty() {
                        "none".to_owned()
                    } else {
                        names.join(", ")
                    }
                ),
            );
        }
    }
}
