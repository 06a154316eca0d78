//! Shared by the bench binaries (each includes it with `mod support;`).

/// A `/proc/<pid>/status` field such as `VmHWM:` or `VmRSS:`, in KiB (`pid` "self" for this
/// process); 0 when it cannot be read.
pub fn proc_status_kib(pid: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}
