//! What every section's compilation shares: problems reported where they were written, the
//! files the configuration names, and the values several sections parse alike (addresses,
//! networks, patterns).

use super::Snapshot;
use super::diagnostics::Problem;
use super::load::Locator;
use crate::policy::Pattern;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One load in progress. Each section is compiled by a method in its own file; all of them
/// report here, so one run finds every problem.
pub(super) struct Compiler<'a> {
    /// Relative file paths are resolved against this.
    base: &'a Path,
    locator: &'a Locator,
    problems: &'a mut Vec<Problem>,
    /// Files read so far, for the watcher.
    files: RefCell<Vec<PathBuf>>,
    /// Worth saying, not wrong (see `diagnostics::Warnings`).
    pub warnings: Vec<Problem>,
    /// Problems for `vigil check` only (see `diagnostics::Warnings::for_check`).
    pub for_check: Vec<Problem>,
    /// The snapshot being replaced, whose provider, inventory and upstream pools may be kept.
    pub previous: Option<&'a Snapshot>,
}

impl<'a> Compiler<'a> {
    pub fn new(
        base: &'a Path,
        locator: &'a Locator,
        problems: &'a mut Vec<Problem>,
        previous: Option<&'a Snapshot>,
    ) -> Self {
        Self {
            base,
            locator,
            problems,
            files: RefCell::new(Vec::new()),
            warnings: Vec::new(),
            for_check: Vec::new(),
            previous,
        }
    }
}

impl Compiler<'_> {
    /// A problem with the value at `path` (a dotted path such as `route.0.allow.1.spiffe.0`).
    pub fn problem(&mut self, path: &str, message: impl Into<String>) {
        let span = self.span(path);
        self.problems.push(Problem::at(span, message));
    }

    pub fn problem_help(
        &mut self,
        path: &str,
        message: impl Into<String>,
        help: impl Into<String>,
    ) {
        let span = self.span(path);
        self.problems
            .push(Problem::at(span, message).with_help(help));
    }

    /// A warning about the value at `path`: worth saying, but the configuration is valid.
    pub fn warning(&mut self, path: &str, message: impl Into<String>) {
        let span = self.span(path);
        self.warnings.push(Problem::at(span, message));
    }

    /// A problem with the value at `path` that `vigil check` reports but a load accepts.
    pub fn check_problem(&mut self, path: &str, message: impl Into<String>, help: &str) {
        let span = self.span(path);
        self.for_check
            .push(Problem::at(span, message).with_help(help));
    }

    /// A problem that is not about one value (a section missing altogether).
    pub fn report(&mut self, problem: Problem) {
        self.problems.push(problem);
    }

    /// Where the value at `path` is written.
    pub fn span(&self, path: &str) -> Option<Range<usize>> {
        self.locator.value(path)
    }

    /// How many problems have been reported so far: a section compares it before and after
    /// to know whether it found any.
    pub fn reported(&self) -> usize {
        self.problems.len()
    }

    /// Reports every duration in `list` that is zero.
    pub fn longer_than_zero(&mut self, list: &[(&str, Duration)]) {
        for (key, d) in list {
            if d.is_zero() {
                self.problem(key, "must be longer than zero");
            }
        }
    }

    /// A path the configuration names, resolved against its directory.
    pub fn resolve(&self, value: &str) -> PathBuf {
        self.base.join(value)
    }

    /// The path of a file the configuration names, resolved and remembered for the watcher.
    pub fn file(&self, value: &str) -> PathBuf {
        let path = self.resolve(value);
        self.files.borrow_mut().push(path.clone());
        path
    }

    /// Every file read, each once.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files = self.files.take();
        files.sort();
        files.dedup();
        files
    }

    /// The bytes of an optional file setting, reporting a read error at `key`.
    pub fn optional_file(&mut self, key: &str, value: Option<&String>) -> Option<Vec<u8>> {
        let value = value?;
        std::fs::read(self.file(value))
            .map_err(|e| self.problem(key, format!("{value}: {}", crate::error::file_error(&e))))
            .ok()
    }

    pub fn socket_addr(&mut self, key: &str, text: &str) -> Option<SocketAddr> {
        match text.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.problem_help(
                    key,
                    format!("{text:?} is not an IP address and port"),
                    "write it like \"127.0.0.1:8443\" or \"[::]:8443\"",
                );
                None
            }
        }
    }

    /// Networks in CIDR form (a bare address is its own /32 or /128), each problem reported at
    /// `key.i`.
    pub fn networks(&mut self, key: &str, list: &[String]) -> Vec<ipnet::IpNet> {
        let mut nets = Vec::with_capacity(list.len());
        for (i, n) in list.iter().enumerate() {
            match n
                .parse::<ipnet::IpNet>()
                .or_else(|_| n.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            {
                Ok(net) => nets.push(net.trunc()),
                Err(_) => self.problem_help(
                    &format!("{key}.{i}"),
                    format!("{n:?} is not a network"),
                    "write it in CIDR form, like \"10.0.0.0/8\"",
                ),
            }
        }
        nets
    }

    pub fn pattern(&mut self, key: &str, text: &str) -> Option<Pattern> {
        Pattern::new(text).map_err(|e| self.problem(key, e)).ok()
    }
}
