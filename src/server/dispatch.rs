//! What each request does, once decoded: the cheap ones are answered on the spot, inference requests
//! are validated and queued, and `Cancel` reaches into the scheduler.

use std::time::{Duration, Instant};

use async_channel::Sender;
use inferd_proto::{ErrorCode, InferRequest, ModelEntry, ModelList, Request, Response, MAX_MODELS};

use super::access::Who;
use super::in_flight::InFlight;
use super::wire::{encode, error_frame, model_info};
use super::Ctx;
use crate::error::RequestError;
use crate::metrics::Tracked;
use crate::model::validate::validate;
use crate::model::Registry;
use crate::scheduler::{Completion, Job};
use crate::tensor::HostTensor;

/// What the connection does after a request.
pub enum Dispatch {
    /// Send this frame (if any) and read on.
    Reply(Option<Vec<u8>>),
    /// Send this error for the connection and close it.
    Fatal(RequestError),
}

/// Handles one decoded request, whose first byte the connection read at `received`.
pub fn dispatch(
    request: Request<'_>,
    ctx: &Ctx,
    in_flight: &InFlight,
    done: &Sender<Completion>,
    who: Who<'_>,
    received: Instant,
) -> Dispatch {
    let reply = match request {
        Request::Hello(_) => {
            return Dispatch::Fatal(RequestError::new(
                ErrorCode::UNEXPECTED_MESSAGE,
                "Hello may only be sent once",
            ));
        }
        Request::Ping { id } => encode(&Response::Pong { id }, ctx),
        Request::Health { id } => encode(
            &Response::Health {
                id,
                state: ctx.serving_state(),
            },
            ctx,
        ),
        Request::Stats { id } => {
            let snapshot = super::stats::Snapshot::take(ctx, who);
            let frame = encode(&Response::Stats(snapshot.report(id, ctx)), ctx);
            frame
        }
        // Not answered itself: the cancelled request is (CANCELLED if it had not started).
        Request::Cancel { id } => {
            if let Some(flag) = in_flight.cancel_flag(id) {
                ctx.scheduler.cancel(&flag);
            }
            None
        }
        Request::ListModels { id } => {
            let snapshot = ctx.models.snapshot();
            let frame = encode(&list_models(id, &snapshot, ctx, who), ctx);
            frame
        }
        // Reload reads a few small files; done inline, it delays this connection's reads by a
        // moment and nothing else. The model rescan it asks for runs on the repository's thread.
        Request::Reload { id } => match who.may_admin(ctx).and_then(|()| {
            ctx.reload().map_err(|e| {
                RequestError::new(
                    ErrorCode::INTERNAL,
                    format!("reload failed, the previous material stays in force: {e}"),
                )
            })
        }) {
            Ok(()) => {
                log::info!(
                    "{}: reloaded TLS material and access policy; model rescan queued",
                    who.peer
                );
                encode(&Response::Done { id }, ctx)
            }
            Err(e) => error_frame(Some(id), &e, ctx),
        },
        Request::ModelInfo(q) => match who
            .may_use(ctx, q.model)
            .and_then(|()| ctx.models.snapshot().get(q.model, q.version))
        {
            Ok(m) => match model_info(q.id, &m) {
                Ok(info) => encode(&Response::ModelInfo(info), ctx),
                Err(e) => error_frame(Some(q.id), &e, ctx),
            },
            Err(e) => error_frame(Some(q.id), &e, ctx),
        },
        Request::Infer(q) => match who
            .may_use(ctx, q.model)
            .and_then(|()| admit(&q, ctx, in_flight, done, received))
        {
            Ok(()) => None,
            Err(e) => {
                log::debug!("{}: request {} refused: {e}", who.peer, q.id);
                if ctx.config.metrics {
                    // Only known model versions get series of their own.
                    match ctx.models.snapshot().get(q.model, q.version) {
                        Ok(m) => {
                            ctx.metrics.model(&m).refused(e.code);
                        }
                        _ => ctx.metrics.refused_unresolved(e.code),
                    }
                }
                error_frame(Some(q.id), &e, ctx)
            }
        },
    };
    Dispatch::Reply(reply)
}

/// Validates an inference request and queues it. On success the id is in flight until its completion
/// has been written.
fn admit(
    q: &InferRequest<'_>,
    ctx: &Ctx,
    in_flight: &InFlight,
    done: &Sender<Completion>,
    received: Instant,
) -> Result<(), RequestError> {
    if ctx.shutdown.is_stopping() {
        return Err(RequestError::new(
            ErrorCode::SHUTTING_DOWN,
            "the server is shutting down",
        ));
    }
    let snapshot = ctx.models.snapshot();
    let model = snapshot.get(q.model, q.version).inspect_err(|e| {
        if e.code == ErrorCode::NOT_LOADED {
            // A model loaded on demand: ask for it; the client retries.
            ctx.models.demand(q.model);
            ctx.request_rescan();
        }
    })?;
    model.touch();
    let order = validate(model.runtime.inputs(), &q.inputs)?;
    let scheduling = snapshot.scheduling(&model.name);
    // The model's own default deadline, capped by the daemon's; a request may only shorten it.
    let default = scheduling
        .deadline
        .map_or(ctx.config.default_deadline, |d| {
            d.min(ctx.config.default_deadline)
        });
    let allowed = q.deadline_ms.map_or(default, |ms| {
        Duration::from_millis(u64::from(ms)).min(default)
    });
    // From the request's receipt, not from here: a large frame read slowly has used part of its
    // deadline before it could be decoded, and the client counts that time too.
    let deadline = received.checked_add(allowed).unwrap_or(received);
    let now = Instant::now();
    let cancel = in_flight.admit(q.id)?;
    let tracked = ctx
        .config
        .metrics
        .then(|| Tracked::admit(ctx.metrics.model(&model), now, deadline));
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
        tracked,
        scheduling,
    };
    ctx.scheduler
        .submit(job)
        .inspect_err(|_| in_flight.finish(q.id))
}

fn list_models<'r>(id: u32, snapshot: &'r Registry, ctx: &Ctx, who: Who<'_>) -> Response<'r> {
    let mut models = heapless::Vec::<ModelEntry<'_>, MAX_MODELS>::new();
    let mut truncated = false;
    let access = ctx.access();
    for m in snapshot
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
