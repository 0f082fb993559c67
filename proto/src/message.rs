//! Request and response bodies.
//!
//! A frame body is exactly one [`Request`] (client → server) or one [`Response`] (server → client).
//! Both enums, and every enum inside them, are append-only: postcard writes a variant as the varint of
//! its declaration index, so a new message is added at the end and old indices never change. Structs
//! are encoded as their fields in order; a field is never added to an existing struct (that would
//! change its encoding): a new variant carrying a new struct is added instead.

use heapless::Vec;
use serde::{Deserialize, Serialize};

use crate::{ErrorCode, Tensor, TensorInfo, LATENCY_BUCKETS, MAX_MODELS, MAX_TENSORS};

/// Client → server.
#[allow(
    clippy::large_enum_variant,
    reason = "no_std and allocation-free: tensors live inline in bounded lists, so boxing is not an option"
)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request<'a> {
    /// Must be the first message on a connection. Index 0.
    #[serde(borrow)]
    Hello(Hello<'a>),
    /// Run a model. Index 1.
    #[serde(borrow)]
    Infer(InferRequest<'a>),
    /// List the served models and versions. Index 2.
    ListModels {
        /// Request id echoed in the answer.
        id: u32,
    },
    /// Describe one model's inputs and outputs. Index 3.
    #[serde(borrow)]
    ModelInfo(ModelInfoRequest<'a>),
    /// Liveness check of the connection and server. Index 4.
    Ping {
        /// Request id echoed in the `Pong`.
        id: u32,
    },
    /// Admin: re-read TLS material and the access policy (what SIGHUP does). Answered `Done`, or
    /// `NOT_AUTHORIZED` unless the connection may use admin operations. Index 5.
    Reload {
        /// Request id echoed in the `Done`.
        id: u32,
    },
    /// Cancel the in-flight `Infer` request `id` of this connection. Not answered itself: the
    /// cancelled request is answered `CANCELLED` if it had not started, else as usual. Index 6.
    Cancel {
        /// The request to cancel.
        id: u32,
    },
    /// Is the server ready to take traffic? Answered `Health`, also while draining. Meant for load
    /// balancers that check the real protocol (a TCP health check sends `Hello` then this). Index 7.
    Health {
        /// Request id echoed in the `Health` answer.
        id: u32,
    },
    /// Counters and latency histograms per model, for `inferd stats` / `inferd top`. Index 8.
    Stats {
        /// Request id echoed in the `Stats` answer.
        id: u32,
    },
}

impl Request<'_> {
    /// The request id, for every message that has one (all but `Hello`).
    pub fn id(&self) -> Option<u32> {
        match self {
            Request::Hello(_) => None,
            Request::Infer(r) => Some(r.id),
            Request::ListModels { id }
            | Request::Ping { id }
            | Request::Reload { id }
            | Request::Cancel { id }
            | Request::Health { id }
            | Request::Stats { id } => Some(*id),
            Request::ModelInfo(r) => Some(r.id),
        }
    }
}

/// Server → client.
#[allow(
    clippy::large_enum_variant,
    reason = "no_std and allocation-free: tensors live inline in bounded lists, so boxing is not an option"
)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response<'a> {
    /// Answer to `Hello`: the chosen version and the server's limits. Index 0.
    #[serde(borrow)]
    Welcome(Welcome<'a>),
    /// Outputs of a successful `Infer`. Index 1.
    #[serde(borrow)]
    InferResult(InferResponse<'a>),
    /// A request (or, with `id: None`, the connection) failed. Index 2.
    #[serde(borrow)]
    Error(ErrorResponse<'a>),
    /// Answer to `ListModels`. Index 3.
    #[serde(borrow)]
    Models(ModelList<'a>),
    /// Answer to `ModelInfo`. Index 4.
    #[serde(borrow)]
    ModelInfo(ModelInfo<'a>),
    /// Answer to `Ping`. Index 5.
    Pong {
        /// The ping's request id.
        id: u32,
    },
    /// An admin operation completed. Index 6.
    Done {
        /// The operation's request id.
        id: u32,
    },
    /// Answer to `Health`. Index 7.
    Health {
        /// The health request's id.
        id: u32,
        /// Whether the server takes traffic.
        state: ServingState,
    },
    /// Answer to `Stats`. Index 8.
    #[serde(borrow)]
    Stats(StatsReport<'a>),
}

impl Response<'_> {
    /// The request id this answers; `None` for `Welcome` and connection-level errors.
    pub fn id(&self) -> Option<u32> {
        match self {
            Response::Welcome(_) => None,
            Response::InferResult(r) => Some(r.id),
            Response::Error(e) => e.id,
            Response::Models(m) => Some(m.id),
            Response::ModelInfo(m) => Some(m.id),
            Response::Pong { id } | Response::Done { id } | Response::Health { id, .. } => {
                Some(*id)
            }
            Response::Stats(s) => Some(s.id),
        }
    }
}

/// Opens a connection: the range of protocol versions the client speaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello<'a> {
    /// Oldest version the client speaks.
    pub min_version: u8,
    /// Newest version the client speaks.
    pub max_version: u8,
    /// Free-form client name and version, for the server's logs.
    pub client: &'a str,
}

/// The server's limits, stated in `Welcome` so a client can stay within them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest frame body the server accepts, and the largest it sends.
    pub max_frame_bytes: u32,
    /// Most requests one connection may have outstanding.
    pub max_in_flight: u32,
    /// A connection with nothing in flight and no frame for this long is closed.
    pub idle_timeout_ms: u32,
}

/// Answer to `Hello`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome<'a> {
    /// The version both sides now speak (the highest in common).
    pub version: u8,
    /// Server name and version, e.g. `inferd/0.1.0`.
    pub server: &'a str,
    /// The server's limits.
    pub limits: Limits,
}

/// Run one model on one set of inputs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InferRequest<'a> {
    /// Chosen by the client, unique among its outstanding requests on this connection.
    pub id: u32,
    /// Model name.
    pub model: &'a str,
    /// A specific version, or `None` for the newest served one.
    pub version: Option<u32>,
    /// Milliseconds from the server's receipt of this frame after which the result is useless; the
    /// server then answers `DEADLINE_EXCEEDED` without computing it. `None`: the server's default.
    pub deadline_ms: Option<u32>,
    /// Named inputs, in any order.
    #[serde(borrow)]
    pub inputs: Vec<Tensor<'a>, MAX_TENSORS>,
}

/// Outputs of one inference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InferResponse<'a> {
    /// The request's id.
    pub id: u32,
    /// Model name.
    pub model: &'a str,
    /// The version that computed this answer.
    pub version: u32,
    /// Named outputs, in the model's declared order.
    #[serde(borrow)]
    pub outputs: Vec<Tensor<'a>, MAX_TENSORS>,
}

/// A failed request, or with `id: None` a failed connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse<'a> {
    /// The failed request's id; `None` when the error concerns the connection (framing, handshake).
    pub id: Option<u32>,
    /// Machine-readable cause.
    pub code: ErrorCode,
    /// Human-readable detail; never contains tensor data.
    pub message: &'a str,
    /// For `OVERLOADED`: the server's estimate of when a retry may be admitted, in milliseconds (the
    /// work queued ahead of it times the model's measured service time). `None` when it has none.
    pub retry_after_ms: Option<u32>,
}

/// Asks for one model's description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfoRequest<'a> {
    /// Request id.
    pub id: u32,
    /// Model name.
    pub model: &'a str,
    /// A specific version, or `None` for the newest.
    pub version: Option<u32>,
}

/// One served model version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelEntry<'a> {
    /// Model name.
    pub name: &'a str,
    /// Version number.
    pub version: u32,
}

/// Answer to `ListModels`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelList<'a> {
    /// Request id.
    pub id: u32,
    /// Served model versions, sorted by name then version.
    #[serde(borrow)]
    pub models: Vec<ModelEntry<'a>, MAX_MODELS>,
    /// More versions are served than one listing holds.
    pub truncated: bool,
}

/// Answer to `ModelInfo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo<'a> {
    /// Request id.
    pub id: u32,
    /// Model name.
    pub name: &'a str,
    /// The version described.
    pub version: u32,
    /// If the server batches this model's requests: the axis of the first input that holds the rows.
    /// Every other input and output holds them where the same symbol (`N`) is in its shape.
    pub batch_axis: Option<u8>,
    /// One-line description from the manifest (may be empty).
    pub description: &'a str,
    /// Declared inputs, in the model's order.
    #[serde(borrow)]
    pub inputs: Vec<TensorInfo<'a>, MAX_TENSORS>,
    /// Declared outputs, in the model's order.
    #[serde(borrow)]
    pub outputs: Vec<TensorInfo<'a>, MAX_TENSORS>,
}

/// A server's readiness, as `Health` reports it. Append-only like every enum here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServingState {
    /// Every pinned model is loaded and warm, and the server is not draining: send traffic. Index 0.
    Ready,
    /// Alive but not (yet) able to serve every pinned model. Index 1.
    NotReady,
    /// Shutdown has begun: requests already sent are finished, new traffic belongs elsewhere. Index 2.
    Draining,
}

/// Answer to `Stats`: counts since the server started. Rates and percentiles over an interval are the
/// difference of two reports, the way Prometheus derives them from counters and histograms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsReport<'a> {
    /// Request id.
    pub id: u32,
    /// Milliseconds since the server started.
    pub uptime_ms: u64,
    /// Readiness, as `Health` would answer.
    pub state: ServingState,
    /// Open connections.
    pub connections: u32,
    /// Per served model version, sorted by name then version.
    #[serde(borrow)]
    pub models: Vec<ModelStats<'a>, MAX_MODELS>,
    /// More versions are served than one report holds.
    pub truncated: bool,
}

/// One model version's counters in a [`StatsReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelStats<'a> {
    /// Model name.
    pub name: &'a str,
    /// Version number.
    pub version: u32,
    /// Inference requests answered with outputs.
    pub ok: u64,
    /// Inference requests answered with an error (refused, expired, cancelled or failed).
    pub errors: u64,
    /// Requests waiting for a worker now.
    pub queued: u32,
    /// Requests admitted and not yet answered now (queued or running).
    pub in_flight: u32,
    /// End-to-end latency of answered requests: cumulative counts of those at or under each bound of
    /// [`LATENCY_BUCKETS_US`](crate::LATENCY_BUCKETS_US), then the total count (the `+Inf` bucket).
    pub latency: Vec<u64, LATENCY_BUCKETS>,
    /// Sum of those latencies, microseconds.
    pub latency_sum_us: u64,
}
