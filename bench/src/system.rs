//! Facts about processes: resident memory, and this process's open-file limit.

use anyhow::{Context, Result};

/// Resident set size of `pid` in KiB, from /proc.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status (is --server-pid right?)"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS line")
}

/// Raises this process's open-file limit to its hard limit; returns the new soft limit.
pub fn raise_fd_limit() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0)
}

/// CPU time `pid` has used (user + system, all threads), in seconds, from /proc.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat (is --server-pid right?)"))?;
    cpu_ticks(&stat)
        .map(|ticks| ticks as f64 / clock_ticks_per_second())
        .context("no utime/stime in /proc/<pid>/stat")
}

/// CPU time (user + system) of `pid` and every process it started, in seconds: its live
/// children's own, and what its children that have exited left it (cutime + cstime). For a
/// postmaster: PostgreSQL's whole CPU time, backends and background workers included.
pub fn tree_cpu_seconds(pid: u32) -> Result<f64> {
    let mut ticks = 0;
    for entry in std::fs::read_dir("/proc")? {
        let name = entry?.file_name();
        let Some(p) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        // A process may end between the listing and the read.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let Some(after_name) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let field = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        // After the name: state, ppid (1), ..., utime (11), stime (12), cutime (13), cstime (14).
        if p == pid {
            ticks += field(11) + field(12) + field(13) + field(14);
        } else if field(1) == u64::from(pid) {
            ticks += field(11) + field(12);
        }
    }
    Ok(ticks as f64 / clock_ticks_per_second())
}

/// utime + stime from a /proc/<pid>/stat line. The command name (2nd field) may hold spaces,
/// so fields are counted after its closing parenthesis: utime and stime are the 14th and
/// 15th fields of the line.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_past_a_name_with_spaces() {
        let stat = "1234 (tokio (x) y) S 1 1234 1234 0 -1 4194560 500 0 0 0 \
                    250 75 0 0 20 0 3 0 100 1000000 500 18446744073709551615";
        assert_eq!(cpu_ticks(stat), Some(325));
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(cpu_ticks(&own).is_some());
    }

    #[test]
    fn a_process_tree_counts_at_least_its_root() {
        let me = std::process::id();
        let root = cpu_seconds(me).unwrap();
        assert!(tree_cpu_seconds(me).unwrap() >= root);
    }
}
