//! Conversions from the server's owned types to borrowed wire messages, and their encoding into frames
//! within the server's frame limit.

use inferd_proto::codec::encode_frame_vec;
use inferd_proto::{
    Dim, ErrorCode, ErrorResponse, InferResponse, ModelInfo, Response, Tensor, TensorInfo,
    MAX_TENSORS,
};

use super::Ctx;
use crate::error::RequestError;
use crate::model::{DimSpec, IoSpec, ServedModel};
use crate::scheduler::Completion;
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
        // Only for a model that batches: a manifest's axis its tensors do not support is not news
        // to a client.
        batch_axis: m.batch.as_ref().and(m.manifest.batch_axis),
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

/// The frame answering a completion, and the error code it carries (`None`: outputs).
pub fn completion_frame(c: &Completion, ctx: &Ctx) -> (Option<Vec<u8>>, Option<ErrorCode>) {
    let outputs = match &c.result {
        Ok(outputs) => outputs,
        Err(e) => return (error_frame(Some(c.id), e, ctx), Some(e.code)),
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
        Ok(frame) => (Some(frame), None),
        Err(e) => (error_frame(Some(c.id), &e, ctx), Some(e.code)),
    }
}

pub fn encode(response: &Response<'_>, ctx: &Ctx) -> Option<Vec<u8>> {
    match encode_frame_vec(response, ctx.config.max_frame_bytes) {
        Ok(frame) => Some(frame),
        Err(e) => {
            log::error!("cannot encode a {:?} response: {e}", response.id());
            let err = RequestError::new(ErrorCode::RESPONSE_TOO_LARGE, e.to_string());
            error_frame(response.id(), &err, ctx)
        }
    }
}

pub fn error_frame(id: Option<u32>, e: &RequestError, ctx: &Ctx) -> Option<Vec<u8>> {
    // Messages are ours and short, but keep them far from any frame limit.
    let message: String = e.message.chars().take(1024).collect();
    let response = Response::Error(ErrorResponse {
        id,
        code: e.code,
        message: &message,
        retry_after_ms: e
            .retry_after
            .map(|d| u32::try_from(d.as_millis().max(1)).unwrap_or(u32::MAX)),
    });
    encode_frame_vec(&response, ctx.config.max_frame_bytes).ok()
}
