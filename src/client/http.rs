//! A minimal HTTP/1.1 GET for the daemon's own metrics listener (`/metrics`, `/models`), which
//! answers `Connection: close`: what `inferd models --http` and `inferd bench --server-metrics` read.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// The largest page read: a wrong address must not fill memory.
const MAX_PAGE: u64 = 16 << 20;

/// `GET path` on `addr`; the body of a 200 answer.
///
/// # Errors
/// A message: unreachable, timed out, not HTTP, or another status.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<String, String> {
    let fail = |e: std::io::Error| format!("GET http://{addr}{path}: {e}");
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(fail)?;
    stream.set_read_timeout(Some(timeout)).map_err(fail)?;
    stream.set_write_timeout(Some(timeout)).map_err(fail)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(fail)?;
    let mut response = Vec::new();
    stream
        .take(MAX_PAGE)
        .read_to_end(&mut response)
        .map_err(fail)?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("GET http://{addr}{path}: no HTTP response head"))?;
    let status = head.lines().next().unwrap_or("");
    if !status.contains(" 200 ") {
        return Err(format!("GET http://{addr}{path}: {status}"));
    }
    Ok(body.to_owned())
}
