//! Problems found in a configuration file, each pointing at the place that caused it.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

/// The text a problem points into.
#[derive(Debug)]
pub struct Source {
    pub name: String,
    pub text: String,
}

/// One thing wrong with the configuration.
#[derive(Debug, Clone)]
pub struct Problem {
    /// Byte range in the source; `None` when the problem is about the file as a whole.
    pub span: Option<Range<usize>>,
    pub message: String,
    pub help: Option<String>,
}

impl Problem {
    pub fn at(span: Option<Range<usize>>, message: impl Into<String>) -> Self {
        Self {
            span,
            message: message.into(),
            help: None,
        }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

/// Every problem found, rendered with line, column and the offending line.
#[derive(Debug)]
pub struct Problems {
    pub source: Arc<Source>,
    pub items: Vec<Problem>,
}

impl Problems {
    /// `items` in the order of the file, those about the file as a whole last; problems at
    /// the same place keep the order they were found in.
    pub fn in_file_order(source: Arc<Source>, mut items: Vec<Problem>) -> Self {
        items.sort_by_key(|p| p.span.as_ref().map_or(usize::MAX, |s| s.start));
        Self { source, items }
    }

    /// (line, column), both from 1, of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        line_col(&self.source.text, offset)
    }

    /// One line per problem: `file:line:col: message`, for logs and API answers.
    pub fn summary(&self) -> Vec<String> {
        self.items
            .iter()
            .map(|p| match &p.span {
                Some(span) => {
                    let (line, col) = self.line_col(span.start);
                    format!("{}:{line}:{col}: {}", self.source.name, p.message)
                }
                None => format!("{}: {}", self.source.name, p.message),
            })
            .collect()
    }
}

pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text.as_bytes()[..offset];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let col = text
        .get(line_start..offset)
        .map_or(offset - line_start, |s| s.chars().count())
        + 1;
    (line, col)
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        render(f, &self.source, "error", &self.items)?;
        let n = self.items.len();
        write!(
            f,
            "\n{n} problem{} in {}",
            if n == 1 { "" } else { "s" },
            self.source.name
        )
    }
}

/// Each of `items` as `label: message`, its location, the line with a caret, and its help.
fn render(
    f: &mut fmt::Formatter<'_>,
    source: &Source,
    label: &str,
    items: &[Problem],
) -> fmt::Result {
    let text = &source.text;
    for (i, p) in items.iter().enumerate() {
        if i > 0 {
            writeln!(f)?;
        }
        writeln!(f, "{label}: {}", p.message)?;
        match &p.span {
            Some(span) => {
                let (line, col) = line_col(text, span.start);
                writeln!(f, "  --> {}:{line}:{col}", source.name)?;
                if let Some(src_line) = text.lines().nth(line - 1) {
                    let gutter = line.to_string().len();
                    let width = span
                        .end
                        .saturating_sub(span.start)
                        .clamp(1, src_line.chars().count().saturating_sub(col - 1).max(1));
                    writeln!(f, "{:gutter$} |", "")?;
                    writeln!(f, "{line} | {src_line}")?;
                    writeln!(
                        f,
                        "{:gutter$} | {}{}",
                        "",
                        " ".repeat(col - 1),
                        "^".repeat(width)
                    )?;
                }
            }
            None => writeln!(f, "  --> {}", source.name)?,
        }
        if let Some(help) = &p.help {
            writeln!(f, "  = help: {help}")?;
        }
    }
    Ok(())
}

/// What a load found worth an operator's attention without making the configuration invalid
/// (a certificate expiring within `[tls] expiry_warning`, a route host the server certificate
/// does not name), pointing where problems point. `vigil check` prints them; they are kept
/// beside the snapshot they were found in.
#[derive(Debug)]
pub struct Warnings {
    pub source: Arc<Source>,
    pub items: Vec<Problem>,
    /// Problems `vigil check` reports (exit 1) although the snapshot loads and serves: a CRL
    /// past its `nextUpdate` with `enforce_crl_expiry`. Refusing it at start-up or reload
    /// would keep an older CRL, with fewer revocations, in force; serving it fails closed.
    pub for_check: Vec<Problem>,
}

impl Warnings {
    pub fn none() -> Self {
        Self {
            source: Arc::new(Source {
                name: String::new(),
                text: String::new(),
            }),
            items: Vec::new(),
            for_check: Vec::new(),
        }
    }
}

/// Every warning, each as a problem is shown but headed `warning:`, then their count; nothing
/// when there are none.
impl fmt::Display for Warnings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.items.is_empty() {
            return Ok(());
        }
        render(f, &self.source, "warning", &self.items)?;
        let n = self.items.len();
        write!(
            f,
            "\n{n} warning{} in {}",
            if n == 1 { "" } else { "s" },
            self.source.name
        )
    }
}

impl std::error::Error for Problems {}

/// "did you mean `x`?" for a misspelt key, when one known key is close enough.
pub fn suggest(unknown: &str, known: &[&str]) -> Option<String> {
    known
        .iter()
        .map(|k| (strsim::jaro_winkler(unknown, k), *k))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| format!("did you mean `{k}`?"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_count_from_one() {
        let text = "a = 1\nbb = 2\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 6), (2, 1));
        assert_eq!(line_col(text, 9), (2, 4));
    }

    #[test]
    fn suggestions_only_for_close_keys() {
        assert_eq!(
            suggest("upstrem", &["upstream", "host"]).as_deref(),
            Some("did you mean `upstream`?")
        );
        assert_eq!(suggest("zzz", &["upstream", "host"]), None);
    }
}
