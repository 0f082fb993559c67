//! `inferd serve`: resolve the configuration, load the repository, serve until SIGTERM/SIGINT; SIGHUP
//! reloads the TLS material and the access policy.

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
    let server = Server::bind(config, std::sync::Arc::new(registry)).map_err(anyhow::Error::msg)?;
    watch_signals(server.handle())?;
    let mut listeners = Vec::new();
    if let Some(addr) = server.local_addr() {
        listeners.push(format!("listening on {addr}"));
    }
    if let Some(addr) = server.tls_local_addr() {
        listeners.push(format!("TLS listening on {addr}"));
    }
    if let Some(addr) = server.metrics_local_addr() {
        log::info!("metrics and health on http://{addr}/metrics, /health/live, /health/ready");
    }
    log::info!(
        "{} with {count} model versions, ready in {} ms",
        listeners.join(", "),
        started.elapsed().as_millis()
    );
    server.run();
    log::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// First SIGTERM/SIGINT: graceful shutdown. A second one: exit at once (an operator who insists).
/// SIGHUP: reload TLS material and the access policy; a failed reload keeps the old ones.
fn watch_signals(handle: ServerHandle) -> anyhow::Result<()> {
    use async_signal::{Signal, Signals};
    let mut signals = Signals::new([Signal::Term, Signal::Int, Signal::Hup])
        .context("installing signal handlers")?;
    std::thread::Builder::new()
        .name("inferd-signals".into())
        .spawn(move || {
            smol::block_on(async {
                let mut stops = 0;
                while let Some(signal) = signals.next().await {
                    match signal {
                        Ok(Signal::Hup) => match handle.reload() {
                            Ok(()) => log::info!("SIGHUP: reloaded TLS material and access policy"),
                            Err(e) => {
                                log::error!(
                                    "SIGHUP: reload failed, keeping the previous material: {e}"
                                )
                            }
                        },
                        Ok(signal) => {
                            stops += 1;
                            if stops == 1 {
                                log::info!("{signal:?}: shutting down gracefully");
                                handle.shutdown();
                            } else {
                                log::warn!("{signal:?} again: exiting now");
                                std::process::exit(130);
                            }
                        }
                        Err(e) => log::warn!("reading signals: {e}"),
                    }
                }
            });
        })?;
    Ok(())
}
