//! Prometheus metrics: what the server counts, and the text a scrape returns.
//!
//! Every series that a request touches on the hot path is resolved once per model version
//! ([`ModelMetrics`]) and per listener ([`ListenerMetrics`]), so recording is a few atomic adds, never a
//! label lookup. Values that are cheaper to read than to maintain (queue depths, connection counts,
//! refusals, process memory) are read when a scrape asks. Latency histograms use the fixed buckets of
//! [`inferd_proto::LATENCY_BUCKETS_US`], so that a fleet's histograms can be summed. The names and
//! buckets are listed in `doc/OPERATIONS.md`.
//!
//! The text format is Prometheus 0.0.4 (the `prometheus` crate's encoder), which `promtool check
//! metrics` and every Prometheus version read.

mod process;

pub use process::{locked_bytes, resident_bytes};

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use inferd_proto::{ErrorCode, LATENCY_BUCKETS_US};
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::model::{LoadFigures, ServedModel};

/// Bounds of the batch-size histogram (requests per model execution).
const BATCH_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// The two listeners a connection can come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// Plain TCP.
    Plain,
    /// TLS.
    Tls,
}

impl Listener {
    fn label(self) -> &'static str {
        match self {
            Listener::Plain => "plain",
            Listener::Tls => "tls",
        }
    }
}

/// Per-listener series.
#[derive(Debug, Clone)]
pub struct ListenerMetrics {
    /// Open connections.
    pub open: IntGauge,
    /// Connections accepted since start.
    pub accepted: IntCounter,
    /// Frame bytes read.
    pub received: IntCounter,
    /// Frame bytes written.
    pub sent: IntCounter,
}

/// One model version's series, resolved once.
#[derive(Debug)]
pub struct ModelMetrics {
    name: String,
    version: String,
    requests: IntCounterVec,
    ok: IntCounter,
    /// Errors of every code together (the exported series are per code), for `Stats`.
    errors: AtomicU64,
    latency: Histogram,
    queue_wait: Histogram,
    compute: Histogram,
    batch_size: Histogram,
    in_flight: IntGauge,
    abandoned: IntCounter,
    late: IntCounter,
}

impl ModelMetrics {
    /// Counts a request answered with an error before it reached a worker (or by a worker).
    pub fn refused(&self, code: ErrorCode) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.requests
            .with_label_values(&[&self.name, &self.version, code.name()])
            .inc();
    }

    /// Time from admission until a worker took the request.
    pub fn queue_wait(&self, waited: Duration) {
        self.queue_wait.observe(waited.as_secs_f64());
    }

    /// One model execution carrying `requests` requests.
    pub fn executed(&self, requests: usize, took: Duration) {
        self.compute.observe(took.as_secs_f64());
        self.batch_size.observe(requests as f64);
    }

    /// A queued request dropped because its client had gone.
    pub fn abandoned(&self) {
        self.abandoned.inc();
    }

    /// Answered requests: ok, errors, in flight, and the end-to-end latency histogram as cumulative
    /// counts per [`LATENCY_BUCKETS_US`] bound plus the total, and the sum in microseconds.
    pub fn snapshot(&self) -> ModelSnapshot {
        let mut latency: Vec<u64> = Vec::with_capacity(LATENCY_BUCKETS_US.len() + 1);
        let proto = prometheus::core::Collector::collect(&self.latency);
        if let Some(h) = proto
            .first()
            .and_then(|f| f.get_metric().first())
            .map(|m| m.get_histogram())
        {
            latency.extend(h.get_bucket().iter().map(|b| b.cumulative_count()));
        }
        latency.push(self.latency.get_sample_count());
        ModelSnapshot {
            ok: self.ok.get(),
            errors: self.errors.load(Ordering::Relaxed),
            in_flight: u64::try_from(self.in_flight.get()).unwrap_or(0),
            latency,
            latency_sum_us: (self.latency.get_sample_sum() * 1e6) as u64,
        }
    }
}

/// A [`ModelMetrics`] reading, for `Stats`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSnapshot {
    /// Requests answered with outputs.
    pub ok: u64,
    /// Requests answered with an error.
    pub errors: u64,
    /// Admitted, not yet answered.
    pub in_flight: u64,
    /// Cumulative latency bucket counts, then the total.
    pub latency: Vec<u64>,
    /// Sum of latencies, microseconds.
    pub latency_sum_us: u64,
}

/// An admitted inference request, from admission until its answer is written (or dropped). Holding it
/// keeps the model's in-flight gauge up; [`Tracked::answered`] records the outcome and latency.
#[derive(Debug)]
pub struct Tracked {
    metrics: Arc<ModelMetrics>,
    admitted: Instant,
    deadline: Instant,
}

impl Tracked {
    /// Starts tracking a request admitted at `now`, due at `deadline`.
    pub fn admit(metrics: Arc<ModelMetrics>, now: Instant, deadline: Instant) -> Tracked {
        metrics.in_flight.inc();
        Tracked {
            metrics,
            admitted: now,
            deadline,
        }
    }

    /// When the request was admitted.
    pub fn admitted(&self) -> Instant {
        self.admitted
    }

    /// The model's series.
    pub fn metrics(&self) -> &ModelMetrics {
        &self.metrics
    }

    /// The answer was written: `None` for outputs, else the error code.
    pub fn answered(self, error: Option<ErrorCode>) {
        let m = &self.metrics;
        let now = Instant::now();
        m.latency
            .observe(now.saturating_duration_since(self.admitted).as_secs_f64());
        match error {
            None => {
                m.ok.inc();
                if now > self.deadline {
                    m.late.inc();
                }
            }
            Some(code) => m.refused(code),
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.metrics.in_flight.dec();
    }
}

/// Values read at scrape time, supplied by the server.
#[derive(Debug, Default)]
pub struct ScrapeInputs {
    /// Requests waiting per model version.
    pub queued: Vec<(String, u32, usize)>,
    /// Refusals by cause.
    pub refused: Vec<(&'static str, u64)>,
    /// Ready to serve.
    pub ready: bool,
    /// Shutdown has begun.
    pub draining: bool,
    /// Every served version and what loading it cost.
    pub served: Vec<(String, u32, LoadFigures)>,
    /// Failed model loads since start, by model.
    pub load_failures: Vec<(String, u64)>,
    /// Snapshots of the served set swapped in since start.
    pub swaps: u64,
    /// What the prepared-model cache did since start (empty without a cache).
    pub cache: crate::model::cache::Counts,
}

/// Every family the server exports, in one registry per server.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    queue_wait: HistogramVec,
    compute: HistogramVec,
    batch_size: HistogramVec,
    in_flight: IntGaugeVec,
    abandoned: IntCounterVec,
    late: IntCounterVec,
    queue_depth: IntGaugeVec,
    load_seconds: GaugeVec,
    warmup_seconds: GaugeVec,
    resident: IntGaugeVec,
    plain: ListenerMetrics,
    tls: ListenerMetrics,
    refused: IntCounterVec,
    ready: IntGauge,
    draining: IntGauge,
    process: process::ProcessMetrics,
    /// Series by model version identity, read-locked on the hot path. Weak: a swapped-out version
    /// must be freed when its last request is answered, not kept alive by its metrics.
    known: RwLock<Vec<(Weak<ServedModel>, Arc<ModelMetrics>)>>,
    load_failures: IntCounterVec,
    swaps: IntCounter,
    cache_lookups: IntCounterVec,
    cache_writes: IntCounterVec,
    /// name → version → series (nested so that a lookup borrows the name instead of allocating).
    models: Mutex<HashMap<String, HashMap<u32, Arc<ModelMetrics>>>>,
    /// Serialises scrapes: they set gauges and catch counters up.
    scrape: Mutex<()>,
}

/// A family could not be registered: a programming error (duplicate or invalid name), reported at
/// start-up.
pub type MetricsError = prometheus::Error;

fn seconds_buckets() -> Vec<f64> {
    LATENCY_BUCKETS_US
        .iter()
        .map(|&us| f64::from(us) / 1e6)
        .collect()
}

impl Metrics {
    /// Registers every family.
    ///
    /// # Errors
    /// Only for an invalid or duplicate metric name, which tests rule out.
    pub fn new() -> Result<Metrics, MetricsError> {
        let registry = Registry::new();
        let model = &["model", "version"];
        let listener = &["listener"];
        macro_rules! reg {
            ($metric:expr) => {{
                let m = $metric;
                registry.register(Box::new(m.clone()))?;
                m
            }};
        }
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), model)
        };
        let requests = reg!(IntCounterVec::new(
            Opts::new(
                "inferd_requests_total",
                "Inference requests answered, by model version and outcome (ok or the error code name)."
            ),
            &["model", "version", "outcome"],
        )?);
        let latency = reg!(histogram(
            "inferd_request_duration_seconds",
            "Admission to answer written, per answered inference request.",
            seconds_buckets()
        )?);
        let queue_wait = reg!(histogram(
            "inferd_queue_wait_seconds",
            "Admission until a worker took the request.",
            seconds_buckets()
        )?);
        let compute = reg!(histogram(
            "inferd_compute_duration_seconds",
            "One model execution (a batch counts once).",
            seconds_buckets()
        )?);
        let batch_size = reg!(histogram(
            "inferd_batch_size",
            "Requests per model execution.",
            BATCH_BUCKETS.to_vec()
        )?);
        let in_flight = reg!(IntGaugeVec::new(
            Opts::new(
                "inferd_in_flight_requests",
                "Inference requests admitted and not yet answered (queued or running)."
            ),
            model
        )?);
        let abandoned = reg!(IntCounterVec::new(
            Opts::new(
                "inferd_requests_abandoned_total",
                "Queued requests dropped uncomputed because their client had gone."
            ),
            model
        )?);
        let late = reg!(IntCounterVec::new(
            Opts::new(
                "inferd_answers_after_deadline_total",
                "Answers with outputs written after their request's deadline: started in time by the \
                 model's measured answer time, but its run or the answer's way out took longer."
            ),
            model
        )?);
        let queue_depth = reg!(IntGaugeVec::new(
            Opts::new("inferd_queue_depth", "Requests waiting for a worker."),
            model
        )?);
        let load_seconds = reg!(GaugeVec::new(
            Opts::new(
                "inferd_model_load_duration_seconds",
                "Time to load, analyse and optimise the model version."
            ),
            model
        )?);
        let warmup_seconds = reg!(GaugeVec::new(
            Opts::new(
                "inferd_model_warmup_duration_seconds",
                "Time of the first warm-up run (0: warm-up off)."
            ),
            model
        )?);
        let resident = reg!(IntGaugeVec::new(
            Opts::new(
                "inferd_model_resident_bytes",
                "Growth of the process's resident memory while the version loaded and warmed up."
            ),
            model
        )?);
        let open = reg!(IntGaugeVec::new(
            Opts::new("inferd_connections", "Open client connections."),
            listener
        )?);
        let accepted = reg!(IntCounterVec::new(
            Opts::new(
                "inferd_connections_accepted_total",
                "Client connections accepted."
            ),
            listener
        )?);
        let received = reg!(IntCounterVec::new(
            Opts::new(
                "inferd_received_bytes_total",
                "Protocol bytes read from clients (frames, headers included)."
            ),
            listener
        )?);
        let sent = reg!(IntCounterVec::new(
            Opts::new(
                "inferd_sent_bytes_total",
                "Protocol bytes written to clients."
            ),
            listener
        )?);
        let for_listener = |l: Listener| ListenerMetrics {
            open: open.with_label_values(&[l.label()]),
            accepted: accepted.with_label_values(&[l.label()]),
            received: received.with_label_values(&[l.label()]),
            sent: sent.with_label_values(&[l.label()]),
        };
        let (plain, tls) = (for_listener(Listener::Plain), for_listener(Listener::Tls));
        let refused = reg!(IntCounterVec::new(
            Opts::new(
                "inferd_refused_total",
                "Connections and requests refused for who they are or for the connection cap, by cause."
            ),
            &["cause"]
        )?);
        let ready = reg!(IntGauge::new(
            "inferd_ready",
            "1 when every pinned model is warm and the server is not draining."
        )?);
        let draining = reg!(IntGauge::new(
            "inferd_draining",
            "1 once shutdown has begun."
        )?);
        let load_failures = reg!(IntCounterVec::new(
            Opts::new(
                "inferd_model_load_failures_total",
                "Model versions that failed to load or warm up (the previous version kept serving)."
            ),
            &["model"]
        )?);
        let swaps = reg!(IntCounter::new(
            "inferd_model_swaps_total",
            "Changes of the served set of model versions (loads, swaps, unloads) since start."
        )?);
        let cache_lookups = reg!(IntCounterVec::new(
            Opts::new(
                "inferd_model_cache_lookups_total",
                "Model version loads by what the prepared-model cache held: hit, miss, invalid (a \
                 damaged entry, deleted and rewritten)."
            ),
            &["outcome"]
        )?);
        let cache_writes = reg!(IntCounterVec::new(
            Opts::new(
                "inferd_model_cache_writes_total",
                "Prepared-model cache entries by result: written, failed, unsupported (tract cannot \
                 serialise the graph)."
            ),
            &["result"]
        )?);
        let process = process::ProcessMetrics::register(&registry)?;
        Ok(Metrics {
            registry,
            requests,
            latency,
            queue_wait,
            compute,
            batch_size,
            in_flight,
            abandoned,
            late,
            queue_depth,
            load_seconds,
            warmup_seconds,
            resident,
            plain,
            tls,
            refused,
            ready,
            draining,
            process,
            known: RwLock::new(Vec::new()),
            load_failures,
            swaps,
            cache_lookups,
            cache_writes,
            models: Mutex::new(HashMap::new()),
            scrape: Mutex::new(()),
        })
    }

    /// A listener's series.
    pub fn listener(&self, l: Listener) -> &ListenerMetrics {
        match l {
            Listener::Plain => &self.plain,
            Listener::Tls => &self.tls,
        }
    }

    /// Creates the series of these model versions now, so that a first scrape lists them all.
    pub fn pin<'a>(&self, models: impl Iterator<Item = &'a Arc<ServedModel>>) {
        for m in models {
            self.model(m);
        }
    }

    /// A model version's series, created on first use.
    pub fn model(&self, m: &Arc<ServedModel>) -> Arc<ModelMetrics> {
        let known = self.known.read().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, series)) = known.iter().find(|(k, _)| k.as_ptr() == Arc::as_ptr(m)) {
            return Arc::clone(series);
        }
        drop(known);
        // A new version (or a reload of one): its series are found by name, so counters continue
        // across a reload of the same version number.
        let series = {
            let mut models = self.models.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(found) = models.get(m.name.as_str()).and_then(|v| v.get(&m.version)) {
                Arc::clone(found)
            } else {
                let created = Arc::new(self.resolve(&m.name, &m.version.to_string()));
                models
                    .entry(m.name.clone())
                    .or_default()
                    .insert(m.version, Arc::clone(&created));
                created
            }
        };
        let mut known = self.known.write().unwrap_or_else(PoisonError::into_inner);
        known.retain(|(k, _)| k.strong_count() > 0);
        if !known.iter().any(|(k, _)| k.as_ptr() == Arc::as_ptr(m)) {
            known.push((Arc::downgrade(m), Arc::clone(&series)));
        }
        series
    }

    fn resolve(&self, name: &str, version: &str) -> ModelMetrics {
        let labels = [name, version];
        ModelMetrics {
            name: name.to_owned(),
            version: version.to_owned(),
            requests: self.requests.clone(),
            ok: self.requests.with_label_values(&[name, version, "ok"]),
            errors: AtomicU64::new(0),
            latency: self.latency.with_label_values(&labels),
            queue_wait: self.queue_wait.with_label_values(&labels),
            compute: self.compute.with_label_values(&labels),
            batch_size: self.batch_size.with_label_values(&labels),
            in_flight: self.in_flight.with_label_values(&labels),
            abandoned: self.abandoned.with_label_values(&labels),
            late: self.late.with_label_values(&labels),
        }
    }

    /// Counts an inference request refused before any model version was resolved (unknown model or
    /// version, not authorised, shutting down): one bounded series per code, with empty labels, so a
    /// peer cannot create series by inventing model names.
    pub fn refused_unresolved(&self, code: ErrorCode) {
        self.requests
            .with_label_values(&["", "", code.name()])
            .inc();
    }

    /// The Prometheus text for a scrape.
    pub fn render(&self, inputs: &ScrapeInputs) -> String {
        let _serial = self.scrape.lock().unwrap_or_else(PoisonError::into_inner);
        self.queue_depth.reset();
        for (name, version, depth) in &inputs.queued {
            self.queue_depth
                .with_label_values(&[name, &version.to_string()])
                .set(i64::try_from(*depth).unwrap_or(i64::MAX));
        }
        // Counters kept elsewhere (atomics the tests also read) are caught up here.
        for (cause, total) in &inputs.refused {
            let c = self.refused.with_label_values(&[cause]);
            c.inc_by(total.saturating_sub(c.get()));
        }
        self.load_seconds.reset();
        self.warmup_seconds.reset();
        self.resident.reset();
        for (name, version, figures) in &inputs.served {
            let version = version.to_string();
            let labels = [name.as_str(), version.as_str()];
            self.load_seconds
                .with_label_values(&labels)
                .set(figures.load.as_secs_f64());
            self.warmup_seconds
                .with_label_values(&labels)
                .set(figures.warmup.map_or(0.0, |d| d.as_secs_f64()));
            self.resident
                .with_label_values(&labels)
                .set(i64::try_from(figures.resident_bytes).unwrap_or(i64::MAX));
        }
        for (model, total) in &inputs.load_failures {
            let c = self.load_failures.with_label_values(&[model]);
            c.inc_by(total.saturating_sub(c.get()));
        }
        self.swaps
            .inc_by(inputs.swaps.saturating_sub(self.swaps.get()));
        for (family, counts) in [
            (&self.cache_lookups, &inputs.cache.lookups),
            (&self.cache_writes, &inputs.cache.writes),
        ] {
            for (label, total) in counts {
                let c = family.with_label_values(&[label]);
                c.inc_by(total.saturating_sub(c.get()));
            }
        }
        self.ready.set(i64::from(inputs.ready));
        self.draining.set(i64::from(inputs.draining));
        self.process.update();
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            log::warn!("encoding metrics: {e}");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
