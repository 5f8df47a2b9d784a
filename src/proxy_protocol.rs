//! The PROXY protocol (v1 text and v2 binary, as HAProxy's `proxy-protocol.txt` defines
//! them): the header an L4 load balancer sends ahead of the client's first byte, naming the
//! client it connected for. Without it, every connection through the balancer comes from the
//! balancer's address, and rules, risk, limits and logs all see the wrong client.
//!
//! Only the balancers listed in `[server] proxy_protocol.from` may send one; each of their
//! connections must start with one. It is read before the TLS handshake, never past its last
//! byte (what follows is the client's TLS), within a size bound and `timeout`. Parsing a whole
//! header is the `ppp` crate's; knowing where it ends, and every bound, is this module's.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// `[server] proxy_protocol`, compiled: which peers are load balancers, and how long they
/// have to send their header.
#[derive(Debug, Clone)]
pub struct ProxyProtocol {
    /// The load balancers' networks. A connection from one must start with a header; from
    /// anywhere else it must not.
    pub from: Vec<ipnet::IpNet>,
    /// Time allowed for the whole header, counted from accept.
    pub timeout: Duration,
}

impl ProxyProtocol {
    /// Whether a connection from `peer` (its TCP address) must start with a header.
    pub fn expected_from(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.from.iter().any(|net| net.contains(&peer))
    }
}

/// The v2 signature, the first 12 bytes of every v2 header.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// How every v1 header starts.
const V1_PREFIX: &[u8; 6] = b"PROXY ";
/// The longest v1 header, its CRLF included (the spec's 107 bytes).
const V1_MAX: usize = 107;
/// The fixed part of a v2 header: signature, version and command, family and transport, and
/// the length of what follows.
const V2_FIXED: usize = 16;
/// The most a v2 header may carry after its fixed part. Addresses take 216 bytes at most (a
/// pair of AF_UNIX paths); balancers add a few dozen bytes of TLVs (AWS's VPC endpoint ID,
/// Azure's link ID, HAProxy's SSL and authority TLVs). The spec allows up to 65535: a larger
/// header is refused rather than read.
pub const V2_MAX_PAYLOAD: usize = 1024;
/// The shortest header of either version (v1's `PROXY UNKNOWN\r\n`): reading this many bytes
/// first never takes a byte of the client's TLS.
const SHORTEST: usize = 15;

/// Why a connection from a load balancer was not taken: what the `reason` label and the log
/// say.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    /// The connection did not start with a PROXY signature, or closed before sending
    /// anything. Usually a balancer not set to send the PROXY protocol (every connection
    /// through it is refused then), a client inside a listed network reaching Vigil around the
    /// balancer, or a TCP health check that connects and closes.
    #[error("no PROXY protocol header")]
    Missing,
    /// It started like a header but is not a valid one: cut short, over the size bound, or
    /// malformed. Usually a broken or misconfigured balancer, or someone probing.
    #[error("invalid PROXY protocol header: {0}")]
    Invalid(String),
    /// The header was not whole within `timeout`: a stalled balancer, or a slow client
    /// inside a listed network.
    #[error("PROXY protocol header not received within {0:?}")]
    TimedOut(Duration),
}

/// Reads one header off `stream`, within `timeout`, and not one byte past its end. The
/// client it names, or `None` when it names none and the connection is to be served as the
/// TCP peer's: the v2 `LOCAL` command (the balancer's own connection, such as a health
/// check), v1 `UNKNOWN`, a v2 header with no IP family (`AF_UNSPEC`, `AF_UNIX`) or an
/// unspecified transport. TLVs are skipped.
pub async fn read(
    stream: &mut TcpStream,
    timeout: Duration,
) -> Result<Option<SocketAddr>, HeaderError> {
    let header = tokio::time::timeout(timeout, read_header(stream))
        .await
        .map_err(|_| HeaderError::TimedOut(timeout))??;
    parse(&header)
}

/// Whether the first bytes on `stream` (peeked, not read) are those of a PROXY header, so
/// that a peer not listed as a balancer can be refused for asserting a client address: a
/// TLS connection starts with a handshake record (0x16), never with either signature. Waits
/// for the first byte; `false` if the peer closes first.
pub async fn starts_with_header(stream: &TcpStream) -> std::io::Result<bool> {
    let mut first = [0u8; V2_SIGNATURE.len()];
    let n = stream.peek(&mut first).await?;
    let seen = &first[..n];
    Ok(n > 0
        && (V2_SIGNATURE.starts_with(seen)
            || seen.starts_with(V2_SIGNATURE)
            || V1_PREFIX.starts_with(seen)
            || seen.starts_with(V1_PREFIX)))
}

/// The bytes of one whole header, framed by its version's rule: v2 by its length field, v1
/// by its LF.
async fn read_header(stream: &mut TcpStream) -> Result<Vec<u8>, HeaderError> {
    let mut buf = Vec::with_capacity(V1_MAX);
    fill(stream, &mut buf, SHORTEST).await?;
    if buf.starts_with(V2_SIGNATURE) {
        fill(stream, &mut buf, V2_FIXED).await?;
        let length = match buf.get(14..V2_FIXED) {
            Some(&[hi, lo]) => usize::from(u16::from_be_bytes([hi, lo])),
            _ => return Err(HeaderError::Invalid("v2: no length".into())),
        };
        if length > V2_MAX_PAYLOAD {
            return Err(HeaderError::Invalid(format!(
                "v2: {} bytes, over the {} allowed",
                V2_FIXED + length,
                V2_FIXED + V2_MAX_PAYLOAD
            )));
        }
        fill(stream, &mut buf, V2_FIXED + length).await?;
    } else if buf.starts_with(V1_PREFIX) {
        read_line(stream, &mut buf).await?;
    } else {
        return Err(HeaderError::Missing);
    }
    Ok(buf)
}

/// The rest of a v1 header, up to and including its LF. A v1 header has no length field and
/// the client's TLS follows it at once, so bytes are peeked first and only those known to be
/// the header's are read: each round reads at least one byte, so a slow sender makes this
/// wait, never spin.
async fn read_line(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), HeaderError> {
    let mut peeked = [0u8; V1_MAX];
    while !buf.contains(&b'\n') {
        let room = V1_MAX.saturating_sub(buf.len());
        if room == 0 {
            return Err(HeaderError::Invalid(format!(
                "v1: no line end within {V1_MAX} bytes"
            )));
        }
        let n = stream
            .peek(&mut peeked[..room])
            .await
            .map_err(|e| failed(buf.len(), &e))?;
        if n == 0 {
            return Err(ended(buf.len()));
        }
        let take = peeked[..n]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(n, |i| i + 1);
        fill(stream, buf, buf.len() + take).await?;
    }
    // Only the first read (of the shortest header's length) can hold an LF before its end.
    if buf.last() != Some(&b'\n') {
        return Err(HeaderError::Invalid("v1: malformed line".into()));
    }
    Ok(())
}

/// Reads until `buf` holds `upto` bytes, and no further.
async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>, upto: usize) -> Result<(), HeaderError> {
    while buf.len() < upto {
        let want = (upto - buf.len()) as u64;
        match (&mut *stream).take(want).read_buf(buf).await {
            Ok(0) => return Err(ended(buf.len())),
            Ok(_) => {}
            Err(e) => return Err(failed(buf.len(), &e)),
        }
    }
    Ok(())
}

fn ended(read: usize) -> HeaderError {
    if read == 0 {
        HeaderError::Missing
    } else {
        HeaderError::Invalid(format!(
            "cut short: the connection closed after {read} bytes"
        ))
    }
}

fn failed(read: usize, e: &std::io::Error) -> HeaderError {
    HeaderError::Invalid(format!("the connection failed after {read} bytes: {e}"))
}

/// The client a whole header names (see [`read`] for `None`).
pub fn parse(header: &[u8]) -> Result<Option<SocketAddr>, HeaderError> {
    if header.starts_with(V2_SIGNATURE) {
        parse_v2(header)
    } else {
        parse_v1(header)
    }
}

fn parse_v1(header: &[u8]) -> Result<Option<SocketAddr>, HeaderError> {
    use ppp::v1::Addresses;
    let parsed =
        ppp::v1::Header::try_from(header).map_err(|e| HeaderError::Invalid(format!("v1: {e}")))?;
    if parsed.header.len() != header.len() {
        return Err(HeaderError::Invalid("v1: malformed line".into()));
    }
    Ok(match parsed.addresses {
        Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        Addresses::Unknown => None,
    })
}

fn parse_v2(header: &[u8]) -> Result<Option<SocketAddr>, HeaderError> {
    use ppp::v2::{Addresses, Command, Protocol};
    let parsed =
        ppp::v2::Header::try_from(header).map_err(|e| HeaderError::Invalid(format!("v2: {e}")))?;
    if parsed.len() != header.len() {
        return Err(HeaderError::Invalid("v2: length mismatch".into()));
    }
    if parsed.command == Command::Local {
        return Ok(None);
    }
    match (parsed.addresses, parsed.protocol) {
        (Addresses::IPv4(a), Protocol::Stream) => {
            Ok(Some(SocketAddr::from((a.source_address, a.source_port))))
        }
        (Addresses::IPv6(a), Protocol::Stream) => {
            Ok(Some(SocketAddr::from((a.source_address, a.source_port))))
        }
        (Addresses::IPv4(_) | Addresses::IPv6(_), Protocol::Datagram) => Err(HeaderError::Invalid(
            "v2: a datagram (UDP) header on a TCP listener".into(),
        )),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, payload: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        h.extend_from_slice(payload);
        h
    }

    const V4_PAYLOAD: [u8; 12] = [192, 0, 2, 7, 10, 0, 0, 1, 0x30, 0x39, 0x01, 0xbb];

    fn addr(text: &str) -> Option<SocketAddr> {
        text.parse().ok()
    }

    #[test]
    fn v1_names_the_client() {
        let cases: &[(&str, Option<SocketAddr>)] = &[
            (
                "PROXY TCP4 192.0.2.7 10.0.0.1 12345 443\r\n",
                addr("192.0.2.7:12345"),
            ),
            (
                "PROXY TCP6 2001:db8::7 2001:db8::1 12345 443\r\n",
                addr("[2001:db8::7]:12345"),
            ),
            ("PROXY UNKNOWN\r\n", None),
            ("PROXY UNKNOWN 1.2.3.4 5.6.7.8 1 2\r\n", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text.as_bytes()).ok(), Some(*want), "{text:?}");
        }
    }

    #[test]
    fn v1_malformed_is_refused() {
        for text in [
            "PROXY TCP4 192.0.2.7 10.0.0.1 12345 443\n",
            "PROXY TCP4 192.0.2.7 10.0.0.1 12345\r\n",
            "PROXY TCP4 2001:db8::7 10.0.0.1 12345 443\r\n",
            "PROXY TCP4 192.0.2.7 10.0.0.1 012345 443\r\n",
            "PROXY TCP4 192.0.2.7 10.0.0.1 99999 443\r\n",
            "PROXY TCP4 192.0.2.7 10.0.0.1 12345 443 extra\r\n",
            "PROXY tcp4 192.0.2.7 10.0.0.1 12345 443\r\n",
            "PROXY UDP4 192.0.2.7 10.0.0.1 12345 443\r\n",
        ] {
            assert!(
                matches!(parse(text.as_bytes()), Err(HeaderError::Invalid(_))),
                "{text:?}"
            );
        }
    }

    #[test]
    fn v2_names_the_client_and_skips_tlvs() {
        let plain = v2(1, 0x11, &V4_PAYLOAD);
        assert_eq!(parse(&plain).ok(), Some(addr("192.0.2.7:12345")));
        let mut with_tlvs = V4_PAYLOAD.to_vec();
        // An AWS VPC endpoint TLV and a NOOP.
        with_tlvs.extend_from_slice(&[0xea, 0x00, 0x04, 0x01, b'v', b'p', b'c']);
        with_tlvs.extend_from_slice(&[0x04, 0x00, 0x01, 0x00]);
        assert_eq!(
            parse(&v2(1, 0x11, &with_tlvs)).ok(),
            Some(addr("192.0.2.7:12345"))
        );
        let mut v6 = Vec::new();
        v6.extend_from_slice(
            &"2001:db8::7"
                .parse::<std::net::Ipv6Addr>()
                .map_or([0; 16], |a| a.octets()),
        );
        v6.extend_from_slice(&[0; 16]);
        v6.extend_from_slice(&[0x30, 0x39, 0x01, 0xbb]);
        assert_eq!(
            parse(&v2(1, 0x21, &v6)).ok(),
            Some(addr("[2001:db8::7]:12345"))
        );
    }

    #[test]
    fn v2_local_and_unspecified_name_no_client() {
        // LOCAL, whatever it carries.
        assert_eq!(parse(&v2(0, 0x00, &[])).ok(), Some(None));
        assert_eq!(parse(&v2(0, 0x11, &V4_PAYLOAD)).ok(), Some(None));
        // PROXY with no family, a UNIX pair, or an unspecified transport.
        assert_eq!(parse(&v2(1, 0x00, &[])).ok(), Some(None));
        assert_eq!(parse(&v2(1, 0x31, &[0; 216])).ok(), Some(None));
        assert_eq!(parse(&v2(1, 0x10, &V4_PAYLOAD)).ok(), Some(None));
    }

    #[test]
    fn v2_malformed_is_refused() {
        let mut bad_version = v2(1, 0x11, &V4_PAYLOAD);
        bad_version[12] = 0x11;
        let mut bad_command = v2(1, 0x11, &V4_PAYLOAD);
        bad_command[12] = 0x22;
        for header in [
            bad_version,
            bad_command,
            // Too short for its family's addresses.
            v2(1, 0x11, &V4_PAYLOAD[..8]),
            v2(1, 0x21, &V4_PAYLOAD),
            // A datagram on a TCP listener; an unknown family.
            v2(1, 0x12, &V4_PAYLOAD),
            v2(1, 0x41, &V4_PAYLOAD),
        ] {
            assert!(
                matches!(parse(&header), Err(HeaderError::Invalid(_))),
                "{header:?}"
            );
        }
    }

    #[test]
    fn balancers_are_matched_by_network_and_mapped_ipv4_is_ipv4() {
        let p = ProxyProtocol {
            from: vec![
                "10.0.0.0/8"
                    .parse()
                    .unwrap_or_else(|_| ipnet::IpNet::default()),
            ],
            timeout: Duration::from_secs(5),
        };
        assert!(p.expected_from(IpAddr::from([10, 1, 2, 3])));
        assert!(!p.expected_from(IpAddr::from([192, 0, 2, 7])));
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap_or(IpAddr::from([0; 16]));
        assert!(p.expected_from(mapped));
    }

    /// A connected pair over loopback: what the balancer writes, and Vigil's end.
    async fn pair() -> std::io::Result<(TcpStream, TcpStream)> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let balancer = TcpStream::connect(listener.local_addr()?).await?;
        let (vigil, _) = listener.accept().await?;
        Ok((balancer, vigil))
    }

    #[tokio::test]
    async fn reads_exactly_the_header_even_in_pieces() -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        for header in [
            b"PROXY TCP4 192.0.2.7 10.0.0.1 12345 443\r\n".to_vec(),
            v2(1, 0x11, &V4_PAYLOAD),
        ] {
            let (mut balancer, mut vigil) = pair().await?;
            let writer = tokio::spawn(async move {
                for piece in header.chunks(7) {
                    balancer.write_all(piece).await?;
                    balancer.flush().await?;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                balancer.write_all(b"\x16TLS").await?;
                Ok::<_, std::io::Error>(balancer)
            });
            let got = read(&mut vigil, Duration::from_secs(5)).await;
            assert_eq!(got.ok(), Some(addr("192.0.2.7:12345")));
            let _balancer = writer.await.map_err(std::io::Error::other)??;
            let mut rest = [0u8; 4];
            vigil.read_exact(&mut rest).await?;
            assert_eq!(
                &rest, b"\x16TLS",
                "the bytes after the header are left for TLS"
            );
        }
        Ok(())
    }

    #[tokio::test]
    async fn over_long_cut_short_slow_and_missing_are_refused() -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        let timeout = Duration::from_millis(300);
        let long_v1 = format!("PROXY TCP4 {}\r\n", "1".repeat(120));
        let mut long_v2 = v2(1, 0x11, &V4_PAYLOAD);
        long_v2[14..16].copy_from_slice(&((V2_MAX_PAYLOAD + 1) as u16).to_be_bytes());
        let kind = |e: &HeaderError| match e {
            HeaderError::Missing => "missing",
            HeaderError::Invalid(_) => "invalid",
            HeaderError::TimedOut(_) => "timeout",
        };
        let tls = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03abcdefgh".to_vec();
        let cases = [
            (long_v1.into_bytes(), false, "invalid"),
            (long_v2, false, "invalid"),
            (b"PROXY TCP4 192.0.2.7".to_vec(), true, "invalid"),
            (b"PROXY TCP4 192.0.2.7".to_vec(), false, "timeout"),
            (tls, false, "missing"),
            (Vec::new(), true, "missing"),
        ];
        for (bytes, close, expected) in cases {
            let (mut balancer, mut vigil) = pair().await?;
            balancer.write_all(&bytes).await?;
            if close {
                balancer.shutdown().await?;
            }
            let got = read(&mut vigil, timeout).await;
            assert_eq!(
                got.as_ref().err().map(kind),
                Some(expected),
                "{bytes:?}: {got:?}"
            );
        }
        Ok(())
    }

    #[tokio::test]
    async fn a_header_is_recognised_from_its_first_byte() -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        for (bytes, header) in [
            (&b"P"[..], true),
            (&b"PROXY TCP4"[..], true),
            (&b"\r\n\r\n"[..], true),
            (&b"\x16\x03\x01"[..], false),
            (&b"GET / HTTP/1.1\r\n"[..], false),
        ] {
            let (mut balancer, vigil) = pair().await?;
            balancer.write_all(bytes).await?;
            assert_eq!(starts_with_header(&vigil).await?, header, "{bytes:?}");
        }
        Ok(())
    }
}
