//! The load generator behind `inferd bench`, speaking inferd's protocol.
//!
//! Closed loop: `connections × depth` requests always outstanding, each sent as soon as the previous
//! one on its slot is answered. Open loop: requests arrive as a Poisson process at a target rate,
//! spread over the connections, and each latency is measured from the request's *intended* send time,
//! so that a stalled server shows up as latency instead of silently lowering the offered load
//! (coordinated omission). A warm-up phase runs the same load and is discarded.
//!
//! A request answered `SHUTTING_DOWN` (alone, or by the connection-level error a draining server sends
//! before closing) was not run, so it is resent on a fresh connection, as a client behind a load
//! balancer should: the run measures what users see while nodes come and go (`retries` counts them).

pub mod inputs;
mod report;
pub mod server_batches;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use inferd_proto::ErrorCode;

use crate::client::{Client, ClientError, ClientOptions};
use crate::tensor::HostTensor;

pub use report::Report;

/// Most open-loop requests waiting in the generator itself; past that, arrivals are counted as
/// `client_backlog` errors instead of piling up in memory.
const MAX_BACKLOG: u64 = 100_000;

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    /// Server address.
    pub addr: SocketAddr,
    /// Connection options (TLS, timeouts).
    pub options: ClientOptions,
    /// Model name.
    pub model: String,
    /// Model version; `None`: newest.
    pub version: Option<u32>,
    /// One request's inputs.
    pub inputs: Vec<HostTensor>,
    /// Connections to open.
    pub connections: usize,
    /// Closed loop: requests outstanding per connection.
    pub depth: usize,
    /// Open loop: target requests per second (all connections together); `None`: closed loop.
    pub rate: Option<f64>,
    /// Measured phase.
    pub duration: Duration,
    /// Discarded phase before it.
    pub warmup: Duration,
    /// Deadline sent with each request.
    pub deadline: Option<Duration>,
    /// Print a progress line to stderr every second.
    pub progress: bool,
    /// Seed of the arrival process.
    pub seed: u64,
    /// The server's metrics listener: when given, the report includes the batch sizes it formed
    /// for the model during the measured phase (from `inferd_batch_size`).
    pub server_metrics: Option<SocketAddr>,
}

/// How often one request is resent after `SHUTTING_DOWN` before that counts as its error.
const MAX_RETRIES: u32 = 8;

/// Outcomes of one phase, shared by the request tasks.
#[derive(Debug)]
struct Stats {
    latency_us: Mutex<Histogram<u64>>,
    /// Open loop: how late each request began to be sent, after its intended time (the
    /// generator's own timer and scheduling delay, which its latencies include by design).
    send_lag_us: Mutex<Histogram<u64>>,
    /// How long each `OVERLOADED` refusal took, from the moment its request was sent.
    overloaded_us: Mutex<Histogram<u64>>,
    /// Successful answers that arrived later than the request's deadline after it was sent.
    ok_after_deadline: AtomicU64,
    ok: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    retries: AtomicU64,
}

/// One of the generator's connections; replaced by a fresh one when the server drains it.
#[derive(Debug)]
struct Conn {
    addr: SocketAddr,
    options: ClientOptions,
    current: Mutex<Arc<Client>>,
    /// Serialises reconnects, so that one drained connection is replaced once, not once per request.
    replacing: async_lock::Mutex<()>,
}

impl Conn {
    async fn open(addr: SocketAddr, options: ClientOptions) -> Result<Conn, ClientError> {
        let client = Client::connect_with(addr, options.clone()).await?;
        Ok(Conn {
            addr,
            options,
            current: Mutex::new(Arc::new(client)),
            replacing: async_lock::Mutex::new(()),
        })
    }

    fn get(&self) -> Arc<Client> {
        Arc::clone(
            &self
                .current
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Replaces `old` with a new connection, unless another request already did.
    async fn replace(&self, old: &Arc<Client>) -> Result<(), ClientError> {
        let _one = self.replacing.lock().await;
        if !Arc::ptr_eq(&self.get(), old) {
            return Ok(());
        }
        let fresh = Client::connect_with(self.addr, self.options.clone()).await?;
        *self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(fresh);
        Ok(())
    }

    /// One inference, resent on a new connection while the server answers that it did not run it.
    async fn infer(&self, request: &Request, stats: &Stats) -> Result<(), ClientError> {
        let mut attempt = 0;
        loop {
            let client = self.get();
            let result = client
                .infer(
                    &request.model,
                    request.version,
                    &request.inputs,
                    request.deadline,
                )
                .await;
            match result {
                Err(e) if e.code() == Some(ErrorCode::SHUTTING_DOWN) && attempt < MAX_RETRIES => {
                    attempt += 1;
                    stats.retries.fetch_add(1, Ordering::Relaxed);
                    if self.replace(&client).await.is_err() {
                        async_io::Timer::after(Duration::from_millis(10 << attempt.min(6))).await;
                    }
                }
                other => return other.map(|_| ()),
            }
        }
    }
}

/// What every request of a run sends.
#[derive(Debug)]
struct Request {
    model: String,
    version: Option<u32>,
    inputs: Vec<HostTensor>,
    deadline: Option<Duration>,
}

impl Stats {
    #[allow(
        clippy::expect_used,
        reason = "constant bounds that hdrhistogram accepts; covered by tests"
    )]
    fn new() -> Stats {
        // 1 µs to 10 minutes at 3 significant digits.
        let histogram =
            Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds");
        Stats {
            send_lag_us: Mutex::new(histogram.clone()),
            overloaded_us: Mutex::new(histogram.clone()),
            ok_after_deadline: AtomicU64::new(0),
            latency_us: Mutex::new(histogram),
            ok: AtomicU64::new(0),
            errors: Mutex::new(BTreeMap::new()),
            retries: AtomicU64::new(0),
        }
    }

    fn record_lag(&self, lag: Duration) {
        self.send_lag_us
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .saturating_record(u64::try_from(lag.as_micros()).unwrap_or(u64::MAX));
    }

    /// One answered request: `latency` from its intended send time (the figure reported), `since_sent`
    /// from when it was sent, checked against the request's `deadline`.
    fn record(
        &self,
        result: Result<(), &ClientError>,
        latency: Duration,
        since_sent: Duration,
        deadline: Option<Duration>,
    ) {
        match result {
            Ok(()) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                if deadline.is_some_and(|d| since_sent > d) {
                    self.ok_after_deadline.fetch_add(1, Ordering::Relaxed);
                }
                let us = u64::try_from(latency.as_micros())
                    .unwrap_or(u64::MAX)
                    .max(1);
                self.latency_us
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .saturating_record(us);
            }
            Err(e) => {
                if e.code() == Some(ErrorCode::OVERLOADED) {
                    self.overloaded_us
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .saturating_record(
                            u64::try_from(since_sent.as_micros()).unwrap_or(u64::MAX),
                        );
                }
                self.error(error_name(e));
            }
        }
    }

    fn error(&self, name: &str) {
        *self
            .errors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(name.to_owned())
            .or_default() += 1;
    }

    fn errors_total(&self) -> u64 {
        self.errors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .sum()
    }
}

/// The name an error is counted under: the server's code name, or the transport failure.
fn error_name(e: &ClientError) -> &'static str {
    match e {
        ClientError::Server { code, .. } => code.name(),
        ClientError::Timeout => "client_timeout",
        ClientError::Io(_) => "io",
        ClientError::Closed(_) => "closed",
        ClientError::Protocol(_) => "protocol",
        ClientError::Invalid(_) => "invalid",
    }
}

/// Runs the plan: connect, warm up, measure.
///
/// # Errors
/// If a connection cannot be opened.
pub fn run(plan: &LoadPlan) -> Result<Report, ClientError> {
    smol::block_on(async {
        let mut clients = Vec::with_capacity(plan.connections.max(1));
        for _ in 0..plan.connections.max(1) {
            clients.push(Arc::new(Conn::open(plan.addr, plan.options.clone()).await?));
        }
        let inputs = Arc::new(Request {
            model: plan.model.clone(),
            version: plan.version,
            inputs: plan.inputs.clone(),
            deadline: plan.deadline,
        });
        if !plan.warmup.is_zero() {
            phase(plan, &clients, &inputs, plan.warmup, false).await;
        }
        // Blocking reads of a local page, at the edges of the measured phase only.
        let read = |addr| server_batches::read(addr, &plan.model);
        let before = plan.server_metrics.map(read);
        let (stats, elapsed) = phase(plan, &clients, &inputs, plan.duration, plan.progress).await;
        let server = before.map(|before| {
            let after = plan
                .server_metrics
                .map(read)
                .unwrap_or_else(|| Err(String::new()));
            Ok(server_batches::ServerBatches::between(&before?, &after?))
        });
        let mut report = Report::new(plan, &stats, elapsed);
        report.server_batches = server;
        Ok(report)
    })
}

/// One timed phase; returns its stats and how long it really took (until the last answer).
async fn phase(
    plan: &LoadPlan,
    clients: &[Arc<Conn>],
    inputs: &Arc<Request>,
    length: Duration,
    progress: bool,
) -> (Arc<Stats>, Duration) {
    let stats = Arc::new(Stats::new());
    let start = Instant::now();
    let end = start + length;
    let reporter = progress.then(|| smol::spawn(report_progress(Arc::clone(&stats), start, end)));
    let tasks = match plan.rate {
        None => closed_loop(plan, clients, inputs, &stats, end),
        Some(rate) => open_loop(plan, clients, inputs, &stats, start, end, rate).await,
    };
    for task in tasks {
        task.await;
    }
    if let Some(reporter) = reporter {
        reporter.cancel().await;
        eprintln!();
    }
    (stats, start.elapsed())
}

fn closed_loop(
    plan: &LoadPlan,
    clients: &[Arc<Conn>],
    inputs: &Arc<Request>,
    stats: &Arc<Stats>,
    end: Instant,
) -> Vec<smol::Task<()>> {
    let mut tasks = Vec::new();
    for client in clients {
        for _ in 0..plan.depth.max(1) {
            let (client, request, stats) =
                (Arc::clone(client), Arc::clone(inputs), Arc::clone(stats));
            tasks.push(smol::spawn(async move {
                while Instant::now() < end {
                    let t = Instant::now();
                    let result = client.infer(&request, &stats).await;
                    let took = t.elapsed();
                    stats.record(result.as_ref().map(|_| ()), took, took, request.deadline);
                }
            }));
        }
    }
    tasks
}

async fn open_loop(
    plan: &LoadPlan,
    clients: &[Arc<Conn>],
    inputs: &Arc<Request>,
    stats: &Arc<Stats>,
    start: Instant,
    end: Instant,
    rate: f64,
) -> Vec<smol::Task<()>> {
    let mut rng = inputs::Rng::new(plan.seed);
    let backlog = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let mut intended = start;
    let mut i = 0usize;
    loop {
        intended += Duration::from_secs_f64(rng.exponential(1.0 / rate.max(1e-9)));
        if intended >= end {
            break;
        }
        async_io::Timer::at(intended).await;
        if backlog.load(Ordering::Relaxed) >= MAX_BACKLOG {
            stats.error("client_backlog");
            continue;
        }
        backlog.fetch_add(1, Ordering::Relaxed);
        let client = Arc::clone(&clients[i % clients.len()]);
        i += 1;
        let (request, stats, backlog) =
            (Arc::clone(inputs), Arc::clone(stats), Arc::clone(&backlog));
        tasks.push(smol::spawn(async move {
            stats.record_lag(intended.elapsed());
            let sent = Instant::now();
            let result = client.infer(&request, &stats).await;
            stats.record(
                result.as_ref().map(|_| ()),
                intended.elapsed(),
                sent.elapsed(),
                request.deadline,
            );
            backlog.fetch_sub(1, Ordering::Relaxed);
        }));
    }
    tasks
}

async fn report_progress(stats: Arc<Stats>, start: Instant, end: Instant) {
    let mut last = 0;
    loop {
        async_io::Timer::after(Duration::from_secs(1)).await;
        let ok = stats.ok.load(Ordering::Relaxed);
        let p99 = stats
            .latency_us
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .value_at_quantile(0.99);
        let left = end.saturating_duration_since(Instant::now()).as_secs();
        eprint!(
            "\r{:>4.0}s  ok {ok:>9}  errors {:>7}  {:>8} req/s  p99 {:>8.3} ms  ({left}s left)   ",
            start.elapsed().as_secs_f64(),
            stats.errors_total(),
            ok - last,
            p99 as f64 / 1e3
        );
        last = ok;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_later_than_their_deadline_after_sending_are_counted() {
        let stats = Stats::new();
        let ms = Duration::from_millis;
        // Late against its intended time (the generator's lag) but on time since sent: not late.
        stats.record(Ok(()), ms(30), ms(5), Some(ms(10)));
        stats.record(Ok(()), ms(30), ms(11), Some(ms(10)));
        stats.record(Ok(()), ms(30), ms(11), None);
        assert_eq!(stats.ok.load(Ordering::Relaxed), 3);
        assert_eq!(stats.ok_after_deadline.load(Ordering::Relaxed), 1);
    }
}
