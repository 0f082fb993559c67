//! `inferd stats` (one reading, since start) and `inferd top` (a live view, refreshed every interval):
//! throughput, p50/p99, queue depth and errors per model, from the server's `Stats` answer. Rates and
//! percentiles over an interval are differences of two cumulative readings, as Prometheus computes
//! them, so the server keeps no per-viewer state.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use inferd_proto::LATENCY_BUCKETS_US;

use super::ClientArgs;
use crate::client::{ModelCounters, ServerStats};

/// Flags of `inferd stats`.
#[derive(Debug, Clone, clap::Args)]
pub struct StatsArgs {
    /// Server to ask.
    #[command(flatten)]
    pub client: ClientArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `inferd top`.
#[derive(Debug, Clone, clap::Args)]
pub struct TopArgs {
    /// Server to watch.
    #[command(flatten)]
    pub client: ClientArgs,
    /// Refresh interval in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// Stop after this many refreshes. [default: until interrupted]
    #[arg(long)]
    pub count: Option<u64>,
}

pub fn stats(args: &StatsArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.connect()?;
    let s = client.stats()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&to_json(&s))?);
    } else {
        let uptime = s.uptime.as_secs_f64();
        print!(
            "{}",
            table(&s, client.inner().server(), &args.client, |m| {
                Row::over(m, None, uptime)
            })
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn top(args: &TopArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.interval_ms >= 100,
        "--interval-ms must be at least 100"
    );
    let client = args.client.connect()?;
    let terminal = std::io::stdout().is_terminal();
    let mut last = client.stats()?;
    let mut last_at = Instant::now();
    let mut shown = 0u64;
    while args.count.is_none_or(|n| shown < n) {
        std::thread::sleep(Duration::from_millis(args.interval_ms));
        let now = client.stats()?;
        let secs = last_at.elapsed().as_secs_f64();
        last_at = Instant::now();
        let text = table(&now, client.inner().server(), &args.client, |m| {
            let before = last
                .models
                .iter()
                .find(|b| b.name == m.name && b.version == m.version);
            Row::over(m, before, secs)
        });
        let mut out = std::io::stdout().lock();
        if terminal {
            // Home and clear: redraw in place.
            write!(out, "\x1b[H\x1b[2J")?;
        }
        write!(out, "{text}")?;
        if !terminal {
            writeln!(out)?;
        }
        out.flush()?;
        last = now;
        shown += 1;
    }
    Ok(ExitCode::SUCCESS)
}

/// One model's line: rates and percentiles over an interval.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    ok_per_s: f64,
    errors_per_s: f64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
}

impl Row {
    /// Over the interval since `before` (or since start), `secs` long.
    fn over(now: &ModelCounters, before: Option<&ModelCounters>, secs: f64) -> Row {
        let delta: Vec<u64> = match before {
            Some(b) if b.latency.len() == now.latency.len() => now
                .latency
                .iter()
                .zip(&b.latency)
                .map(|(n, b)| n.saturating_sub(*b))
                .collect(),
            _ => now.latency.clone(),
        };
        let (ok0, err0) = before.map_or((0, 0), |b| (b.ok, b.errors));
        let secs = secs.max(1e-9);
        Row {
            ok_per_s: now.ok.saturating_sub(ok0) as f64 / secs,
            errors_per_s: now.errors.saturating_sub(err0) as f64 / secs,
            p50_ms: quantile_us(&delta, 0.5).map(|us| us / 1e3),
            p99_ms: quantile_us(&delta, 0.99).map(|us| us / 1e3),
        }
    }
}

/// The `q` quantile of a cumulative bucket histogram (counts per [`LATENCY_BUCKETS_US`] bound, then
/// the total), interpolated linearly inside its bucket, as Prometheus's `histogram_quantile` does.
/// `None` without observations; the last finite bound when the quantile lies in the `+Inf` bucket.
fn quantile_us(cumulative: &[u64], q: f64) -> Option<f64> {
    let total = *cumulative.last()?;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut lower_bound = 0.0;
    let mut lower_count = 0u64;
    for (i, &count) in cumulative.iter().enumerate() {
        let Some(&bound) = LATENCY_BUCKETS_US.get(i) else {
            return LATENCY_BUCKETS_US.last().map(|&b| f64::from(b));
        };
        let bound = f64::from(bound);
        if count as f64 >= rank && count > lower_count {
            let within = (rank - lower_count as f64) / (count - lower_count) as f64;
            return Some(lower_bound + (bound - lower_bound) * within);
        }
        lower_bound = bound;
        lower_count = count;
    }
    None
}

fn table(
    s: &ServerStats,
    server: &str,
    args: &ClientArgs,
    row: impl Fn(&ModelCounters) -> Row,
) -> String {
    let up = s.uptime.as_secs();
    let mut out = format!(
        "{server} at {}  up {}h{:02}m{:02}s  {:?}  connections {}\n",
        args.addr,
        up / 3600,
        up / 60 % 60,
        up % 60,
        s.state,
        s.connections
    );
    out.push_str(&format!(
        "{:<24} {:>4} {:>10} {:>9} {:>9} {:>9} {:>6} {:>9}\n",
        "MODEL", "VER", "OK/S", "ERR/S", "P50 MS", "P99 MS", "QUEUE", "IN FLIGHT"
    ));
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.3}"));
    for m in &s.models {
        let r = row(m);
        out.push_str(&format!(
            "{:<24} {:>4} {:>10.1} {:>9.1} {:>9} {:>9} {:>6} {:>9}\n",
            m.name,
            m.version,
            r.ok_per_s,
            r.errors_per_s,
            ms(r.p50_ms),
            ms(r.p99_ms),
            m.queued,
            m.in_flight
        ));
    }
    if s.truncated {
        out.push_str("(more model versions are served than one report holds)\n");
    }
    out
}

fn to_json(s: &ServerStats) -> serde_json::Value {
    let secs = s.uptime.as_secs_f64();
    let models: Vec<serde_json::Value> = s
        .models
        .iter()
        .map(|m| {
            let r = Row::over(m, None, secs);
            serde_json::json!({
                "model": m.name,
                "version": m.version,
                "ok": m.ok,
                "errors": m.errors,
                "queued": m.queued,
                "in_flight": m.in_flight,
                "p50_us": r.p50_ms.map(|v| v * 1e3),
                "p99_us": r.p99_ms.map(|v| v * 1e3),
                "latency_buckets_us": LATENCY_BUCKETS_US,
                "latency_cumulative": m.latency,
                "latency_sum_us": m.latency_sum_us,
            })
        })
        .collect();
    serde_json::json!({
        "uptime_s": secs,
        "state": format!("{:?}", s.state),
        "connections": s.connections,
        "models": models,
        "truncated": s.truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cumulative(per_bucket: &[(usize, u64)]) -> Vec<u64> {
        let mut counts = vec![0u64; LATENCY_BUCKETS_US.len() + 1];
        for &(i, n) in per_bucket {
            counts[i] += n;
        }
        let mut total = 0;
        counts
            .iter()
            .map(|n| {
                total += n;
                total
            })
            .collect()
    }

    #[test]
    fn quantiles_interpolate_within_their_bucket() {
        // 100 observations in (100, 250] µs: p50 halfway, p99 near the top.
        let c = cumulative(&[(2, 100)]);
        assert_eq!(quantile_us(&c, 0.5), Some(175.0));
        assert_eq!(quantile_us(&c, 0.99), Some(100.0 + 150.0 * 0.99));
        // 90 fast, 10 slow: p50 among the fast, p99 among the slow.
        let c = cumulative(&[(0, 90), (5, 10)]);
        assert!(quantile_us(&c, 0.5).unwrap() <= 50.0);
        let p99 = quantile_us(&c, 0.99).unwrap();
        assert!((1_000.0..=2_500.0).contains(&p99), "{p99}");
        assert_eq!(quantile_us(&cumulative(&[]), 0.5), None);
        // Beyond the last bound: the last bound.
        let c = cumulative(&[(LATENCY_BUCKETS_US.len(), 5)]);
        assert_eq!(quantile_us(&c, 0.5), Some(30_000_000.0));
    }

    #[test]
    fn rates_are_differences_over_the_interval() {
        let before = ModelCounters {
            name: "m".into(),
            version: 1,
            ok: 100,
            errors: 1,
            queued: 0,
            in_flight: 0,
            latency: cumulative(&[(2, 101)]),
            latency_sum_us: 0,
        };
        let mut now = before.clone();
        now.ok = 300;
        now.errors = 3;
        now.latency = cumulative(&[(2, 101), (4, 202)]);
        let r = Row::over(&now, Some(&before), 2.0);
        assert_eq!((r.ok_per_s, r.errors_per_s), (100.0, 1.0));
        // Only the interval's observations count: all in (500, 1000] µs.
        let p50 = r.p50_ms.unwrap();
        assert!((0.5..=1.0).contains(&p50), "{p50}");
    }
}
