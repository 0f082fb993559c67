//! `inferd serve`: resolve the configuration, load the repository, serve until SIGTERM/SIGINT; SIGHUP
//! reloads the TLS material and the access policy. Under systemd it takes socket-activated listeners,
//! reports `READY=1` once every model is loaded and warm, `STATUS=` lines, `RELOADING=1` around a
//! reload, `STOPPING=1` on drain, and feeds the watchdog while no worker hangs.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use futures_lite::StreamExt;

use crate::config::{ServeArgs, ServeConfig};
use crate::model::Repository;
use crate::server::{Server, ServerHandle};
use crate::systemd::{self, Notifier};

pub fn run(args: &ServeArgs) -> anyhow::Result<ExitCode> {
    let config = ServeConfig::resolve(args)?;
    log::info!("configuration: {config:?}");
    let notifier = Arc::new(Notifier::from_env());
    let inherited = systemd::inherited_listeners().map_err(anyhow::Error::msg)?;
    if inherited.any() {
        log::info!("socket activation: using the listeners systemd passed");
    }
    log::info!("tract kernels: {}", crate::model::runtime::kernels());
    let started = Instant::now();
    notifier.status(&format!("loading models from {}", config.models.display()));
    let models = Repository::open(&config.models, config.repository.clone())
        .with_context(|| format!("loading {}", config.models.display()))?;
    let count = models.snapshot().all().count();
    let server =
        Server::bind_with(config, Arc::new(models), inherited).map_err(anyhow::Error::msg)?;
    watch_signals(server.handle(), Arc::clone(&notifier))?;
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
    let summary = format!(
        "{} with {count} model versions, ready in {} ms",
        listeners.join(", "),
        started.elapsed().as_millis()
    );
    log::info!("{summary}");
    notifier.ready(&summary);
    if let Some(interval) = systemd::watchdog_interval() {
        feed_watchdog(server.handle(), Arc::clone(&notifier), interval)?;
    }
    server.run();
    log::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Pings the systemd watchdog at half its interval while no worker has hung on one execution for the
/// whole interval; a hung worker starves it and systemd restarts the service.
fn feed_watchdog(
    handle: ServerHandle,
    notifier: Arc<Notifier>,
    interval: std::time::Duration,
) -> anyhow::Result<()> {
    log::info!("systemd watchdog every {} ms", interval.as_millis());
    std::thread::Builder::new()
        .name("inferd-watchdog".into())
        .spawn(move || {
            let mut starving = false;
            loop {
                std::thread::sleep(interval / 2);
                let busy = handle.longest_busy();
                if systemd::healthy(busy, interval) {
                    starving = false;
                    notifier.send("WATCHDOG=1");
                } else if !starving {
                    starving = true;
                    log::error!(
                        "an inference worker has been on one execution for {} ms: not feeding the watchdog",
                        busy.unwrap_or_default().as_millis()
                    );
                    notifier.status("an inference worker is hung");
                }
            }
        })
        .context("starting the watchdog thread")?;
    Ok(())
}

/// First SIGTERM/SIGINT: graceful shutdown. A second one: exit at once (an operator who insists).
/// SIGHUP: reload TLS material and the access policy; a failed reload keeps the old ones.
fn watch_signals(handle: ServerHandle, notifier: Arc<Notifier>) -> anyhow::Result<()> {
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
                        Ok(Signal::Hup) => {
                            notifier.send("RELOADING=1");
                            match handle.reload() {
                                Ok(()) => {
                                    log::info!("SIGHUP: reloaded TLS material and access policy; rescanning models");
                                    notifier.ready("reloaded TLS material and access policy; rescanning models");
                                }
                                Err(e) => {
                                    log::error!(
                                        "SIGHUP: reload failed, keeping the previous material: {e}"
                                    );
                                    notifier.ready(&format!(
                                        "reload failed, previous material in force: {e}"
                                    ));
                                }
                            }
                        }
                        Ok(signal) => {
                            stops += 1;
                            if stops == 1 {
                                log::info!("{signal:?}: shutting down gracefully");
                                notifier.send("STOPPING=1\nSTATUS=draining");
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
