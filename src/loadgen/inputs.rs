//! Inputs for a load run: `.npy` files, or random tensors within a model's declared shapes.

use inferd_proto::DType;

use crate::model::{DimSpec, IoSpec};
use crate::tensor::HostTensor;

/// A small deterministic generator (xorshift64*): load runs are reproducible and need no `rand`.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded generator; a zero seed is replaced (xorshift's one fixed point).
    pub fn new(seed: u64) -> Rng {
        Rng(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Exponentially distributed with mean `mean` (Poisson inter-arrival times).
    pub fn exponential(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }
}

/// A random tensor for `spec`, symbolic dimensions set to `symbol_size`.
///
/// Values: floats uniform in [0, 1), integers in 0..10, bools 0 or 1: valid for the shipped models
/// (images, audio, token ids) and cheap to make.
pub fn random(spec: &IoSpec, symbol_size: u64, rng: &mut Rng) -> HostTensor {
    let shape: Vec<u64> = spec
        .shape
        .iter()
        .map(|d| match d {
            DimSpec::Fixed(n) => *n,
            DimSpec::Symbol(_) => symbol_size,
        })
        .collect();
    let count = shape.iter().product::<u64>() as usize;
    let mut data = Vec::with_capacity(count * spec.dtype.size());
    for _ in 0..count {
        match spec.dtype {
            DType::F32 => data.extend_from_slice(&(rng.unit() as f32).to_le_bytes()),
            DType::F64 => data.extend_from_slice(&rng.unit().to_le_bytes()),
            DType::F16 => data.extend_from_slice(&half::f16::from_f64(rng.unit()).to_le_bytes()),
            DType::Bool => data.push((rng.next_u64() & 1) as u8),
            other => {
                let v = rng.next_u64() % 10;
                data.extend_from_slice(&v.to_le_bytes()[..other.size()]);
            }
        }
    }
    HostTensor {
        name: spec.name.clone(),
        dtype: spec.dtype,
        shape,
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_tensors_fit_their_spec() {
        let mut rng = Rng::new(1);
        for dtype in DType::ALL {
            let spec = IoSpec {
                name: "x".into(),
                dtype,
                shape: vec![DimSpec::Symbol("N".into()), DimSpec::Fixed(3)],
            };
            let t = random(&spec, 2, &mut rng);
            assert_eq!(t.shape, vec![2, 3]);
            assert_eq!(t.data.len(), 6 * dtype.size(), "{dtype}");
            if dtype == DType::Bool {
                assert!(t.data.iter().all(|&b| b <= 1));
            }
        }
    }

    #[test]
    fn exponential_has_the_right_mean() {
        let mut rng = Rng::new(7);
        let n = 200_000;
        let mean = (0..n).map(|_| rng.exponential(2.0)).sum::<f64>() / n as f64;
        assert!((mean - 2.0).abs() < 0.05, "{mean}");
    }
}
