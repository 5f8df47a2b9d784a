//! The session-cookie opener: never panics, and nothing but a value this process sealed ever
//! opens. The key ring is fixed and known only to this process, as the proxy's is.
//!
//! Input: `[mode] payload`, by `mode % 4`:
//! - 0: the payload is a sealed value, opened for both purposes;
//! - 1: the payload is Cookie header values (one per line), read as a session and stripped;
//! - 2: the payload edits a real sealed session (triples of a big-endian position and a byte:
//!   replace, insert when the position's high bit is set, or delete when the byte is 0), and
//!   the result is opened as a value and as a two-chunk cookie;
//! - 3: the payload is a key file and a CSRF tag.

#![no_main]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderMap, HeaderValue, header};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use std::sync::OnceLock;
use vigil::identity::seal::{KeyRing, Purpose};
use vigil::identity::session::{self, Session};

/// Two fixed keys: the first seals, both open (a ring in rotation).
const KEYS: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n\
                    ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=\n";

struct Fixture {
    ring: KeyRing,
    /// A session sealed at start-up: the only value that may open.
    sealed: String,
    sealed_raw: Vec<u8>,
    tag: String,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let ring = KeyRing::parse(KEYS).expect("fixed key ring");
        let session = Session {
            sid: "fuzz-session".into(),
            sub: "alice".into(),
            email: Some("alice@example.com".into()),
            name: None,
            groups: vec!["engineering".into()],
            amr: vec!["pwd".into(), "otp".into()],
            acr: None,
            risk: None,
            claims: BTreeMap::new(),
            device: "ab".repeat(32),
            issued_at: 1,
            verified_at: 1,
            auth_time: None,
            expires_at: i64::MAX,
            last_seen: 1,
            refresh_token: None,
            idp_sid: None,
        };
        let json = serde_json::to_vec(&session).expect("session JSON");
        let sealed = ring.seal(Purpose::Session, &json).expect("seal");
        let sealed_raw = URL_SAFE_NO_PAD.decode(&sealed).expect("own encoding");
        let tag = ring.tag(b"fuzz-session");
        Fixture {
            ring,
            sealed,
            sealed_raw,
            tag,
        }
    })
}

/// Whether `candidate` is, byte for byte after decoding, the value the fixture sealed.
fn is_genuine(f: &Fixture, candidate: &str) -> bool {
    URL_SAFE_NO_PAD
        .decode(candidate.trim())
        .is_ok_and(|raw| raw == f.sealed_raw)
}

/// The sealed value `session::read` opens: the first value of each chunk name, in order, as
/// the Cookie parser gives it (without the whitespace around it).
fn joined(headers: &HeaderMap) -> String {
    let mut out = String::new();
    for i in 0..session::chunks_present(headers) {
        let name = match i {
            0 => session::SESSION_COOKIE.to_owned(),
            i => format!("{}.{i}", session::SESSION_COOKIE),
        };
        out.push_str(session::cookie(headers, &name).unwrap_or(""));
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, payload)) = data.split_first() else {
        return;
    };
    let f = fixture();
    match mode % 4 {
        0 => {
            let Ok(text) = std::str::from_utf8(payload) else {
                return;
            };
            for purpose in [Purpose::Session, Purpose::Login] {
                if f.ring.open(purpose, text).is_ok() {
                    assert!(
                        purpose == Purpose::Session && is_genuine(f, text),
                        "forged value opened for {purpose:?}: {text:?}"
                    );
                }
            }
        }
        1 => {
            let mut headers = HeaderMap::new();
            for line in payload.split(|&b| b == b'\n') {
                if let Ok(v) = HeaderValue::from_bytes(line) {
                    headers.append(header::COOKIE, v);
                }
            }
            let chunks = session::chunks_present(&headers);
            assert!(chunks <= 8, "{chunks} chunks");
            if let Ok(s) = session::read(&headers, &f.ring) {
                assert!(
                    is_genuine(f, &joined(&headers)),
                    "forged cookie opened as {s:?}: {headers:?}"
                );
            }
            session::strip_from_request(&mut headers);
            for (name, _) in session::cookies(&headers) {
                assert!(
                    !name.starts_with(session::VIGIL_COOKIE_PREFIX),
                    "{name:?} left in the upstream's Cookie"
                );
            }
        }
        2 => {
            let mut edited = f.sealed.clone().into_bytes();
            for op in payload.chunks_exact(3) {
                let at =
                    usize::from(u16::from_be_bytes([op[0] & 0x7f, op[1]])) % (edited.len() + 1);
                match (op[0] & 0x80 != 0, op[2]) {
                    (true, b) => edited.insert(at, b),
                    (false, 0) if at < edited.len() => {
                        edited.remove(at);
                    }
                    (false, b) if at < edited.len() => edited[at] = b,
                    _ => {}
                }
            }
            let Ok(text) = std::str::from_utf8(&edited) else {
                return;
            };
            if f.ring.open(Purpose::Session, text).is_ok() {
                assert!(is_genuine(f, text), "tampered value opened: {text:?}");
            }
            assert!(
                f.ring.open(Purpose::Login, text).is_err(),
                "a session opened as a pending login: {text:?}"
            );
            // The same value as a cookie, split into two chunks where the payload says.
            let cut = payload
                .first()
                .map_or(0, |&b| usize::from(b))
                .min(text.len());
            if let (Some(a), Some(b)) = (text.get(..cut), text.get(cut..)) {
                let cookie = format!("{name}={a}; {name}.1={b}", name = session::SESSION_COOKIE);
                if let Ok(v) = HeaderValue::from_str(&cookie) {
                    let mut headers = HeaderMap::new();
                    headers.insert(header::COOKIE, v);
                    if session::read(&headers, &f.ring).is_ok() {
                        assert!(
                            is_genuine(f, &joined(&headers)),
                            "tampered cookie opened: {headers:?}"
                        );
                    }
                }
            }
        }
        _ => {
            let Ok(text) = std::str::from_utf8(payload) else {
                return;
            };
            let _ = KeyRing::parse(text);
            let (data, tag) = text.split_once('\n').unwrap_or(("fuzz-session", text));
            if f.ring.verify_tag(data.as_bytes(), tag) {
                assert!(
                    data == "fuzz-session"
                        && URL_SAFE_NO_PAD.decode(tag.trim()).ok()
                            == URL_SAFE_NO_PAD.decode(&f.tag).ok(),
                    "forged tag accepted: {data:?} {tag:?}"
                );
            }
        }
    }
});
