//! A fleet: three `vigil run` processes on loopback sharing their run-time state through a
//! real `redis-server` (`[state] backend = "redis"`). A device revoked on one replica is
//! refused on the others within a second and an open WebSocket is cut; a grant made on one is
//! used on another; denials spread across the three add up to one block; Redis killed,
//! restarted, emptied, slowed and stalled; a replica restarted while changes were made; Redis
//! over TLS with an ACL user. Sign-ins, logouts and session refreshes across replicas, with a
//! real OpenID Provider, are at the end.

mod support;

use anyhow::Result;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::redis::{Latency, Redis, RedisOptions, Sentinel};
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use vigil::certs::Issued;

/// A change made on one replica is in force on the others within this.
const PROPAGATION: Duration = Duration::from_secs(1);
const WORKLOAD: &str = "spiffe://example.org/ns/apps/sa/billing";

/// One replica: a `vigil run` process with its own listener, admin listener and decision log.
struct Replica {
    name: String,
    addr: SocketAddr,
    admin: SocketAddr,
    config: PathBuf,
    decisions: PathBuf,
    child: Option<Child>,
}

impl Replica {
    /// Writes the replica's configuration (the fleet's `common` text with its own ports and
    /// log) and starts it; waits until its admin listener answers.
    async fn start(pki: &Pki, name: &str, common: &str) -> Result<Self> {
        let port = world::free_port().await?;
        let admin_port = world::free_port().await?;
        let decisions = pki.path(&format!("{name}.decisions.log"));
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n\n[tls]\ncert = \"server.pem\"\nkey = \"server.key\"\nclient_ca = [\"ca.pem\"]\n\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n\n[log]\ndecisions = \"{}\"\n{common}",
            decisions.display()
        );
        let config = pki.path(&format!("{name}.toml"));
        std::fs::write(&config, text)?;
        let mut replica = Self {
            name: name.to_owned(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            admin: SocketAddr::from(([127, 0, 0, 1], admin_port)),
            config,
            decisions,
            child: None,
        };
        replica.launch().await?;
        Ok(replica)
    }

    async fn launch(&mut self) -> Result<()> {
        let log = std::fs::File::create(self.config.with_extension("log"))?;
        let child = Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(["run", "--config"])
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.admin_call("GET", "/healthz", "").await.is_err() {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            anyhow::ensure!(
                exited.is_none() && Instant::now() < deadline,
                "{} never started: {}",
                self.name,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Ok(())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.config.with_extension("log")).unwrap_or_default()
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A call to the admin listener (from loopback, which may change things).
    async fn admin_call(&self, method: &str, path: &str, body: &str) -> Result<Reply> {
        let mut tcp = tokio::time::timeout(STEP, TcpStream::connect(self.admin)).await??;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.admin,
            body.len()
        );
        tcp.write_all(request.as_bytes()).await?;
        tokio::time::timeout(STEP, read_reply(&mut tcp)).await?
    }

    async fn ready(&self) -> Result<serde_json::Value> {
        Ok(self.admin_call("GET", "/readyz", "").await?.json())
    }

    async fn metric(&self, series: &str) -> Result<f64> {
        let text = self.admin_call("GET", "/metrics", "").await?.body;
        Ok(support::metric_in(&text, series))
    }

    /// Waits until this replica has read the shared state.
    async fn synced(&self) -> Result<()> {
        let synced = eventually(Duration::from_secs(20), || async {
            self.ready()
                .await
                .is_ok_and(|r| r["shared_state"]["synced"] == true)
        })
        .await;
        anyhow::ensure!(
            synced,
            "{} never read the shared state: {}",
            self.name,
            self.log()
        );
        Ok(())
    }

    /// `GET path` as `client`: the status, or `None` when the handshake was refused.
    async fn status(&self, pki: &Pki, client: &Issued, path: &str) -> Option<u16> {
        let config = client_config(Some(client), pki.ca.cert_pem(), &[b"http/1.1"]).ok()?;
        get(self.addr, config, path, "")
            .await
            .ok()
            .map(|r| r.status)
    }

    /// `GET path` as `client`: the whole reply.
    async fn get(&self, pki: &Pki, client: &Issued, path: &str) -> Result<Reply> {
        get(
            self.addr,
            client_config(Some(client), pki.ca.cert_pem(), &[b"http/1.1"])?,
            path,
            "",
        )
        .await
    }

    /// The reason codes of the decision line of `reply`.
    async fn codes(&self, reply: &Reply) -> Vec<String> {
        let id = reply.header("x-request-id").unwrap_or_default();
        decision_for(&self.decisions, &id)
            .await
            .and_then(|line| {
                line["codes"].as_array().map(|codes| {
                    codes
                        .iter()
                        .filter_map(|c| c.as_str().map(str::to_owned))
                        .collect()
                })
            })
            .unwrap_or_default()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `[state]` timing of most tests: stale 2 s after Redis last answered.
const STATE: &str = "max_stale = \"2s\"\ntimeout = \"300ms\"\n";

/// The routes and sections every replica of a test shares, with `state` as its `[state]`
/// section.
fn common(state: &str, upstream: SocketAddr, ws: SocketAddr, extra: &str) -> String {
    format!(
        r#"
{state}
[detectors]
[detectors.denials]
per = ["device"]
threshold = 10
window = "1h"
block_for = "10m"
{extra}

[[route]]
name = "chat"
host = "localhost"
path = "/chat"
upstream = "http://{ws}"
login = "none"
allow = [{{ spiffe = ["spiffe://example.org/**"] }}]

[[route]]
name = "live"
host = "localhost"
path = "/live"
upstream = "http://{ws}"
login = "none"
require_shared_state = true
allow = [{{ spiffe = ["spiffe://example.org/**"] }}]

[[route]]
name = "jit"
host = "localhost"
path = "/jit"
upstream = "http://{upstream}"
login = "none"
allow = [{{ grant = true }}]
grants = {{ max = "1h", approvers = {{ users = ["ops@example.com"] }} }}

[[route]]
name = "strict"
host = "localhost"
path = "/strict"
upstream = "http://{upstream}"
login = "none"
require_shared_state = true
allow = [{{ spiffe = ["spiffe://example.org/**"] }}]

[[route]]
name = "app"
host = "localhost"
upstream = "http://{upstream}"
login = "none"
allow = [{{ spiffe = ["spiffe://example.org/**"], paths = ["/ok/**"] }}]
"#,
    )
}

struct Fleet {
    pki: Pki,
    redis: Redis,
    replicas: Vec<Replica>,
    common: String,
    _upstream: tokio_util::sync::CancellationToken,
}

impl Fleet {
    /// Redis with `options`, and `n` replicas, each synced.
    async fn start(n: usize, options: RedisOptions, extra: &str) -> Result<Self> {
        Self::start_with(n, options, extra, STATE).await
    }

    /// The same, with `state` as the `[state]` timing.
    async fn start_with(n: usize, options: RedisOptions, extra: &str, state: &str) -> Result<Self> {
        let pki = Pki::new()?;
        let redis = Redis::start(&pki, options).await?;
        let section = redis.state_config(redis.addr(), state);
        Self::launch(pki, redis, n, &section, extra).await
    }

    /// `n` replicas, each synced, with `section` as their `[state]` (reaching `redis`, or a
    /// Sentinel or Cluster in front of it).
    async fn launch(pki: Pki, redis: Redis, n: usize, section: &str, extra: &str) -> Result<Self> {
        let (upstream, stop) = echo_upstream().await?;
        let ws = ws_echo_upstream().await?;
        let common = common(section, upstream, ws, extra);
        let mut replicas = Vec::new();
        for name in ["a", "b", "c"].into_iter().take(n) {
            replicas.push(Replica::start(&pki, name, &common).await?);
        }
        for r in &replicas {
            r.synced().await?;
        }
        Ok(Self {
            pki,
            redis,
            replicas,
            common,
            _upstream: stop,
        })
    }

    fn workload(&self) -> Result<Issued> {
        self.pki.workload(WORKLOAD)
    }

    /// Revokes `device` on the first replica and waits until the second refuses it; its
    /// fingerprint.
    async fn revoke_on_a_seen_on_b(&self, device: &Issued) -> Result<String> {
        let fingerprint = fingerprint(device)?;
        let revoke = format!(r#"{{"device":"{fingerprint}"}}"#);
        let reply = self.replicas[0]
            .admin_call("POST", "/revoke", &revoke)
            .await?;
        anyhow::ensure!(reply.status == 200, "{reply:?}");
        let b = &self.replicas[1];
        let seen = within(PROPAGATION, || async {
            b.status(&self.pki, device, "/ok/x").await.is_none()
        })
        .await;
        anyhow::ensure!(seen.is_some(), "b never refused the device revoked on a");
        Ok(fingerprint)
    }
}

fn fingerprint(issued: &Issued) -> Result<String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes())?;
    Ok(vigil::tls::PeerCert::from_der(der.as_ref())
        .map_err(anyhow::Error::msg)?
        .fingerprint_hex)
}

/// Waits until `check` holds, polling every 10 ms, for at most `limit`; how long it took.
async fn within<F, Fut>(limit: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return Some(started.elapsed());
        }
        if started.elapsed() >= limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// Opens a WebSocket to `replica`'s `/chat` and checks that it echoes.
async fn open_chat(pki: &Pki, replica: &Replica, client: &Issued) -> Result<Socket> {
    open_socket(pki, replica, client, "/chat").await
}

/// Opens a WebSocket to `replica`'s `path` and checks that it echoes.
async fn open_socket(pki: &Pki, replica: &Replica, client: &Issued, path: &str) -> Result<Socket> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let tls = connect(
        replica.addr,
        client_config(Some(client), pki.ca.cert_pem(), &[b"http/1.1"])?,
        "localhost",
    )
    .await?;
    let (mut socket, response) = tokio::time::timeout(
        STEP,
        tokio_tungstenite::client_async(format!("wss://localhost{path}"), tls),
    )
    .await??;
    anyhow::ensure!(response.status() == 101, "{response:?}");
    socket.send(Message::text("hi")).await?;
    let echoed = tokio::time::timeout(STEP, socket.next())
        .await?
        .transpose()?;
    anyhow::ensure!(echoed == Some(Message::text("hi")), "{echoed:?}");
    Ok(socket)
}

/// Waits (at most `limit`) for the peer to end the WebSocket.
async fn ends_within<S>(socket: &mut S, limit: Duration) -> bool
where
    S: futures_util::Stream<
            Item = Result<
                tokio_tungstenite::tungstenite::Message,
                tokio_tungstenite::tungstenite::Error,
            >,
        > + Unpin,
{
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    tokio::time::timeout(limit, async {
        loop {
            match socket.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn a_device_revoked_on_one_replica_is_refused_by_all_and_its_tunnel_cut() -> Result<()> {
    let f = Fleet::start(3, RedisOptions::default(), "").await?;
    let [a, b, c] = &f.replicas[..] else {
        unreachable!()
    };
    let laptop = f.workload()?;
    let other = f.pki.workload("spiffe://example.org/ns/apps/sa/other")?;
    for r in &f.replicas {
        assert_eq!(
            r.status(&f.pki, &laptop, "/ok/x").await,
            Some(200),
            "{}",
            r.name
        );
    }
    let mut chat = open_chat(&f.pki, c, &laptop).await?;

    let revoke = format!(r#"{{"device":"{}"}}"#, fingerprint(&laptop)?);
    let reply = a.admin_call("POST", "/revoke", &revoke).await?;
    assert_eq!(reply.status, 200, "{reply:?}");
    let revoked = Instant::now();
    for r in [b, c] {
        let took = within(PROPAGATION, || async {
            r.status(&f.pki, &laptop, "/ok/x").await != Some(200)
        })
        .await;
        assert!(took.is_some(), "{} still serves the revoked device", r.name);
        // Refused at the handshake, as on the replica where it was revoked.
        assert_eq!(r.status(&f.pki, &laptop, "/ok/x").await, None);
        // Nobody else is affected.
        assert_eq!(r.status(&f.pki, &other, "/ok/x").await, Some(200));
    }
    assert!(
        ends_within(
            &mut chat,
            PROPAGATION.saturating_sub(revoked.elapsed()) + Duration::from_millis(500)
        )
        .await,
        "the tunnel on c outlived the revocation on a"
    );
    eprintln!(
        "device revoked on a: refused on b and c, tunnel on c cut, {:?}",
        revoked.elapsed()
    );
    let cut = "vigil_connections_cut_total{reason=\"device_revoked\"}";
    assert!(c.metric(cut).await? >= 1.0);
    // Every replica lists it, and a restore on b lets it back in everywhere.
    for r in &f.replicas {
        let listed = r.admin_call("GET", "/revocations", "").await?.body;
        assert!(
            listed.contains(&fingerprint(&laptop)?),
            "{}: {listed}",
            r.name
        );
    }
    let reply = b.admin_call("POST", "/restore", &revoke).await?;
    assert_eq!(reply.status, 200, "{reply:?}");
    for r in &f.replicas {
        let back = within(PROPAGATION, || async {
            r.status(&f.pki, &laptop, "/ok/x").await == Some(200)
        })
        .await;
        assert!(
            back.is_some(),
            "{} still refuses the restored device",
            r.name
        );
    }
    assert!(a.metric("vigil_state_changes_applied_total").await? >= 1.0);
    assert!(a.metric("vigil_state_changes_written_total").await? >= 1.0);
    Ok(())
}

#[tokio::test]
async fn a_grant_made_on_one_replica_is_used_on_another_and_ended_everywhere() -> Result<()> {
    let f = Fleet::start(3, RedisOptions::default(), "").await?;
    let [a, b, c] = &f.replicas[..] else {
        unreachable!()
    };
    let laptop = f.workload()?;
    assert_eq!(c.status(&f.pki, &laptop, "/jit/x").await, Some(403));
    let body = format!(
        r#"{{"subject":{{"spiffe":"{WORKLOAD}"}},"route":"jit","duration":"10m","reason":"INC-1"}}"#
    );
    let made = b.admin_call("POST", "/grants", &body).await?;
    assert_eq!(made.status, 201, "{made:?}");
    let id = made.json()["grant"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    for r in [a, c] {
        let took = within(PROPAGATION, || async {
            r.status(&f.pki, &laptop, "/jit/x").await == Some(200)
        })
        .await;
        assert!(
            took.is_some(),
            "{} does not know the grant made on b",
            r.name
        );
    }
    let listed = a.admin_call("GET", "/grants", "").await?.json();
    assert_eq!(listed["grants"][0]["id"], id.as_str(), "{listed}");
    let ended = c
        .admin_call("POST", "/grants/revoke", &format!(r#"{{"id":"{id}"}}"#))
        .await?;
    assert_eq!(ended.status, 200, "{ended:?}");
    for r in [a, b] {
        let took = within(PROPAGATION, || async {
            r.status(&f.pki, &laptop, "/jit/x").await == Some(403)
        })
        .await;
        assert!(
            took.is_some(),
            "{} still honours the grant ended on c",
            r.name
        );
    }
    Ok(())
}

#[tokio::test]
async fn denials_spread_across_the_replicas_add_up_to_one_block() -> Result<()> {
    let f = Fleet::start(3, RedisOptions::default(), "").await?;
    let laptop = f.workload()?;
    // Four denials on each replica: none of them alone sees more than ten.
    for r in &f.replicas {
        for i in 0..4 {
            let reply = r.get(&f.pki, &laptop, &format!("/denied/{i}")).await?;
            assert_eq!(reply.status, 403, "{}", r.name);
        }
    }
    for r in &f.replicas {
        let took = within(Duration::from_secs(5), || async {
            let Ok(reply) = r.get(&f.pki, &laptop, "/ok/x").await else {
                return false;
            };
            reply.status == 403 && r.codes(&reply).await.iter().any(|c| c == "blocked")
        })
        .await;
        assert!(
            took.is_some(),
            "{} does not refuse the blocked device",
            r.name
        );
    }
    // One block, made once for the fleet.
    let fired = "vigil_detector_fired_total{detector=\"denials\",action=\"block\"}";
    let mut total = 0.0;
    for r in &f.replicas {
        total += r.metric(fired).await?;
    }
    assert_eq!(total, 1.0, "the block fired {total} times");
    let blocks = f.replicas[2].admin_call("GET", "/blocks", "").await?.json();
    assert_eq!(
        blocks["blocks"].as_array().map(Vec::len),
        Some(1),
        "{blocks}"
    );
    // Lifted on one, lifted on all.
    let subject = blocks["blocks"][0]["subject"].clone();
    let lift = serde_json::json!({ "subject": subject }).to_string();
    let reply = f.replicas[1]
        .admin_call("POST", "/blocks/lift", &lift)
        .await?;
    assert_eq!(reply.status, 200, "{reply:?}");
    for r in &f.replicas {
        let back = within(PROPAGATION, || async {
            r.status(&f.pki, &laptop, "/ok/x").await == Some(200)
        })
        .await;
        assert!(back.is_some(), "{} still blocks", r.name);
    }
    Ok(())
}

#[tokio::test]
async fn redis_killed_and_restarted_fails_closed_and_resyncs() -> Result<()> {
    let mut f = Fleet::start(2, RedisOptions::default(), "").await?;
    let laptop = f.workload()?;
    let other = f.pki.workload("spiffe://example.org/ns/apps/sa/other")?;
    let (a, b) = (&f.replicas[0], &f.replicas[1]);
    let mut live = open_socket(&f.pki, b, &laptop, "/live").await?;
    let mut chat = open_chat(&f.pki, b, &laptop).await?;
    f.redis.kill();
    // Within max_stale requests are decided on the last state read; after it, the routes that
    // require the shared state refuse, the others still serve.
    assert_eq!(b.status(&f.pki, &laptop, "/strict/x").await, Some(200));
    let stale = within(Duration::from_secs(6), || async {
        b.ready()
            .await
            .is_ok_and(|r| r["shared_state"]["stale"] == true)
    })
    .await;
    assert!(stale.is_some(), "b never judged its copy stale");
    // The stream of the route that requires the shared state is cut as the copy goes stale
    // (checked every 250 ms), not at the live verifier's next sweep; the other stays open.
    assert!(
        ends_within(&mut live, Duration::from_secs(1)).await,
        "the /live stream outlived the stale copy"
    );
    assert!(!ends_within(&mut chat, Duration::from_millis(300)).await);
    assert!(
        b.metric("vigil_connections_cut_total{reason=\"shared_state\"}")
            .await?
            >= 1.0
    );
    let refused = b.get(&f.pki, &laptop, "/strict/x").await?;
    assert_eq!(refused.status, 403);
    assert!(
        b.codes(&refused)
            .await
            .iter()
            .any(|c| c == "shared_state_stale")
    );
    assert_eq!(b.status(&f.pki, &laptop, "/ok/x").await, Some(200));
    let ready = b.ready().await?;
    let strict = ready["routes"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["name"] == "strict"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(strict["ready"], false, "{ready}");
    assert_eq!(b.metric("vigil_state_stale").await?, 1.0);
    // What lets someone in is refused while Redis is away; what takes access away is in force
    // at once where it was made, and queued for the others.
    let grant = format!(
        r#"{{"subject":{{"spiffe":"{WORKLOAD}"}},"route":"jit","duration":"10m","reason":"INC-2"}}"#
    );
    let started = Instant::now();
    let refused = a.admin_call("POST", "/grants", &grant).await?;
    assert_eq!(refused.status, 503, "{refused:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let revoke = format!(r#"{{"device":"{}"}}"#, fingerprint(&other)?);
    assert_eq!(a.admin_call("POST", "/revoke", &revoke).await?.status, 200);
    assert_eq!(a.status(&f.pki, &other, "/ok/x").await, None);
    assert_eq!(b.status(&f.pki, &other, "/ok/x").await, Some(200));
    assert!(a.metric("vigil_state_changes_queued").await? >= 1.0);

    // Redis comes back empty (no persistence): the queued revocation reaches b, and b's copy
    // is current again. No restart of either replica.
    f.redis.restart(&f.pki).await?;
    let took = within(Duration::from_secs(10), || async {
        b.status(&f.pki, &other, "/ok/x").await.is_none()
    })
    .await;
    assert!(
        took.is_some(),
        "the revocation made while Redis was down never reached b"
    );
    let current = within(Duration::from_secs(10), || async {
        b.ready()
            .await
            .is_ok_and(|r| r["shared_state"]["stale"] == false)
    })
    .await;
    assert!(current.is_some());
    assert_eq!(b.status(&f.pki, &laptop, "/strict/x").await, Some(200));
    assert!(b.metric("vigil_state_resyncs_total").await? >= 2.0);
    assert!(b.metric("vigil_state_reconnects_total").await? >= 1.0);
    assert_eq!(a.admin_call("POST", "/grants", &grant).await?.status, 201);
    Ok(())
}

/// While Redis is lost (before the copy is stale), a replica's detectors go by its own counts:
/// an outage never turns a detector off.
#[tokio::test]
async fn detectors_fire_on_their_own_counts_while_redis_is_lost() -> Result<()> {
    let state = "max_stale = \"60s\"\ntimeout = \"300ms\"\n";
    let mut f = Fleet::start_with(2, RedisOptions::default(), "", state).await?;
    let a = &f.replicas[0];
    let noisy = f.pki.workload("spiffe://example.org/ns/apps/sa/noisy")?;
    f.redis.kill();
    let lost = within(Duration::from_secs(5), || async {
        a.metric("vigil_state_reconnects_total")
            .await
            .is_ok_and(|n| n >= 1.0)
    })
    .await;
    assert!(lost.is_some(), "a never noticed Redis was gone");
    for i in 0..11 {
        let status = a.status(&f.pki, &noisy, &format!("/denied/{i}")).await;
        assert_eq!(status, Some(403));
    }
    let blocked = within(Duration::from_secs(5), || async {
        let Ok(reply) = a.get(&f.pki, &noisy, "/ok/x").await else {
            return false;
        };
        reply.status == 403 && a.codes(&reply).await.iter().any(|c| c == "blocked")
    })
    .await;
    assert!(blocked.is_some(), "no detector fired while Redis was away");
    // Still within max_stale: it is the lost link, not a stale copy, that let it count alone.
    assert_eq!(a.metric("vigil_state_stale").await?, 0.0);
    Ok(())
}

/// Two replicas blocking one subject at once, for different lengths: every replica and Redis
/// end up with the block that ends later, whichever write came last.
#[tokio::test]
async fn two_blocks_of_one_subject_keep_the_later_end_everywhere() -> Result<()> {
    let f = Fleet::start(2, RedisOptions::default(), "").await?;
    let (a, b) = (&f.replicas[0], &f.replicas[1]);
    let short = r#"{"subject":{"address":"127.0.0.9"},"duration":"10m"}"#;
    let long = r#"{"subject":{"address":"127.0.0.9"},"duration":"2h"}"#;
    let (made_a, made_b) = tokio::join!(
        a.admin_call("POST", "/blocks", short),
        b.admin_call("POST", "/blocks", long)
    );
    assert_eq!(made_a?.status, 201);
    assert_eq!(made_b?.status, 201);
    let later = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64
        + 3600;
    for r in &f.replicas {
        let kept = within(PROPAGATION, || async {
            r.admin_call("GET", "/blocks", "").await.is_ok_and(|reply| {
                let blocks = reply.json();
                blocks["blocks"].as_array().is_some_and(|list| {
                    list.len() == 1 && list[0]["until"].as_i64().is_some_and(|u| u > later)
                })
            })
        })
        .await;
        assert!(kept.is_some(), "{} does not hold the 2h block", r.name);
    }
    let stored = f.redis.cli(
        &f.pki,
        &["ZSCORE", "{vigil}:expiry", "block:address:127.0.0.9"],
    )?;
    let stored: f64 = stored
        .parse()
        .map_err(|e| anyhow::anyhow!("{stored:?}: {e}"))?;
    assert!(
        stored as i64 > later,
        "Redis holds the block until {stored}"
    );
    Ok(())
}

#[tokio::test]
async fn a_redis_that_lost_its_data_is_given_back_the_revocations() -> Result<()> {
    let mut f = Fleet::start(2, RedisOptions::default(), "").await?;
    let laptop = f.workload()?;
    f.revoke_on_a_seen_on_b(&laptop).await?;
    let b = &f.replicas[1];
    // Redis restarts without persistence: its data set is gone.
    f.redis.restart(&f.pki).await?;
    assert!(
        within(Duration::from_secs(10), || async {
            f.redis
                .cli(&f.pki, &["HLEN", "{vigil}:state"])
                .is_ok_and(|n| n != "0")
        })
        .await
        .is_some(),
        "no replica wrote the state back"
    );
    // A replica started now reads the revocation; the others never let the device back.
    let c = Replica::start(&f.pki, "c", &f.common).await?;
    c.synced().await?;
    assert_eq!(c.status(&f.pki, &laptop, "/ok/x").await, None);
    assert_eq!(b.status(&f.pki, &laptop, "/ok/x").await, None);
    Ok(())
}

#[tokio::test]
async fn a_redis_flushed_under_connected_replicas_is_given_back_the_revocations() -> Result<()> {
    let f = Fleet::start(2, RedisOptions::default(), "").await?;
    let laptop = f.workload()?;
    let device = f.revoke_on_a_seen_on_b(&laptop).await?;
    let b = &f.replicas[1];
    // Emptied while both stay connected: noticed within the keys loop's 10 seconds, and the
    // revocation is written back.
    assert_eq!(f.redis.cli(&f.pki, &["FLUSHALL"])?, "OK");
    let field = format!("device:{device}");
    let back = within(Duration::from_secs(15), || async {
        f.redis
            .cli(&f.pki, &["HEXISTS", "{vigil}:state", &field])
            .is_ok_and(|n| n == "1")
    })
    .await;
    assert!(back.is_some(), "no replica noticed the flush");
    eprintln!("flush noticed and the revocation written back in {back:?}");
    let c = Replica::start(&f.pki, "c", &f.common).await?;
    c.synced().await?;
    assert_eq!(c.status(&f.pki, &laptop, "/ok/x").await, None);
    assert_eq!(b.status(&f.pki, &laptop, "/ok/x").await, None);
    Ok(())
}

#[tokio::test]
async fn a_replica_that_never_read_the_state_refuses_everything() -> Result<()> {
    let pki = Pki::new()?;
    let mut redis = Redis::start(&pki, RedisOptions::default()).await?;
    let (upstream, _stop) = echo_upstream().await?;
    let ws = ws_echo_upstream().await?;
    let common = common(&redis.state_config(redis.addr(), STATE), upstream, ws, "");
    redis.kill();
    let a = Replica::start(&pki, "a", &common).await?;
    let laptop = pki.workload(WORKLOAD)?;
    let ready = a.admin_call("GET", "/readyz", "").await?;
    assert_eq!(ready.status, 503, "{ready:?}");
    assert_eq!(
        ready.json()["reason"],
        "the shared state has not been read from Redis yet"
    );
    let refused = a.get(&pki, &laptop, "/ok/x").await?;
    assert_eq!(refused.status, 403);
    assert!(
        a.codes(&refused)
            .await
            .iter()
            .any(|c| c == "shared_state_unavailable")
    );
    redis.restart(&pki).await?;
    a.synced().await?;
    assert_eq!(a.status(&pki, &laptop, "/ok/x").await, Some(200));
    assert_eq!(a.admin_call("GET", "/readyz", "").await?.status, 200);
    Ok(())
}

#[tokio::test]
async fn a_slow_or_stalled_redis_never_holds_up_requests() -> Result<()> {
    let pki = Pki::new()?;
    let redis = Redis::start(&pki, RedisOptions::default()).await?;
    let latency = Latency::start(redis.addr()).await?;
    let (upstream, _stop) = echo_upstream().await?;
    let ws = ws_echo_upstream().await?;
    let common = common(&redis.state_config(latency.addr, STATE), upstream, ws, "");
    let a = Replica::start(&pki, "a", &common).await?;
    let b = Replica::start(&pki, "b", &common).await?;
    a.synced().await?;
    b.synced().await?;
    let laptop = pki.workload(WORKLOAD)?;
    // Slow: every exchange with Redis takes 200 ms more; requests do not wait for it.
    latency.set_delay(Duration::from_millis(200));
    for _ in 0..5 {
        let started = Instant::now();
        assert_eq!(a.status(&pki, &laptop, "/ok/x").await, Some(200));
        assert!(
            started.elapsed() < Duration::from_millis(1000),
            "{:?}",
            started.elapsed()
        );
    }
    // Stalled: requests still go, a grant is refused within [state] timeout, and the copy goes
    // stale after max_stale.
    latency.set_stalled(true);
    let started = Instant::now();
    for _ in 0..5 {
        assert_eq!(a.status(&pki, &laptop, "/ok/x").await, Some(200));
        assert_eq!(a.status(&pki, &laptop, "/denied").await, Some(403));
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let grant = format!(
        r#"{{"subject":{{"spiffe":"{WORKLOAD}"}},"route":"jit","duration":"10m","reason":"INC-3"}}"#
    );
    let started = Instant::now();
    let refused = a.admin_call("POST", "/grants", &grant).await?;
    assert_eq!(refused.status, 503, "{refused:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let stale = within(Duration::from_secs(8), || async {
        a.ready()
            .await
            .is_ok_and(|r| r["shared_state"]["stale"] == true)
    })
    .await;
    assert!(stale.is_some());
    assert_eq!(a.status(&pki, &laptop, "/strict").await, Some(403));
    latency.set_stalled(false);
    latency.set_delay(Duration::ZERO);
    let current = within(Duration::from_secs(10), || async {
        a.ready()
            .await
            .is_ok_and(|r| r["shared_state"]["stale"] == false)
    })
    .await;
    assert!(current.is_some(), "a never caught up after the stall");
    assert_eq!(a.status(&pki, &laptop, "/strict").await, Some(200));
    Ok(())
}

#[tokio::test]
async fn a_replica_restarted_catches_up() -> Result<()> {
    let mut f = Fleet::start(3, RedisOptions::default(), "").await?;
    let laptop = f.workload()?;
    let other = f.pki.workload("spiffe://example.org/ns/apps/sa/other")?;
    f.replicas[2].stop();
    let revoke = format!(r#"{{"device":"{}"}}"#, fingerprint(&laptop)?);
    assert_eq!(
        f.replicas[0]
            .admin_call("POST", "/revoke", &revoke)
            .await?
            .status,
        200
    );
    let body = r#"{"subject":{"spiffe":"spiffe://example.org/ns/apps/sa/other"},"route":"jit","duration":"10m","reason":"INC-4"}"#
        .to_owned();
    assert_eq!(
        f.replicas[1]
            .admin_call("POST", "/grants", &body)
            .await?
            .status,
        201
    );
    f.replicas[2].launch().await?;
    let c = &f.replicas[2];
    c.synced().await?;
    assert_eq!(c.status(&f.pki, &laptop, "/ok/x").await, None);
    assert_eq!(c.status(&f.pki, &other, "/jit/x").await, Some(200));
    Ok(())
}

/// Through Sentinel: the replicas find the master by asking it, and when the master dies and
/// Sentinel promotes its replica, they follow without a restart, with the state intact.
#[tokio::test]
async fn the_fleet_follows_a_sentinel_failover() -> Result<()> {
    let pki = Pki::new()?;
    let master = Redis::start(&pki, RedisOptions::default()).await?;
    let options = RedisOptions {
        replica_of: Some(master.port),
        ..RedisOptions::default()
    };
    let standby = Redis::start(&pki, options).await?;
    let linked = within(Duration::from_secs(10), || async {
        standby
            .cli(&pki, &["INFO", "replication"])
            .is_ok_and(|info| info.contains("master_link_status:up"))
    })
    .await;
    assert!(linked.is_some(), "the standby never replicated the master");
    let sentinel = Sentinel::start(&pki, master.port).await?;
    let url = format!(
        "redis+sentinel://127.0.0.1:{}/{}",
        sentinel.port,
        Sentinel::MASTER
    );
    let section = master.state_config_at(&url, STATE);
    let mut f = Fleet::launch(pki, master, 2, &section, "").await?;
    let laptop = f.workload()?;
    let device = f.revoke_on_a_seen_on_b(&laptop).await?;
    let field = format!("device:{device}");
    let copied = within(Duration::from_secs(5), || async {
        standby
            .cli(&f.pki, &["HEXISTS", "{vigil}:state", &field])
            .is_ok_and(|n| n == "1")
    })
    .await;
    assert!(copied.is_some(), "the revocation never reached the standby");

    f.redis.kill();
    let promoted = within(Duration::from_secs(20), || async {
        sentinel.master() == Some(standby.port.to_string())
    })
    .await;
    assert!(promoted.is_some(), "Sentinel never promoted the standby");
    eprintln!("standby promoted {promoted:?} after the master was killed");
    // A change that lets someone in is written to the new master; a revocation made on one
    // replica reaches the other; the revocation from before the failover holds everywhere.
    let (a, b) = (&f.replicas[0], &f.replicas[1]);
    let grant = format!(
        r#"{{"subject":{{"spiffe":"{WORKLOAD}"}},"route":"jit","duration":"10m","reason":"INC-6"}}"#
    );
    let granted = within(Duration::from_secs(15), || async {
        a.admin_call("POST", "/grants", &grant)
            .await
            .is_ok_and(|r| r.status == 201)
    })
    .await;
    assert!(
        granted.is_some(),
        "no grant could be written after the failover"
    );
    let other = f.pki.workload("spiffe://example.org/ns/apps/sa/other")?;
    let revoke = format!(r#"{{"device":"{}"}}"#, fingerprint(&other)?);
    assert_eq!(b.admin_call("POST", "/revoke", &revoke).await?.status, 200);
    let seen = within(Duration::from_secs(5), || async {
        a.status(&f.pki, &other, "/ok/x").await.is_none()
    })
    .await;
    assert!(
        seen.is_some(),
        "a revocation made after the failover never reached a"
    );
    for r in &f.replicas {
        assert_eq!(r.status(&f.pki, &laptop, "/ok/x").await, None, "{}", r.name);
        let ready = r.ready().await?;
        assert_eq!(ready["shared_state"]["synced"], true, "{ready}");
    }
    Ok(())
}

/// A Redis Cluster (one node holding every slot: the fleet's keys share one hash tag, so one
/// slot): the replicas share the state through the cluster client.
#[tokio::test]
async fn a_fleet_on_a_redis_cluster() -> Result<()> {
    let pki = Pki::new()?;
    let options = RedisOptions {
        cluster: true,
        ..RedisOptions::default()
    };
    let redis = Redis::start(&pki, options).await?;
    redis.claim_every_slot(&pki).await?;
    let section = redis.state_config_at(&format!("redis+cluster://{}", redis.addr()), STATE);
    let f = Fleet::launch(pki, redis, 2, &section, "").await?;
    let laptop = f.workload()?;
    f.revoke_on_a_seen_on_b(&laptop).await?;
    let grant = format!(
        r#"{{"subject":{{"spiffe":"{WORKLOAD}"}},"route":"jit","duration":"10m","reason":"INC-7"}}"#
    );
    let (a, b) = (&f.replicas[0], &f.replicas[1]);
    assert_eq!(b.admin_call("POST", "/grants", &grant).await?.status, 201);
    // A new certificate of the same workload (the revoked one is refused at the handshake).
    let renewed = f.pki.workload(WORKLOAD)?;
    let used = within(PROPAGATION, || async {
        a.status(&f.pki, &renewed, "/jit/x").await == Some(200)
    })
    .await;
    assert!(used.is_some(), "the grant made on b is not honoured on a");
    // Quiet for longer than max_stale: the blocking stream read keeps the copy current.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(a.metric("vigil_state_stale").await?, 0.0);
    Ok(())
}

#[tokio::test]
async fn redis_over_tls_with_an_acl_user() -> Result<()> {
    let options = RedisOptions {
        tls: true,
        acl_password: Some("fleet-secret-0123456789".into()),
        appendonly: true,
        ..RedisOptions::default()
    };
    let f = Fleet::start(2, options, "").await?;
    let laptop = f.workload()?;
    f.revoke_on_a_seen_on_b(&laptop).await?;
    let b = &f.replicas[1];
    let body = r#"{"subject":{"spiffe":"spiffe://example.org/ns/apps/sa/other"},"route":"jit","duration":"10m","reason":"INC-5"}"#
        .to_owned();
    assert_eq!(b.admin_call("POST", "/grants", &body).await?.status, 201);
    // The state is in Redis under the fleet's own keys, which the ACL user is limited to.
    let fields = f.redis.cli(&f.pki, &["HKEYS", "{vigil}:state"])?;
    assert!(fields.contains("device:"), "{fields}");
    assert!(fields.contains("grant:"), "{fields}");

    // A wrong password: never synced, refuses everything, and says why in its log.
    std::fs::write(f.pki.path("wrong.password"), "not-the-password\n")?;
    let wrong = f.common.replace("redis.password", "wrong.password");
    let c = Replica::start(&f.pki, "c", &wrong).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(c.admin_call("GET", "/readyz", "").await?.status, 503);
    assert_eq!(
        c.status(&f.pki, &f.pki.workload("spiffe://example.org/x")?, "/ok/x")
            .await,
        Some(403)
    );
    Ok(())
}

/// People across replicas: replica a is the world's own (with the provider), b is started in
/// this process from the same configuration with its own ports, both on one Redis.
struct People {
    w: world::World,
    b: vigil::Running,
    b_decisions: PathBuf,
    redis: Redis,
    redis_pki: Pki,
}

async fn people(rotating: bool) -> Result<People> {
    people_with(rotating, "").await
}

async fn people_with(rotating: bool, routes: &str) -> Result<People> {
    let redis_pki = Pki::new()?;
    let redis = Redis::start(&redis_pki, RedisOptions::default()).await?;
    let extra = format!(
        "\n[verify]\ninterval = \"1s\"\nmax_stale = \"30s\"\n\n{}",
        redis.state_config(redis.addr(), "")
    );
    let w = if rotating {
        world::world_rotating(&extra).await?
    } else {
        world::world_full(&extra, false, "", routes).await?
    };
    let (b, b_decisions) = second_replica(&w, "b", "session.keys").await?;
    Ok(People {
        w,
        b,
        b_decisions,
        redis,
        redis_pki,
    })
}

/// Another replica of `w`'s configuration, with its own ports, decision log and session keys
/// file `keys`.
async fn second_replica(
    w: &world::World,
    name: &str,
    keys: &str,
) -> Result<(vigil::Running, PathBuf)> {
    let port = world::free_port().await?;
    let decisions = w.pki.path(&format!("{name}.decisions.log"));
    let text = w
        .config_text
        .replace(
            &format!("listen = \"127.0.0.1:{}\"", w.port),
            &format!("listen = \"127.0.0.1:{port}\""),
        )
        .replace(
            &w.decisions.display().to_string(),
            &decisions.display().to_string(),
        )
        .replace(
            "keys_file = \"session.keys\"",
            &format!("keys_file = \"{keys}\""),
        );
    let config = w.pki.path(&format!("{name}.toml"));
    std::fs::write(&config, text)?;
    let running = vigil::start_file(&config).await?;
    let ready = eventually(Duration::from_secs(20), || async {
        admin(&running, "GET", "/readyz").await.is_ok_and(|r| {
            let r = r.json();
            r["identity_provider"]["ready"] == true && r["shared_state"]["synced"] == true
        })
    })
    .await;
    anyhow::ensure!(ready, "replica {name} never became ready");
    Ok((running, decisions))
}

/// A browser request to `running` with the Host the load balancer passes on (the world's).
async fn visit_at(
    w: &world::World,
    running: &vigil::Running,
    device: &Issued,
    path: &str,
    cookies: &str,
) -> Result<Reply> {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost:{}\r\nAccept: text/html\r\nCookie: {cookies}\r\nConnection: close\r\n\r\n",
        w.port
    );
    raw(running.addr, w.browser(device), "localhost", &request).await
}

fn open_session(w: &world::World, cookies: &str) -> Result<vigil::identity::session::Session> {
    let keys = std::fs::read_to_string(w.pki.path("session.keys"))?;
    let ring = vigil::identity::seal::KeyRing::parse(&keys).map_err(anyhow::Error::msg)?;
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::COOKIE, cookies.parse()?);
    vigil::identity::session::read(&headers, &ring).map_err(|e| anyhow::anyhow!("{e}"))
}

#[tokio::test]
async fn a_logout_on_one_replica_refuses_the_copied_cookie_on_another() -> Result<()> {
    let p = people(false).await?;
    let w = &p.w;
    let (session, _) = w.sign_in(&w.alice_laptop, "/", support::idp::ALICE).await?;
    let copy = session.clone();
    assert_eq!(
        visit_at(w, &p.b, &w.alice_laptop, "/hello", &copy)
            .await?
            .status,
        200
    );
    // Both replicas publish the same assertion keys.
    let jwks = |running: &vigil::Running| {
        let running = running.addr;
        async move {
            let request = format!(
                "GET /.vigil/jwks.json HTTP/1.1\r\nHost: localhost:{}\r\nConnection: close\r\n\r\n",
                w.port
            );
            raw(running, w.browser(&w.alice_laptop), "localhost", &request)
                .await
                .map(|r| r.body)
        }
    };
    assert_eq!(jwks(&w.running).await?, jwks(&p.b).await?);

    let out = w.log_out(&w.alice_laptop, &session).await?;
    assert_eq!(out.status, 303, "{out:?}");
    let refused = within(PROPAGATION, || async {
        visit_at(w, &p.b, &w.alice_laptop, "/hello", &copy)
            .await
            .is_ok_and(|r| r.status == 302)
    })
    .await;
    assert!(
        refused.is_some(),
        "b still takes the cookie logged out on a"
    );
    let reply = visit_at(w, &p.b, &w.alice_laptop, "/hello", &copy).await?;
    let id = reply.header("x-request-id").unwrap_or_default();
    let line = decision_for(&p.b_decisions, &id).await.unwrap_or_default();
    assert!(
        line["reasons"]
            .to_string()
            .contains("session ended by logout"),
        "{line}"
    );

    // A replica given other session keys opens none of the fleet's sessions, and says so.
    std::fs::write(
        w.pki.path("other.keys"),
        vigil::identity::seal::KeyRing::generate_line().map_err(anyhow::Error::msg)? + "\n",
    )?;
    let (c, _) = second_replica(w, "c", "other.keys").await?;
    let differ = eventually(Duration::from_secs(5), || async {
        metric(&c, "vigil_state_keys_differ")
            .await
            .is_ok_and(|n| n >= 1.0)
    })
    .await;
    assert!(differ, "c does not see that its keys differ");
    assert_eq!(metric(&p.b, "vigil_state_keys_differ").await?, 0.0);
    Ok(())
}

#[tokio::test]
async fn two_replicas_refreshing_one_session_make_one_refresh_at_the_provider() -> Result<()> {
    let p = people(true).await?;
    let w = &p.w;
    let (mut session, _) = w.sign_in(&w.alice_laptop, "/", support::idp::ALICE).await?;
    for round in 0..3 {
        let before = open_session(w, &session)?;
        let spent = before.refresh_token.clone().unwrap_or_default();
        // Past [verify] interval: the next request of the session on any replica refreshes it.
        tokio::time::sleep(Duration::from_millis(1300)).await;
        let (on_a, on_b) = tokio::join!(
            visit_at(w, &w.running, &w.alice_laptop, "/hello", &session),
            visit_at(w, &p.b, &w.alice_laptop, "/hello", &session),
        );
        let (on_a, on_b) = (on_a?, on_b?);
        assert_eq!(
            (on_a.status, on_b.status),
            (200, 200),
            "round {round}: {on_a:?} {on_b:?}"
        );
        let from_a = open_session(w, &world::cookie_pairs(&on_a))?;
        let from_b = open_session(w, &world::cookie_pairs(&on_b))?;
        let token = from_a.refresh_token.clone().unwrap_or_default();
        assert_ne!(token, spent, "round {round}: not refreshed");
        assert_eq!(
            from_b.refresh_token.as_deref(),
            Some(token.as_str()),
            "round {round}"
        );
        // Spending the rotated token twice would have revoked the grant: it is alive.
        let live = w.idp.introspect("vigil", world::SECRET, &token).await?;
        assert_eq!(live["active"], true, "round {round}: {live}");
        session = world::cookie_pairs(&on_b);
    }
    Ok(())
}

/// A replica whose refresh cannot reach the provider gives up its claim at once, so the next
/// replica that needs the session refreshes it without waiting for the claim to lapse.
#[tokio::test]
async fn a_refresh_that_could_not_reach_the_provider_gives_up_its_claim() -> Result<()> {
    let p = people(true).await?;
    let w = &p.w;
    let (session, _) = w.sign_in(&w.alice_laptop, "/", support::idp::ALICE).await?;
    let spent = open_session(w, &session)?.refresh_token.unwrap_or_default();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    w.idp.fault("/token", Some("reset")).await?;
    // Within [verify] max_stale the last verification holds: served, not refreshed.
    let on_a = visit_at(w, &w.running, &w.alice_laptop, "/hello", &session).await?;
    assert_eq!(on_a.status, 200, "{on_a:?}");
    let claims = p.redis.cli(&p.redis_pki, &["KEYS", "{vigil}:refresh:*"])?;
    assert_eq!(claims, "", "a claim outlived a refresh that never happened");
    w.idp.fault("/token", None).await?;
    // The next replica to need it refreshes now (a failed attempt is remembered 10 s on a,
    // not on b).
    let started = Instant::now();
    let on_b = visit_at(w, &p.b, &w.alice_laptop, "/hello", &session).await?;
    assert_eq!(on_b.status, 200, "{on_b:?}");
    let fresh = open_session(w, &world::cookie_pairs(&on_b))?;
    assert_ne!(
        fresh.refresh_token.unwrap_or_default(),
        spent,
        "b did not refresh"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    Ok(())
}

/// `GET path` as `client` over a connection from source address `from` (127.0.0.x).
async fn status_from(
    replica: &Replica,
    pki: &Pki,
    client: &Issued,
    from: &str,
    path: &str,
) -> Result<u16> {
    use tokio::net::TcpSocket;
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from.parse()?, 0))?;
    let tcp = socket.connect(replica.addr).await?;
    let config = client_config(Some(client), pki.ca.cert_pem(), &[b"http/1.1"])?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let mut tls = tokio::time::timeout(
        STEP,
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp),
    )
    .await??;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await?;
    Ok(read_reply(&mut tls).await?.status)
}

#[tokio::test]
async fn distinct_addresses_seen_by_different_replicas_add_up() -> Result<()> {
    let f = Fleet::start(
        2,
        RedisOptions::default(),
        "\n[detectors.addresses]\nthreshold = 2\nblock_for = \"10m\"\n",
    )
    .await?;
    let laptop = f.workload()?;
    let (a, b) = (&f.replicas[0], &f.replicas[1]);
    // Two addresses on a, many times each: two distinct values, not over the threshold.
    for _ in 0..3 {
        for from in ["127.0.0.1", "127.0.0.2"] {
            assert_eq!(
                status_from(a, &f.pki, &laptop, from, "/ok/x").await?,
                200,
                "{from}"
            );
        }
    }
    // The same two on b add nothing; a third one, on b, makes three across the fleet.
    assert_eq!(
        status_from(b, &f.pki, &laptop, "127.0.0.2", "/ok/x").await?,
        200
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        status_from(b, &f.pki, &laptop, "127.0.0.1", "/ok/x").await?,
        200
    );
    status_from(b, &f.pki, &laptop, "127.0.0.3", "/ok/x").await?;
    for r in &f.replicas {
        let blocked = within(Duration::from_secs(5), || async {
            r.status(&f.pki, &laptop, "/ok/x").await == Some(403)
        })
        .await;
        assert!(
            blocked.is_some(),
            "{} does not block after three addresses across the fleet",
            r.name
        );
    }
    let fired = "vigil_detector_fired_total{detector=\"addresses\",action=\"block\"}";
    assert_eq!(a.metric(fired).await? + b.metric(fired).await?, 1.0);
    Ok(())
}

/// A form posted by a browser of the world's own site to `running`.
async fn post_form(
    w: &world::World,
    running: &vigil::Running,
    device: &Issued,
    path: &str,
    cookies: &str,
    fields: &[(&str, &str)],
) -> Result<Reply> {
    let body = support::idp::form_encode(fields);
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost:{port}\r\nOrigin: https://localhost:{port}\r\nSec-Fetch-Site: same-origin\r\nCookie: {cookies}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len(),
        port = w.port,
    );
    raw(running.addr, w.browser(device), "localhost", &request).await
}

/// The value of the first `name="NAME" value="..."` in `html` after `after`.
fn field(html: &str, after: &str, name: &str) -> Option<String> {
    let rest = &html[html.find(after)?..];
    let marker = format!("name=\"{name}\" value=\"");
    let start = rest.find(&marker)? + marker.len();
    Some(rest[start..].split('"').next()?.to_owned())
}

#[tokio::test]
async fn access_asked_on_one_replica_approved_on_another_is_used_on_a_third() -> Result<()> {
    let db = "\n[[route]]\nname = \"db\"\nhost = \"localhost\"\npath = \"/db\"\nupstream = \"http://UPSTREAM\"\nlogin = \"oidc\"\nallow = [{ grant = true }]\ngrants = { max = \"1h\", approvers = { groups = [\"admins\"] } }\n";
    let p = people_with(false, db).await?;
    let w = &p.w;
    let (c, _) = second_replica(w, "c", "session.keys").await?;
    let (bob, _) = w.sign_in(&w.bob_laptop, "/", support::idp::BOB).await?;
    // Bob is denied /db on a and asks from the denial page.
    let denied = w.visit(&w.bob_laptop, "/db", &bob).await?;
    assert_eq!(denied.status, 403, "{denied:?}");
    let csrf = field(&denied.body, "/.vigil/access/request", "csrf").unwrap_or_default();
    let asked = post_form(
        w,
        &w.running,
        &w.bob_laptop,
        "/.vigil/access/request",
        &bob,
        &[
            ("csrf", &csrf),
            ("route", "db"),
            ("reason", "INC-9: orders"),
            ("duration", "600s"),
        ],
    )
    .await?;
    assert!(matches!(asked.status, 200 | 303), "{asked:?}");
    // Alice sees it on b, and approves it there.
    let (alice, _) = w.sign_in(&w.alice_laptop, "/", support::idp::ALICE).await?;
    let started = Instant::now();
    let page = loop {
        let page = visit_at(w, &p.b, &w.alice_laptop, "/.vigil/access", &alice)
            .await?
            .body;
        if page.contains("access/decide") {
            break page;
        }
        assert!(
            started.elapsed() < PROPAGATION,
            "b does not list the request asked on a: {page}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let id = field(&page, "access/decide", "id").unwrap_or_default();
    let token = field(&page, "access/decide", "csrf").unwrap_or_default();
    let decided = post_form(
        w,
        &p.b,
        &w.alice_laptop,
        "/.vigil/access/decide",
        &alice,
        &[("csrf", &token), ("id", &id), ("decision", "approve")],
    )
    .await?;
    assert!(matches!(decided.status, 200 | 303), "{decided:?}");
    // Bob's grant holds on c, and on a.
    for running in [&c, &w.running] {
        let allowed = within(PROPAGATION, || async {
            visit_at(w, running, &w.bob_laptop, "/db", &bob)
                .await
                .is_ok_and(|r| r.status == 200)
        })
        .await;
        assert!(
            allowed.is_some(),
            "the grant approved on b does not hold on another replica"
        );
    }
    // Deciding again on a: already decided there too.
    let again = post_form(
        w,
        &w.running,
        &w.alice_laptop,
        "/.vigil/access/decide",
        &alice,
        &[("csrf", &token), ("id", &id), ("decision", "refuse")],
    )
    .await?;
    assert!(again.status >= 400, "{again:?}");
    Ok(())
}
