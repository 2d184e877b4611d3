//! The standard `process_*` metrics (resident memory, CPU time, open files, threads, start
//! time) from `/proc/self`, read at each scrape.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Linux's USER_HZ: the unit of CPU times in `/proc/<pid>/stat` (100 on every mainstream arch).
const TICKS_PER_SECOND: f64 = 100.0;

/// Reports this process' `process_*` metrics.
#[derive(Debug, Default)]
pub struct ProcessCollector;

struct Sample {
    rss_bytes: Option<f64>,
    virtual_bytes: Option<f64>,
    threads: Option<f64>,
    cpu_seconds: Option<f64>,
    start_time_seconds: Option<f64>,
    open_fds: Option<f64>,
}

fn status_kb(status: &str, key: &str) -> Option<f64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse::<f64>().ok()
}

fn read() -> Sample {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces), numbered from field 3.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    let boot_time = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse::<f64>().ok())));
    Sample {
        rss_bytes: status_kb(&status, "VmRSS:").map(|kb| kb * 1024.0),
        virtual_bytes: status_kb(&status, "VmSize:").map(|kb| kb * 1024.0),
        threads: status_kb(&status, "Threads:"),
        cpu_seconds: field(14).zip(field(15)).map(|(u, s)| (u + s) / TICKS_PER_SECOND),
        start_time_seconds: boot_time.zip(field(22)).map(|(b, t)| b + t / TICKS_PER_SECOND),
        open_fds: std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as f64),
    }
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: Option<f64>) -> Result<(), std::fmt::Error> {
    if let Some(v) = value {
        let metric = ConstGauge::new(v);
        metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)?;
    }
    Ok(())
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = read();
        gauge(&mut encoder, "process_resident_memory_bytes", "Resident memory size in bytes", s.rss_bytes)?;
        gauge(&mut encoder, "process_virtual_memory_bytes", "Virtual memory size in bytes", s.virtual_bytes)?;
        gauge(&mut encoder, "process_threads", "Number of OS threads", s.threads)?;
        gauge(&mut encoder, "process_open_fds", "Number of open file descriptors", s.open_fds)?;
        gauge(
            &mut encoder,
            "process_start_time_seconds",
            "Start time of the process since the epoch in seconds",
            s.start_time_seconds,
        )?;
        if let Some(v) = s.cpu_seconds {
            let metric = ConstCounter::new(v);
            metric.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                metric.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let s = read();
        assert!(s.rss_bytes.unwrap() > 1e5);
        assert!(s.threads.unwrap() >= 1.0);
        assert!(s.cpu_seconds.is_some() && s.open_fds.unwrap() >= 3.0);
        let start = s.start_time_seconds.unwrap();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        assert!(start <= now + 5.0 && start > now - 86400.0 * 365.0, "{start} vs {now}");
    }
}
