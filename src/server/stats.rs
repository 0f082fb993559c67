//! The `Stats` answer: per model version counts and the end-to-end latency histogram, read from the
//! same series `/metrics` exports, filtered by what the asking identity may use (as `ListModels` is).

use std::sync::Arc;

use inferd_proto::{ModelStats, StatsReport, LATENCY_BUCKETS, MAX_MODELS};

use super::access::Who;
use super::Ctx;
use crate::metrics::ModelSnapshot;
use crate::model::ServedModel;

/// Owned readings, from which a borrowed [`StatsReport`] is built.
pub struct Snapshot {
    models: Vec<(Arc<ServedModel>, ModelSnapshot, usize)>,
}

impl Snapshot {
    /// Reads every model version `who` may use.
    pub fn take(ctx: &Ctx, who: Who<'_>) -> Snapshot {
        let access = ctx.access();
        let models = ctx
            .queued_by_model()
            .into_iter()
            .filter(|(m, _)| access.may_use(who.identity, &m.name))
            .map(|(m, queued)| {
                let series = ctx.metrics.model(&m).snapshot();
                (m, series, queued)
            })
            .collect();
        Snapshot { models }
    }

    /// The answer to `Stats { id }`.
    pub fn report(&self, id: u32, ctx: &Ctx) -> StatsReport<'_> {
        let mut models = heapless::Vec::<ModelStats<'_>, MAX_MODELS>::new();
        let mut truncated = false;
        for (m, s, queued) in &self.models {
            let mut latency = heapless::Vec::<u64, LATENCY_BUCKETS>::new();
            for &n in s.latency.iter().take(LATENCY_BUCKETS) {
                // Cannot fail: at most LATENCY_BUCKETS items are taken.
                let _ = latency.push(n);
            }
            let entry = ModelStats {
                name: &m.name,
                version: m.version,
                ok: s.ok,
                errors: s.errors,
                queued: u32::try_from(*queued).unwrap_or(u32::MAX),
                in_flight: u32::try_from(s.in_flight).unwrap_or(u32::MAX),
                latency,
                latency_sum_us: s.latency_sum_us,
            };
            if models.push(entry).is_err() {
                truncated = true;
                break;
            }
        }
        StatsReport {
            id,
            uptime_ms: u64::try_from(ctx.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            state: ctx.serving_state(),
            connections: u32::try_from(ctx.connections.count()).unwrap_or(u32::MAX),
            models,
            truncated,
        }
    }
}
