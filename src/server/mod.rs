//! The TCP server: accept loop with a connection cap, per-connection tasks, graceful shutdown.
//!
//! Network I/O runs on a small `smol` executor of its own (`io_threads`); inference never does. On
//! shutdown the listener is closed at once, connections finish their in-flight requests (answering new
//! ones `SHUTTING_DOWN`), and after `drain_timeout` whatever is left is abandoned.

mod connection;
mod shutdown;
mod wire;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use async_io::{Async, Timer};
use futures_lite::future;
use inferd_proto::codec::encode_frame_vec;
use inferd_proto::{ErrorCode, ErrorResponse, Response};

use crate::config::ServeConfig;
use crate::model::Registry;
use crate::scheduler::Scheduler;
use crate::tracker::Tracker;

pub use shutdown::Shutdown;

/// State shared by the accept loop and every connection.
#[derive(Debug)]
pub struct Ctx {
    /// Resolved settings.
    pub config: ServeConfig,
    /// Served models.
    pub registry: Arc<Registry>,
    /// Queue and workers.
    pub scheduler: Scheduler,
    /// The shutdown latch.
    pub shutdown: Shutdown,
    /// Open connections.
    connections: Arc<Tracker>,
}

/// A bound, not yet running server.
#[derive(Debug)]
pub struct Server {
    listener: Async<TcpListener>,
    ctx: Arc<Ctx>,
}

/// Controls a running server from another thread.
#[derive(Debug, Clone)]
pub struct ServerHandle {
    ctx: Arc<Ctx>,
}

impl ServerHandle {
    /// Begins graceful shutdown (what SIGTERM does).
    pub fn shutdown(&self) {
        self.ctx.shutdown.trigger();
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.ctx.shutdown.is_triggered()
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.ctx.connections.count()
    }
}

impl Server {
    /// Binds the listen address and starts the inference workers.
    ///
    /// # Errors
    /// If the address cannot be bound or a thread cannot be started.
    pub fn bind(config: ServeConfig, registry: Arc<Registry>) -> std::io::Result<Server> {
        let listener = Async::<TcpListener>::bind(config.listen)?;
        Server::from_listener(listener, config, registry)
    }

    /// Serves on an already bound listener (socket activation, tests).
    ///
    /// # Errors
    /// If a thread cannot be started.
    pub fn from_listener(
        listener: Async<TcpListener>,
        config: ServeConfig,
        registry: Arc<Registry>,
    ) -> std::io::Result<Server> {
        let scheduler = Scheduler::start(config.workers, config.queue_capacity)?;
        let ctx = Arc::new(Ctx {
            config,
            registry,
            scheduler,
            shutdown: Shutdown::default(),
            connections: Tracker::new(),
        });
        Ok(Server { listener, ctx })
    }

    /// The bound address (useful with port 0).
    ///
    /// # Errors
    /// If the socket cannot report it.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.get_ref().local_addr()
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
        let Server { listener, ctx } = self;
        let executor = Arc::new(async_executor::Executor::new());
        let (stop_tx, stop_rx) = async_channel::bounded::<()>(1);
        let mut threads = Vec::new();
        for i in 1..ctx.config.io_threads {
            let ex = Arc::clone(&executor);
            let stop = stop_rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("inferd-io-{i}"))
                .spawn(move || future::block_on(ex.run(async { stop.recv().await.ok() })));
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => log::warn!("could not start I/O thread {i}: {e}; continuing with fewer"),
            }
        }
        future::block_on(executor.run(async {
            accept_loop(&listener, &ctx, &executor).await;
            drop(listener);
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
        }));
        drop(stop_tx);
        for t in threads {
            let _ = t.join();
        }
        // Dropping the executor drops any connection still open; their queued jobs are then skipped.
        drop(executor);
        ctx.scheduler.shutdown();
    }
}

async fn accept_loop(
    listener: &Async<TcpListener>,
    ctx: &Arc<Ctx>,
    ex: &Arc<async_executor::Executor<'static>>,
) {
    loop {
        let accepted = future::or(async { Some(listener.accept().await) }, async {
            ctx.shutdown.wait().await;
            None
        })
        .await;
        match accepted {
            None => {
                log::info!(
                    "shutdown began: no longer accepting; draining {} connections",
                    ctx.connections.count()
                );
                return;
            }
            Some(Ok((stream, peer))) => {
                if let Err(e) = stream.get_ref().set_nodelay(true) {
                    log::debug!("{peer}: set_nodelay: {e}");
                }
                match ctx.connections.try_enter(ctx.config.max_connections) {
                    Some(guard) => {
                        let ctx = Arc::clone(ctx);
                        ex.spawn(async move {
                            connection::serve(stream, peer, ctx).await;
                            drop(guard);
                        })
                        .detach();
                    }
                    None => {
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

/// Tells a connection over the cap why it is closed; bounded in time so a flood cannot stall accepting.
async fn refuse(mut stream: Async<TcpStream>) {
    let response = Response::Error(ErrorResponse {
        id: None,
        code: ErrorCode::OVERLOADED,
        message: "too many connections",
    });
    if let Ok(frame) = encode_frame_vec(&response, u32::MAX) {
        let _ = crate::framed::write_frame(&mut stream, &frame, Duration::from_millis(100)).await;
    }
}
