//! Where and when an experiment ran: the machine's description for `results.json` and a
//! dependency-free UTC clock for its dates and default folder names.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The machine the experiment ran on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineInfo {
    /// Logical cores available to the process.
    pub cores: usize,
    /// CPU model (from `/proc/cpuinfo` where available).
    pub cpu: Option<String>,
    /// Total memory in GiB (from `/proc/meminfo` where available).
    pub memory_gib: Option<f64>,
    /// Operating system.
    pub os: String,
    /// CPU architecture.
    pub arch: String,
    /// Version of this crate.
    pub madeit_version: String,
}

impl MachineInfo {
    /// Describes the current machine.
    #[must_use]
    pub fn collect() -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        });
        let memory_gib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
                .map(|kb| kb / (1024.0 * 1024.0))
        });
        Self {
            cores: std::thread::available_parallelism().map_or(1, usize::from),
            cpu,
            memory_gib,
            os: std::env::consts::OS.to_owned(),
            arch: std::env::consts::ARCH.to_owned(),
            madeit_version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }
}

/// Seconds since the Unix epoch.
#[must_use]
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The UTC calendar date and time of `secs` since the Unix epoch:
/// `(year, month, day, hour, minute, second)` (proleptic Gregorian calendar).
#[must_use]
pub fn utc_datetime(secs: u64) -> (i64, u32, u32, u32, u32, u32) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        month,
        day,
        (rem / 3600) as u32,
        (rem % 3600 / 60) as u32,
        (rem % 60) as u32,
    )
}

/// `YYYY-MM-DDTHH:MM:SSZ` for `secs` since the Unix epoch.
#[must_use]
pub fn iso_date(secs: u64) -> String {
    let (y, mo, d, h, mi, s) = utc_datetime(secs);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// `YYYYMMDD-HHMMSS` (UTC) for `secs` since the Unix epoch: the default run folder name.
#[must_use]
pub fn timestamp_slug(secs: u64) -> String {
    let (y, mo, d, h, mi, s) = utc_datetime(secs);
    format!("{y:04}{mo:02}{d:02}-{h:02}{mi:02}{s:02}")
}
