//! What the client returns: owned results and a typed error.

use std::sync::Arc;

use inferd_proto::{Dim, ErrorCode, Response, ServingState, TensorInfo};

use crate::model::{DimSpec, IoSpec};
use crate::tensor::HostTensor;

/// Why a client call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error code.
    #[error("server error {code}: {message}")]
    Server {
        /// The wire code.
        code: ErrorCode,
        /// The server's message.
        message: String,
        /// With `OVERLOADED`: when the server expects a retry to be admitted.
        retry_after: Option<std::time::Duration>,
    },
    /// The network failed.
    #[error("i/o: {0}")]
    Io(Arc<std::io::Error>),
    /// No answer in time.
    #[error("timed out")]
    Timeout,
    /// The connection is closed.
    #[error("{0}")]
    Closed(String),
    /// The server sent something this client does not understand.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The call itself was invalid (too many inputs, too large).
    #[error("invalid request: {0}")]
    Invalid(String),
}

impl ClientError {
    /// The server's retry-after hint, if it gave one (with `OVERLOADED`).
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            ClientError::Server { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The server's error code, if the server refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        ClientError::Io(Arc::new(e))
    }
}

/// A successful inference.
#[derive(Debug, Clone, PartialEq)]
pub struct InferOutput {
    /// Model name.
    pub model: String,
    /// The version that answered.
    pub version: u32,
    /// Outputs in the model's order.
    pub outputs: Vec<HostTensor>,
}

impl InferOutput {
    /// The output called `name`.
    pub fn output(&self, name: &str) -> Option<&HostTensor> {
        self.outputs.iter().find(|t| t.name == name)
    }
}

/// Served model versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelListing {
    /// `(name, version)`, sorted.
    pub models: Vec<(String, u32)>,
    /// The server had more than one listing holds.
    pub truncated: bool,
}

/// A model's description.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelDescription {
    /// Model name.
    pub name: String,
    /// Version described.
    pub version: u32,
    /// Batch axis, if any.
    pub batch_axis: Option<u8>,
    /// One-line description.
    pub description: String,
    /// Declared inputs.
    pub inputs: Vec<IoSpec>,
    /// Declared outputs.
    pub outputs: Vec<IoSpec>,
}

/// A server's counters (`Stats`), owned. See [`inferd_proto::StatsReport`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerStats {
    /// Time since the server started.
    pub uptime: std::time::Duration,
    /// Readiness.
    pub state: ServingState,
    /// Open connections.
    pub connections: u32,
    /// Per model version the client may use, sorted.
    pub models: Vec<ModelCounters>,
    /// The server had more versions than one report holds.
    pub truncated: bool,
}

/// One model version's counters in [`ServerStats`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelCounters {
    /// Model name.
    pub name: String,
    /// Version.
    pub version: u32,
    /// Answered with outputs, since start.
    pub ok: u64,
    /// Answered with an error, since start.
    pub errors: u64,
    /// Waiting for a worker now.
    pub queued: u32,
    /// Admitted and unanswered now.
    pub in_flight: u32,
    /// Cumulative end-to-end latency counts per [`inferd_proto::LATENCY_BUCKETS_US`] bound, then the
    /// total.
    pub latency: Vec<u64>,
    /// Sum of those latencies, microseconds.
    pub latency_sum_us: u64,
}

/// A decoded response, owned, routed to the call that waits for it.
#[derive(Debug)]
pub(crate) enum Reply {
    Infer(InferOutput),
    Models(ModelListing),
    Info(ModelDescription),
    Pong,
    Done,
    Health(ServingState),
    Stats(ServerStats),
    Failed(ClientError),
}

impl Reply {
    pub(crate) fn from_response(r: Response<'_>) -> Reply {
        match r {
            Response::InferResult(r) => Reply::Infer(InferOutput {
                model: r.model.to_owned(),
                version: r.version,
                outputs: r.outputs.iter().map(HostTensor::from_wire).collect(),
            }),
            Response::Models(m) => Reply::Models(ModelListing {
                models: m
                    .models
                    .iter()
                    .map(|e| (e.name.to_owned(), e.version))
                    .collect(),
                truncated: m.truncated,
            }),
            Response::ModelInfo(i) => Reply::Info(ModelDescription {
                name: i.name.to_owned(),
                version: i.version,
                batch_axis: i.batch_axis,
                description: i.description.to_owned(),
                inputs: i.inputs.iter().map(spec).collect(),
                outputs: i.outputs.iter().map(spec).collect(),
            }),
            Response::Pong { .. } => Reply::Pong,
            Response::Health { state, .. } => Reply::Health(state),
            Response::Stats(s) => Reply::Stats(ServerStats {
                uptime: std::time::Duration::from_millis(s.uptime_ms),
                state: s.state,
                connections: s.connections,
                models: s
                    .models
                    .iter()
                    .map(|m| ModelCounters {
                        name: m.name.to_owned(),
                        version: m.version,
                        ok: m.ok,
                        errors: m.errors,
                        queued: m.queued,
                        in_flight: m.in_flight,
                        latency: m.latency.to_vec(),
                        latency_sum_us: m.latency_sum_us,
                    })
                    .collect(),
                truncated: s.truncated,
            }),
            Response::Done { .. } => Reply::Done,
            Response::Error(e) => Reply::Failed(ClientError::Server {
                code: e.code,
                message: e.message.to_owned(),
                retry_after: e
                    .retry_after_ms
                    .map(|ms| std::time::Duration::from_millis(u64::from(ms))),
            }),
            Response::Welcome(_) => {
                Reply::Failed(ClientError::Protocol("unexpected Welcome".into()))
            }
        }
    }

    /// The error this reply carries, or a protocol error if it was not the expected kind.
    pub(crate) fn into_error(self) -> ClientError {
        match self {
            Reply::Failed(e) => e,
            _ => ClientError::Protocol("the server answered with the wrong message type".into()),
        }
    }
}

fn spec(t: &TensorInfo<'_>) -> IoSpec {
    IoSpec {
        name: t.name.to_owned(),
        dtype: t.dtype,
        shape: t
            .shape
            .iter()
            .map(|d| match d {
                Dim::Fixed(n) => DimSpec::Fixed(*n),
                Dim::Symbol(s) => DimSpec::Symbol((*s).to_owned()),
            })
            .collect(),
    }
}
