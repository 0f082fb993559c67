//! The batch sizes the server formed during a run, from two readings of its `inferd_batch_size`
//! histogram (`/metrics`): taken when the measured phase starts and when it ends, so that the
//! distribution is the run's alone (other clients of the same model are counted too).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;

/// One reading of a model's batch-size histogram, all versions together.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchReading {
    /// Cumulative executions per upper bound (`le`), keyed by the bound's value.
    cumulative: BTreeMap<u64, u64>,
    /// Executions.
    count: u64,
    /// Requests those executions computed.
    sum: f64,
}

/// Reads the server's histogram for `model`.
///
/// # Errors
/// A message if `/metrics` cannot be read.
pub fn read(addr: SocketAddr, model: &str) -> Result<BatchReading, String> {
    let text = crate::client::http::get(addr, "/metrics", Duration::from_secs(5))?;
    Ok(parse(&text, model))
}

/// Parses the `inferd_batch_size` series of `model` out of Prometheus text.
pub fn parse(text: &str, model: &str) -> BatchReading {
    let mut reading = BatchReading::default();
    let wanted = format!("model=\"{model}\"");
    for line in text.lines().filter(|l| l.starts_with("inferd_batch_size")) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        if !series.contains(&wanted) {
            continue;
        }
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        if series.starts_with("inferd_batch_size_bucket{") {
            let le = series
                .split("le=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or("");
            // `+Inf` sorts last as u64::MAX.
            let bound = if le == "+Inf" {
                Some(u64::MAX)
            } else {
                le.parse::<f64>().ok().map(|b| b as u64)
            };
            if let Some(bound) = bound {
                *reading.cumulative.entry(bound).or_default() += value as u64;
            }
        } else if series.starts_with("inferd_batch_size_count{") {
            reading.count += value as u64;
        } else if series.starts_with("inferd_batch_size_sum{") {
            reading.sum += value;
        }
    }
    reading
}

/// What the server did between two readings.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerBatches {
    /// Model executions.
    pub executions: u64,
    /// Requests they computed.
    pub requests: u64,
    /// Executions per batch-size bucket: (upper bound, count); the last bound is `u64::MAX` (+Inf).
    pub buckets: Vec<(u64, u64)>,
}

impl ServerBatches {
    /// `after` minus `before`.
    pub fn between(before: &BatchReading, after: &BatchReading) -> ServerBatches {
        let mut buckets = Vec::new();
        let mut below = 0;
        for (&bound, &total) in &after.cumulative {
            let cumulative =
                total.saturating_sub(before.cumulative.get(&bound).copied().unwrap_or(0));
            buckets.push((bound, cumulative.saturating_sub(below)));
            below = cumulative;
        }
        ServerBatches {
            executions: after.count.saturating_sub(before.count),
            requests: (after.sum - before.sum).max(0.0).round() as u64,
            buckets,
        }
    }

    /// Mean requests per execution.
    pub fn mean(&self) -> f64 {
        self.requests as f64 / self.executions.max(1) as f64
    }

    fn label(bound: u64) -> String {
        if bound == u64::MAX {
            "+Inf".to_owned()
        } else {
            bound.to_string()
        }
    }

    /// `{"executions", "requests", "mean", "le": {"1": n, "2": n, ..., "+Inf": n}}` (per bucket,
    /// not cumulative).
    pub fn to_json(&self) -> serde_json::Value {
        let le: serde_json::Map<String, serde_json::Value> = self
            .buckets
            .iter()
            .map(|&(b, n)| (ServerBatches::label(b), json!(n)))
            .collect();
        json!({
            "executions": self.executions,
            "requests": self.requests,
            "mean": self.mean(),
            "le": le,
        })
    }

    /// One line for the table: the non-empty buckets.
    pub fn line(&self) -> String {
        let shown: Vec<String> = self
            .buckets
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|&(b, n)| format!("<={}: {n}", ServerBatches::label(b)))
            .collect();
        format!(
            "{} executions, mean batch {:.2}; {}",
            self.executions,
            self.mean(),
            shown.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = r#"# TYPE inferd_batch_size histogram
inferd_batch_size_bucket{model="digits-mlp",version="1",le="1"} 10
inferd_batch_size_bucket{model="digits-mlp",version="1",le="2"} 14
inferd_batch_size_bucket{model="digits-mlp",version="1",le="4"} 20
inferd_batch_size_bucket{model="digits-mlp",version="1",le="+Inf"} 20
inferd_batch_size_sum{model="digits-mlp",version="1"} 46
inferd_batch_size_count{model="digits-mlp",version="1"} 20
inferd_batch_size_bucket{model="digits-mlp-int8",version="1",le="1"} 99
inferd_batch_size_count{model="digits-mlp-int8",version="1"} 99
"#;

    #[test]
    fn reads_one_model_and_differences_two_readings() {
        let after = parse(SCRAPE, "digits-mlp");
        assert_eq!(after.count, 20, "the int8 model's series are not counted");
        let before = parse(
            &SCRAPE
                .replace("\"1\"} 10", "\"1\"} 4")
                .replace("\"2\"} 14", "\"2\"} 6")
                .replace("\"4\"} 20", "\"4\"} 7")
                .replace("\"+Inf\"} 20", "\"+Inf\"} 7")
                .replace("} 46", "} 13")
                .replace("\"1\"} 20", "\"1\"} 7"),
            "digits-mlp",
        );
        let run = ServerBatches::between(&before, &after);
        assert_eq!(run.executions, 13);
        assert_eq!(run.requests, 33);
        assert_eq!(run.buckets, vec![(1, 6), (2, 2), (4, 5), (u64::MAX, 0)]);
        assert_eq!(run.to_json()["le"]["4"], 5);
        assert!(run.line().contains("<=4: 5"), "{}", run.line());
    }
}
