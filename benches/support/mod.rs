//! The scenarios beyond the nginx comparison ([`oidc`], [`reload`], [`revocation`]) and what
//! they share: a
//! session cookie kept current like a browser keeps it, plain-HTTP calls to Vigil's admin
//! listener, and files for a Vigil instance of their own.

pub mod alerts;
pub mod fleet;
/// The test OpenID Provider (`tests/idp/server.mjs`) and a programmatic login through it: the
/// integration tests' harness, used as it is.
#[path = "../../tests/support/idp.rs"]
pub mod idp;
pub mod oidc;
pub mod reload;
pub mod revocation;
pub mod upstreams;

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use http::header::{HOST, HeaderMap, HeaderValue, SET_COOKIE};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// Vigil's session cookie (chunks after the first get `.1`, `.2`, ...).
pub const SESSION_COOKIE: &str = "__Host-vigil-session";

/// The `name=value` pairs of a response's `Set-Cookie` headers, with whether each one deletes
/// the cookie (`Max-Age=0`).
pub fn set_cookies(headers: &HeaderMap) -> Vec<(String, String, bool)> {
    headers
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|line| {
            let mut parts = line.split(';');
            let (name, value) = parts.next()?.split_once('=')?;
            let deletes = parts.any(|a| {
                a.split_once('=').is_some_and(|(k, v)| {
                    k.trim().eq_ignore_ascii_case("max-age") && v.trim() == "0"
                })
            });
            Some((name.trim().to_owned(), value.trim().to_owned(), deletes))
        })
        .collect()
}

/// The session cookie one signed-in browser holds, shared by all its connections. Vigil re-seals
/// the session (a new `Set-Cookie`) at most once a minute to move its idle clock; the next
/// requests then present the new one, as a browser would.
pub struct SessionCookie {
    header: RwLock<HeaderValue>,
    pairs: RwLock<Vec<(String, String)>>,
    updates: AtomicU64,
}

impl SessionCookie {
    /// From the `Set-Cookie` headers of the login's final response.
    pub fn from_login(headers: &HeaderMap) -> Result<Self> {
        let pairs: Vec<(String, String)> = set_cookies(headers)
            .into_iter()
            .filter(|(name, _, deletes)| name.starts_with(SESSION_COOKIE) && !deletes)
            .map(|(name, value, _)| (name, value))
            .collect();
        if pairs.is_empty() {
            bail!("the login's last response set no {SESSION_COOKIE} cookie");
        }
        Ok(Self {
            header: RwLock::new(Self::join(&pairs)?),
            pairs: RwLock::new(pairs),
            updates: AtomicU64::new(0),
        })
    }

    fn join(pairs: &[(String, String)]) -> Result<HeaderValue> {
        let text = pairs
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        HeaderValue::try_from(text).context("session cookie is not a valid header value")
    }

    /// The `Cookie` header to send.
    pub fn header(&self) -> HeaderValue {
        self.header
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Takes in the session cookies a response sets or deletes.
    pub fn update(&self, headers: &HeaderMap) {
        if !headers.contains_key(SET_COOKIE) {
            return;
        }
        let changes: Vec<_> = set_cookies(headers)
            .into_iter()
            .filter(|(name, _, _)| name.starts_with(SESSION_COOKIE))
            .collect();
        if changes.is_empty() {
            return;
        }
        let mut pairs = self.pairs.write().unwrap_or_else(|e| e.into_inner());
        for (name, value, deletes) in changes {
            pairs.retain(|(n, _)| *n != name);
            if !deletes {
                pairs.push((name, value));
            }
        }
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        if let Ok(h) = Self::join(&pairs) {
            *self.header.write().unwrap_or_else(|e| e.into_inner()) = h;
        }
        self.updates.fetch_add(1, Ordering::Relaxed);
    }

    /// How many responses set a new session cookie.
    pub fn updates(&self) -> u64 {
        self.updates.load(Ordering::Relaxed)
    }
}

/// One plain-HTTP/1.1 request to an admin listener on a new connection: status and body.
pub async fn admin_call(addr: SocketAddr, method: &str, path: &str) -> Result<(StatusCode, Bytes)> {
    admin_send(addr, method, path, "").await
}

/// `POST path` with a JSON `body` to an admin listener: status and body.
pub async fn admin_post(addr: SocketAddr, path: &str, body: &str) -> Result<(StatusCode, Bytes)> {
    admin_send(addr, "POST", path, body).await
}

async fn admin_send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(StatusCode, Bytes)> {
    let exchange = async {
        let tcp = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to the admin listener {addr}"))?;
        tcp.set_nodelay(true)?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        let driver = tokio::spawn(conn);
        // The admin listener takes calls that change something only as JSON.
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, addr.to_string())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))?;
        let response = sender.send_request(req).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        drop(sender);
        let _ = driver.await;
        anyhow::Ok((status, body))
    };
    crate::timeout(crate::REQUEST_TIMEOUT, exchange)
        .await
        .with_context(|| format!("{method} http://{addr}{path}"))
}

/// Waits until the admin listener's `/readyz` answers 200 with every route ready (for an
/// `[oidc]` configuration: the provider has been discovered; the instance alone is ready as soon
/// as one route can serve, a certificate-only one before discovery).
pub async fn wait_readyz(addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + crate::READY_TIMEOUT;
    let mut last = String::from("not asked");
    let every_route_ready = |body: &[u8]| {
        serde_json::from_slice::<serde_json::Value>(body).is_ok_and(|report| {
            report["routes"]
                .as_array()
                .is_some_and(|routes| routes.iter().all(|r| r["ready"] == true))
        })
    };
    while Instant::now() < deadline {
        match admin_call(addr, "GET", "/readyz").await {
            Ok((StatusCode::OK, body)) if every_route_ready(&body) => return Ok(()),
            Ok((status, body)) => last = format!("{status}: {}", String::from_utf8_lossy(&body)),
            Err(e) => last = format!("{e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!(
        "Vigil was not ready after {:?}; /readyz said {last}",
        crate::READY_TIMEOUT
    )
}

/// A directory of its own under the bench's temp dir for one scenario's Vigil instance, with
/// copies of the server certificate, its key and the CA (the names `vigil_base_config` uses).
/// Vigil watches the directories of the files it reads; one directory per instance keeps the
/// files one instance rewrites from waking another.
pub fn instance_dir(root: &Path, name: &str) -> Result<PathBuf> {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for file in ["server.pem", "server.key", "ca.pem"] {
        std::fs::copy(root.join(file), dir.join(file))
            .with_context(|| format!("copying {file} to {}", dir.display()))?;
    }
    Ok(dir)
}

/// Writes `text` to `path` through a temporary file and a rename, so a reader sees the old or
/// the new file, never half of one.
pub fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

/// A free port on 127.0.0.1, as an address.
pub fn free_addr() -> Result<SocketAddr> {
    Ok(SocketAddr::from(([127, 0, 0, 1], crate::free_port()?)))
}

/// Percentiles of durations in nanoseconds, in milliseconds.
pub fn percentile_ms(sorted_ns: &[u64], p: f64) -> Option<f64> {
    crate::percentile_us(sorted_ns, p).map(|us| us / 1000.0)
}
