//! The model repository: `<root>/<name>/<version>/model.onnx` (+ optional `model.toml`), loaded once at
//! start-up into name → version → model.
//!
//! Versions are positive integers; a request without a version gets the highest. Folders that are not
//! versions (a `README`, a `LICENSE`) are skipped. A model that fails to load stops start-up with a
//! message naming the file: serving a repository partially, silently, is worse than not starting.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use inferd_proto::ErrorCode;

use super::manifest::Manifest;
use super::{LoadError, Runtime};
use crate::error::RequestError;

/// The ONNX file name looked for in each version folder.
pub const MODEL_FILE: &str = "model.onnx";

/// One served model version.
#[derive(Debug)]
pub struct ServedModel {
    /// Model name (its folder name).
    pub name: String,
    /// Version number (its version folder name).
    pub version: u32,
    /// The manifest, or defaults when there is none.
    pub manifest: Manifest,
    /// The loaded model.
    pub runtime: Runtime,
    /// Requests can be stacked along axis 0: the manifest says `batch_axis = 0` and every input and
    /// output has a symbolic first dimension.
    pub batchable: bool,
    /// What loading it cost.
    pub load: LoadFigures,
}

/// Time and memory one model version took to become servable.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LoadFigures {
    /// ONNX parse, analysis and optimisation.
    pub load: Duration,
    /// The warm-up run on the version's `sample/` inputs; `None` without a sample.
    pub warmup: Option<Duration>,
    /// Growth of the process's resident memory meanwhile (versions load one at a time).
    pub resident_bytes: u64,
}

/// All served models, immutable once built.
#[derive(Debug, Default)]
pub struct Registry {
    models: BTreeMap<String, BTreeMap<u32, Arc<ServedModel>>>,
}

impl Registry {
    /// Loads every model version under `root`.
    ///
    /// # Errors
    /// [`LoadError`] for an unreadable folder, a bad manifest, a model tract cannot serve, or a
    /// repository with no model at all.
    pub fn load(root: &Path) -> Result<Registry, LoadError> {
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| LoadError::Io { path, source }
        };
        let mut models = BTreeMap::new();
        for entry in sorted_dirs(root).map_err(io(root))? {
            let Some(name) = entry
                .file_name()
                .and_then(|n| n.to_str())
                .map(str::to_owned)
            else {
                continue;
            };
            if !is_model_name(&name) {
                log::warn!(
                    "skipping {}: model names use letters, digits, '.', '-' and '_'",
                    entry.display()
                );
                continue;
            }
            let mut versions = BTreeMap::new();
            for vdir in sorted_dirs(&entry).map_err(io(&entry))? {
                let Some(version) = vdir
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|v| v.parse::<u32>().ok())
                else {
                    continue;
                };
                let onnx = vdir.join(MODEL_FILE);
                if !onnx.is_file() {
                    log::warn!("skipping {}: no {MODEL_FILE}", vdir.display());
                    continue;
                }
                let manifest = Manifest::load(&vdir)?;
                let facts = manifest
                    .as_ref()
                    .filter(|m| !m.inputs.is_empty())
                    .map(|m| m.inputs.as_slice());
                let rss_before = crate::metrics::resident_bytes();
                let started = Instant::now();
                let runtime = Runtime::load(&onnx, facts).map_err(|message| LoadError::Model {
                    path: onnx.display().to_string(),
                    message,
                })?;
                let load = started.elapsed();
                let warmup = warm_up(&runtime, &vdir).map_err(|message| LoadError::Model {
                    path: vdir.join("sample").display().to_string(),
                    message: format!("warm-up on the shipped sample failed: {message}"),
                })?;
                let resident_bytes = match (rss_before, crate::metrics::resident_bytes()) {
                    (Some(before), Some(after)) => after.saturating_sub(before),
                    _ => 0,
                };
                let inputs: Vec<String> =
                    runtime.inputs().iter().map(ToString::to_string).collect();
                let outputs: Vec<String> =
                    runtime.outputs().iter().map(ToString::to_string).collect();
                log::info!(
                    "loaded {name} v{version} in {} ms (warm-up {}): inputs [{}] outputs [{}]",
                    load.as_millis(),
                    warmup.map_or_else(
                        || "none: no sample".to_owned(),
                        |d| format!("{} µs", d.as_micros())
                    ),
                    inputs.join("; "),
                    outputs.join("; ")
                );
                let manifest = manifest.unwrap_or_default();
                let symbolic_first = |specs: &[super::IoSpec]| {
                    specs
                        .iter()
                        .all(|s| matches!(s.shape.first(), Some(super::DimSpec::Symbol(_))))
                };
                let batchable = manifest.batch_axis == Some(0)
                    && symbolic_first(runtime.inputs())
                    && symbolic_first(runtime.outputs());
                if manifest.batch_axis.is_some() && !batchable {
                    log::warn!("{name} v{version}: batch_axis is set but the model's shapes do not allow stacking on axis 0; not batching");
                }
                versions.insert(
                    version,
                    Arc::new(ServedModel {
                        name: name.clone(),
                        version,
                        manifest,
                        runtime,
                        batchable,
                        load: LoadFigures {
                            load,
                            warmup,
                            resident_bytes,
                        },
                    }),
                );
            }
            if !versions.is_empty() {
                models.insert(name, versions);
            }
        }
        if models.is_empty() {
            return Err(LoadError::Layout(format!(
                "no models under {}: expected <name>/<version>/{MODEL_FILE}",
                root.display()
            )));
        }
        Ok(Registry { models })
    }

    /// Finds a model version; `None` means the highest.
    ///
    /// # Errors
    /// `UNKNOWN_MODEL` or `UNKNOWN_VERSION`.
    pub fn get(&self, name: &str, version: Option<u32>) -> Result<Arc<ServedModel>, RequestError> {
        let versions = self.models.get(name).ok_or_else(|| {
            RequestError::new(ErrorCode::UNKNOWN_MODEL, format!("no model named {name:?}"))
        })?;
        let found = match version {
            Some(v) => versions.get(&v),
            None => versions.values().next_back(),
        };
        found.cloned().ok_or_else(|| {
            let have: Vec<String> = versions.keys().map(u32::to_string).collect();
            RequestError::new(
                ErrorCode::UNKNOWN_VERSION,
                format!(
                    "model {name:?} has no version {} (served: {})",
                    version.unwrap_or(0),
                    have.join(", ")
                ),
            )
        })
    }

    /// Every served model version, sorted by name then version.
    pub fn all(&self) -> impl Iterator<Item = &Arc<ServedModel>> {
        self.models.values().flat_map(BTreeMap::values)
    }
}

/// Runs the model once on `<version>/sample/*.npy` (one file per input, named after it), so that the
/// first real request does not pay for first-run allocations and kernel selection.
fn warm_up(runtime: &Runtime, vdir: &Path) -> Result<Option<Duration>, String> {
    let dir = vdir.join("sample");
    if !dir.is_dir() {
        return Ok(None);
    }
    let mut sample = crate::npy::read_folder(&dir).map_err(|e| e.to_string())?;
    let mut ordered = Vec::with_capacity(runtime.inputs().len());
    for spec in runtime.inputs() {
        let ix = sample
            .iter()
            .position(|t| t.name == spec.name)
            .ok_or_else(|| format!("no {}.npy for input {}", spec.name, spec.name))?;
        ordered.push(sample.swap_remove(ix));
    }
    let started = Instant::now();
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runtime.run(ordered)))
        .map_err(|_| "the model panicked".to_owned())?
        .map_err(|e| e.to_string())?;
    Ok(Some(started.elapsed()))
}

fn sorted_dirs(dir: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            dirs.push(path);
        }
    }
    dirs.sort();
    Ok(dirs)
}

fn is_model_name(name: &str) -> bool {
    !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}
