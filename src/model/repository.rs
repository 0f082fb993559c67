//! The live model repository: `<root>/<name>/<version>/model.onnx`, kept in step with the folder.
//!
//! A rescan (at start, on SIGHUP, on an admin `Reload`, or every `--model-poll-ms`) lists the
//! folders, applies each model's version policy, loads and warms every selected version that is new
//! or whose files changed, and then swaps in a new [`Registry`] snapshot in one step. Requests keep the
//! version they resolved (an `Arc`), so in-flight and queued work finishes on it, and an old version
//! is freed when its last request is answered. A version that fails to load or warm never replaces
//! a working one: the model keeps serving what it served, and the failure is kept (with the files'
//! fingerprint, so it is not retried until they change) for `inferd models` and `/metrics`.
//!
//! Loads happen on the thread that rescans, one at a time and never on a request path. At start-up a
//! failure is fatal instead: serving a repository partially, silently, is worse than not starting.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use super::cache::{Counts, Lookup, ModelCache, Unwritten, Write};
use super::load::load_version;
use super::policy::{ServingFile, VersionPolicy};
use super::registry::MODEL_FILE;
use super::{LoadError, LoadFigures, Registry, ServedModel};

/// How the repository is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Versions served for models without a `serving.toml` that says otherwise.
    pub policy: VersionPolicy,
    /// Runs of each version before it takes traffic.
    pub warmup_runs: u32,
    /// Cap on the weights of resident versions, in bytes; `None`: no cap.
    pub memory_budget: Option<u64>,
    /// Lock resident pages into RAM after the first load and after every swap.
    pub lock_memory: bool,
    /// The prepared-model cache folder; `None`: every load imports the ONNX file.
    pub cache_dir: Option<PathBuf>,
    /// Nice steps inference threads (workers, intra-op pools) run below the I/O threads.
    pub worker_nice: i32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            policy: VersionPolicy::default(),
            warmup_runs: 3,
            memory_budget: None,
            lock_memory: false,
            cache_dir: None,
            worker_nice: crate::priority::DEFAULT_WORKER_NICE,
        }
    }
}

/// Where a version present in the folder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionState {
    /// Being loaded and warmed; not yet taking traffic.
    Loading,
    /// Taking traffic.
    Serving,
    /// Failed to load or warm; not retried until its files change.
    Failed,
    /// Present but not selected by the version policy.
    Standby,
}

/// One version's state, for `inferd models` and `/models`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct VersionStatus {
    /// Model name.
    pub name: String,
    /// Version number.
    pub version: u32,
    /// Where it stands.
    pub state: VersionState,
    /// Why: the policy that selected or skipped it, or the load error.
    pub reason: String,
    /// Whether requests without a version get this one.
    pub default: bool,
    /// Seconds since the epoch at the last change of state.
    pub since_unix: u64,
    /// Load time (parse, analysis, optimisation), when serving.
    pub load_ms: Option<f64>,
    /// First warm-up run, when serving with warm-up on.
    pub warmup_ms: Option<f64>,
    /// Resident memory growth while it loaded, when serving.
    pub resident_bytes: Option<u64>,
    /// Bytes of its weights, what the memory budget counts, when serving.
    pub weights_bytes: Option<u64>,
    /// How it batches, when serving: `no` (one request per execution), `yes`, or `yes+row` (and
    /// requests of one row run a plan of their own, `runtime::single_row`).
    pub batching: Option<&'static str>,
    /// Whether the model stays resident (`pinned = true`, the default) or is loaded on demand.
    pub pinned: bool,
    /// Where its prepared graph came from, when serving with a cache: `hit` (the cache), `miss`
    /// (its ONNX file; an entry is written), `invalid` (a damaged entry, deleted and rewritten).
    pub cache: Option<&'static str>,
}

/// What one rescan changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// Versions newly serving (or reloaded because their files changed).
    pub loaded: Vec<(String, u32)>,
    /// Versions no longer served (removed, or deselected by the policy).
    pub unloaded: Vec<(String, u32)>,
    /// Versions that failed, with the reason.
    pub failed: Vec<(String, u32, String)>,
}

impl Changes {
    /// Whether the served set changed.
    pub fn swapped(&self) -> bool {
        !self.loaded.is_empty() || !self.unloaded.is_empty()
    }
}

/// Sizes and modification times of a version's files: a change means the version is reloaded.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint(Vec<(PathBuf, u64, Option<SystemTime>)>);

#[derive(Debug, Clone)]
struct Entry {
    fingerprint: Fingerprint,
    state: VersionState,
    reason: String,
    since: SystemTime,
}

#[derive(Debug, Default)]
struct Book {
    versions: BTreeMap<(String, u32), Entry>,
    /// Failed loads since start, by model (`inferd_model_load_failures_total`).
    failures: BTreeMap<String, u64>,
    /// Changes of the served set (versions loaded or unloaded) since start (`inferd_model_swaps_total`).
    swaps: u64,
    /// Models whose `serving.toml` says `pinned = false`.
    unpinned: BTreeSet<String>,
    /// Models loaded on demand that a request has asked for since the last rescan.
    demand: BTreeSet<String>,
}

/// Why an evicted version is not resident.
const EVICTED: &str =
    "evicted: the least recently used model loaded on demand, to make room within the memory budget";

/// What a request for a model loaded on demand, not resident, is told.
const NOT_RESIDENT: &str = "it is loaded on demand and not resident: loading it now, retry shortly";

/// The start of a refusal by the memory budget (a demand retries those).
const DOES_NOT_FIT: &str = "does not fit the memory budget";

/// Runs a freshly loaded version on the server's inference workers before it is swapped in.
pub type WorkerWarmUp = Arc<dyn Fn(&Arc<ServedModel>) -> Result<(), String> + Send + Sync>;

/// The served models and what the folder holds.
pub struct Repository {
    root: PathBuf,
    settings: Settings,
    current: RwLock<Arc<Registry>>,
    /// Set by the server that serves this repository.
    worker_warm_up: RwLock<Option<WorkerWarmUp>>,
    /// Versions swapped out, held until their last request is answered so that they are freed here
    /// (on the watch thread) rather than by whichever I/O or worker thread answers last: freeing a
    /// model is milliseconds of work that would stall every connection on that thread.
    retiring: Mutex<Vec<Arc<ServedModel>>>,
    book: Mutex<Book>,
    /// One rescan at a time.
    rescanning: Mutex<()>,
    /// `None` without a cache folder, or when it cannot be created (logged; loads then import).
    cache: Option<ModelCache>,
    /// Cache entries of versions imported on a miss, written by the watch thread
    /// ([`Repository::write_cache_entries`]); at most one per version loaded since.
    unwritten: Mutex<Vec<Unwritten>>,
}

impl Repository {
    /// Loads every version the policies select under `root`.
    ///
    /// # Errors
    /// [`LoadError`] for an unreadable folder, a bad manifest or `serving.toml`, a model that cannot
    /// be served, or a repository with nothing to serve.
    pub fn open(root: &Path, settings: Settings) -> Result<Repository, LoadError> {
        // Before any thread lowers its priority: intra-op pools built later, on the idle-priority
        // watch thread, are started by the spawner at this thread's priority.
        crate::priority::init();
        let cache = settings
            .cache_dir
            .as_deref()
            .and_then(|dir| match ModelCache::open(dir) {
                Ok(cache) => {
                    log::info!("prepared-model cache in {}", cache.dir().display());
                    Some(cache)
                }
                Err(message) => {
                    log::warn!("prepared-model cache off: {message}");
                    None
                }
            });
        let repo = Repository {
            root: root.to_path_buf(),
            settings,
            current: RwLock::new(Arc::new(Registry::default())),
            worker_warm_up: RwLock::new(None),
            retiring: Mutex::new(Vec::new()),
            book: Mutex::new(Book::default()),
            rescanning: Mutex::new(()),
            cache,
            unwritten: Mutex::new(Vec::new()),
        };
        repo.sync(true)?;
        if repo.settings.lock_memory {
            lock_resident()?;
        }
        if repo.snapshot().is_empty() {
            return Err(LoadError::Layout(format!(
                "no models under {}: expected <name>/<version>/{MODEL_FILE}",
                root.display()
            )));
        }
        Ok(repo)
    }

    /// Has every version loaded from now on run on the inference workers (see
    /// [`crate::scheduler::Warmer`]) before it is swapped in; a failure there fails the version.
    pub fn warm_on_workers(&self, warm: WorkerWarmUp) {
        *self
            .worker_warm_up
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(warm);
    }

    /// The folder served.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// What is served now. Cheap: one read lock and an `Arc` clone.
    pub fn snapshot(&self) -> Arc<Registry> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Brings the served set in line with the folder; see the module documentation.
    ///
    /// # Errors
    /// Only if the repository folder itself cannot be read; per-model problems are recorded, logged
    /// and returned in [`Changes::failed`] while the previous versions keep serving.
    pub fn rescan(&self) -> Result<Changes, LoadError> {
        self.sync(false)
    }

    /// Every version present or failed, sorted by name then version.
    pub fn status(&self) -> Vec<VersionStatus> {
        let snapshot = self.snapshot();
        let book = self.book.lock().unwrap_or_else(PoisonError::into_inner);
        book.versions
            .iter()
            .map(|((name, version), e)| {
                let served = snapshot.get(name, Some(*version)).ok();
                let figures: Option<LoadFigures> = served.as_ref().map(|m| m.load);
                VersionStatus {
                    name: name.clone(),
                    version: *version,
                    state: e.state,
                    reason: e.reason.clone(),
                    default: served.is_some() && snapshot.default_version(name) == Some(*version),
                    since_unix: e
                        .since
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs()),
                    load_ms: figures.map(|f| f.load.as_secs_f64() * 1e3),
                    warmup_ms: figures
                        .and_then(|f| f.warmup)
                        .map(|d| d.as_secs_f64() * 1e3),
                    resident_bytes: figures.map(|f| f.resident_bytes),
                    weights_bytes: served.as_ref().map(|m| m.runtime.weight_bytes()),
                    batching: served.as_ref().map(|m| {
                        match (m.batch.is_some(), m.runtime.has_single_row_plan()) {
                            (false, _) => "no",
                            (true, false) => "yes",
                            (true, true) => "yes+row",
                        }
                    }),
                    pinned: !book.unpinned.contains(name),
                    cache: figures.and_then(|f| f.cache).map(Lookup::label),
                }
            })
            .collect()
    }

    /// A request wants `name`, a model loaded on demand that is not resident: the next rescan loads
    /// it (evicting the least recently used on-demand models if the budget needs room). A refusal by
    /// the budget is retried on demand, since memory may have been freed since.
    ///
    /// The refusal stays recorded (and is what requests are told) until that retry ends: erasing
    /// it here let a rescan running meanwhile publish "loading it now" for a model it would
    /// refuse again, so clients saw the reason come and go.
    pub fn demand(&self, name: &str) {
        self.book
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .demand
            .insert(name.to_owned());
    }

    /// Failed loads since start, by model, and snapshots swapped in since start.
    pub fn counters(&self) -> (BTreeMap<String, u64>, u64) {
        let book = self.book.lock().unwrap_or_else(PoisonError::into_inner);
        (book.failures.clone(), book.swaps)
    }

    /// What the prepared-model cache did since start (`inferd_model_cache_*_total`); empty
    /// without a cache.
    pub fn cache_counts(&self) -> Counts {
        self.cache
            .as_ref()
            .map(ModelCache::counts)
            .unwrap_or_default()
    }

    /// Writes the cache entries of the versions imported since the last call; returns how many
    /// were written. The watch thread calls it, so that loads never wait for tract's serialiser.
    pub fn write_cache_entries(&self) -> usize {
        let Some(cache) = &self.cache else {
            return 0;
        };
        let pending = std::mem::take(
            &mut *self
                .unwritten
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        pending
            .into_iter()
            .map(|entry| cache.write(entry))
            .filter(|w| *w == Write::Written)
            .count()
    }

    /// Starts the thread that rescans when [`Rescans::request`] asks, and every `poll` if given.
    /// It ends when every [`Rescans`] handle is dropped.
    ///
    /// # Errors
    /// If the thread cannot be started.
    ///
    /// The thread runs at background priority (`SCHED_IDLE`, else nice 19): a load is a burst of
    /// milliseconds of CPU that, at normal priority, preempts a busy inference worker or the I/O
    /// thread on a gateway with two cores and shows as tail latency; in the background it yields to
    /// them and still finishes, with what CPU the serving threads leave, under full load
    /// (`benches/lifecycle.rs` measures both).
    pub fn watch(self: &Arc<Self>, poll: Option<Duration>) -> std::io::Result<Rescans> {
        let (tx, rx) = mpsc::sync_channel::<Ask>(1);
        let repo = Arc::clone(self);
        std::thread::Builder::new()
            .name("inferd-models".into())
            .spawn(move || {
                crate::priority::background();
                let mut next_poll = poll.map(|every| Instant::now() + every);
                loop {
                    repo.write_cache_entries();
                    // Swapped-out versions waiting for their last request are looked at every
                    // 50 ms; otherwise every second (rescans made elsewhere, tests, also retire).
                    let idle = if repo.reap() > 0 {
                        REAP_EVERY
                    } else {
                        IDLE_TICK
                    };
                    let wait = next_poll.map_or(idle, |t| {
                        t.saturating_duration_since(Instant::now()).min(idle)
                    });
                    let reply = match rx.recv_timeout(wait) {
                        Ok(reply) => reply,
                        Err(RecvTimeoutError::Disconnected) => break,
                        Err(RecvTimeoutError::Timeout) => {
                            if next_poll.is_some_and(|t| Instant::now() >= t) {
                                None
                            } else {
                                continue;
                            }
                        }
                    };
                    next_poll = poll.map(|every| Instant::now() + every);
                    let result = repo.rescan().map_err(|e| e.to_string());
                    if let Err(e) = &result {
                        log::error!("rescanning the model repository: {e}");
                    }
                    if let Some(reply) = reply {
                        let _ = reply.send(result);
                    }
                }
            })?;
        Ok(Rescans { tx })
    }

    fn sync(&self, strict: bool) -> Result<Changes, LoadError> {
        let _one = self
            .rescanning
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let current = self.snapshot();
        let scanned: Vec<(Scanned, Result<ServingFile, String>)> = scan(&self.root)?
            .into_iter()
            .map(|m| {
                let serving = ServingFile::load(&m.dir);
                (m, serving)
            })
            .collect();
        let unpinned: BTreeSet<String> = scanned
            .iter()
            .filter(|(_, s)| s.as_ref().is_ok_and(|s| s.pinned == Some(false)))
            .map(|(m, _)| m.name.clone())
            .collect();
        let demand = {
            let mut book = self.book.lock().unwrap_or_else(PoisonError::into_inner);
            book.unpinned.clone_from(&unpinned);
            std::mem::take(&mut book.demand)
        };
        let mut room = Room {
            budget: self.settings.memory_budget,
            used: current.all().map(|m| m.runtime.weight_bytes()).sum(),
            evicted: BTreeSet::new(),
        };
        let mut changes = Changes::default();
        let mut models = BTreeMap::new();
        let mut defaults = BTreeMap::new();
        let mut on_demand = BTreeMap::new();
        let mut scheduling = BTreeMap::new();
        let mut present_keys = BTreeSet::new();
        for (model, serving) in scanned {
            let name = model.name.clone();
            for v in model.versions.keys() {
                present_keys.insert((name.clone(), *v));
            }
            let serving = match serving {
                Ok(s) => s,
                Err(message) => {
                    let error = LoadError::Manifest {
                        path: model
                            .dir
                            .join(super::policy::FILE_NAME)
                            .display()
                            .to_string(),
                        message,
                    };
                    if strict {
                        return Err(error);
                    }
                    // Keep serving what was served; the operator fixes the file.
                    log::error!("{error}; {name} keeps its current versions");
                    self.count_failure(&name);
                    changes.failed.push((name.clone(), 0, error.to_string()));
                    if let Some(kept) = current.scheduling_all().get(&name) {
                        scheduling.insert(name.clone(), Arc::clone(kept));
                    }
                    if let Some(kept) = current.versions(&name) {
                        models.insert(name, kept);
                    }
                    continue;
                }
            };
            if serving.scheduling != super::policy::Scheduling::default() {
                scheduling.insert(name.clone(), Arc::new(serving.scheduling.clone()));
            }
            let threads = serving.scheduling.threads.unwrap_or(1);
            let policy = serving
                .versions
                .clone()
                .unwrap_or_else(|| self.settings.policy.clone());
            let present: BTreeSet<u32> = model.versions.keys().copied().collect();
            let wanted = policy.select(&present);
            // A model loaded on demand stays out until a request asks for it, and leaves when the
            // budget needs its room.
            let evicted = room.evicted.contains(&name);
            let resident = current.versions(&name).is_some() && !evicted;
            if unpinned.contains(&name) && (evicted || (!resident && !demand.contains(&name))) {
                let mut refusal = None;
                for (&v, (_, fingerprint)) in &model.versions {
                    match self.entry(&name, v) {
                        Some(e)
                            if e.state == VersionState::Failed
                                && &e.fingerprint == fingerprint =>
                        {
                            refusal = Some(e.reason);
                        }
                        // An eviction stays the reason until the model is loaded again.
                        Some(e) if e.reason == EVICTED => {}
                        _ => self.record(
                            &name,
                            v,
                            fingerprint,
                            VersionState::Standby,
                            "loaded on demand (pinned = false): not resident until a request asks for it",
                        ),
                    }
                }
                on_demand.insert(name, refusal.unwrap_or_else(|| NOT_RESIDENT.to_owned()));
                continue;
            }
            let mut served = BTreeMap::new();
            for &v in &wanted {
                let (dir, fingerprint) = &model.versions[&v];
                let old = current.get(&name, Some(v)).ok().filter(|m| m.version == v);
                let known = self.entry(&name, v);
                let unchanged = known.as_ref().map(|e| &e.fingerprint) == Some(fingerprint);
                if unchanged {
                    if let Some(old) = &old {
                        served.insert(v, Arc::clone(old));
                        continue;
                    }
                    if let Some(e) = known.filter(|e| e.state == VersionState::Failed) {
                        // Failed with these very files: not retried until they change, except a
                        // refusal by the budget that a request asks again for (memory may have
                        // been freed since).
                        let retry = demand.contains(&name) && e.reason.contains(DOES_NOT_FIT);
                        if !retry {
                            continue;
                        }
                    }
                }
                self.record(&name, v, fingerprint, VersionState::Loading, "loading");
                // The file's size stands for the weights until they are measured.
                let estimate = std::fs::metadata(dir.join(MODEL_FILE)).map_or(0, |m| m.len());
                let loaded = room
                    .make(estimate, &name, &current, &unpinned, &mut models)
                    .and_then(|()| {
                        load_version(
                            dir,
                            &name,
                            v,
                            self.settings.warmup_runs,
                            threads,
                            self.settings.worker_nice,
                            self.cache.as_ref(),
                        )
                    })
                    .and_then(|(m, unwritten)| {
                        let m = Arc::new(m);
                        self.warm_workers(&m).map_err(|message| LoadError::Model {
                            path: dir.display().to_string(),
                            message: format!("warm-up on the inference workers failed: {message}"),
                        })?;
                        // Measured now: the file's size was only an estimate.
                        room.make(
                            m.runtime.weight_bytes(),
                            &name,
                            &current,
                            &unpinned,
                            &mut models,
                        )?;
                        room.used += m.runtime.weight_bytes();
                        Ok((m, unwritten))
                    });
                match loaded {
                    Ok((loaded, unwritten)) => {
                        // Only a version that serves gets an entry.
                        if let Some(entry) = unwritten {
                            self.unwritten
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .push(entry);
                        }
                        served.insert(v, loaded);
                        changes.loaded.push((name.clone(), v));
                    }
                    Err(error) => {
                        if strict {
                            return Err(error);
                        }
                        let message = error.to_string();
                        log::error!(
                            "{name} v{v} cannot be served, keeping what was serving: {message}"
                        );
                        self.record(&name, v, fingerprint, VersionState::Failed, &message);
                        self.count_failure(&name);
                        changes.failed.push((name.clone(), v, message));
                        if let Some(old) = old {
                            // The same version, with its previous files.
                            served.insert(v, old);
                        }
                    }
                }
            }
            // Versions that failed leave the policy short: keep serving previously served versions
            // (highest first) still present, so a failed upgrade never leaves a model unserved.
            let short = wanted.len().saturating_sub(served.len());
            if short > 0 {
                if let Some(previous) = current.versions(&name) {
                    for (v, old) in previous.into_iter().rev() {
                        if served.len() >= wanted.len() {
                            break;
                        }
                        if present.contains(&v) && !served.contains_key(&v) {
                            served.insert(v, old);
                        }
                    }
                }
            }
            for (&v, (_, fingerprint)) in &model.versions {
                // A failure with these very files stays visible (the model may be serving the
                // previous files of this version, or an older version, meanwhile).
                if self.entry(&name, v).is_some_and(|e| {
                    e.state == VersionState::Failed && &e.fingerprint == fingerprint
                }) {
                    continue;
                }
                let (state, reason) = if served.contains_key(&v) {
                    let why = if wanted.contains(&v) {
                        format!("selected by policy {policy}")
                    } else {
                        format!("kept: a version selected by policy {policy} failed")
                    };
                    (VersionState::Serving, why)
                } else {
                    (
                        VersionState::Standby,
                        format!("not selected by policy {policy}"),
                    )
                };
                self.record(&name, v, fingerprint, state, &reason);
            }
            if !served.is_empty() {
                if let Some(d) = serving.default_version {
                    defaults.insert(name.clone(), d);
                }
                models.insert(name, served);
            } else if unpinned.contains(&name) {
                let why = wanted
                    .first()
                    .and_then(|&v| self.entry(&name, v))
                    .map_or_else(|| NOT_RESIDENT.to_owned(), |e| e.reason);
                on_demand.insert(name, why);
            }
        }
        // Models evicted after the loop had passed them: out of this snapshot, back to on demand.
        for name in &room.evicted {
            models.remove(name);
            for (n, v) in present_keys.iter().filter(|(n, _)| n == name) {
                if let Some(e) = self.entry(n, *v) {
                    self.record(n, *v, &e.fingerprint, VersionState::Standby, EVICTED);
                }
            }
            on_demand.insert(name.clone(), NOT_RESIDENT.to_owned());
        }
        // Forget versions whose folders are gone.
        self.book
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .versions
            .retain(|k, _| present_keys.contains(k));
        for old in current.all() {
            let kept = models
                .get(&old.name)
                .and_then(|v: &BTreeMap<u32, Arc<ServedModel>>| v.get(&old.version))
                .is_some_and(|m| Arc::ptr_eq(m, old));
            let reloaded = changes.loaded.contains(&(old.name.clone(), old.version));
            if !kept && !reloaded {
                changes.unloaded.push((old.name.clone(), old.version));
            }
            if !kept {
                self.retiring
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(Arc::clone(old));
            }
        }
        // Models whose knobs changed while their versions stayed. A model with versions loaded or
        // unloaded is left out: it is named in the swap line below, and the swap publishes anyway.
        let moved =
            |name: &str| (changes.loaded.iter().chain(&changes.unloaded)).any(|(n, _)| n == name);
        let retuned: Vec<&str> = scheduling
            .iter()
            .filter(|(name, s)| current.scheduling_all().get(*name) != Some(*s))
            .map(|(name, _)| name.as_str())
            .chain(
                current
                    .scheduling_all()
                    .keys()
                    .filter(|name| !scheduling.contains_key(*name))
                    .map(String::as_str),
            )
            .filter(|name| !moved(name))
            .collect();
        if changes.swapped() || current.on_demand() != &on_demand || !retuned.is_empty() {
            if !strict && !retuned.is_empty() {
                log::info!(
                    "scheduling settings changed for [{}] (a new `threads` applies when a version \
                     next loads)",
                    retuned.join(", ")
                );
            }
            *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(
                Registry::from_parts(models, defaults, on_demand, scheduling),
            );
        }
        // A new snapshot that only carries new scheduling settings or on-demand reasons serves the
        // same versions: it is not a swap (not counted, not logged as one, no pages to lock).
        if changes.swapped() {
            self.book
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .swaps += 1;
            let names = |v: &[(String, u32)]| {
                v.iter()
                    .map(|(n, v)| format!("{n} v{v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            if !strict {
                log::info!(
                    "models swapped: now serving [{}]; unloading once drained [{}]",
                    names(&changes.loaded),
                    names(&changes.unloaded)
                );
                if self.settings.lock_memory {
                    if let Err(e) = lock_resident() {
                        log::warn!("{e}; the new versions are resident but not locked");
                    }
                }
            }
        }
        Ok(changes)
    }

    /// Frees the swapped-out versions no request holds any more; returns how many still wait.
    fn reap(&self) -> usize {
        let freed: Vec<Arc<ServedModel>> = {
            let mut retiring = self.retiring.lock().unwrap_or_else(PoisonError::into_inner);
            let (done, waiting) = std::mem::take(&mut *retiring)
                .into_iter()
                .partition(|m| Arc::strong_count(m) == 1);
            *retiring = waiting;
            done
        };
        for m in &freed {
            log::debug!(
                "freeing {} v{}: its last request is answered",
                m.name,
                m.version
            );
        }
        drop(freed);
        self.retiring
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn warm_workers(&self, model: &Arc<ServedModel>) -> Result<(), String> {
        let warm = self
            .worker_warm_up
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        warm.map_or(Ok(()), |w| w(model))
    }

    fn entry(&self, name: &str, version: u32) -> Option<Entry> {
        self.book
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .versions
            .get(&(name.to_owned(), version))
            .cloned()
    }

    fn record(
        &self,
        name: &str,
        version: u32,
        fingerprint: &Fingerprint,
        state: VersionState,
        reason: &str,
    ) {
        let mut book = self.book.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = book
            .versions
            .entry((name.to_owned(), version))
            .or_insert_with(|| Entry {
                fingerprint: fingerprint.clone(),
                state,
                reason: String::new(),
                since: SystemTime::now(),
            });
        if entry.state != state {
            entry.since = SystemTime::now();
        }
        entry.fingerprint = fingerprint.clone();
        entry.state = state;
        reason.clone_into(&mut entry.reason);
    }

    fn count_failure(&self, name: &str) {
        *self
            .book
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .failures
            .entry(name.to_owned())
            .or_default() += 1;
    }
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("root", &self.root)
            .field("settings", &self.settings)
            .field("current", &self.current)
            .finish_non_exhaustive()
    }
}

/// How often the watch thread looks for swapped-out versions to free while some wait.
const REAP_EVERY: Duration = Duration::from_millis(50);

/// How often it looks otherwise (for versions retired by a rescan made on another thread).
const IDLE_TICK: Duration = Duration::from_secs(1);

/// A rescan request, with where to send its result if someone waits for it.
type Ask = Option<mpsc::Sender<Result<Changes, String>>>;

/// The memory budget's accounting during one rescan.
struct Room {
    budget: Option<u64>,
    /// Weights resident now (every version of the current snapshot, until it is swapped out) plus
    /// those loaded during this rescan.
    used: u64,
    /// Models loaded on demand taken out to make room.
    evicted: BTreeSet<String>,
}

impl Room {
    /// Makes `needed` more bytes fit, evicting the least recently used models loaded on demand
    /// (other than `loading`); refuses if even that is not enough.
    fn make(
        &mut self,
        needed: u64,
        loading: &str,
        current: &Registry,
        unpinned: &BTreeSet<String>,
        models: &mut BTreeMap<String, BTreeMap<u32, Arc<ServedModel>>>,
    ) -> Result<(), LoadError> {
        let Some(budget) = self.budget else {
            return Ok(());
        };
        // Evictable: resident models loaded on demand, least recently used first (by each
        // model's most recent request).
        let mut candidates: Vec<(u64, String, u64)> = unpinned
            .iter()
            .filter(|n| n.as_str() != loading && !self.evicted.contains(*n))
            .filter_map(|n| {
                let versions = current.versions(n)?;
                let last = versions.values().map(|m| m.last_used()).max()?;
                let bytes: u64 = versions.values().map(|m| m.runtime.weight_bytes()).sum();
                Some((last, n.clone(), bytes))
            })
            .collect();
        candidates.sort();
        let evictable: u64 = candidates.iter().map(|c| c.2).sum();
        if self.used.saturating_sub(evictable) + needed > budget {
            // Nothing is evicted for a load that would not fit anyway.
            let mib = |b: u64| b as f64 / 1_048_576.0;
            return Err(LoadError::Layout(format!(
                "{loading} {DOES_NOT_FIT}: it needs about {:.1} MiB and {:.1} of the {:.1} MiB \
                 are held by pinned models and versions being swapped",
                mib(needed),
                mib(self.used.saturating_sub(evictable)),
                mib(budget)
            )));
        }
        let mut candidates = candidates.into_iter();
        while self.used + needed > budget {
            let Some((_, victim, bytes)) = candidates.next() else {
                break;
            };
            log::info!(
                "evicting {victim} (least recently used, loaded on demand) to make room for {loading}"
            );
            self.used = self.used.saturating_sub(bytes);
            models.remove(&victim);
            self.evicted.insert(victim);
        }
        Ok(())
    }
}

/// Asks the repository's watch thread for a rescan.
#[derive(Debug, Clone)]
pub struct Rescans {
    tx: SyncSender<Ask>,
}

impl Rescans {
    /// Queues a rescan; one already queued covers this request too.
    pub fn request(&self) {
        match self.tx.try_send(None) {
            Ok(()) | Err(TrySendError::Full(_)) => {}
            Err(TrySendError::Disconnected(_)) => {
                log::warn!("the model watch thread has stopped; rescan not done");
            }
        }
    }

    /// Rescans on the watch thread (at its priority) and waits for the result.
    ///
    /// # Errors
    /// The rescan's error, or the watch thread having stopped.
    pub fn rescan_and_wait(&self) -> Result<Changes, String> {
        let (reply, result) = mpsc::channel();
        self.tx
            .send(Some(reply))
            .map_err(|_| "the model watch thread has stopped".to_owned())?;
        result
            .recv()
            .map_err(|_| "the model watch thread has stopped".to_owned())?
    }
}

/// Locks every page now resident (the loaded models among them) into RAM: `mlockall(MCL_CURRENT)`.
/// Not `MCL_FUTURE`: under a memory-lock limit that would make later allocations fail, and a
/// request's buffers need no locking; after a swap it is called again for the new version's pages.
fn lock_resident() -> Result<(), LoadError> {
    rustix::mm::mlockall(rustix::mm::MlockAllFlags::CURRENT).map_err(|e| {
        LoadError::Layout(format!(
            "cannot lock the models into memory ({e}): give the service CAP_IPC_LOCK or raise \
             RLIMIT_MEMLOCK (LimitMEMLOCK= in the unit) above its resident size, or turn \
             lock_memory off"
        ))
    })?;
    let locked = crate::metrics::locked_bytes().unwrap_or(0);
    log::info!(
        "locked {:.1} MiB of resident memory into RAM",
        locked as f64 / 1_048_576.0
    );
    Ok(())
}

/// One model folder as found on disk.
struct Scanned {
    name: String,
    dir: PathBuf,
    versions: BTreeMap<u32, (PathBuf, Fingerprint)>,
}

fn scan(root: &Path) -> Result<Vec<Scanned>, LoadError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| LoadError::Io { path, source }
    };
    let mut found = Vec::new();
    for dir in sorted_dirs(root).map_err(io(root))? {
        let Some(name) = dir.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            continue;
        };
        if !is_model_name(&name) {
            if !name.starts_with('.') {
                log::warn!(
                    "skipping {}: model names use letters, digits, '.', '-' and '_'",
                    dir.display()
                );
            }
            continue;
        }
        let mut versions = BTreeMap::new();
        for vdir in sorted_dirs(&dir).map_err(io(&dir))? {
            // Folders that are not versions (a README folder, `.2-incoming`) are skipped.
            let Some(version) = vdir
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|v| v.parse::<u32>().ok())
            else {
                continue;
            };
            if !vdir.join(MODEL_FILE).is_file() {
                log::warn!("skipping {}: no {MODEL_FILE}", vdir.display());
                continue;
            }
            let fingerprint = fingerprint(&vdir).map_err(io(&vdir))?;
            versions.insert(version, (vdir, fingerprint));
        }
        if !versions.is_empty() {
            found.push(Scanned {
                name,
                dir,
                versions,
            });
        }
    }
    Ok(found)
}

/// The files a version's behaviour depends on: the model, its manifest, its warm-up sample.
fn fingerprint(vdir: &Path) -> std::io::Result<Fingerprint> {
    let mut files = vec![vdir.join(MODEL_FILE), vdir.join(super::manifest::FILE_NAME)];
    if let Ok(entries) = std::fs::read_dir(vdir.join("sample")) {
        let mut sample: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        sample.sort();
        files.extend(sample);
    }
    let mut seen = Vec::with_capacity(files.len());
    for path in files {
        match std::fs::metadata(&path) {
            Ok(meta) => seen.push((path, meta.len(), meta.modified().ok())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Fingerprint(seen))
}

fn sorted_dirs(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
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
