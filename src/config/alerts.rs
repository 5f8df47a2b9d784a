//! `[alerts]`: the webhook alerts are delivered to, its trust, its signing key and how hard
//! delivery tries. Compiled into a [`Webhook`] the sender reads from the snapshot in force, so
//! a reload with a new URL or secret applies to every later attempt.

use super::compiler::Compiler;
use super::schema::AlertsSection;
use crate::alerts::{Webhook, WebhookSettings};
use std::sync::Arc;

/// Shortest signing key accepted, in bytes: shorter ones are guessable.
const MIN_SECRET: usize = 16;

impl Compiler<'_> {
    /// The webhook, or `None` when alerts are only logged (no `[alerts]`, no `webhook`) or
    /// the section has problems (reported).
    pub(super) fn alerts(&mut self, section: Option<&AlertsSection>) -> Option<Arc<Webhook>> {
        let a = section?;
        self.longer_than_zero(&[
            ("alerts.timeout", a.timeout.0),
            ("alerts.backoff", a.backoff.0),
            ("alerts.backoff_max", a.backoff_max.0),
        ]);
        if a.queue == 0 {
            self.problem("alerts.queue", "must be at least 1");
        }
        if a.backoff_max.0 < a.backoff.0 {
            self.problem(
                "alerts.backoff_max",
                "must not be shorter than alerts.backoff",
            );
        }
        let before = self.reported();
        let Some(webhook) = &a.webhook else {
            for (key, set) in [
                ("alerts.ca", a.ca.is_some()),
                ("alerts.secret_file", a.secret_file.is_some()),
            ] {
                if set {
                    self.warning(key, "has no effect without alerts.webhook");
                }
            }
            return None;
        };
        let url = self.webhook_url(webhook);
        let secret = self.alert_secret(a.secret_file.as_ref());
        let ca = self.optional_file("alerts.ca", a.ca.as_ref());
        let tls = match crate::tls::outbound::for_vigil(ca.as_deref(), "alerts.ca") {
            Ok(tls) => Some(tls),
            Err(e) => {
                self.problem("alerts.ca", e);
                None
            }
        };
        if self.reported() > before {
            return None;
        }
        Some(Arc::new(Webhook::new(WebhookSettings {
            url: url?,
            secret: secret?,
            tls: tls?,
            queue: a.queue,
            retries: a.retries,
            timeout: a.timeout.0,
            backoff: a.backoff.0,
            backoff_max: a.backoff_max.0,
        })))
    }

    fn webhook_url(&mut self, text: &str) -> Option<http::Uri> {
        let parsed = url::Url::parse(text).ok().filter(|u| u.has_host());
        match parsed {
            Some(u) if u.scheme() == "https" => match text.parse::<http::Uri>() {
                Ok(uri) => Some(uri),
                Err(e) => {
                    self.problem(
                        "alerts.webhook",
                        format!("{text:?} is not a usable URL: {e}"),
                    );
                    None
                }
            },
            Some(_) => {
                self.problem_help(
                    "alerts.webhook",
                    format!("{text:?} is not an https:// URL"),
                    "alerts are delivered over TLS only: write it like \"https://alerts.example.org/vigil\"",
                );
                None
            }
            None => {
                self.problem("alerts.webhook", format!("{text:?} is not a URL"));
                None
            }
        }
    }

    /// The signing key: the file's bytes, surrounding whitespace trimmed.
    fn alert_secret(&mut self, file: Option<&String>) -> Option<Vec<u8>> {
        let Some(name) = file else {
            self.problem_help(
                "alerts.webhook",
                "a webhook needs alerts.secret_file",
                "name a file holding at least 16 random bytes, e.g. made with `openssl rand -hex 32`",
            );
            return None;
        };
        let bytes = self.optional_file("alerts.secret_file", Some(name))?;
        let secret = bytes.trim_ascii().to_vec();
        if secret.len() < MIN_SECRET {
            self.problem_help(
                "alerts.secret_file",
                format!(
                    "{name}: the secret is {} bytes long; at least {MIN_SECRET} are needed",
                    secret.len()
                ),
                "make one with `openssl rand -hex 32`",
            );
            return None;
        }
        Some(secret)
    }
}
