//! A second plan for single-row requests of a batching model.
//!
//! A model that batches is planned with its batch dimension symbolic (`N`), and tract resolves the
//! shapes that depend on it on every run. For most models that costs nothing measurable (digits-mlp:
//! 8.2 against 8.3 µs), but for some it is most of a small model's run: Silero VAD's symbolic plan
//! takes ~94 µs for one row where the same graph with `N = 1` takes ~59 µs (its padding and im2col
//! geometry, fixed when the shape is). So a batching model may also get a plan with the symbol
//! bound to 1, decluttered and optimised again with concrete shapes, which runs every request of one
//! row; batches keep the symbolic plan. The two plans compute the same graph but may pick different
//! kernels, so a row's outputs can differ in the last bits between a batch and a single run.
//!
//! The plan costs a second optimised copy of the weights and a few milliseconds of load, so it is
//! kept only where it pays: measured at load on the version's warm-up inputs (a race of both plans),
//! or forced either way by the manifest (`single_row_plan`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tract_onnx::prelude::{IntoRunnable, TDim, TypedSimplePlan};

use super::{optimized, to_values, Prepared, RunError};
use crate::tensor::HostTensor;

/// The single-row plan and the input shapes it takes.
#[derive(Debug, Clone)]
pub struct SingleRow {
    pub(super) plan: Arc<TypedSimplePlan>,
    shapes: Vec<Vec<u64>>,
}

/// What the race at load measured, for the log: median run of each plan on the warm-up inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Race {
    /// The symbolic (batch) plan.
    pub batch_plan: Duration,
    /// The plan with the batch symbol bound to 1.
    pub single_plan: Duration,
}

impl Race {
    /// Whether the single-row plan is worth its memory: at least 1.25× faster (below that, this
    /// machine's run-to-run noise could pick it for nothing).
    pub fn pays(&self) -> bool {
        self.single_plan.as_nanos() * 5 <= self.batch_plan.as_nanos() * 4
    }
}

/// Runs before timing, so that both plans' first-run allocations are out of the race.
const WARM_RUNS: u32 = 3;
/// Timed runs of each plan, alternating, so that a slow spell of the machine hits both.
const TIMED_RUNS: usize = 15;

impl SingleRow {
    /// Binds `symbol` to 1 in `prepared`, then declutters and optimises it again.
    ///
    /// # Errors
    /// A message if tract cannot substitute, optimise or plan the graph.
    pub fn build(prepared: Prepared, symbol: &str) -> Result<SingleRow, String> {
        let err = |e: tract_onnx::prelude::TractError| format!("{e:#}");
        let subs = HashMap::from([(prepared.model.sym(symbol), TDim::Val(1))]);
        let model = prepared.model.set_symbols(&subs).map_err(err)?;
        // Declutter again (not codegen alone, as for a cached graph): with the shape now concrete,
        // tract folds what it computed per run before.
        let typed = optimized(model, false)?;
        let mut shapes = Vec::new();
        for ix in 0..typed.input_outlets().map_err(err)?.len() {
            let fact = typed.input_fact(ix).map_err(err)?;
            let shape = fact.shape.as_concrete().ok_or_else(|| {
                format!("input {ix} still has a symbolic shape with {symbol} = 1")
            })?;
            shapes.push(shape.iter().map(|&d| d as u64).collect());
        }
        let plan = typed.into_runnable().map_err(err)?;
        Ok(SingleRow { plan, shapes })
    }

    /// Whether `inputs` are a single row this plan takes.
    pub fn fits(&self, inputs: &[HostTensor]) -> bool {
        inputs.len() == self.shapes.len()
            && inputs.iter().zip(&self.shapes).all(|(t, s)| t.shape == *s)
    }

    /// Times this plan against `batch_plan` on `probe` (which it must fit).
    ///
    /// # Errors
    /// A run that fails.
    pub fn race(
        &self,
        batch_plan: &Arc<TypedSimplePlan>,
        probe: &[HostTensor],
    ) -> Result<Race, RunError> {
        let run = |plan: &Arc<TypedSimplePlan>| -> Result<Duration, RunError> {
            let values = to_values(probe.to_vec())?;
            let started = Instant::now();
            plan.run(values).map_err(|e| RunError(format!("{e:#}")))?;
            Ok(started.elapsed())
        };
        for _ in 0..WARM_RUNS {
            run(batch_plan)?;
            run(&self.plan)?;
        }
        let mut batch = Vec::with_capacity(TIMED_RUNS);
        let mut single = Vec::with_capacity(TIMED_RUNS);
        for _ in 0..TIMED_RUNS {
            batch.push(run(batch_plan)?);
            single.push(run(&self.plan)?);
        }
        batch.sort_unstable();
        single.sort_unstable();
        Ok(Race {
            batch_plan: batch[TIMED_RUNS / 2],
            single_plan: single[TIMED_RUNS / 2],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_pays_from_a_quarter_faster() {
        let race = |b, s| Race {
            batch_plan: Duration::from_micros(b),
            single_plan: Duration::from_micros(s),
        };
        assert!(race(94, 59).pays());
        assert!(race(100, 80).pays());
        assert!(!race(100, 81).pays());
        assert!(!race(8, 8).pays());
    }
}
