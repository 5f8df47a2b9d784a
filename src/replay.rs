//! `vigil policy replay`: every decision of a decision log decided again, from the `facts` its
//! line carries, under another configuration, and the requests whose outcome would change.
//!
//! The log is read one line at a time, so a large log takes no more memory than its longest
//! line; each change is handed to the caller as it is found. The facts go through the same
//! [`policy::decide`] as a request (by way of [`explain::prepare`]), so a replay under the
//! configuration that wrote the log changes nothing.

use crate::canonical::{normalize_host, normalize_path};
use crate::config::Snapshot;
use crate::explain;
use crate::policy::facts::Document;
use crate::policy::{self, Decision};
use crate::posture::inventory::Source;
use crate::reason::Reason;
use serde::{Deserialize, Serialize};
use std::io::BufRead;

/// A decision line as replay reads it: what it reports of the request and the decision, and
/// the facts. Every field may be missing (a line of another kind, or of an older version).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Line {
    kind: Option<String>,
    time: Option<String>,
    request_id: Option<String>,
    route: Option<String>,
    host: Option<String>,
    method: Option<String>,
    path: Option<String>,
    subject: Option<String>,
    user: Option<String>,
    decision: Option<String>,
    outcome: Option<String>,
    reasons: Vec<String>,
    codes: Vec<String>,
    facts: Option<Document>,
}

/// One request whose outcome would change.
#[derive(Debug, Serialize)]
pub struct Change {
    /// The line number in the log, from 1.
    pub line: usize,
    pub time: Option<String>,
    pub request_id: Option<String>,
    pub route: Option<String>,
    pub host: Option<String>,
    pub method: Option<String>,
    pub path: Option<String>,
    /// The client certificate's subject.
    pub subject: Option<String>,
    /// The signed-in person (email, else subject), when there was one.
    pub user: Option<String>,
    pub logged: Logged,
    pub new: New,
}

/// What the log says was decided.
#[derive(Debug, Serialize)]
pub struct Logged {
    pub outcome: String,
    pub reasons: Vec<String>,
    pub codes: Vec<String>,
}

/// What the new configuration decides.
#[derive(Debug, Serialize)]
pub struct New {
    pub outcome: &'static str,
    /// The route the new configuration routes the request to.
    pub route: Option<String>,
    /// The rule (from 1) that allows it.
    pub rule: Option<usize>,
    pub reasons: Vec<Reason>,
    #[serde(serialize_with = "crate::reason::codes")]
    pub codes: Vec<Reason>,
}

/// What a replay read.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Summary {
    /// Every line of the log, blank ones included.
    pub lines: usize,
    /// Decision lines decided again.
    pub decisions: usize,
    /// Those whose outcome would change.
    pub changed: usize,
    pub skipped: Skipped,
    /// True when device records are those logged, not looked up: the new configuration's
    /// inventory is an `https://` source, which replay does not fetch.
    pub devices_as_logged: bool,
}

/// Lines not decided again, by why.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Skipped {
    /// Other kinds of line (admin actions), and lines that are not JSON objects with a `kind`.
    pub not_decisions: usize,
    /// Decision lines without `facts`: answered before policy decided (malformed, no route, no
    /// sign-in, Vigil's own endpoints), written with `[log] decision_facts = false`, or by a
    /// version of Vigil before facts were logged.
    pub without_facts: usize,
    pub blank: usize,
}

impl Skipped {
    pub fn total(&self) -> usize {
        self.not_decisions + self.without_facts + self.blank
    }
}

/// Why a log cannot be replayed; each names the line.
#[derive(Debug, thiserror::Error)]
pub enum Unreadable {
    #[error("line {line}: cannot be read: {error}")]
    Io { line: usize, error: std::io::Error },
    #[error("line {line}: not JSON: {error}")]
    NotJson {
        line: usize,
        error: serde_json::Error,
    },
    /// A decision line whose `facts` are not a facts document: edited, or from a newer Vigil.
    #[error("line {line}: a decision line Vigil cannot read: {error}")]
    Decision { line: usize, error: String },
}

impl Unreadable {
    /// The line it is about, from 1.
    pub fn line(&self) -> usize {
        match self {
            Unreadable::Io { line, .. }
            | Unreadable::NotJson { line, .. }
            | Unreadable::Decision { line, .. } => *line,
        }
    }
}

/// Replays every line of `log` under `snapshot`, calling `changed` for each decision whose
/// outcome would change, in log order.
pub fn replay(
    snapshot: &Snapshot,
    mut log: impl BufRead,
    mut changed: impl FnMut(&Change),
) -> Result<Summary, Unreadable> {
    let mut summary = Summary {
        devices_as_logged: snapshot
            .devices
            .as_ref()
            .is_some_and(|d| !matches!(d.settings.source, Source::File(_))),
        ..Summary::default()
    };
    let mut text = String::new();
    loop {
        text.clear();
        let line = summary.lines + 1;
        match log.read_line(&mut text) {
            Ok(0) => return Ok(summary),
            Ok(_) => {}
            Err(error) => return Err(Unreadable::Io { line, error }),
        }
        summary.lines = line;
        if text.trim().is_empty() {
            summary.skipped.blank += 1;
            continue;
        }
        let mut value: Line = match serde_json::from_str(&text) {
            Ok(value) => value,
            Err(error) if error.is_data() => read_as_json(&text, line, error)?,
            Err(error) => return Err(Unreadable::NotJson { line, error }),
        };
        if value.kind.as_deref() != Some("decision") {
            summary.skipped.not_decisions += 1;
            continue;
        }
        let Some(facts) = value.facts.take() else {
            summary.skipped.without_facts += 1;
            continue;
        };
        summary.decisions += 1;
        let decision = decide(snapshot, facts).map_err(|error| Unreadable::Decision {
            line,
            error: error.to_string(),
        })?;
        let logged = value
            .outcome
            .clone()
            .or_else(|| value.decision.clone())
            .unwrap_or_default();
        if decision.0.outcome.as_str() != logged {
            summary.changed += 1;
            changed(&change(line, value, logged, decision));
        }
    }
}

/// A line that is JSON but not shaped like a decision line: an other kind's line is skipped
/// (its fields may mean something else), a decision line's is an error.
fn read_as_json(text: &str, line: usize, error: serde_json::Error) -> Result<Line, Unreadable> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|error| Unreadable::NotJson { line, error })?;
    if value.get("kind").and_then(|k| k.as_str()) == Some("decision") {
        return Err(Unreadable::Decision {
            line,
            error: error.to_string(),
        });
    }
    Ok(Line::default())
}

/// The logged facts decided under `snapshot`: routed again by host and path, the device looked
/// up in the new configuration's inventory (when it is a file), the logged risk kept (it holds
/// the server's run-time memory: recent denials, first-seen devices).
fn decide(
    snapshot: &Snapshot,
    mut doc: Document,
) -> Result<(Decision, Option<String>), explain::Undecidable> {
    use explain::Undecidable;
    doc.request.host =
        normalize_host(&doc.request.host).map_err(|e| Undecidable::Host(e.reason()))?;
    doc.request.path = normalize_path(&doc.request.path)
        .map_err(|e| Undecidable::Path(e.reason()))?
        .into_owned();
    doc.request.route = None;
    match &snapshot.devices {
        None => doc.device = None,
        Some(inventory) if matches!(inventory.settings.source, Source::File(_)) => {
            doc.device = inventory.lookup(&doc.certificate);
        }
        Some(_) => {}
    }
    let now = doc.time.unwrap_or(0);
    explain::prepare(snapshot, &mut doc, now);
    let decision = policy::decide(&snapshot.policy, &doc.facts(now));
    Ok((decision, doc.request.route))
}

fn change(
    line: usize,
    value: Line,
    logged: String,
    (decision, route): (Decision, Option<String>),
) -> Change {
    Change {
        line,
        time: value.time,
        request_id: value.request_id,
        route: value.route,
        host: value.host,
        method: value.method,
        path: value.path,
        subject: value.subject,
        user: value.user,
        logged: Logged {
            outcome: logged,
            reasons: value.reasons,
            codes: value.codes,
        },
        new: New {
            outcome: decision.outcome.as_str(),
            route,
            rule: decision.rule.map(|i| i + 1),
            codes: decision.reasons.clone(),
            reasons: decision.reasons,
        },
    }
}

impl Change {
    /// The change for people: the request on one line (who: the person on the certificate's
    /// subject, or the subject alone), the logged and the new decision indented under it.
    pub fn text(&self) -> String {
        let or = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
        let who = match (&self.user, &self.subject) {
            (Some(user), Some(subject)) => format!("{user} on {subject}"),
            (None, Some(subject)) => subject.clone(),
            (Some(user), None) => user.clone(),
            (None, None) => "-".to_owned(),
        };
        let logged: Vec<String> = self
            .logged
            .reasons
            .iter()
            .zip(&self.logged.codes)
            .map(|(r, c)| format!("{r} [{c}]"))
            .collect();
        let new: Vec<String> = self
            .new
            .reasons
            .iter()
            .map(|r| format!("{} [{}]", r.text, r.code))
            .collect();
        format!(
            "line {}: {} {} route {} {} {}{} by {}\n  logged: {}: {}\n  new:    {}: {}\n",
            self.line,
            or(&self.time),
            or(&self.request_id),
            or(&self.route),
            or(&self.method),
            or(&self.host),
            or(&self.path),
            who,
            self.logged.outcome,
            logged.join("; "),
            self.new.outcome,
            new.join("; "),
        )
    }
}

impl Summary {
    /// The last line of the text report.
    pub fn text(&self) -> String {
        let mut out = format!(
            "{} decision{} replayed, {} would change; {} line{} skipped",
            self.decisions,
            if self.decisions == 1 { "" } else { "s" },
            self.changed,
            self.skipped.total(),
            if self.skipped.total() == 1 { "" } else { "s" },
        );
        let s = &self.skipped;
        let mut why = Vec::new();
        if s.not_decisions > 0 {
            why.push(format!("{} not decisions (admin actions)", s.not_decisions));
        }
        if s.without_facts > 0 {
            why.push(format!(
                "{} decision{} without facts (answered before policy decided, logged with decision_facts = false, or by a version before facts were logged)",
                s.without_facts,
                if s.without_facts == 1 { "" } else { "s" },
            ));
        }
        if s.blank > 0 {
            why.push(format!("{} blank", s.blank));
        }
        if !why.is_empty() {
            out.push_str(&format!(": {}", why.join(", ")));
        }
        if self.devices_as_logged {
            out.push_str("; device records as logged: the https device inventory is not fetched");
        }
        out
    }
}
