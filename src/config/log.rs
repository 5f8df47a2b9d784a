//! `[log]` and `[audit]`: where decision lines go, how diagnostics look, and whether a denial
//! is enforced or only logged.

use super::compiler::Compiler;
use super::schema::{AuditSection, LogSection};

impl Compiler<'_> {
    /// `[log]` with a decision log file resolved against the configuration's directory.
    pub(super) fn log(&mut self, log: &LogSection) -> LogSection {
        match log.format.as_str() {
            "text" | "json" => {}
            other => self.problem_help(
                "log.format",
                format!("unknown log format {other:?}"),
                "use \"text\" or \"json\"",
            ),
        }
        let destination = |text: &str| match text {
            "stdout" | "stderr" | "off" | "" | "-" => text.to_owned(),
            path => self.resolve(path).display().to_string(),
        };
        LogSection {
            decisions: destination(&log.decisions),
            admin_actions: match log.admin_actions.as_str() {
                "decisions" => "decisions".to_owned(),
                // The decision log's own file, named again: one writer, not two.
                other if destination(other) == destination(&log.decisions) => {
                    "decisions".to_owned()
                }
                other => destination(other),
            },
            ..log.clone()
        }
    }

    /// `[audit] mode`: true when denials are logged and let through.
    pub(super) fn audit(&mut self, audit: &AuditSection) -> bool {
        match audit.mode.as_deref() {
            None | Some("enforce") => false,
            Some("audit") => true,
            Some(other) => {
                self.problem_help(
                    "audit.mode",
                    format!("unknown mode {other:?}"),
                    "use \"enforce\" or \"audit\"",
                );
                false
            }
        }
    }
}
