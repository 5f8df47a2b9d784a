//! `[policy]` and the routes' `policy` and `shadow_policy`: the data documents read once,
//! every Rego file compiled once per load, each error reported where the configuration names
//! the file, with the file, line and column regorus gives.

use super::compiler::Compiler;
use super::schema::{PolicySection, RouteSection};
use crate::policy::Pattern;
use crate::policy::rego::{self, Limits, Rego};
use crate::posture::inventory::Inventory;
use regorus::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// What every route's policy is compiled with.
pub(super) struct Shared {
    data: Value,
    limits: Limits,
    inventory: Option<Arc<Inventory>>,
}

/// The most a `[policy] timeout` may be: an evaluation runs on a request's worker.
const MAX_TIMEOUT: Duration = Duration::from_secs(1);

impl Compiler<'_> {
    /// `[policy]`: its data documents, merged, and the limits of one evaluation.
    pub(super) fn policy_shared(
        &mut self,
        section: &PolicySection,
        inventory: Option<Arc<Inventory>>,
    ) -> Shared {
        let mut limits = Limits::default();
        if let Some(n) = section.max_instructions {
            if n == 0 {
                self.problem("policy.max_instructions", "must be more than zero");
            }
            limits.max_instructions = usize::try_from(n).unwrap_or(usize::MAX);
        }
        if let Some(t) = section.timeout {
            if t.0.is_zero() || t.0 > MAX_TIMEOUT {
                self.problem_help(
                    "policy.timeout",
                    "must be longer than zero and at most 1s",
                    "an evaluation holds a request's worker; a few milliseconds is plenty",
                );
            }
            limits.timeout = t.0;
        }
        let data = self.policy_data(&section.data);
        Shared {
            data,
            limits,
            inventory,
        }
    }

    /// The data documents, merged into one object.
    fn policy_data(&mut self, patterns: &[String]) -> Value {
        let mut data = Value::new_object();
        for (i, pattern) in patterns.iter().enumerate() {
            let key = format!("policy.data.{i}");
            for path in self.data_files(&key, pattern) {
                let shown = path.display().to_string();
                let text = match std::fs::read_to_string(&path) {
                    Ok(t) => t,
                    Err(e) => {
                        self.problem(&key, format!("{shown}: {}", crate::error::file_error(&e)));
                        continue;
                    }
                };
                let value = match rego::data_document(&text) {
                    Ok(v) => v,
                    Err(e) => {
                        self.problem(&key, format!("{shown}: {e}"));
                        continue;
                    }
                };
                if let Err(e) = rego::merge(&mut data, value, "data") {
                    self.problem(&key, format!("{shown}: {e}"));
                }
            }
        }
        if let Ok(map) = data.as_object()
            && map.contains_key(&Value::from("vigil"))
        {
            self.problem_help(
                "policy.data",
                "the data key `vigil` is Vigil's own (the device inventory is data.vigil.devices)",
                "put these documents under another top-level key",
            );
        }
        data
    }

    /// The files `pattern` names: itself, or the files of its directory whose name matches
    /// its last part (`*` within a name). Sorted, so merges are the same on every load.
    fn data_files(&mut self, key: &str, pattern: &str) -> Vec<PathBuf> {
        let path = self.resolve(pattern);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !name.contains('*') {
            return vec![self.file(pattern)];
        }
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        if dir.to_string_lossy().contains('*') {
            self.problem(key, "only the file name may have a `*`");
            return Vec::new();
        }
        let Ok(matcher) = Pattern::new(&name) else {
            self.problem(key, format!("{name:?} is not a file-name pattern"));
            return Vec::new();
        };
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) => {
                self.problem(
                    key,
                    format!("{}: {}", dir.display(), crate::error::file_error(&e)),
                );
                return Vec::new();
            }
        };
        let mut found: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .filter(|e| matcher.matches(&e.file_name().to_string_lossy()))
            .map(|e| e.path())
            .collect();
        found.sort();
        if found.is_empty() {
            self.warning(key, format!("{pattern:?} matches no file"));
        }
        for file in &found {
            self.file(&file.to_string_lossy());
        }
        found
    }

    /// A route's `policy` and `shadow_policy`, compiled.
    pub(super) fn route_policies(
        &mut self,
        at: &str,
        r: &RouteSection,
        shared: &Shared,
    ) -> (Option<Arc<Rego>>, Option<Arc<Rego>>) {
        if r.policy.is_none() && r.policy_query.is_some() {
            self.problem(&format!("{at}.policy_query"), "policy_query needs a policy");
        }
        if r.shadow_policy.is_none() && r.shadow_policy_query.is_some() {
            self.problem(
                &format!("{at}.shadow_policy_query"),
                "shadow_policy_query needs a shadow_policy",
            );
        }
        let enforced = r.policy.as_deref().and_then(|file| {
            self.rego(
                &format!("{at}.policy"),
                file,
                r.policy_query.as_deref(),
                shared,
            )
        });
        let shadow = r.shadow_policy.as_deref().and_then(|file| {
            self.rego(
                &format!("{at}.shadow_policy"),
                file,
                r.shadow_policy_query.as_deref(),
                shared,
            )
        });
        (enforced, shadow)
    }

    fn rego(
        &mut self,
        key: &str,
        file: &str,
        query: Option<&str>,
        shared: &Shared,
    ) -> Option<Arc<Rego>> {
        let path = self.file(file);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| self.problem(key, format!("{file}: {}", crate::error::file_error(&e))))
            .ok()?;
        let source = rego::Source {
            name: file.to_owned(),
            text,
        };
        let setting = rego::Setting {
            query,
            data: &shared.data,
            inventory: shared.inventory.clone(),
            limits: shared.limits,
        };
        match Rego::compile(&source, setting) {
            Ok(compiled) => {
                if !compiled.is_bytecode() {
                    self.warning(
                        key,
                        format!(
                            "{file}: regorus cannot compile this policy to bytecode yet; it runs on the interpreter (slower, and it sees the device inventory as of the last load)"
                        ),
                    );
                }
                Some(Arc::new(compiled))
            }
            Err(e) => {
                match e.snippet {
                    Some(snippet) => self.problem_help(key, e.message, snippet),
                    None => self.problem(key, e.message),
                }
                None
            }
        }
    }
}
