//! Conversions from the server's owned types to borrowed wire messages.

use inferd_proto::{Dim, ErrorCode, ModelInfo, Tensor, TensorInfo, MAX_TENSORS};

use crate::error::RequestError;
use crate::model::{DimSpec, IoSpec, ServedModel};
use crate::tensor::HostTensor;

/// Borrows outputs as wire tensors.
///
/// # Errors
/// `INTERNAL` if the model produced more tensors, or higher ranks, than the protocol carries (such a
/// model is also refused at load time; this is the backstop).
pub fn outputs_to_wire(
    outputs: &[HostTensor],
) -> Result<heapless::Vec<Tensor<'_>, MAX_TENSORS>, RequestError> {
    let mut wire = heapless::Vec::new();
    for t in outputs {
        let w = t
            .to_wire()
            .map_err(|e| RequestError::new(ErrorCode::INTERNAL, e.to_string()))?;
        wire.push(w).map_err(|_| too_many())?;
    }
    Ok(wire)
}

/// Describes a served model.
///
/// # Errors
/// `INTERNAL` if the model has more inputs or outputs, or higher ranks, than the protocol carries.
pub fn model_info(id: u32, m: &ServedModel) -> Result<ModelInfo<'_>, RequestError> {
    Ok(ModelInfo {
        id,
        name: &m.name,
        version: m.version,
        batch_axis: m.manifest.batch_axis,
        description: &m.manifest.description,
        inputs: infos(m.runtime.inputs())?,
        outputs: infos(m.runtime.outputs())?,
    })
}

fn infos(specs: &[IoSpec]) -> Result<heapless::Vec<TensorInfo<'_>, MAX_TENSORS>, RequestError> {
    let mut out = heapless::Vec::new();
    for s in specs {
        let mut shape = heapless::Vec::new();
        for d in &s.shape {
            let dim = match d {
                DimSpec::Fixed(n) => Dim::Fixed(*n),
                DimSpec::Symbol(sym) => Dim::Symbol(sym),
            };
            shape.push(dim).map_err(|_| {
                RequestError::new(
                    ErrorCode::INTERNAL,
                    format!("{} has too high a rank", s.name),
                )
            })?;
        }
        out.push(TensorInfo {
            name: &s.name,
            dtype: s.dtype,
            shape,
        })
        .map_err(|_| too_many())?;
    }
    Ok(out)
}

fn too_many() -> RequestError {
    RequestError::new(
        ErrorCode::INTERNAL,
        format!("more than {MAX_TENSORS} tensors"),
    )
}
