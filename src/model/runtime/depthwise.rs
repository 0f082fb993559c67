//! Quantized depthwise convolutions run on tract's float depthwise operator, with the integer
//! result.
//!
//! tract 0.23.9 lowers every quantized convolution (QLinearConv, ConvInteger) to an explicit
//! Im2col and its integer matrix multiply. For a depthwise convolution (one group per channel, as
//! in MobileNet-style models) that is one matrix multiply per channel with a single row: on
//! ppocr-cls's QOperator variant the Im2col alone was 23 % of a run, and the model ran 12× slower
//! than its fp32 form, where tract uses a dedicated depthwise operator. This rewrite gives the
//! quantized depthwise convolutions that operator:
//!
//! `y = requantize(Σ (x − x₀)(k − k₀) + bias)` is computed with `x − x₀` and `k − k₀` as floats.
//! Both are integers of at most 9 bits, so every product and partial sum is an integer; the
//! rewrite only applies where the largest possible sum, `255 · Σ|k − k₀| + |bias|` per channel,
//! stays below 2²⁴, where f32 holds every integer exactly. The float accumulator therefore equals
//! the integer one whatever order tract sums in, and padding with zeros after the shift is
//! padding with `x₀` before it, as ONNX specifies. The requantization is onnxruntime's: the
//! accumulator times `x_scale · k_scale / y_scale` (per output channel), rounded half to even,
//! plus `y₀`, saturated; a ConvInteger's accumulator is cast back to i32 unchanged.
//!
//! The rewrite runs on the decluttered model, before it goes to the prepared-model cache, so a
//! model read back from the cache has it too.

use tract_onnx::prelude::{
    DatumType, OutletId, SpecialOps, Tensor, TractResult, TypedModel, TypedNode,
};
use tract_onnx::tract_core::model::TypedModelPatch;
use tract_onnx::tract_core::ops::cast::cast;
use tract_onnx::tract_core::ops::change_axes::wire_with_rank_broadcast;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat};
use tract_onnx::tract_core::ops::math::{add, max, min, mul, round_half_to_even, sub};

/// The range of an i8 (`signed`) or a u8, as floats. Here rather than in `quantize_linear.rs`
/// (which uses it too) because this file runs before the prepared-model cache and is part of its
/// key (`build.rs`), that one after it.
pub(super) fn int8_bounds(signed: bool) -> (f32, f32) {
    if signed {
        (-128.0, 127.0)
    } else {
        (0.0, 255.0)
    }
}

/// The largest integer below which every integer is an f32.
const EXACT_F32: f64 = 16_777_216.0;

/// The widest `|x − x₀|` an 8-bit activation can give.
const MAX_SHIFTED_INPUT: f64 = 255.0;

/// Rewrites every quantized depthwise convolution of `model` that it can compute exactly.
///
/// # Returns
/// The model, and a note for the load log when anything was rewritten.
pub fn on_float_depthwise(mut model: TypedModel) -> TractResult<(TypedModel, Option<String>)> {
    let convs: Vec<usize> = model
        .nodes()
        .iter()
        .filter(|n| n.op_is::<Conv>())
        .map(|n| n.id)
        .collect();
    let mut count = 0usize;
    // One patch per convolution: a patch taps the model as it was, so a convolution reading
    // another one rewritten in the same patch would keep reading the original.
    for id in convs {
        let node = model.node(id);
        let Some(conv) = node.op_as::<Conv>() else {
            continue;
        };
        let Some(plan) = Plan::of(&model, node, conv)? else {
            continue;
        };
        let mut patch = TypedModelPatch::default();
        plan.wire(&model, node, conv, &mut patch)?;
        patch.apply(&mut model)?;
        count += 1;
    }
    if count == 0 {
        return Ok((model, None));
    }
    // The float convolutions get tract's declutter passes (which move a depthwise convolution's
    // channels last, among others) here, before the model is cached: a model read back from the
    // cache is only optimised.
    let model = model.into_decluttered()?;
    Ok((
        model,
        Some(format!(
            "runs {count} quantized depthwise convolutions on tract's float depthwise operator, \
             with integer-exact accumulation (tract 0.23.9 would run an im2col and one \
             single-row integer matrix multiply per channel)"
        )),
    ))
}

/// What a rewritable convolution becomes: constants computed from its quantized ones.
struct Plan {
    /// `k − k₀`, in the convolution's kernel layout.
    kernel: Tensor,
    /// The integer bias, as floats (one per output channel).
    bias: Tensor,
    output: Output,
}

enum Output {
    /// ConvInteger: the accumulator itself.
    I32,
    /// QLinearConv: requantized with one multiplier per output channel.
    Requantized {
        multipliers: Vec<f32>,
        zero_point: i32,
        signed: bool,
    },
}

impl Plan {
    /// `None` when `conv` is not a quantized depthwise convolution with constant weights and
    /// quantization parameters that this rewrite computes exactly.
    fn of(model: &TypedModel, node: &TypedNode, conv: &Conv) -> TractResult<Option<Plan>> {
        let Some(out_dt) = conv.q_params else {
            return Ok(None);
        };
        let channels = conv.output_channels();
        let depthwise = conv.group > 1
            && conv.group == conv.input_channels()
            && conv.group == channels
            && conv.kernel_fmt == KernelFormat::OIHW;
        if !depthwise || node.inputs.len() != 9 {
            return Ok(None);
        }
        let facts = model.node_input_facts(node.id)?;
        if !matches!(facts[0].datum_type, DatumType::U8 | DatumType::I8)
            || facts[3].shape.volume() != 1.into()
        {
            return Ok(None);
        }
        let konst = |ix: usize| facts[ix].konst.clone();
        let (Some(kernel), Some(bias), Some(k0)) = (konst(1), konst(2), konst(5)) else {
            return Ok(None);
        };
        if !matches!(kernel.datum_type(), DatumType::U8 | DatumType::I8) {
            return Ok(None);
        }
        let per_channel = |t: &Tensor| -> TractResult<Option<Vec<f64>>> {
            let values = t.cast_to::<f64>()?;
            let values = values.try_as_plain_ram()?.as_slice::<f64>()?;
            Ok(match values.len() {
                1 => Some(vec![values[0]; channels]),
                n if n == channels => Some(values.to_vec()),
                _ => None,
            })
        };
        let (Some(k0), Some(bias)) = (per_channel(&k0)?, per_channel(&bias)?) else {
            return Ok(None);
        };
        let weights = kernel.cast_to::<f64>()?;
        let weights = weights.try_as_plain_ram()?.as_slice::<f64>()?;
        if weights.is_empty() || weights.len() % channels != 0 {
            return Ok(None);
        }
        let taps = weights.len() / channels;
        let shifted: Vec<f32> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| (w - k0[i / taps]) as f32)
            .collect();
        let exact = (0..channels).all(|c| {
            let spread: f64 = shifted[c * taps..(c + 1) * taps]
                .iter()
                .map(|w| f64::from(w.abs()))
                .sum();
            MAX_SHIFTED_INPUT * spread + bias[c].abs() < EXACT_F32
        });
        if !exact {
            return Ok(None);
        }
        let floats = |t: &Tensor| -> TractResult<Vec<f32>> {
            let t = t.cast_to::<f32>()?;
            Ok(t.try_as_plain_ram()?.as_slice::<f32>()?.to_vec())
        };
        let scalar = |t: &Tensor| -> TractResult<Option<f32>> {
            let s = floats(t)?;
            Ok((s.len() == 1).then(|| s[0]))
        };
        let output = match out_dt {
            DatumType::I32 => {
                // tract ignores the scales of a ConvInteger; only plain ones are expected there.
                let mut scales = [4, 6].iter().map(|&ix| konst(ix).map(|t| floats(&t)));
                if !scales.all(|s| matches!(s, Some(Ok(s)) if s.iter().all(|&v| v == 1.0))) {
                    return Ok(None);
                }
                Output::I32
            }
            DatumType::U8 | DatumType::I8 => {
                let (Some(x_scale), Some(k_scale), Some(y0), Some(y_scale)) =
                    (konst(4), konst(6), konst(7), konst(8))
                else {
                    return Ok(None);
                };
                let (Some(x_scale), Some(y_scale), Some(y0)) =
                    (scalar(&x_scale)?, scalar(&y_scale)?, scalar(&y0)?)
                else {
                    return Ok(None);
                };
                let Some(k_scale) = per_channel(&k_scale)? else {
                    return Ok(None);
                };
                let signed = out_dt == DatumType::I8;
                let (low, high) = int8_bounds(signed);
                if !(low..=high).contains(&y0) || y_scale.is_nan() || y_scale <= 0.0 {
                    return Ok(None);
                }
                // onnxruntime's order: (x_scale · k_scale) / y_scale, in f32.
                let multipliers = k_scale
                    .iter()
                    .map(|&k| (x_scale * k as f32) / y_scale)
                    .collect();
                Output::Requantized {
                    multipliers,
                    zero_point: y0 as i32,
                    signed,
                }
            }
            _ => return Ok(None),
        };
        let kernel = Tensor::from_shape(kernel.shape(), &shifted)?;
        let bias: Vec<f32> = bias.iter().map(|&b| b as f32).collect();
        Ok(Some(Plan {
            kernel,
            bias: Tensor::from_shape(&[channels], &bias)?,
            output,
        }))
    }

    /// Wires the float convolution and its requantization in place of `node`.
    fn wire(
        self,
        model: &TypedModel,
        node: &TypedNode,
        conv: &Conv,
        patch: &mut TypedModelPatch,
    ) -> TractResult<()> {
        let name = &node.name;
        let x = patch.tap_model(model, node.inputs[0])?;
        let x0 = patch.tap_model(model, node.inputs[3])?;
        let x = patch.wire_node(format!("{name}.x_as_f32"), cast(DatumType::F32), &[x])?[0];
        let x0 = patch.wire_node(format!("{name}.x0_as_f32"), cast(DatumType::F32), &[x0])?[0];
        let shifted =
            wire_with_rank_broadcast(format!("{name}.x_minus_x0"), patch, sub(), &[x, x0])?[0];
        let kernel = patch.add_const(format!("{name}.kernel_minus_k0"), self.kernel)?;
        let bias = patch.add_const(format!("{name}.bias_as_f32"), self.bias)?;
        let float = Conv {
            q_params: None,
            ..conv.clone()
        };
        let acc = patch.wire_node(format!("{name}.float"), float, &[shifted, kernel, bias])?[0];
        let output = match self.output {
            Output::I32 => patch.wire_node(name, cast(DatumType::I32), &[acc])?[0],
            Output::Requantized {
                multipliers,
                zero_point,
                signed,
            } => {
                // Multiply, round half to even, offset, saturate, narrow: tract operators that
                // all have an NNEF form, so the rewritten model still goes to the prepared-model
                // cache. Saturating after the offset is the same as onnxruntime's saturating
                // before it: the bounds are integers and rounding is monotonic.
                let fact = patch.outlet_fact(acc)?.clone();
                let rank = fact.rank();
                let c_axis = conv
                    .pool_spec
                    .data_format
                    .shape(fact.shape.to_tvec())?
                    .c_axis();
                let mut shape = vec![1usize; rank];
                shape[c_axis] = multipliers.len();
                let scalar = |v: f32| Tensor::from_shape(&vec![1usize; rank], &[v]);
                let (low, high) = int8_bounds(signed);
                let mut wire = acc;
                for (step, op, operand) in [
                    ("scale", mul(), Tensor::from_shape(&shape, &multipliers)?),
                    ("zero_point", add(), scalar(zero_point as f32)?),
                    ("low", max(), scalar(low)?),
                    ("high", min(), scalar(high)?),
                ] {
                    let operand = patch.add_const(format!("{name}.requantize_{step}"), operand)?;
                    wire = patch.wire_node(
                        format!("{name}.requantize_{step}"),
                        op,
                        &[wire, operand],
                    )?[0];
                    if step == "scale" {
                        wire = patch.wire_node(
                            format!("{name}.requantize_round"),
                            round_half_to_even(),
                            &[wire],
                        )?[0];
                    }
                }
                let narrow = if signed { DatumType::I8 } else { DatumType::U8 };
                patch.wire_node(name, cast(narrow), &[wire])?[0]
            }
        };
        patch.shunt_outside(model, OutletId::new(node.id, 0), output)?;
        Ok(())
    }
}
