//! The device inventory: what the MDM knows about each device, keyed by its certificate.
//!
//! The source is a JSON export, from a file (re-read when it changes) or an `https://` URL
//! (polled with `If-None-Match` / `If-Modified-Since`). When the source cannot be read, the
//! last good data holds for `max_stale`; after that every device counts as unknown (fail
//! closed), with a log line, `vigil_device_inventory_stale` = 1 and a `/readyz` detail.

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// One device as the inventory describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Device {
    /// SHA-256 fingerprint of the device certificate (hex, colons allowed).
    #[serde(default)]
    pub fingerprint: Option<String>,
    /// Serial number of the device certificate (hex).
    #[serde(default)]
    pub serial: Option<String>,
    /// Common name of the device certificate's subject.
    #[serde(default)]
    pub subject: Option<String>,
    pub compliant: bool,
    #[serde(default)]
    pub managed: bool,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub os: Option<Os>,
    /// RFC 3339 time of the device's last check-in with the MDM.
    #[serde(default)]
    pub last_check_in: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Os {
    pub name: String,
    pub version: String,
}

impl Device {
    /// Seconds since the last check-in at `now` (Unix seconds), if known; 0 for a check-in
    /// in the future.
    pub fn check_in_age(&self, now: i64) -> Option<u64> {
        let at = humantime::parse_rfc3339_weak(self.last_check_in.as_deref()?).ok()?;
        let at = at.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
        Some(u64::try_from(now).unwrap_or(0).saturating_sub(at))
    }
}

/// How records are matched to certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Fingerprint,
    Serial,
    Subject,
}

/// Where the export comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Url(String),
}

/// `[devices]`, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub source: Source,
    pub key: Key,
    pub refresh: Duration,
    pub max_stale: Duration,
    /// PEM to trust for an https source, instead of the system's roots.
    pub ca: Option<Vec<u8>>,
}

#[derive(Debug, Default)]
struct Data {
    by_key: HashMap<String, Device>,
    /// Validator of the last response, for conditional polling.
    etag: Option<String>,
    last_modified: Option<String>,
    /// File change detection.
    file_stamp: Option<(std::time::SystemTime, u64)>,
}

/// The loaded inventory; shared across reloads while its settings are unchanged.
pub struct Inventory {
    pub settings: Settings,
    data: ArcSwap<Data>,
    /// Unix seconds of the last successful read (0: never).
    last_success: AtomicI64,
    last_error: ArcSwap<Option<String>>,
    http: Option<reqwest::Client>,
    started: std::sync::atomic::AtomicBool,
    /// Counts the times the records were replaced: what Rego policies' copy follows.
    loads: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Inventory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inventory")
            .field("source", &self.settings.source)
            .field("devices", &self.data.load().by_key.len())
            .finish()
    }
}

/// What `/readyz` and metrics say about the inventory.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub devices: usize,
    pub last_success: Option<i64>,
    pub stale: bool,
    pub last_error: Option<String>,
}

impl Inventory {
    /// Reads the source once, now: a configuration naming an unreadable inventory is an error.
    pub fn load(settings: Settings) -> Result<Self, String> {
        let http = match &settings.source {
            Source::Url(_) => {
                let tls = crate::tls::outbound::for_vigil(settings.ca.as_deref(), "devices.ca")?;
                Some(
                    reqwest::Client::builder()
                        .use_preconfigured_tls(tls)
                        .timeout(Duration::from_secs(15))
                        .build()
                        .map_err(|e| e.to_string())?,
                )
            }
            Source::File(_) => None,
        };
        let inventory = Self {
            settings,
            data: ArcSwap::from_pointee(Data::default()),
            last_success: AtomicI64::new(0),
            last_error: ArcSwap::from_pointee(None),
            http,
            started: std::sync::atomic::AtomicBool::new(false),
            loads: std::sync::atomic::AtomicU64::new(0),
        };
        if let Source::File(path) = &inventory.settings.source {
            let data = read_file(path, inventory.settings.key)?;
            inventory.replace(data);
            inventory
                .last_success
                .store(crate::identity::now(), Ordering::Relaxed);
        }
        Ok(inventory)
    }

    /// Starts polling in the background (once).
    pub fn start(self: &Arc<Self>, metrics: Arc<crate::metrics::Metrics>) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let inventory = self.clone();
        tokio::spawn(async move {
            loop {
                let result = inventory.refresh().await;
                let stale = inventory.is_stale();
                metrics
                    .components
                    .device_inventory_stale
                    .set(i64::from(stale));
                metrics
                    .components
                    .device_inventory_devices
                    .set(inventory.data.load().by_key.len() as i64);
                match result {
                    Ok(()) => inventory.last_error.store(Arc::new(None)),
                    Err(e) => {
                        if stale {
                            tracing::error!(error = %e, "device inventory unreadable past max_stale: every device counts as unknown");
                        } else {
                            tracing::warn!(error = %e, "device inventory unreadable; last good data holds");
                        }
                        inventory.last_error.store(Arc::new(Some(e)));
                    }
                }
                tokio::time::sleep(inventory.settings.refresh).await;
                // An inventory dropped by a reload stops polling.
                if Arc::strong_count(&inventory) == 1 {
                    return;
                }
            }
        });
    }

    async fn refresh(&self) -> Result<(), String> {
        match &self.settings.source {
            Source::File(path) => {
                let meta = std::fs::metadata(path)
                    .map_err(|e| format!("{}: {}", path.display(), crate::error::file_error(&e)))?;
                let stamp = (meta.modified().map_err(|e| e.to_string())?, meta.len());
                if self.data.load().file_stamp == Some(stamp) {
                    self.mark_success();
                    return Ok(());
                }
                let path = path.clone();
                let key = self.settings.key;
                let mut data = tokio::task::spawn_blocking(move || read_file(&path, key))
                    .await
                    .map_err(|e| e.to_string())??;
                data.file_stamp = Some(stamp);
                self.replace(data);
                self.mark_success();
                Ok(())
            }
            Source::Url(url) => {
                let Some(http) = &self.http else {
                    return Err("no HTTP client".into());
                };
                let current = self.data.load_full();
                let mut request = http
                    .get(url)
                    .header(http::header::ACCEPT, "application/json");
                if let Some(etag) = &current.etag {
                    request = request.header(http::header::IF_NONE_MATCH, etag);
                }
                if let Some(lm) = &current.last_modified {
                    request = request.header(http::header::IF_MODIFIED_SINCE, lm);
                }
                let response = request.send().await.map_err(|e| format!("{url}: {e}"))?;
                if response.status() == http::StatusCode::NOT_MODIFIED {
                    self.mark_success();
                    return Ok(());
                }
                if !response.status().is_success() {
                    return Err(format!("{url}: HTTP {}", response.status()));
                }
                let header = |name: http::HeaderName| {
                    response
                        .headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                };
                let etag = header(http::header::ETAG);
                let last_modified = header(http::header::LAST_MODIFIED);
                let bytes = response.bytes().await.map_err(|e| format!("{url}: {e}"))?;
                let mut data = parse(&bytes, self.settings.key)?;
                data.etag = etag;
                data.last_modified = last_modified;
                self.replace(data);
                self.mark_success();
                Ok(())
            }
        }
    }

    fn mark_success(&self) {
        self.last_success
            .store(crate::identity::now(), Ordering::Relaxed);
    }

    /// True when the last good read is older than `max_stale`.
    pub fn is_stale(&self) -> bool {
        let last = self.last_success.load(Ordering::Relaxed);
        last == 0 || crate::identity::now() - last > self.settings.max_stale.as_secs() as i64
    }

    /// The record for a client certificate; `None` when unknown or when the data is stale.
    pub fn lookup(&self, peer: &crate::tls::PeerCert) -> Option<Device> {
        if self.is_stale() {
            return None;
        }
        let key = Self::key_of(self.settings.key, peer)?;
        self.data.load().by_key.get(&key).cloned()
    }

    /// What identifies the certificate's device in an inventory keyed by `key`.
    pub fn key_of(key: Key, peer: &crate::tls::PeerCert) -> Option<String> {
        Some(match key {
            Key::Fingerprint => peer.fingerprint_hex.clone(),
            Key::Serial => crate::hex::encode(trim_zeros(&peer.serial)),
            Key::Subject => peer.common_name.clone()?,
        })
    }

    fn replace(&self, data: Data) {
        self.data.store(Arc::new(data));
        self.loads.fetch_add(1, Ordering::Release);
    }

    /// Changes whenever what [`Inventory::each_record`] gives changes: a new read, or the
    /// data turning stale or fresh.
    pub fn version(&self) -> u64 {
        self.loads.load(Ordering::Acquire) * 2 + u64::from(self.is_stale())
    }

    /// Every record with its key; none while the data is stale.
    pub fn each_record(&self, mut f: impl FnMut(&str, &Device)) {
        if self.is_stale() {
            return;
        }
        for (key, device) in self.data.load().by_key.iter() {
            f(key, device);
        }
    }

    pub fn status(&self) -> Status {
        let last = self.last_success.load(Ordering::Relaxed);
        Status {
            devices: self.data.load().by_key.len(),
            last_success: (last > 0).then_some(last),
            stale: self.is_stale(),
            last_error: (*self.last_error.load_full()).clone(),
        }
    }
}

fn trim_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

fn read_file(path: &std::path::Path, key: Key) -> Result<Data, String> {
    let bytes = std::fs::read(path)
        .map_err(|e| format!("{}: {}", path.display(), crate::error::file_error(&e)))?;
    parse(&bytes, key).map_err(|e| format!("{}: {e}", path.display()))
}

/// Reads an export: `{"devices": [...]}` or a bare array of device records.
fn parse(bytes: &[u8], key: Key) -> Result<Data, String> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Export {
        Wrapped { devices: Vec<Device> },
        Bare(Vec<Device>),
    }
    let export: Export =
        serde_json::from_slice(bytes).map_err(|e| format!("not a device export: {e}"))?;
    let devices = match export {
        Export::Wrapped { devices } | Export::Bare(devices) => devices,
    };
    let mut by_key = HashMap::with_capacity(devices.len());
    for device in devices {
        let k = match key {
            Key::Fingerprint => device
                .fingerprint
                .as_deref()
                .map(|f| f.replace(':', "").to_ascii_lowercase()),
            // The same form as the certificate side: hex of the serial without leading zero bytes.
            Key::Serial => device.serial.as_deref().and_then(|s| {
                crate::hex::parse_serial(s)
                    .ok()
                    .map(|bytes| crate::hex::encode(trim_zeros(&bytes)))
            }),
            Key::Subject => device.subject.clone(),
        };
        if let Some(k) = k {
            by_key.insert(k, device);
        }
    }
    Ok(Data {
        by_key,
        ..Data::default()
    })
}

/// Compares dotted versions numerically ("14.10" > "14.9"); non-numeric parts compare as text.
pub fn version_at_least(version: &str, minimum: &str) -> bool {
    let parts = |v: &str| -> Vec<String> { v.split(['.', '-']).map(str::to_owned).collect() };
    let (a, b) = (parts(version), parts(minimum));
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).map(String::as_str).unwrap_or("0");
        let y = b.get(i).map(String::as_str).unwrap_or("0");
        let ordering = match (x.parse::<u64>(), y.parse::<u64>()) {
            (Ok(x), Ok(y)) => x.cmp(&y),
            _ => x.cmp(y),
        };
        match ordering {
            std::cmp::Ordering::Greater => return true,
            std::cmp::Ordering::Less => return false,
            std::cmp::Ordering::Equal => {}
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert!(version_at_least("14.10", "14.9"));
        assert!(version_at_least("14.0", "14"));
        assert!(!version_at_least("13.6.1", "14.0"));
        assert!(version_at_least("10.0.19045", "10.0.19044"));
    }

    #[test]
    fn exports_parse_in_both_shapes() {
        let wrapped = br#"{"devices":[{"fingerprint":"AB:CD","compliant":true}]}"#;
        let bare =
            br#"[{"fingerprint":"abcd","compliant":false,"os":{"name":"macOS","version":"14.5"}}]"#;
        assert!(parse(wrapped, Key::Fingerprint).unwrap().by_key["abcd"].compliant);
        assert!(!parse(bare, Key::Fingerprint).unwrap().by_key["abcd"].compliant);
        assert!(parse(b"{}", Key::Fingerprint).is_err());
        // Serials match the certificate's form: no leading zero bytes, but "03" keeps its 0.
        let serials =
            br#"[{"serial":"00:03:DF","compliant":true},{"serial":"0a0b","compliant":true}]"#;
        let data = parse(serials, Key::Serial).unwrap();
        assert!(data.by_key.contains_key("03df"), "{:?}", data.by_key.keys());
        assert!(data.by_key.contains_key("0a0b"));
    }
}
