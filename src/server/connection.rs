//! One client connection: the handshake, then a reader and a writer running side by side.
//!
//! The reader decodes requests, answers the cheap ones (ping, listings) through a small control queue,
//! and admits inference requests to the scheduler. The writer sends control frames first, then
//! completions as workers finish them, in whatever order that is: responses carry the request id.
//! Framing errors close the connection after one `Error` frame; request errors answer that request
//! and nothing else. When shutdown begins the reader keeps answering (`SHUTTING_DOWN` to new inference
//! requests) until the connection's in-flight requests are all written, then closes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_channel::{Receiver, Sender};
use futures_lite::future::or;
use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use inferd_proto::codec::encode_frame_vec;
use inferd_proto::{
    decode_body, ErrorCode, ErrorResponse, FrameError, InferRequest, InferResponse, Limits,
    ModelEntry, ModelList, Request, Response, Welcome, MAX_MODELS, PROTOCOL_VERSION,
};

use super::in_flight::InFlight;
use super::wire::{model_info, outputs_to_wire};
use super::Ctx;
use crate::error::RequestError;
use crate::framed::{first_byte, rest_of_frame, timeout, write_frame, ReadError};
use crate::model::validate::validate;
use crate::scheduler::{Completion, Job};
use crate::tensor::HostTensor;

/// How many control frames (pongs, listings, request errors) may wait for the writer; past that the
/// reader stops reading, which pushes back on a peer that floods cheap requests.
const CONTROL_QUEUE: usize = 16;
/// After a fatal error frame, how long unread input is drained so that closing does not reset the
/// connection (a reset can destroy the error frame before the peer reads it).
const LINGER: Duration = Duration::from_millis(200);

/// Serves one accepted connection until it closes. `identity` is the client certificate's, if any.
pub async fn serve<S>(stream: S, peer: SocketAddr, ctx: Arc<Ctx>, identity: Option<String>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (mut reader, mut writer) = futures_lite::io::split(stream);
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
            read_loop(&mut reader, &ctx, &in_flight, &ctl_tx, &done_tx, who),
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
        }
        drop(ctl_tx);
        close
    };
    let write_side = async {
        write_loop(&mut writer, &ctx, &in_flight, &ctl_rx, &done_rx).await;
        drop(dead_tx);
        // Queued jobs of this connection see a closed channel and are skipped by the workers.
        drop(done_rx);
    };
    let (close, ()) = futures_lite::future::zip(read_side, write_side).await;
    if matches!(close, Close::Now) {
        linger(&mut reader, &mut writer).await;
    }
    log::debug!("{peer}: closed");
}

/// Who is on the other end: for logs and access checks.
#[derive(Debug, Clone, Copy)]
struct Who<'a> {
    peer: SocketAddr,
    identity: Option<&'a str>,
}

impl Who<'_> {
    fn may_use(&self, ctx: &Ctx, model: &str) -> Result<(), RequestError> {
        if ctx.access().may_use(self.identity, model) {
            return Ok(());
        }
        ctx.refusals.not_authorized();
        let who = self.identity.unwrap_or("an anonymous client");
        Err(RequestError::new(
            ErrorCode::NOT_AUTHORIZED,
            format!("{who} may not use model {model:?}"),
        ))
    }
}

impl Who<'_> {
    /// Admin operations: an identity granted `admin`, or (if configured) a loopback peer without one.
    fn may_admin(&self, ctx: &Ctx) -> Result<(), RequestError> {
        let local =
            self.identity.is_none() && ctx.config.admin_loopback && self.peer.ip().is_loopback();
        if local || ctx.access().may_admin(self.identity) {
            return Ok(());
        }
        ctx.refusals.not_authorized();
        let who = self.identity.unwrap_or("an anonymous remote client");
        Err(RequestError::new(
            ErrorCode::NOT_AUTHORIZED,
            format!("{who} may not use admin operations"),
        ))
    }
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
                    ctx.shutdown.wait().await;
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
        let request = match decode_body::<Request>(&body) {
            Ok(request) => request,
            Err(e) => {
                let e = RequestError::new(ErrorCode::MALFORMED_BODY, e.to_string());
                log::debug!("{peer}: {e}");
                send_error(ctl, None, &e, ctx).await;
                return Close::Now;
            }
        };
        let reply = match request {
            Request::Hello(_) => {
                let e =
                    RequestError::new(ErrorCode::UNEXPECTED_MESSAGE, "Hello may only be sent once");
                send_error(ctl, None, &e, ctx).await;
                return Close::Now;
            }
            Request::Ping { id } => encode(&Response::Pong { id }, ctx),
            // Not answered itself: the cancelled request is (CANCELLED if it had not started).
            Request::Cancel { id } => {
                if let Some(flag) = in_flight.cancel_flag(id) {
                    ctx.scheduler.cancel(&flag);
                }
                None
            }
            Request::ListModels { id } => encode(&list_models(id, ctx, who), ctx),
            // Reload reads a few small files; done inline, it delays this connection's reads by a
            // moment and nothing else.
            Request::Reload { id } => match who.may_admin(ctx).and_then(|()| {
                ctx.reload().map_err(|e| {
                    RequestError::new(
                        ErrorCode::INTERNAL,
                        format!("reload failed, the previous material stays in force: {e}"),
                    )
                })
            }) {
                Ok(()) => {
                    log::info!("{peer}: reloaded TLS material and access policy");
                    encode(&Response::Done { id }, ctx)
                }
                Err(e) => error_frame(Some(id), &e, ctx),
            },
            Request::ModelInfo(q) => match who
                .may_use(ctx, q.model)
                .and_then(|()| ctx.registry.get(q.model, q.version))
            {
                Ok(m) => match model_info(q.id, &m) {
                    Ok(info) => encode(&Response::ModelInfo(info), ctx),
                    Err(e) => error_frame(Some(q.id), &e, ctx),
                },
                Err(e) => error_frame(Some(q.id), &e, ctx),
            },
            Request::Infer(q) => match who
                .may_use(ctx, q.model)
                .and_then(|()| admit(&q, ctx, in_flight, done))
            {
                Ok(()) => None,
                Err(e) => {
                    log::debug!("{peer}: request {} refused: {e}", q.id);
                    error_frame(Some(q.id), &e, ctx)
                }
            },
        };
        if let Some(frame) = reply {
            if ctl.send(frame).await.is_err() {
                return Close::Now;
            }
        }
    }
}

/// Validates an inference request and queues it. On success the id is in flight until its completion
/// has been written.
fn admit(
    q: &InferRequest<'_>,
    ctx: &Ctx,
    in_flight: &InFlight,
    done: &Sender<Completion>,
) -> Result<(), RequestError> {
    if ctx.shutdown.is_triggered() {
        return Err(RequestError::new(
            ErrorCode::SHUTTING_DOWN,
            "the server is shutting down",
        ));
    }
    let model = ctx.registry.get(q.model, q.version)?;
    let order = validate(model.runtime.inputs(), &q.inputs)?;
    let default = ctx.config.default_deadline;
    let allowed = q.deadline_ms.map_or(default, |ms| {
        Duration::from_millis(u64::from(ms)).min(default)
    });
    let now = Instant::now();
    let deadline = now.checked_add(allowed).unwrap_or(now);
    let cancel = in_flight.admit(q.id)?;
    let inputs: Vec<HostTensor> = order
        .iter()
        .map(|&i| HostTensor::from_wire(&q.inputs[i]))
        .collect();
    let job = Job {
        id: q.id,
        model,
        inputs,
        deadline,
        reply: done.clone(),
        cancel,
    };
    ctx.scheduler
        .submit(job)
        .inspect_err(|_| in_flight.finish(q.id))
}

fn list_models<'c>(id: u32, ctx: &'c Ctx, who: Who<'_>) -> Response<'c> {
    let mut models = heapless::Vec::<ModelEntry<'_>, MAX_MODELS>::new();
    let mut truncated = false;
    let access = ctx.access();
    for m in ctx
        .registry
        .all()
        .filter(|m| access.may_use(who.identity, &m.name))
    {
        if models
            .push(ModelEntry {
                name: &m.name,
                version: m.version,
            })
            .is_err()
        {
            truncated = true;
            break;
        }
    }
    Response::Models(ModelList {
        id,
        models,
        truncated,
    })
}

async fn write_loop<W: AsyncWrite + Unpin>(
    w: &mut W,
    ctx: &Ctx,
    in_flight: &InFlight,
    ctl: &Receiver<Vec<u8>>,
    done: &Receiver<Completion>,
) {
    enum Next {
        Control(Vec<u8>),
        Done(Completion),
        Stop,
    }
    let limit = ctx.config.frame_timeout;
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
        let (frame, finished) = match next {
            Next::Stop => break,
            Next::Control(frame) => (Some(frame), None),
            Next::Done(c) => (completion_frame(&c, ctx), Some(c.id)),
        };
        let written = match frame {
            Some(frame) => write_frame(w, &frame, limit).await,
            None => Ok(()),
        };
        if let Some(id) = finished {
            in_flight.finish(id);
        }
        if let Err(e) = written {
            log::debug!("write failed: {e}");
            break;
        }
    }
    let _ = timeout(limit, w.close()).await;
}

fn completion_frame(c: &Completion, ctx: &Ctx) -> Option<Vec<u8>> {
    let outputs = match &c.result {
        Ok(outputs) => outputs,
        Err(e) => return error_frame(Some(c.id), e, ctx),
    };
    let response = outputs_to_wire(outputs).map(|outputs| {
        Response::InferResult(InferResponse {
            id: c.id,
            model: &c.model.name,
            version: c.model.version,
            outputs,
        })
    });
    let encoded = response.and_then(|r| {
        encode_frame_vec(&r, ctx.config.max_frame_bytes).map_err(|_| {
            RequestError::new(
                ErrorCode::RESPONSE_TOO_LARGE,
                format!(
                    "the outputs exceed max_frame_bytes ({})",
                    ctx.config.max_frame_bytes
                ),
            )
        })
    });
    match encoded {
        Ok(frame) => Some(frame),
        Err(e) => error_frame(Some(c.id), &e, ctx),
    }
}

fn encode(response: &Response<'_>, ctx: &Ctx) -> Option<Vec<u8>> {
    match encode_frame_vec(response, ctx.config.max_frame_bytes) {
        Ok(frame) => Some(frame),
        Err(e) => {
            log::error!("cannot encode a {:?} response: {e}", response.id());
            let err = RequestError::new(ErrorCode::RESPONSE_TOO_LARGE, e.to_string());
            error_frame(response.id(), &err, ctx)
        }
    }
}

fn error_frame(id: Option<u32>, e: &RequestError, ctx: &Ctx) -> Option<Vec<u8>> {
    // Messages are ours and short, but keep them far from any frame limit.
    let message: String = e.message.chars().take(1024).collect();
    let response = Response::Error(ErrorResponse {
        id,
        code: e.code,
        message: &message,
    });
    encode_frame_vec(&response, ctx.config.max_frame_bytes).ok()
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
