//! Sealing small secrets for the browser: AES-256-GCM with a key ring.
//!
//! The first key of the ring seals; every key opens, so a new key can be put first, and the old
//! one removed a session lifetime later, without logging anyone out. Each sealed value names the
//! key that sealed it (4 bytes of its SHA-256) and the purpose it was sealed for, so a pending
//! login cannot be replayed as a session.

use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use aws_lc_rs::{digest, hmac};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use std::fmt;
use std::path::Path;

const VERSION: u8 = 1;
const KEY_ID_LEN: usize = 4;

/// What a sealed value is for; part of the authenticated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Session,
    Login,
    /// The outcome of a session's refresh, left in the shared state for the other replicas.
    Refresh,
}

impl Purpose {
    fn aad(self) -> &'static [u8] {
        match self {
            Purpose::Session => b"vigil session v1",
            Purpose::Login => b"vigil pending login v1",
            Purpose::Refresh => b"vigil shared refresh v1",
        }
    }
}

/// Why a sealed value was refused. None of these is the caller's fault to report in detail to
/// the client; they go to the decision log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("not a sealed value")]
    Malformed,
    #[error("sealed by a key no longer in the ring")]
    UnknownKey,
    #[error("tampered with, or sealed for another purpose")]
    Tampered,
}

struct Key {
    id: [u8; KEY_ID_LEN],
    aead: RandomizedNonceKey,
    /// A sub-key for MACs, derived so the AEAD key is used for one thing only.
    mac: hmac::Key,
}

/// The session key ring, loaded from `keys_file`.
pub struct KeyRing {
    keys: Vec<Key>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl KeyRing {
    /// Reads one base64 key of 32 bytes per line; blank lines and `#` comments are skipped.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: {}", path.display(), crate::error::file_error(&e)))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bytes = STANDARD
                .decode(line)
                .or_else(|_| URL_SAFE_NO_PAD.decode(line))
                .map_err(|_| format!("line {}: not base64", n + 1))?;
            keys.push(Self::key(&bytes).map_err(|e| format!("line {}: {e}", n + 1))?);
        }
        if keys.is_empty() {
            return Err("no keys (one base64-encoded 32-byte key per line)".into());
        }
        Ok(Self { keys })
    }

    fn key(bytes: &[u8]) -> Result<Key, String> {
        if bytes.len() != 32 {
            return Err(format!("a key is 32 bytes, this one is {}", bytes.len()));
        }
        let aead = RandomizedNonceKey::new(&AES_256_GCM, bytes)
            .map_err(|_| "key rejected by AES-256-GCM".to_owned())?;
        let hash = digest::digest(&digest::SHA256, bytes);
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&hash.as_ref()[..KEY_ID_LEN]);
        let derived = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, bytes),
            b"vigil mac key v1",
        );
        let mac = hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref());
        Ok(Key { id, aead, mac })
    }

    /// The ids of the ring's keys, in order, hex: public (every sealed value names its key),
    /// so replicas compare them to tell whether they hold the same keys.
    pub fn key_ids(&self) -> Vec<String> {
        self.keys
            .iter()
            .map(|k| crate::hex::encode(&k.id))
            .collect()
    }

    /// A new random key, base64-encoded, for `vigil keys` and the demo.
    pub fn generate_line() -> Result<String, String> {
        let mut bytes = [0u8; 32];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| "no randomness".to_owned())?;
        Ok(STANDARD.encode(bytes))
    }

    /// Seals `plaintext` with the first key; the result is URL-safe base64, cookie-ready.
    pub fn seal(&self, purpose: Purpose, plaintext: &[u8]) -> Result<String, String> {
        let key = self.keys.first().ok_or("empty key ring")?;
        let mut buffer = plaintext.to_vec();
        let nonce = key
            .aead
            .seal_in_place_append_tag(Aad::from(purpose.aad()), &mut buffer)
            .map_err(|_| "sealing failed".to_owned())?;
        let mut out = Vec::with_capacity(1 + KEY_ID_LEN + NONCE_LEN + buffer.len());
        out.push(VERSION);
        out.extend_from_slice(&key.id);
        out.extend_from_slice(nonce.as_ref());
        out.extend_from_slice(&buffer);
        Ok(URL_SAFE_NO_PAD.encode(out))
    }

    /// Opens a value sealed by any key of the ring for `purpose`.
    pub fn open(&self, purpose: Purpose, sealed: &str) -> Result<Vec<u8>, OpenError> {
        let raw = URL_SAFE_NO_PAD
            .decode(sealed.trim())
            .map_err(|_| OpenError::Malformed)?;
        if raw.len() < 1 + KEY_ID_LEN + NONCE_LEN + 16 || raw[0] != VERSION {
            return Err(OpenError::Malformed);
        }
        let id = &raw[1..1 + KEY_ID_LEN];
        let key = self
            .keys
            .iter()
            .find(|k| k.id == id)
            .ok_or(OpenError::UnknownKey)?;
        let nonce_bytes: [u8; NONCE_LEN] = raw[1 + KEY_ID_LEN..1 + KEY_ID_LEN + NONCE_LEN]
            .try_into()
            .map_err(|_| OpenError::Malformed)?;
        let mut buffer = raw[1 + KEY_ID_LEN + NONCE_LEN..].to_vec();
        let plain = key
            .aead
            .open_in_place(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(purpose.aad()),
                &mut buffer,
            )
            .map_err(|_| OpenError::Tampered)?;
        Ok(plain.to_vec())
    }

    /// An HMAC tag over `data` with the first key's MAC key, for CSRF tokens bound to a
    /// session.
    pub fn tag(&self, data: &[u8]) -> String {
        match self.keys.first() {
            Some(key) => URL_SAFE_NO_PAD.encode(&hmac::sign(&key.mac, data).as_ref()[..16]),
            None => String::new(),
        }
    }

    /// Checks a tag made by [`KeyRing::tag`] with any key of the ring, in constant time.
    pub fn verify_tag(&self, data: &[u8], tag: &str) -> bool {
        let Ok(tag) = URL_SAFE_NO_PAD.decode(tag.trim()) else {
            return false;
        };
        self.keys.iter().any(|key| {
            let expected = hmac::sign(&key.mac, data);
            tag.len() == 16
                && aws_lc_rs::constant_time::verify_slices_are_equal(&expected.as_ref()[..16], &tag)
                    .is_ok()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(lines: &[&str]) -> KeyRing {
        KeyRing::parse(&lines.join("\n")).unwrap()
    }

    #[test]
    fn seal_open_and_rotation() {
        let old = KeyRing::generate_line().unwrap();
        let new = KeyRing::generate_line().unwrap();
        let sealed = ring(&[&old]).seal(Purpose::Session, b"alice").unwrap();
        // New key first: old values still open.
        assert_eq!(
            ring(&[&new, &old]).open(Purpose::Session, &sealed).unwrap(),
            b"alice"
        );
        // Old key removed: refused.
        assert_eq!(
            ring(&[&new]).open(Purpose::Session, &sealed),
            Err(OpenError::UnknownKey)
        );
        // Wrong purpose.
        assert_eq!(
            ring(&[&old]).open(Purpose::Login, &sealed),
            Err(OpenError::Tampered)
        );
    }

    #[test]
    fn tampering_is_detected() {
        let k = KeyRing::generate_line().unwrap();
        let r = ring(&[&k]);
        let sealed = r.seal(Purpose::Session, b"payload").unwrap();
        let mut bytes = URL_SAFE_NO_PAD.decode(&sealed).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert_eq!(
            r.open(Purpose::Session, &URL_SAFE_NO_PAD.encode(&bytes)),
            Err(OpenError::Tampered)
        );
        assert_eq!(
            r.open(Purpose::Session, "garbage!"),
            Err(OpenError::Malformed)
        );
        assert_eq!(r.open(Purpose::Session, ""), Err(OpenError::Malformed));
    }

    #[test]
    fn bad_key_files_are_refused() {
        assert!(KeyRing::parse("").is_err());
        assert!(KeyRing::parse("# only a comment\n").is_err());
        assert!(KeyRing::parse("c2hvcnQ=").is_err());
        assert!(KeyRing::parse("!!!").is_err());
    }
}
