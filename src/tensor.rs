//! Owned tensors: what crosses from a connection to a worker thread and back.
//!
//! The wire form ([`inferd_proto::Tensor`]) borrows from a frame buffer; a request outlives that buffer
//! once it is queued, so its inputs are copied into a [`HostTensor`] exactly once.

use inferd_proto::{DType, Tensor, MAX_RANK};

/// An owned, named tensor of raw little-endian bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostTensor {
    /// Input or output name.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Dimensions, row-major.
    pub shape: Vec<u64>,
    /// `product(shape) * dtype.size()` little-endian bytes.
    pub data: Vec<u8>,
}

impl HostTensor {
    /// Copies a wire tensor.
    pub fn from_wire(t: &Tensor<'_>) -> Self {
        HostTensor {
            name: t.name.to_owned(),
            dtype: t.dtype,
            shape: t.shape.to_vec(),
            data: t.data.to_vec(),
        }
    }

    /// Borrows this tensor in wire form.
    ///
    /// # Errors
    /// The rank, if it exceeds what the protocol can carry.
    pub fn to_wire(&self) -> Result<Tensor<'_>, RankTooHigh> {
        let shape =
            heapless::Vec::from_slice(&self.shape).map_err(|_| RankTooHigh(self.shape.len()))?;
        Ok(Tensor {
            name: &self.name,
            dtype: self.dtype,
            shape,
            data: &self.data,
        })
    }

    /// Builds an f32 tensor from values (tests, tools).
    pub fn from_f32(name: &str, shape: &[u64], values: &[f32]) -> Self {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        HostTensor {
            name: name.to_owned(),
            dtype: DType::F32,
            shape: shape.to_vec(),
            data,
        }
    }

    /// Builds an i64 tensor from values (tests, tools).
    pub fn from_i64(name: &str, shape: &[u64], values: &[i64]) -> Self {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        HostTensor {
            name: name.to_owned(),
            dtype: DType::I64,
            shape: shape.to_vec(),
            data,
        }
    }

    /// The elements as f32, if the dtype is f32.
    pub fn as_f32(&self) -> Option<Vec<f32>> {
        (self.dtype == DType::F32).then(|| {
            self.data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        })
    }

    /// The elements as i64, if the dtype is i64.
    pub fn as_i64(&self) -> Option<Vec<i64>> {
        (self.dtype == DType::I64).then(|| {
            self.data
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect()
        })
    }

    /// A short human description: `name: f32[1, 10]`.
    pub fn describe(&self) -> String {
        format!("{}: {}{:?}", self.name, self.dtype, self.shape)
    }
}

/// A tensor whose rank exceeds [`MAX_RANK`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("tensor rank {0} exceeds the protocol maximum of {MAX_RANK}")]
pub struct RankTooHigh(pub usize);
