//! The HTTP side listener (`--metrics-listen`): `GET /metrics` (Prometheus text), `GET /health/live`
//! (the process answers) and `GET /health/ready` (200 only while every pinned model is warm and the
//! server is not draining; 503 otherwise, so a load balancer takes the node out on SIGTERM before it
//! stops accepting).
//!
//! Deliberately tiny: one request per connection (`Connection: close`), the request head bounded in
//! size and time, a cap on concurrent connections, no request bodies. It keeps answering through the
//! drain, until the server's `run` returns.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use async_io::{Async, Timer};
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use inferd_proto::ServingState;

use super::Ctx;
use crate::framed::timeout;
use crate::metrics::ScrapeInputs;
use crate::tracker::Tracker;

/// Largest request head read; longer requests are answered 431.
const MAX_HEAD: usize = 8 * 1024;
/// Concurrent HTTP connections; more are closed at once.
const MAX_CONNECTIONS: usize = 32;
/// Time a client has to send its request head, and to read the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Accepts HTTP connections until the task is dropped.
pub async fn accept_loop(
    listener: Async<TcpListener>,
    ctx: Arc<Ctx>,
    ex: Arc<async_executor::Executor<'static>>,
) {
    let open = Tracker::new();
    loop {
        match listener.accept().await {
            Ok((mut stream, peer)) => {
                let Some(guard) = open.try_enter(MAX_CONNECTIONS) else {
                    log::debug!("{peer}: HTTP connection refused: {MAX_CONNECTIONS} open");
                    continue;
                };
                let ctx = Arc::clone(&ctx);
                ex.spawn(async move {
                    if let Err(e) = serve(&mut stream, &ctx).await {
                        log::debug!("{peer}: HTTP: {e}");
                    }
                    drop(guard);
                })
                .detach();
            }
            Err(e) => {
                log::warn!("metrics listener: accept failed: {e}");
                Timer::after(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The Prometheus text for the server's state now.
pub fn render_metrics(ctx: &Ctx) -> String {
    let refused = ctx.refusals.counts();
    let (failures, swaps) = ctx.models.counters();
    let inputs = ScrapeInputs {
        // Every served version, so that the series always exists.
        queued: ctx
            .queued_by_model()
            .into_iter()
            .map(|(m, n)| (m.name.clone(), m.version, n))
            .collect(),
        refused: vec![
            ("tls_handshake", refused.tls_handshake),
            ("tls_timeout", refused.tls_timeout),
            ("not_authorized", refused.not_authorized),
            ("connection_cap", refused.connection_cap),
        ],
        ready: ctx.serving_state() == ServingState::Ready,
        draining: ctx.shutdown.is_draining(),
        served: ctx
            .models
            .snapshot()
            .all()
            .map(|m| (m.name.clone(), m.version, m.load))
            .collect(),
        load_failures: failures.into_iter().collect(),
        swaps,
        cache: ctx.models.cache_counts(),
    };
    ctx.metrics.render(&inputs)
}

async fn serve(stream: &mut Async<std::net::TcpStream>, ctx: &Ctx) -> std::io::Result<()> {
    let head = match timeout(IO_TIMEOUT, read_head(stream)).await {
        Some(head) => head?,
        None => return Ok(()),
    };
    let (status, content_type, body, head_only) = match head {
        None => (
            "431 Request Header Fields Too Large",
            "text/plain",
            String::new(),
            false,
        ),
        Some(head) => {
            let (status, content_type, body) = answer(&head, ctx);
            (status, content_type, body, head.starts_with("HEAD "))
        }
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if !head_only {
        response.push_str(&body);
    }
    let write = async {
        stream.write_all(response.as_bytes()).await?;
        stream.flush().await?;
        stream.close().await
    };
    timeout(IO_TIMEOUT, write).await.unwrap_or(Ok(()))
}

/// Status, content type and body for a request head.
fn answer(head: &str, ctx: &Ctx) -> (&'static str, &'static str, String) {
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    const TEXT: &str = "text/plain; charset=utf-8";
    if method != "GET" && method != "HEAD" {
        return ("405 Method Not Allowed", TEXT, "GET only\n".into());
    }
    match path {
        "/metrics" => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            render_metrics(ctx),
        ),
        "/models" => ("200 OK", "application/json", models_json(ctx)),
        "/health/live" => ("200 OK", TEXT, "live\n".into()),
        "/health/ready" => match ctx.serving_state() {
            ServingState::Ready => ("200 OK", TEXT, "ready\n".into()),
            ServingState::NotReady => ("503 Service Unavailable", TEXT, "not ready\n".into()),
            ServingState::Draining => ("503 Service Unavailable", TEXT, "draining\n".into()),
        },
        _ => (
            "404 Not Found",
            TEXT,
            "try /metrics, /models, /health/live or /health/ready\n".into(),
        ),
    }
}

/// Every version in the repository folder with its state and why (what `inferd models` prints).
fn models_json(ctx: &Ctx) -> String {
    let body = serde_json::json!({
        "repository": ctx.models.root().display().to_string(),
        "versions": ctx.models.status(),
    });
    let mut text = body.to_string();
    text.push('\n');
    text
}

/// Reads up to the blank line ending the request head; `None` if it exceeds [`MAX_HEAD`].
async fn read_head(stream: &mut Async<std::net::TcpStream>) -> std::io::Result<Option<String>> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
        if head.len() > MAX_HEAD {
            return Ok(None);
        }
    }
    Ok(Some(String::from_utf8_lossy(&head).into_owned()))
}
