//! Replacing the configuration while traffic flows.
//!
//! Every trigger (a watched file changing, SIGHUP, `POST /reload`) goes through
//! [`Reloader::reload`]: the whole configuration, with every file it names, is read and
//! compiled into a new snapshot off the async threads; only if all of it is valid is it
//! swapped in, atomically. Requests in flight keep the snapshot they started with; the next
//! request and the next TLS handshake see the new one. An invalid change leaves the old
//! snapshot serving and is reported in the log, in `vigil_config_reload_failures_total`, in
//! the answer to `POST /reload` and in `/readyz`.

use crate::config::{Context, Snapshot, load_file};
use crate::state::Shared;
use arc_swap::ArcSwap;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What the last reload attempt left behind, for `/readyz` and `POST /reload`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReloadStatus {
    pub generation: u64,
    /// Unix seconds of the last applied load.
    pub last_success: Option<u64>,
    /// Problems of the last attempt, when it was refused; cleared by the next success.
    pub last_error: Option<Vec<String>>,
    /// Settings changed in the file that only take effect after a restart.
    pub restart_required: Vec<String>,
}

/// The outcome of one reload.
#[derive(Debug, Clone, Serialize)]
pub struct Reloaded {
    pub generation: u64,
    pub restart_required: Vec<String>,
}

/// Reloads one configuration file into the running proxy.
pub struct Reloader {
    path: PathBuf,
    shared: Arc<Shared>,
    /// What the process bound at start-up; later configurations are compared with this.
    bound: Bound,
    context: Context,
    /// One reload at a time; triggers arriving meanwhile wait their turn.
    lock: tokio::sync::Mutex<()>,
    status: ArcSwap<ReloadStatus>,
}

impl Reloader {
    pub fn new(path: &Path, shared: Arc<Shared>, context: Context) -> Arc<Self> {
        let first = shared.snapshot.load_full();
        let generation = first.generation;
        let bound = Bound::of(&first);
        shared
            .metrics
            .config
            .last_reload_success
            .set(unix_now() as f64);
        Arc::new(Self {
            path: path.to_path_buf(),
            bound,
            shared,
            context,
            lock: tokio::sync::Mutex::new(()),
            status: ArcSwap::from_pointee(ReloadStatus {
                generation,
                last_success: Some(unix_now()),
                ..ReloadStatus::default()
            }),
        })
    }

    pub fn status(&self) -> Arc<ReloadStatus> {
        self.status.load_full()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads, validates and applies the configuration file. `trigger` names the cause in logs.
    pub async fn reload(&self, trigger: &str) -> Result<Reloaded, Vec<String>> {
        let _one_at_a_time = self.lock.lock().await;
        let current = self.shared.snapshot.load_full();
        let mut context = self.context.clone();
        context.generation = current.generation + 1;
        context.previous = Some(current.clone());
        let path = self.path.clone();
        let loaded = tokio::task::spawn_blocking(move || load_file(&path, &context)).await;
        let metrics = &self.shared.metrics;
        let snapshot = match loaded {
            Ok(Ok(snapshot)) => snapshot,
            Ok(Err(problems)) => {
                let summary = problems.summary();
                for line in &summary {
                    tracing::error!(trigger, problem = %line, "configuration reload refused");
                }
                return Err(self.refused(summary));
            }
            Err(join) => {
                let summary = vec![format!("reload task failed: {join}")];
                tracing::error!(trigger, error = %join, "configuration reload failed");
                return Err(self.refused(summary));
            }
        };
        let restart_required = self.bound.differences(&snapshot);
        for what in &restart_required {
            tracing::warn!(trigger, change = %what, "setting changed; it takes effect after a restart");
        }
        let generation = snapshot.generation;
        if let Some(provider) = &snapshot.oidc {
            provider.start();
        }
        if let Some(inventory) = &snapshot.devices {
            inventory.start(self.shared.metrics.clone());
        }
        snapshot
            .certificates
            .publish(Some(&current.certificates), metrics);
        crate::tls::lifecycle::Status::now(&snapshot.certificates).log(trigger);
        metrics.precreate_routes(snapshot.routes.iter().map(|r| &r.label));
        snapshot.attach_upstreams(&metrics.upstreams);
        metrics.policies.precreate(snapshot.routes.policy_series());
        self.shared.alerts.configure(snapshot.alerts.clone());
        self.shared.snapshot.store(Arc::new(snapshot));
        // Open connections are re-checked against the new CAs and CRLs now.
        self.shared.live.recheck_now();
        metrics.config.generation.set(generation as i64);
        metrics.config.reloads.inc();
        let now = unix_now();
        metrics.config.last_reload_success.set(now as f64);
        self.status.store(Arc::new(ReloadStatus {
            generation,
            last_success: Some(now),
            last_error: None,
            restart_required: restart_required.clone(),
        }));
        tracing::info!(trigger, generation, "configuration reloaded");
        Ok(Reloaded {
            generation,
            restart_required,
        })
    }

    fn refused(&self, summary: Vec<String>) -> Vec<String> {
        self.shared.metrics.config.reload_failures.inc();
        let mut status = (*self.status.load_full()).clone();
        status.last_error = Some(summary.clone());
        self.status.store(Arc::new(status));
        summary
    }

    /// Watches the configuration file and every file it names; changes (bursts coalesced)
    /// trigger a reload. Returns when `stop` is cancelled.
    pub async fn watch(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        // Filtered on the watcher's own thread: files written next to the configuration (a
        // decision log, say) must not wake the runtime on every write.
        let files: Arc<ArcSwap<Vec<PathBuf>>> = Arc::new(ArcSwap::from_pointee(Vec::new()));
        let filter = files.clone();
        let mut watcher = match notify::recommended_watcher(move |event| {
            if is_relevant(&filter.load(), &event) {
                let _ = tx.send(());
            }
        }) {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "cannot watch configuration files; reload with SIGHUP or POST /reload");
                return;
            }
        };
        let mut watched = Watched::default();
        watched.update(&mut watcher, &self.shared.snapshot.load().files, &files);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                event = rx.recv() => if event.is_none() { return },
            }
            // Editors and config-map updates write in bursts: wait for quiet, then reload once.
            loop {
                match tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
                    Ok(Some(())) => {}
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            let _ = self.reload("file change").await;
            watched.update(&mut watcher, &self.shared.snapshot.load().files, &files);
        }
    }
}

/// The directories watched.
#[derive(Default)]
struct Watched {
    dirs: Vec<PathBuf>,
}

impl Watched {
    /// Watches the directories of `files`: watching a directory, not the file, survives editors
    /// and tools that replace a file by renaming a new one over it.
    fn update(
        &mut self,
        watcher: &mut impl notify::Watcher,
        files: &[PathBuf],
        relevant: &ArcSwap<Vec<PathBuf>>,
    ) {
        let files: Vec<PathBuf> = files.iter().map(|f| absolute(f)).collect();
        let mut dirs: Vec<PathBuf> = files
            .iter()
            .filter_map(|f| f.parent().map(Path::to_path_buf))
            .collect();
        dirs.sort();
        dirs.dedup();
        for gone in self.dirs.iter().filter(|d| !dirs.contains(d)) {
            let _ = watcher.unwatch(gone);
        }
        for dir in dirs.iter().filter(|d| !self.dirs.contains(d)) {
            if let Err(e) = watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory");
            }
        }
        self.dirs = dirs;
        relevant.store(Arc::new(files));
    }
}

fn is_relevant(files: &[PathBuf], event: &notify::Result<notify::Event>) -> bool {
    let Ok(event) = event else { return true };
    if event.kind.is_access() {
        return false;
    }
    event.paths.iter().any(|p| {
        files.iter().any(|f| f == p)
            // Kubernetes mounts swap a `..data` symlink when a ConfigMap or Secret changes.
            || p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(".."))
    })
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Settings bound at start-up: a change is reported as needing a restart, not half-applied.
#[derive(Debug, Clone, PartialEq)]
struct Bound {
    listen: std::net::SocketAddr,
    admin: Option<std::net::SocketAddr>,
    max_connections: usize,
    decisions: String,
    admin_actions: String,
    format: String,
    level: String,
    /// `[state]`: where the fleet's shared state is, as written (the password shown as set),
    /// with the password and the CA themselves beside.
    state: Option<(String, Option<String>, Option<Vec<u8>>)>,
}

impl Bound {
    fn of(s: &Snapshot) -> Self {
        Self {
            listen: s.listen,
            admin: s.admin,
            max_connections: s.max_connections,
            decisions: s.log.decisions.clone(),
            admin_actions: s.log.admin_actions.clone(),
            format: s.log.format.clone(),
            level: s.log.level.clone(),
            state: s
                .state
                .as_ref()
                .map(|st| (format!("{st:?}"), st.password.clone(), st.ca.clone())),
        }
    }

    fn differences(&self, new: &Snapshot) -> Vec<String> {
        let new = Bound::of(new);
        let mut changed = Vec::new();
        if self.listen != new.listen {
            changed.push(format!("server.listen {} -> {}", self.listen, new.listen));
        }
        if self.admin != new.admin {
            let listen =
                |a: Option<std::net::SocketAddr>| a.map_or("off".into(), |a| a.to_string());
            changed.push(format!(
                "admin.listen {} -> {}",
                listen(self.admin),
                listen(new.admin)
            ));
        }
        if self.max_connections != new.max_connections {
            changed.push(format!(
                "server.max_connections {} -> {}",
                self.max_connections, new.max_connections
            ));
        }
        if self.decisions != new.decisions {
            changed.push(format!(
                "log.decisions {:?} -> {:?}",
                self.decisions, new.decisions
            ));
        }
        if self.admin_actions != new.admin_actions {
            changed.push(format!(
                "log.admin_actions {:?} -> {:?}",
                self.admin_actions, new.admin_actions
            ));
        }
        if self.format != new.format || self.level != new.level {
            changed.push("log.format / log.level".to_owned());
        }
        if self.state != new.state {
            changed.push(
                "state (the shared state's backend, address, credentials or timing)".to_owned(),
            );
        }
        changed
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
