//! Models: what is on disk (`manifest`, `policy`), how it runs (`runtime`, the only module that
//! names tract), how a version becomes servable (`load`, with the prepared-model `cache`), what is
//! served now (`registry`, one snapshot) and how that follows the folder (`repository`), and whether
//! a request fits a model (`validate`); where a batching model's tensors hold their rows
//! (`batch_axes`).

pub mod batch_axes;
pub mod cache;
pub mod load;
pub mod manifest;
pub mod policy;
pub mod registry;
pub mod repository;
pub mod runtime;
pub mod validate;

use inferd_proto::DType;

pub use batch_axes::BatchAxes;
pub use registry::{LoadFigures, Registry, ServedModel};
pub use repository::Repository;
pub use runtime::Runtime;

/// One dimension of a declared input or output shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DimSpec {
    /// A fixed size.
    Fixed(u64),
    /// A symbol (`N`, `batch`, `seq`) resolved from each request's inputs.
    Symbol(String),
}

impl std::fmt::Display for DimSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DimSpec::Fixed(n) => write!(f, "{n}"),
            DimSpec::Symbol(s) => f.write_str(s),
        }
    }
}

/// A declared input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoSpec {
    /// Tensor name.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape, fixed or symbolic per axis.
    pub shape: Vec<DimSpec>,
}

impl std::fmt::Display for IoSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dims: Vec<String> = self.shape.iter().map(ToString::to_string).collect();
        write!(f, "{}: {}[{}]", self.name, self.dtype, dims.join(", "))
    }
}

/// Why a model could not be loaded. Loading happens at start-up, so these are reported to the operator,
/// never to a peer.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The repository or a model folder could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The path that failed.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The manifest is malformed or contradicts the model.
    #[error("{path}: bad manifest: {message}")]
    Manifest {
        /// The manifest path.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// tract could not load, type or optimise the model.
    #[error("{path}: cannot be served: {message}")]
    Model {
        /// The model path.
        path: String,
        /// tract's explanation, flattened.
        message: String,
    },
    /// The repository has a layout problem (no models, bad version folder name).
    #[error("{0}")]
    Layout(String),
}
