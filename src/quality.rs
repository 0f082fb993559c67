//! Comparing two variants of a model (fp32 and int8, say) output by output: the quality half of
//! `inferd validate`. Pure functions over [`HostTensor`]s, so the arithmetic is tested without a
//! model.
//!
//! A data set is a folder with one `<input>.npy` per model input. A file whose shape is exactly the
//! input's declared shape, with any symbol at 1, is the same for every sample (a recurrent model's
//! initial state, say, `[2, 1, 128]` for a state declared `[2, N, 128]`); otherwise its axis 0
//! indexes the samples and sample `i` is the slice `i..i + 1` along it, so each run sees a batch of
//! one with the file's other dimensions.

use std::path::Path;

use inferd_proto::DType;

use crate::model::{DimSpec, IoSpec};
use crate::npy;
use crate::tensor::HostTensor;

/// The samples of a validation data set, sliced on demand.
#[derive(Debug)]
pub struct DataSet {
    columns: Vec<Column>,
    samples: usize,
}

#[derive(Debug)]
enum Column {
    /// The same tensor for every sample.
    Shared(HostTensor),
    /// Axis 0 indexes the samples.
    Rows(HostTensor),
}

impl DataSet {
    /// Reads `<dir>/<input>.npy` for every input in `specs`.
    ///
    /// # Errors
    /// A missing or unreadable file, a dtype that differs from the declared one, or inputs that
    /// disagree on the number of samples.
    pub fn read(dir: &Path, specs: &[IoSpec]) -> Result<DataSet, String> {
        let mut columns = Vec::with_capacity(specs.len());
        let mut samples: Option<(usize, &str)> = None;
        for spec in specs {
            let path = dir.join(format!("{}.npy", npy::file_stem(&spec.name)));
            let tensor = npy::read_file(&path, &spec.name)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            if tensor.dtype != spec.dtype {
                return Err(format!(
                    "{}: dtype {:?}, the model's input {} takes {:?}",
                    path.display(),
                    tensor.dtype,
                    spec.name,
                    spec.dtype
                ));
            }
            let one: Vec<u64> = spec
                .shape
                .iter()
                .map(|d| match d {
                    DimSpec::Fixed(n) => *n,
                    DimSpec::Symbol(_) => 1,
                })
                .collect();
            if one == tensor.shape {
                columns.push(Column::Shared(tensor));
                continue;
            }
            let rows = match tensor.shape.first() {
                Some(&n) => usize::try_from(n).map_err(|_| "too many samples".to_owned())?,
                None => return Err(format!("{}: a scalar cannot hold samples", path.display())),
            };
            match samples {
                Some((count, other)) if count != rows => {
                    return Err(format!(
                        "{}: {rows} samples, but {other} has {count}",
                        path.display()
                    ))
                }
                None => samples = Some((rows, &spec.name)),
                Some(_) => {}
            }
            columns.push(Column::Rows(tensor));
        }
        Ok(DataSet {
            columns,
            samples: samples.map_or(1, |(n, _)| n),
        })
    }

    /// How many samples there are (1 when every file is shared).
    pub fn len(&self) -> usize {
        self.samples
    }

    /// Whether there are no samples (a file with a zero-length axis 0).
    pub fn is_empty(&self) -> bool {
        self.samples == 0
    }

    /// The inputs of sample `ix`, in the order of the specs the set was read with.
    pub fn sample(&self, ix: usize) -> Vec<HostTensor> {
        self.columns
            .iter()
            .map(|column| match column {
                Column::Shared(t) => t.clone(),
                Column::Rows(t) => row(t, ix),
            })
            .collect()
    }
}

/// Slice `ix..ix + 1` of `t` along axis 0.
fn row(t: &HostTensor, ix: usize) -> HostTensor {
    let rows = t.shape.first().map_or(1, |&n| n.max(1) as usize);
    let stride = t.data.len() / rows;
    let mut shape = t.shape.clone();
    if let Some(first) = shape.first_mut() {
        *first = 1;
    }
    HostTensor {
        name: t.name.clone(),
        dtype: t.dtype,
        shape,
        data: t.data[ix * stride..(ix + 1) * stride].to_vec(),
    }
}

/// How far one output of the candidate is from the reference's, over all samples.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutputQuality {
    /// Output name.
    pub name: String,
    /// Largest absolute difference of any element (floats only).
    pub max_abs: Option<f64>,
    /// Mean absolute difference over all elements (floats only).
    pub mean_abs: Option<f64>,
    /// Mean over samples of the cosine similarity of the two outputs (floats with more than one
    /// element per sample).
    pub cosine_mean: Option<f64>,
    /// The smallest per-sample cosine similarity.
    pub cosine_min: Option<f64>,
    /// Fraction of agreeing decisions, for integer outputs (labels: equal values; outputs of any
    /// dtype other than f32 are compared this way) and f32 outputs declared as class scores (same
    /// argmax over the last axis, or, when that axis has one element, the same side of 0.5).
    pub agreement: Option<f64>,
    /// What `agreement` counts: `"exact"`, `"argmax"` or `"p>0.5"`.
    pub agreement_kind: Option<&'static str>,
    /// Whether this float output holds class scores or probabilities (decisions are compared).
    pub classes: bool,
    /// Whether the thresholds apply to it (not to a recurrent state fed back as an input: its
    /// effect shows in the outputs that depend on it).
    pub gated: bool,
    abs_sum: f64,
    elements: u64,
    cosine_sum: f64,
    cosine_count: u64,
    agreeing: u64,
    decisions: u64,
}

impl OutputQuality {
    /// An empty comparison of output `name`; `classes` if it holds class scores or probabilities.
    pub fn new(name: &str, classes: bool) -> OutputQuality {
        OutputQuality {
            name: name.to_owned(),
            classes,
            gated: true,
            ..OutputQuality::default()
        }
    }

    /// Adds one sample's pair of outputs.
    ///
    /// # Errors
    /// When the two differ in dtype or shape: the variants are not the same model.
    pub fn add(&mut self, reference: &HostTensor, candidate: &HostTensor) -> Result<(), String> {
        if reference.dtype != candidate.dtype || reference.shape != candidate.shape {
            return Err(format!(
                "output {}: the reference gives {}, the candidate {}",
                self.name,
                reference.describe(),
                candidate.describe()
            ));
        }
        match (reference.as_f32(), candidate.as_f32()) {
            (Some(r), Some(c)) => self.add_floats(&r, &c, last_axis(reference)),
            _ if reference.dtype != DType::F32 => {
                self.agreement_kind = Some("exact");
                self.decisions += 1;
                self.agreeing += u64::from(reference.data == candidate.data);
                self.agreement = Some(self.agreeing as f64 / self.decisions as f64);
            }
            _ => return Err(format!("output {}: unreadable f32 data", self.name)),
        }
        Ok(())
    }

    fn add_floats(&mut self, r: &[f32], c: &[f32], classes: usize) {
        let mut worst = self.max_abs.unwrap_or(0.0);
        for (a, b) in r.iter().zip(c) {
            let d = f64::from((a - b).abs());
            worst = worst.max(d);
            self.abs_sum += d;
        }
        self.elements += r.len() as u64;
        self.max_abs = Some(worst);
        self.mean_abs = Some(self.abs_sum / self.elements as f64);
        if r.len() > 1 {
            let cos = cosine(r, c);
            self.cosine_sum += cos;
            self.cosine_count += 1;
            self.cosine_min = Some(self.cosine_min.map_or(cos, |m| m.min(cos)));
            self.cosine_mean = Some(self.cosine_sum / self.cosine_count as f64);
        }
        if !self.classes {
            return;
        }
        if classes > 1 {
            for (a, b) in r.chunks(classes).zip(c.chunks(classes)) {
                self.decisions += 1;
                self.agreeing += u64::from(argmax(a) == argmax(b));
            }
            self.agreement_kind = Some("argmax");
        } else {
            for (a, b) in r.iter().zip(c) {
                self.decisions += 1;
                self.agreeing += u64::from((*a > 0.5) == (*b > 0.5));
            }
            self.agreement_kind = Some("p>0.5");
        }
        if self.decisions > 0 {
            self.agreement = Some(self.agreeing as f64 / self.decisions as f64);
        }
    }
}

fn last_axis(t: &HostTensor) -> usize {
    t.shape.last().map_or(1, |&n| n as usize)
}

/// Cosine similarity; two zero vectors are identical (1), one zero vector is unrelated (0).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (f64::from(*x), f64::from(*y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    match (na == 0.0, nb == 0.0) {
        (true, true) => 1.0,
        (true, false) | (false, true) => 0.0,
        (false, false) => dot / (na.sqrt() * nb.sqrt()),
    }
}

/// Index of the largest value; the first on ties (as numpy and onnxruntime's ArgMax).
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (ix, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = ix;
        }
    }
    best
}

/// The thresholds a candidate must meet.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// Lowest allowed agreement (argmax or exact) on every output that has one.
    pub min_agreement: f64,
    /// Lowest allowed mean cosine similarity on every float output of more than one element.
    pub min_cosine: f64,
    /// Highest allowed absolute difference on any float element, if set.
    pub max_abs: Option<f64>,
}

/// Every way `outputs` fall short of `thresholds`, one line each; empty means pass.
pub fn failures(outputs: &[OutputQuality], thresholds: &Thresholds) -> Vec<String> {
    let mut failed = Vec::new();
    for o in outputs.iter().filter(|o| o.gated) {
        if let Some(a) = o.agreement.filter(|a| *a < thresholds.min_agreement) {
            failed.push(format!(
                "{}: {} agreement {:.2} % < {:.2} %",
                o.name,
                o.agreement_kind.unwrap_or(""),
                a * 100.0,
                thresholds.min_agreement * 100.0
            ));
        }
        if let Some(c) = o.cosine_mean.filter(|c| *c < thresholds.min_cosine) {
            failed.push(format!(
                "{}: mean cosine {c:.5} < {}",
                o.name, thresholds.min_cosine
            ));
        }
        if let (Some(m), Some(limit)) = (o.max_abs, thresholds.max_abs) {
            if m > limit {
                failed.push(format!("{}: max abs error {m:.3e} > {limit:e}", o.name));
            }
        }
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_and_argmax() {
        assert!((cosine(&[1.0, 0.0], &[1.0, 0.0]) - 1.0).abs() < 1e-12);
        assert!(cosine(&[1.0, 0.0], &[0.0, 1.0]).abs() < 1e-12);
        assert!((cosine(&[1.0, 2.0], &[-1.0, -2.0]) + 1.0).abs() < 1e-12);
        assert_eq!(cosine(&[0.0, 0.0], &[0.0, 0.0]), 1.0);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
        assert_eq!(argmax(&[0.1, 0.7, 0.7, 0.2]), 1);
        assert_eq!(argmax(&[3.0]), 0);
    }

    #[test]
    fn float_outputs_count_errors_cosine_and_argmax_per_row() {
        let mut q = OutputQuality::new("p", true);
        let r = HostTensor::from_f32("p", &[2, 3], &[0.1, 0.8, 0.1, 0.6, 0.3, 0.1]);
        let c = HostTensor::from_f32("p", &[2, 3], &[0.1, 0.7, 0.2, 0.3, 0.6, 0.1]);
        q.add(&r, &c).unwrap();
        assert!((q.max_abs.unwrap() - 0.3).abs() < 1e-6);
        assert!((q.mean_abs.unwrap() - 0.8 / 6.0).abs() < 1e-6);
        // Row 0 agrees (class 1), row 1 does not (0 vs 1).
        assert_eq!(q.agreement, Some(0.5));
        assert_eq!(q.agreement_kind, Some("argmax"));
        let want = cosine(
            &[0.1, 0.8, 0.1, 0.6, 0.3, 0.1],
            &[0.1, 0.7, 0.2, 0.3, 0.6, 0.1],
        );
        assert!((q.cosine_mean.unwrap() - want).abs() < 1e-12);
        // Not declared as classes: no decisions compared.
        let mut plain = OutputQuality::new("p", false);
        plain.add(&r, &c).unwrap();
        assert_eq!((plain.agreement, plain.cosine_mean), (None, q.cosine_mean));
        // A single probability has no cosine; its decision is which side of 0.5 it falls.
        let mut one = OutputQuality::new("v", true);
        for (a, b) in [(0.9, 0.7), (0.6, 0.4), (0.1, 0.2), (0.3, 0.45)] {
            one.add(
                &HostTensor::from_f32("v", &[1, 1], &[a]),
                &HostTensor::from_f32("v", &[1, 1], &[b]),
            )
            .unwrap();
        }
        assert_eq!(one.cosine_mean, None);
        assert_eq!(
            (one.agreement, one.agreement_kind),
            (Some(0.75), Some("p>0.5"))
        );
        assert!((one.max_abs.unwrap() - 0.2).abs() < 1e-6);
    }

    #[test]
    fn integer_outputs_agree_exactly_and_mismatched_shapes_are_errors() {
        let mut q = OutputQuality::new("label", false);
        for (a, b) in [(3, 3), (4, 4), (5, 6), (1, 1)] {
            q.add(
                &HostTensor::from_i64("label", &[1], &[a]),
                &HostTensor::from_i64("label", &[1], &[b]),
            )
            .unwrap();
        }
        assert_eq!(q.agreement, Some(0.75));
        assert_eq!(q.agreement_kind, Some("exact"));
        assert_eq!(q.max_abs, None);
        let thresholds = Thresholds {
            min_agreement: 0.99,
            min_cosine: 0.99,
            max_abs: None,
        };
        assert_eq!(failures(std::slice::from_ref(&q), &thresholds).len(), 1);
        let err = q
            .add(
                &HostTensor::from_i64("label", &[1], &[1]),
                &HostTensor::from_i64("label", &[2], &[1, 1]),
            )
            .unwrap_err();
        assert!(err.contains("the candidate"), "{err}");
    }

    #[test]
    fn data_sets_slice_rows_and_share_single_row_inputs() {
        let dir = std::env::temp_dir().join(format!("inferd-quality-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rows = HostTensor::from_f32("input", &[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let state = HostTensor::from_f32("state", &[2, 1], &[0.0, 0.0]);
        for t in [&rows, &state] {
            let file = std::fs::File::create(dir.join(format!("{}.npy", t.name))).unwrap();
            npy::write(file, t).unwrap();
        }
        let specs = [
            IoSpec {
                name: "input".into(),
                dtype: DType::F32,
                shape: vec![DimSpec::Fixed(1), DimSpec::Fixed(2)],
            },
            IoSpec {
                name: "state".into(),
                dtype: DType::F32,
                shape: vec![DimSpec::Fixed(2), DimSpec::Fixed(1)],
            },
        ];
        let set = DataSet::read(&dir, &specs).unwrap();
        assert_eq!(set.len(), 3);
        let second = set.sample(1);
        assert_eq!(second[0].shape, [1, 2]);
        assert_eq!(second[0].as_f32().unwrap(), [3.0, 4.0]);
        assert_eq!(second[1], state);
        // The same files for a model that batches: the state declared [2, N] is still shared.
        let batching = [
            IoSpec {
                shape: vec![DimSpec::Symbol("N".into()), DimSpec::Fixed(2)],
                ..specs[0].clone()
            },
            IoSpec {
                shape: vec![DimSpec::Fixed(2), DimSpec::Symbol("N".into())],
                ..specs[1].clone()
            },
        ];
        let set = DataSet::read(&dir, &batching).unwrap();
        assert_eq!(set.len(), 3);
        assert_eq!(set.sample(2)[0].as_f32().unwrap(), [5.0, 6.0]);
        assert_eq!(set.sample(2)[1], state);
        let wrong = [IoSpec {
            dtype: DType::I64,
            ..specs[0].clone()
        }];
        assert!(DataSet::read(&dir, &wrong).unwrap_err().contains("dtype"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
