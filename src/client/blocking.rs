//! A blocking wrapper around [`Client`] for code without an executor (the CLI, scripts, tests).

use std::net::SocketAddr;
use std::time::Duration;

use inferd_proto::Limits;

use super::{Client, ClientError, ClientOptions, InferOutput, ModelDescription, ModelListing};
use crate::tensor::HostTensor;

/// A [`Client`] whose methods block the calling thread.
#[derive(Debug)]
pub struct BlockingClient {
    inner: Client,
}

impl BlockingClient {
    /// Connects and handshakes.
    ///
    /// # Errors
    /// As [`Client::connect_with`].
    pub fn connect(addr: SocketAddr, options: ClientOptions) -> Result<Self, ClientError> {
        smol::block_on(Client::connect_with(addr, options)).map(|inner| BlockingClient { inner })
    }

    /// The async client inside.
    pub fn inner(&self) -> &Client {
        &self.inner
    }

    /// The server's limits.
    pub fn limits(&self) -> Limits {
        self.inner.limits()
    }

    /// See [`Client::infer`].
    ///
    /// # Errors
    /// As [`Client::infer`].
    pub fn infer(
        &self,
        model: &str,
        version: Option<u32>,
        inputs: &[HostTensor],
        deadline: Option<Duration>,
    ) -> Result<InferOutput, ClientError> {
        smol::block_on(self.inner.infer(model, version, inputs, deadline))
    }

    /// See [`Client::list_models`].
    ///
    /// # Errors
    /// As [`Client::list_models`].
    pub fn list_models(&self) -> Result<ModelListing, ClientError> {
        smol::block_on(self.inner.list_models())
    }

    /// See [`Client::model_info`].
    ///
    /// # Errors
    /// As [`Client::model_info`].
    pub fn model_info(
        &self,
        model: &str,
        version: Option<u32>,
    ) -> Result<ModelDescription, ClientError> {
        smol::block_on(self.inner.model_info(model, version))
    }

    /// See [`Client::reload`].
    ///
    /// # Errors
    /// As [`Client::reload`].
    pub fn reload(&self) -> Result<(), ClientError> {
        smol::block_on(self.inner.reload())
    }

    /// See [`Client::ping`].
    ///
    /// # Errors
    /// As [`Client::ping`].
    pub fn ping(&self) -> Result<(), ClientError> {
        smol::block_on(self.inner.ping())
    }

    /// See [`Client::health`].
    ///
    /// # Errors
    /// As [`Client::health`].
    pub fn health(&self) -> Result<inferd_proto::ServingState, ClientError> {
        smol::block_on(self.inner.health())
    }

    /// See [`Client::stats`].
    ///
    /// # Errors
    /// As [`Client::stats`].
    pub fn stats(&self) -> Result<super::ServerStats, ClientError> {
        smol::block_on(self.inner.stats())
    }
}
