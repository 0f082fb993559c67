//! Logging through `log` + `env_logger` (`RUST_LOG`, default `info`).
//!
//! Under systemd (`JOURNAL_STREAM` is set) lines carry a `<N>` syslog priority prefix and no timestamp,
//! which journald turns into the entry's priority and time. Payloads and key material are never logged.

use std::io::Write;

/// Installs the logger; call once, first thing in `main`.
pub fn init() {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.format(|buf, record| {
            let priority = match record.level() {
                log::Level::Error => 3,
                log::Level::Warn => 4,
                log::Level::Info => 6,
                log::Level::Debug | log::Level::Trace => 7,
            };
            writeln!(buf, "<{priority}>{}: {}", record.target(), record.args())
        });
    }
    let _ = builder.try_init();
}
