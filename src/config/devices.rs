//! `[devices]`: the device inventory (an MDM export) that device rules and risk signals read.

use super::compiler::Compiler;
use super::schema::DevicesSection;
use crate::posture::inventory::{Inventory, Key, Settings, Source};
use std::sync::Arc;

impl Compiler<'_> {
    /// The inventory, kept from the previous snapshot when its settings are unchanged (so it
    /// keeps its data and its refresh task).
    pub(super) fn devices(&mut self, d: Option<&DevicesSection>) -> Option<Arc<Inventory>> {
        let d = d?;
        let source = if d.source.starts_with("https://") {
            Source::Url(d.source.clone())
        } else if d.source.contains("://") {
            self.problem("devices.source", "a URL source must be https://");
            return None;
        } else {
            Source::File(self.file(&d.source))
        };
        let key = match d.key.as_str() {
            "fingerprint" => Key::Fingerprint,
            "serial" => Key::Serial,
            "subject" => Key::Subject,
            other => {
                self.problem_help(
                    "devices.key",
                    format!("unknown key {other:?}"),
                    "\"fingerprint\", \"serial\" or \"subject\"",
                );
                return None;
            }
        };
        self.longer_than_zero(&[("devices.refresh", d.refresh.0)]);
        let ca = self.optional_file("devices.ca", d.ca.as_ref());
        let settings = Settings {
            source,
            key,
            refresh: d.refresh.0,
            max_stale: d.max_stale.0,
            ca,
        };
        if let Some(previous) = self.previous.and_then(|p| p.devices.clone())
            && previous.settings == settings
        {
            return Some(previous);
        }
        Inventory::load(settings)
            .map(Arc::new)
            .map_err(|e| self.problem("devices.source", e))
            .ok()
    }
}
