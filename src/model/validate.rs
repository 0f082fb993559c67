//! Does a request fit a model? Pure checks of names, count, dtypes, byte lengths and shapes against the
//! declared facts, before anything is queued. Each failure has its own wire code, so that a client can
//! tell "wrong dtype" from "wrong shape" without parsing messages.

use std::collections::HashMap;

use inferd_proto::{DType, ErrorCode, Tensor, TensorError};

use super::{DimSpec, IoSpec};
use crate::error::RequestError;

/// Checks `inputs` against `specs` and returns, for each declared input in model order, the index of
/// the request tensor that feeds it.
///
/// # Errors
/// The first problem found, checked in this order: count, names (unknown or repeated), then per input
/// dtype, byte length, bool bytes, rank and fixed dimensions, then symbols that differ between inputs.
pub fn validate(specs: &[IoSpec], inputs: &[Tensor<'_>]) -> Result<Vec<usize>, RequestError> {
    if inputs.len() != specs.len() {
        let expected: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        return Err(RequestError::new(
            ErrorCode::WRONG_INPUT_COUNT,
            format!(
                "got {} inputs, the model takes {} ({})",
                inputs.len(),
                specs.len(),
                expected.join(", ")
            ),
        ));
    }
    let mut order = vec![usize::MAX; specs.len()];
    for (ix, input) in inputs.iter().enumerate() {
        let Some(slot) = specs.iter().position(|s| s.name == input.name) else {
            return Err(RequestError::new(
                ErrorCode::WRONG_INPUT_NAME,
                format!("the model has no input {:?}", input.name),
            ));
        };
        if order[slot] != usize::MAX {
            return Err(RequestError::new(
                ErrorCode::WRONG_INPUT_NAME,
                format!("input {:?} given twice", input.name),
            ));
        }
        order[slot] = ix;
    }
    let mut symbols: HashMap<&str, (u64, &str)> = HashMap::new();
    for (spec, &ix) in specs.iter().zip(&order) {
        let input = &inputs[ix];
        check_one(spec, input)?;
        for (dim, &got) in spec.shape.iter().zip(input.shape.iter()) {
            if let DimSpec::Symbol(sym) = dim {
                match symbols.get(sym.as_str()) {
                    Some(&(size, other)) if size != got => {
                        return Err(RequestError::new(
                            ErrorCode::WRONG_SHAPE,
                            format!("dimension {sym} is {size} in input {other:?} but {got} in input {:?}", spec.name),
                        ));
                    }
                    _ => {
                        symbols.insert(sym, (got, &spec.name));
                    }
                }
            }
        }
    }
    Ok(order)
}

fn check_one(spec: &IoSpec, input: &Tensor<'_>) -> Result<(), RequestError> {
    if input.dtype != spec.dtype {
        return Err(RequestError::new(
            ErrorCode::WRONG_DTYPE,
            format!(
                "input {:?} is {}, the model takes {}",
                spec.name, input.dtype, spec.dtype
            ),
        ));
    }
    match input.check() {
        Ok(()) => {}
        Err(TensorError::Overflow) => {
            return Err(RequestError::new(
                ErrorCode::BAD_TENSOR_DATA,
                format!("input {:?}: shape overflows", spec.name),
            ));
        }
        Err(TensorError::LengthMismatch { expected, actual }) => {
            return Err(RequestError::new(
                ErrorCode::BAD_TENSOR_DATA,
                format!(
                    "input {:?}: {actual} data bytes, shape {:?} needs {expected}",
                    spec.name, input.shape
                ),
            ));
        }
    }
    if input.dtype == DType::Bool && input.data.iter().any(|&b| b > 1) {
        return Err(RequestError::new(
            ErrorCode::BAD_TENSOR_DATA,
            format!("input {:?}: bool bytes must be 0 or 1", spec.name),
        ));
    }
    let fits = input.shape.len() == spec.shape.len()
        && spec
            .shape
            .iter()
            .zip(input.shape.iter())
            .all(|(d, &got)| match d {
                DimSpec::Fixed(n) => *n == got,
                DimSpec::Symbol(_) => true,
            });
    if !fits {
        return Err(RequestError::new(
            ErrorCode::WRONG_SHAPE,
            format!(
                "input {:?} has shape {:?}, the model takes {spec}",
                spec.name, input.shape
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, dtype: DType, shape: &[DimSpec]) -> IoSpec {
        IoSpec {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
        }
    }

    fn t<'a>(name: &'a str, dtype: DType, shape: &[u64], data: &'a [u8]) -> Tensor<'a> {
        Tensor {
            name,
            dtype,
            shape: heapless::Vec::from_slice(shape).unwrap(),
            data,
        }
    }

    fn specs() -> Vec<IoSpec> {
        let n = DimSpec::Symbol("N".into());
        vec![
            spec("ids", DType::I64, &[n.clone(), DimSpec::Fixed(2)]),
            spec("mask", DType::Bool, &[n, DimSpec::Fixed(2)]),
        ]
    }

    fn code(r: Result<Vec<usize>, RequestError>) -> ErrorCode {
        r.unwrap_err().code
    }

    #[test]
    fn accepts_any_order_and_returns_model_order() {
        let ids = [0u8; 32];
        let mask = [1u8, 0, 1, 1];
        let inputs = [
            t("mask", DType::Bool, &[2, 2], &mask),
            t("ids", DType::I64, &[2, 2], &ids),
        ];
        assert_eq!(validate(&specs(), &inputs).unwrap(), vec![1, 0]);
    }

    #[test]
    fn each_problem_has_its_code() {
        let ids = [0u8; 32];
        let mask = [1u8, 0, 1, 1];
        let s = specs();
        assert_eq!(
            code(validate(&s, &[t("ids", DType::I64, &[2, 2], &ids)])),
            ErrorCode::WRONG_INPUT_COUNT
        );
        let unknown = [
            t("ids", DType::I64, &[2, 2], &ids),
            t("msk", DType::Bool, &[2, 2], &mask),
        ];
        assert_eq!(code(validate(&s, &unknown)), ErrorCode::WRONG_INPUT_NAME);
        let twice = [
            t("ids", DType::I64, &[2, 2], &ids),
            t("ids", DType::I64, &[2, 2], &ids),
        ];
        assert_eq!(code(validate(&s, &twice)), ErrorCode::WRONG_INPUT_NAME);
        let dtype = [
            t("ids", DType::I32, &[2, 2], &ids[..16]),
            t("mask", DType::Bool, &[2, 2], &mask),
        ];
        assert_eq!(code(validate(&s, &dtype)), ErrorCode::WRONG_DTYPE);
        let short = [
            t("ids", DType::I64, &[2, 2], &ids[..31]),
            t("mask", DType::Bool, &[2, 2], &mask),
        ];
        assert_eq!(code(validate(&s, &short)), ErrorCode::BAD_TENSOR_DATA);
        let bad_bool = [
            t("ids", DType::I64, &[2, 2], &ids),
            t("mask", DType::Bool, &[2, 2], &[1, 0, 2, 1]),
        ];
        assert_eq!(code(validate(&s, &bad_bool)), ErrorCode::BAD_TENSOR_DATA);
        let fixed = [
            t("ids", DType::I64, &[4, 1], &ids),
            t("mask", DType::Bool, &[2, 2], &mask),
        ];
        assert_eq!(code(validate(&s, &fixed)), ErrorCode::WRONG_SHAPE);
        let rank = [
            t("ids", DType::I64, &[4], &ids),
            t("mask", DType::Bool, &[2, 2], &mask),
        ];
        assert_eq!(code(validate(&s, &rank)), ErrorCode::WRONG_SHAPE);
        let disagree = [
            t("ids", DType::I64, &[2, 2], &ids),
            t("mask", DType::Bool, &[1, 2], &mask[..2]),
        ];
        assert_eq!(code(validate(&s, &disagree)), ErrorCode::WRONG_SHAPE);
    }
}
