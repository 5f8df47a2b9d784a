//! `vigil demo`: a development PKI, a demo upstream and the proxy, on built-in defaults.
//!
//! The configuration it writes (`<dir>/demo.toml`) is an ordinary one: `vigil run --config`
//! serves it too, once an upstream listens where it says.

use crate::body::{self, Body};
use crate::certs;
use http::{Request, Response, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Answers every request with a JSON description of what it received: method, path and the
/// headers, in order. It shows what an upstream sees through Vigil.
pub async fn echo_upstream(listener: TcpListener, shutdown: CancellationToken) {
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, _) = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(_) => continue,
            },
        };
        let builder = builder.clone();
        tokio::spawn(async move {
            let service =
                service_fn(|req: Request<Incoming>| async move { Ok::<_, Infallible>(echo(&req)) });
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn echo(req: &Request<Incoming>) -> Response<Body> {
    let headers: Vec<String> = req
        .headers()
        .iter()
        .map(|(k, v)| format!("{k}: {}", String::from_utf8_lossy(v.as_bytes())))
        .collect();
    let payload = serde_json::json!({
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "query": req.uri().query(),
        "version": format!("{:?}", req.version()),
        "headers": headers,
    });
    let mut response = Response::new(body::full(format!("{payload:#}\n")));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

/// The demo's configuration text.
pub fn config_text(listen: SocketAddr, admin: SocketAddr, upstream: SocketAddr) -> String {
    format!(
        r#"# Written by `vigil demo`. A complete, ordinary configuration.
[server]
listen = "{listen}"

[tls]
cert = "server.pem"
key = "server.key"
client_ca = ["ca.pem"]
crl = ["ca.crl"]

[admin]
listen = "{admin}"

[log]
decisions = "stdout"

[[route]]
name = "demo"
host = "*"
upstream = "http://{upstream}"
login = "none"
# Only the demo workload may pass; the demo device certificate is denied.
allow = [{{ spiffe = ["{workload}"] }}]
"#,
        workload = certs::DEMO_WORKLOAD_ID,
    )
}

/// Options for `vigil demo`.
#[derive(Debug, Clone)]
pub struct Options {
    pub dir: PathBuf,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
}

/// Sets everything up, starts serving, prints how to try it, and runs until `stop`.
pub async fn run(opts: &Options, stop: CancellationToken) -> Result<(), String> {
    let report = certs::init(&opts.dir, false).map_err(|e| e.to_string())?;
    for line in report.lines().iter().filter(|l| l.starts_with("created")) {
        println!("{line}");
    }
    let upstream = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("demo upstream: {e}"))?;
    let upstream_addr = upstream.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(echo_upstream(upstream, stop.clone()));

    let config_path = opts.dir.join("demo.toml");
    std::fs::write(
        &config_path,
        config_text(opts.listen, opts.admin, upstream_addr),
    )
    .map_err(|e| format!("{}: {e}", config_path.display()))?;
    let ctx = crate::config::Context::first().map_err(|e| e.to_string())?;
    let snapshot = crate::config::load_file(&config_path, &ctx).map_err(|p| p.to_string())?;
    let running = crate::start(snapshot).await.map_err(|e| e.to_string())?;
    print_instructions(&opts.dir, running.addr, running.admin, upstream_addr);
    stop.cancelled().await;
    running.shutdown().await;
    Ok(())
}

fn print_instructions(
    dir: &Path,
    addr: SocketAddr,
    admin: Option<SocketAddr>,
    upstream: SocketAddr,
) {
    let d = dir.display();
    let port = addr.port();
    println!();
    println!(
        "Vigil demo is running: proxy https://localhost:{port}/ -> demo upstream http://{upstream}/"
    );
    println!();
    println!(
        "Allowed (the demo workload certificate, SPIFFE ID {}):",
        certs::DEMO_WORKLOAD_ID
    );
    println!(
        "  curl --cacert {d}/ca.pem --cert {d}/workload.pem --key {d}/workload.key https://localhost:{port}/hello"
    );
    println!();
    println!("Denied with 403 (the demo device certificate has no allowed SPIFFE ID):");
    println!(
        "  curl --cacert {d}/ca.pem --cert {d}/device.pem --key {d}/device.key https://localhost:{port}/hello"
    );
    println!();
    println!("Refused at the handshake (no client certificate):");
    println!("  curl --cacert {d}/ca.pem https://localhost:{port}/hello");
    if let Some(admin) = admin {
        println!();
        println!("Metrics: curl http://{admin}/metrics");
    }
    println!();
    println!("Decision log lines follow on stdout. Ctrl-C stops.");
}
