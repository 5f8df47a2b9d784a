//! `[assertion]`: the signed JWT that tells upstreams who is calling (`X-Vigil-Assertion`).

use super::compiler::Compiler;
use super::schema::AssertionSection;
use crate::forward::assertion::Signer;
use std::sync::Arc;
use std::time::Duration;

impl Compiler<'_> {
    pub(super) fn signer(&mut self, a: Option<&AssertionSection>) -> Option<Arc<Signer>> {
        let a = a?;
        if a.lifetime.0.is_zero() || a.lifetime.0 > Duration::from_secs(3600) {
            self.problem("assertion.lifetime", "between 1 second and 1 hour");
        }
        Signer::from_file(&self.file(&a.keys_file), a.issuer.clone(), a.lifetime.0)
            .map(Arc::new)
            .map_err(|e| self.problem("assertion.keys_file", e))
            .ok()
    }
}
