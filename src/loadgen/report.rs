//! A load run's results: a human table, or JSON for scripts.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;

use super::server_batches::ServerBatches;
use super::{LoadPlan, Stats};

/// Results of a measured phase. Latencies in microseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// `closed` or `open`.
    pub mode: &'static str,
    /// Model asked.
    pub model: String,
    /// Connections used.
    pub connections: usize,
    /// Closed loop: outstanding requests per connection.
    pub depth: usize,
    /// Open loop: the target rate.
    pub rate_target: Option<f64>,
    /// Length of the measured phase, until the last answer.
    pub elapsed: Duration,
    /// Successful requests.
    pub ok: u64,
    /// Failed requests by error code name (or transport failure).
    pub errors: BTreeMap<String, u64>,
    /// Requests resent on a new connection because a draining server had not run them.
    pub retries: u64,
    /// Successful requests per second.
    pub throughput_rps: f64,
    /// Latency percentiles of successful requests, µs.
    pub p50_us: u64,
    /// 90th percentile, µs.
    pub p90_us: u64,
    /// 99th percentile, µs.
    pub p99_us: u64,
    /// 99.9th percentile, µs.
    pub p999_us: u64,
    /// Largest latency, µs.
    pub max_us: u64,
    /// Mean latency, µs.
    pub mean_us: f64,
    /// Open loop: the 99th percentile of how late the generator began sending a request after
    /// its intended time, µs (part of every latency above; `None` in a closed loop).
    pub send_lag_p99_us: Option<u64>,
    /// `OVERLOADED` refusals: the 99th percentile and the largest time from sending the request to
    /// the refusal, µs (`None` without any).
    pub overloaded_p99_us: Option<u64>,
    /// See [`Report::overloaded_p99_us`].
    pub overloaded_max_us: Option<u64>,
    /// Successful answers that arrived more than `--deadline-ms` after their request was sent.
    pub ok_after_deadline: u64,
    /// The batch sizes the server formed meanwhile (with `server_metrics`), or why they could not
    /// be read.
    pub server_batches: Option<Result<ServerBatches, String>>,
}

impl Report {
    pub(super) fn new(plan: &LoadPlan, stats: &Stats, elapsed: Duration) -> Report {
        let h = stats
            .latency_us
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let ok = stats.ok.load(Ordering::Relaxed);
        let q = |x: f64| if ok == 0 { 0 } else { h.value_at_quantile(x) };
        Report {
            mode: if plan.rate.is_some() {
                "open"
            } else {
                "closed"
            },
            model: plan.model.clone(),
            connections: plan.connections.max(1),
            depth: plan.depth.max(1),
            rate_target: plan.rate,
            elapsed,
            ok,
            errors: stats
                .errors
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
            retries: stats.retries.load(Ordering::Relaxed),
            throughput_rps: ok as f64 / elapsed.as_secs_f64().max(1e-9),
            p50_us: q(0.5),
            p90_us: q(0.9),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: if ok == 0 { 0 } else { h.max() },
            mean_us: if ok == 0 { 0.0 } else { h.mean() },
            send_lag_p99_us: plan.rate.map(|_| {
                stats
                    .send_lag_us
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .value_at_quantile(0.99)
            }),
            overloaded_p99_us: None,
            overloaded_max_us: None,
            ok_after_deadline: stats.ok_after_deadline.load(Ordering::Relaxed),
            server_batches: None,
        }
        .with_overloaded(stats)
    }

    fn with_overloaded(mut self, stats: &Stats) -> Report {
        let h = stats
            .overloaded_us
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !h.is_empty() {
            self.overloaded_p99_us = Some(h.value_at_quantile(0.99));
            self.overloaded_max_us = Some(h.max());
        }
        self
    }

    /// The JSON object scripts read (`throughput_rps`, `p50_us`, `p99_us`, `p999_us`, `max_us`,
    /// `errors`, `ok`, and the run's parameters).
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "mode": self.mode,
            "model": self.model,
            "connections": self.connections,
            "depth": self.depth,
            "rate_target": self.rate_target,
            "duration_s": self.elapsed.as_secs_f64(),
            "ok": self.ok,
            "errors": self.errors,
            "retries": self.retries,
            "throughput_rps": self.throughput_rps,
            "p50_us": self.p50_us,
            "p90_us": self.p90_us,
            "p99_us": self.p99_us,
            "p999_us": self.p999_us,
            "max_us": self.max_us,
            "mean_us": self.mean_us,
            "send_lag_p99_us": self.send_lag_p99_us,
            "overloaded_p99_us": self.overloaded_p99_us,
            "overloaded_max_us": self.overloaded_max_us,
            "ok_after_deadline": self.ok_after_deadline,
            "server_batch_sizes": match &self.server_batches {
                None => serde_json::Value::Null,
                Some(Ok(b)) => b.to_json(),
                Some(Err(e)) => json!({ "error": e }),
            },
        })
    }

    /// A table for people.
    pub fn table(&self) -> String {
        let load = match self.rate_target {
            Some(rate) => format!(
                "open loop at {rate:.0} req/s over {} connections",
                self.connections
            ),
            None => format!(
                "closed loop, {} connections x {} in flight",
                self.connections, self.depth
            ),
        };
        let ms = |us: u64| us as f64 / 1e3;
        let mut out = format!(
            "{} ({load}), {:.1} s\n  ok          {}\n  throughput  {:.1} req/s\n  latency ms  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  mean {:.3}\n",
            self.model,
            self.elapsed.as_secs_f64(),
            self.ok,
            self.throughput_rps,
            ms(self.p50_us),
            ms(self.p90_us),
            ms(self.p99_us),
            ms(self.p999_us),
            ms(self.max_us),
            self.mean_us / 1e3
        );
        if let Some(lag) = self.send_lag_p99_us {
            out.push_str(&format!(
                "  generator   p99 {:.3} ms late sending (included in the latencies above)\n",
                ms(lag)
            ));
        }
        if let (Some(p99), Some(max)) = (self.overloaded_p99_us, self.overloaded_max_us) {
            out.push_str(&format!(
                "  refusals    OVERLOADED after p99 {:.3} ms, max {:.3} ms (from sending)\n",
                ms(p99),
                ms(max)
            ));
        }
        if self.ok_after_deadline > 0 {
            out.push_str(&format!(
                "  late        {} answers arrived after their deadline\n",
                self.ok_after_deadline
            ));
        }
        if self.retries > 0 {
            out.push_str(&format!(
                "  retried     {} (refused unrun by a draining server, resent on a new connection)\n",
                self.retries
            ));
        }
        match &self.server_batches {
            Some(Ok(b)) => out.push_str(&format!("  server      {}\n", b.line())),
            Some(Err(e)) => out.push_str(&format!("  server      batch sizes unavailable: {e}\n")),
            None => {}
        }
        if self.errors.is_empty() {
            out.push_str("  errors      none\n");
        } else {
            for (code, n) in &self.errors {
                out.push_str(&format!("  error       {code}: {n}\n"));
            }
        }
        out
    }
}
