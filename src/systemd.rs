//! The systemd protocols, without libsystemd: readiness and status notifications (`sd_notify`, a
//! datagram to `$NOTIFY_SOCKET`), the watchdog (`$WATCHDOG_USEC`), and socket activation (listeners
//! inherited from an `inferd.socket` unit through `$LISTEN_FDS`, chosen by `FileDescriptorName=`).
//!
//! Outside systemd the variables are absent and everything here does nothing, so the same binary runs
//! under a terminal, a container runtime or systemd.

use std::net::TcpListener;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends `sd_notify` messages; a no-op without `$NOTIFY_SOCKET`.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET` (a path, or `@name` for an abstract socket).
    pub fn from_env() -> Notifier {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|path| {
            let addr = socket_addr(path.to_str()?)?;
            let socket = UnixDatagram::unbound().ok()?;
            Some((socket, addr))
        });
        if target.is_none() && std::env::var_os("NOTIFY_SOCKET").is_some() {
            log::warn!("NOTIFY_SOCKET is set but unusable; systemd will not hear from inferd");
        }
        Notifier { target }
    }

    /// Whether a notify socket is configured.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends one message (newline-separated `KEY=value` lines). Failures are logged, never fatal:
    /// systemd gone is no reason to stop serving.
    pub fn send(&self, message: &str) {
        if let Some((socket, addr)) = &self.target {
            if let Err(e) = socket.send_to_addr(message.as_bytes(), addr) {
                log::warn!("sd_notify {:?}: {e}", message.lines().next().unwrap_or(""));
            }
        }
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// A `STATUS=` line only.
    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={}", one_line(status)));
    }
}

fn one_line(s: &str) -> String {
    s.replace('\n', " ")
}

fn socket_addr(path: &str) -> Option<std::os::unix::net::SocketAddr> {
    if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).ok()
    } else if path.starts_with('/') {
        std::os::unix::net::SocketAddr::from_pathname(path).ok()
    } else {
        None
    }
}

/// The watchdog interval systemd expects pings within (`WatchdogSec=`), if this process is the one
/// watched (`$WATCHDOG_PID` absent or ours).
pub fn watchdog_interval() -> Option<Duration> {
    if let Some(pid) = std::env::var_os("WATCHDOG_PID") {
        if pid.to_str()?.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Whether the watchdog may be fed: no worker has been on one execution for as long as the watchdog
/// interval. A longer execution is taken for a hung worker, and systemd restarts the service.
pub fn healthy(longest_busy: Option<Duration>, interval: Duration) -> bool {
    longest_busy.is_none_or(|busy| busy < interval)
}

/// Listeners passed by systemd socket activation, by role.
#[derive(Debug, Default)]
pub struct Inherited {
    /// `FileDescriptorName=plain` (or the first unnamed socket): the plain protocol listener.
    pub plain: Option<TcpListener>,
    /// `FileDescriptorName=tls`: the TLS listener.
    pub tls: Option<TcpListener>,
    /// `FileDescriptorName=metrics`: the HTTP metrics and health listener.
    pub metrics: Option<TcpListener>,
}

impl Inherited {
    /// Whether systemd passed any listener.
    pub fn any(&self) -> bool {
        self.plain.is_some() || self.tls.is_some() || self.metrics.is_some()
    }
}

/// Takes the listeners systemd passed (`$LISTEN_FDS` for this `$LISTEN_PID`), by their
/// `FileDescriptorName=`: `plain`, `tls`, `metrics`; an unnamed first socket is `plain`.
///
/// # Errors
/// A passed descriptor that is not a TCP listener, a name inferd does not know, or two of one role.
pub fn inherited_listeners() -> Result<Inherited, String> {
    let mut fds = listenfd::ListenFd::from_env();
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|v| v.split(':').map(str::to_owned).collect())
        .unwrap_or_default();
    let mut inherited = Inherited::default();
    for i in 0..fds.len() {
        let name = names.get(i).map_or("", String::as_str);
        let listener = fds
            .take_tcp_listener(i)
            .map_err(|e| format!("inherited socket {i} ({name:?}): {e}"))?
            .ok_or_else(|| format!("inherited socket {i} ({name:?}) is not a TCP listener"))?;
        let slot = match name {
            "plain" | "" | "unknown" | "inferd.socket" if inherited.plain.is_none() => {
                &mut inherited.plain
            }
            "tls" => &mut inherited.tls,
            "metrics" => &mut inherited.metrics,
            other => {
                return Err(format!(
                    "inherited socket {i} is named {other:?}: use FileDescriptorName=plain, tls or metrics"
                ))
            }
        };
        if slot.is_some() {
            return Err(format!("two inherited sockets are named {name:?}"));
        }
        *slot = Some(listener);
    }
    Ok(inherited)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_starves_only_when_a_worker_hangs() {
        let interval = Duration::from_secs(10);
        assert!(healthy(None, interval));
        assert!(healthy(Some(Duration::from_secs(3)), interval));
        assert!(!healthy(Some(Duration::from_secs(10)), interval));
    }

    #[test]
    fn notify_socket_addresses() {
        assert!(socket_addr("/run/systemd/notify").is_some());
        assert!(socket_addr("@abstract").is_some());
        assert!(socket_addr("relative").is_none());
    }

    #[test]
    fn notifications_reach_the_socket() {
        let dir = std::env::temp_dir().join(format!("inferd-notify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        let n = Notifier {
            target: Some((
                UnixDatagram::unbound().unwrap(),
                socket_addr(path.to_str().unwrap()).unwrap(),
            )),
        };
        n.ready("serving\nthings");
        let mut buf = [0u8; 256];
        let len = socket.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=serving things");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
