//! A DynamicQuantizeLinear the compiler can vectorise, in place of tract 0.23.9's.
//!
//! Dynamically quantized models (onnxruntime's `quantize_dynamic`: MatMulInteger fed by
//! DynamicQuantizeLinear) spend most of their time here in tract: on all-MiniLM-L6-v2 its
//! DynamicQuantizeLinearU8 is 46 % of a run while the int8 matmuls it feeds are about 3.5× faster
//! than fp32's. tract's version finds the range with a branchy fold over an n-dimensional array view
//! and rounds with `round_ties_even`, which on the baseline x86_64 target (SSE2, no `roundps`) is a
//! library call per element. This one finds the range with eight-lane min/max and rounds half to
//! even with the 1.5 × 2²³ addition trick, which is exact for the |x / scale| ≤ 255 that quantization
//! produces; results are bit-identical to tract's (a test compares them, ties included).

use tract_onnx::prelude::{
    tvec, DatumType, IntoTValue, OutletId, TValue, TVec, Tensor, TractResult, TypedFact, TypedModel,
};
use tract_onnx::tract_core::internal::{EvalContext, EvalOp, Op, StaticName, TypedOp};
use tract_onnx::tract_core::model::TypedModelPatch;
use tract_onnx::tract_core::{as_op, op_as_typed_op, op_out_of_plan};

use super::quantize_linear::{low_byte, shifted};

/// The name tract gives its own operator, which [`DynamicQuantizeU8`] replaces.
const TRACT_OP: &str = "DynamicQuantizeLinearU8";

/// Replaces every tract DynamicQuantizeLinear of `model` with [`DynamicQuantizeU8`].
pub fn swap_in(model: TypedModel) -> TractResult<TypedModel> {
    let mut patch = TypedModelPatch::default();
    let mut replaced = 0usize;
    for node in model.nodes() {
        if node.op().name() != TRACT_OP || node.inputs.len() != 1 {
            continue;
        }
        let input = patch.tap_model(&model, node.inputs[0])?;
        let outputs = patch.wire_node(&node.name, DynamicQuantizeU8, &[input])?;
        for (slot, wire) in outputs.iter().enumerate() {
            patch.shunt_outside(&model, OutletId::new(node.id, slot), *wire)?;
        }
        replaced += 1;
    }
    if replaced == 0 {
        return Ok(model);
    }
    let mut model = model;
    patch.apply(&mut model)?;
    model.into_compact()
}

/// ONNX DynamicQuantizeLinear to u8: outputs the quantized tensor, its scale and its zero point.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct DynamicQuantizeU8;

impl Op for DynamicQuantizeU8 {
    fn name(&self) -> StaticName {
        "DynamicQuantizeLinearU8(inferd)".into()
    }

    op_as_typed_op!();
}

impl EvalOp for DynamicQuantizeU8 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = inputs[0].cast_to::<f32>()?;
        let xs = input.try_as_plain_ram()?.as_slice::<f32>()?;
        let (scale, zero_point) = scale_and_zero_point(xs);
        let mut dst = Tensor::zero_dt(DatumType::U8, input.shape())?;
        quantize(
            xs,
            scale,
            zero_point,
            dst.try_as_plain_ram_mut()?.as_slice_mut::<u8>()?,
        );
        Ok(tvec!(
            dst.into_tvalue(),
            Tensor::from(scale).into_tvalue(),
            Tensor::from(zero_point).into_tvalue()
        ))
    }
}

impl TypedOp for DynamicQuantizeU8 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut quantized = inputs[0].clone();
        quantized.datum_type = DatumType::U8;
        quantized.konst = None;
        Ok(tvec!(
            quantized,
            TypedFact::dt_scalar(DatumType::F32),
            TypedFact::dt_scalar(DatumType::U8)
        ))
    }

    as_op!();
}

/// The range of `xs` widened to include 0, as scale and zero point (ONNX's definition). NaNs are
/// skipped, as tract's comparison fold skips them.
pub fn scale_and_zero_point(xs: &[f32]) -> (f32, u8) {
    const LANES: usize = 8;
    let (mut lo, mut hi) = ([0f32; LANES], [0f32; LANES]);
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for lane in 0..LANES {
            lo[lane] = lo[lane].min(chunk[lane]);
            hi[lane] = hi[lane].max(chunk[lane]);
        }
    }
    let mut min = lo.iter().copied().fold(0f32, f32::min);
    let mut max = hi.iter().copied().fold(0f32, f32::max);
    for &x in rest {
        min = min.min(x);
        max = max.max(x);
    }
    let scale = (max - min) / 255.0;
    let zero_point = (-min / scale).round_ties_even().clamp(0.0, 255.0);
    (scale, zero_point as u8)
}

/// `y = saturate(round_half_even(x / scale) + zero_point)`, element-wise.
pub fn quantize(xs: &[f32], scale: f32, zero_point: u8, ys: &mut [u8]) {
    // Rounded half to even by the 1.5 × 2²³ trick and read out of the float's mantissa, so that the
    // loop vectorises (`quantize_linear.rs`). A NaN (a NaN input, or 0 / 0 for an all-zero tensor)
    // becomes the zero point, as tract's cast makes it 0.
    let zero_point = f32::from(zero_point);
    for (x, y) in xs.iter().zip(ys.iter_mut()) {
        *y = low_byte(shifted(x / scale, zero_point).clamp(0.0, 255.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// tract 0.23.9's own arithmetic, for comparison.
    fn reference(xs: &[f32]) -> (f32, u8, Vec<u8>) {
        let (mut min, mut max) = (0f32, 0f32);
        for &v in xs {
            if v < min {
                min = v;
            } else if v > max {
                max = v;
            }
        }
        let scale = (max - min) / 255.0;
        #[allow(
            clippy::manual_clamp,
            reason = "tract's arithmetic as written: max/min turn a NaN into 0, clamp would keep it"
        )]
        let zp = (-min / scale).round_ties_even().max(0.0).min(255.0) as u8;
        let ys = xs
            .iter()
            .map(|x| (((x / scale).round_ties_even() as i32) + zp as i32).clamp(0, 255) as u8)
            .collect();
        (scale, zp, ys)
    }

    fn ours(xs: &[f32]) -> (f32, u8, Vec<u8>) {
        let (scale, zp) = scale_and_zero_point(xs);
        let mut ys = vec![0; xs.len()];
        quantize(xs, scale, zp, &mut ys);
        (scale, zp, ys)
    }

    #[test]
    fn onnx_examples() {
        // From the ONNX operator documentation.
        let (scale, zp, ys) = ours(&[0., 2., -3., -2.5, 1.34, 0.5]);
        assert!((scale - 0.019_607_844).abs() < 1e-8);
        assert_eq!((zp, ys), (153, vec![153, 255, 0, 26, 221, 179]));
        let (_, zp, ys) = ours(&[-1., -2.1, -1.3, -2.5, -3.34, -4.]);
        assert_eq!((zp, ys), (255, vec![191, 121, 172, 96, 42, 0]));
    }

    #[test]
    fn bit_identical_to_tract_including_ties_and_odd_lengths() {
        // A deterministic spread of values (an LCG), lengths that leave remainders, exact halves
        // (x / scale = k + 0.5 for a scale of 1), all-zero and single-sign inputs.
        let mut state = 0x2545_f491_u32;
        let mut next = move || {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 8) as f32 / (1u32 << 24) as f32
        };
        let mut cases: Vec<Vec<f32>> = vec![
            vec![],
            vec![0.0; 13],
            vec![1.5, 2.5, -0.5],
            vec![1.0, f32::NAN, -2.0, 0.5],
        ];
        for len in [1, 7, 8, 9, 100, 1031] {
            cases.push((0..len).map(|_| next() * 20.0 - 7.0).collect());
            cases.push((0..len).map(|_| next() * 3.0).collect());
            cases.push((0..len).map(|_| -next()).collect());
        }
        // Scale exactly 1: min 0, max 255, and halves everywhere.
        cases.push((0..=510).map(|i| i as f32 * 0.5).collect());
        for xs in cases {
            let (want_scale, want_zp, want) = reference(&xs);
            let (scale, zp, got) = ours(&xs);
            assert_eq!(scale.to_bits(), want_scale.to_bits(), "{xs:?}");
            assert_eq!((zp, &got), (want_zp, &want), "{xs:?}");
        }
    }
}
