//! The standard process metrics, named as every Prometheus client library writes them (no
//! `vigil_` prefix), so that dashboards and alerts made for any process work unchanged:
//! `process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_virtual_memory_bytes`,
//! `process_open_fds`, `process_max_fds` and `process_start_time_seconds`.
//!
//! prometheus-client has no process collector; these are read from `/proc/self` at scrape time,
//! which costs a few small file reads per scrape. Off Linux (no `/proc`) none are written, and
//! a value that cannot be read is left out rather than written as 0.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Clock ticks per second of the times in `/proc/self/stat`: the kernel reports them in
/// USER_HZ, which is 100 on every architecture Linux runs on.
const TICKS_PER_SECOND: f64 = 100.0;

/// One reading of the process; a field is `None` when its file could not be read or parsed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Sample {
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<i64>,
    pub virtual_bytes: Option<i64>,
    pub open_fds: Option<i64>,
    pub max_fds: Option<i64>,
    pub start_time_seconds: Option<f64>,
}

impl Sample {
    /// Reads `/proc/self` now.
    pub fn read() -> Self {
        let read = |path: &str| std::fs::read_to_string(path).ok();
        let stat = read("/proc/self/stat").and_then(|s| Stat::parse(&s));
        let boot_time = read("/proc/stat").and_then(|s| boot_time(&s));
        Sample {
            cpu_seconds: stat.map(|s| (s.utime + s.stime) as f64 / TICKS_PER_SECOND),
            resident_bytes: read("/proc/self/status").and_then(|s| resident_bytes(&s)),
            virtual_bytes: stat.and_then(|s| i64::try_from(s.vsize).ok()),
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|dir| dir.count() as i64),
            max_fds: read("/proc/self/limits").and_then(|s| max_open_files(&s)),
            start_time_seconds: match (stat, boot_time) {
                (Some(s), Some(boot)) => Some(boot as f64 + s.starttime as f64 / TICKS_PER_SECOND),
                _ => None,
            },
        }
    }
}

/// The fields of `/proc/self/stat` used here.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Stat {
    utime: u64,
    stime: u64,
    /// Clock ticks after boot when the process started.
    starttime: u64,
    /// Virtual memory size in bytes.
    vsize: u64,
}

impl Stat {
    fn parse(text: &str) -> Option<Self> {
        // The command name (field 2) is in parentheses and may hold spaces and parentheses:
        // the fields that follow start after the last `)`, at field 3.
        let rest = text.get(text.rfind(')')? + 1..)?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        Some(Stat {
            utime: field(14)?,
            stime: field(15)?,
            starttime: field(22)?,
            vsize: field(23)?,
        })
    }
}

/// `btime` of `/proc/stat`: the Unix time of boot.
fn boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// `VmRSS` of `/proc/self/status`, in bytes (the file says kB, which are KiB).
fn resident_bytes(text: &str) -> Option<i64> {
    let kib: i64 = text
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

/// The soft limit of "Max open files" in `/proc/self/limits`; `None` when unlimited.
fn max_open_files(text: &str) -> Option<i64> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Writes a [`Sample`] read at each scrape.
#[derive(Debug, Default)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = Sample::read();
        if let Some(v) = s.cpu_seconds {
            let metric = ConstCounter::new(v);
            let help = "Total user and system CPU time spent in seconds.";
            let e = encoder.encode_descriptor(
                "process_cpu_seconds",
                help,
                None,
                MetricType::Counter,
            )?;
            metric.encode(e)?;
        }
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                s.resident_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                s.virtual_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors.",
                s.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors.",
                s.max_fds,
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(v) = value {
                let e = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
                ConstGauge::new(v).encode(e)?;
            }
        }
        if let Some(v) = s.start_time_seconds {
            let help = "Start time of the process since unix epoch in seconds.";
            let e = encoder.encode_descriptor(
                "process_start_time_seconds",
                help,
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(v).encode(e)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_parse() {
        // A command name with a space and a parenthesis.
        let stat = "4242 (vigil (x) y) S 1 4242 4242 0 -1 4194560 1523 0 0 0 250 75 0 0 20 0 9 0 \
                    123400 1052672000 4000 18446744073709551615";
        assert_eq!(
            Stat::parse(stat),
            Some(Stat {
                utime: 250,
                stime: 75,
                starttime: 123400,
                vsize: 1052672000
            })
        );
        assert_eq!(Stat::parse("4242 (vigil) S 1"), None);
        assert_eq!(Stat::parse(""), None);
        assert_eq!(
            boot_time("cpu  1 2 3\nbtime 1764669600\nprocesses 9\n"),
            Some(1764669600)
        );
        assert_eq!(boot_time("cpu 1\n"), None);
        assert_eq!(
            resident_bytes("Name:\tvigil\nVmRSS:\t   20480 kB\n"),
            Some(20 * 1024 * 1024)
        );
        assert_eq!(resident_bytes("VmRSS: lots\n"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(max_open_files(limits), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(max_open_files(unlimited), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_reads_whole() {
        let s = Sample::read();
        assert!(s.cpu_seconds.is_some_and(|v| v >= 0.0), "{s:?}");
        assert!(s.resident_bytes.is_some_and(|v| v > 0), "{s:?}");
        assert!(s.virtual_bytes.is_some_and(|v| v > 0), "{s:?}");
        assert!(s.open_fds.is_some_and(|v| v > 0), "{s:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            s.start_time_seconds
                .is_some_and(|t| t > 1_000_000_000.0 && t <= now + 1.0),
            "{s:?}"
        );
    }
}
