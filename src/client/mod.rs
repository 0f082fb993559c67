//! The Rust client: one connection, many requests in flight (pipelining), a deadline per request.
//!
//! Requests are written as they are made; a reader task matches responses to requests by id, in
//! whatever order they arrive. The client never has more requests outstanding than the server's
//! stated `max_in_flight`: further calls wait for a slot. [`BlockingClient`] wraps it for code
//! without an executor.

mod blocking;
pub mod http;
mod tls;
mod types;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_channel::Sender;
use async_io::Async;
use futures_lite::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use inferd_proto::codec::encode_frame_vec;
use inferd_proto::{
    decode_body, Hello, InferRequest, Limits, ModelInfoRequest, Request, Response, ServingState,
    MAX_TENSORS, PROTOCOL_VERSION,
};

use crate::framed::{first_byte, rest_of_frame, timeout, write_frame, ReadError};
use crate::tensor::HostTensor;

pub use blocking::BlockingClient;
pub use tls::ClientTls;
use types::Reply;
pub use types::{
    ClientError, InferOutput, ModelCounters, ModelDescription, ModelListing, ServerStats,
};

/// Connection settings of a client.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Speak TLS, with these settings; `None`: plain TCP.
    pub tls: Option<ClientTls>,
    /// Time to connect and complete the handshake.
    pub connect_timeout: Duration,
    /// How long a request without a deadline waits for its answer.
    pub request_timeout: Duration,
    /// Largest response body accepted (the server's own limit is also respected).
    pub max_frame_bytes: u32,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            tls: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            max_frame_bytes: 64 << 20,
        }
    }
}

/// Extra time allowed beyond a request's deadline for the answer to travel back.
const NETWORK_GRACE: Duration = Duration::from_secs(1);

/// A plain or TLS byte stream.
trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}
type BoxStream = Box<dyn Stream>;
type Reader = ReadHalf<BoxStream>;
type Writer = WriteHalf<BoxStream>;
type Pending = Mutex<HashMap<u32, Sender<Reply>>>;

/// An async inferd client. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct Client {
    writer: async_lock::Mutex<Writer>,
    pending: Arc<Pending>,
    closed: Arc<Mutex<Option<ClientError>>>,
    next_id: AtomicU32,
    slots: async_lock::Semaphore,
    limits: Limits,
    server: String,
    options: ClientOptions,
    _reader: smol::Task<()>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.server)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects with default options.
    ///
    /// # Errors
    /// Connection, handshake or version failures.
    pub async fn connect(addr: SocketAddr) -> Result<Client, ClientError> {
        Client::connect_with(addr, ClientOptions::default()).await
    }

    /// Connects and completes the Hello/Welcome handshake.
    ///
    /// # Errors
    /// [`ClientError::Io`], [`ClientError::Timeout`], or the server's refusal.
    pub async fn connect_with(
        addr: SocketAddr,
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        let handshake = async {
            let tcp = Async::<TcpStream>::connect(addr).await?;
            tcp.get_ref().set_nodelay(true)?;
            let stream: BoxStream = match &options.tls {
                Some(tls) => {
                    let connector = futures_rustls::TlsConnector::from(Arc::clone(&tls.config));
                    Box::new(connector.connect(tls.server_name.clone(), tcp).await?)
                }
                None => Box::new(tcp),
            };
            let (mut reader, mut writer) = futures_lite::io::split(stream);
            let hello = Request::Hello(Hello {
                min_version: PROTOCOL_VERSION,
                max_version: PROTOCOL_VERSION,
                client: concat!("inferd-client/", env!("CARGO_PKG_VERSION")),
            });
            let frame = encode_frame_vec(&hello, u32::MAX)
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
            write_frame(&mut writer, &frame, options.connect_timeout).await?;
            let body = read_frame(&mut reader, &options).await?;
            let welcome = match decode_body::<Response>(&body)
                .map_err(|e| ClientError::Protocol(e.to_string()))?
            {
                Response::Welcome(w) => Ok((w.limits, w.server.to_owned())),
                other => Err(Reply::from_response(other).into_error()),
            };
            welcome.map(|(limits, server)| (reader, writer, limits, server))
        };
        let (reader, writer, limits, server) = timeout(options.connect_timeout, handshake)
            .await
            .unwrap_or(Err(ClientError::Timeout))?;
        let pending: Arc<Pending> = Arc::default();
        let closed = Arc::new(Mutex::new(None));
        let task = smol::spawn(read_loop(
            reader,
            Arc::clone(&pending),
            Arc::clone(&closed),
            options.clone(),
        ));
        Ok(Client {
            writer: async_lock::Mutex::new(writer),
            pending,
            closed,
            next_id: AtomicU32::new(1),
            slots: async_lock::Semaphore::new(limits.max_in_flight.max(1) as usize),
            limits,
            server,
            options,
            _reader: task,
        })
    }

    /// The limits the server stated in its Welcome.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The server's name and version.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Runs `model` (newest version unless `version` is given) on `inputs`.
    ///
    /// With a `deadline`, the server drops the request unanswered-but-refused (`DEADLINE_EXCEEDED`)
    /// if it cannot start it in time, and this call gives up shortly after the deadline.
    ///
    /// # Errors
    /// [`ClientError::Server`] with the server's code, or a transport error.
    pub async fn infer(
        &self,
        model: &str,
        version: Option<u32>,
        inputs: &[HostTensor],
        deadline: Option<Duration>,
    ) -> Result<InferOutput, ClientError> {
        if inputs.len() > MAX_TENSORS {
            return Err(ClientError::Invalid(format!(
                "at most {MAX_TENSORS} inputs"
            )));
        }
        let mut wire = heapless::Vec::new();
        for t in inputs {
            let w = t
                .to_wire()
                .map_err(|e| ClientError::Invalid(e.to_string()))?;
            wire.push(w)
                .map_err(|_| ClientError::Invalid(format!("at most {MAX_TENSORS} inputs")))?;
        }
        let deadline_ms = deadline.map(|d| u32::try_from(d.as_millis()).unwrap_or(u32::MAX));
        let wait = deadline.map_or(self.options.request_timeout, |d| d + NETWORK_GRACE);
        let reply = self
            .call(wait, |id| {
                Request::Infer(InferRequest {
                    id,
                    model,
                    version,
                    deadline_ms,
                    inputs: wire,
                })
            })
            .await?;
        match reply {
            Reply::Infer(out) => Ok(out),
            other => Err(other.into_error()),
        }
    }

    /// Lists served model versions.
    ///
    /// # Errors
    /// Transport or server errors.
    pub async fn list_models(&self) -> Result<ModelListing, ClientError> {
        match self
            .call(self.options.request_timeout, |id| Request::ListModels {
                id,
            })
            .await?
        {
            Reply::Models(list) => Ok(list),
            other => Err(other.into_error()),
        }
    }

    /// Describes one model version (newest unless `version` is given).
    ///
    /// # Errors
    /// `UNKNOWN_MODEL`/`UNKNOWN_VERSION` from the server, or transport errors.
    pub async fn model_info(
        &self,
        model: &str,
        version: Option<u32>,
    ) -> Result<ModelDescription, ClientError> {
        let build = |id| Request::ModelInfo(ModelInfoRequest { id, model, version });
        match self.call(self.options.request_timeout, build).await? {
            Reply::Info(info) => Ok(info),
            other => Err(other.into_error()),
        }
    }

    /// Round-trips a ping.
    ///
    /// # Errors
    /// Transport errors.
    pub async fn ping(&self) -> Result<(), ClientError> {
        match self
            .call(self.options.request_timeout, |id| Request::Ping { id })
            .await?
        {
            Reply::Pong => Ok(()),
            other => Err(other.into_error()),
        }
    }

    /// Asks whether the server takes traffic.
    ///
    /// # Errors
    /// Transport errors.
    pub async fn health(&self) -> Result<ServingState, ClientError> {
        match self
            .call(self.options.request_timeout, |id| Request::Health { id })
            .await?
        {
            Reply::Health(state) => Ok(state),
            other => Err(other.into_error()),
        }
    }

    /// The server's counters for the models this client may use.
    ///
    /// # Errors
    /// Transport errors.
    pub async fn stats(&self) -> Result<ServerStats, ClientError> {
        match self
            .call(self.options.request_timeout, |id| Request::Stats { id })
            .await?
        {
            Reply::Stats(stats) => Ok(stats),
            other => Err(other.into_error()),
        }
    }

    /// Asks the server to re-read its TLS material and access policy (an admin operation).
    ///
    /// # Errors
    /// `NOT_AUTHORIZED` without admin rights, `INTERNAL` if the reload failed (the server keeps the
    /// previous material), or transport errors.
    pub async fn reload(&self) -> Result<(), ClientError> {
        match self
            .call(self.options.request_timeout, |id| Request::Reload { id })
            .await?
        {
            Reply::Done => Ok(()),
            other => Err(other.into_error()),
        }
    }

    async fn call<'a>(
        &self,
        wait: Duration,
        build: impl FnOnce(u32) -> Request<'a>,
    ) -> Result<Reply, ClientError> {
        let _slot = timeout(wait, self.slots.acquire())
            .await
            .ok_or(ClientError::Timeout)?;
        let (tx, rx) = async_channel::bounded(1);
        let id = self.register(tx)?;
        let result = async {
            let frame =
                encode_frame_vec(&build(id), self.limits.max_frame_bytes).map_err(|_| {
                    ClientError::Invalid(format!(
                        "request exceeds the server's {} byte frame limit",
                        self.limits.max_frame_bytes
                    ))
                })?;
            {
                let mut w = self.writer.lock().await;
                write_frame(&mut *w, &frame, self.options.request_timeout).await?;
            }
            match timeout(wait, rx.recv()).await {
                None => Err(ClientError::Timeout),
                Some(Ok(reply)) => Ok(reply),
                Some(Err(_)) => Err(self.closed_reason()),
            }
        }
        .await;
        if result.is_err() {
            self.lock_pending().remove(&id);
        }
        if matches!(result, Err(ClientError::Timeout)) {
            // Nobody waits for it any more: tell the server, so it is not computed for nobody. Best
            // effort, briefly; a connection that cannot take a small frame is failing anyway.
            if let Ok(frame) =
                encode_frame_vec(&Request::Cancel { id }, self.limits.max_frame_bytes)
            {
                let mut w = self.writer.lock().await;
                let _ = write_frame(&mut *w, &frame, Duration::from_millis(100)).await;
            }
        }
        result
    }

    /// Picks a fresh id and registers its reply slot.
    fn register(&self, tx: Sender<Reply>) -> Result<u32, ClientError> {
        if self.lock_closed().is_some() {
            return Err(self.closed_reason());
        }
        let mut pending = self.lock_pending();
        loop {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            // After 2^32 requests ids wrap; skip any still outstanding.
            if let std::collections::hash_map::Entry::Vacant(slot) = pending.entry(id) {
                slot.insert(tx);
                return Ok(id);
            }
        }
    }

    fn closed_reason(&self) -> ClientError {
        self.lock_closed()
            .clone()
            .unwrap_or_else(|| ClientError::Closed("connection closed".into()))
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Sender<Reply>>> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_closed(&self) -> std::sync::MutexGuard<'_, Option<ClientError>> {
        self.closed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

async fn read_frame(r: &mut Reader, options: &ClientOptions) -> Result<Vec<u8>, ClientError> {
    let first = first_byte(r).await.map_err(read_error)?;
    rest_of_frame(r, first, options.max_frame_bytes, options.request_timeout)
        .await
        .map_err(read_error)
}

fn read_error(e: ReadError) -> ClientError {
    match e {
        ReadError::Closed => ClientError::Closed("the server closed the connection".into()),
        ReadError::Io(e) => ClientError::Io(Arc::new(e)),
        ReadError::Timeout => ClientError::Timeout,
        ReadError::Frame(f) => ClientError::Protocol(f.to_string()),
    }
}

/// Routes responses to their callers until the connection ends; then fails every pending call with the
/// reason.
async fn read_loop(
    mut reader: Reader,
    pending: Arc<Pending>,
    closed: Arc<Mutex<Option<ClientError>>>,
    options: ClientOptions,
) {
    let reason = loop {
        let body = match read_frame(&mut reader, &options).await {
            Ok(body) => body,
            Err(e) => break e,
        };
        let response = match decode_body::<Response>(&body) {
            Ok(r) => r,
            Err(e) => break ClientError::Protocol(format!("undecodable response: {e}")),
        };
        let Some(id) = response.id() else {
            // A connection-level error (or a stray Welcome): the connection is over.
            break Reply::from_response(response).into_error();
        };
        let reply = Reply::from_response(response);
        let tx = pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&id);
        if let Some(tx) = tx {
            let _ = tx.try_send(reply);
        }
    };
    *closed
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(reason);
    // Dropping the senders wakes every waiting call, which then reads `closed`.
    pending
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clear();
}
