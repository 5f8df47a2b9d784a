//! One JSON line per decision, written off the request path by a dedicated thread.
//!
//! Requests append their finished line to a shared buffer and move on; the writer thread
//! wakes every [`FLUSH_EVERY`] (or when the buffer passes [`FLUSH_AT`]) and writes the batch
//! with one system call. Waking the writer for every line costs two context switches per
//! request, which is more than the rest of the request's work. If the writer falls behind (a
//! full disk, a blocked pipe) and the buffer reaches [`LIMIT`], lines are counted in
//! `vigil_decision_log_dropped_total` rather than stalling traffic.

use crate::metrics::Metrics;
use crate::reason::Reason;
use serde::Serialize;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// The longest a decision line waits before it is written.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// A batch this large is written at once.
pub const FLUSH_AT: usize = 256 * 1024;
/// Past this much unwritten data, new lines are dropped (and counted).
pub const LIMIT: usize = 16 * 1024 * 1024;

/// Where decision lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Stdout,
    Stderr,
    File(PathBuf),
    Off,
}

impl Target {
    pub fn parse(text: &str) -> Self {
        match text {
            "stdout" | "-" => Target::Stdout,
            "stderr" => Target::Stderr,
            "off" | "" => Target::Off,
            path => Target::File(PathBuf::from(path)),
        }
    }
}

/// The version of the lines' shape, written as `v`. It changes only if a field changes
/// meaning or is removed; adding fields keeps it.
pub const SCHEMA: u32 = 1;

/// One decision, as logged. Field names are part of the operator contract (docs/decision-log.md).
#[derive(Debug, Serialize)]
pub struct Entry<'a> {
    /// [`SCHEMA`].
    pub v: u32,
    /// `decision`: what sets these lines apart from others in the same log (audit events).
    pub kind: &'static str,
    pub time: String,
    pub request_id: &'a str,
    pub route: Option<&'a str>,
    pub host: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    /// The `User-Agent` header, at most [`MAX_USER_AGENT`] bytes; `null` when absent.
    pub user_agent: Option<&'a str>,
    /// The client's address.
    pub client: &'a str,
    /// The TLS version of the connection, `TLSv1.3` or `TLSv1.2`.
    pub tls: Option<&'a str>,
    /// SHA-256 fingerprint of the client certificate.
    pub device: &'a str,
    pub subject: &'a str,
    pub workload: Option<&'a str>,
    pub user: Option<&'a str>,
    pub groups: &'a [String],
    pub decision: &'a str,
    /// What policy decided (`allow`, `deny`, `audit`, `step_up`), on the lines of requests
    /// that got as far as the decision; absent otherwise. Unlike `decision`, it is what
    /// `vigil policy replay` compares: a request policy allowed and Vigil then refused (a body
    /// too large) has `decision` `deny` and `outcome` `allow`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<&'a str>,
    /// Why, for people: texts that may be reworded between releases.
    pub reasons: &'a [Reason],
    /// The stable code of each reason, in the same order (docs/decision-log.md lists them).
    #[serde(serialize_with = "crate::reason::codes")]
    pub codes: &'a [Reason],
    /// Who probably caused a refusal or an error: `client`, `policy`, `upstream` or `internal`;
    /// absent on an answer that is neither.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<&'a str>,
    /// "enforce" or "audit".
    pub mode: &'a str,
    /// Risk level, score and the signals behind it, when `[risk]` is configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub risk: Option<&'a crate::posture::Assessment>,
    /// The route's upstream (`host:port`), when the request was sent there; absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<&'a str>,
    /// The upstream endpoint (`ip:port`) that answered, when one did; absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<&'a str>,
    /// The route's Rego policy and what it answered, when it was evaluated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<&'a crate::policy::PolicyRun>,
    /// What the route's shadow policy would have decided, when it disagrees.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<&'a crate::policy::Shadow>,
    /// The just-in-time grant the allow rested on, when one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant: Option<&'a str>,
    /// The `[authz]` enforcement point the decision was made for; absent on requests Vigil
    /// answered for itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enforcement_point: Option<&'a str>,
    pub status: u16,
    pub latency_ms: f64,
}

impl Entry<'_> {
    /// Writes the line's JSON object, exactly as its `Serialize` would (a test holds the two
    /// equal), without serde's work per field: every request writes one. The field names are
    /// written as they are; values are escaped as JSON needs.
    pub fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        let mut o = Fields { out, first: true };
        o.value("v", &self.v)?;
        o.str("kind", self.kind);
        o.str("time", &self.time);
        o.str("request_id", self.request_id);
        o.opt_str("route", self.route);
        o.str("host", self.host);
        o.str("method", self.method);
        o.str("path", self.path);
        o.opt_str("user_agent", self.user_agent);
        o.str("client", self.client);
        o.opt_str("tls", self.tls);
        o.str("device", self.device);
        o.str("subject", self.subject);
        o.opt_str("workload", self.workload);
        o.opt_str("user", self.user);
        o.key("groups");
        o.strs(self.groups.iter().map(String::as_str));
        o.str("decision", self.decision);
        o.some_str("outcome", self.outcome);
        o.key("reasons");
        o.strs(self.reasons.iter().map(|r| r.text.as_ref()));
        o.key("codes");
        o.strs(self.codes.iter().map(|r| r.code.as_str()));
        o.some_str("fault", self.fault);
        o.str("mode", self.mode);
        o.some_value("risk", self.risk)?;
        o.some_str("upstream", self.upstream);
        o.some_str("endpoint", self.endpoint);
        o.some_value("policy", self.policy)?;
        o.some_value("shadow", self.shadow)?;
        o.some_str("grant", self.grant);
        o.some_str("enforcement_point", self.enforcement_point);
        o.value("status", &self.status)?;
        o.value("latency_ms", &self.latency_ms)?;
        o.out.push(b'}');
        Ok(())
    }
}

/// A JSON object being written: the fields so far, without the closing brace.
struct Fields<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl Fields<'_> {
    /// `"key":`, after a comma unless it is the first field. Keys are this file's own names:
    /// nothing in them needs escaping.
    fn key(&mut self, key: &str) {
        self.out.push(if self.first { b'{' } else { b',' });
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    fn str(&mut self, key: &str, value: &str) {
        self.key(key);
        json_string(self.out, value);
    }

    fn opt_str(&mut self, key: &str, value: Option<&str>) {
        match value {
            Some(value) => self.str(key, value),
            None => {
                self.key(key);
                self.out.extend_from_slice(b"null");
            }
        }
    }

    /// The field when there is a value; none otherwise.
    fn some_str(&mut self, key: &str, value: Option<&str>) {
        if let Some(value) = value {
            self.str(key, value);
        }
    }

    /// The field when there is a value; none otherwise.
    fn some_value<T: Serialize>(&mut self, key: &str, value: Option<&T>) -> serde_json::Result<()> {
        match value {
            Some(value) => self.value(key, value),
            None => Ok(()),
        }
    }

    /// An array of strings.
    fn strs<'s>(&mut self, values: impl Iterator<Item = &'s str>) {
        self.out.push(b'[');
        for (i, value) in values.enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            json_string(self.out, value);
        }
        self.out.push(b']');
    }

    fn value<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> serde_json::Result<()> {
        self.key(key);
        serde_json::to_writer(&mut *self.out, value)
    }
}

/// `text` as a JSON string. Most texts need no escape (no control character, quote or
/// backslash) and are copied as they are; the others are escaped by serde_json.
fn json_string(out: &mut Vec<u8>, text: &str) {
    if !needs_escape(text.as_bytes()) {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else if serde_json::to_writer(&mut *out, text).is_err() {
        // Writing a string into a Vec cannot fail; should it, the line stays valid JSON.
        out.extend_from_slice(b"null");
    }
}

/// Whether `bytes` hold a control character, a quote or a backslash: what a JSON string must
/// escape. Eight bytes at a time (a byte below 0x20, or equal to `"` or `\\`, sets its top
/// bit in the word's test), the rest one by one.
fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    let zero_in = |w: u64| w.wrapping_sub(ONES) & !w & HIGHS;
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let mut w = [0; 8];
        w.copy_from_slice(word);
        let w = u64::from_ne_bytes(w);
        let control = w.wrapping_sub(ONES * 0x20) & !w & HIGHS;
        if control | zero_in(w ^ (ONES * u64::from(b'"'))) | zero_in(w ^ (ONES * u64::from(b'\\')))
            != 0
        {
            return true;
        }
    }
    words
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

/// Lines waiting to be written, and whether the log is closing.
#[derive(Default)]
struct Pending {
    buffer: Vec<u8>,
    closed: bool,
}

struct Queue {
    pending: Mutex<Pending>,
    ready: Condvar,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Handle for writing decision lines (and the admin actions that share their destination);
/// cheap to clone.
#[derive(Clone)]
pub struct DecisionLog {
    queue: Option<Arc<Queue>>,
    metrics: Arc<Metrics>,
}

impl DecisionLog {
    /// Opens the target (a file is created or appended to) and starts the writer thread.
    pub fn open(target: &Target, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let mut out: Box<dyn Write + Send> = match target {
            Target::Off => {
                return Ok(Self {
                    queue: None,
                    metrics,
                });
            }
            Target::Stdout => Box::new(std::io::stdout()),
            Target::Stderr => Box::new(std::io::stderr()),
            Target::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        };
        let queue = Arc::new(Queue {
            pending: Mutex::new(Pending::default()),
            ready: Condvar::new(),
            writer: Mutex::new(None),
        });
        let writer = queue.clone();
        let handle = std::thread::Builder::new()
            .name("vigil-decisions".into())
            .spawn(move || {
                let mut batch = Vec::with_capacity(FLUSH_AT);
                loop {
                    let closed = {
                        let Ok(mut pending) = writer.pending.lock() else {
                            return;
                        };
                        if pending.buffer.is_empty() && !pending.closed {
                            pending = match writer.ready.wait_timeout(pending, FLUSH_EVERY) {
                                Ok((guard, _)) => guard,
                                Err(_) => return,
                            };
                        }
                        std::mem::swap(&mut batch, &mut pending.buffer);
                        pending.closed
                    };
                    if !batch.is_empty() {
                        if let Err(e) = out.write_all(&batch).and_then(|()| out.flush()) {
                            tracing::error!(error = %e, "decision log write failed");
                        }
                        batch.clear();
                    }
                    if closed {
                        return;
                    }
                    // Let lines gather: one write per interval, not one per request.
                    std::thread::sleep(FLUSH_EVERY);
                }
            })?;
        if let Ok(mut slot) = queue.writer.lock() {
            *slot = Some(handle);
        }
        Ok(Self {
            queue: Some(queue),
            metrics,
        })
    }

    /// Queues a line bound for the same destination as the decisions (an audit event).
    pub fn record<T: Serialize>(&self, line: &T) {
        self.queue_line(|out| serde_json::to_writer(out, line), None);
    }

    /// Queues one decision line, with `facts` (a JSON object, already serialised when the
    /// decision was made) as its last field.
    pub fn record_with_facts(&self, entry: &Entry<'_>, facts: Option<&[u8]>) {
        self.queue_line(|out| entry.write_json(out), facts);
    }

    fn queue_line(
        &self,
        write: impl FnOnce(&mut Vec<u8>) -> serde_json::Result<()>,
        facts: Option<&[u8]>,
    ) {
        let Some(queue) = &self.queue else { return };
        let Ok(mut pending) = queue.pending.lock() else {
            return;
        };
        // Written in place: the writer thread takes the lock only to swap buffers.
        let start = pending.buffer.len();
        if !encode(&mut pending.buffer, write, facts) {
            pending.buffer.truncate(start);
            return;
        }
        if pending.buffer.len() > LIMIT {
            pending.buffer.truncate(start);
            drop(pending);
            self.metrics.decision_log_dropped.inc();
            return;
        }
        if pending.buffer.len() >= FLUSH_AT {
            queue.ready.notify_one();
        }
    }

    /// Writes what is pending and stops the writer (on shutdown); returns once it is written.
    pub fn close(&self) {
        let Some(queue) = &self.queue else { return };
        if let Ok(mut pending) = queue.pending.lock() {
            pending.closed = true;
            queue.ready.notify_one();
        }
        let handle = queue.writer.lock().ok().and_then(|mut slot| slot.take());
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

/// Appends one line to `out`: `entry` as a JSON object, with `facts` spliced in as its last
/// field, and the newline. False when the entry cannot be serialised (logged); what was
/// appended is then the caller's to take back.
fn encode(
    out: &mut Vec<u8>,
    write: impl FnOnce(&mut Vec<u8>) -> serde_json::Result<()>,
    facts: Option<&[u8]>,
) -> bool {
    let start = out.len();
    if let Err(e) = write(out) {
        tracing::error!(error = %e, "decision log entry not serialisable");
        return false;
    }
    if let Some(facts) = facts
        && out.last() == Some(&b'}')
    {
        out.pop();
        if out.len() > start + 1 {
            out.push(b',');
        }
        out.extend_from_slice(b"\"facts\":");
        out.extend_from_slice(facts);
        out.push(b'}');
    }
    out.push(b'\n');
    true
}

/// Longest `user_agent` written, in bytes; a longer one is cut and ends in `…`.
pub const MAX_USER_AGENT: usize = 256;

/// `text`, cut to at most `max` bytes (on a character boundary) and marked with `…` when cut:
/// what a line holds of what a client sent, so a long header cannot make long lines.
pub fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// `elapsed` in milliseconds, rounded to the microsecond, as `latency_ms` is written:
/// `4.351`, never `4.3508260000000005`. The division is exact to the nearest double, so the
/// shortest decimal that reads back as it has at most three decimals.
pub fn millis(elapsed: Duration) -> f64 {
    let micros = elapsed.as_nanos().saturating_add(500) / 1000;
    micros as f64 / 1000.0
}

/// Now, as RFC 3339 with milliseconds, UTC.
pub fn now_rfc3339() -> String {
    rfc3339_millis(std::time::SystemTime::now())
}

/// `time` as RFC 3339 with milliseconds, UTC (`2026-12-04T23:05:09.120Z`), as
/// `humantime::format_rfc3339_millis` writes it, written by hand: this runs on every
/// decision line. A time before 1970 or after 9999 is written as the nearest of those.
fn rfc3339_millis(time: std::time::SystemTime) -> String {
    let since = time
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .min(std::time::Duration::from_millis(253_402_300_799_999));
    let secs = since.as_secs();
    let (days, of_day) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    let mut out = String::with_capacity(24);
    let mut digits = |n: u64, width: u32, after: char| {
        for i in (0..width).rev() {
            out.push(char::from(b'0' + (n / 10u64.pow(i) % 10) as u8));
        }
        out.push(after);
    };
    digits(year, 4, '-');
    digits(month, 2, '-');
    digits(day, 2, 'T');
    digits(of_day / 3600, 2, ':');
    digits(of_day / 60 % 60, 2, ':');
    digits(of_day % 60, 2, '.');
    digits(u64::from(since.subsec_millis()), 3, 'Z');
    out
}

/// The proleptic Gregorian (year, month, day) of a count of days since 1970-01-01
/// (Howard Hinnant's `civil_from_days`, for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reason::Code;
    use std::net::IpAddr;

    #[test]
    fn timestamps_are_written_as_humantime_writes_them() {
        use std::time::{Duration, UNIX_EPOCH};
        // Leap days, ends of months and years, the epoch and the last second written.
        let mut secs: Vec<u64> = vec![
            0,
            951_782_400,
            951_868_799,
            1_709_164_800,
            4_107_542_399,
            253_402_300_799,
        ];
        // And a day every 37 days and a few hours, from 1970 to past 2400.
        secs.extend((0..4_000u64).map(|i| i * (37 * 86_400 + 12_345)));
        for s in secs {
            for millis in [0, 7, 999] {
                let t = UNIX_EPOCH + Duration::from_secs(s) + Duration::from_millis(millis);
                assert_eq!(
                    rfc3339_millis(t),
                    humantime::format_rfc3339_millis(t).to_string(),
                    "{s}.{millis}"
                );
            }
        }
    }

    /// A decision line read back, to write it again as [`Entry`].
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Line {
        v: u32,
        kind: String,
        time: String,
        request_id: String,
        route: Option<String>,
        host: String,
        method: String,
        path: String,
        user_agent: Option<String>,
        client: IpAddr,
        tls: Option<String>,
        device: String,
        subject: String,
        workload: Option<String>,
        user: Option<String>,
        groups: Vec<String>,
        decision: String,
        outcome: Option<String>,
        reasons: Vec<String>,
        codes: Vec<String>,
        fault: Option<String>,
        mode: String,
        risk: Option<crate::posture::Assessment>,
        upstream: Option<String>,
        endpoint: Option<String>,
        enforcement_point: Option<String>,
        status: u16,
        latency_ms: f64,
        facts: Option<crate::policy::facts::Document>,
    }

    /// `doc` as a decision line writes it under a route whose rules name every header and
    /// claim the document has.
    fn kept(doc: &crate::policy::facts::Document) -> Vec<u8> {
        use crate::policy::{RoutePolicy, Rule};
        let rule = Rule {
            headers: doc
                .request
                .headers
                .iter()
                .map(|(name, _)| (name.clone(), Vec::new()))
                .collect(),
            claims: doc
                .person
                .iter()
                .flat_map(|p| p.claims.keys())
                .map(|name| (name.clone(), Vec::new()))
                .collect(),
            ..Rule::default()
        };
        let route = RoutePolicy::new("any", vec![rule]);
        serde_json::to_vec(&doc.facts(0).kept(Some(&route))).unwrap()
    }

    /// Every example line in docs/decision-log.md is exactly what [`Entry`] writes: the same
    /// fields, in the same order, with codes that exist.
    #[test]
    fn the_documented_examples_are_lines_vigil_writes() {
        let docs = include_str!("../docs/decision-log.md");
        let examples: Vec<&str> = docs
            .lines()
            .filter(|l| l.starts_with("{\"v\":1,\"kind\":\"decision\""))
            .collect();
        assert!(examples.len() >= 10, "{} examples", examples.len());
        for text in examples {
            let line: Line = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
            assert_eq!(line.reasons.len(), line.codes.len(), "{text}");
            let reasons: Vec<Reason> = line
                .reasons
                .iter()
                .zip(&line.codes)
                .map(|(text, code)| {
                    let code = Code::ALL
                        .iter()
                        .find(|c| c.as_str() == code)
                        .unwrap_or_else(|| panic!("no code {code}"));
                    Reason::new(*code, text.as_str())
                })
                .collect();
            let entry = Entry {
                v: line.v,
                kind: if line.kind == "decision" {
                    "decision"
                } else {
                    "?"
                },
                time: line.time.clone(),
                request_id: &line.request_id,
                route: line.route.as_deref(),
                host: &line.host,
                method: &line.method,
                path: &line.path,
                user_agent: line.user_agent.as_deref(),
                client: &line.client.to_string(),
                tls: line.tls.as_deref(),
                device: &line.device,
                subject: &line.subject,
                workload: line.workload.as_deref(),
                user: line.user.as_deref(),
                groups: &line.groups,
                decision: &line.decision,
                outcome: line.outcome.as_deref(),
                reasons: &reasons,
                codes: &reasons,
                fault: line.fault.as_deref(),
                mode: &line.mode,
                risk: line.risk.as_ref(),
                upstream: line.upstream.as_deref(),
                endpoint: line.endpoint.as_deref(),
                policy: None,
                shadow: None,
                grant: None,
                enforcement_point: line.enforcement_point.as_deref(),
                status: line.status,
                latency_ms: line.latency_ms,
            };
            let facts = line.facts.as_ref().map(kept);
            let mut written = Vec::new();
            assert!(encode(
                &mut written,
                |out| entry.write_json(out),
                facts.as_deref()
            ));
            assert_eq!(String::from_utf8_lossy(&written), format!("{text}\n"));
        }
    }

    #[test]
    fn the_word_test_finds_what_json_escapes_wherever_it_is() {
        for b in 0..=255u8 {
            let escaped = b < 0x20 || b == b'"' || b == b'\\';
            for at in 0..19 {
                let mut text = vec![b'a'; 19];
                text[at] = b;
                assert_eq!(needs_escape(&text), escaped, "byte {b:#04x} at {at}");
                // Beside bytes of multi-byte characters, which must not look like escapes.
                let mut high = vec![0xc3; 19];
                high[at] = b;
                assert_eq!(
                    needs_escape(&high),
                    escaped,
                    "byte {b:#04x} at {at} among 0xc3"
                );
            }
        }
        assert!(!needs_escape(b""));
        assert!(!needs_escape("ünïcode ✓ and ~ plain".as_bytes()));
    }

    /// The hand-written line is the one serde would write, field for field, whatever is set,
    /// absent or in need of escaping.
    #[test]
    fn an_entry_writes_what_its_serialize_would() {
        let reasons = [
            Reason::new(Code::AllowedByRule, "allowed by rule 1"),
            Reason::new(
                Code::BodyTooLarge,
                "a \"quoted\" \\ reason\nwith a line break \u{1}",
            ),
        ];
        let groups = vec![
            "staff".to_owned(),
            "tab\there".to_owned(),
            "ünïcode ✓".to_owned(),
        ];
        let risk = crate::posture::Assessment {
            signals: vec!["new \"device\"".to_owned()],
            ..crate::posture::Assessment::low()
        };
        let policy = crate::policy::PolicyRun {
            name: "policies/wiki.rego".into(),
            result: "allow",
            elapsed: Default::default(),
        };
        let shadow = crate::policy::Shadow {
            policy: "policies/next.rego".into(),
            agrees: false,
            decision: crate::policy::Outcome::Deny,
            reasons: reasons.to_vec(),
            run: None,
        };
        let full = Entry {
            v: SCHEMA,
            kind: "decision",
            time: "2026-11-23T05:04:18.280Z".into(),
            request_id: "a86f71e67953-00000000",
            route: Some("wiki"),
            host: "wiki.example.com",
            method: "GET",
            path: "/pages/\"on\"boarding\\",
            user_agent: Some("Mozilla/5.0 \u{7f}\u{1f}"),
            client: "192.0.2.10",
            tls: Some("TLSv1.3"),
            device: "ab12",
            subject: "CN=laptop-42",
            workload: Some("spiffe://example.org/ns/a/sa/b"),
            user: Some("alice@example.com"),
            groups: &groups,
            decision: "allow",
            outcome: Some("audit"),
            reasons: &reasons,
            codes: &reasons,
            fault: Some("client"),
            mode: "audit",
            risk: Some(&risk),
            upstream: Some("10.0.0.12:8080"),
            endpoint: Some("10.0.0.12:8080"),
            policy: Some(&policy),
            shadow: Some(&shadow),
            grant: Some("grant-1"),
            enforcement_point: Some("gateway"),
            status: 200,
            latency_ms: 4.351,
        };
        let bare = Entry {
            time: full.time.clone(),
            route: None,
            user_agent: None,
            tls: None,
            workload: None,
            user: None,
            groups: &[],
            outcome: None,
            reasons: &[],
            codes: &[],
            fault: None,
            risk: None,
            upstream: None,
            endpoint: None,
            policy: None,
            shadow: None,
            grant: None,
            enforcement_point: None,
            latency_ms: 0.0,
            ..full
        };
        for entry in [&full, &bare] {
            let mut written = Vec::new();
            entry.write_json(&mut written).unwrap();
            assert_eq!(
                String::from_utf8(written).unwrap(),
                serde_json::to_string(entry).unwrap()
            );
        }
    }

    /// What the `facts` object costs a line: the facts of docs/facts.example.json (a person,
    /// a device, a risk, headers and a claim a rule names) serialised and spliced in, against
    /// the same line without them. Run with
    /// `cargo test --release --lib facts_cost -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn facts_cost_per_line() {
        use crate::policy::facts::Document;
        let doc: Document =
            serde_json::from_str(include_str!("../docs/facts.example.json")).unwrap();
        let facts = doc.facts(0);
        let reasons = [Reason::new(Code::AllowedByRule, "allowed by rule 1")];
        let groups = vec!["staff".to_owned(), "wiki-editors".to_owned()];
        let entry = Entry {
            v: SCHEMA,
            kind: "decision",
            time: "2026-11-23T05:04:18.280Z".into(),
            request_id: "a86f71e67953-00000000",
            route: Some("wiki"),
            host: "wiki.example.com",
            method: "GET",
            path: "/pages/onboarding",
            user_agent: Some("Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5)"),
            client: "192.0.2.10",
            tls: Some("TLSv1.3"),
            device: &facts.certificate.fingerprint_hex,
            subject: &facts.certificate.subject,
            workload: None,
            user: Some("alice@example.com"),
            groups: &groups,
            decision: "allow",
            outcome: Some("allow"),
            reasons: &reasons,
            codes: &reasons,
            fault: None,
            mode: "enforce",
            risk: facts.risk,
            upstream: Some("10.0.0.12:8080"),
            endpoint: Some("10.0.0.12:8080"),
            policy: None,
            shadow: None,
            grant: None,
            enforcement_point: None,
            status: 200,
            latency_ms: 1.514,
        };
        let route = {
            let mut route = crate::policy::RoutePolicy::new("wiki", Vec::new());
            route.rules.push(crate::policy::Rule {
                headers: vec![("accept".into(), Vec::new())],
                claims: vec![("department".into(), Vec::new())],
                ..Default::default()
            });
            route
        };
        let n = 200_000;
        let time = |with_facts: bool| {
            let started = std::time::Instant::now();
            let mut bytes = 0;
            for _ in 0..n {
                let kept = with_facts.then(|| {
                    let mut out = Vec::with_capacity(1024);
                    serde_json::to_writer(&mut out, &facts.kept(Some(&route))).unwrap();
                    out
                });
                let mut line = Vec::new();
                assert!(encode(
                    &mut line,
                    |out| entry.write_json(out),
                    kept.as_deref()
                ));
                bytes += line.len();
            }
            (started.elapsed().as_nanos() as f64 / n as f64, bytes / n)
        };
        let _ = (time(false), time(true));
        let (without, short) = time(false);
        let (with, long) = time(true);
        println!(
            "line without facts: {without:.0} ns, {short} bytes; with facts: {with:.0} ns, {long} bytes; facts add {:.0} ns",
            with - without
        );
    }

    #[test]
    fn latency_is_rounded_to_the_microsecond() {
        for (nanos, text) in [
            (4_350_826, "4.351"),
            (4_350_499, "4.35"),
            (1_000_000, "1.0"),
            (0, "0.0"),
            (98_026, "0.098"),
            (13_712_388_000, "13712.388"),
        ] {
            let ms = millis(Duration::from_nanos(nanos));
            assert_eq!(serde_json::to_string(&ms).unwrap(), text, "{nanos} ns");
        }
    }
}
