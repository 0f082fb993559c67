//! What is served: name → version → loaded model, one immutable snapshot at a time (the
//! [`super::Repository`] builds a new one on each change and swaps it in whole).
//!
//! A request without a version gets the model's `default_version` (from its `serving.toml`) when
//! that version is served, else the highest served version.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use inferd_proto::ErrorCode;

use super::manifest::Manifest;
use super::policy::Scheduling;
use super::{BatchAxes, LoadError, Runtime};
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
    /// Where requests stack, if they can: the manifest sets `batch_axis` and every input and output
    /// holds the batch symbol once ([`BatchAxes::find`]).
    pub batch: Option<BatchAxes>,
    /// What loading it cost.
    pub load: LoadFigures,
    /// When it became servable.
    pub loaded_at: std::time::SystemTime,
    /// When a request last used it, in ms since the process's first load (least recently used
    /// models loaded on demand are evicted first).
    pub last_used: AtomicU64,
    /// What warm-up runs it on, in input order (the scheduler warms each worker with it); empty with
    /// warm-up off.
    pub warmup_inputs: Vec<crate::tensor::HostTensor>,
    /// Its measured service time, updated by the workers after each execution.
    pub service: crate::scheduler::ServiceTime,
}

impl ServedModel {
    /// Marks it used now (one relaxed store per request).
    pub fn touch(&self) {
        self.last_used.store(now_ms(), Ordering::Relaxed);
    }

    /// When a request last used it (see [`ServedModel::last_used`]).
    pub fn last_used(&self) -> u64 {
        self.last_used.load(Ordering::Relaxed)
    }
}

/// Milliseconds since the first call: a monotonic clock for least-recently-used order.
pub fn now_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    u64::try_from(
        EPOCH
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_millis(),
    )
    .unwrap_or(u64::MAX)
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
    /// What the prepared-model cache lookup found; `None` without a cache.
    pub cache: Option<super::cache::Lookup>,
}

/// The model versions served at one moment, immutable once built: a request resolves its version
/// in one snapshot and keeps that version (an `Arc`) until it is answered, so a swap never changes a
/// model under a request.
#[derive(Debug, Default, Clone)]
pub struct Registry {
    models: BTreeMap<String, BTreeMap<u32, Arc<ServedModel>>>,
    defaults: BTreeMap<String, u32>,
    /// Models loaded on demand that are not resident, with what a request for them is told.
    on_demand: BTreeMap<String, String>,
    /// Scheduling knobs of models whose `serving.toml` sets any.
    scheduling: BTreeMap<String, Arc<Scheduling>>,
}

impl Registry {
    /// Loads every model version under `root` that the default policy serves, once: a convenience
    /// for tools and tests; the daemon keeps a [`super::Repository`], which also swaps versions.
    ///
    /// # Errors
    /// As [`super::Repository::open`].
    pub fn load(root: &Path) -> Result<Registry, LoadError> {
        let repo = super::Repository::open(root, super::repository::Settings::default())?;
        Ok(Arc::unwrap_or_clone(repo.snapshot()))
    }

    /// A snapshot of these versions; `defaults` names each model's `default_version`.
    pub(crate) fn from_parts(
        models: BTreeMap<String, BTreeMap<u32, Arc<ServedModel>>>,
        defaults: BTreeMap<String, u32>,
        on_demand: BTreeMap<String, String>,
        scheduling: BTreeMap<String, Arc<Scheduling>>,
    ) -> Registry {
        Registry {
            models,
            defaults,
            on_demand,
            scheduling,
        }
    }

    /// Every model's scheduling knobs that differ from the defaults.
    pub(crate) fn scheduling_all(&self) -> &BTreeMap<String, Arc<Scheduling>> {
        &self.scheduling
    }

    /// A model's scheduling knobs (the defaults when its `serving.toml` sets none).
    pub fn scheduling(&self, name: &str) -> Arc<Scheduling> {
        static DEFAULT: std::sync::OnceLock<Arc<Scheduling>> = std::sync::OnceLock::new();
        self.scheduling
            .get(name)
            .map_or_else(|| Arc::clone(DEFAULT.get_or_init(Arc::default)), Arc::clone)
    }

    /// Models loaded on demand that are not resident now.
    pub(crate) fn on_demand(&self) -> &BTreeMap<String, String> {
        &self.on_demand
    }

    /// Finds a model version; `None` means the highest.
    ///
    /// # Errors
    /// `UNKNOWN_MODEL` or `UNKNOWN_VERSION`.
    pub fn get(&self, name: &str, version: Option<u32>) -> Result<Arc<ServedModel>, RequestError> {
        let versions = self
            .models
            .get(name)
            .ok_or_else(|| match self.on_demand.get(name) {
                Some(why) => {
                    RequestError::new(ErrorCode::NOT_LOADED, format!("model {name:?}: {why}"))
                }
                None => {
                    RequestError::new(ErrorCode::UNKNOWN_MODEL, format!("no model named {name:?}"))
                }
            })?;
        let found = match version {
            Some(v) => versions.get(&v),
            None => self
                .defaults
                .get(name)
                .and_then(|d| versions.get(d))
                .or_else(|| versions.values().next_back()),
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

    /// A model's served versions.
    pub(crate) fn versions(&self, name: &str) -> Option<BTreeMap<u32, Arc<ServedModel>>> {
        self.models.get(name).cloned()
    }

    /// Whether nothing is served, resident or on demand.
    pub fn is_empty(&self) -> bool {
        self.models.is_empty() && self.on_demand.is_empty()
    }

    /// The version a request without one gets.
    pub fn default_version(&self, name: &str) -> Option<u32> {
        self.get(name, None).ok().map(|m| m.version)
    }

    /// Every served model version, sorted by name then version.
    pub fn all(&self) -> impl Iterator<Item = &Arc<ServedModel>> {
        self.models.values().flat_map(BTreeMap::values)
    }
}
