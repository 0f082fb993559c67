//! The TCP server: accept loop with a connection cap, per-connection tasks, graceful shutdown.
//!
//! Network I/O runs on a small `smol` executor of its own (`io_threads`); inference never does. On
//! shutdown readiness fails at once; `shutdown_delay` later the listeners close, connections finish
//! their in-flight requests (answering new ones `SHUTTING_DOWN`), and after `drain_timeout` whatever is
//! left is abandoned. The HTTP metrics and health listener (`http`) answers until the very end.

pub mod access;
mod access_log;
mod connection;
mod dispatch;
mod http;
mod in_flight;
mod io_policy;
mod refusals;
mod shutdown;
mod stats;
pub mod tls;
mod wire;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_io::{Async, Timer};
use futures_lite::future;
use inferd_proto::codec::encode_frame_vec;
use inferd_proto::{ErrorCode, ErrorResponse, Response, ServingState};

use crate::config::{IoPreempt, ServeConfig};
use crate::metrics::{Listener, Metrics};
use crate::model::repository::Rescans;
use crate::model::{Repository, ServedModel};
use crate::scheduler::Scheduler;
use crate::systemd::Inherited;
use crate::tracker::Tracker;

use access::AccessPolicy;
use io_policy::IoPolicy;
pub use refusals::{RefusalCounts, Refusals};
pub use shutdown::Shutdown;
use tls::TlsState;

/// State shared by the accept loop and every connection.
#[derive(Debug)]
pub struct Ctx {
    /// Resolved settings.
    pub config: ServeConfig,
    /// Served models, following the repository folder.
    pub models: Arc<Repository>,
    /// Asks the repository's watch thread for a rescan (SIGHUP, admin `Reload`).
    rescans: Rescans,
    /// Queue and workers.
    pub scheduler: Scheduler,
    /// The shutdown latch.
    pub shutdown: Shutdown,
    /// Open connections.
    connections: Arc<Tracker>,
    /// TLS material, when there is a TLS listener.
    tls: Option<Arc<TlsState>>,
    /// Who may use which model; replaced whole on reload.
    access: RwLock<Arc<AccessPolicy>>,
    /// Refused connections and requests, by cause.
    pub refusals: Refusals,
    /// Prometheus series.
    pub metrics: Metrics,
    /// The policy the I/O threads run at (`io_preempt`).
    io_policy: IoPolicy,
    /// When the server was built.
    started: Instant,
}

impl Ctx {
    /// What `Health` and `/health/ready` answer. Models are loaded and warmed before the server is
    /// built, so a running server is ready until it drains.
    pub fn serving_state(&self) -> ServingState {
        if self.shutdown.is_draining() {
            ServingState::Draining
        } else {
            ServingState::Ready
        }
    }

    /// Every served model version with the requests of it waiting for a worker (0 when none has
    /// queued yet), for `/metrics` and `Stats`.
    pub fn queued_by_model(&self) -> Vec<(Arc<ServedModel>, usize)> {
        let depths = self.scheduler.depths();
        self.models
            .snapshot()
            .all()
            .map(|m| {
                let n = depths
                    .iter()
                    .find(|(q, _)| Arc::ptr_eq(q, m))
                    .map_or(0, |(_, n)| *n);
                (Arc::clone(m), n)
            })
            .collect()
    }

    /// Asks the repository's watch thread for a rescan (in the background).
    pub fn request_rescan(&self) {
        self.rescans.request();
    }

    /// The access policy in force.
    pub fn access(&self) -> Arc<AccessPolicy> {
        Arc::clone(
            &self
                .access
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Re-reads the TLS material and the access policy (on any failure neither changes), and asks
    /// for a rescan of the model repository, which runs in the background.
    fn reload(&self) -> Result<(), String> {
        self.rescans.request();
        let access = match &self.config.access {
            Some(path) => AccessPolicy::load(path)?,
            None => AccessPolicy::open(),
        };
        if let Some(tls) = &self.tls {
            tls.reload()?;
        }
        *self
            .access
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(access);
        Ok(())
    }
}

/// A bound, not yet running server.
#[derive(Debug)]
pub struct Server {
    plain: Option<Async<TcpListener>>,
    tls: Option<Async<TcpListener>>,
    metrics: Option<Async<TcpListener>>,
    ctx: Arc<Ctx>,
}

/// Controls a running server from another thread.
#[derive(Debug, Clone)]
pub struct ServerHandle {
    ctx: Arc<Ctx>,
}

impl ServerHandle {
    /// Begins graceful shutdown (what SIGTERM does): readiness fails now, the listeners close
    /// `shutdown_delay` later.
    pub fn shutdown(&self) {
        self.ctx.shutdown.drain();
    }

    /// The served model repository (to rescan it, or read its status).
    pub fn models(&self) -> &Arc<Repository> {
        &self.ctx.models
    }

    /// Rescans the repository on its watch thread (where SIGHUP, `Reload` and the poll rescan, at
    /// background priority) and waits for the result.
    ///
    /// # Errors
    /// As [`crate::model::repository::Rescans::rescan_and_wait`].
    pub fn rescan_models(&self) -> Result<crate::model::repository::Changes, String> {
        self.ctx.rescans.rescan_and_wait()
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.ctx.shutdown.is_draining()
    }

    /// Whether the listeners have closed.
    pub fn is_stopping(&self) -> bool {
        self.ctx.shutdown.is_stopping()
    }

    /// The Prometheus text a scrape would return now.
    pub fn metrics_text(&self) -> String {
        http::render_metrics(&self.ctx)
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.ctx.connections.count()
    }

    /// Jobs waiting for an inference worker.
    pub fn queued(&self) -> usize {
        self.ctx.scheduler.queued()
    }

    /// The scheduler's counts: executions, requests computed, batches, expired, abandoned.
    pub fn scheduler_stats(&self) -> crate::scheduler::SchedulerStats {
        self.ctx.scheduler.stats()
    }

    /// How long the longest-running current execution has been running (the watchdog heartbeat).
    pub fn longest_busy(&self) -> Option<Duration> {
        self.ctx.scheduler.longest_busy()
    }

    /// Readiness, as `Health` answers it.
    pub fn serving_state(&self) -> ServingState {
        self.ctx.serving_state()
    }

    /// Refusals so far, by cause.
    pub fn refusals(&self) -> RefusalCounts {
        self.ctx.refusals.counts()
    }

    /// Re-reads TLS material and the access policy (what SIGHUP does). Established connections are
    /// untouched; new handshakes and requests use the new material.
    ///
    /// # Errors
    /// The file that failed; the previous material stays in force.
    pub fn reload(&self) -> Result<(), String> {
        self.ctx.reload()
    }
}

impl Server {
    /// Binds the configured listeners, reads the TLS material and access policy, and starts the
    /// inference workers.
    ///
    /// # Errors
    /// If an address cannot be bound, a file cannot be used, or a thread cannot be started.
    pub fn bind(config: ServeConfig, models: Arc<Repository>) -> Result<Server, String> {
        Server::bind_with(config, models, Inherited::default())
    }

    /// As [`Server::bind`], but with the listeners systemd passed (socket activation). When any is
    /// passed, inferd binds nothing itself: a role without an inherited socket is off, and the
    /// configured addresses are ignored (TLS still needs its certificate and key settings).
    ///
    /// # Errors
    /// As [`Server::bind`]; also a `tls` socket without TLS settings.
    pub fn bind_with(
        config: ServeConfig,
        models: Arc<Repository>,
        inherited: Inherited,
    ) -> Result<Server, String> {
        let bind = |addr: SocketAddr| {
            Async::<TcpListener>::bind(addr).map_err(|e| format!("binding {addr}: {e}"))
        };
        let adopt =
            |l: TcpListener| Async::new(l).map_err(|e| format!("using an inherited listener: {e}"));
        let (plain, tls_listener, metrics_listener) = if inherited.any() {
            if inherited.tls.is_some() && config.tls.is_none() {
                return Err("systemd passed a tls socket but TLS is not configured (tls_cert, tls_key; tls_listen is required and ignored)".into());
            }
            if inherited.tls.is_none() && config.tls.is_some() {
                log::warn!("TLS is configured but systemd passed no tls socket: no TLS listener");
            }
            (
                inherited.plain.map(adopt).transpose()?,
                inherited.tls.map(adopt).transpose()?,
                inherited.metrics.map(adopt).transpose()?,
            )
        } else {
            (
                config.listen.map(bind).transpose()?,
                config.tls.as_ref().map(|t| bind(t.addr)).transpose()?,
                config.metrics_listen.map(bind).transpose()?,
            )
        };
        if plain.is_none() && tls_listener.is_none() {
            return Err(
                "no protocol listener: systemd passed neither a plain nor a tls socket".into(),
            );
        }
        let tls = match &config.tls {
            Some(t) => Some(Arc::new(TlsState::load(t.files.clone())?)),
            None => None,
        };
        let access = match &config.access {
            Some(path) => AccessPolicy::load(path)?,
            None => AccessPolicy::open(),
        };
        let metrics = Metrics::new().map_err(|e| format!("registering metrics: {e}"))?;
        metrics.pin(models.snapshot().all());
        let rescans = models
            .watch(config.model_poll)
            .map_err(|e| format!("starting the model watch thread: {e}"))?;
        let scheduler = Scheduler::start(
            config.workers,
            config.queue_capacity,
            config.max_batch,
            config.repository.worker_nice,
            config.worker_yield,
        )
        .map_err(|e| format!("starting workers: {e}"))?;
        // Every worker runs every served version once before the first request (tract's scratch
        // space is per thread), and so does each version loaded later, before it is swapped in.
        for m in models.snapshot().all() {
            scheduler
                .warm(m)
                .map_err(|e| format!("warming {} v{} on the workers: {e}", m.name, m.version))?;
        }
        let warmer = scheduler.warmer();
        models.warm_on_workers(Arc::new(move |m| warmer.warm(m)));
        let config_io_preempt = config.io_preempt;
        let ctx = Arc::new(Ctx {
            config,
            models,
            rescans,
            scheduler,
            shutdown: Shutdown::default(),
            connections: Tracker::new(),
            tls,
            access: RwLock::new(Arc::new(access)),
            refusals: Refusals::default(),
            metrics,
            io_policy: IoPolicy::new(config_io_preempt),
            started: Instant::now(),
        });
        Ok(Server {
            plain,
            tls: tls_listener,
            metrics: metrics_listener,
            ctx,
        })
    }

    /// The plain TCP listener's address (useful with port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.plain
            .as_ref()
            .and_then(|l| l.get_ref().local_addr().ok())
    }

    /// The TLS listener's address.
    pub fn tls_local_addr(&self) -> Option<SocketAddr> {
        self.tls
            .as_ref()
            .and_then(|l| l.get_ref().local_addr().ok())
    }

    /// The HTTP metrics and health listener's address.
    pub fn metrics_local_addr(&self) -> Option<SocketAddr> {
        self.metrics
            .as_ref()
            .and_then(|l| l.get_ref().local_addr().ok())
    }

    /// A handle to stop the server from elsewhere.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            ctx: Arc::clone(&self.ctx),
        }
    }

    /// Runs until shutdown has been triggered and connections have drained (or the drain timeout has
    /// passed). Blocks the calling thread, which becomes one of the I/O threads.
    pub fn run(self) {
        let Server {
            plain,
            tls,
            metrics,
            ctx,
        } = self;
        let executor = Arc::new(async_executor::Executor::new());
        let (stop_tx, stop_rx) = async_channel::bounded::<()>(1);
        let mut threads = Vec::new();
        for i in 1..ctx.config.io_threads {
            let ex = Arc::clone(&executor);
            let stop = stop_rx.clone();
            let ctx = Arc::clone(&ctx);
            let spawned = std::thread::Builder::new()
                .name(format!("inferd-io-{i}"))
                .spawn(move || {
                    async_io::block_on(ex.run(future::or(
                        async { stop.recv().await.ok() },
                        async {
                            ctx.io_policy.follow().await;
                            None
                        },
                    )))
                });
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => log::warn!("could not start I/O thread {i}: {e}; continuing with fewer"),
            }
        }
        // The metrics and health endpoint answers through the drain, until `run` returns.
        let http = metrics.map(|listener| {
            let ctx = Arc::clone(&ctx);
            executor.spawn(http::accept_loop(listener, ctx, Arc::clone(&executor)))
        });
        let delay = {
            let ctx = Arc::clone(&ctx);
            executor.spawn(async move {
                ctx.shutdown.wait_draining().await;
                let delay = ctx.config.shutdown_delay;
                if !delay.is_zero() {
                    log::info!(
                        "draining: readiness fails now, listeners close in {} ms",
                        delay.as_millis()
                    );
                    future::or(
                        async {
                            Timer::after(delay).await;
                        },
                        ctx.shutdown.wait_stopping(),
                    )
                    .await;
                }
                ctx.shutdown.stop();
            })
        };
        let auto = (ctx.config.io_preempt == IoPreempt::Auto).then(|| {
            let ctx = Arc::clone(&ctx);
            executor.spawn(async move {
                let mut first = true;
                loop {
                    decide_io_policy(&ctx, first);
                    first = false;
                    Timer::after(IO_POLICY_EVERY).await;
                }
            })
        });
        let main = async {
            let plain_loop = async {
                if let Some(listener) = plain {
                    accept_loop(&listener, &ctx, &executor, Listener::Plain).await;
                }
            };
            let tls_loop = async {
                if let Some(listener) = tls {
                    accept_loop(&listener, &ctx, &executor, Listener::Tls).await;
                }
            };
            // Both return (and drop their listeners) once the server stops.
            future::zip(plain_loop, tls_loop).await;
            log::info!(
                "shutdown began: no longer accepting; draining {} connections",
                ctx.connections.count()
            );
            let drained = future::or(
                async {
                    ctx.connections.wait_zero().await;
                    true
                },
                async {
                    Timer::after(ctx.config.drain_timeout).await;
                    false
                },
            )
            .await;
            if drained {
                log::info!("all connections drained");
            } else {
                log::warn!(
                    "drain timeout ({} ms) passed with {} connections open; abandoning their work",
                    ctx.config.drain_timeout.as_millis(),
                    ctx.connections.count()
                );
            }
        };
        // `async_io::block_on`: while its tasks wait, this thread polls the reactor itself, so a
        // socket event wakes the task on the thread that saw it rather than through async-io's
        // own reactor thread: one thread wake-up and context switch fewer per event, which on one
        // core raised the fast models' saturation 1.25-1.4x (doc/BENCHMARKS.md, pinned section).
        // Beside the work, this thread follows the I/O policy like the others. No I/O thread
        // starts threads (workers come from `priority`'s spawner, loads from the watch thread), so
        // none inherits the I/O threads' policy.
        async_io::block_on(executor.run(future::or(main, async {
            ctx.io_policy.follow().await;
        })));
        drop(auto);
        drop(http);
        drop(delay);
        drop(stop_tx);
        for t in threads {
            let _ = t.join();
        }
        let refused = ctx.refusals.counts();
        if refused != RefusalCounts::default() {
            log::info!("refused while running: {refused:?}");
        }
        // Dropping the executor drops any connection still open; their queued jobs are then skipped.
        drop(executor);
        ctx.scheduler.shutdown();
    }
}

/// How often `io_preempt = auto` reads the models' run times again: they change with load (a
/// batched model's runs lengthen with its batches) and with the models served.
const IO_POLICY_EVERY: Duration = Duration::from_secs(1);

/// `io_preempt = auto`: the I/O threads' policy from the longest measured run among the served
/// models ([`io_policy::wanted`]); logged when it changes, and the `first` time.
fn decide_io_policy(ctx: &Ctx, first: bool) {
    let snapshot = ctx.models.snapshot();
    // The longest run bound (per request for a model that batches, `io_policy::judged_run`) and
    // whose it is; a model not measured yet counts as long.
    let mut longest: Option<Duration> = Some(Duration::ZERO);
    let mut which = String::new();
    for m in snapshot.all() {
        let bound = io_policy::judged_run(&m.service, m.batch.is_some());
        let longer = match (bound, longest) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(b), Some(l)) => b > l,
        };
        if longer {
            which = format!("{} v{}", m.name, m.version);
            longest = bound;
        }
    }
    let every = ctx.config.worker_yield;
    let batch = io_policy::wanted(longest, every, ctx.io_policy.batch());
    if ctx.io_policy.set(batch) || first {
        let run = longest.map_or_else(
            || "not measured yet".to_owned(),
            |l| format!("{} µs", l.as_micros()),
        );
        let longest = if which.is_empty() {
            "no model served".to_owned()
        } else {
            format!("the longest run (per request for a model that batches) is {which}'s, {run}")
        };
        match every {
            Some(every) if batch => log::info!(
                "I/O threads now at SCHED_BATCH (io_preempt = auto): {longest}, within the worker's yield interval of {} µs",
                every.as_micros()
            ),
            Some(every) => log::info!(
                "I/O threads now at the normal policy, preempting inference (io_preempt = auto): {longest}, against the worker's yield interval of {} µs",
                every.as_micros()
            ),
            None => log::info!(
                "I/O threads at the normal policy, preempting inference (io_preempt = auto): workers never yield (worker_yield_us = 0)"
            ),
        }
    }
}

async fn accept_loop(
    listener: &Async<TcpListener>,
    ctx: &Arc<Ctx>,
    ex: &Arc<async_executor::Executor<'static>>,
    kind: Listener,
) {
    loop {
        let accepted = future::or(async { Some(listener.accept().await) }, async {
            ctx.shutdown.wait_stopping().await;
            None
        })
        .await;
        match accepted {
            None => return,
            Some(Ok((stream, peer))) => {
                if let Err(e) = stream.get_ref().set_nodelay(true) {
                    log::debug!("{peer}: set_nodelay: {e}");
                }
                match ctx.connections.try_enter(ctx.config.max_connections) {
                    Some(guard) => {
                        let ctx = Arc::clone(ctx);
                        ctx.metrics.listener(kind).accepted.inc();
                        ex.spawn(async move {
                            match kind {
                                Listener::Tls => serve_tls(stream, peer, ctx).await,
                                Listener::Plain => {
                                    connection::serve(stream, peer, ctx, None, kind).await;
                                }
                            }
                            drop(guard);
                        })
                        .detach();
                    }
                    None => {
                        Refusals::bump(&ctx.refusals.connection_cap);
                        log::warn!(
                            "{peer}: refused: {} connections open",
                            ctx.config.max_connections
                        );
                        refuse(stream).await;
                    }
                }
            }
            Some(Err(e)) => {
                // Typically EMFILE: back off rather than spin.
                log::warn!("accept failed: {e}");
                Timer::after(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Runs the TLS handshake (under the handshake timeout, inside the connection's own task, never in
/// the accept loop), then serves the connection with the client certificate's identity.
async fn serve_tls(stream: Async<TcpStream>, peer: SocketAddr, ctx: Arc<Ctx>) {
    let Some(state) = &ctx.tls else { return };
    let (acceptor, mutual) = (state.acceptor(), state.mutual());
    let handshake =
        crate::framed::timeout(ctx.config.handshake_timeout, acceptor.accept(stream)).await;
    let stream = match handshake {
        Some(Ok(stream)) => stream,
        Some(Err(e)) => {
            Refusals::bump(&ctx.refusals.tls_handshake);
            log::info!("{peer}: TLS handshake refused: {e}");
            return;
        }
        None => {
            Refusals::bump(&ctx.refusals.tls_timeout);
            log::info!("{peer}: TLS handshake timed out");
            return;
        }
    };
    let identity = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(tls::identity);
    if mutual {
        log::debug!("{peer}: TLS client {identity:?}");
    }
    connection::serve(stream, peer, ctx, identity, Listener::Tls).await;
}

/// Tells a connection over the cap why it is closed; bounded in time so a flood cannot stall accepting.
async fn refuse(mut stream: Async<TcpStream>) {
    let response = Response::Error(ErrorResponse {
        id: None,
        code: ErrorCode::OVERLOADED,
        message: "too many connections",
        retry_after_ms: None,
    });
    if let Ok(frame) = encode_frame_vec(&response, u32::MAX) {
        let _ = crate::framed::write_frame(&mut stream, &frame, Duration::from_millis(100)).await;
    }
}
