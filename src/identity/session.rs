//! The browser session: a sealed cookie bound to the device certificate it was issued to.
//!
//! Everything Vigil knows about a signed-in person lives in the cookie itself, sealed with the
//! session key ring, so any replica can serve any request. Cookies larger than a browser
//! accepts are split into numbered chunks.

use super::seal::{KeyRing, OpenError, Purpose};
use http::header::{self, HeaderMap, HeaderValue};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;

/// Name of the session cookie; chunks after the first get `.1`, `.2`, ...
pub const SESSION_COOKIE: &str = "__Host-vigil-session";
/// Prefix of pending-login cookies; the first 8 characters of the login's `state` follow.
pub const LOGIN_COOKIE_PREFIX: &str = "__Host-vigil-login-";
/// Every cookie Vigil sets starts with this; none is ever forwarded upstream.
pub const VIGIL_COOKIE_PREFIX: &str = "__Host-vigil";

/// Browsers keep at least 4096 bytes per cookie, name and attributes included.
const CHUNK: usize = 3800;
const MAX_CHUNKS: usize = 8;

/// A signed-in person, as sealed into the cookie.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// Random id of this session (CSRF tokens and revocation are bound to it).
    pub sid: String,
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub amr: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub risk: Option<String>,
    /// Other claims rules or headers refer to.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub claims: BTreeMap<String, serde_json::Value>,
    /// SHA-256 fingerprint (hex) of the device certificate the session was issued to.
    pub device: String,
    /// Unix seconds.
    pub issued_at: i64,
    /// When the identity was last confirmed with the provider.
    pub verified_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<i64>,
    pub expires_at: i64,
    /// Last request seen, for the idle timeout (updated at most once a minute).
    pub last_seen: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// The provider's session id (`sid` claim), for back-channel logout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idp_sid: Option<String>,
}

/// Why a presented session was not accepted; logged, and the person signs in again. Each is a
/// refusal by policy (fault `policy`) except where said.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionRefusal {
    /// No session cookie: a first visit, or cookies blocked by the browser.
    #[error("no session cookie")]
    Absent,
    /// The cookie does not open with any session key: sealed under a key since removed from
    /// the ring, truncated by the browser, or forged.
    #[error("session cookie {0}")]
    Unreadable(OpenError),
    /// The cookie opened but its content is not a session: a bug or a key compromise.
    #[error("session cookie content is invalid")]
    Invalid,
    /// Sealed for another device certificate: a cookie copied to another device, or a
    /// re-enrolled device with a new certificate.
    #[error("session was issued to another device certificate")]
    OtherDevice,
    /// Past `[session] lifetime`.
    #[error("session expired")]
    Expired,
    /// Unused for longer than `[session] idle`.
    #[error("session idle for too long")]
    Idle,
    /// The provider refused to re-verify it: the person was disabled, or the grant revoked.
    #[error("session ended by the identity provider: {0}")]
    Ended(String),
    /// The provider could not be asked before `interval + max_stale` ran out: most likely the
    /// provider's fault (unreachable or hung), failing closed.
    #[error("identity could not be re-verified: {0}")]
    Unverifiable(String),
    /// Revoked by an operator, a logout or the provider's back-channel logout.
    #[error("{0}")]
    Revoked(&'static str),
}

impl SessionRefusal {
    /// The decision log's code for a sign-in this refusal asks for.
    pub fn code(&self) -> crate::reason::Code {
        use crate::reason::Code;
        match self {
            SessionRefusal::Absent => Code::SignInRequired,
            SessionRefusal::Unreadable(_) | SessionRefusal::Invalid => Code::SessionUnreadable,
            SessionRefusal::OtherDevice => Code::SessionOtherDevice,
            SessionRefusal::Expired => Code::SessionExpired,
            SessionRefusal::Idle => Code::SessionIdle,
            SessionRefusal::Ended(_) => Code::SessionEnded,
            SessionRefusal::Unverifiable(_) => Code::SessionUnverifiable,
            SessionRefusal::Revoked(_) => Code::SessionRevoked,
        }
    }
}

impl Session {
    /// Checks the session against the connection's device and the clock.
    pub fn check(&self, device: &str, now: i64, idle: i64) -> Result<(), SessionRefusal> {
        if aws_lc_rs::constant_time::verify_slices_are_equal(
            self.device.as_bytes(),
            device.as_bytes(),
        )
        .is_err()
        {
            return Err(SessionRefusal::OtherDevice);
        }
        if now >= self.expires_at {
            return Err(SessionRefusal::Expired);
        }
        if now - self.last_seen > idle {
            return Err(SessionRefusal::Idle);
        }
        Ok(())
    }
}

/// Every `name=value` pair of the request's Cookie headers.
pub fn cookies(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            Some((name.trim(), value.trim()))
        })
}

pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    cookies(headers).find(|(n, _)| *n == name).map(|(_, v)| v)
}

fn chunk_name(i: usize) -> String {
    if i == 0 {
        SESSION_COOKIE.to_owned()
    } else {
        format!("{SESSION_COOKIE}.{i}")
    }
}

/// How many session chunks the browser sent.
pub fn chunks_present(headers: &HeaderMap) -> usize {
    chunks(headers).count()
}

/// The session cookie's chunks the browser sent, in order up to the first one missing (the
/// first cookie of each name counts), found in one pass over the cookies.
fn chunks(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    let mut parts = [None; MAX_CHUNKS];
    for (name, value) in cookies(headers) {
        if let Some(i) = chunk_index(name)
            && parts[i].is_none()
        {
            parts[i] = Some(value);
        }
    }
    parts.into_iter().map_while(|p| p).fuse()
}

/// Reads and opens the session cookie (all its chunks).
pub fn read(headers: &HeaderMap, ring: &KeyRing) -> Result<Session, SessionRefusal> {
    open(&sealed(headers)?, ring)
}

/// The sealed session: the session cookie's [`chunks`], joined; a session in one chunk, the
/// usual, is not copied.
pub fn sealed(headers: &HeaderMap) -> Result<Cow<'_, str>, SessionRefusal> {
    let mut chunks = chunks(headers);
    let sealed = match (chunks.next(), chunks.next()) {
        (None, _) => return Err(SessionRefusal::Absent),
        (Some(one), None) => Cow::Borrowed(one),
        (Some(first), Some(second)) => {
            Cow::Owned([first, second].into_iter().chain(chunks).collect())
        }
    };
    if sealed.is_empty() {
        return Err(SessionRefusal::Absent);
    }
    Ok(sealed)
}

/// Which chunk of the session a cookie named `name` is, as [`chunk_name`] names them.
fn chunk_index(name: &str) -> Option<usize> {
    let rest = name.strip_prefix(SESSION_COOKIE)?;
    if rest.is_empty() {
        return Some(0);
    }
    let digits = rest.strip_prefix('.')?;
    if digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|i| (1..MAX_CHUNKS).contains(i))
}

/// Opens a sealed session.
pub fn open(sealed: &str, ring: &KeyRing) -> Result<Session, SessionRefusal> {
    let plain = ring
        .open(Purpose::Session, sealed)
        .map_err(SessionRefusal::Unreadable)?;
    serde_json::from_slice(&plain).map_err(|_| SessionRefusal::Invalid)
}

/// `Set-Cookie` values that store `session`, and expire chunks the browser holds beyond them.
pub fn write(
    session: &Session,
    ring: &KeyRing,
    now: i64,
    present: usize,
) -> Result<Vec<HeaderValue>, String> {
    let json = serde_json::to_vec(session).map_err(|e| e.to_string())?;
    let sealed = ring.seal(Purpose::Session, &json)?;
    let parts: Vec<&str> = sealed
        .as_bytes()
        .chunks(CHUNK)
        .map(|c| std::str::from_utf8(c).unwrap_or(""))
        .collect();
    if parts.len() > MAX_CHUNKS {
        return Err(format!(
            "session too large for cookies ({} bytes sealed)",
            sealed.len()
        ));
    }
    let max_age = (session.expires_at - now).max(0);
    let mut out = Vec::with_capacity(parts.len().max(present));
    for (i, part) in parts.iter().enumerate() {
        out.push(set_cookie(&chunk_name(i), part, max_age)?);
    }
    for i in parts.len()..present {
        out.push(set_cookie(&chunk_name(i), "", 0)?);
    }
    Ok(out)
}

/// `Set-Cookie` values that remove the session (all `present` chunks, at least the first).
pub fn clear(present: usize) -> Vec<HeaderValue> {
    (0..present.max(1))
        .filter_map(|i| set_cookie(&chunk_name(i), "", 0).ok())
        .collect()
}

/// A `__Host-` cookie: Secure, host-only, whole site, not readable by scripts, not sent on
/// cross-site sub-requests.
pub fn set_cookie(name: &str, value: &str, max_age: i64) -> Result<HeaderValue, String> {
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; Max-Age={max_age}; Secure; HttpOnly; SameSite=Lax"
    ))
    .map_err(|e| e.to_string())
}

/// Removes Vigil's cookies from the Cookie header(s) sent upstream.
pub fn strip_from_request(headers: &mut HeaderMap) {
    if !headers.contains_key(header::COOKIE) {
        return;
    }
    let kept: Vec<String> = cookies(headers)
        .filter(|(name, _)| !name.starts_with(VIGIL_COOKIE_PREFIX))
        .map(|(n, v)| format!("{n}={v}"))
        .collect();
    headers.remove(header::COOKIE);
    if !kept.is_empty()
        && let Ok(v) = HeaderValue::from_str(&kept.join("; "))
    {
        headers.insert(header::COOKIE, v);
    }
}

/// Drops any `Set-Cookie` from an upstream that would set one of Vigil's cookies.
pub fn strip_from_response(headers: &mut HeaderMap) {
    if !headers.contains_key(header::SET_COOKIE) {
        return;
    }
    let kept: Vec<HeaderValue> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter(|v| {
            let name = v
                .to_str()
                .ok()
                .and_then(|s| s.split('=').next())
                .unwrap_or("")
                .trim();
            !name.starts_with(VIGIL_COOKIE_PREFIX)
        })
        .cloned()
        .collect();
    headers.remove(header::SET_COOKIE);
    for v in kept {
        headers.append(header::SET_COOKIE, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sealed_session_is_its_chunks_in_order_up_to_the_first_missing() {
        let sealed = |cookie: &str| {
            let mut headers = HeaderMap::new();
            for value in cookie.split('|') {
                headers.append(header::COOKIE, HeaderValue::from_str(value).unwrap());
            }
            sealed(&headers).map(|s| s.into_owned())
        };
        let s = SESSION_COOKIE;
        assert_eq!(sealed(&format!("a=1; {s}=one; b=2")), Ok("one".into()));
        assert_eq!(
            sealed(&format!("{s}.2=three; {s}=one|{s}.1=two")),
            Ok("onetwothree".into())
        );
        // A gap ends the session; the first cookie of a name counts.
        assert_eq!(sealed(&format!("{s}=one; {s}.2=three")), Ok("one".into()));
        assert_eq!(sealed(&format!("{s}=one; {s}=other")), Ok("one".into()));
        // Names that only look like chunks are other cookies.
        assert_eq!(
            sealed(&format!("{s}=one; {s}.01=x; {s}.1x=y; {s}.8=z")),
            Ok("one".into())
        );
        assert_eq!(sealed(&format!("{s}x=one")), Err(SessionRefusal::Absent));
        assert_eq!(
            sealed(&format!("{s}=; {s}.1=")),
            Err(SessionRefusal::Absent)
        );
        assert_eq!(sealed("a=1"), Err(SessionRefusal::Absent));
        assert_eq!(chunk_index(&chunk_name(7)), Some(7));
    }

    fn session(groups: usize) -> Session {
        Session {
            sid: "s".into(),
            sub: "alice".into(),
            email: Some("alice@example.com".into()),
            name: None,
            groups: (0..groups).map(|i| format!("group-number-{i}")).collect(),
            amr: vec!["pwd".into()],
            acr: None,
            risk: None,
            claims: BTreeMap::new(),
            device: "ab".into(),
            issued_at: 0,
            verified_at: 0,
            auth_time: None,
            expires_at: 1000,
            last_seen: 0,
            refresh_token: Some("rt".into()),
            idp_sid: None,
        }
    }

    fn request_with(set: &[HeaderValue]) -> HeaderMap {
        let pairs: Vec<String> = set
            .iter()
            .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned())
            .filter(|p| !p.ends_with('='))
            .collect();
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&pairs.join("; ")).unwrap(),
        );
        h
    }

    #[test]
    fn round_trip_with_chunks() {
        let ring = KeyRing::parse(&KeyRing::generate_line().unwrap()).unwrap();
        for groups in [1, 400] {
            let s = session(groups);
            let set = write(&s, &ring, 0, 0).unwrap();
            assert_eq!(set.len() > 1, groups > 1, "{}", set.len());
            let back = read(&request_with(&set), &ring).unwrap();
            assert_eq!(back, s);
        }
        // Shrinking expires the chunks no longer used.
        let set = write(&session(1), &ring, 0, 3).unwrap();
        assert_eq!(set.len(), 3);
        assert!(set[2].to_str().unwrap().contains("Max-Age=0"));
    }

    #[test]
    fn checks() {
        let s = session(0);
        assert_eq!(s.check("ab", 10, 100), Ok(()));
        assert_eq!(s.check("cd", 10, 100), Err(SessionRefusal::OtherDevice));
        assert_eq!(s.check("ab", 1000, 10_000), Err(SessionRefusal::Expired));
        assert_eq!(s.check("ab", 200, 100), Err(SessionRefusal::Idle));
    }

    #[test]
    fn vigil_cookies_never_go_upstream() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; __Host-vigil-session=x; b=2; __Host-vigil-login-abc=y"),
        );
        strip_from_request(&mut h);
        assert_eq!(h.get(header::COOKIE).unwrap(), "a=1; b=2");
        let mut r = HeaderMap::new();
        r.append(
            header::SET_COOKIE,
            HeaderValue::from_static("__Host-vigil-session=evil; Path=/"),
        );
        r.append(header::SET_COOKIE, HeaderValue::from_static("app=1"));
        strip_from_response(&mut r);
        assert_eq!(r.get_all(header::SET_COOKIE).iter().count(), 1);
    }
}
