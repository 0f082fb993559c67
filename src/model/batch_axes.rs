//! Where each input and output of a batching model holds its rows.
//!
//! The manifest's `batch_axis` names an axis of the first input; the symbol there (`N`) is the batch
//! size. Every other input and output batches along the axis where the same symbol appears, which
//! need not be axis 0: a recurrent model's state is `[layers, N, hidden]` (Silero VAD's
//! `[2, N, 128]`) while its audio is `[N, samples]`. A model batches only if each of its tensors
//! holds that symbol exactly once, as a whole dimension (an output of `2*N` rows cannot be split).

use super::{DimSpec, IoSpec};
use crate::tensor::HostTensor;

/// The batch axis of every input and output, in the model's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchAxes {
    /// The symbol that sizes the batch (`N`).
    pub symbol: String,
    /// Per input, the axis that holds its rows.
    pub inputs: Vec<usize>,
    /// Per output, the axis that holds its rows.
    pub outputs: Vec<usize>,
}

impl BatchAxes {
    /// The batch axes of a model whose first input batches along `axis`.
    ///
    /// # Errors
    /// Why the model cannot batch: that axis is fixed or missing, or some tensor does not hold the
    /// batch symbol exactly once.
    pub fn find(axis: u8, inputs: &[IoSpec], outputs: &[IoSpec]) -> Result<BatchAxes, String> {
        let first = inputs.first().ok_or("the model has no inputs")?;
        let symbol = match first.shape.get(usize::from(axis)) {
            Some(DimSpec::Symbol(s)) => s.clone(),
            Some(DimSpec::Fixed(n)) => {
                return Err(format!(
                    "axis {axis} of input {:?} is fixed at {n}, not a symbol",
                    first.name
                ))
            }
            None => return Err(format!("input {:?} has no axis {axis}", first.name)),
        };
        let axis_of = |spec: &IoSpec, kind: &str| -> Result<usize, String> {
            let mut at = spec
                .shape
                .iter()
                .enumerate()
                .filter(|(_, d)| matches!(d, DimSpec::Symbol(s) if *s == symbol))
                .map(|(ix, _)| ix);
            match (at.next(), at.next()) {
                (Some(ix), None) => Ok(ix),
                (None, _) => Err(format!(
                    "{kind} {spec} has no dimension {symbol} to batch along"
                )),
                (Some(_), Some(_)) => Err(format!(
                    "{kind} {spec} holds {symbol} more than once: which axis batches is ambiguous"
                )),
            }
        };
        Ok(BatchAxes {
            inputs: inputs
                .iter()
                .map(|s| axis_of(s, "input"))
                .collect::<Result<_, _>>()?,
            outputs: outputs
                .iter()
                .map(|s| axis_of(s, "output"))
                .collect::<Result<_, _>>()?,
            symbol,
        })
    }
}

impl BatchAxes {
    /// Rows in one request's inputs (or a stacked batch's), in the model's order: the first input's
    /// size along its batch axis.
    pub fn rows(&self, inputs: &[HostTensor]) -> u64 {
        match (inputs.first(), self.inputs.first()) {
            (Some(t), Some(&axis)) => t.shape.get(axis).copied().unwrap_or(1),
            _ => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use inferd_proto::DType;

    use super::*;

    fn spec(name: &str, shape: &[&str]) -> IoSpec {
        IoSpec {
            name: name.to_owned(),
            dtype: DType::F32,
            shape: shape
                .iter()
                .map(|d| match d.parse() {
                    Ok(n) => DimSpec::Fixed(n),
                    Err(_) => DimSpec::Symbol((*d).to_owned()),
                })
                .collect(),
        }
    }

    #[test]
    fn each_tensor_batches_where_the_symbol_is() {
        let inputs = [
            spec("audio", &["N", "576"]),
            spec("state", &["2", "N", "128"]),
        ];
        let outputs = [spec("p", &["N", "1"]), spec("stateN", &["2", "N", "128"])];
        let axes = BatchAxes::find(0, &inputs, &outputs).unwrap();
        assert_eq!(axes.symbol, "N");
        assert_eq!(axes.inputs, [0, 1]);
        assert_eq!(axes.outputs, [0, 1]);
    }

    #[test]
    fn a_tensor_without_the_symbol_or_a_fixed_axis_does_not_batch() {
        let x = [spec("x", &["N", "3"])];
        let pooled = [spec("y", &["3"])];
        assert!(BatchAxes::find(0, &x, &pooled)
            .unwrap_err()
            .contains("no dimension N"));
        let other = [spec("y", &["M", "3"])];
        assert!(BatchAxes::find(0, &x, &other).is_err());
        let twice = [spec("y", &["N", "N"])];
        assert!(BatchAxes::find(0, &x, &twice)
            .unwrap_err()
            .contains("more than once"));
        assert!(BatchAxes::find(1, &x, &x)
            .unwrap_err()
            .contains("fixed at 3"));
        assert!(BatchAxes::find(2, &x, &x)
            .unwrap_err()
            .contains("no axis 2"));
    }
}
