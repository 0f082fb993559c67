//! Process gauges under their conventional names (`process_resident_memory_bytes`, ...), read from
//! `/proc/self` when a scrape asks. Elsewhere than Linux they stay 0.

use prometheus::{IntGauge, Registry};

#[derive(Debug)]
pub struct ProcessMetrics {
    resident: IntGauge,
    open_fds: IntGauge,
    threads: IntGauge,
}

impl ProcessMetrics {
    pub fn register(registry: &Registry) -> Result<ProcessMetrics, prometheus::Error> {
        let resident = IntGauge::new(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
        )?;
        let open_fds = IntGauge::new("process_open_fds", "Number of open file descriptors.")?;
        let threads = IntGauge::new("process_threads", "Number of OS threads in the process.")?;
        let start = IntGauge::new(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch in seconds.",
        )?;
        if let Ok(since) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            start.set(i64::try_from(since.as_secs()).unwrap_or(0));
        }
        for g in [&resident, &open_fds, &threads, &start] {
            registry.register(Box::new(g.clone()))?;
        }
        Ok(ProcessMetrics {
            resident,
            open_fds,
            threads,
        })
    }

    pub fn update(&self) {
        if let Some(rss) = resident_bytes() {
            self.resident.set(i64::try_from(rss).unwrap_or(i64::MAX));
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds
                .set(i64::try_from(dir.count()).unwrap_or(i64::MAX));
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
            self.threads
                .set(i64::try_from(dir.count()).unwrap_or(i64::MAX));
        }
    }
}

/// The process's resident memory, from `/proc/self/status` (`VmRSS`).
pub fn resident_bytes() -> Option<u64> {
    status_bytes("VmRSS")
}

/// The process's memory locked into RAM, from `/proc/self/status` (`VmLck`).
pub fn locked_bytes() -> Option<u64> {
    status_bytes("VmLck")
}

/// One `/proc/self/status` memory field (given in kB whatever the page size), in bytes.
fn status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| {
        l.strip_prefix(field)
            .is_some_and(|rest| rest.starts_with(':'))
    })?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
