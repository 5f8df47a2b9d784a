//! `[server] hsts_max_age` and `hsts_include_subdomains`: the `Strict-Transport-Security`
//! header on every answer downstream. Vigil terminates the TLS, so what a browser is told to
//! pin is Vigil's to say, not each upstream's.

use super::compiler::Compiler;
use super::schema::ServerSection;
use http::HeaderValue;

impl Compiler<'_> {
    /// The header's value, or `None` when it is turned off (`"0s"`).
    pub(super) fn hsts(&mut self, server: &ServerSection) -> Option<HeaderValue> {
        let max_age = server.hsts_max_age.0;
        if max_age.is_zero() {
            return None;
        }
        if max_age.subsec_nanos() != 0 {
            self.problem_help(
                "server.hsts_max_age",
                "must be a whole number of seconds",
                "write it like \"365d\", or \"0s\" to send no Strict-Transport-Security",
            );
            return None;
        }
        let mut value = format!("max-age={}", max_age.as_secs());
        if server.hsts_include_subdomains {
            value.push_str("; includeSubDomains");
        }
        HeaderValue::from_str(&value).ok()
    }
}
