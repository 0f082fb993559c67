//! Loading one version folder into a [`ServedModel`]: manifest, import, optimisation, warm-up.
//!
//! A version is servable only once it has run: warm-up executes it `runs` times on the inputs in
//! `<version>/sample/*.npy` (one file per input, named after it), or on inputs generated within its
//! declared shapes when it ships none, so that the first real request does not pay for first-run
//! allocations and kernel selection, and so that a model that loads but cannot run never replaces a
//! working version.

use std::path::Path;
use std::time::{Duration, Instant};

use super::cache::{Key, Lookup, ModelCache, Unwritten};
use super::manifest::Manifest;
use super::registry::{LoadFigures, ServedModel, MODEL_FILE};
use super::runtime::Prepared;
use super::{BatchAxes, IoSpec, LoadError, Runtime};
use crate::scheduler::ServiceTime;
use crate::tensor::HostTensor;

/// Loads, optimises and warms `vdir` (`<root>/<name>/<version>`), through the prepared-model
/// `cache` if there is one: read from it on a hit; on a miss, the entry to write once the version
/// serves is returned beside it ([`ModelCache::write`]).
///
/// # Errors
/// [`LoadError`] naming the file at fault: a bad manifest, a model tract cannot serve, inputs that
/// contradict the manifest, or a failed warm-up run.
pub fn load_version(
    vdir: &Path,
    name: &str,
    version: u32,
    warmup_runs: u32,
    threads: usize,
    nice: i32,
    cache: Option<&ModelCache>,
) -> Result<(ServedModel, Option<Unwritten>), LoadError> {
    let onnx = vdir.join(MODEL_FILE);
    let manifest = Manifest::load(vdir)?;
    let facts = manifest
        .as_ref()
        .filter(|m| !m.inputs.is_empty())
        .map(|m| m.inputs.as_slice());
    let rss_before = crate::metrics::resident_bytes();
    let started = Instant::now();
    let model_error = |message| LoadError::Model {
        path: onnx.display().to_string(),
        message,
    };
    let bytes = std::fs::read(&onnx).map_err(|e| model_error(e.to_string()))?;
    let (prepared, lookup, key) =
        prepare(&bytes, facts, cache, name, version).map_err(model_error)?;
    drop(bytes);
    // The clone keeps the weights as imported (optimisation repacks them into new tensors): about
    // the version's weights again, until the watch thread has written the entry.
    let unwritten = key.map(|key| Unwritten::new(key, name, version, prepared.clone()));
    // The graph again for a single-row plan, if the model may batch (another clone sharing the
    // weights, dropped once that plan is built).
    let for_single_rows = manifest
        .as_ref()
        .filter(|m| m.batch_axis.is_some() && m.single_row_plan != Some(false))
        .map(|_| prepared.clone());
    let mut runtime = prepared
        .into_runtime()
        .and_then(|mut r| r.set_threads(threads, nice).map(|()| r))
        .map_err(model_error)?;
    let load = started.elapsed();
    let warm = |runtime: &Runtime| -> Result<_, String> {
        if warmup_runs == 0 {
            return Ok(((None, None), Vec::new()));
        }
        let inputs = warm_up_inputs(runtime.inputs(), vdir)?;
        Ok((warm_up(runtime, &inputs, warmup_runs)?, inputs))
    };
    let ((warmup, steady), warmup_inputs) = warm(&runtime).map_err(|message| LoadError::Model {
        path: vdir.display().to_string(),
        message: format!("warm-up failed: {message}"),
    })?;
    let inputs: Vec<String> = runtime.inputs().iter().map(ToString::to_string).collect();
    let outputs: Vec<String> = runtime.outputs().iter().map(ToString::to_string).collect();
    log::info!(
        "loaded {name} v{version} in {} ms (warm-up {}): inputs [{}] outputs [{}]",
        load.as_millis(),
        warmup.map_or_else(|| "off".to_owned(), |d| format!("{} µs", d.as_micros())),
        inputs.join("; "),
        outputs.join("; ")
    );
    for repair in runtime.repairs() {
        log::warn!("{name} v{version}: {repair}");
    }
    let manifest = manifest.unwrap_or_default();
    let batch = manifest.batch_axis.and_then(|axis| {
        BatchAxes::find(axis, runtime.inputs(), runtime.outputs())
            .map_err(|why| {
                log::warn!("{name} v{version}: batch_axis is set but {why}; not batching")
            })
            .ok()
    });
    let single_row = match (&batch, for_single_rows) {
        (Some(axes), Some(prepared)) => plan_single_rows(
            &mut runtime,
            prepared,
            &axes.symbol,
            &warmup_inputs,
            manifest.single_row_plan,
            &format!("{name} v{version}"),
        ),
        _ => None,
    };
    let steady = single_row.or(steady);
    let resident_bytes = match (rss_before, crate::metrics::resident_bytes()) {
        (Some(before), Some(after)) => after.saturating_sub(before),
        _ => 0,
    };
    let service = steady.map_or_else(ServiceTime::default, |took| {
        let rows = batch.as_ref().map_or(1, |b| b.rows(&warmup_inputs));
        ServiceTime::seeded(rows, took)
    });
    let served = ServedModel {
        name: name.to_owned(),
        version,
        manifest,
        runtime,
        batch,
        load: LoadFigures {
            load,
            warmup,
            resident_bytes,
            cache: lookup,
        },
        loaded_at: std::time::SystemTime::now(),
        last_used: std::sync::atomic::AtomicU64::new(super::registry::now_ms()),
        service,
        warmup_inputs,
    };
    Ok((served, unwritten))
}

/// The version's graph, imported from its ONNX bytes or read from the cache; with a cache, what
/// the lookup found and, unless a hit, the key to write the entry under.
fn prepare(
    onnx: &[u8],
    facts: Option<&[IoSpec]>,
    cache: Option<&ModelCache>,
    name: &str,
    version: u32,
) -> Result<(Prepared, Option<Lookup>, Option<Key>), String> {
    let Some(cache) = cache else {
        return Ok((Prepared::from_onnx(onnx, facts)?.0, None, None));
    };
    let key = Key::new(onnx, facts);
    match cache.lookup(&key, name, version) {
        (lookup, Some(prepared)) => Ok((prepared, Some(lookup), None)),
        (lookup, None) => Ok((Prepared::from_onnx(onnx, facts)?.0, Some(lookup), Some(key))),
    }
}

/// Runs the model `runs` times on this (the loading) thread; returns the first run's time (the one
/// warm-up exists to absorb) and the last one's (the first estimate of its service time). The
/// scheduler then runs it once more on each worker thread.
fn warm_up(
    runtime: &Runtime,
    inputs: &[HostTensor],
    runs: u32,
) -> Result<(Option<Duration>, Option<Duration>), String> {
    let (mut first, mut last) = (None, None);
    for _ in 0..runs {
        let started = Instant::now();
        let batch = inputs.to_vec();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runtime.run(batch)))
            .map_err(|_| "the model panicked".to_owned())?;
        result.map_err(|e| e.to_string())?;
        let took = started.elapsed();
        first.get_or_insert(took);
        last = Some(took);
    }
    Ok((first, last))
}

/// Gives a batching model's single-row requests a plan of their own where that pays
/// ([`Runtime::plan_single_rows`]), and logs what was measured. Returns the kept plan's run time on
/// the warm-up inputs (the first estimate of its service time). A plan that cannot be built or run
/// leaves the model on its batch plan: it is an optimisation, never a reason to refuse a version.
fn plan_single_rows(
    runtime: &mut Runtime,
    prepared: super::runtime::Prepared,
    symbol: &str,
    probe: &[HostTensor],
    keep: Option<bool>,
    label: &str,
) -> Option<Duration> {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.plan_single_rows(prepared, symbol, probe, keep)
    }))
    .unwrap_or_else(|_| Err("the model panicked".to_owned()));
    match outcome {
        Ok((Some(race), kept)) => {
            log::info!(
                "{label}: one row runs in {} µs with {symbol} = 1, {} µs with the batch plan: {}",
                race.single_plan.as_micros(),
                race.batch_plan.as_micros(),
                if kept {
                    "single rows get their own plan"
                } else {
                    "one plan for all"
                }
            );
            kept.then_some(race.single_plan)
        }
        Ok((None, kept)) => {
            log::info!(
                "{label}: {}",
                if kept {
                    "single rows get their own plan (manifest), not timed: warm-up has no single row"
                } else {
                    "one plan for all: warm-up has no single row to time a plan for them on"
                }
            );
            None
        }
        Err(why) => {
            log::warn!("{label}: no plan of its own for single rows: {why}");
            None
        }
    }
}

/// The shipped sample, ordered as the model's inputs; or, without a `sample/` folder, inputs
/// generated within the declared shapes (symbolic dimensions set to 1).
fn warm_up_inputs(specs: &[IoSpec], vdir: &Path) -> Result<Vec<HostTensor>, String> {
    let dir = vdir.join("sample");
    if !dir.is_dir() {
        let mut rng = crate::loadgen::inputs::Rng::new(0x5eed);
        return Ok(specs
            .iter()
            .map(|s| crate::loadgen::inputs::random(s, 1, &mut rng))
            .collect());
    }
    let mut sample = crate::npy::read_folder(&dir).map_err(|e| e.to_string())?;
    let mut ordered = Vec::with_capacity(specs.len());
    for spec in specs {
        let ix = sample
            .iter()
            .position(|t| t.name == spec.name)
            .ok_or_else(|| format!("sample/ has no {}.npy for input {}", spec.name, spec.name))?;
        ordered.push(sample.swap_remove(ix));
    }
    // The sample must fit the model as a request would: a sample that does not is a version whose
    // inputs changed without its sample, caught here rather than by tract.
    let wire = ordered
        .iter()
        .map(HostTensor::to_wire)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("sample/: {e}"))?;
    super::validate::validate(specs, &wire).map_err(|e| format!("sample/: {e}"))?;
    Ok(ordered)
}
