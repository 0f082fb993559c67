//! A QuantizeLinear the compiler can vectorise, in place of tract 0.23.9's, in QDQ models.
//!
//! tract runs a QDQ model (onnxruntime's `quantize_static` default) in float: it folds the
//! quantized weights back to f32 at load and keeps every activation's `QuantizeLinear →
//! DequantizeLinear` pair as fake quantization. Its QuantizeLinear is a scalar element-wise loop whose
//! rounding (`round_ties_even`) is a libm `rintf` call per element on the baseline x86_64 target (SSE2,
//! no `roundps`): on ppocr-cls's QDQ variants it is half of the run. This operator computes the
//! same function, `saturate(round_half_even(x · (1/scale)) + zero_point)` with tract's reciprocal
//! scale, rounding with the 1.5 × 2²³ addition trick after clamping to ±512 (far past the range any
//! 8-bit output keeps, and well inside the trick's exact range), so that it vectorises; results are
//! bit-identical to tract's (a test compares them, ties and NaN included; past |x · scale| ≈ 2³¹,
//! where tract's integer sum overflows, this one saturates). It is
//! swapped in on the optimised model, after tract's own graph rewrites have seen its operator.
//!
//! Where a QuantizeLinear's readers are all DequantizeLinears with the same parameters (the fake
//! quantization of an activation), they become one [`FakeQuantize`]: one pass over the tensor, in
//! place, instead of an 8-bit tensor written and read back; the result is the same float, bit for
//! bit.

use super::depthwise::int8_bounds;
use tract_onnx::prelude::IntoTensor;
use tract_onnx::prelude::{
    tvec, DatumType, IntoTValue, OutletId, TValue, TVec, Tensor, TractResult, TypedFact, TypedModel,
};
use tract_onnx::tract_core::internal::{EvalContext, EvalOp, Op, StaticName, TypedNode, TypedOp};
use tract_onnx::tract_core::model::TypedModelPatch;
use tract_onnx::tract_core::ops::change_axes::IntoShape;
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::quant::{DequantizeLinearF32, QuantizeLinearI8, QuantizeLinearU8};
use tract_onnx::tract_core::{as_op, op_as_typed_op, op_out_of_plan};

/// Replaces every f32-input QuantizeLinear of `model` (tract's `QuantizeLinearU8`/`I8`) with
/// [`QuantizeLinear`], or with its DequantizeLinears with [`FakeQuantize`].
pub fn swap_in(model: TypedModel) -> TractResult<TypedModel> {
    let mut patch = TypedModelPatch::default();
    let mut replaced = 0usize;
    let observed = model.output_outlets()?.to_vec();
    for node in model.nodes() {
        let Some(ElementWiseOp(mini, _)) = node.op_as::<ElementWiseOp>() else {
            continue;
        };
        let op = if let Some(q) = mini.downcast_ref::<QuantizeLinearU8>() {
            QuantizeLinear {
                scale: q.scale,
                zero_point: i32::from(q.zero_point),
                signed: false,
            }
        } else if let Some(q) = mini.downcast_ref::<QuantizeLinearI8>() {
            QuantizeLinear {
                scale: q.scale,
                zero_point: i32::from(q.zero_point),
                signed: true,
            }
        } else {
            continue;
        };
        if node.inputs.len() != 1 || model.outlet_fact(node.inputs[0])?.datum_type != DatumType::F32
        {
            continue;
        }
        let input = patch.tap_model(&model, node.inputs[0])?;
        let mut observed_between = false;
        // Every reader a DequantizeLinear with the same parameters (onnxruntime writes one per
        // consumer of a quantized tensor), possibly behind one reshape tract moved between them:
        // one fused op (and the reshape) feeds them all.
        let mut readers = model.all_succ(node.id)?.unwrap_or_default();
        let mut reshape = None;
        if let [only] = readers.as_slice() {
            let only: &TypedNode = only;
            if let Some(op) = only.op_as::<IntoShape>() {
                reshape = Some((only.name.clone(), op.clone()));
                observed_between = observed.contains(&OutletId::new(only.id, 0));
                readers = model.all_succ(only.id)?.unwrap_or_default();
            }
        }
        let dequantize: Option<Vec<(&_, &DequantizeLinearF32)>> = readers
            .iter()
            .map(|succ| Some((*succ, succ.op_as::<DequantizeLinearF32>()?)))
            .collect();
        let dequantize = dequantize.filter(|dqs| {
            !observed.contains(&OutletId::new(node.id, 0))
                && !observed_between
                && dqs.windows(2).all(|w| w[0].1 == w[1].1)
        });
        match dequantize.as_deref() {
            Some([(first, dq), ..]) => {
                let fused = FakeQuantize {
                    quantize: op,
                    scale: dq.scale,
                    zero_point: dq.zero_point,
                };
                let mut output = patch.wire_node(&first.name, fused, &[input])?;
                if let Some((name, op)) = reshape {
                    output = patch.wire_node(name, op, &output)?;
                }
                for (succ, _) in dequantize.iter().flatten() {
                    patch.shunt_outside(&model, OutletId::new(succ.id, 0), output[0])?;
                }
            }
            _ => {
                let output = patch.wire_node(&node.name, op, &[input])?;
                patch.shunt_outside(&model, OutletId::new(node.id, 0), output[0])?;
            }
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

/// ONNX QuantizeLinear from f32, per tensor, to u8 or i8.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizeLinear {
    /// The reciprocal of ONNX's scale, as tract keeps it (it multiplies).
    pub scale: f32,
    /// The zero point.
    pub zero_point: i32,
    /// i8 output (else u8).
    pub signed: bool,
}

impl Eq for QuantizeLinear {}

impl std::hash::Hash for QuantizeLinear {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.scale.to_bits().hash(state);
        self.zero_point.hash(state);
        self.signed.hash(state);
    }
}

impl Op for QuantizeLinear {
    fn name(&self) -> StaticName {
        if self.signed {
            "QuantizeLinearI8(inferd)".into()
        } else {
            "QuantizeLinearU8(inferd)".into()
        }
    }

    op_as_typed_op!();
}

impl EvalOp for QuantizeLinear {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = inputs[0].cast_to::<f32>()?;
        let xs = input.try_as_plain_ram()?.as_slice::<f32>()?;
        let out = if self.signed {
            let mut dst = Tensor::zero_dt(DatumType::I8, input.shape())?;
            quantize_i8(
                xs,
                self.scale,
                self.zero_point,
                dst.try_as_plain_ram_mut()?.as_slice_mut::<i8>()?,
            );
            dst
        } else {
            let mut dst = Tensor::zero_dt(DatumType::U8, input.shape())?;
            quantize_u8(
                xs,
                self.scale,
                self.zero_point,
                dst.try_as_plain_ram_mut()?.as_slice_mut::<u8>()?,
            );
            dst
        };
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for QuantizeLinear {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut fact = inputs[0].clone();
        fact.datum_type = if self.signed {
            DatumType::I8
        } else {
            DatumType::U8
        };
        fact.konst = None;
        fact.uniform = None;
        Ok(tvec!(fact))
    }

    as_op!();
}

/// QuantizeLinear then DequantizeLinear, in one pass: `(saturate(q) - zero_point) · scale`.
#[derive(Clone, Debug, PartialEq)]
pub struct FakeQuantize {
    /// The quantization.
    pub quantize: QuantizeLinear,
    /// The DequantizeLinear's scale.
    pub scale: f32,
    /// The DequantizeLinear's zero point.
    pub zero_point: i32,
}

impl Eq for FakeQuantize {}

impl std::hash::Hash for FakeQuantize {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.quantize.hash(state);
        self.scale.to_bits().hash(state);
        self.zero_point.hash(state);
    }
}

impl Op for FakeQuantize {
    fn name(&self) -> StaticName {
        "FakeQuantize(inferd)".into()
    }

    op_as_typed_op!();
}

impl EvalOp for FakeQuantize {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, mut inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        // In place when this op holds the only reference to its input, as it usually does.
        let mut tensor = inputs.remove(0).into_tensor();
        if tensor.datum_type() != DatumType::F32 {
            tensor = tensor.cast_to::<f32>()?.into_owned();
        }
        fake_quantize(
            tensor.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?,
            &self.quantize,
            self.scale,
            self.zero_point,
        );
        Ok(tvec!(tensor.into_tvalue()))
    }
}

impl TypedOp for FakeQuantize {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut fact = inputs[0].clone();
        fact.datum_type = DatumType::F32;
        fact.konst = None;
        fact.uniform = None;
        Ok(tvec!(fact))
    }

    as_op!();
}

/// 1.5 × 2²³: adding it to a float of magnitude below 2²² rounds it to an integer (half to even, the
/// default rounding mode) held in the low bits of the sum's mantissa.
const ROUND: f32 = 12_582_912.0;

/// `round_half_even(v) + zero_point` before saturation, as a float: exact for the range that
/// matters (values beyond ±512 saturate either way, and the rounding trick is exact below 2²²), and
/// a NaN becomes `zero_point` as in tract (whose float → int cast makes it 0). Shared with
/// DynamicQuantizeLinear (`quantize.rs`), which divides by its scale where this multiplies.
#[inline(always)]
pub(super) fn shifted(v: f32, zero_point: f32) -> f32 {
    #[allow(
        clippy::eq_op,
        reason = "v == v is false only for NaN, and compiles to a select"
    )]
    let v = if v == v { v.clamp(-512.0, 512.0) } else { 0.0 };
    ((v + ROUND) - ROUND) + zero_point
}

/// The integer `v` (one of -128..=255, as a float) as its low byte. Adding 1.5 × 2²³ puts `v` in the
/// low bits of the float's mantissa; reading them back is a bit cast and a mask, where a float → int
/// `as` cast is a saturating conversion that the compiler keeps scalar.
#[inline(always)]
pub(super) fn low_byte(v: f32) -> u8 {
    ((v + ROUND).to_bits() & 0xff) as u8
}

/// tract's QuantizeLinear then its DequantizeLinearF32 (`scale`, `zero_point`), element-wise in
/// place.
pub fn fake_quantize(xs: &mut [f32], q: &QuantizeLinear, scale: f32, zero_point: i32) {
    let (lo, hi) = int8_bounds(q.signed);
    let (qzp, dzp) = (q.zero_point as f32, zero_point as f32);
    for x in xs.iter_mut() {
        // Integers all the way to the last multiplication, so the same float as tract's
        // `(q as i32 - zero_point) as f32 * scale`.
        *x = (shifted(*x * q.scale, qzp).clamp(lo, hi) - dzp) * scale;
    }
}

/// tract's QuantizeLinearU8, element-wise.
pub fn quantize_u8(xs: &[f32], scale: f32, zero_point: i32, ys: &mut [u8]) {
    let zp = zero_point as f32;
    for (x, y) in xs.iter().zip(ys.iter_mut()) {
        *y = low_byte(shifted(*x * scale, zp).clamp(0.0, 255.0));
    }
}

/// tract's QuantizeLinearI8, element-wise.
pub fn quantize_i8(xs: &[f32], scale: f32, zero_point: i32, ys: &mut [i8]) {
    let zp = zero_point as f32;
    for (x, y) in xs.iter().zip(ys.iter_mut()) {
        // Two's complement: the low byte of -1 is 0xff.
        *y = low_byte(shifted(*x * scale, zp).clamp(-128.0, 127.0)) as i8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::quant::{quantize_linear_f32_i8, quantize_linear_f32_u8};

    #[test]
    fn bit_identical_to_tract_including_ties_and_extremes() {
        let mut state = 0x9e37_79b9_u32;
        let mut next = move || {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 8) as f32 / (1u32 << 24) as f32
        };
        let mut xs: Vec<f32> = (0..4099).map(|_| next() * 80.0 - 40.0).collect();
        // Exact halves for a reciprocal scale of 1 and 2, values far out of range, zeros, NaN.
        // (Past |x · scale| ≈ 2³¹ tract's integer sum overflows; this operator saturates, below.)
        xs.extend((-600..=600).map(|i| i as f32 * 0.25));
        xs.extend([0.0, -0.0, 1e6, -1e6, 3e7, -3e7, f32::NAN]);
        for (scale, zero_point) in [
            (1.0, 0),
            (2.0, 128),
            (1.0 / 0.0173, 37),
            (40.0, 255),
            (0.5, 3),
        ] {
            let mut got = vec![0u8; xs.len()];
            quantize_u8(&xs, scale, zero_point, &mut got);
            for (x, g) in xs.iter().zip(&got) {
                assert_eq!(
                    *g,
                    quantize_linear_f32_u8(*x, scale, zero_point),
                    "u8 x={x} scale={scale} zp={zero_point}"
                );
            }
            let zero_point = zero_point - 128;
            let mut got = vec![0i8; xs.len()];
            quantize_i8(&xs, scale, zero_point, &mut got);
            for (x, g) in xs.iter().zip(&got) {
                assert_eq!(
                    *g,
                    quantize_linear_f32_i8(*x, scale, zero_point),
                    "i8 x={x} scale={scale} zp={zero_point}"
                );
            }
        }
        // Quantize then dequantize, fused, against tract's two steps.
        for (signed, zero_point) in [(false, 131), (true, -7)] {
            let q = QuantizeLinear {
                scale: 1.0 / 0.0173,
                zero_point,
                signed,
            };
            let (scale, dq_zero_point) = (0.0173, zero_point);
            let mut got = xs.clone();
            fake_quantize(&mut got, &q, scale, dq_zero_point);
            for (x, g) in xs.iter().zip(&got) {
                let level = if signed {
                    i32::from(quantize_linear_f32_i8(*x, q.scale, zero_point))
                } else {
                    i32::from(quantize_linear_f32_u8(*x, q.scale, zero_point))
                };
                let want = (level - dq_zero_point) as f32 * scale;
                assert_eq!(g.to_bits(), want.to_bits(), "x={x} signed={signed}");
            }
        }
        let extremes = [f32::INFINITY, f32::MAX, f32::NEG_INFINITY, f32::MIN];
        let mut u = [0u8; 4];
        quantize_u8(&extremes, 40.0, 200, &mut u);
        assert_eq!(u, [255, 255, 0, 0]);
        let mut i = [0i8; 4];
        quantize_i8(&extremes, 40.0, 100, &mut i);
        assert_eq!(i, [127, 127, -128, -128]);
    }
}
