//! The PROXY protocol over real sockets: 127.0.0.1 is the load balancer, 127.0.0.2 a client
//! reaching Vigil directly.

mod support;

use anyhow::Result;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const BALANCER: [u8; 4] = [127, 0, 0, 1];
const DIRECT: [u8; 4] = [127, 0, 0, 2];

/// Allowed: clients in 192.0.2.0/24 (named by the balancer) and 127.0.0.2 (direct); the
/// balancer's own address is not.
const ROUTE: &str = r#"
[[route]]
name = "api"
host = "localhost"
upstream = "http://UPSTREAM"
login = "none"
allow = [
  { spiffe = ["spiffe://example.org/ns/frontend/sa/*"], networks = ["192.0.2.0/24", "127.0.0.2/32"] },
]
"#;

struct Fixture {
    pki: Pki,
    running: vigil::Running,
    decisions: PathBuf,
    _upstream_stop: CancellationToken,
}

impl Fixture {
    async fn new(extra_server: &str) -> Result<Self> {
        let pki = Pki::new()?;
        let (upstream, stop) = echo_upstream().await?;
        let decisions = pki.path("decisions.log");
        let server = format!(
            "proxy_protocol = {{ from = [\"127.0.0.1/32\"], timeout = \"500ms\" }}\n{extra_server}"
        );
        let text = format!(
            "{}{}",
            base_config(&server, &decisions),
            ROUTE.replace("UPSTREAM", &upstream.to_string())
        );
        let running = spawn(&pki, &text).await?;
        Ok(Self {
            pki,
            running,
            decisions,
            _upstream_stop: stop,
        })
    }

    fn web(&self) -> Result<rustls::ClientConfig> {
        let web = self.pki.workload(SPIFFE_WEB)?;
        client_config(Some(&web), self.pki.ca.cert_pem(), &[b"http/1.1"])
    }

    /// A request from `from`, whose connection starts with `preface` (a PROXY header, or
    /// nothing), then TLS.
    async fn get(&self, from: [u8; 4], preface: &[u8]) -> Result<Reply> {
        let mut tcp = tcp_from(from, self.running.addr).await?;
        tcp.write_all(preface).await?;
        let name = rustls::pki_types::ServerName::try_from("localhost")?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(self.web()?));
        let mut tls = tokio::time::timeout(STEP, connector.connect(name, tcp)).await??;
        let get = "GET /x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
        tls.write_all(get.as_bytes()).await?;
        read_reply(&mut tls).await
    }

    /// The decision line of `reply`'s request.
    async fn decision(&self, reply: &Reply) -> serde_json::Value {
        let id = reply
            .header("x-request-id")
            .or_else(|| reply.json()["request_id"].as_str().map(str::to_owned))
            .unwrap_or_default();
        decision_for(&self.decisions, &id)
            .await
            .unwrap_or(serde_json::Value::Null)
    }

    async fn rejected(&self, reason: &str) -> Result<f64> {
        let series = format!("vigil_connections_rejected_total{{reason=\"{reason}\"}}");
        metric(&self.running, &series).await
    }
}

/// A TCP connection to `addr` from the loopback address `from`.
async fn tcp_from(from: [u8; 4], addr: SocketAddr) -> Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((from, 0)))?;
    Ok(socket.connect(addr).await?)
}

fn v1(client: &str) -> Vec<u8> {
    format!("PROXY TCP4 {client} 10.0.0.1 40000 443\r\n").into_bytes()
}

const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// A v2 header: `command` 0 (LOCAL) or 1 (PROXY), `family` and transport byte, `payload`.
fn v2(command: u8, family: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    h.push(0x20 | command);
    h.push(family);
    h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    h.extend_from_slice(payload);
    h
}

/// A v2 PROXY header for a TCP over IPv4 client, with a TLV after the addresses.
fn v2_tcp4(client: [u8; 4]) -> Vec<u8> {
    let mut payload = client.to_vec();
    payload.extend_from_slice(&[10, 0, 0, 1]);
    payload.extend_from_slice(&40000u16.to_be_bytes());
    payload.extend_from_slice(&443u16.to_be_bytes());
    // PP2_TYPE_AUTHORITY "localhost": skipped.
    payload.extend_from_slice(&[0x02, 0x00, 0x09]);
    payload.extend_from_slice(b"localhost");
    v2(1, 0x11, &payload)
}

/// Whether Vigil closes `tcp` (end of file or a reset) within `STEP`, without sending
/// anything.
async fn closed_by_vigil(tcp: &mut tokio::net::TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(STEP, tcp.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test]
async fn v1_and_v2_headers_name_the_client_for_rules_and_the_decision_log() -> Result<()> {
    let f = Fixture::new("").await?;
    let mapped = b"PROXY TCP6 ::ffff:192.0.2.9 ::1 40000 443\r\n".to_vec();
    let mut v6 = "2001:db8::7"
        .parse::<std::net::Ipv6Addr>()?
        .octets()
        .to_vec();
    v6.extend_from_slice(&[0; 16]);
    v6.extend_from_slice(&[0x9c, 0x40, 0x01, 0xbb]);
    let cases: [(&str, Vec<u8>, &str, u16); 6] = [
        // An IPv4-mapped client is plain IPv4, as at accept; an IPv6 one is itself.
        ("v1 TCP6 mapped", mapped, "192.0.2.9", 200),
        ("v2 IPv6", v2(1, 0x21, &v6), "2001:db8::7", 403),
        ("v1 allowed", v1("192.0.2.7"), "192.0.2.7", 200),
        ("v1 denied", v1("198.51.100.9"), "198.51.100.9", 403),
        ("v2 allowed", v2_tcp4([192, 0, 2, 8]), "192.0.2.8", 200),
        (
            "v2 denied",
            v2_tcp4([198, 51, 100, 10]),
            "198.51.100.10",
            403,
        ),
    ];
    for (name, header, client, status) in cases {
        let reply = f.get(BALANCER, &header).await?;
        assert_eq!(reply.status, status, "{name}: {reply:?}");
        let line = f.decision(&reply).await;
        assert_eq!(line["client"], client, "{name}: {line}");
        if status == 200 {
            assert_eq!(
                reply.upstream_header("x-forwarded-for").as_deref(),
                Some(client),
                "{name}"
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn local_and_unknown_are_served_as_the_balancer() -> Result<()> {
    let f = Fixture::new("").await?;
    for (name, header) in [
        ("v2 LOCAL", v2(0, 0x00, &[])),
        ("v1 UNKNOWN", b"PROXY UNKNOWN\r\n".to_vec()),
    ] {
        let reply = f.get(BALANCER, &header).await?;
        // The balancer's own address is not in the rule's networks.
        assert_eq!(reply.status, 403, "{name}: {reply:?}");
        assert_eq!(f.decision(&reply).await["client"], "127.0.0.1", "{name}");
    }
    Ok(())
}

#[tokio::test]
async fn an_unlisted_peer_is_served_as_itself_and_refused_with_a_header() -> Result<()> {
    let f = Fixture::new("").await?;
    // Without a header: served with its own address, as without the PROXY protocol.
    let reply = f.get(DIRECT, b"").await?;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(f.decision(&reply).await["client"], "127.0.0.2");
    // With one, v1 or v2, even naming an allowed client: refused before TLS.
    for header in [v1("192.0.2.7"), v2_tcp4([192, 0, 2, 7])] {
        assert!(f.get(DIRECT, &header).await.is_err(), "{header:?}");
    }
    assert_eq!(f.rejected("proxy_header_untrusted").await?, 2.0);
    Ok(())
}

#[tokio::test]
async fn a_balancer_connection_without_a_valid_header_is_refused() -> Result<()> {
    let f = Fixture::new("").await?;
    // No header at all: the TLS handshake goes straight to Vigil.
    assert!(f.get(BALANCER, b"").await.is_err());
    assert_eq!(f.rejected("proxy_header_missing").await?, 1.0);

    // Cut short, over-long (v1 past 107 bytes without its CRLF, v2 past 16 + 1024), malformed.
    let mut long_v2 = v2_tcp4([192, 0, 2, 7]);
    long_v2[14..16].copy_from_slice(&2000u16.to_be_bytes());
    let bad: [(&str, Vec<u8>, bool); 4] = [
        ("cut short", b"PROXY TCP4 192.0.2.7 10.0".to_vec(), true),
        (
            "v1 over-long",
            format!("PROXY TCP4 {}", "9".repeat(120)).into_bytes(),
            false,
        ),
        ("v2 over-long", long_v2, false),
        (
            "malformed",
            b"PROXY TCP4 192.0.2.700 10.0.0.1 1 2\r\n".to_vec(),
            false,
        ),
    ];
    for (name, bytes, close) in bad {
        let mut tcp = tcp_from(BALANCER, f.running.addr).await?;
        tcp.write_all(&bytes).await?;
        if close {
            tcp.shutdown().await?;
        }
        assert!(closed_by_vigil(&mut tcp).await, "{name}");
    }
    let counted = eventually(STEP, || async {
        f.rejected("proxy_header_invalid").await.ok() == Some(4.0)
    })
    .await;
    assert!(counted, "{}", f.rejected("proxy_header_invalid").await?);

    // Slow: half a header, then nothing until past the 500ms timeout.
    let mut tcp = tcp_from(BALANCER, f.running.addr).await?;
    tcp.write_all(b"PROXY TCP4 192.0.2.7 ").await?;
    let started = std::time::Instant::now();
    assert!(closed_by_vigil(&mut tcp).await, "slow");
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(f.rejected("proxy_header_timeout").await?, 1.0);
    Ok(())
}

/// A balancer's connections count against the clients they name: two clients behind it each
/// get their own share of `max_connections_per_source`.
#[tokio::test]
async fn per_source_limits_count_the_named_client() -> Result<()> {
    let f = Fixture::new("max_connections_per_source = 1").await?;
    let open = |header: Vec<u8>| {
        let f = &f;
        async move {
            let mut tcp = tcp_from(BALANCER, f.running.addr).await?;
            tcp.write_all(&header).await?;
            let name = rustls::pki_types::ServerName::try_from("localhost")?;
            let connector = tokio_rustls::TlsConnector::from(Arc::new(f.web()?));
            let mut tls = tokio::time::timeout(STEP, connector.connect(name, tcp)).await??;
            tls.write_all(b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .await?;
            let status = read_reply(&mut tls).await?.status;
            anyhow::Ok((status, tls))
        }
    };
    let (first, _held) = open(v1("192.0.2.7")).await?;
    assert_eq!(first, 200);
    let (other, _held_too) = open(v1("192.0.2.8")).await?;
    assert_eq!(other, 200, "another client behind the same balancer");
    assert!(
        open(v1("192.0.2.7")).await.is_err(),
        "a second connection of the same client"
    );
    assert_eq!(f.rejected("max_connections_per_source").await?, 1.0);
    Ok(())
}
