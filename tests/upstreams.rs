//! Routes with several upstream endpoints, against real upstream processes: ejection of a
//! killed endpoint under load and its return, all endpoints down, `max_pending`,
//! `max_requests_per_connection`, no retry of a POST the upstream read, and a reload that
//! adds an endpoint without dropping the others' warm connections.
//!
//! Each upstream is this test binary run again as a separate process (see
//! [`upstream_process`]): a small HTTP/1.1 server on 127.0.0.1 that counts what it sees.

mod support;

use anyhow::{Context as _, Result};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PORT_VAR: &str = "VIGIL_TEST_UPSTREAM_PORT";

/// A real upstream process, killed when dropped.
struct Upstream {
    child: Child,
    addr: SocketAddr,
}

impl Upstream {
    /// Starts one on `port` (0: any free port) and waits until it listens.
    async fn start(port: u16) -> Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .args([
                "upstream_process",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(PORT_VAR, port.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads its output to the end, so that it never blocks on a full pipe.
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                // The harness may have written "test upstream_process ... " before it.
                if let Some((_, addr)) = line.split_once("listening ") {
                    let _ = tx.send(addr.trim().to_owned());
                }
            }
        });
        let addr = tokio::task::spawn_blocking(move || rx.recv_timeout(STEP))
            .await?
            .context("upstream process did not start")?
            .parse::<SocketAddr>()?;
        Ok(Self { child, addr })
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// What the process counted, straight from it (not through Vigil).
    async fn stats(&self) -> Result<serde_json::Value> {
        let mut tcp = tokio::net::TcpStream::connect(self.addr).await?;
        tcp.write_all(b"GET /_stats HTTP/1.1\r\nHost: upstream\r\nConnection: close\r\n\r\n")
            .await?;
        let mut text = String::new();
        tcp.read_to_string(&mut text).await?;
        let body = text.split("\r\n\r\n").nth(1).context("no body")?;
        Ok(serde_json::from_str(body)?)
    }

    async fn count(&self, what: &str) -> Result<u64> {
        Ok(self.stats().await?[what].as_u64().unwrap_or(0))
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The upstream server, when this binary runs as one (`VIGIL_TEST_UPSTREAM_PORT` set);
/// otherwise a test that passes at once.
#[test]
fn upstream_process() -> Result<()> {
    let Ok(port) = std::env::var(PORT_VAR) else {
        return Ok(());
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(server::run(port.parse()?))
}

mod server {
    use anyhow::Result;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper::{Request, Response};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    /// What the process counts. `connections` and `max_per_connection` leave out the
    /// connections that only asked for `/_stats`.
    #[derive(Default)]
    struct Counts {
        connections: AtomicU64,
        requests: AtomicU64,
        posts: AtomicU64,
        max_per_connection: AtomicU64,
    }

    pub async fn run(port: u16) -> Result<()> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        println!("listening {}", listener.local_addr()?);
        let counts = Arc::new(Counts::default());
        loop {
            let (stream, _) = listener.accept().await?;
            let counts = counts.clone();
            tokio::spawn(async move {
                let on_this = Arc::new(AtomicU64::new(0));
                let service = hyper::service::service_fn(move |req| {
                    handle(req, counts.clone(), on_this.clone())
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    }

    async fn handle(
        req: Request<hyper::body::Incoming>,
        counts: Arc<Counts>,
        on_this: Arc<AtomicU64>,
    ) -> Result<Response<Full<Bytes>>, String> {
        let path = req.uri().path().to_owned();
        if path == "/_stats" {
            let text = format!(
                r#"{{"connections":{},"requests":{},"posts":{},"max_per_connection":{}}}"#,
                counts.connections.load(Ordering::SeqCst),
                counts.requests.load(Ordering::SeqCst),
                counts.posts.load(Ordering::SeqCst),
                counts.max_per_connection.load(Ordering::SeqCst),
            );
            return Ok(Response::new(Full::new(Bytes::from(text))));
        }
        let carried = on_this.fetch_add(1, Ordering::SeqCst) + 1;
        if carried == 1 {
            counts.connections.fetch_add(1, Ordering::SeqCst);
        }
        counts
            .max_per_connection
            .fetch_max(carried, Ordering::SeqCst);
        counts.requests.fetch_add(1, Ordering::SeqCst);
        if req.method() == hyper::Method::POST {
            counts.posts.fetch_add(1, Ordering::SeqCst);
        }
        match path.as_str() {
            "/slow" => tokio::time::sleep(Duration::from_millis(1500)).await,
            "/read-then-drop" => {
                // Reads the whole request, then drops the connection without an answer.
                let _ = req.into_body().collect().await;
                return Err("dropped".into());
            }
            _ => {}
        }
        Ok(Response::new(Full::new(Bytes::from_static(b"ok"))))
    }
}

fn config(decisions: &std::path::Path, upstreams: &[SocketAddr], extra: &str) -> String {
    let list: Vec<String> = upstreams
        .iter()
        .map(|a| format!("\"http://{a}\""))
        .collect();
    format!(
        r#"{}
[[route]]
name = "app"
host = "localhost"
upstream = [{}]
login = "none"
allow = [{{ spiffe = ["spiffe://example.org/**"] }}]
{extra}
"#,
        base_config("", decisions),
        list.join(", ")
    )
}

fn healthy_series(addr: SocketAddr) -> String {
    format!("vigil_upstream_endpoint_healthy{{route=\"app\",endpoint=\"{addr}\"}}")
}

#[tokio::test]
async fn a_killed_endpoint_is_ejected_then_taken_back_once_healthy() -> Result<()> {
    let pki = Pki::new()?;
    let mut ups = Vec::new();
    for _ in 0..3 {
        ups.push(Upstream::start(0).await?);
    }
    let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
    let extra = r#"health = { path = "/healthz", interval = "200ms", unhealthy = 2, healthy = 1 }
outlier = { consecutive_failures = 3, base_ejection = "1s", max_ejection = "2s" }"#;
    let running = spawn(&pki, &config(&pki.path("decisions.log"), &addrs, extra)).await?;
    let web = client_config(Some(&pki.workload(SPIFFE_WEB)?), pki.ca.cert_pem(), &[])?;

    // Load: four clients, each request on a new connection, every failure timed.
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let failures = Arc::new(std::sync::Mutex::new(Vec::<(Duration, u16)>::new()));
    let served = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, failures, served, web) =
            (stop.clone(), failures.clone(), served.clone(), web.clone());
        let addr = running.addr;
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let at = started.elapsed();
                let status = get(addr, web.clone(), "/x", "")
                    .await
                    .map_or(0, |r| r.status);
                if status == 200 {
                    served.fetch_add(1, Ordering::SeqCst);
                } else if let Ok(mut f) = failures.lock() {
                    f.push((at, status));
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let victim = ups[2].addr;
    ups[2].kill();
    let ejected = eventually(Duration::from_secs(5), || async {
        metric(&running, &healthy_series(victim)).await.ok() == Some(0.0)
    })
    .await;
    assert!(ejected, "the killed endpoint was never taken out");
    let ejected_at = started.elapsed();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::SeqCst);
    for task in load {
        task.await?;
    }
    let failures = failures.lock().map(|f| f.clone()).unwrap_or_default();
    let late: Vec<_> = failures.iter().filter(|(at, _)| *at > ejected_at).collect();
    assert!(
        late.is_empty(),
        "requests failed after the ejection: {late:?} ({} served)",
        served.load(Ordering::SeqCst)
    );
    assert!(served.load(Ordering::SeqCst) > 20, "too little load");

    // Back on the same port: healthy again, and sent requests.
    let back = Upstream::start(victim.port()).await?;
    let healthy = eventually(Duration::from_secs(5), || async {
        metric(&running, &healthy_series(victim)).await.ok() == Some(1.0)
    })
    .await;
    assert!(healthy, "the endpoint was not taken back");
    let used = eventually(Duration::from_secs(5), || async {
        let _ = get(running.addr, web.clone(), "/x", "").await;
        back.count("requests").await.unwrap_or(0) > 0
    })
    .await;
    assert!(used, "the endpoint taken back got no request");
    Ok(())
}

#[tokio::test]
async fn all_endpoints_down_is_502_with_a_reason() -> Result<()> {
    let pki = Pki::new()?;
    let mut ups = Vec::new();
    for _ in 0..3 {
        ups.push(Upstream::start(0).await?);
    }
    let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
    let decisions = pki.path("decisions.log");
    let extra = r#"health = { path = "/healthz", interval = "200ms", unhealthy = 1, healthy = 1 }"#;
    let running = spawn(&pki, &config(&decisions, &addrs, extra)).await?;
    let web = client_config(Some(&pki.workload(SPIFFE_WEB)?), pki.ca.cert_pem(), &[])?;
    let reply = get(running.addr, web.clone(), "/x", "").await?;
    assert_eq!(reply.status, 200, "{reply:?}");
    for up in &mut ups {
        up.kill();
    }
    // Every check fails: all unhealthy, so all are tried (panic mode), and none answers.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let reply = get(running.addr, web, "/x", "").await?;
    assert_eq!(reply.status, 502, "{reply:?}");
    assert_eq!(reply.json()["reason"], "upstream unavailable");
    let id = reply.json()["request_id"].as_str().unwrap_or("").to_owned();
    let line = decision_for(&decisions, &id)
        .await
        .context("decision line")?;
    assert!(
        line["codes"].to_string().contains("upstream_unreachable"),
        "{line}"
    );
    assert!(line.get("endpoint").is_none(), "{line}");
    Ok(())
}

#[tokio::test]
async fn beyond_max_pending_is_503_without_contacting_the_upstream() -> Result<()> {
    let pki = Pki::new()?;
    let up = Upstream::start(0).await?;
    let decisions = pki.path("decisions.log");
    let extra = "max_connections = 1\nmax_pending = 1\nretries = 0";
    let running = spawn(&pki, &config(&decisions, &[up.addr], extra)).await?;
    let web = client_config(Some(&pki.workload(SPIFFE_WEB)?), pki.ca.cert_pem(), &[])?;
    // One request holds the one connection, one waits for it.
    let mut slow = Vec::new();
    for _ in 0..2 {
        let (addr, web) = (running.addr, web.clone());
        slow.push(tokio::spawn(
            async move { get(addr, web, "/slow", "").await },
        ));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let started = Instant::now();
    let reply = get(running.addr, web, "/x", "").await?;
    assert_eq!(reply.status, 503, "{reply:?}");
    assert!(reply.header("retry-after").is_some(), "{reply:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "not refused at once"
    );
    for task in slow {
        assert_eq!(task.await??.status, 200);
    }
    assert_eq!(
        up.count("requests").await?,
        2,
        "the refused request reached it"
    );
    let shed = metric(
        &running,
        "vigil_upstream_errors_total{route=\"app\",kind=\"shed\"}",
    )
    .await?;
    assert_eq!(shed, 1.0);
    let id = reply.json()["request_id"].as_str().unwrap_or("").to_owned();
    let line = decision_for(&decisions, &id)
        .await
        .context("decision line")?;
    assert!(
        line["codes"].to_string().contains("upstream_overloaded"),
        "{line}"
    );
    Ok(())
}

#[tokio::test]
async fn max_requests_per_connection_is_honoured() -> Result<()> {
    let pki = Pki::new()?;
    let up = Upstream::start(0).await?;
    let decisions = pki.path("decisions.log");
    let extra = "max_requests_per_connection = 3";
    let running = spawn(&pki, &config(&decisions, &[up.addr], extra)).await?;
    let web = client_config(Some(&pki.workload(SPIFFE_WEB)?), pki.ca.cert_pem(), &[])?;
    for _ in 0..10 {
        let reply = get(running.addr, web.clone(), "/x", "").await?;
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    let stats = up.stats().await?;
    assert_eq!(stats["requests"], 10, "{stats}");
    assert_eq!(stats["max_per_connection"], 3, "{stats}");
    assert_eq!(stats["connections"], 4, "{stats}");
    // The line names the endpoint that answered.
    let lines = decisions_eventually(&decisions, 10).await;
    assert!(
        lines
            .iter()
            .all(|l| l["endpoint"] == up.addr.to_string().as_str()),
        "{lines:?}"
    );
    Ok(())
}

async fn decisions_eventually(path: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
    let _ = eventually(Duration::from_secs(5), || async {
        decisions(path).len() >= n
    })
    .await;
    decisions(path)
}

#[tokio::test]
async fn a_post_the_upstream_read_is_never_retried() -> Result<()> {
    let pki = Pki::new()?;
    let a = Upstream::start(0).await?;
    let b = Upstream::start(0).await?;
    let decisions = pki.path("decisions.log");
    let running = spawn(&pki, &config(&decisions, &[a.addr, b.addr], "retries = 2")).await?;
    let web = client_config(Some(&pki.workload(SPIFFE_WEB)?), pki.ca.cert_pem(), &[])?;
    let post = "POST /read-then-drop HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
    let reply = raw(running.addr, web.clone(), "localhost", post).await?;
    assert_eq!(reply.status, 502, "{reply:?}");
    let posts = a.count("posts").await? + b.count("posts").await?;
    assert_eq!(posts, 1, "the POST was sent again");
    // The same failure on a GET is retried: once plus both retries.
    let reply = get(running.addr, web, "/read-then-drop", "").await?;
    assert_eq!(reply.status, 502, "{reply:?}");
    let requests = a.count("requests").await? + b.count("requests").await?;
    assert_eq!(requests, 1 + 3, "the GET was not retried twice");
    let retries = metric(&running, "vigil_upstream_retries_total{route=\"app\"}").await?;
    assert_eq!(retries, 2.0);
    Ok(())
}

#[tokio::test]
async fn a_reload_adding_an_endpoint_keeps_the_warm_connections() -> Result<()> {
    let pki = Pki::new()?;
    let a = Upstream::start(0).await?;
    let b = Upstream::start(0).await?;
    let decisions = pki.path("decisions.log");
    let path = pki.path("vigil.toml");
    std::fs::write(&path, config(&decisions, &[a.addr], ""))?;
    let running = vigil::start_file(&path).await?;
    let web = client_config(Some(&pki.workload(SPIFFE_WEB)?), pki.ca.cert_pem(), &[])?;
    for _ in 0..5 {
        assert_eq!(get(running.addr, web.clone(), "/x", "").await?.status, 200);
    }
    assert_eq!(a.count("connections").await?, 1);

    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, config(&decisions, &[a.addr, b.addr], ""))?;
    std::fs::rename(&tmp, &path)?;
    let answer = admin(&running, "POST", "/reload").await?;
    assert_eq!(answer.status, 200, "{answer:?}");
    for _ in 0..20 {
        assert_eq!(get(running.addr, web.clone(), "/x", "").await?.status, 200);
    }
    assert_eq!(
        a.count("connections").await?,
        1,
        "the kept endpoint's connection was dropped"
    );
    assert!(a.count("requests").await? > 5);
    assert!(
        b.count("requests").await? > 0,
        "the new endpoint got nothing"
    );
    Ok(())
}

#[tokio::test]
async fn a_host_name_is_resolved_to_its_endpoints() -> Result<()> {
    let pki = Pki::new()?;
    let up = Upstream::start(0).await?;
    let decisions = pki.path("decisions.log");
    let text = config(&decisions, &[up.addr], r#"resolve_interval = "1s""#).replace(
        &format!("\"http://{}\"", up.addr),
        &format!("\"http://localhost:{}\"", up.addr.port()),
    );
    // `resolve_interval` belongs to [upstream]: put it there.
    let text =
        text.replace("resolve_interval = \"1s\"", "") + "\n[upstream]\nresolve_interval = \"1s\"\n";
    let running = spawn(&pki, &text).await?;
    let web = client_config(Some(&pki.workload(SPIFFE_WEB)?), pki.ca.cert_pem(), &[])?;
    let reply = get(running.addr, web, "/x", "").await?;
    assert_eq!(reply.status, 200, "{reply:?}");
    let id = reply.header("x-request-id").unwrap_or_default();
    let line = decision_for(&decisions, &id)
        .await
        .context("decision line")?;
    assert_eq!(line["endpoint"], up.addr.to_string().as_str(), "{line}");
    assert_eq!(
        line["upstream"],
        format!("localhost:{}", up.addr.port()).as_str()
    );
    Ok(())
}
