//! Per-model queues, dynamic batching, and the dedicated inference worker threads.
//!
//! Connections validate a request, then [`Scheduler::submit`] it. The queues are bounded (all models
//! together): a full scheduler refuses at once with `OVERLOADED`, never waits, so overload shows up as
//! a fast, explicit answer rather than as latency. When a worker thread is free it takes the oldest
//! request, and, for a model that batches (the batch symbol on one axis of every input and output,
//! `BatchAxes`), every queued request of that model with the same shape, up to `max_batch` rows,
//! stacks them, runs the model once and splits the outputs back (`policy`, `batch`). A batch is
//! never waited for: batches form only from requests that queued while the workers were busy.
//! Requests whose client has gone or that could no longer finish before their deadline (at the
//! model's measured run time) are taken out without being computed. tract never runs on an
//! executor thread.
//!
//! Per model (its `serving.toml`, [`Scheduling`]): at most `workers` workers run it at once, at most
//! `max_in_flight` of its requests are queued or running (one more is refused `OVERLOADED` with a
//! retry-after hint from the queue ahead and the model's measured service time, [`ServiceTime`]),
//! and with `max_delay` a free worker may hold a partial batch open while other workers are busy
//! with the model ([`policy::hold_until`]).
//!
//! A model version is also run once on every worker before it takes traffic ([`Warmer`]): tract keeps
//! matrix-multiply scratch space per thread, and a worker's first run of a model pays for it.

pub mod batch;
pub mod policy;
mod service;
mod slice;

pub use service::{retry_after, ServiceTime};

use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_channel::Sender;
use inferd_proto::ErrorCode;

use crate::error::RequestError;
use crate::metrics::Tracked;
use crate::model::policy::Scheduling;
use crate::model::ServedModel;
use crate::tensor::HostTensor;

/// What a job answers: the outputs, or why there are none.
pub type JobResult = Result<Vec<HostTensor>, RequestError>;

/// A finished job, sent back to its connection.
#[derive(Debug)]
pub struct Completion {
    /// The request id on its connection.
    pub id: u32,
    /// The model version that ran (or was to run).
    pub model: Arc<ServedModel>,
    /// Outputs or error.
    pub result: JobResult,
    /// The request's metrics, recorded when the answer is written.
    pub tracked: Option<Tracked>,
}

/// One inference to run.
#[derive(Debug)]
pub struct Job {
    /// The request id on its connection, echoed in the [`Completion`].
    pub id: u32,
    /// The model version to run.
    pub model: Arc<ServedModel>,
    /// Validated inputs, in the model's input order.
    pub inputs: Vec<HostTensor>,
    /// After this instant the result is useless and the job is not run.
    pub deadline: Instant,
    /// The connection's completion channel; closed means the client has gone. It has room for every
    /// request the connection may have in flight, so a worker never waits on it.
    pub reply: Sender<Completion>,
    /// Set when the client cancels the request.
    pub cancel: Arc<AtomicBool>,
    /// The request's metrics (`None` when metrics are off).
    pub tracked: Option<Tracked>,
    /// The model's scheduling knobs when the request was admitted.
    pub scheduling: Arc<Scheduling>,
}

impl Job {
    /// Worth computing: a run of `run_time` started `now` ends before the deadline, the client is
    /// still there, and it has not cancelled.
    fn live(&self, now: Instant, run_time: Option<Duration>) -> bool {
        policy::worth_starting(now, self.deadline, run_time)
            && !self.reply.is_closed()
            && !self.cancel.load(Ordering::Acquire)
    }

    fn answer(self, result: JobResult) {
        let Job {
            id,
            model,
            reply,
            tracked,
            ..
        } = self;
        // The receiver may have gone meanwhile; nothing to do then.
        let _ = reply.try_send(Completion {
            id,
            model,
            result,
            tracked,
        });
    }
}

/// Counts since start, for tests and operators.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    /// Model executions (a batch counts once).
    pub executions: u64,
    /// Requests computed (a batch of 8 counts 8).
    pub computed: u64,
    /// Executions that carried more than one request.
    pub batches: u64,
    /// Requests answered `DEADLINE_EXCEEDED` without being computed.
    pub expired: u64,
    /// Requests dropped because their client had gone.
    pub abandoned: u64,
    /// Requests cancelled by their client before they started.
    pub cancelled: u64,
}

#[derive(Debug, Default)]
struct Counters {
    executions: AtomicU64,
    computed: AtomicU64,
    batches: AtomicU64,
    expired: AtomicU64,
    abandoned: AtomicU64,
    cancelled: AtomicU64,
}

/// A queued job with what the policy needs, computed once at submission.
#[derive(Debug)]
struct Queued {
    seq: u64,
    at: Instant,
    rows: u64,
    key: Vec<u64>,
    job: Job,
}

#[derive(Debug)]
struct ModelQueue {
    model: Arc<ServedModel>,
    jobs: VecDeque<Queued>,
}

/// A warm-up run for one worker.
#[derive(Debug)]
struct Warm {
    model: Arc<ServedModel>,
    done: mpsc::Sender<Result<(), String>>,
}

#[derive(Debug, Default)]
struct State {
    queues: Vec<ModelQueue>,
    /// Per worker: warm-up runs it must do before taking queued work.
    warm: Vec<VecDeque<Warm>>,
    total: usize,
    next_seq: u64,
    closed: bool,
    /// Workers blocked on `ready`. Waking none costs nothing, but `Condvar::notify_one` makes a
    /// system call even when nobody waits: under load, when every worker is busy, that was two
    /// futex calls per request (one by the I/O thread admitting it, one by the worker after it).
    sleepers: usize,
    /// Per model name (all versions): requests queued or running, and executions running.
    load: HashMap<String, ModelLoad>,
    /// Per worker: when its running execution should end, at its model's measured run time.
    ends: Vec<Option<Instant>>,
}

#[derive(Debug, Default, Clone, Copy)]
struct ModelLoad {
    in_flight: usize,
    running: usize,
}

impl State {
    /// A model's load now.
    fn load(&self, name: &str) -> ModelLoad {
        self.load.get(name).copied().unwrap_or_default()
    }

    /// How long a request admitted `now` should wait for a worker: every queued request at its
    /// model's measured cost per request (batched models' amortised cost), taken by whichever
    /// worker is free first, each after what its running execution has left of its measured run
    /// time ([`service::queue_wait`]). An estimate: a model limited to fewer workers than the
    /// daemon has may wait longer, which the worker's own check when it takes the request catches
    /// ([`policy::worth_starting`]).
    fn wait_ahead(&self, now: Instant) -> Duration {
        let queued = self.queues.iter().fold(Duration::ZERO, |sum, q| {
            let per = q.model.service.per_request().unwrap_or_default();
            let n = u32::try_from(q.jobs.len()).unwrap_or(u32::MAX);
            sum.saturating_add(per.saturating_mul(n))
        });
        let mut busy: Vec<Duration> = self
            .ends
            .iter()
            .map(|end| end.map_or(Duration::ZERO, |e| e.saturating_duration_since(now)))
            .collect();
        service::queue_wait(queued, &mut busy)
    }

    /// Changes a model's load. Entries stay once made: there are as many as model names served.
    fn adjust(&mut self, name: &str, change: impl FnOnce(&mut ModelLoad)) {
        match self.load.get_mut(name) {
            Some(load) => change(load),
            None => {
                let mut load = ModelLoad::default();
                change(&mut load);
                self.load.insert(name.to_owned(), load);
            }
        }
    }
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    ready: Condvar,
    capacity: usize,
    max_batch: u64,
    /// See [`Scheduler::start`].
    yield_every: Option<Duration>,
    counters: Counters,
    /// Per worker: when its current execution started, as nanoseconds since `epoch` plus one; 0 while
    /// idle. The heartbeat the systemd watchdog reads (`longest_busy`).
    busy_since: Vec<AtomicU64>,
    epoch: Instant,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent (pushes and removals only).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What a request's deadline must leave when it is started: the model's answer time
    /// ([`ServiceTime::answer_time`]) plus one worker time slice. A deadline counts from the
    /// frame's receipt, while the client's clock started when it sent; an I/O thread that shares
    /// its CPU with a worker may leave a frame unread until the worker yields, up to a slice
    /// (measured on ppocr-cls under overload, I/O at `SCHED_BATCH`: 8 answers late on the client's
    /// clock in seven rounds without this margin, by at most 2 ms of a 50 ms deadline).
    fn answer_time(&self, model: &ServedModel) -> Option<Duration> {
        let slice = self.yield_every.unwrap_or_default();
        model.service.answer_time().map(|t| t.saturating_add(slice))
    }
}

/// The queues and their worker threads.
#[derive(Debug)]
pub struct Scheduler {
    shared: Arc<Shared>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl Scheduler {
    /// Starts `workers` threads, `nice` steps below the process ([`crate::priority`]), behind queues
    /// holding at most `capacity` jobs in all, batching up to `max_batch` rows (1: no batching). A
    /// worker that has run for `yield_every` without blocking yields the CPU once: before its next
    /// job when work is queued, and between two operators of a long execution ([`slice`]). That
    /// bounds what an admission or refusal waits for an I/O thread sharing the CPU (yielding after
    /// every execution made refusals fast but cost 30–40 % of a fast model's throughput).
    ///
    /// # Errors
    /// If a thread cannot be spawned.
    pub fn start(
        workers: usize,
        capacity: usize,
        max_batch: u64,
        nice: i32,
        yield_every: Option<Duration>,
    ) -> std::io::Result<Scheduler> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                warm: (0..workers.max(1)).map(|_| VecDeque::new()).collect(),
                ends: vec![None; workers.max(1)],
                ..State::default()
            }),
            ready: Condvar::new(),
            capacity: capacity.max(1),
            max_batch: max_batch.max(1),
            yield_every,
            counters: Counters::default(),
            busy_since: (0..workers.max(1)).map(|_| AtomicU64::new(0)).collect(),
            epoch: Instant::now(),
        });
        let mut handles = Vec::with_capacity(workers);
        for i in 0..workers.max(1) {
            let shared = Arc::clone(&shared);
            handles.push(crate::priority::spawn_inference(
                format!("inferd-worker-{i}"),
                nice,
                move || work(&shared, i),
            )?);
        }
        Ok(Scheduler {
            shared,
            workers: Mutex::new(handles),
        })
    }

    /// Queues a job, or refuses it at once.
    ///
    /// # Errors
    /// `OVERLOADED` (with a retry-after hint) when the queues are full, the model has its
    /// `max_in_flight` requests, or the work queued ahead would not be done in time for the job to
    /// finish before its deadline; `DEADLINE_EXCEEDED` when even an idle worker could not finish it
    /// in time; `SHUTTING_DOWN` once [`Scheduler::shutdown`] has begun.
    pub fn submit(&self, job: Job) -> Result<(), RequestError> {
        let (rows, key) = batch_shape(&job);
        let wake = {
            let mut st = self.shared.lock();
            if st.closed {
                return Err(RequestError::new(
                    ErrorCode::SHUTTING_DOWN,
                    "the server is shutting down",
                ));
            }
            let workers = self.shared.busy_since.len();
            let per_request = job.model.service.per_request();
            if st.total >= self.shared.capacity {
                return Err(RequestError::new(
                    ErrorCode::OVERLOADED,
                    format!(
                        "the inference queues are full ({} requests waiting)",
                        st.total
                    ),
                )
                .retry_after(retry_after(st.total, per_request, workers)));
            }
            let name = job.model.name.as_str();
            let load = st.load(name);
            if let Some(limit) = job.scheduling.max_in_flight {
                if load.in_flight >= limit {
                    let runs = job.scheduling.workers.unwrap_or(workers).min(workers);
                    // Once a slot frees, the requests ahead of this one that are still queued
                    // must be worked off too; running ones free their slot as they finish.
                    return Err(RequestError::new(
                        ErrorCode::OVERLOADED,
                        format!("model {name:?} has its max_in_flight = {limit} requests queued or running"),
                    )
                    .retry_after(retry_after(load.in_flight, per_request, runs)));
                }
            }
            // Refused now, while the client can still go elsewhere, rather than queued to be
            // answered `DEADLINE_EXCEEDED` once the deadline is near: under overload that is the
            // difference between a refusal in microseconds and one after the whole deadline.
            let now = Instant::now();
            // What the worker will check before starting it (see `plan`).
            let run = self.shared.answer_time(&job.model);
            if !policy::worth_starting(now, job.deadline, run) {
                self.shared.counters.expired.fetch_add(1, Ordering::Relaxed);
                let why = match run {
                    Some(run) if now < job.deadline => format!(
                        "the deadline is shorter than the time model {name:?} needs to answer ({} µs: its measured run time, its spread, one run more for the answer to be sent and one worker time slice); it was not queued",
                        run.as_micros()
                    ),
                    _ => "the deadline had passed when the request was admitted".to_owned(),
                };
                return Err(RequestError::new(ErrorCode::DEADLINE_EXCEEDED, why));
            }
            let wait = st.wait_ahead(now);
            // Behind other work, one more run of slack: the estimate is a sum of averages, and
            // run times vary by tens of percent (measured under overload: ~35 % fewer late
            // answers and expiries with it, the same throughput; doc/BENCHMARKS.md, "Overload").
            let wait = if wait.is_zero() {
                wait
            } else {
                wait.saturating_add(job.model.service.execution().unwrap_or_default())
            };
            if !policy::worth_starting(
                now.checked_add(wait).unwrap_or(job.deadline),
                job.deadline,
                run,
            ) {
                return Err(RequestError::new(
                    ErrorCode::OVERLOADED,
                    format!(
                        "the work queued ahead (about {} ms) would not be done in time for this request to finish before its deadline",
                        wait.as_millis()
                    ),
                )
                .retry_after(service::clamp_retry_after(wait)));
            }
            st.adjust(name, |l| l.in_flight += 1);
            let seq = st.next_seq;
            st.next_seq += 1;
            st.total += 1;
            let queued = Queued {
                seq,
                at: Instant::now(),
                rows,
                key,
                job,
            };
            match st
                .queues
                .iter_mut()
                .find(|q| Arc::ptr_eq(&q.model, &queued.job.model))
            {
                Some(q) => q.jobs.push_back(queued),
                None => {
                    let model = Arc::clone(&queued.job.model);
                    st.queues.push(ModelQueue {
                        model,
                        jobs: VecDeque::from([queued]),
                    });
                }
            }
            st.sleepers > 0
        };
        if wake {
            self.shared.ready.notify_one();
        }
        Ok(())
    }

    /// Runs `model` once on every worker on its warm-up inputs (ahead of queued work), and waits.
    ///
    /// # Errors
    /// The first failure (a run error or panic), or the scheduler stopping meanwhile.
    pub fn warm(&self, model: &Arc<ServedModel>) -> Result<(), String> {
        warm_on(&self.shared, model)
    }

    /// A handle that warms versions on these workers for as long as they run, for the repository
    /// to call before it swaps a version in.
    pub fn warmer(&self) -> Warmer {
        Warmer {
            shared: Arc::downgrade(&self.shared),
        }
    }

    /// Jobs waiting for a worker.
    pub fn queued(&self) -> usize {
        self.shared.lock().total
    }

    /// How long the worker that has been busy longest has been on its current batch; `None` when all
    /// are idle. A worker stuck in a model (a hang, not a slow request) shows here, and the systemd
    /// watchdog stops being fed.
    pub fn longest_busy(&self) -> Option<std::time::Duration> {
        let now = self.shared.epoch.elapsed();
        self.shared
            .busy_since
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .filter(|&b| b != 0)
            .map(|b| now.saturating_sub(std::time::Duration::from_nanos(b - 1)))
            .max()
    }

    /// Jobs waiting for a worker, per model version with a queue now (those without wait for none).
    pub fn depths(&self) -> Vec<(Arc<ServedModel>, usize)> {
        self.shared
            .lock()
            .queues
            .iter()
            .map(|q| (Arc::clone(&q.model), q.jobs.len()))
            .collect()
    }

    /// Counts since start.
    pub fn stats(&self) -> SchedulerStats {
        let c = &self.shared.counters;
        SchedulerStats {
            executions: c.executions.load(Ordering::Relaxed),
            computed: c.computed.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            expired: c.expired.load(Ordering::Relaxed),
            abandoned: c.abandoned.load(Ordering::Relaxed),
            cancelled: c.cancelled.load(Ordering::Relaxed),
        }
    }

    /// Cancels the queued job carrying `flag`: it is taken out of its queue at once and answered
    /// `CANCELLED`. A job already running (or done) keeps its result; the flag is set either way.
    pub fn cancel(&self, flag: &Arc<AtomicBool>) {
        flag.store(true, Ordering::Release);
        let removed = {
            let mut st = self.shared.lock();
            let found = st.queues.iter_mut().find_map(|q| {
                let ix = q
                    .jobs
                    .iter()
                    .position(|j| Arc::ptr_eq(&j.job.cancel, flag))?;
                q.jobs.remove(ix)
            });
            if let Some(queued) = &found {
                st.total -= 1;
                st.adjust(&queued.job.model.name, |l| {
                    l.in_flight = l.in_flight.saturating_sub(1);
                });
                st.queues.retain(|q| !q.jobs.is_empty());
            }
            found
        };
        if let Some(queued) = removed {
            self.shared
                .counters
                .cancelled
                .fetch_add(1, Ordering::Relaxed);
            queued.job.answer(Err(cancelled()));
        }
    }

    /// Refuses new jobs, lets the workers finish what is queued, and joins them.
    pub fn shutdown(&self) {
        self.shared.lock().closed = true;
        self.shared.ready.notify_all();
        let handles =
            std::mem::take(&mut *self.workers.lock().unwrap_or_else(PoisonError::into_inner));
        for h in handles {
            if h.join().is_err() {
                log::error!("an inference worker thread panicked outside a job");
            }
        }
    }
}

/// Warms model versions on a scheduler's workers; does nothing once the scheduler is gone.
#[derive(Debug, Clone)]
pub struct Warmer {
    shared: Weak<Shared>,
}

impl Warmer {
    /// As [`Scheduler::warm`]; `Ok` when the scheduler has stopped (nothing left to warm).
    ///
    /// # Errors
    /// As [`Scheduler::warm`].
    pub fn warm(&self, model: &Arc<ServedModel>) -> Result<(), String> {
        match self.shared.upgrade() {
            Some(shared) => warm_on(&shared, model),
            None => Ok(()),
        }
    }
}

fn warm_on(shared: &Shared, model: &Arc<ServedModel>) -> Result<(), String> {
    if model.warmup_inputs.is_empty() {
        return Ok(());
    }
    let (tx, rx) = mpsc::channel();
    let workers = {
        let mut st = shared.lock();
        if st.closed {
            return Err("the inference workers are stopping".into());
        }
        for queue in &mut st.warm {
            queue.push_back(Warm {
                model: Arc::clone(model),
                done: tx.clone(),
            });
        }
        st.warm.len()
    };
    drop(tx);
    shared.ready.notify_all();
    for _ in 0..workers {
        rx.recv()
            .map_err(|_| "the inference workers stopped".to_owned())??;
    }
    Ok(())
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Rows along the batch axis and the shape key (every input's shape without its batch axis), for a
/// model that batches; `(1, [])` otherwise.
fn batch_shape(job: &Job) -> (u64, Vec<u64>) {
    let Some(axes) = &job.model.batch else {
        return (1, Vec::new());
    };
    let mut key = Vec::new();
    for (t, &axis) in job.inputs.iter().zip(&axes.inputs) {
        key.extend(
            t.shape
                .iter()
                .enumerate()
                .filter(|&(ix, _)| ix != axis)
                .map(|(_, &d)| d),
        );
        key.push(u64::MAX); // separator: [2,3]+[4] differs from [2]+[3,4]
    }
    (rows(&job.model, &job.inputs), key)
}

/// Rows of one request (or stacked batch) of `model`: its first input's size along the batch axis;
/// 1 for a model that does not batch.
fn rows(model: &ServedModel, inputs: &[HostTensor]) -> u64 {
    model.batch.as_ref().map_or(1, |axes| axes.rows(inputs))
}

/// A worker: take the next batch, answer the dead, run the live, until shut down and drained.
fn work(shared: &Shared, me: usize) {
    let Some(busy) = shared.busy_since.get(me) else {
        return;
    };
    let mut slice = slice::TimeSlice::new(shared.yield_every);
    while let Some(next) = next_batch(shared, me) {
        let started = Instant::now();
        slice.start(started);
        let since = u64::try_from(started.saturating_duration_since(shared.epoch).as_nanos())
            .unwrap_or(u64::MAX - 1);
        busy.store(since + 1, Ordering::Relaxed);
        let (model, batch, dead, running) = match next {
            Next::Work(taken) => taken,
            Next::Warm(warm) => {
                let model = &warm.model;
                let inputs = model.warmup_inputs.clone();
                // With pause points where a request's run would have them: their longest step is
                // then measured before the first request (`io_preempt = auto` judges by it).
                let expected = model
                    .service
                    .expected_run(model.batch.is_some(), rows(model, &inputs));
                let result = with_pauses(model, expected, &mut slice, |pause| {
                    catch_unwind(AssertUnwindSafe(|| {
                        model.runtime.run_pausing(inputs, pause)
                    }))
                })
                .map_err(|_| "the model panicked".to_owned())
                .and_then(|r| r.map(drop).map_err(|e| e.to_string()));
                let _ = warm.done.send(result);
                busy.store(0, Ordering::Relaxed);
                continue;
            }
        };
        let taken = batch.len() + dead.len();
        for job in dead {
            if job.cancel.load(Ordering::Acquire) {
                shared.counters.cancelled.fetch_add(1, Ordering::Relaxed);
                job.answer(Err(cancelled()));
            } else if job.reply.is_closed() {
                shared.counters.abandoned.fetch_add(1, Ordering::Relaxed);
                if let Some(t) = &job.tracked {
                    t.metrics().abandoned();
                }
                log::debug!(
                    "dropping a job for {} v{}: its client has gone",
                    model.name,
                    model.version
                );
            } else {
                shared.counters.expired.fetch_add(1, Ordering::Relaxed);
                let why = if started >= job.deadline {
                    "the deadline passed while the request was queued; it was not run"
                } else {
                    "the deadline would pass before the answer could be sent (the model's measured run time, its spread and one run more); it was not run"
                };
                job.answer(Err(RequestError::new(ErrorCode::DEADLINE_EXCEEDED, why)));
            }
        }
        if !batch.is_empty() {
            for t in batch.iter().filter_map(|j| j.tracked.as_ref()) {
                t.metrics().queue_wait(t.admitted().elapsed());
            }
            run(shared, &model, batch, &mut slice);
        }
        let (waiting, sleepers) = {
            let mut st = shared.lock();
            st.adjust(&model.name, |l| {
                l.in_flight = l.in_flight.saturating_sub(taken);
                if running {
                    l.running = l.running.saturating_sub(1);
                }
            });
            if let Some(end) = st.ends.get_mut(me) {
                *end = None;
            }
            (st.total, st.sleepers)
        };
        if running && waiting > 0 && sleepers > 0 {
            // A worker may be waiting on this model's `workers` limit while this one goes on to
            // another model's older request.
            shared.ready.notify_one();
        }
        busy.store(0, Ordering::Relaxed);
        slice.after_job(waiting > 0);
    }
}

/// A model version, the live jobs of one batch, the dead jobs taken with them, and whether the batch
/// counts as one of the model's running executions.
type Taken = (Arc<ServedModel>, Vec<Job>, Vec<Job>, bool);

/// What a worker does next.
enum Next {
    /// A batch (and the dead jobs taken with it).
    Work(Taken),
    /// A warm-up run.
    Warm(Warm),
}

fn cancelled() -> RequestError {
    RequestError::new(
        ErrorCode::CANCELLED,
        "cancelled by the client before it started; it was not run",
    )
}

/// Blocks until there is work (or shutdown with nothing left), then takes this worker's next warm-up
/// run, or one batch out of the queue whose oldest request is oldest among those the worker may
/// take now: not a model already on its `workers` limit, nor one whose partial batch is being held
/// open for more requests (`max_delay`).
fn next_batch(shared: &Shared, me: usize) -> Option<Next> {
    let mut st = shared.lock();
    loop {
        if let Some(warm) = st.warm.get_mut(me).and_then(VecDeque::pop_front) {
            return Some(Next::Warm(warm));
        }
        let mut order: Vec<(u64, usize)> = st
            .queues
            .iter()
            .enumerate()
            .filter_map(|(ix, q)| q.jobs.front().map(|j| (j.seq, ix)))
            .collect();
        order.sort_unstable();
        let now = Instant::now();
        let mut wake: Option<Instant> = None;
        for (_, ix) in order {
            let q = &st.queues[ix];
            let Some(head) = q.jobs.front() else {
                continue;
            };
            let knobs = Arc::clone(&head.job.scheduling);
            let load = st.load(&q.model.name);
            let take = plan(q, now, shared);
            if !take.batch.is_empty() {
                if knobs.workers.is_some_and(|w| load.running >= w) {
                    continue;
                }
                // Draining: nothing more is coming, so nothing is held.
                let until = (!st.closed)
                    .then(|| hold(q, &take, &knobs, load.running, now, shared))
                    .flatten();
                if let Some(until) = until {
                    wake = Some(wake.map_or(until, |w| w.min(until)));
                    continue;
                }
            }
            let running = !take.batch.is_empty();
            let (model, batch, dead) = take_out(&mut st, ix, &take);
            if running {
                st.adjust(&model.name, |l| l.running += 1);
                if let Some(end) = st.ends.get_mut(me) {
                    *end = now.checked_add(model.service.execution().unwrap_or_default());
                }
            }
            return Some(Next::Work((model, batch, dead, running)));
        }
        if st.closed && st.queues.is_empty() {
            // Workers waiting on a model's `workers` limit must see the end too.
            drop(st);
            shared.ready.notify_all();
            return None;
        }
        st.sleepers += 1;
        st = match wake {
            Some(at) => {
                let left = at.saturating_duration_since(Instant::now());
                shared
                    .ready
                    .wait_timeout(st, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
            }
            None => shared
                .ready
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner),
        };
        st.sleepers -= 1;
    }
}

/// The most rows one batch of this queue's model may hold.
fn max_rows(q: &ModelQueue, default: u64) -> u64 {
    if q.model.batch.is_some() {
        q.model.manifest.max_batch.unwrap_or(default)
    } else {
        1
    }
}

/// The batching policy applied to a queue now.
fn plan(q: &ModelQueue, now: Instant, shared: &Shared) -> policy::Take {
    // Not the mean run: a request started with only that left before its deadline is answered late
    // about half the time (Shared::answer_time).
    let run_time = shared.answer_time(&q.model);
    let entries: Vec<policy::Entry<'_>> = q
        .jobs
        .iter()
        .map(|j| policy::Entry {
            rows: j.rows,
            key: &j.key,
            live: j.job.live(now, run_time),
        })
        .collect();
    policy::take(&entries, max_rows(q, shared.max_batch))
}

/// Until when the planned batch should wait for more requests; `None`: take it now.
fn hold(
    q: &ModelQueue,
    take: &policy::Take,
    knobs: &Scheduling,
    others_running: usize,
    now: Instant,
    shared: &Shared,
) -> Option<Instant> {
    if knobs.max_delay.is_zero() {
        return None;
    }
    let members = take.batch.iter().filter_map(|&i| q.jobs.get(i));
    let (mut rows, mut oldest, mut earliest) = (0u64, now, None::<Instant>);
    for m in members {
        rows = rows.saturating_add(m.rows);
        oldest = oldest.min(m.at);
        earliest = Some(earliest.map_or(m.job.deadline, |d| d.min(m.job.deadline)));
    }
    policy::hold_until(&policy::Hold {
        now,
        oldest,
        earliest_deadline: earliest?,
        rows,
        max_rows: max_rows(q, shared.max_batch),
        max_delay: knobs.max_delay,
        // As `plan` judges the batch live: held past this, it would be dropped as dead.
        run_time: shared.answer_time(&q.model),
        others_running,
    })
}

/// Takes a planned batch and its dead jobs out of queue `ix`.
fn take_out(
    st: &mut State,
    ix: usize,
    take: &policy::Take,
) -> (Arc<ServedModel>, Vec<Job>, Vec<Job>) {
    let q = &mut st.queues[ix];
    let model = Arc::clone(&q.model);
    let mut chosen: Vec<(usize, bool)> = take
        .batch
        .iter()
        .map(|&i| (i, true))
        .chain(take.dead.iter().map(|&i| (i, false)))
        .collect();
    // Remove from the back so earlier indices stay valid.
    chosen.sort_unstable_by_key(|&(i, _)| std::cmp::Reverse(i));
    let (mut batch, mut dead) = (Vec::new(), Vec::new());
    for (i, live) in chosen {
        if let Some(queued) = q.jobs.remove(i) {
            if live {
                batch.push(queued.job)
            } else {
                dead.push(queued.job)
            }
        }
    }
    batch.reverse();
    st.total -= batch.len() + dead.len();
    if st.queues[ix].jobs.is_empty() {
        // An empty queue would keep its model version alive after a swap; the next job of that
        // version makes a new one.
        st.queues.swap_remove(ix);
    }
    (model, batch, dead)
}

/// Runs a batch: one execution for all, or one each if the batch cannot be split (or failed, so that
/// one bad request cannot fail the others).
fn run(shared: &Shared, model: &Arc<ServedModel>, batch: Vec<Job>, slice: &mut slice::TimeSlice) {
    let c = &shared.counters;
    if batch.len() > 1 {
        let rows: Vec<u64> = batch.iter().map(|j| rows(model, &j.inputs)).collect();
        let axes = model.batch.as_ref();
        let refs: Vec<&[HostTensor]> = batch.iter().map(|j| j.inputs.as_slice()).collect();
        let stacked = batch::stack(&refs, axes.map_or(&[][..], |a| &a.inputs));
        c.executions.fetch_add(1, Ordering::Relaxed);
        let (executed, took) = timed(model, stacked, rows.iter().sum(), slice);
        if let Some(t) = batch.first().and_then(|j| j.tracked.as_ref()) {
            t.metrics().executed(batch.len(), took);
        }
        if let Ok(outputs) = executed {
            if let Some(split) = batch::split(outputs, &rows, axes.map_or(&[][..], |a| &a.outputs))
            {
                c.batches.fetch_add(1, Ordering::Relaxed);
                c.computed.fetch_add(batch.len() as u64, Ordering::Relaxed);
                for (job, outputs) in batch.into_iter().zip(split) {
                    job.answer(Ok(outputs));
                }
                return;
            }
            log::warn!(
                "{} v{}: batched outputs cannot be split by rows; running one by one",
                model.name,
                model.version
            );
        }
    }
    for mut job in batch {
        let inputs = std::mem::take(&mut job.inputs);
        let rows = rows(model, &inputs);
        c.executions.fetch_add(1, Ordering::Relaxed);
        c.computed.fetch_add(1, Ordering::Relaxed);
        let (result, took) = timed(model, inputs, rows, slice);
        if let Some(t) = &job.tracked {
            t.metrics().executed(1, took);
        }
        job.answer(result);
    }
}

/// One execution of `rows` rows, timed and recorded in the model's service time; with pause points
/// in the worker's `slice` if it is expected to run long ([`slice`]).
fn timed(
    model: &ServedModel,
    inputs: Vec<HostTensor>,
    rows: u64,
    slice: &mut slice::TimeSlice,
) -> (JobResult, Duration) {
    let expected = model.service.expected_run(model.batch.is_some(), rows);
    let started = Instant::now();
    let result = with_pauses(model, expected, slice, |pause| {
        execute(model, inputs, pause)
    });
    let took = started.elapsed();
    model.service.record(rows, took);
    (result, took)
}

/// Calls `run` with the worker's pause points if an execution of `model` expected to take `expected`
/// should have them ([`slice`]), and records its longest step if it measured it.
fn with_pauses<R>(
    model: &ServedModel,
    expected: Option<Duration>,
    slice: &mut slice::TimeSlice,
    run: impl FnOnce(Option<&mut dyn FnMut()>) -> R,
) -> R {
    if !slice.pauses(expected) {
        return run(None);
    }
    slice.begin_execution(model.service.step_samples());
    let result = run(Some(&mut || slice.pause_point()));
    if let Some(step) = slice.end_execution() {
        model.service.record_step(step);
    }
    result
}

/// One model execution, with a panic in the model turned into an error for these requests only.
fn execute(
    model: &ServedModel,
    inputs: Vec<HostTensor>,
    pause: Option<&mut dyn FnMut()>,
) -> JobResult {
    match catch_unwind(AssertUnwindSafe(|| {
        model.runtime.run_pausing(inputs, pause)
    })) {
        Ok(Ok(outputs)) => Ok(outputs),
        Ok(Err(e)) => {
            log::warn!("{} v{} failed: {e}", model.name, model.version);
            Err(RequestError::new(
                ErrorCode::INTERNAL,
                format!("the model failed: {e}"),
            ))
        }
        Err(_) => {
            log::error!(
                "{} v{} panicked while running a request",
                model.name,
                model.version
            );
            Err(RequestError::new(
                ErrorCode::INTERNAL,
                "the model panicked on this input",
            ))
        }
    }
}
