//! The standard `process_*` families (CPU seconds, resident and virtual memory, open and
//! maximum file descriptors, threads, start time), read from `/proc/self` when `/metrics`
//! is scraped, so they cost nothing between scrapes and are never stale.
//!
//! Written as exposition text rather than through the `metrics` recorder: CPU time is a
//! fractional counter, which the recorder's integer counters cannot hold. Elsewhere than
//! Linux (no `/proc`) nothing is written.

use std::fmt::Write as _;

/// Clock ticks per second of `/proc/<pid>/stat` times: `USER_HZ`, 100 in the Linux ABI on
/// every architecture ratemesh is built for.
const TICKS_PER_SECOND: f64 = 100.0;

/// What `/proc/self` says about this process.
#[derive(Debug, Default, PartialEq)]
struct Process {
    cpu_seconds: Option<f64>,
    resident_bytes: Option<u64>,
    virtual_bytes: Option<u64>,
    open_fds: Option<u64>,
    max_fds: Option<u64>,
    threads: Option<u64>,
    start_time_seconds: Option<f64>,
}

/// Appends the `process_*` families to `page`.
pub(crate) fn render(page: &mut String) {
    write(page, &read());
}

fn read() -> Process {
    let proc_file = |name: &str| std::fs::read_to_string(format!("/proc/{name}")).ok();
    let mut process = Process::default();
    if let Some(stat) = proc_file("self/stat") {
        let boot_time = proc_file("stat").and_then(|s| boot_time(&s));
        from_stat(&stat, boot_time, &mut process);
    }
    if let Some(status) = proc_file("self/status") {
        process.resident_bytes = status_kib(&status, "VmRSS:").map(|kib| kib * 1024);
    }
    if let Some(limits) = proc_file("self/limits") {
        process.max_fds = max_open_files(&limits);
    }
    process.open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|dir| dir.count() as u64);
    process
}

/// Fills CPU time, virtual memory, threads and start time from `/proc/self/stat`;
/// `boot_time` (seconds since the epoch) turns the start tick into a timestamp.
fn from_stat(stat: &str, boot_time: Option<u64>, process: &mut Process) {
    // The command name (field 2) is in parentheses and may hold spaces or parentheses:
    // fields are counted from after the last `)`, where field 3 (state) is index 0.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    if let (Some(utime), Some(stime)) = (field(14), field(15)) {
        process.cpu_seconds = Some((utime + stime) as f64 / TICKS_PER_SECOND);
    }
    process.threads = field(20);
    if let (Some(start), Some(boot)) = (field(22), boot_time) {
        process.start_time_seconds = Some(boot as f64 + start as f64 / TICKS_PER_SECOND);
    }
    process.virtual_bytes = field(23);
}

/// `btime` of `/proc/stat`: when the machine booted, in seconds since the epoch.
fn boot_time(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// A `Key:   123 kB` line of `/proc/self/status`, in KiB.
fn status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The soft limit of `Max open files` in `/proc/self/limits`.
fn max_open_files(limits: &str) -> Option<u64> {
    limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn write(page: &mut String, p: &Process) {
    let mut family = |name: &str, kind: &str, help: &str, value: Option<f64>| {
        if let Some(value) = value {
            let _ = write!(
                page,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n\n"
            );
        }
    };
    let float = |v: Option<u64>| v.map(|v| v as f64);
    family(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        p.cpu_seconds,
    );
    family(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        float(p.resident_bytes),
    );
    family(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
        float(p.virtual_bytes),
    );
    family(
        "process_open_fds",
        "gauge",
        "Number of open file descriptors.",
        float(p.open_fds),
    );
    family(
        "process_max_fds",
        "gauge",
        "Maximum number of open file descriptors.",
        float(p.max_fds),
    );
    family(
        "process_threads",
        "gauge",
        "Number of OS threads in the process.",
        float(p.threads),
    );
    family(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        p.start_time_seconds,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    // A command name with a space and a parenthesis, as `comm` may hold.
    const STAT: &str = "4242 (rate mesh) S 1 4242 4242 0 -1 4194560 2514 0 0 0 \
        150 75 0 0 20 0 9 0 3000 123456789 5000 18446744073709551615";

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let mut p = Process::default();
        from_stat(STAT, Some(1_700_000_000), &mut p);
        assert_eq!(p.cpu_seconds, Some(2.25), "(150 + 75) ticks");
        assert_eq!(p.threads, Some(9));
        assert_eq!(
            p.start_time_seconds,
            Some(1_700_000_030.0),
            "3000 ticks after boot"
        );
        assert_eq!(p.virtual_bytes, Some(123_456_789));
    }

    #[test]
    fn status_limits_and_boot_time_parse() {
        assert_eq!(
            status_kib("Name:\tratemesh\nVmRSS:\t   2048 kB\n", "VmRSS:"),
            Some(2048)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(max_open_files(limits), Some(1024));
        assert_eq!(
            boot_time("cpu  1 2 3\nbtime 1700000000\n"),
            Some(1_700_000_000)
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_reports_its_figures_with_help_and_type() {
        // CPU time counts in clock ticks (10 ms): a test run that has not used one yet
        // would read 0, so use some first.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let mut page = String::new();
        render(&mut page);
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            assert!(page.contains(&format!("# HELP {name} ")), "{name}: {page}");
            assert!(page.contains(&format!("# TYPE {name} ")), "{name}: {page}");
            let value: f64 = page
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} has no sample: {page}"));
            assert!(value > 0.0, "{name} = {value}");
        }
    }
}
