//! `model.toml`, the optional manifest beside a `model.onnx`.
//!
//! It states what the ONNX file cannot or does not say well: input facts (dtype and shape, with named
//! symbols for dimensions resolved per request), the batch axis, a description, the licence, and the
//! tolerance the model's reference outputs are checked with. Unknown keys are errors, so a typo does
//! not silently fall back to a default.

use std::path::Path;

use inferd_proto::DType;
use serde::Deserialize;

use super::{DimSpec, IoSpec, LoadError};

/// The file name looked for in each version folder.
pub const FILE_NAME: &str = "model.toml";

/// A parsed manifest.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Manifest {
    /// One-line description.
    pub description: String,
    /// Licence of the model file (SPDX id or a sentence).
    pub licence: String,
    /// Axis of the first input along which requests can be batched; every other input and output
    /// batches where the symbol at that axis appears (`BatchAxes`).
    pub batch_axis: Option<u8>,
    /// Most rows one batch of this model may hold (overrides `--max-batch`; 1 turns batching off).
    pub max_batch: Option<u64>,
    /// Whether requests of one row get a plan of their own (`runtime::single_row`): unset, only
    /// where it is measured at load to pay.
    pub single_row_plan: Option<bool>,
    /// Input facts, replacing those the ONNX file declares; empty: use the file's.
    pub inputs: Vec<IoSpec>,
    /// Tolerance for comparing outputs with the shipped references.
    pub tolerance: Option<Tolerance>,
}

/// How closely outputs must match the reference (used by tests and `doc/`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tolerance {
    /// Largest absolute difference allowed per element.
    pub abs: f64,
    /// Why this tolerance is right for this model.
    #[serde(default)]
    pub reason: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    description: String,
    #[serde(default)]
    licence: String,
    batch_axis: Option<u8>,
    max_batch: Option<u64>,
    single_row_plan: Option<bool>,
    #[serde(default)]
    inputs: Vec<RawInput>,
    tolerance: Option<Tolerance>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInput {
    name: String,
    dtype: String,
    shape: Vec<RawDim>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawDim {
    Fixed(u64),
    Symbol(String),
}

impl Manifest {
    /// Reads `dir/model.toml` if present; `Ok(None)` if there is none.
    ///
    /// # Errors
    /// [`LoadError::Manifest`] for unreadable or invalid manifests.
    pub fn load(dir: &Path) -> Result<Option<Manifest>, LoadError> {
        let path = dir.join(FILE_NAME);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(LoadError::Io {
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        Manifest::parse(&text)
            .map(Some)
            .map_err(|message| LoadError::Manifest {
                path: path.display().to_string(),
                message,
            })
    }

    /// Parses manifest text.
    ///
    /// # Errors
    /// A message naming the bad key or value.
    pub fn parse(text: &str) -> Result<Manifest, String> {
        let raw: Raw = toml::from_str(text).map_err(|e| e.message().to_owned())?;
        let mut inputs = Vec::with_capacity(raw.inputs.len());
        for input in raw.inputs {
            let dtype = DType::from_name(&input.dtype).ok_or_else(|| {
                format!("input {:?}: unknown dtype {:?}", input.name, input.dtype)
            })?;
            let shape = input
                .shape
                .into_iter()
                .map(|d| match d {
                    RawDim::Fixed(n) => Ok(DimSpec::Fixed(n)),
                    RawDim::Symbol(s) if is_symbol(&s) => Ok(DimSpec::Symbol(s)),
                    RawDim::Symbol(s) => {
                        Err(format!("input {:?}: bad dimension name {s:?}", input.name))
                    }
                })
                .collect::<Result<Vec<_>, _>>()?;
            inputs.push(IoSpec {
                name: input.name,
                dtype,
                shape,
            });
        }
        // The axis is the first input's; the others batch where its symbol appears (`BatchAxes`).
        if let (Some(axis), Some(first)) = (raw.batch_axis, inputs.first()) {
            if usize::from(axis) >= first.shape.len() {
                return Err(format!(
                    "batch_axis {axis} is beyond the rank of input {:?}",
                    first.name
                ));
            }
        }
        Ok(Manifest {
            description: raw.description,
            licence: raw.licence,
            batch_axis: raw.batch_axis,
            max_batch: raw.max_batch.map(|n| n.max(1)),
            single_row_plan: raw.single_row_plan,
            inputs,
            tolerance: raw.tolerance,
        })
    }
}

/// Symbol names are identifiers, so that tract and humans read them the same way.
fn is_symbol(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_manifest() {
        let m = Manifest::parse(
            r#"
            description = "digits"
            licence = "MIT"
            batch_axis = 0
            [[inputs]]
            name = "X"
            dtype = "f32"
            shape = ["N", 64]
            [tolerance]
            abs = 1e-4
            reason = "fp32"
            "#,
        )
        .unwrap();
        assert_eq!(m.batch_axis, Some(0));
        assert_eq!(
            m.inputs[0].shape,
            vec![DimSpec::Symbol("N".into()), DimSpec::Fixed(64)]
        );
        assert_eq!(m.tolerance.unwrap().abs, 1e-4);
    }

    #[test]
    fn rejects_mistakes() {
        assert!(Manifest::parse("descripton = 'typo'")
            .unwrap_err()
            .contains("descripton"));
        let bad_dtype = "[[inputs]]\nname='x'\ndtype='float'\nshape=[1]";
        assert!(Manifest::parse(bad_dtype).unwrap_err().contains("dtype"));
        let bad_dim = "[[inputs]]\nname='x'\ndtype='f32'\nshape=['2*N']";
        assert!(Manifest::parse(bad_dim).unwrap_err().contains("dimension"));
        let bad_axis = "batch_axis = 2\n[[inputs]]\nname='x'\ndtype='f32'\nshape=['N', 3]";
        assert!(Manifest::parse(bad_axis)
            .unwrap_err()
            .contains("batch_axis"));
    }
}
