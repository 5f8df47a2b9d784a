//! The floor of the proxy benchmark (benches/proxy.rs): a minimal mTLS reverse proxy that checks
//! nothing. TLS 1.3 with X25519, as the load generator offers; a client certificate verified
//! against the CA; HTTP/1.1 or HTTP/2 (ALPN); every request forwarded to the upstream over a
//! keep-alive pool, bodies streamed both ways. No routing, rules, logs, metrics or header
//! hygiene, and no session tickets. Built by scripts/bench (`cargo build --release --example
//! floor`); usage: `floor LISTEN UPSTREAM DIR`, DIR holding server.pem, server.key and ca.pem.

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::crypto::aws_lc_rs::{default_provider, kx_group};
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

type Body = Either<Incoming, Empty<Bytes>>;

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, upstream, dir] = &args[..] else {
        bail!("usage: floor LISTEN UPSTREAM DIR");
    };
    let dir = Path::new(dir);
    let mut provider = default_provider();
    provider.kx_groups = vec![kx_group::X25519];
    let provider = Arc::new(provider);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(dir.join("ca.pem"))?)?;
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
    let chain = CertificateDer::pem_file_iter(dir.join("server.pem"))?.collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key"))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tls.send_tls13_tickets = 0;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    let client: Client<_, Incoming> = Client::builder(TokioExecutor::new()).build(http);
    let upstream: Arc<str> = format!("http://{upstream}").into();
    let listener = tokio::net::TcpListener::bind(listen.as_str())
        .await
        .with_context(|| format!("binding {listen}"))?;
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, client, upstream) = (acceptor.clone(), client.clone(), upstream.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = service_fn(move |mut req: Request<Incoming>| {
                let (client, upstream) = (client.clone(), upstream.clone());
                async move {
                    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
                    *req.uri_mut() = Uri::try_from(format!("{upstream}{path}"))?;
                    *req.version_mut() = Version::HTTP_11;
                    Ok::<_, anyhow::Error>(match client.request(req).await {
                        Ok(resp) => resp.map(Body::Left),
                        Err(_) => Response::builder()
                            .status(StatusCode::BAD_GATEWAY)
                            .body(Body::Right(Empty::new()))?,
                    })
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}
