//! A webhook receiver over HTTPS on 127.0.0.1, as an alert receiver would be: it records every
//! request with its signature headers and answers with scripted statuses.

use super::Pki;
use anyhow::Result;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

/// One request as the receiver got it.
#[derive(Debug, Clone)]
pub struct Received {
    pub timestamp: String,
    pub signature: String,
    pub content_type: String,
    pub body: Bytes,
}

/// A webhook receiver over TLS with the PKI's server certificate, answering with the statuses
/// in `script` in turn (then 200), and recording every request.
pub struct Receiver {
    pub addr: SocketAddr,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    pub async fn start(pki: &Pki, script: &[u16]) -> Result<Self> {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(pki.path("server.pem"))?.collect::<Result<_, _>>()?;
        let key = PrivateKeyDer::from_pem_file(pki.path("server.key"))?;
        let mut tls = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let got = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(script.iter().copied().collect::<VecDeque<_>>()));
        let (record, statuses) = (got.clone(), script.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, record, statuses) =
                    (acceptor.clone(), record.clone(), statuses.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (record, statuses) = (record.clone(), statuses.clone());
                        async move {
                            let header = |name: &str| {
                                req.headers()
                                    .get(name)
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or_default()
                                    .to_owned()
                            };
                            let received = Received {
                                timestamp: header("x-vigil-timestamp"),
                                signature: header("x-vigil-signature"),
                                content_type: header("content-type"),
                                body: Bytes::new(),
                            };
                            let body = req.into_body().collect().await?.to_bytes();
                            record.lock().unwrap().push(Received { body, ..received });
                            let status = statuses.lock().unwrap().pop_front().unwrap_or(200);
                            Ok::<_, hyper::Error>(
                                hyper::Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::from_static(b"ok")))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Ok(Self { addr, got })
    }

    pub fn got(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// The documents of `kind` whose signature verifies with `secret`.
    pub fn signed_of_kind(&self, secret: &[u8], kind: &str) -> Vec<serde_json::Value> {
        self.got()
            .iter()
            .filter(|r| verifies(secret, r))
            .filter_map(|r| serde_json::from_slice::<serde_json::Value>(&r.body).ok())
            .filter(|d| d["kind"] == kind)
            .collect()
    }

    /// How many requests carried a signature that does not verify with `secret`.
    pub fn forged(&self, secret: &[u8]) -> usize {
        self.got().iter().filter(|r| !verifies(secret, r)).count()
    }
}

/// What a receiver does: recompute the HMAC over `<timestamp>.<body>` and compare in
/// constant time.
pub fn verifies(secret: &[u8], r: &Received) -> bool {
    let Some(hex) = r.signature.strip_prefix("sha256=") else {
        return false;
    };
    let Some(tag) = decode_hex(hex) else {
        return false;
    };
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let mut message = r.timestamp.as_bytes().to_vec();
    message.push(b'.');
    message.extend_from_slice(&r.body);
    aws_lc_rs::hmac::verify(&key, &message, &tag).is_ok()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}
