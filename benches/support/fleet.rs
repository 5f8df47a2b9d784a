//! The fleet: what the shared state costs a request, and how fast a change reaches the other
//! replicas. A `redis-server` of its own (skipped when there is none), then
//!
//! - **cost**: keep-alive requests on a Vigil with `[state] backend = "redis"` against the same
//!   Vigil in memory, both with the detectors of the `detectors` scenario on (so that every
//!   request is counted across the fleet too), measured alternately on the proxy core: proxy
//!   CPU per request as a ratio;
//! - **propagation**: three replicas on that Redis; the load generator's device is revoked on
//!   one (in turn) and each of the two others is polled with new connections until it
//!   refuses the device; then it is restored and every replica is polled until it lets it in
//!   again. The time from sending `POST /revoke` to the refusal, p50, p99 and max over every
//!   (revocation, replica) pair.

use super::{admin_call, admin_post, free_addr, instance_dir, percentile_ms};
use crate::{
    BENCH_DETECTORS, ChildGuard, Ctx, Endpoint, Proxy, Row, connect, free_port, keep_alive_pair,
    logs_dir, request, spawn_vigil, vigil_base_config, workload_route,
};
use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Revocations in the propagation part, each observed on two replicas.
pub const REVOCATIONS: usize = 100;
/// A replica that has not refused the device within this is a failure.
const PROPAGATION_LIMIT: Duration = Duration::from_secs(5);

pub struct FleetReport {
    /// `redis`, then `memory`.
    pub rows: Vec<Row>,
    /// Milliseconds from `POST /revoke` to the refusal, per (revocation, replica).
    pub propagation_ns: Vec<u64>,
    /// Revocations a replica did not refuse within [`PROPAGATION_LIMIT`].
    pub missed: u64,
    pub redis_version: String,
}

impl FleetReport {
    pub fn errors(&self) -> u64 {
        self.rows.iter().map(|r| r.errors).sum::<u64>() + self.missed
    }

    /// Proxy CPU per keep-alive request, Redis over memory.
    pub fn cost(&self) -> Option<f64> {
        let cpu = |name: &str| {
            self.rows
                .iter()
                .find(|r| r.target == name)
                .and_then(|r| r.proxy_cpu_ns)
        };
        crate::ratio(cpu("redis"), cpu("memory"))
    }

    /// p50, p99 and max of the propagation, milliseconds.
    pub fn propagation(&self) -> [Option<f64>; 3] {
        let mut sorted = self.propagation_ns.clone();
        sorted.sort_unstable();
        [
            percentile_ms(&sorted, 50.0),
            percentile_ms(&sorted, 99.0),
            sorted.last().map(|&ns| ns as f64 / 1e6),
        ]
    }

    pub fn json(&self) -> Value {
        let [p50, p99, max] = self.propagation();
        json!({
            "description": "keep-alive requests on a workload route with [state] backend = \
                \"redis\" against the same route in memory, both with the detectors scenario's \
                detectors on, measured alternately; and the time from POST /revoke of a device \
                on one of three replicas to its refusal by each of the two others",
            "redis": self.redis_version,
            "targets": self.rows.iter().map(crate::row_json).collect::<Vec<_>>(),
            "ratio_proxy_cpu_per_request_redis_to_memory": self.cost(),
            "propagation": {
                "samples": self.propagation_ns.len(),
                "missed": self.missed,
                "p50_ms": p50,
                "p99_ms": p99,
                "max_ms": max,
            },
        })
    }
}

/// True when the error says `redis-server` is not installed.
pub fn is_missing_redis(e: &anyhow::Error) -> bool {
    format!("{e:#}").contains("redis-server is not installed")
}

fn redis_version() -> Result<String> {
    let out = Command::new("redis-server")
        .arg("--version")
        .output()
        .map_err(|_| anyhow::anyhow!("redis-server is not installed (scripts/test installs it)"))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A `redis-server` on a free loopback port, without persistence, stopped when dropped.
fn start_redis(dir: &Path) -> Result<(ChildGuard, SocketAddr)> {
    let port = free_port()?;
    let data = dir.join("redis");
    std::fs::create_dir_all(&data)?;
    let mut cmd = Command::new("redis-server");
    cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
        .arg("--dir")
        .arg(&data);
    let guard = ChildGuard::spawn("redis", cmd, &data)?;
    Ok((guard, SocketAddr::from(([127, 0, 0, 1], port))))
}

fn state_section(redis: SocketAddr) -> String {
    format!("\n[state]\nbackend = \"redis\"\nurl = \"redis://{redis}/0\"\n")
}

pub async fn run(ctx: &Ctx<'_>) -> Result<FleetReport> {
    let redis_version = redis_version()?;
    let dir = instance_dir(ctx.dir, "fleet")?;
    let (_redis, redis) = start_redis(&dir)?;
    let rows = cost(ctx, redis).await?;
    let (propagation_ns, missed) = propagation(ctx, redis).await?;
    let report = FleetReport {
        rows,
        propagation_ns,
        missed,
        redis_version,
    };
    let [p50, p99, max] = report.propagation();
    println!(
        "\n== fleet: revocation propagation, POST /revoke on one of three replicas to refusal on each other ({} samples, {} missed) ==",
        report.propagation_ns.len(),
        report.missed
    );
    println!(
        "p50 {} ms   p99 {} ms   max {} ms",
        crate::opt(p50, 1),
        crate::opt(p99, 1),
        crate::opt(max, 1)
    );
    Ok(report)
}

/// The Redis instance against the in-memory one, alternately.
async fn cost(ctx: &Ctx<'_>, redis: SocketAddr) -> Result<Vec<Row>> {
    let mut instances: Vec<(&'static str, Proxy)> = Vec::new();
    for name in ["redis", "memory"] {
        let dir = instance_dir(ctx.dir, &format!("fleet-{name}"))?;
        let addr = free_addr()?;
        let decisions = logs_dir(&dir)?.join("vigil-decisions.log");
        let mut text = vigil_base_config(addr, None, &decisions) + BENCH_DETECTORS;
        if name == "redis" {
            text += &state_section(redis);
        }
        text += &workload_route("bench", "*", None, ctx.upstream);
        let path = dir.join("vigil.toml");
        std::fs::write(&path, text)?;
        let label = if name == "redis" {
            "vigil-state-redis"
        } else {
            "vigil-state-memory"
        };
        // Ready once it answers 200: with Redis, once it has read the shared state.
        let ep = Endpoint::new(addr, Some(ctx.tls.clone()));
        instances.push((
            name,
            spawn_vigil(ctx.vigil_bin, label, &path, ep, ctx.pinned).await?,
        ));
    }
    keep_alive_pair(
        ctx,
        "fleet",
        &instances,
        "the shared state in Redis, or in memory (detectors on in both)",
        ("redis", "memory"),
    )
    .await
}

/// Whether a new connection to `addr` as the load generator gets its 200.
async fn lets_in(ctx: &Ctx<'_>, addr: SocketAddr) -> bool {
    let ep = Endpoint::new(addr, Some(ctx.tls.clone()));
    let attempt = async {
        let (mut conn, _) = connect(&ep).await?;
        let answered = request(&ep, &mut conn).await;
        conn.close().await;
        answered
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), attempt).await,
        Ok(Ok(()))
    )
}

/// The load generator's certificate fingerprint, as `POST /revoke` takes it.
fn fingerprint(dir: &Path) -> Result<String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let pem = std::fs::read(dir.join("client.pem")).context("reading client.pem")?;
    let der = CertificateDer::from_pem_slice(&pem).context("parsing client.pem")?;
    Ok(vigil::tls::PeerCert::from_der(der.as_ref())
        .map_err(anyhow::Error::msg)?
        .fingerprint_hex)
}

/// Three replicas; [`REVOCATIONS`] revocations, each on the next replica in turn.
async fn propagation(ctx: &Ctx<'_>, redis: SocketAddr) -> Result<(Vec<u64>, u64)> {
    let mut replicas: Vec<(SocketAddr, SocketAddr, Proxy)> = Vec::new();
    for (i, label) in ["vigil-fleet-a", "vigil-fleet-b", "vigil-fleet-c"]
        .into_iter()
        .enumerate()
    {
        let dir = instance_dir(ctx.dir, &format!("fleet-replica-{i}"))?;
        let (addr, admin) = (free_addr()?, free_addr()?);
        let decisions = logs_dir(&dir)?.join("vigil-decisions.log");
        let text = vigil_base_config(addr, Some(admin), &decisions)
            + &state_section(redis)
            + &workload_route("bench", "*", None, ctx.upstream);
        let path = dir.join("vigil.toml");
        std::fs::write(&path, text)?;
        let ep = Endpoint::new(addr, Some(ctx.tls.clone()));
        // Not pinned: three replicas share the machine, as a fleet on one host would.
        let proxy = spawn_vigil(ctx.vigil_bin, label, &path, ep, false).await?;
        replicas.push((addr, admin, proxy));
    }
    let body = format!(r#"{{"device":"{}"}}"#, fingerprint(ctx.dir)?);
    let mut samples = Vec::with_capacity(REVOCATIONS * 2);
    let mut missed = 0u64;
    eprintln!("... fleet: {REVOCATIONS} revocations across three replicas");
    for n in 0..REVOCATIONS {
        let on = n % replicas.len();
        let sent = Instant::now();
        let (status, answer) = admin_post(replicas[on].1, "/revoke", &body).await?;
        if !status.is_success() {
            bail!(
                "POST /revoke answered {status}: {}",
                String::from_utf8_lossy(&answer)
            );
        }
        for (i, (addr, _, _)) in replicas.iter().enumerate() {
            if i == on {
                continue;
            }
            loop {
                if !lets_in(ctx, *addr).await {
                    samples.push(sent.elapsed().as_nanos() as u64);
                    break;
                }
                if sent.elapsed() > PROPAGATION_LIMIT {
                    missed += 1;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        let (status, answer) = admin_post(replicas[on].1, "/restore", &body).await?;
        if !status.is_success() {
            bail!(
                "POST /restore answered {status}: {}",
                String::from_utf8_lossy(&answer)
            );
        }
        for (addr, _, _) in &replicas {
            let restored = Instant::now();
            while !lets_in(ctx, *addr).await {
                if restored.elapsed() > PROPAGATION_LIMIT {
                    bail!(
                        "a replica still refused the device {PROPAGATION_LIMIT:?} after it was restored"
                    );
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    for (_, admin, proxy) in &replicas {
        if let Some(msg) = proxy.exited() {
            bail!("a replica {msg} during the fleet scenario");
        }
        let _ = admin_call(*admin, "GET", "/healthz").await?;
    }
    Ok((samples, missed))
}
