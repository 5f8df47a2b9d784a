//! `vigil health`: one probe of a running Vigil's admin listener, for container health checks
//! and exec probes. It speaks plain HTTP, or TLS (TLS 1.3, with a client certificate) when the
//! admin listener has `client_ca`, and says why when the answer is not 200.
//!
//! Where it connects and how it trusts the listener come from the flags, or from the
//! configuration file Vigil runs with (`--config`): the `[admin] listen` address (an unspecified
//! address is probed on loopback), whether it speaks TLS, and its certificate (`[admin] cert`,
//! else `[tls] cert`), which the probe then pins: it talks only to the listener presenting that
//! very certificate, whatever CA signed it and whatever names it holds. A TLS listener always
//! asks for a client certificate: `--cert` and `--key` give one its `client_ca` trusts (and
//! `allow_spiffe`, when set, allows).

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde::Deserialize;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The address probed when neither `--admin` nor `--config` names one.
pub const DEFAULT_ADMIN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9901);

/// How long the probe may take to connect, and then to get its answer.
const TIMEOUT: Duration = Duration::from_secs(3);

/// What `vigil health` was asked.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub admin: Option<SocketAddr>,
    pub path: String,
    pub config: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub server_name: Option<String>,
}

/// Why a probe did not pass.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The probe could not be set up: a bad flag, file or configuration.
    #[error("{0}")]
    Setup(String),
    /// The listener could not be reached, or the exchange broke.
    #[error("{0}")]
    Unreachable(String),
    /// The listener answered something other than 200; `reason` is the JSON `reason` of the
    /// answer (`/readyz`) or its first line.
    #[error("{path} answered {status}{}", reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    Status {
        path: String,
        status: u16,
        reason: Option<String>,
    },
}

/// Where to connect and how.
struct Target {
    addr: SocketAddr,
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
}

/// Probes once: `Ok` when the path answers 200.
pub fn probe(options: &Options) -> Result<(), Failure> {
    let target = target(options)?;
    let answer = exchange(&target, &options.path)?;
    let (status, body) = parse_answer(&answer)?;
    if status == 200 {
        return Ok(());
    }
    Err(Failure::Status {
        path: options.path.clone(),
        status,
        reason: reason_of(body),
    })
}

/// The `[admin]` and `[tls]` keys the probe reads from the configuration file; every other
/// key is ignored (the file is checked by `vigil check` and `vigil run`).
#[derive(Debug, Default, Deserialize)]
struct File {
    #[serde(default)]
    admin: FileAdmin,
    tls: Option<FileTls>,
}

#[derive(Debug, Deserialize)]
struct FileAdmin {
    #[serde(default = "default_listen")]
    listen: String,
    #[serde(default)]
    client_ca: Vec<String>,
    cert: Option<String>,
}

impl Default for FileAdmin {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            client_ca: Vec::new(),
            cert: None,
        }
    }
}

fn default_listen() -> String {
    DEFAULT_ADMIN.to_string()
}

#[derive(Debug, Deserialize)]
struct FileTls {
    cert: String,
}

fn target(options: &Options) -> Result<Target, Failure> {
    let setup = Failure::Setup;
    let from_file = match &options.config {
        Some(path) => Some(read_config(path)?),
        None => None,
    };
    let addr = match (options.admin, &from_file) {
        (Some(addr), _) => addr,
        (None, Some((addr, _))) => *addr,
        (None, None) => DEFAULT_ADMIN,
    };
    let pinned = from_file.and_then(|(_, pinned)| pinned);
    let tls = options.ca.is_some() || options.cert.is_some() || pinned.is_some();
    if !tls {
        return Ok(Target { addr, tls: None });
    }
    let (Some(cert), Some(key)) = (&options.cert, &options.key) else {
        return Err(setup(format!(
            "the admin listener at {addr} speaks TLS and asks for a client certificate: \
             give --cert and --key (a certificate its client_ca trusts)"
        )));
    };
    let chain = crate::tls::read_chain(cert).map_err(setup)?;
    let key = crate::tls::read_key(key).map_err(setup)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| setup(e.to_string()))?;
    let builder = match (&options.ca, pinned) {
        (Some(ca), _) => {
            let mut roots = rustls::RootCertStore::empty();
            crate::tls::read_roots(ca, &mut roots).map_err(setup)?;
            builder.with_root_certificates(roots)
        }
        (None, Some(pinned)) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned { pinned, provider })),
        (None, None) => {
            return Err(setup(format!(
                "to speak TLS to {addr}, give --ca (the CA of the admin listener's certificate), \
                 or --config (the probe then trusts the certificate the configuration names)"
            )));
        }
    };
    let config = builder
        .with_client_auth_cert(chain, key)
        .map_err(|e| setup(format!("--cert and --key: {e}")))?;
    // The name the certificate is checked for (with --ca): --server-name, else the IP.
    let name = match &options.server_name {
        Some(name) => ServerName::try_from(name.clone())
            .map_err(|_| setup(format!("--server-name {name:?} is not a DNS name or IP")))?,
        None => ServerName::IpAddress(addr.ip().into()),
    };
    Ok(Target {
        addr,
        tls: Some((Arc::new(config), name)),
    })
}

/// The admin address of the configuration file at `path` (an unspecified address probed on
/// loopback) and, when the listener speaks TLS, the certificate it presents.
fn read_config(path: &Path) -> Result<(SocketAddr, Option<CertificateDer<'static>>), Failure> {
    let setup = Failure::Setup;
    let text =
        std::fs::read_to_string(path).map_err(|e| setup(format!("{}: {e}", path.display())))?;
    let file: File =
        toml::from_str(&text).map_err(|e| setup(format!("{}: {e}", path.display())))?;
    if file.admin.listen.is_empty() {
        return Err(setup(format!(
            "{}: the admin listener is off (admin.listen = \"\")",
            path.display()
        )));
    }
    let mut addr: SocketAddr = file.admin.listen.parse().map_err(|_| {
        setup(format!(
            "{}: admin.listen {:?} is not an address",
            path.display(),
            file.admin.listen
        ))
    })?;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    if file.admin.client_ca.is_empty() {
        return Ok((addr, None));
    }
    let cert = match (&file.admin.cert, &file.tls) {
        (Some(cert), _) => cert.clone(),
        (None, Some(tls)) => tls.cert.clone(),
        (None, None) => {
            return Err(setup(format!(
                "{}: admin.client_ca is set but no certificate is named",
                path.display()
            )));
        }
    };
    let base = path.parent().unwrap_or(Path::new("."));
    let chain = crate::tls::read_chain(&base.join(cert)).map_err(setup)?;
    let leaf = chain
        .into_iter()
        .next()
        .ok_or_else(|| setup("the admin certificate file holds no certificate".into()))?;
    Ok((addr, Some(leaf)))
}

/// One `GET path` over HTTP/1.0, plain or TLS; the whole answer.
fn exchange(target: &Target, path: &str) -> Result<Vec<u8>, Failure> {
    let unreachable = |e: std::io::Error| Failure::Unreachable(format!("{}: {e}", target.addr));
    let mut tcp = TcpStream::connect_timeout(&target.addr, TIMEOUT).map_err(unreachable)?;
    tcp.set_read_timeout(Some(TIMEOUT)).map_err(unreachable)?;
    tcp.set_write_timeout(Some(TIMEOUT)).map_err(unreachable)?;
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: {}\r\nAccept: application/json\r\n\r\n",
        target.addr
    );
    let mut answer = Vec::new();
    match &target.tls {
        None => {
            tcp.write_all(request.as_bytes()).map_err(unreachable)?;
            read_all(&mut tcp, &mut answer).map_err(unreachable)?;
        }
        Some((config, name)) => {
            let conn = rustls::ClientConnection::new(config.clone(), name.clone())
                .map_err(|e| Failure::Setup(e.to_string()))?;
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            tls.write_all(request.as_bytes())
                .map_err(|e| Failure::Unreachable(format!("{}: TLS: {e}", target.addr)))?;
            read_all(&mut tls, &mut answer)
                .map_err(|e| Failure::Unreachable(format!("{}: TLS: {e}", target.addr)))?;
        }
    }
    Ok(answer)
}

/// Reads to the end; a connection closed without TLS close_notify after an answer arrived
/// still counts as the end of that answer.
fn read_all(from: &mut impl Read, into: &mut Vec<u8>) -> std::io::Result<()> {
    match from.read_to_end(into) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !into.is_empty() => Ok(()),
        Err(e) => Err(e),
    }
}

/// The status and body of an HTTP/1.x answer.
fn parse_answer(answer: &[u8]) -> Result<(u16, &[u8]), Failure> {
    let bad = || {
        Failure::Unreachable(format!(
            "not an HTTP answer: {:?}",
            String::from_utf8_lossy(&answer[..answer.len().min(64)])
        ))
    };
    let head_end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(bad)?;
    let head = std::str::from_utf8(&answer[..head_end]).map_err(|_| bad())?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .filter(|_| head.starts_with("HTTP/1."))
        .ok_or_else(bad)?;
    Ok((status, &answer[head_end + 4..]))
}

/// What an answer says about why: its JSON `reason` (or `error`), else its first line.
fn reason_of(body: &[u8]) -> Option<String> {
    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(body) {
        return ["reason", "error"]
            .iter()
            .find_map(|k| json.get(*k).and_then(|v| v.as_str()).map(str::to_owned));
    }
    let text = String::from_utf8_lossy(body);
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(|l| l.chars().take(200).collect())
}

/// Trusts exactly one certificate: the one the configuration file names. Signatures are still
/// checked, so only the holder of its key passes.
#[derive(Debug)]
struct Pinned {
    pinned: CertificateDer<'static>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.pinned.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the admin listener presented a certificate other than the one the configuration names"
                    .into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_and_their_reasons() {
        let answer = b"HTTP/1.0 503 Service Unavailable\r\ncontent-type: application/json\r\n\r\n{\"ready\":false,\"reason\":\"starting or draining\"}";
        let (status, body) = parse_answer(answer).unwrap();
        assert_eq!(status, 503);
        assert_eq!(reason_of(body).as_deref(), Some("starting or draining"));
        let (status, body) = parse_answer(b"HTTP/1.1 404 Not Found\r\n\r\nnot found\n").unwrap();
        assert_eq!(
            (status, reason_of(body).as_deref()),
            (404, Some("not found"))
        );
        assert_eq!(reason_of(b""), None);
        for bad in [
            &b""[..],
            b"SSH-2.0-x\r\n\r\n",
            b"HTTP/1.1 abc\r\n\r\n",
            b"HTTP/1.1 200 OK",
        ] {
            assert!(
                matches!(parse_answer(bad), Err(Failure::Unreachable(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn configuration_files() {
        let dir = std::env::temp_dir().join(format!("vigil-health-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("vigil.toml");
        let read = |text: &str| {
            std::fs::write(&file, text).unwrap();
            read_config(&file)
        };
        let (addr, pinned) = read("[admin]\nlisten = \"0.0.0.0:9901\"\n[server]\nx = 1\n").unwrap();
        assert_eq!(addr, "127.0.0.1:9901".parse().unwrap());
        assert!(pinned.is_none());
        let (addr, _) = read("[admin]\nlisten = \"[::]:9902\"\n").unwrap();
        assert_eq!(addr, "[::1]:9902".parse().unwrap());
        assert_eq!(read("").unwrap().0, DEFAULT_ADMIN);
        for (text, error) in [
            ("[admin]\nlisten = \"\"\n", "is off"),
            ("[admin]\nlisten = \"localhost:1\"\n", "not an address"),
            ("[admin\n", "vigil.toml"),
            (
                "[admin]\nclient_ca = [\"ca.pem\"]\n",
                "no certificate is named",
            ),
            (
                "[admin]\nclient_ca = [\"ca.pem\"]\n[tls]\ncert = \"missing.pem\"\n",
                "missing.pem",
            ),
        ] {
            let e = read(text).unwrap_err().to_string();
            assert!(e.contains(error), "{text:?}: {e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn tls_needs_a_client_certificate_and_a_trust() {
        let options = |ca: Option<&str>, cert: Option<&str>| Options {
            admin: Some(DEFAULT_ADMIN),
            path: "/readyz".into(),
            ca: ca.map(PathBuf::from),
            cert: cert.map(PathBuf::from),
            key: cert.map(PathBuf::from),
            ..Options::default()
        };
        let e = target(&options(Some("ca.pem"), None))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("--cert and --key"), "{e}");
        let e = target(&options(None, Some("/nonexistent/probe.pem")))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("/nonexistent/probe.pem"), "{e}");
    }
}
