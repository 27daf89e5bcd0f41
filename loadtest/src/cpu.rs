//! CPU per process while a run is measured: each process's user + system
//! time from `/proc/<pid>/stat`, read at the start and the end of every
//! measured step, as a percentage of one core.
//!
//! The processes are the gateway's, found as `<name>.pid` files in a
//! directory (`scripts/up` writes `.run/pids/`: the five services, nats and
//! redis), plus the load generator itself (`loadtest`). Linux only; a
//! process that is gone or unreadable is left out.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

/// Percent of one core, by process name.
pub type CpuPercent = BTreeMap<String, f64>;

/// `<name>.pid` files of `dir`, as (name, pid), sorted by name.
pub fn processes(dir: &Path) -> Vec<(String, u32)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<(String, u32)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let path = e.path();
            let name = path.file_name()?.to_str()?.strip_suffix(".pid")?.to_owned();
            let pid = std::fs::read_to_string(&path).ok()?.trim().parse().ok()?;
            Some((name, pid))
        })
        .collect();
    found.sort();
    found
}

/// User + system time in clock ticks, from the text of `/proc/<pid>/stat`.
/// The command name (field 2) may hold spaces and parentheses, so fields
/// are counted after its closing parenthesis.
pub fn ticks_from_stat(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn ticks(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    ticks_from_stat(&std::fs::read_to_string(path).ok()?)
}

/// Clock ticks per second (`getconf CLK_TCK`); 100 on Linux.
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU times of a set of processes at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    at: Instant,
    ticks: BTreeMap<String, u64>,
}

impl Snapshot {
    /// Now, for `processes` and the load generator (`loadtest`).
    pub fn take(processes: &[(String, u32)]) -> Self {
        let mut ticks = BTreeMap::new();
        for (name, pid) in processes {
            if let Some(t) = self::ticks(Some(*pid)) {
                ticks.insert(name.clone(), t);
            }
        }
        if let Some(t) = self::ticks(None) {
            ticks.insert("loadtest".to_owned(), t);
        }
        Self {
            at: Instant::now(),
            ticks,
        }
    }

    /// Percent of one core each process used from `self` to `later`.
    pub fn percent_until(&self, later: &Snapshot) -> CpuPercent {
        let seconds = later.at.duration_since(self.at).as_secs_f64();
        if seconds <= 0.0 {
            return CpuPercent::new();
        }
        self.ticks
            .iter()
            .filter_map(|(name, before)| {
                let after = later.ticks.get(name)?;
                let used = after.checked_sub(*before)? as f64 / TICKS_PER_SECOND;
                Some((name.clone(), (used / seconds * 1000.0).round() / 10.0))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_and_system_time_are_read_after_the_command_name() {
        let stat = "4242 (tokio (rt) worker) S 1 4242 4242 0 -1 4194560 5133 0 0 0 731 204 0 0 20 0 9 0 100 1 2";
        assert_eq!(ticks_from_stat(stat), Some(935));
        assert_eq!(ticks_from_stat("4242 (x) S 1"), None);
        assert_eq!(ticks_from_stat("garbage"), None);
    }

    #[test]
    fn this_process_is_measured_and_pid_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("self.pid"),
            format!("{}\n", std::process::id()),
        )
        .unwrap();
        std::fs::write(dir.path().join("gone.pid"), "not a pid").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "1").unwrap();
        let found = processes(dir.path());
        assert_eq!(found, vec![("self".to_owned(), std::process::id())]);
        let before = Snapshot::take(&found);
        let spin = Instant::now();
        let mut x = 0u64;
        while spin.elapsed().as_millis() < 300 {
            x = x.wrapping_add(1);
        }
        std::hint::black_box(x);
        let cpu = before.percent_until(&Snapshot::take(&found));
        assert!(cpu["self"] > 30.0, "{cpu:?}");
        assert!(cpu.contains_key("loadtest"));
        assert!(processes(&dir.path().join("missing")).is_empty());
    }
}
