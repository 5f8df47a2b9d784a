//! Watches HTTP/1.1 request framing on the wire for requests that carry both
//! `Transfer-Encoding` and `Content-Length`, or a `#` fragment in the request target.
//!
//! hyper resolves that conflict silently (Transfer-Encoding wins and Content-Length is dropped),
//! so by the time a request reaches the pipeline the evidence is gone. Such a request is the
//! classic smuggling probe: an intermediary that picks the other header frames the stream
//! differently. Vigil refuses it with 400 instead of guessing, so this watcher follows the
//! framing of every request head and body on HTTP/1 connections and remembers the index of the
//! first offending request. The same goes for a fragment in the request target, which the URI
//! parser drops without a trace. Only request lines, header names and chunk-size lines are
//! looked at; body bytes are skipped by count, and lines are read in place when a read holds
//! them whole (only a line split across reads is copied, and only its first [`KEEP`] bytes).
//!
//! The watcher must know where each request starts, so it follows `Content-Length` and chunked
//! bodies exactly as hyper does. Whenever it cannot be sure it does (a framing line too long to
//! keep, a value hyper would refuse, a malformed chunk), it does not guess and does not stop
//! quietly: it marks the connection *unsure* from the request it is reading on, and every
//! request from there is refused and the connection closed after the answer. Watching ends
//! only when the connection is really upgraded (a 101 answer, see [`Findings::upgraded`]): an
//! `Upgrade` request answered any other way is followed by more HTTP/1 requests, which are
//! watched like the rest.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Longest prefix of a line kept for inspection: enough for a header name and a number. A
/// `Content-Length` or chunk-size line longer than this makes the connection unsure.
const KEEP: usize = 64;

/// Shared between the reader (which sees bytes) and the pipeline (which sees requests).
#[derive(Debug)]
pub struct Findings {
    /// Index (from 0) of the first request with conflicting framing; `u64::MAX` for none.
    first_conflict: AtomicU64,
    /// Index of the first request whose target had a `#`.
    first_fragment: AtomicU64,
    /// Index of the first request the watcher cannot vouch for: it lost track of the framing
    /// while reading it or an earlier one.
    first_unsure: AtomicU64,
    /// The connection left HTTP/1 (101): there is nothing more to watch.
    upgraded: AtomicBool,
}

impl Findings {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            first_conflict: AtomicU64::new(u64::MAX),
            first_fragment: AtomicU64::new(u64::MAX),
            first_unsure: AtomicU64::new(u64::MAX),
            upgraded: AtomicBool::new(false),
        })
    }

    /// Why request `index` must be refused: it, or an earlier request on this connection,
    /// was ambiguous on the wire, or the watcher lost its place. Everything after such a
    /// request is suspect too.
    pub fn refusal(&self, index: u64) -> Option<&'static str> {
        if index >= self.first_conflict.load(Ordering::Acquire) {
            Some("both Transfer-Encoding and Content-Length")
        } else if index >= self.first_fragment.load(Ordering::Acquire) {
            Some("fragment in request target")
        } else if index >= self.first_unsure.load(Ordering::Acquire) {
            Some("request framing could not be followed")
        } else {
            None
        }
    }

    /// The connection was upgraded by the answer to its request `next - 1`: hyper reads no
    /// more requests from it, and the watcher stops. Should a request still arrive, it is
    /// refused: the watcher no longer vouches for anything from `next` on.
    pub fn upgraded(&self, next: u64) {
        self.first_unsure.fetch_min(next, Ordering::AcqRel);
        self.upgraded.store(true, Ordering::Release);
    }

    pub fn is_upgraded(&self) -> bool {
        self.upgraded.load(Ordering::Acquire)
    }

    #[cfg(test)]
    fn conflicted(&self, index: u64) -> bool {
        self.refusal(index).is_some()
    }
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// Reading a request head; `first` until the request line has been seen.
    Head {
        first: bool,
        te: bool,
        cl: Option<u64>,
    },
    Fixed(u64),
    ChunkSize,
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    Trailers,
    /// The framing could not be followed; the connection is marked unsure and nothing more
    /// is looked at.
    Lost,
}

const NEW_HEAD: State = State::Head {
    first: true,
    te: false,
    cl: None,
};

/// The incremental parser fed with every byte read from an HTTP/1 connection.
#[derive(Debug)]
pub struct Watch {
    state: State,
    /// The first `KEEP` bytes of a line split across reads.
    line: Vec<u8>,
    /// Bytes of the current line beyond `KEEP` are counted, not stored.
    line_overflow: bool,
    /// The request line being read has a `#`.
    fragment: bool,
    /// Requests whose head has been read whole.
    requests: u64,
    verdict: Arc<Findings>,
}

impl Watch {
    pub fn new(verdict: Arc<Findings>) -> Self {
        Self {
            state: NEW_HEAD,
            line: Vec::new(),
            line_overflow: false,
            fragment: false,
            requests: 0,
            verdict,
        }
    }

    /// Nothing more to look at: the connection was upgraded, or the watcher lost its place
    /// (and every request from there on is refused).
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Lost) || self.verdict.is_upgraded()
    }

    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match self.state {
                State::Lost => return,
                State::Fixed(n) => {
                    let take = n.min(bytes.len() as u64);
                    bytes = &bytes[take as usize..];
                    self.state = if n == take {
                        NEW_HEAD
                    } else {
                        State::Fixed(n - take)
                    };
                }
                State::ChunkData(n) => {
                    let take = n.min(bytes.len() as u64);
                    bytes = &bytes[take as usize..];
                    self.state = if n == take {
                        State::ChunkEnd
                    } else {
                        State::ChunkData(n - take)
                    };
                }
                _ => {
                    let Some(end) = bytes.iter().position(|&b| b == b'\n') else {
                        self.keep(bytes);
                        return;
                    };
                    let line = &bytes[..end];
                    bytes = &bytes[end + 1..];
                    if self.line.is_empty() && !self.line_overflow {
                        // The whole line is in this read: look at it where it is.
                        self.note(line);
                        let kept = &line[..line.len().min(KEEP)];
                        self.line_done(kept, line.len() > KEEP);
                    } else {
                        self.keep(line);
                        let kept = std::mem::take(&mut self.line);
                        let overflow = std::mem::replace(&mut self.line_overflow, false);
                        self.line_done(&kept, overflow);
                        // Keep the allocation for the next split line.
                        self.line = kept;
                        self.line.clear();
                    }
                }
            }
        }
    }

    /// Notes what matters about any part of a line, however long: a `#` in a request line.
    fn note(&mut self, part: &[u8]) {
        if matches!(self.state, State::Head { first: true, .. }) && part.contains(&b'#') {
            self.fragment = true;
        }
    }

    /// Part of a line that continues in a later read.
    fn keep(&mut self, part: &[u8]) {
        self.note(part);
        let room = KEEP.saturating_sub(self.line.len());
        self.line.extend_from_slice(&part[..part.len().min(room)]);
        if part.len() > room {
            self.line_overflow = true;
        }
    }

    /// From here on the watcher cannot tell where requests start: refuse them all.
    fn lost(&mut self) -> State {
        self.verdict
            .first_unsure
            .fetch_min(self.requests, Ordering::AcqRel);
        State::Lost
    }

    /// One line, without its `\n`: its first `KEEP` bytes, and whether it was longer.
    fn line_done(&mut self, kept: &[u8], overflow: bool) {
        let mut line = kept;
        if !overflow && let Some(rest) = line.strip_suffix(b"\r") {
            line = rest;
        }
        let blank = line.is_empty() && !overflow;
        self.state = match self.state {
            // Empty lines before a request line are allowed.
            State::Head { first: true, .. } if blank => NEW_HEAD,
            State::Head { first: true, .. } => {
                if std::mem::take(&mut self.fragment) {
                    self.verdict
                        .first_fragment
                        .fetch_min(self.requests, Ordering::AcqRel);
                }
                State::Head {
                    first: false,
                    te: false,
                    cl: None,
                }
            }
            State::Head { te, cl, .. } if blank => {
                if te && cl.is_some() {
                    self.verdict
                        .first_conflict
                        .fetch_min(self.requests, Ordering::AcqRel);
                }
                self.requests += 1;
                match (te, cl) {
                    (true, _) => State::ChunkSize,
                    (false, Some(n)) if n > 0 => State::Fixed(n),
                    _ => NEW_HEAD,
                }
            }
            State::Head { first, te, cl } => self.header(line, overflow, first, te, cl),
            State::ChunkSize => {
                let digits = line
                    .split(|&b| matches!(b, b';' | b' ' | b'\t'))
                    .next()
                    .unwrap_or_default();
                // Digits that run past what was kept cannot be read.
                let cut = overflow && digits.len() == line.len();
                match hex(digits) {
                    _ if cut => self.lost(),
                    Some(0) => State::Trailers,
                    Some(n) => State::ChunkData(n),
                    None => self.lost(),
                }
            }
            State::ChunkEnd if blank => State::ChunkSize,
            State::ChunkEnd => self.lost(),
            State::Trailers if blank => NEW_HEAD,
            State::Trailers => State::Trailers,
            State::Fixed(_) | State::ChunkData(_) | State::Lost => self.state,
        };
    }

    /// One header line of a request head (hyper refuses the connection on anything malformed
    /// here; the watcher gives up on it rather than guess).
    fn header(
        &mut self,
        line: &[u8],
        overflow: bool,
        first: bool,
        mut te: bool,
        mut cl: Option<u64>,
    ) -> State {
        if matches!(line.first(), Some(b' ' | b'\t')) {
            // Obsolete line folding: hyper refuses it in requests.
            return self.lost();
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            // A name longer than what is kept is none of the framing headers.
            return if overflow {
                State::Head { first, te, cl }
            } else {
                self.lost()
            };
        };
        let name = &line[..colon];
        if name.iter().any(|b| b.is_ascii_whitespace()) {
            return self.lost();
        }
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            te = true;
        } else if name.eq_ignore_ascii_case(b"content-length") {
            let value = line[colon + 1..].trim_ascii();
            match decimal(value) {
                Some(n) if !overflow && cl.is_none_or(|prev| prev == n) => cl = Some(n),
                // Too long to read whole, not a number, or two different lengths.
                _ => return self.lost(),
            }
        }
        State::Head { first, te, cl }
    }
}

/// A `Content-Length` value as hyper reads it: ASCII digits only, no sign, no overflow.
fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| match b {
        b'0'..=b'9' => n.checked_mul(10)?.checked_add(u64::from(b - b'0')),
        _ => None,
    })
}

/// A chunk size as hyper reads it: hex digits only, no sign, no overflow.
fn hex(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        let d = (b as char).to_digit(16)?;
        n.checked_mul(16)?.checked_add(u64::from(d))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn findings_after(parts: &[&[u8]]) -> Arc<Findings> {
        let verdict = Findings::new();
        let mut watch = Watch::new(verdict.clone());
        for part in parts {
            watch.feed(part);
        }
        verdict
    }

    fn refusals(v: &Findings) -> Vec<Option<&'static str>> {
        (0..8).map(|i| v.refusal(i)).collect()
    }

    const UNSURE: Option<&str> = Some("request framing could not be followed");
    const FRAGMENT: Option<&str> = Some("fragment in request target");
    const CONFLICT: Option<&str> = Some("both Transfer-Encoding and Content-Length");

    #[test]
    fn conflicting_framing_is_found_at_its_index() {
        let good = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello".as_slice();
        let chunked =
            b"POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nT: 1\r\n\r\n".as_slice();
        let bad =
            b"POST /c HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                .as_slice();
        let v = findings_after(&[good, chunked, bad, good]);
        assert!(!v.conflicted(0));
        assert!(!v.conflicted(1));
        assert!(v.conflicted(2));
        assert!(v.conflicted(3));
    }

    #[test]
    fn byte_by_byte_feeding_gives_the_same_answer() {
        let stream = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nPOST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 0\r\n\r\n0\r\n\r\n";
        let verdict = Findings::new();
        let mut watch = Watch::new(verdict.clone());
        for b in stream {
            watch.feed(std::slice::from_ref(b));
        }
        assert!(!verdict.conflicted(0));
        assert!(verdict.conflicted(1));
    }

    /// Every stream below, cut into two reads at every offset, gives the verdict it gives
    /// whole: lines split across reads are read like lines read in place.
    #[test]
    fn split_reads_give_the_same_answer_as_whole_ones() {
        let long_value = format!(
            "GET /a HTTP/1.1\r\nX-Long: {}\r\nX-{}: v\r\n\r\nGET /b#f HTTP/1.1\r\n\r\n",
            "v".repeat(200),
            "n".repeat(100)
        );
        let long_cl = format!(
            "POST /a HTTP/1.1\r\nContent-Length: {}5\r\n\r\nhelloGET /#x HTTP/1.1\r\n\r\n",
            "0".repeat(KEEP)
        );
        let streams: Vec<Vec<u8>> = vec![
            b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET /b#x HTTP/1.1\r\n\r\n".to_vec(),
            b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;e=1\r\nabc\r\n0\r\nT: x\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            b"\r\n\nGET /a HTTP/1.1\nHost: x\n\nGET /b HTTP/1.1\r\nX-A: b\r\n  folded\r\n\r\n".to_vec(),
            long_value.into_bytes(),
            long_cl.into_bytes(),
        ];
        for stream in &streams {
            let whole = refusals(&findings_after(&[stream]));
            for cut in 1..stream.len() {
                let (a, b) = stream.split_at(cut);
                assert_eq!(
                    refusals(&findings_after(&[a, b])),
                    whole,
                    "{:?} cut at {cut}",
                    String::from_utf8_lossy(stream)
                );
            }
        }
    }

    #[test]
    fn body_text_is_not_mistaken_for_headers() {
        let body = b"Transfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n";
        let mut stream =
            format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        stream.extend_from_slice(body);
        stream.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        let v = findings_after(&[&stream]);
        assert!(!v.conflicted(0));
        assert!(!v.conflicted(1));
    }

    #[test]
    fn fragments_in_the_request_line_are_found() {
        let v = findings_after(&[b"GET /a HTTP/1.1\r\nX-A: b#c\r\n\r\nGET /b#x HTTP/1.1\r\n\r\n"]);
        assert_eq!(v.refusal(0), None);
        assert_eq!(v.refusal(1), FRAGMENT);
    }

    #[test]
    fn a_request_with_upgrade_that_was_not_upgraded_is_followed_by_watched_requests() {
        let v = findings_after(&[
            b"GET /ws HTTP/1.1\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n",
            b"GET /x#frag HTTP/1.1\r\nHost: x\r\n\r\n",
            b"CONNECT x:443 HTTP/1.1\r\nHost: x\r\n\r\n",
        ]);
        assert_eq!(v.refusal(0), None);
        assert_eq!(v.refusal(1), FRAGMENT);
        let v = findings_after(&[
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n0\r\n\r\n",
        ]);
        assert_eq!(v.refusal(0), None);
        assert_eq!(v.refusal(1), CONFLICT);
        // CONNECT (refused with 405, so not a tunnel) does not stop the watch either.
        let v = findings_after(&[
            b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n",
            b"GET /#a HTTP/1.1\r\n\r\n",
        ]);
        assert_eq!(v.refusal(1), FRAGMENT);
    }

    #[test]
    fn an_upgraded_connection_refuses_any_later_request() {
        let v = findings_after(&[b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n"]);
        v.upgraded(1);
        assert!(v.is_upgraded());
        assert_eq!(v.refusal(0), None);
        assert_eq!(v.refusal(1), UNSURE);
    }

    #[test]
    fn a_content_length_too_long_to_keep_makes_the_connection_unsure() {
        // hyper reads this as 5 (leading zeros are allowed); the watcher keeps 64 bytes.
        let stream = format!(
            "POST /a HTTP/1.1\r\nContent-Length: {}5\r\n\r\nhelloGET /#x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n0\r\n\r\n",
            "0".repeat(100)
        );
        let v = findings_after(&[b"GET / HTTP/1.1\r\n\r\n", stream.as_bytes()]);
        assert_eq!(v.refusal(0), None);
        assert_eq!(v.refusal(1), UNSURE);
        assert!(v.conflicted(2));
        // A normal one that fits is read.
        let v = findings_after(&[
            b"POST /a HTTP/1.1\r\nContent-Length:   0000000000000005  \r\n\r\nhelloGET /#x HTTP/1.1\r\n\r\n",
        ]);
        assert_eq!(refusals(&v)[..2], [None, FRAGMENT]);
    }

    #[test]
    fn content_lengths_hyper_would_refuse_make_the_connection_unsure() {
        for value in ["5, 5", "+5", "-1", "", "0x5", "99999999999999999999999"] {
            let stream = format!("POST /a HTTP/1.1\r\nContent-Length: {value}\r\n\r\nhello");
            let v = findings_after(&[b"GET / HTTP/1.1\r\n\r\n", stream.as_bytes()]);
            assert_eq!(refusals(&v)[..2], [None, UNSURE], "{value:?}");
        }
        let two = b"POST /a HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello";
        assert_eq!(findings_after(&[two]).refusal(0), UNSURE);
        let same = b"POST /a HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(findings_after(&[same]).refusal(0), None);
    }

    #[test]
    fn malformed_heads_make_the_connection_unsure() {
        for head in [
            "POST /a HTTP/1.1\r\nX-A: 1\r\n Content-Length: 5\r\n\r\n",
            "POST /a HTTP/1.1\r\nContent-Length : 5\r\n\r\n",
            "POST /a HTTP/1.1\r\nno colon here\r\n\r\n",
        ] {
            let v = findings_after(&[head.as_bytes()]);
            assert_eq!(v.refusal(0), UNSURE, "{head:?}");
        }
    }

    #[test]
    fn chunk_lines_that_cannot_be_followed_make_the_connection_unsure() {
        let long_zeros = format!("{}5\r\nhello\r\n0\r\n\r\n", "0".repeat(100));
        for body in [
            long_zeros.as_str(),
            "+5\r\nhello\r\n0\r\n\r\n",
            "g\r\n",
            "\r\n",
            "11111111111111111\r\n",
            "5\r\nhelloX\r\n0\r\n\r\n",
        ] {
            let stream = format!(
                "POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{body}GET / HTTP/1.1\r\n\r\n"
            );
            let v = findings_after(&[stream.as_bytes()]);
            // The request itself was framed; the ones after it cannot be placed.
            assert_eq!(refusals(&v)[..2], [None, UNSURE], "{body:?}");
        }
        // A long extension after short digits is fine.
        let stream = format!(
            "POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;{}\r\nhello\r\n0\r\n\r\nGET /#x HTTP/1.1\r\n\r\n",
            "e".repeat(300)
        );
        assert_eq!(
            refusals(&findings_after(&[stream.as_bytes()]))[..2],
            [None, FRAGMENT]
        );
    }

    #[test]
    fn pipelined_requests_are_each_placed() {
        let stream = b"GET /1 HTTP/1.1\r\n\r\nPOST /2 HTTP/1.1\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nabcPOST /3 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\nGET /4#x HTTP/1.1\r\n\r\n";
        let v = findings_after(&[stream]);
        assert_eq!(refusals(&v)[..4], [None, None, None, FRAGMENT]);
    }
}
