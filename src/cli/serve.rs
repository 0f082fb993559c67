//! `inferd serve`: resolve the configuration, load the repository, serve until SIGTERM/SIGINT.

use std::process::ExitCode;

use anyhow::Context;
use futures_lite::StreamExt;

use crate::config::{ServeArgs, ServeConfig};
use crate::model::Registry;
use crate::server::{Server, ServerHandle};

pub fn run(args: &ServeArgs) -> anyhow::Result<ExitCode> {
    let config = ServeConfig::resolve(args)?;
    log::info!("configuration: {config:?}");
    let started = std::time::Instant::now();
    let registry = Registry::load(&config.models)
        .with_context(|| format!("loading {}", config.models.display()))?;
    let count = registry.all().count();
    let server = Server::bind(config.clone(), std::sync::Arc::new(registry))
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = server.local_addr()?;
    watch_signals(server.handle())?;
    log::info!(
        "listening on {addr} with {count} model versions, ready in {} ms",
        started.elapsed().as_millis()
    );
    server.run();
    log::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// First SIGTERM/SIGINT: graceful shutdown. A second one: exit at once (an operator who insists).
fn watch_signals(handle: ServerHandle) -> anyhow::Result<()> {
    use async_signal::{Signal, Signals};
    let mut signals =
        Signals::new([Signal::Term, Signal::Int]).context("installing signal handlers")?;
    std::thread::Builder::new()
        .name("inferd-signals".into())
        .spawn(move || {
            smol::block_on(async {
                let mut seen = 0;
                while let Some(signal) = signals.next().await {
                    seen += 1;
                    if seen == 1 {
                        log::info!("{signal:?}: shutting down gracefully");
                        handle.shutdown();
                    } else {
                        log::warn!("{signal:?} again: exiting now");
                        std::process::exit(130);
                    }
                }
            });
        })?;
    Ok(())
}
