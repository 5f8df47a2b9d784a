//! `vigil policy test`: the `test_*` rules of Rego files, run as `opa test` runs them.
//!
//! Every `.rego` file under the given paths is loaded into one engine, with every `.json`
//! file there merged under `data` (as `[policy] data` merges them); each rule whose name
//! starts with `test_` is then evaluated, `with` overrides and all, on regorus's interpreter.
//! A test passes when its value is `true`; `false`, undefined or an error fails it.

use crate::policy::rego;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One test's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The file that defines the test.
    pub file: String,
    /// `data.<package>.test_<name>`.
    pub name: String,
    pub passed: bool,
    /// Why it failed: `false`, `undefined`, or the error with file, line and column.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    pub micros: u64,
}

/// What a run found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub tests: Vec<Outcome>,
    pub passed: usize,
    pub failed: usize,
}

/// The policy files could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LoadError(pub String);

/// How long one test may run: a test is not on a request's path, but must not hang a CI job.
const TEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the tests of the files under `paths` (files or directories, searched recursively).
pub fn run(paths: &[PathBuf]) -> Result<Report, LoadError> {
    let (policies, data) = files(paths)?;
    if policies.is_empty() {
        return Err(LoadError("no .rego file under the given paths".to_owned()));
    }
    let limits = rego::Limits {
        max_instructions: usize::MAX,
        timeout: TEST_TIMEOUT,
    };
    let mut engine = rego::engine(limits);
    let mut tests = Vec::new();
    for path in &policies {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| LoadError(format!("{shown}: {}", crate::error::file_error(&e))))?;
        let package = engine
            .add_policy(shown.clone(), text.clone())
            .map_err(|e| LoadError(rego::error_text(&e)))?;
        for name in test_names(&text) {
            let rule = format!("{package}.{name}");
            if !tests.iter().any(|(_, r): &(String, String)| *r == rule) {
                tests.push((shown.clone(), rule));
            }
        }
    }
    let mut merged = regorus::Value::new_object();
    for path in &data {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| LoadError(format!("{shown}: {}", crate::error::file_error(&e))))?;
        let value = rego::data_document(&text).map_err(|e| LoadError(format!("{shown}: {e}")))?;
        rego::merge(&mut merged, value, "data").map_err(|e| LoadError(format!("{shown}: {e}")))?;
    }
    engine
        .add_data(merged)
        .map_err(|e| LoadError(rego::error_text(&e)))?;
    let mut outcomes = Vec::with_capacity(tests.len());
    for (file, name) in tests {
        let started = Instant::now();
        let result = engine.eval_rule(name.clone());
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let failure = match result {
            Ok(regorus::Value::Bool(true)) => None,
            Ok(regorus::Value::Bool(false)) => Some("false".to_owned()),
            Ok(regorus::Value::Undefined) => Some("undefined".to_owned()),
            Ok(other) => Some(format!("{other}, not true")),
            Err(e) => Some(rego::error_text(&e)),
        };
        outcomes.push(Outcome {
            file,
            name,
            passed: failure.is_none(),
            failure,
            micros,
        });
    }
    let passed = outcomes.iter().filter(|o| o.passed).count();
    Ok(Report {
        failed: outcomes.len() - passed,
        passed,
        tests: outcomes,
    })
}

impl Report {
    /// As `opa test` prints it: failures in full, then the count.
    pub fn text(&self, verbose: bool) -> String {
        let mut out = String::new();
        let mut file = "";
        for t in &self.tests {
            if t.passed && !verbose {
                continue;
            }
            if t.file != file {
                file = &t.file;
                out.push_str(&format!("{file}:\n"));
            }
            match &t.failure {
                None => out.push_str(&format!("{}: PASS ({}µs)\n", t.name, t.micros)),
                Some(why) => out.push_str(&format!("{}: FAIL ({why})\n", t.name)),
            }
        }
        if !out.is_empty() {
            out.push_str("--------------------------------------------------------------------------------\n");
        }
        if self.tests.is_empty() {
            out.push_str("no test_ rules found\n");
        } else if self.failed == 0 {
            out.push_str(&format!("PASS: {}/{}\n", self.passed, self.tests.len()));
        } else {
            out.push_str(&format!(
                "PASS: {}/{}\nFAIL: {}/{}\n",
                self.passed,
                self.tests.len(),
                self.failed,
                self.tests.len()
            ));
        }
        out
    }
}

/// The names of the rules a file defines whose name starts with `test_`: a rule head starts
/// its line.
fn test_names(text: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for line in text.lines() {
        if !line.starts_with("test_") {
            continue;
        }
        let name: String = line
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// The `.rego` and `.json` files under `paths`, each list sorted.
fn files(paths: &[PathBuf]) -> Result<(Vec<PathBuf>, Vec<PathBuf>), LoadError> {
    let mut policies = Vec::new();
    let mut data = Vec::new();
    for path in paths {
        walk(path, &mut policies, &mut data, 0)?;
    }
    policies.sort();
    data.sort();
    Ok((policies, data))
}

fn walk(
    path: &Path,
    policies: &mut Vec<PathBuf>,
    data: &mut Vec<PathBuf>,
    depth: usize,
) -> Result<(), LoadError> {
    let meta = std::fs::metadata(path).map_err(|e| {
        LoadError(format!(
            "{}: {}",
            path.display(),
            crate::error::file_error(&e)
        ))
    })?;
    if meta.is_file() {
        match path.extension().and_then(|e| e.to_str()) {
            Some("rego") => policies.push(path.to_path_buf()),
            Some("json") => data.push(path.to_path_buf()),
            _ => {}
        }
        return Ok(());
    }
    // Deep enough for any policy tree; a loop of links ends here.
    if depth > 16 {
        return Ok(());
    }
    let entries = std::fs::read_dir(path).map_err(|e| {
        LoadError(format!(
            "{}: {}",
            path.display(),
            crate::error::file_error(&e)
        ))
    })?;
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        walk(&entry.path(), policies, data, depth + 1)?;
    }
    Ok(())
}
