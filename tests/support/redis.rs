//! A real `redis-server` for the fleet tests (installed by `scripts/test`), on a loopback port
//! of its own, with its data in a temporary directory: optionally over TLS (a certificate of
//! the test CA) and with an ACL user instead of the default one, or as a replica of another;
//! a [`Sentinel`] watching one. [`Latency`] sits between Vigil and Redis to slow or stall the
//! link.

use super::Pki;
use anyhow::{Context as _, Result, bail};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The ACL user of [`RedisOptions::acl_password`].
pub const USER: &str = "vigil";

/// What the ACL user may do: its own keys only, the commands Vigil sends.
pub const ACL_RULES: &str = "~{vigil}* resetchannels -@all +@read +@write +@stream +@scripting +@connection +@keyspace -@dangerous";

#[derive(Clone, Default)]
pub struct RedisOptions {
    /// TLS only (no plain port), the server's certificate issued by the PKI's CA.
    pub tls: bool,
    /// An ACL user [`USER`] with this password; the default user is turned off.
    pub acl_password: Option<String>,
    /// Keeps the data across a restart (append-only file).
    pub appendonly: bool,
    /// A replica of the server on this loopback port.
    pub replica_of: Option<u16>,
    /// A Redis Cluster of this one node, holding every slot.
    pub cluster: bool,
}

pub struct Redis {
    pub port: u16,
    pub options: RedisOptions,
    dir: PathBuf,
    child: Option<Child>,
}

impl Redis {
    /// Starts a server and waits until it answers `PING`.
    pub async fn start(pki: &Pki, options: RedisOptions) -> Result<Self> {
        let port = super::world::free_port().await?;
        let dir = pki.path(&format!("redis-{port}"));
        std::fs::create_dir_all(&dir)?;
        if options.tls {
            let cert = pki.ca.issue(&vigil::certs::LeafSpec::server(
                vec!["localhost".into()],
                vec!["127.0.0.1".parse()?],
            ))?;
            std::fs::write(dir.join("redis.pem"), &cert.cert_pem)?;
            std::fs::write(dir.join("redis.key"), &cert.key_pem)?;
        }
        if let Some(password) = &options.acl_password {
            std::fs::write(pki.path("redis.password"), format!("{password}\n"))?;
        }
        let mut redis = Self {
            port,
            options,
            dir,
            child: None,
        };
        redis.launch(pki).await?;
        Ok(redis)
    }

    async fn launch(&mut self, pki: &Pki) -> Result<()> {
        let mut args: Vec<String> = vec![
            "--bind".into(),
            "127.0.0.1".into(),
            "--dir".into(),
            self.dir.display().to_string(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            if self.options.appendonly { "yes" } else { "no" }.into(),
            "--appendfsync".into(),
            "always".into(),
            "--protected-mode".into(),
            "no".into(),
            "--logfile".into(),
            self.dir.join("redis.log").display().to_string(),
        ];
        if self.options.tls {
            args.extend(
                [
                    "--port",
                    "0",
                    "--tls-port",
                    &self.port.to_string(),
                    "--tls-cert-file",
                    &self.dir.join("redis.pem").display().to_string(),
                    "--tls-key-file",
                    &self.dir.join("redis.key").display().to_string(),
                    "--tls-ca-cert-file",
                    &pki.path("ca.pem").display().to_string(),
                    "--tls-auth-clients",
                    "no",
                ]
                .map(String::from),
            );
        } else {
            args.extend(["--port".into(), self.port.to_string()]);
        }
        if self.options.cluster {
            args.extend(
                [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &self.dir.join("nodes.conf").display().to_string(),
                ]
                .map(String::from),
            );
        }
        if let Some(master) = self.options.replica_of {
            args.extend(["--replicaof".into(), "127.0.0.1".into(), master.to_string()]);
        }
        if let Some(password) = &self.options.acl_password {
            args.extend(["--user".into(), "default".into(), "off".into()]);
            args.extend([
                "--user".into(),
                USER.into(),
                "on".into(),
                format!(">{password}"),
            ]);
            args.extend(ACL_RULES.split(' ').map(String::from));
        }
        let child = Command::new("redis-server")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("redis-server (scripts/test installs it)")?;
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                // Listening; a TLS server is taken at its word (Vigil's own link checks it).
                if self.options.tls || self.ping().await.is_ok() {
                    return Ok(());
                }
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
                bail!("redis-server exited ({status}): {log}");
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("redis-server on port {} never answered", self.port);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// With [`RedisOptions::cluster`]: gives this node every slot and waits until the
    /// cluster says it is ok.
    pub async fn claim_every_slot(&self, pki: &Pki) -> Result<()> {
        let answer = self.cli(pki, &["CLUSTER", "ADDSLOTSRANGE", "0", "16383"])?;
        anyhow::ensure!(answer == "OK", "CLUSTER ADDSLOTSRANGE: {answer}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !self
            .cli(pki, &["CLUSTER", "INFO"])?
            .contains("cluster_state:ok")
        {
            if tokio::time::Instant::now() >= deadline {
                bail!("the one-node cluster never became ok");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// `PING` over plain TCP (with `AUTH` when there is an ACL user).
    async fn ping(&self) -> Result<()> {
        let mut conn = TcpStream::connect(("127.0.0.1", self.port)).await?;
        let mut request = String::new();
        if let Some(password) = &self.options.acl_password {
            request.push_str(&format!("AUTH {USER} {password}\r\n"));
        }
        request.push_str("PING\r\n");
        conn.write_all(request.as_bytes()).await?;
        let mut answer = vec![0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(2), conn.read(&mut answer)).await??;
        let text = String::from_utf8_lossy(&answer[..n]);
        anyhow::ensure!(text.contains("PONG") || text.starts_with("+OK"), "{text}");
        Ok(())
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The `[state]` section for Vigil, reaching Redis at `addr` (this server's, or a
    /// [`Latency`] in front of it).
    pub fn state_config(&self, addr: SocketAddr, extra: &str) -> String {
        let scheme = if self.options.tls { "rediss" } else { "redis" };
        self.state_config_at(&format!("{scheme}://{addr}/0"), extra)
    }

    /// The `[state]` section for Vigil, reaching Redis through `url` (a Sentinel's or a
    /// Cluster's), with this server's TLS and credentials.
    pub fn state_config_at(&self, url: &str, extra: &str) -> String {
        let mut text = format!("[state]\nbackend = \"redis\"\nurl = \"{url}\"\n");
        if self.options.tls {
            text.push_str("ca = \"ca.pem\"\n");
        }
        if self.options.acl_password.is_some() {
            text.push_str(&format!(
                "username = \"{USER}\"\npassword_file = \"redis.password\"\n"
            ));
        }
        text.push_str(extra);
        text
    }

    /// Kills the server at once (no shutdown, no save).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, with the same data directory.
    pub async fn restart(&mut self, pki: &Pki) -> Result<()> {
        self.kill();
        self.launch(pki).await
    }

    /// A command through `redis-cli`, its output.
    pub fn cli(&self, pki: &Pki, args: &[&str]) -> Result<String> {
        let mut command = Command::new("redis-cli");
        command.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if self.options.tls {
            command.args([
                "--tls",
                "--cacert",
                &pki.path("ca.pem").display().to_string(),
            ]);
        }
        if let Some(password) = &self.options.acl_password {
            command.args(["--user", USER, "--pass", password, "--no-auth-warning"]);
        }
        let out = command.args(args).output()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

/// A Redis Sentinel (`redis-server --sentinel`) watching the master on `master`'s port, under
/// the name [`Sentinel::MASTER`], quorum 1, judging it down after one second.
pub struct Sentinel {
    pub port: u16,
    child: Child,
}

impl Sentinel {
    pub const MASTER: &str = "vigil-master";

    pub async fn start(pki: &Pki, master: u16) -> Result<Self> {
        let port = super::world::free_port().await?;
        let dir = pki.path(&format!("sentinel-{port}"));
        std::fs::create_dir_all(&dir)?;
        let name = Self::MASTER;
        // Sentinel rewrites its configuration file: it must be its own and writable.
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\nlogfile {dir}/sentinel.log\n\
                 sentinel monitor {name} 127.0.0.1 {master} 1\n\
                 sentinel down-after-milliseconds {name} 1000\n\
                 sentinel failover-timeout {name} 3000\n",
                dir = dir.display()
            ),
        )?;
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("redis-server --sentinel (scripts/test installs redis-server)")?;
        let sentinel = Self { port, child };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while sentinel.master().as_deref() != Some(&master.to_string()) {
            if tokio::time::Instant::now() >= deadline {
                bail!("the sentinel on port {port} never named the master");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(sentinel)
    }

    /// The port of the master it names now.
    pub fn master(&self) -> Option<String> {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["SENTINEL", "get-master-addr-by-name", Self::MASTER])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines().nth(1).map(|l| l.trim().to_owned())
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP relay to Redis that can add a delay to every chunk or stall the link entirely.
pub struct Latency {
    pub addr: SocketAddr,
    delay_ms: Arc<AtomicU64>,
    stalled: Arc<AtomicBool>,
    stop: CancellationToken,
}

impl Latency {
    pub async fn start(to: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let delay_ms = Arc::new(AtomicU64::new(0));
        let stalled = Arc::new(AtomicBool::new(false));
        let stop = CancellationToken::new();
        let (d, s, st) = (delay_ms.clone(), stalled.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = st.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((client, _)) = accepted else { continue };
                let (d, s, st) = (d.clone(), s.clone(), st.clone());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(to).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::select! {
                        () = st.cancelled() => {}
                        () = relay(cr, sw, d.clone(), s.clone()) => {}
                        () = relay(sr, cw, d, s) => {}
                    }
                });
            }
        });
        Ok(Self {
            addr,
            delay_ms,
            stalled,
            stop,
        })
    }

    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    /// While stalled, nothing is relayed either way (the connections stay open).
    pub fn set_stalled(&self, stalled: bool) {
        self.stalled.store(stalled, Ordering::Relaxed);
    }
}

impl Drop for Latency {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn relay(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay_ms: Arc<AtomicU64>,
    stalled: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while stalled.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let delay = delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
