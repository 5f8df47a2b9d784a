//! `[server]`: the proxy listener's address, how it speaks HTTP, and the limits on what
//! clients control.

use super::compiler::Compiler;
use super::schema::{ProxyProtocolSection, ServerSection};
use crate::proxy_protocol::ProxyProtocol;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::net::SocketAddr;
use std::time::Duration;

/// How the proxy listener speaks HTTP. There is no sniffing of the first bytes: ALPN `h2` is
/// served as HTTP/2 only, anything else as HTTP/1.1 only, so a client cannot negotiate one
/// protocol and speak the other (an HTTP/1.1 connection that claimed `h2` would escape the
/// framing watcher, which only watches HTTP/1 connections).
#[derive(Clone)]
pub struct HttpServer {
    pub http1: http1::Builder,
    pub http2: http2::Builder<TokioExecutor>,
}

/// `[server]`, compiled; its fields go into the [`super::Snapshot`] as they are.
pub(super) struct Server {
    pub listen: SocketAddr,
    pub http: HttpServer,
    pub max_connections: usize,
    pub max_connections_per_source: usize,
    pub max_handshakes_per_source: usize,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub drain_timeout: Duration,
    pub body_read_timeout: Duration,
    pub max_body_bytes: Option<u64>,
    pub max_target_bytes: Option<usize>,
    pub proxy_protocol: Option<ProxyProtocol>,
}

impl Compiler<'_> {
    pub(super) fn server(&mut self, server: &ServerSection) -> Option<Server> {
        let listen = self.socket_addr("server.listen", &server.listen);
        if server.max_header_bytes < 8192 {
            self.problem("server.max_header_bytes", "must be at least 8192");
        }
        if server.max_connections == 0 {
            self.problem("server.max_connections", "must be at least 1");
        }
        if server.max_concurrent_streams == 0 {
            self.problem("server.max_concurrent_streams", "must be at least 1");
        }
        self.longer_than_zero(&[
            ("server.handshake_timeout", server.handshake_timeout.0),
            ("server.header_read_timeout", server.header_read_timeout.0),
            ("server.idle_timeout", server.idle_timeout.0),
            ("server.body_read_timeout", server.body_read_timeout.0),
        ]);
        let proxy_protocol = server
            .proxy_protocol
            .as_ref()
            .map(|p| self.proxy_protocol(p));
        Some(Server {
            listen: listen?,
            http: http_server(server),
            max_connections: server.max_connections,
            max_connections_per_source: server.connections_per_source(),
            max_handshakes_per_source: server.handshakes_per_source(),
            handshake_timeout: server.handshake_timeout.0,
            idle_timeout: server.idle_timeout.0,
            drain_timeout: server.drain_timeout.0,
            body_read_timeout: server.body_read_timeout.0,
            max_body_bytes: (server.max_body_bytes > 0).then_some(server.max_body_bytes),
            max_target_bytes: (server.max_target_bytes > 0).then_some(server.max_target_bytes),
            proxy_protocol,
        })
    }

    fn proxy_protocol(&mut self, p: &ProxyProtocolSection) -> ProxyProtocol {
        if p.from.is_empty() {
            self.problem_help(
                "server.proxy_protocol.from",
                "lists no load balancer",
                "list the balancers' networks, like [\"10.0.0.0/8\"], or remove \
                 `proxy_protocol` to turn it off",
            );
        }
        self.longer_than_zero(&[("server.proxy_protocol.timeout", p.timeout.0)]);
        ProxyProtocol {
            from: self.networks("server.proxy_protocol.from", &p.from),
            timeout: p.timeout.0,
        }
    }
}

/// The HTTP/1.1 and HTTP/2 servers with `[server]`'s limits applied.
fn http_server(server: &ServerSection) -> HttpServer {
    let mut http = HttpServer {
        http1: http1::Builder::new(),
        http2: http2::Builder::new(TokioExecutor::new()),
    };
    http.http1
        .timer(TokioTimer::new())
        .header_read_timeout(server.header_read_timeout.0)
        .max_buf_size(server.max_header_bytes.max(8192))
        // The buffer bound alone is approximate (one read can carry a head past it);
        // this one is checked against the parsed head, so a larger head always gets 431.
        .max_header_size(server.max_header_bytes)
        .keep_alive(true);
    http.http2
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(server.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(server.max_concurrent_streams)
        // No server pings: they would count as activity and keep idle connections open
        // forever; `idle_timeout` finds dead peers instead.
        .keep_alive_interval(None);
    http
}
