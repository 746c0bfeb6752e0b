//! The machine a run measured on, for the report's header.

use serde::Serialize;

/// What the report says about the machine.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPU model name.
    pub cpu: String,
    /// Cores this process may use.
    pub cores: usize,
    /// Total memory, GiB.
    pub memory_gib: f64,
    /// Operating system.
    pub os: String,
    /// The day of the run, UTC (`YYYY-MM-DD`).
    pub date: String,
    /// Build profile of this binary.
    pub profile: &'static str,
    /// The load average (1, 5 and 15 minutes) when the run ended, from `/proc/loadavg`
    /// (`None` where it cannot be read): figures taken while other work competed for the
    /// cores move, and a reader comparing two reports needs to know.
    pub load_average: Option<[f64; 3]>,
}

impl Machine {
    /// Reads it from `/proc` and `/etc/os-release` (unknown fields say so).
    pub fn describe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:")?.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        let os = std::fs::read_to_string("/etc/os-release")
            .unwrap_or_default()
            .lines()
            .find_map(|l| Some(l.strip_prefix("PRETTY_NAME=")?.trim_matches('"').to_owned()))
            .unwrap_or_else(|| std::env::consts::OS.to_owned());
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_gib: (kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
            os,
            date: today(),
            profile: if cfg!(debug_assertions) { "debug" } else { "release" },
            load_average: std::fs::read_to_string("/proc/loadavg")
                .ok()
                .and_then(|t| load_average(&t)),
        }
    }
}

/// The three load averages at the start of `/proc/loadavg`'s line (`0.52 0.58 0.59 1/467 12345`).
fn load_average(text: &str) -> Option<[f64; 3]> {
    let mut fields = text.split_whitespace().map(|f| f.parse::<f64>().ok());
    Some([fields.next()??, fields.next()??, fields.next()??])
}

/// Today's date, UTC, from the system clock.
fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    civil_date(secs / 86_400)
}

/// Days since 1970-01-01 → `YYYY-MM-DD` (Howard Hinnant's civil-from-days algorithm).
fn civil_date(days: u64) -> String {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_averages() {
        assert_eq!(load_average("2.48 3.00 3.28 3/611 80337\n"), Some([2.48, 3.0, 3.28]));
        assert_eq!(load_average("2.48 3.00"), None);
        assert_eq!(load_average(""), None);
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(11_016), "2000-02-29");
        assert_eq!(civil_date(20_786), "2026-11-29");
    }
}
