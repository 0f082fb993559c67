//! One client connection: the handshake, then a reader and a writer running side by side.
//!
//! The reader decodes requests and hands each to `dispatch`, which answers the cheap ones (ping,
//! listings) through a small control queue and admits inference requests to the scheduler. The writer sends control frames first, then
//! completions as workers finish them, in whatever order that is: responses carry the request id.
//! Framing errors close the connection after one `Error` frame; request errors answer that request
//! and nothing else. When shutdown begins the reader keeps answering (`SHUTTING_DOWN` to new inference
//! requests) until the connection's in-flight requests are all written, then sends a connection-level
//! `SHUTTING_DOWN` error, which tells the client that whatever it sent and has no answer for was not
//! read (so may be retried elsewhere), and closes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_channel::{Receiver, Sender};
use futures_lite::future::or;
use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use inferd_proto::{
    decode_body, ErrorCode, FrameError, Limits, Request, Response, Welcome, HEADER_LEN,
    PROTOCOL_VERSION,
};

use super::access::Who;
use super::dispatch::{dispatch, Dispatch};
use super::in_flight::InFlight;
use super::wire::{completion_frame, encode, error_frame};
use super::Ctx;
use crate::error::RequestError;
use crate::framed::{first_byte, rest_of_frame, timeout, write_frame, ReadError};
use crate::metrics::{Listener, ListenerMetrics};
use crate::scheduler::Completion;

/// How many control frames (pongs, listings, request errors) may wait for the writer; past that the
/// reader stops reading, which pushes back on a peer that floods cheap requests.
const CONTROL_QUEUE: usize = 16;
/// Bytes read from the socket at a time: a peer that pipelines gets several frames per `recv` rather
/// than three system calls per frame (first byte, header, body); at 256 connections, 2 MiB in all.
const READ_BUFFER: usize = 8 << 10;
/// Answers that are ready when the writer wakes are sent in one `send` up to about this many bytes:
/// under load one system call carries many small answers instead of one each. Small frames are
/// copied together (at most twice this per busy connection); a larger one is written on its own.
const WRITE_BATCH: usize = 16 << 10;
/// After a fatal error frame, how long unread input is drained so that closing does not reset the
/// connection (a reset can destroy the error frame before the peer reads it).
const LINGER: Duration = Duration::from_millis(200);

/// Keeps the listener's open-connections gauge up while the connection lives.
struct Open<'a>(&'a ListenerMetrics);

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.open.dec();
    }
}

/// Serves one accepted connection until it closes. `identity` is the client certificate's, if any.
pub async fn serve<S>(
    stream: S,
    peer: SocketAddr,
    ctx: Arc<Ctx>,
    identity: Option<String>,
    listener: Listener,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let lm = ctx.metrics.listener(listener);
    lm.open.inc();
    let _open = Open(lm);
    let (reader, mut writer) = futures_lite::io::split(stream);
    let mut reader = futures_lite::io::BufReader::with_capacity(READ_BUFFER, reader);
    let limit = ctx.config.frame_timeout;
    match handshake(&mut reader, &ctx).await {
        Ok(client) => {
            log::debug!("{peer}: hello from {client:?}");
            let welcome = Response::Welcome(Welcome {
                version: PROTOCOL_VERSION,
                server: concat!("inferd/", env!("CARGO_PKG_VERSION")),
                limits: Limits {
                    max_frame_bytes: ctx.config.max_frame_bytes,
                    max_in_flight: ctx.config.max_in_flight,
                    idle_timeout_ms: ctx.config.idle_timeout_ms,
                },
            });
            let Some(frame) = encode(&welcome, &ctx) else {
                return;
            };
            if write_frame(&mut writer, &frame, limit).await.is_err() {
                return;
            }
        }
        Err(e) => {
            log::debug!("{peer}: handshake failed: {e}");
            if let Some(frame) = error_frame(None, &e, &ctx) {
                let _ = write_frame(&mut writer, &frame, limit).await;
            }
            linger(&mut reader, &mut writer).await;
            return;
        }
    }

    let max_in_flight = ctx.config.max_in_flight as usize;
    let in_flight = InFlight::new(max_in_flight);
    // Room for every request that may be in flight: a worker's try_send never finds it full.
    let (done_tx, done_rx) = async_channel::bounded::<Completion>(max_in_flight);
    let (ctl_tx, ctl_rx) = async_channel::bounded::<Vec<u8>>(CONTROL_QUEUE);
    let (dead_tx, dead_rx) = async_channel::bounded::<()>(1);

    let who = Who {
        peer,
        identity: identity.as_deref(),
    };
    let read_side = async {
        let close = or(
            read_loop(&mut reader, &ctx, &in_flight, &ctl_tx, &done_tx, who, lm),
            async {
                // The writer has stopped (peer gone or too slow): stop reading too.
                let _ = dead_rx.recv().await;
                Close::Now
            },
        )
        .await;
        if matches!(close, Close::Graceful) {
            or(in_flight.wait_empty(), async {
                let _ = dead_rx.recv().await;
            })
            .await;
            let e = RequestError::new(
                ErrorCode::SHUTTING_DOWN,
                "the server is shutting down: every request on this connection without an answer was not run",
            );
            // Not if the writer has stopped: nobody would take it, and a full queue would block.
            or(send_error(&ctl_tx, None, &e, &ctx), async {
                let _ = dead_rx.recv().await;
            })
            .await;
        }
        drop(ctl_tx);
        close
    };
    let write_side = async {
        write_loop(
            &mut writer,
            &ctx,
            &in_flight,
            &ctl_rx,
            &done_rx,
            who.peer,
            lm,
        )
        .await;
        drop(dead_tx);
        // Queued jobs of this connection see a closed channel and are skipped by the workers.
        drop(done_rx);
    };
    let (_close, ()) = futures_lite::future::zip(read_side, write_side).await;
    // Both ends of a close: the last frame must not be destroyed by a reset.
    linger(&mut reader, &mut writer).await;
    log::debug!("{peer}: closed");
}

/// Why the reader stopped.
enum Close {
    /// Drained shutdown: in-flight work is finished first.
    Graceful,
    /// Fatal error, or the peer closed: close after the control queue is written, abandoning what is
    /// still in flight.
    Now,
}

async fn handshake<R: AsyncRead + Unpin>(r: &mut R, ctx: &Ctx) -> Result<String, RequestError> {
    let c = &ctx.config;
    let read = async {
        let first = first_byte(r).await?;
        rest_of_frame(r, first, c.max_frame_bytes, c.frame_timeout).await
    };
    let body = match timeout(c.handshake_timeout, read).await {
        None => {
            return Err(RequestError::new(
                ErrorCode::TIMEOUT,
                "no hello within the handshake timeout",
            ))
        }
        Some(Ok(body)) => body,
        Some(Err(e)) => return Err(read_error(e)),
    };
    let hello = match decode_body::<Request>(&body) {
        Ok(Request::Hello(h))
            if h.min_version <= PROTOCOL_VERSION && PROTOCOL_VERSION <= h.max_version =>
        {
            Ok(h.client.to_owned())
        }
        Ok(Request::Hello(h)) => Err(RequestError::new(
            ErrorCode::UNSUPPORTED_VERSION,
            format!(
                "client speaks {}..={}, server speaks {PROTOCOL_VERSION}",
                h.min_version, h.max_version
            ),
        )),
        Ok(_) => Err(RequestError::new(
            ErrorCode::UNEXPECTED_MESSAGE,
            "the first message must be Hello",
        )),
        Err(e) => Err(RequestError::new(ErrorCode::MALFORMED_BODY, e.to_string())),
    };
    hello
}

fn read_error(e: ReadError) -> RequestError {
    match e {
        ReadError::Frame(f @ FrameError::TooLarge { .. }) => {
            RequestError::new(ErrorCode::FRAME_TOO_LARGE, f.to_string())
        }
        ReadError::Frame(f @ FrameError::UnsupportedVersion(_)) => {
            RequestError::new(ErrorCode::UNSUPPORTED_VERSION, f.to_string())
        }
        ReadError::Frame(f) => RequestError::new(ErrorCode::MALFORMED_HEADER, f.to_string()),
        ReadError::Timeout => RequestError::new(
            ErrorCode::TIMEOUT,
            "the frame did not arrive within the frame timeout",
        ),
        ReadError::Closed => RequestError::new(ErrorCode::MALFORMED_HEADER, "connection closed"),
        ReadError::Io(e) => RequestError::new(
            ErrorCode::MALFORMED_HEADER,
            format!("connection failed mid-frame: {e}"),
        ),
    }
}

async fn read_loop<R: AsyncRead + Unpin>(
    r: &mut R,
    ctx: &Ctx,
    in_flight: &InFlight,
    ctl: &Sender<Vec<u8>>,
    done: &Sender<Completion>,
    who: Who<'_>,
    lm: &ListenerMetrics,
) -> Close {
    let peer = who.peer;
    let c = &ctx.config;
    let mut draining = false;
    loop {
        let first = if draining {
            match or(async { Some(first_byte(r).await) }, async {
                in_flight.wait_empty().await;
                None
            })
            .await
            {
                Some(b) => b,
                None => return Close::Graceful,
            }
        } else {
            let next = or(
                async { Some(timeout(c.idle_timeout(), first_byte(r)).await) },
                async {
                    ctx.shutdown.wait_stopping().await;
                    None
                },
            );
            match next.await {
                None => {
                    draining = true;
                    continue;
                }
                Some(None) if !in_flight.is_empty() => continue,
                Some(None) => {
                    let e = RequestError::new(
                        ErrorCode::TIMEOUT,
                        format!("idle for {} ms", c.idle_timeout_ms),
                    );
                    send_error(ctl, None, &e, ctx).await;
                    return Close::Now;
                }
                Some(Some(b)) => b,
            }
        };
        // The request's receipt, from which its deadline counts.
        let received = Instant::now();
        let first = match first {
            Ok(b) => b,
            // The peer closed its side: everything it still has in flight is cancelled (queued jobs
            // are skipped by the workers), rather than computed for nobody.
            Err(ReadError::Closed) => return Close::Now,
            Err(e) => {
                log::debug!("{peer}: read failed: {e:?}");
                return Close::Now;
            }
        };
        let body = match rest_of_frame(r, first, c.max_frame_bytes, c.frame_timeout).await {
            Ok(body) => body,
            Err(ReadError::Io(e)) => {
                log::debug!("{peer}: connection failed mid-frame: {e}");
                return Close::Now;
            }
            Err(e) => {
                let e = read_error(e);
                log::debug!("{peer}: {e}");
                send_error(ctl, None, &e, ctx).await;
                return Close::Now;
            }
        };
        lm.received.inc_by((HEADER_LEN + body.len()) as u64);
        let request = match decode_body::<Request>(&body) {
            Ok(request) => request,
            Err(e) => {
                let e = RequestError::new(ErrorCode::MALFORMED_BODY, e.to_string());
                log::debug!("{peer}: {e}");
                send_error(ctl, None, &e, ctx).await;
                return Close::Now;
            }
        };
        let reply = match dispatch(request, ctx, in_flight, done, who, received) {
            Dispatch::Reply(frame) => frame,
            Dispatch::Fatal(e) => {
                send_error(ctl, None, &e, ctx).await;
                return Close::Now;
            }
        };
        if let Some(frame) = reply {
            if ctl.send(frame).await.is_err() {
                return Close::Now;
            }
        }
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    w: &mut W,
    ctx: &Ctx,
    in_flight: &InFlight,
    ctl: &Receiver<Vec<u8>>,
    done: &Receiver<Completion>,
    peer: SocketAddr,
    lm: &ListenerMetrics,
) {
    enum Next {
        Control(Vec<u8>),
        Done(Completion),
        Stop,
    }
    let limit = ctx.config.frame_timeout;
    // Frames ready together, written with as few sends as they allow; the answers among them,
    // recorded once written.
    let mut frames: Vec<Vec<u8>> = Vec::new();
    let mut finished: Vec<(Completion, Option<ErrorCode>)> = Vec::new();
    let mut joined: Vec<u8> = Vec::new();
    loop {
        // Control frames first: they are small and include the errors that end a connection.
        let next = or(
            async { ctl.recv().await.map_or(Next::Stop, Next::Control) },
            async {
                match done.recv().await {
                    Ok(c) => Next::Done(c),
                    // Never happens while the connection holds a sender; wait for the control side then.
                    Err(_) => futures_lite::future::pending().await,
                }
            },
        )
        .await;
        let mut next = Some(next);
        let mut bytes = 0;
        // Then whatever else is ready now, without waiting, up to WRITE_BATCH bytes.
        while let Some(item) = next.take() {
            match item {
                Next::Stop => break,
                Next::Control(frame) => {
                    bytes += frame.len();
                    frames.push(frame);
                }
                Next::Done(c) => {
                    let (frame, code) = completion_frame(&c, ctx);
                    if let Some(frame) = frame {
                        bytes += frame.len();
                        frames.push(frame);
                    }
                    finished.push((c, code));
                }
            }
            if bytes < WRITE_BATCH {
                next = match (ctl.try_recv(), done.try_recv()) {
                    (Ok(frame), Ok(c)) => {
                        // Both at once: the answer joins this batch too.
                        bytes += frame.len();
                        frames.push(frame);
                        Some(Next::Done(c))
                    }
                    (Ok(frame), Err(_)) => Some(Next::Control(frame)),
                    (Err(_), Ok(c)) => Some(Next::Done(c)),
                    (Err(_), Err(_)) => None,
                };
            }
        }
        if frames.is_empty() && finished.is_empty() {
            // Stop, with nothing left to write.
            break;
        }
        let written = write_frames(w, &frames, &mut joined, limit).await;
        frames.clear();
        if written.is_ok() {
            lm.sent.inc_by(bytes as u64);
        }
        for (c, code) in finished.drain(..) {
            in_flight.finish(c.id);
            if written.is_ok() {
                answered(c, code, peer, ctx);
            }
        }
        if let Err(e) = written {
            log::debug!("write failed: {e}");
            break;
        }
    }
    let _ = timeout(limit, w.close()).await;
}

/// Writes `frames` in order with as few sends as they allow: one frame as it is; several small ones
/// joined in `joined` first; one of `WRITE_BATCH` bytes or more on its own, not copied.
///
/// # Errors
/// The first write's error or timeout; what follows it is not written.
async fn write_frames<W: AsyncWrite + Unpin>(
    w: &mut W,
    frames: &[Vec<u8>],
    joined: &mut Vec<u8>,
    limit: Duration,
) -> std::io::Result<()> {
    if let [only] = frames {
        return write_frame(w, only, limit).await;
    }
    joined.clear();
    for frame in frames {
        if frame.len() < WRITE_BATCH {
            joined.extend_from_slice(frame);
            continue;
        }
        if !joined.is_empty() {
            write_frame(w, joined, limit).await?;
            joined.clear();
        }
        write_frame(w, frame, limit).await?;
    }
    if !joined.is_empty() {
        write_frame(w, joined, limit).await?;
        joined.clear();
    }
    Ok(())
}

/// Records an inference answer that reached the socket: its metrics, and a sampled access-log line.
fn answered(c: Completion, code: Option<ErrorCode>, peer: SocketAddr, ctx: &Ctx) {
    let Some(tracked) = c.tracked else { return };
    if super::access_log::sampled(ctx.config.access_log_sample) {
        log::info!(
            target: "inferd::access",
            "{peer} {} v{} id {} {} {} µs",
            c.model.name,
            c.model.version,
            c.id,
            code.map_or("ok", ErrorCode::name),
            tracked.admitted().elapsed().as_micros()
        );
    }
    tracked.answered(code);
}

async fn send_error(ctl: &Sender<Vec<u8>>, id: Option<u32>, e: &RequestError, ctx: &Ctx) {
    if let Some(frame) = error_frame(id, e, ctx) {
        let _ = ctl.send(frame).await;
    }
}

/// Half-closes, then reads and discards what the peer still sends for a moment, so that the close is
/// a FIN rather than a reset that could discard our last frame.
async fn linger<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(r: &mut R, w: &mut W) {
    let _ = timeout(LINGER, w.close()).await;
    let _ = timeout(LINGER, async {
        let mut sink = [0u8; 4096];
        let mut left: usize = 1 << 20;
        while left > 0 {
            match r.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::*;

    /// A writer that records each `write` call's bytes.
    #[derive(Default)]
    struct Sends(Vec<Vec<u8>>);

    impl AsyncWrite for Sends {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.0.push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn sends(frames: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let mut w = Sends::default();
        let mut joined = Vec::new();
        futures_lite::future::block_on(write_frames(
            &mut w,
            frames,
            &mut joined,
            Duration::from_secs(1),
        ))
        .unwrap();
        assert!(joined.is_empty(), "the join buffer is left empty");
        w.0
    }

    #[test]
    fn small_frames_go_out_together_and_large_ones_alone_in_order() {
        let big = vec![9u8; WRITE_BATCH];
        let frames = vec![vec![1, 1], vec![2], big.clone(), vec![3], vec![4, 4]];
        assert_eq!(
            sends(&frames),
            vec![vec![1, 1, 2], big.clone(), vec![3, 4, 4]]
        );
        assert_eq!(sends(&[vec![5]]), vec![vec![5]]);
        assert_eq!(sends(std::slice::from_ref(&big)), vec![big]);
        assert!(sends(&[]).is_empty());
    }
}
