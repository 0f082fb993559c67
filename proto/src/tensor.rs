//! Tensors on the wire: an element type, a shape and the raw little-endian bytes, borrowed from the
//! frame body so that decoding copies nothing.

use heapless::Vec;
use serde::{Deserialize, Serialize};

use crate::MAX_RANK;

/// Element type of a tensor. Encoded as its declaration index (append-only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DType {
    /// IEEE 754 binary32. Index 0.
    F32,
    /// IEEE 754 binary16. Index 1.
    F16,
    /// IEEE 754 binary64. Index 2.
    F64,
    /// Signed 8-bit. Index 3.
    I8,
    /// Signed 16-bit. Index 4.
    I16,
    /// Signed 32-bit. Index 5.
    I32,
    /// Signed 64-bit. Index 6.
    I64,
    /// Unsigned 8-bit. Index 7.
    U8,
    /// Unsigned 16-bit. Index 8.
    U16,
    /// Unsigned 32-bit. Index 9.
    U32,
    /// Unsigned 64-bit. Index 10.
    U64,
    /// One byte per element, 0 = false, 1 = true; any other byte is invalid. Index 11.
    Bool,
}

impl DType {
    /// Bytes one element occupies on the wire.
    pub const fn size(self) -> usize {
        match self {
            DType::I8 | DType::U8 | DType::Bool => 1,
            DType::F16 | DType::I16 | DType::U16 => 2,
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::F64 | DType::I64 | DType::U64 => 8,
        }
    }

    /// The short lower-case name used in docs, manifests and the CLI (`f32`, `i64`, `bool`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::F64 => "f64",
            DType::I8 => "i8",
            DType::I16 => "i16",
            DType::I32 => "i32",
            DType::I64 => "i64",
            DType::U8 => "u8",
            DType::U16 => "u16",
            DType::U32 => "u32",
            DType::U64 => "u64",
            DType::Bool => "bool",
        }
    }

    /// Every dtype, in wire order.
    pub const ALL: [DType; 12] = [
        DType::F32,
        DType::F16,
        DType::F64,
        DType::I8,
        DType::I16,
        DType::I32,
        DType::I64,
        DType::U8,
        DType::U16,
        DType::U32,
        DType::U64,
        DType::Bool,
    ];

    /// Parses [`DType::name`] back.
    pub fn from_name(name: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.name() == name)
    }
}

impl core::fmt::Display for DType {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// A named tensor borrowed from a frame body (or from the sender's buffers when encoding).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tensor<'a> {
    /// Input or output name, as the model declares it.
    pub name: &'a str,
    /// Element type.
    pub dtype: DType,
    /// Dimensions, outermost first (row-major).
    pub shape: Vec<u64, MAX_RANK>,
    /// `product(shape) * dtype.size()` bytes, little-endian, row-major.
    #[serde(borrow, serialize_with = "bytes")]
    pub data: &'a [u8],
}

/// Serialises a byte slice in one piece. serde's default for `[u8]` is a sequence of `u8`s, which
/// postcard encodes identically (varint length, raw bytes) but one element call at a time.
fn bytes<S: serde::Serializer>(data: &&[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(data)
}

/// Why a tensor's bytes do not match its declaration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorError {
    /// The element count or byte size overflows.
    Overflow,
    /// `data.len()` differs from `product(shape) * dtype.size()`.
    LengthMismatch {
        /// Bytes the shape and dtype call for.
        expected: u64,
        /// Bytes present.
        actual: u64,
    },
}

impl<'a> Tensor<'a> {
    /// Number of elements the shape describes, if it fits in a `u64`.
    pub fn element_count(&self) -> Option<u64> {
        self.shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
    }

    /// Checks that the byte length matches shape and dtype.
    ///
    /// # Errors
    /// [`TensorError::Overflow`] for shapes whose size overflows, [`TensorError::LengthMismatch`] otherwise.
    pub fn check(&self) -> Result<(), TensorError> {
        let expected = self
            .element_count()
            .and_then(|n| n.checked_mul(self.dtype.size() as u64))
            .ok_or(TensorError::Overflow)?;
        let actual = self.data.len() as u64;
        if expected != actual {
            return Err(TensorError::LengthMismatch { expected, actual });
        }
        Ok(())
    }
}

/// One dimension of a declared shape: fixed, or a symbol resolved per request (a batch size `N`, a
/// sequence length).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Dim<'a> {
    /// A fixed size. Index 0.
    Fixed(u64),
    /// A named symbolic size. Index 1.
    Symbol(&'a str),
}

/// What a model declares for one input or output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorInfo<'a> {
    /// Tensor name.
    pub name: &'a str,
    /// Element type.
    pub dtype: DType,
    /// Declared shape, fixed or symbolic per dimension.
    #[serde(borrow)]
    pub shape: Vec<Dim<'a>, MAX_RANK>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_length() {
        let shape = Vec::from_slice(&[2, 3]).unwrap();
        let data = [0u8; 24];
        let t = Tensor {
            name: "x",
            dtype: DType::F32,
            shape,
            data: &data,
        };
        assert_eq!(t.check(), Ok(()));
        let t = Tensor {
            data: &data[..23],
            ..t
        };
        assert_eq!(
            t.check(),
            Err(TensorError::LengthMismatch {
                expected: 24,
                actual: 23
            })
        );
        let huge = Vec::from_slice(&[u64::MAX, 2]).unwrap();
        let t = Tensor { shape: huge, ..t };
        assert_eq!(t.check(), Err(TensorError::Overflow));
    }

    #[test]
    fn dtype_names_round_trip() {
        for d in DType::ALL {
            assert_eq!(DType::from_name(d.name()), Some(d));
        }
        assert_eq!(DType::from_name("float"), None);
    }
}
