//! An f32 `Where` (tract's `Iff`) over contiguous slices, in place of tract 0.23.9's.
//!
//! Transformers exported by PyTorch's scaled-dot-product attention end each layer's softmax with
//! `Where(IsNaN(p), 0, p)` over the whole attention tensor (a fully masked row gives NaN; it
//! becomes 0): on all-MiniLM-L6-v2 that is six selections over 12 × 128 × 128 floats per run, 6 %
//! of the dynamically quantized model's time and 3 % of fp32's. tract evaluates `Iff` through an
//! n-dimensional zip with every operand broadcast, about 1.1 ns per element here; this operator
//! handles the case where each operand is either the output's full shape or one element, over
//! plain slices, which the compiler turns into vector blends. Any other shape is left to tract's
//! operator, at load and, should shapes differ at run time, per run. The result is the same bits:
//! a selection copies, it computes nothing.

use tract_onnx::prelude::{
    tvec, DatumType, IntoTValue, OutletId, TValue, TVec, Tensor, TractResult, TypedFact, TypedModel,
};
use tract_onnx::tract_core::internal::{EvalContext, EvalOp, Op, StaticName, TypedOp};
use tract_onnx::tract_core::model::TypedModelPatch;
use tract_onnx::tract_core::ops::logic::Iff;
use tract_onnx::tract_core::{as_op, op_as_typed_op, op_out_of_plan};

/// Replaces every f32 `Iff` of `model` whose operands are each the output's shape or one element
/// with [`Select`].
pub fn swap_in(model: TypedModel) -> TractResult<TypedModel> {
    let mut patch = TypedModelPatch::default();
    let mut replaced = 0usize;
    for node in model.nodes() {
        if node.op_as::<Iff>().is_none() || node.inputs.len() != 3 {
            continue;
        }
        let output = &node.outputs[0].fact;
        if output.datum_type != DatumType::F32 {
            continue;
        }
        // Each operand the output's shape, or one element of no higher rank (a broadcast scalar);
        // at least one the output's shape, which the replacement's output then takes.
        let mut full = false;
        let mut fits = true;
        for input in &node.inputs {
            let fact = model.outlet_fact(*input)?;
            if fact.shape == output.shape {
                full = true;
            } else {
                fits &= fact.shape.volume().as_i64() == Some(1)
                    && fact.shape.rank() <= output.shape.rank();
            }
        }
        if !(fits && full) {
            continue;
        }
        let inputs: TVec<OutletId> = node
            .inputs
            .iter()
            .map(|i| patch.tap_model(&model, *i))
            .collect::<TractResult<_>>()?;
        let wire = patch.wire_node(&node.name, Select, &inputs)?;
        patch.shunt_outside(&model, OutletId::new(node.id, 0), wire[0])?;
        replaced += 1;
    }
    if replaced == 0 {
        return Ok(model);
    }
    let mut model = model;
    patch.apply(&mut model)?;
    model.into_compact()
}

/// `Where(cond, then, else)` on f32, each operand the output's shape or a single element.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct Select;

impl Op for Select {
    fn name(&self) -> StaticName {
        "Iff(inferd)".into()
    }

    op_as_typed_op!();
}

impl EvalOp for Select {
    op_out_of_plan!();

    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let shape = widest(inputs.iter().map(|t| t.shape())).to_vec();
        let plain = inputs.len() == 3
            && inputs[0].datum_type() == DatumType::Bool
            && inputs[1].datum_type() == DatumType::F32
            && inputs[2].datum_type() == DatumType::F32
            && inputs.iter().all(|t| {
                t.shape() == shape.as_slice() || (t.len() == 1 && t.rank() <= shape.len())
            });
        if !plain {
            // Shapes the load-time facts did not foresee: tract's general broadcasting.
            return Iff.eval(ctx, inputs);
        }
        let cond = inputs[0].try_as_plain_ram()?.as_slice::<bool>()?;
        let then = inputs[1].try_as_plain_ram()?.as_slice::<f32>()?;
        let other = inputs[2].try_as_plain_ram()?.as_slice::<f32>()?;
        let mut out = Tensor::zero::<f32>(&shape)?;
        select(
            cond,
            then,
            other,
            out.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?,
        );
        Ok(tvec!(out.into_tvalue()))
    }
}

/// The output's shape among the operands' (each the output's, or one element of no higher rank):
/// one of more than one element if there is one, of the highest rank.
fn widest<'a>(shapes: impl Iterator<Item = &'a [usize]>) -> &'a [usize] {
    shapes
        .max_by_key(|s| (s.iter().product::<usize>() != 1, s.len()))
        .unwrap_or(&[])
}

impl TypedOp for Select {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        // As `widest`: `swap_in` made sure one operand has the output's shape.
        let shape = inputs
            .iter()
            .map(|f| &f.shape)
            .max_by_key(|s| (s.volume().as_i64() != Some(1), s.rank()))
            .ok_or_else(|| anyhow::anyhow!("Iff(inferd) has no operands"))?;
        Ok(tvec!(TypedFact::dt_shape(DatumType::F32, shape.clone())))
    }

    as_op!();
}

/// `out[i] = if cond[i] { then[i] } else { other[i] }`, where an operand of one element stands for
/// every index. The four shapes of the loop each compile to a vector blend.
fn select(cond: &[bool], then: &[f32], other: &[f32], out: &mut [f32]) {
    let n = out.len();
    match (cond.len() == n, then.len() == n, other.len() == n) {
        (true, true, true) => {
            for (((o, &c), &t), &f) in out.iter_mut().zip(cond).zip(then).zip(other) {
                *o = if c { t } else { f };
            }
        }
        (true, false, true) => {
            let t = then[0];
            for ((o, &c), &f) in out.iter_mut().zip(cond).zip(other) {
                *o = if c { t } else { f };
            }
        }
        (true, true, false) => {
            let f = other[0];
            for ((o, &c), &t) in out.iter_mut().zip(cond).zip(then) {
                *o = if c { t } else { f };
            }
        }
        (true, false, false) => {
            let (t, f) = (then[0], other[0]);
            for (o, &c) in out.iter_mut().zip(cond) {
                *o = if c { t } else { f };
            }
        }
        // One condition for every element: a copy of one operand.
        (false, _, _) => {
            let chosen = if cond[0] { then } else { other };
            if chosen.len() == n {
                out.copy_from_slice(chosen);
            } else {
                out.fill(chosen[0]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::prelude::IntoRunnable;
    use tract_onnx::tract_core::internal::{tensor2, Datum, DatumExt, IntoTensor, SpecialOps};
    use tract_onnx::tract_core::ops::math::is_nan;

    /// A deterministic spread of floats with NaNs, infinities and negative zeros among them.
    fn floats(n: usize, seed: u32) -> Vec<f32> {
        let mut state = seed;
        (0..n)
            .map(|i| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                match i % 11 {
                    3 => f32::NAN,
                    5 => -0.0,
                    7 => f32::INFINITY,
                    _ => (state >> 8) as f32 / (1u32 << 20) as f32 - 8.0,
                }
            })
            .collect()
    }

    fn bools(n: usize) -> Vec<bool> {
        (0..n).map(|i| (i * 7919) % 3 == 0).collect()
    }

    fn run(op: &dyn EvalOp, inputs: &[Tensor]) -> Tensor {
        let inputs = inputs.iter().cloned().map(Tensor::into_tvalue).collect();
        #[allow(
            clippy::unwrap_used,
            reason = "a test: an evaluation that fails should fail the test"
        )]
        op.eval(&EvalContext::out_of_plan(), inputs).unwrap()[0]
            .clone()
            .into_tensor()
    }

    fn bits(t: &Tensor) -> (Vec<usize>, Vec<u32>) {
        let values = t
            .try_as_plain_ram()
            .and_then(|r| r.as_slice::<f32>())
            .map_or_else(|_| Vec::new(), |v| v.iter().map(|x| x.to_bits()).collect());
        (t.shape().to_vec(), values)
    }

    fn tensor<T: Datum + Copy>(shape: &[usize], values: &[T]) -> Tensor {
        #[allow(clippy::unwrap_used, reason = "a test's fixed shapes")]
        Tensor::from_shape(shape, values).unwrap()
    }

    #[test]
    fn same_bits_as_tracts_iff_for_every_operand_shape_it_takes() {
        let shape = [2, 3, 5];
        let n = 30;
        let full_cond = tensor(&shape, &bools(n));
        let full_a = tensor(&shape, &floats(n, 1));
        let full_b = tensor(&shape, &floats(n, 2));
        let one_cond = [tensor(&[1, 1, 1], &[true]), tensor(&[1], &[false])];
        let one_a = tensor(&[1, 1, 1], &[f32::NAN]);
        let one_b = tensor(&[], &[0.5f32]);
        let conds = [&full_cond, &one_cond[0], &one_cond[1]];
        let thens = [&full_a, &one_a];
        let others = [&full_b, &one_b];
        let mut checked = 0;
        for c in conds {
            for t in thens {
                for f in others {
                    let inputs = [c.clone(), (*t).clone(), (*f).clone()];
                    let want = run(&Iff, &inputs);
                    if want.len() != n {
                        // All three one element: not a case `swap_in` replaces (none has the
                        // output's shape of 30 elements).
                        continue;
                    }
                    assert_eq!(bits(&run(&Select, &inputs)), bits(&want), "{inputs:?}");
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 10);
    }

    #[test]
    fn shapes_it_does_not_take_go_to_tracts_iff() {
        // A row mask broadcast over columns: neither the output's shape nor one element.
        let cond = tensor(&[2, 1], &[true, false]);
        let a = tensor(&[2, 3], &floats(6, 3));
        let b = tensor(&[2, 3], &floats(6, 4));
        let inputs = [cond, a, b];
        assert_eq!(bits(&run(&Select, &inputs)), bits(&run(&Iff, &inputs)));
    }

    /// `Where(IsNaN(x), 0, x)`, as PyTorch exports the end of an attention softmax.
    fn nan_to_zero() -> TractResult<TypedModel> {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([4, 6]))?;
        let nan = model.wire_node("isnan", is_nan(), &[x])?;
        let zero = model.add_const("zero", tensor2(&[[0f32]]))?;
        let out = model.wire_node("where", Iff, &[nan[0], zero, x])?;
        model.select_output_outlets(&out)?;
        Ok(model)
    }

    fn run_model(model: TypedModel, x: &Tensor) -> TractResult<Tensor> {
        let plan = model.into_runnable()?;
        Ok(plan.run(tvec!(x.clone().into_tvalue()))?[0]
            .clone()
            .into_tensor())
    }

    #[test]
    fn swap_in_replaces_the_attention_nan_guard_and_keeps_its_results() -> TractResult<()> {
        let model = nan_to_zero()?;
        let swapped = swap_in(model.clone())?;
        let names: Vec<String> = swapped
            .nodes()
            .iter()
            .map(|n| n.op().name().to_string())
            .collect();
        assert!(names.iter().any(|n| n == "Iff(inferd)"), "{names:?}");
        assert!(!names.iter().any(|n| n == "Iff"), "{names:?}");
        let x = tensor(&[4, 6], &floats(24, 5));
        let want = run_model(model, &x)?;
        let got = run_model(swapped, &x)?;
        assert_eq!(bits(&got), bits(&want));
        assert!(want
            .try_as_plain_ram()?
            .as_slice::<f32>()?
            .iter()
            .all(|v| !v.is_nan()));
        Ok(())
    }

    #[test]
    fn swap_in_leaves_a_broadcast_mask_to_tract() -> TractResult<()> {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([4, 6]))?;
        let mask = model.add_source("mask", bool::fact([4, 1]))?;
        let fill = model.add_const("fill", tensor2(&[[-1e9f32]]))?;
        let out = model.wire_node("where", Iff, &[mask, fill, x])?;
        model.select_output_outlets(&out)?;
        let swapped = swap_in(model)?;
        assert!(swapped.nodes().iter().any(|n| n.op_is::<Iff>()));
        Ok(())
    }
}
