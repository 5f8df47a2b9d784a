//! The signed assertion sent upstream in `X-Vigil-Assertion`: a short-lived ES256 JWT saying
//! who is asking and on what evidence, verifiable with the keys at `/.vigil/jwks.json`.
//!
//! Keys come from a PEM file of PKCS#8 P-256 private keys: the first signs, all are
//! published, so a new key can be added first and the old one removed once no assertion it
//! signed can still be valid.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use std::path::Path;
use std::time::Duration;

struct Key {
    kid: String,
    pair: EcdsaKeyPair,
    jwk: serde_json::Value,
}

/// Signs assertions; part of the configuration snapshot.
pub struct Signer {
    keys: Vec<Key>,
    pub issuer: String,
    pub lifetime: Duration,
    rng: SystemRandom,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field(
                "keys",
                &self.keys.iter().map(|k| &k.kid).collect::<Vec<_>>(),
            )
            .field("issuer", &self.issuer)
            .finish()
    }
}

impl Signer {
    pub fn from_file(path: &Path, issuer: String, lifetime: Duration) -> Result<Self, String> {
        let pem = std::fs::read(path)
            .map_err(|e| format!("{}: {}", path.display(), crate::error::file_error(&e)))?;
        Self::from_pem(&pem, issuer, lifetime).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn from_pem(pem: &[u8], issuer: String, lifetime: Duration) -> Result<Self, String> {
        let mut keys = Vec::new();
        for key in PrivateKeyDer::pem_slice_iter(pem) {
            let key = key.map_err(|e| format!("not a PEM private key: {e:?}"))?;
            let PrivateKeyDer::Pkcs8(der) = key else {
                return Err("keys must be PKCS#8 (\"BEGIN PRIVATE KEY\") P-256 keys".into());
            };
            let pair =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der.secret_pkcs8_der())
                    .map_err(|e| format!("not a P-256 key: {e}"))?;
            let point = pair.public_key().as_ref();
            if point.len() != 65 || point[0] != 4 {
                return Err("unexpected public key encoding".into());
            }
            let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, point);
            let kid = URL_SAFE_NO_PAD.encode(&digest.as_ref()[..12]);
            let jwk = serde_json::json!({
                "kty": "EC",
                "crv": "P-256",
                "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
                "kid": kid,
                "use": "sig",
                "alg": "ES256",
            });
            keys.push(Key { kid, pair, jwk });
        }
        if keys.is_empty() {
            return Err("no private key found".into());
        }
        Ok(Self {
            keys,
            issuer,
            lifetime,
            rng: SystemRandom::new(),
        })
    }

    /// A new P-256 key in PKCS#8 PEM, for `vigil keys` and the demo.
    pub fn generate_pem() -> Result<String, String> {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|e| e.to_string())?;
        let b64 = base64::engine::general_purpose::STANDARD.encode(doc.as_ref());
        let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).unwrap_or(""));
            pem.push('\n');
        }
        pem.push_str("-----END PRIVATE KEY-----\n");
        Ok(pem)
    }

    /// The public keys, as a JWK Set.
    /// The key ids (`kid`) of the published keys, in order.
    pub fn kids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.kid.as_str()).collect()
    }

    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({ "keys": self.keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() })
    }

    /// Signs `claims` (which must not carry iss/iat/exp; they are added here).
    pub fn sign(
        &self,
        mut claims: serde_json::Map<String, serde_json::Value>,
        now: i64,
    ) -> Result<String, String> {
        let key = self.keys.first().ok_or("no signing key")?;
        claims.insert("iss".into(), self.issuer.clone().into());
        claims.insert("iat".into(), now.into());
        claims.insert("exp".into(), (now + self.lifetime.as_secs() as i64).into());
        let header = serde_json::json!({ "alg": "ES256", "typ": "JWT", "kid": key.kid });
        let mut token = URL_SAFE_NO_PAD.encode(header.to_string());
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(serde_json::Value::Object(claims).to_string()));
        let signature = key
            .pair
            .sign(&self.rng, token.as_bytes())
            .map_err(|e| format!("signing failed: {e}"))?;
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(signature.as_ref()));
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_assertions_verify_with_the_published_keys() {
        let pem = format!(
            "{}{}",
            Signer::generate_pem().unwrap(),
            Signer::generate_pem().unwrap()
        );
        let signer =
            Signer::from_pem(pem.as_bytes(), "vigil".into(), Duration::from_secs(120)).unwrap();
        let mut claims = serde_json::Map::new();
        claims.insert("sub".into(), "alice".into());
        claims.insert("aud".into(), "wiki".into());
        let now = crate::identity::now();
        let token = signer.sign(claims, now).unwrap();
        let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_value(signer.jwks()).unwrap();
        assert_eq!(jwks.keys.len(), 2);
        let header = jsonwebtoken::decode_header(&token).unwrap();
        let jwk = jwks.find(header.kid.as_deref().unwrap()).unwrap();
        let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
        validation.set_audience(&["wiki"]);
        validation.set_issuer(&["vigil"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(&token, &key, &validation).unwrap();
        assert_eq!(data.claims["sub"], "alice");
        assert_eq!(data.claims["exp"].as_i64().unwrap() - now, 120);
    }

    #[test]
    fn wrong_keys_are_refused() {
        assert!(Signer::from_pem(b"", "v".into(), Duration::from_secs(1)).is_err());
        assert!(
            Signer::from_pem(
                b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                "v".into(),
                Duration::from_secs(1)
            )
            .is_err()
        );
    }
}
