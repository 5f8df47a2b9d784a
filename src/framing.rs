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
//! looked at; body bytes are skipped by count.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Longest prefix of a line kept for inspection: enough for a header name and a number.
const KEEP: usize = 64;

/// Shared between the reader (which sees bytes) and the pipeline (which sees requests).
#[derive(Debug)]
pub struct Verdict {
    /// Index (from 0) of the first request with conflicting framing; `u64::MAX` for none.
    first_conflict: AtomicU64,
    /// Index of the first request whose target had a `#`.
    first_fragment: AtomicU64,
}

impl Verdict {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            first_conflict: AtomicU64::new(u64::MAX),
            first_fragment: AtomicU64::new(u64::MAX),
        })
    }

    /// Why request `index` must be refused: it, or an earlier request on this connection,
    /// was ambiguous on the wire. Everything after such a request is suspect too.
    pub fn refusal(&self, index: u64) -> Option<&'static str> {
        if index >= self.first_conflict.load(Ordering::Acquire) {
            Some("both Transfer-Encoding and Content-Length")
        } else if index >= self.first_fragment.load(Ordering::Acquire) {
            Some("fragment in request target")
        } else {
            None
        }
    }

    #[cfg(test)]
    fn conflicted(&self, index: u64) -> bool {
        self.refusal(index).is_some()
    }
}

#[derive(Debug)]
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
    /// Upgraded, or framing we cannot follow: stop looking (hyper refuses bad framing itself).
    Opaque,
}

/// The incremental parser fed with every byte read from an HTTP/1 connection.
#[derive(Debug)]
pub struct Watch {
    state: State,
    line: Vec<u8>,
    /// Bytes of the current line beyond `KEEP` are counted, not stored.
    line_overflow: bool,
    /// The request line being read has a `#`.
    fragment: bool,
    upgrade: bool,
    requests: u64,
    verdict: Arc<Verdict>,
}

impl Watch {
    pub fn new(verdict: Arc<Verdict>) -> Self {
        Self {
            state: State::Head {
                first: true,
                te: false,
                cl: None,
            },
            line: Vec::with_capacity(KEEP),
            line_overflow: false,
            fragment: false,
            upgrade: false,
            requests: 0,
            verdict,
        }
    }

    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match self.state {
                State::Opaque => return,
                State::Fixed(n) => {
                    let take = n.min(bytes.len() as u64);
                    bytes = &bytes[take as usize..];
                    self.state = if n == take {
                        self.next_head()
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
                    self.keep(&bytes[..end]);
                    bytes = &bytes[end + 1..];
                    self.line_done();
                }
            }
        }
    }

    fn keep(&mut self, part: &[u8]) {
        if matches!(self.state, State::Head { first: true, .. }) && part.contains(&b'#') {
            self.fragment = true;
        }
        let room = KEEP.saturating_sub(self.line.len());
        self.line.extend_from_slice(&part[..part.len().min(room)]);
        if part.len() > room {
            self.line_overflow = true;
        }
    }

    fn next_head(&self) -> State {
        if self.upgrade {
            State::Opaque
        } else {
            State::Head {
                first: true,
                te: false,
                cl: None,
            }
        }
    }

    fn line_done(&mut self) {
        let mut line = std::mem::take(&mut self.line);
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let overflow = std::mem::replace(&mut self.line_overflow, false);
        self.state = match std::mem::replace(&mut self.state, State::Opaque) {
            State::Head { first: true, .. } if line.is_empty() && !overflow => {
                // Empty lines before a request line are allowed.
                State::Head {
                    first: true,
                    te: false,
                    cl: None,
                }
            }
            State::Head { first: true, .. } => {
                self.upgrade = line.starts_with(b"CONNECT ");
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
            State::Head { te, cl, .. } if line.is_empty() && !overflow => {
                if te && cl.is_some() {
                    self.verdict
                        .first_conflict
                        .fetch_min(self.requests, Ordering::AcqRel);
                }
                self.requests += 1;
                if te {
                    State::ChunkSize
                } else {
                    match cl {
                        Some(n) if n > 0 => State::Fixed(n),
                        _ => self.next_head(),
                    }
                }
            }
            State::Head {
                first,
                mut te,
                mut cl,
            } => {
                if let Some(colon) = line.iter().position(|&b| b == b':') {
                    let name = line[..colon].trim_ascii();
                    let value = line[colon + 1..].trim_ascii();
                    if name.eq_ignore_ascii_case(b"transfer-encoding") {
                        te = true;
                    } else if name.eq_ignore_ascii_case(b"content-length") {
                        cl = Some(
                            std::str::from_utf8(value)
                                .ok()
                                .and_then(|v| v.parse().ok())
                                .unwrap_or(0),
                        );
                    } else if name.eq_ignore_ascii_case(b"upgrade") {
                        self.upgrade = true;
                    }
                }
                State::Head { first, te, cl }
            }
            State::ChunkSize => {
                let digits: &[u8] = line
                    .split(|&b| b == b';' || b == b' ' || b == b'\t')
                    .next()
                    .unwrap_or(&[]);
                match std::str::from_utf8(digits)
                    .ok()
                    .and_then(|d| u64::from_str_radix(d, 16).ok())
                {
                    Some(0) => State::Trailers,
                    Some(n) => State::ChunkData(n),
                    None => State::Opaque,
                }
            }
            State::ChunkEnd => State::ChunkSize,
            State::Trailers if line.is_empty() && !overflow => self.next_head(),
            State::Trailers => State::Trailers,
            other => other,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict_after(parts: &[&[u8]]) -> Arc<Verdict> {
        let verdict = Verdict::new();
        let mut watch = Watch::new(verdict.clone());
        for part in parts {
            watch.feed(part);
        }
        verdict
    }

    #[test]
    fn conflicting_framing_is_found_at_its_index() {
        let good = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello".as_slice();
        let chunked =
            b"POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nT: 1\r\n\r\n".as_slice();
        let bad =
            b"POST /c HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                .as_slice();
        let v = verdict_after(&[good, chunked, bad, good]);
        assert!(!v.conflicted(0));
        assert!(!v.conflicted(1));
        assert!(v.conflicted(2));
        assert!(v.conflicted(3));
    }

    #[test]
    fn byte_by_byte_feeding_gives_the_same_answer() {
        let stream = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nPOST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 0\r\n\r\n0\r\n\r\n";
        let verdict = Verdict::new();
        let mut watch = Watch::new(verdict.clone());
        for b in stream {
            watch.feed(std::slice::from_ref(b));
        }
        assert!(!verdict.conflicted(0));
        assert!(verdict.conflicted(1));
    }

    #[test]
    fn body_text_is_not_mistaken_for_headers() {
        let body = b"Transfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n";
        let mut stream =
            format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        stream.extend_from_slice(body);
        stream.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        let v = verdict_after(&[&stream]);
        assert!(!v.conflicted(0));
        assert!(!v.conflicted(1));
    }

    #[test]
    fn fragments_in_the_request_line_are_found() {
        let v = verdict_after(&[b"GET /a HTTP/1.1\r\nX-A: b#c\r\n\r\nGET /b#x HTTP/1.1\r\n\r\n"]);
        assert_eq!(v.refusal(0), None);
        assert_eq!(v.refusal(1), Some("fragment in request target"));
    }

    #[test]
    fn upgraded_streams_are_not_parsed() {
        let v = verdict_after(&[
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n",
        ]);
        assert!(!v.conflicted(1));
    }
}
