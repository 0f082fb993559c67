//! Graphs tract 0.23.9 miscomputes silently (issue #8): each fixture under `tests/fixtures/traps/`
//! is a minimal model of one trap with onnxruntime's outputs beside it
//! (`tests/fixtures/make_int8_traps.py`). Loading must either repair the graph so the outputs match
//! onnxruntime's, or refuse it with a message that names the trap.

use std::path::{Path, PathBuf};

use inferd::model::manifest::Manifest;
use inferd::model::runtime::NodeTime;
use inferd::model::Runtime;
use inferd::tensor::HostTensor;

use crate::harness::{npy, repo_root};
use crate::models::assert_close;

fn fixture(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures/traps").join(name)
}

/// The nodes of a profiled plan that run one of tract's zero-point compensation `steps` (name
/// suffixes) as a separate pass. Fused into the matrix product they cost nothing extra, and the
/// product then takes the name of the last operation fused into it.
fn unfused<'n>(nodes: &'n [NodeTime], steps: &[&str]) -> Vec<&'n str> {
    nodes
        .iter()
        .filter(|n| n.op != "OptMatMul")
        .map(|n| n.node.as_str())
        .filter(|n| steps.iter().any(|step| n.ends_with(step)))
        .collect()
}

fn run(dir: &Path, input: &str) -> (Runtime, Vec<HostTensor>) {
    let runtime = Runtime::load(&dir.join("model.onnx"), None).unwrap();
    let outputs = runtime
        .run(vec![npy(dir.join("input.npy"), input)])
        .unwrap();
    (runtime, outputs)
}

#[test]
fn a_quantized_softmax_is_repaired_and_matches_onnxruntime() {
    let dir = fixture("qsoftmax");
    let (runtime, outputs) = run(&dir, "x");
    assert_eq!(runtime.repairs().len(), 1, "{:?}", runtime.repairs());
    assert!(runtime.repairs()[0].contains("Softmax"));
    let probs = &outputs[0];
    // Without the repair every probability is 0.996 (the top of the u8 range times 1/256). Each row
    // of a softmax sums to 1.
    for row in probs.as_f32().unwrap().chunks(4) {
        let sum: f32 = row.iter().sum();
        assert!((sum - 1.0).abs() < 1e-4, "row {row:?} sums to {sum}");
    }
    // onnxruntime rounds the probabilities to steps of 1/256; the repaired graph does not, so they
    // differ by at most half a step.
    let want = npy(dir.join("probs.npy"), "probs");
    assert_close(probs, &want, 0.5 / 256.0 + 1e-6, "qsoftmax probs");
}

#[test]
fn a_quantized_softmax_that_cannot_be_repaired_is_refused_with_the_way_out() {
    // The same chain, but the quantized probabilities are the graph's output: removing the
    // quantization would change the output's type.
    let err = Runtime::load(&fixture("qsoftmax-output").join("model.onnx"), None).unwrap_err();
    assert!(err.contains("Softmax"), "{err}");
    assert!(err.contains("graph output"), "{err}");
    assert!(err.contains("nodes_to_exclude"), "{err}");
}

#[test]
fn a_binary_forest_label_is_recomputed_and_matches_onnxruntime() {
    let dir = fixture("binary-forest");
    let (runtime, outputs) = run(&dir, "X");
    assert_eq!(runtime.repairs().len(), 1, "{:?}", runtime.repairs());
    let names: Vec<&str> = runtime.outputs().iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["label", "probabilities"]);
    let want_label = npy(dir.join("label.npy"), "label");
    // Both classes occur in the reference, so a constant label (tract's failure) cannot pass.
    let labels = want_label.as_i64().unwrap();
    assert!(labels.contains(&0) && labels.contains(&1));
    assert_close(&outputs[0], &want_label, 0.0, "binary-forest label");
    let want_probs = npy(dir.join("probabilities.npy"), "probabilities");
    assert_close(
        &outputs[1],
        &want_probs,
        1e-5,
        "binary-forest probabilities",
    );
}

#[test]
fn shipped_models_need_no_repair() {
    for model in [
        "digits-mlp",
        "digits-mlp-int8",
        "ppocr-cls",
        "silero-vad",
        "silero-vad-int8",
    ] {
        let vdir = repo_root().join("models").join(model).join("1");
        let manifest = Manifest::load(&vdir).unwrap();
        let facts = manifest
            .as_ref()
            .map(|m| m.inputs.as_slice())
            .filter(|f| !f.is_empty());
        let runtime = Runtime::load(&vdir.join("model.onnx"), facts);
        let runtime = runtime.unwrap_or_else(|e| panic!("{model}: {e}"));
        assert!(
            runtime.repairs().is_empty(),
            "{model}: {:?}",
            runtime.repairs()
        );
    }
}

#[test]
fn integer_weights_cast_to_float_are_converted_once_at_load() {
    // Not a wrong answer but a slow one: tract declines to fold a 4.4 MB f32 constant and would
    // cast the 1.1 MB int8 table on every run.
    let dir = fixture("int8-cast-embedding");
    let (runtime, outputs) = run(&dir, "ids");
    assert_eq!(runtime.repairs().len(), 1, "{:?}", runtime.repairs());
    assert!(
        runtime.repairs()[0].contains("converted 1 integer weight tensors"),
        "{:?}",
        runtime.repairs()
    );
    // The memory budget counts what is resident: the f32 table, not the int8 file.
    assert!(
        runtime.weight_bytes() >= 1100 * 1000 * 4,
        "{}",
        runtime.weight_bytes()
    );
    let want = npy(dir.join("embedding.npy"), "embedding");
    assert_close(&outputs[0], &want, 1e-6, "int8-cast-embedding");
}

#[test]
fn dynamically_quantized_models_run_inferd_s_dynamic_quantize_and_match_onnxruntime() {
    // Per tensor, and per channel: there every weight's zero point is a vector of zeros, which
    // inferd reads as one scalar so that tract drops its element-wise zero-point compensation.
    for (name, per_channel) in [
        ("digits-dynamic", false),
        ("digits-dynamic-per-channel", true),
    ] {
        let dir = fixture(name);
        let (runtime, outputs) = run(&dir, "X");
        let read_as_scalars = runtime
            .repairs()
            .iter()
            .any(|r| r.starts_with("read 3 per-channel zero points"));
        assert_eq!(
            read_as_scalars,
            per_channel,
            "{name}: {:?}",
            runtime.repairs()
        );
        // The plan runs inferd's operator, not tract's (whose results it reproduces bit for bit:
        // the unit tests in src/model/runtime/quantize.rs compare the two).
        let nodes = runtime
            .profile(&[npy(dir.join("input.npy"), "X")], 1)
            .unwrap();
        let ops: Vec<&str> = nodes.iter().map(|n| n.op.as_str()).collect();
        assert!(
            ops.contains(&"DynamicQuantizeLinearU8(inferd)"),
            "{name}: {ops:?}"
        );
        assert!(!ops.contains(&"DynamicQuantizeLinearU8"), "{name}: {ops:?}");
        let compensations = unfused(&nodes, &[".minus_b0_A", ".plus_a0_k_b0"]);
        assert!(compensations.is_empty(), "{name}: {compensations:?}");
        assert_close(
            &outputs[0],
            &npy(dir.join("label.npy"), "label"),
            0.0,
            &format!("{name} label"),
        );
        // Integer matmuls are exact in both engines; the float parts around them differ in
        // summation order only.
        let want = npy(dir.join("probabilities.npy"), "probabilities");
        assert_close(&outputs[1], &want, 1e-5, &format!("{name} probabilities"));
    }
}

#[test]
fn a_per_channel_qlinear_conv_with_zero_points_read_as_a_scalar_matches_onnxruntime() {
    // onnxruntime's QOperator quantizer writes a vector of zero weight zero points; read as one
    // scalar, tract's integer convolution must still give onnxruntime's numbers (its requantization
    // rounds as onnxruntime's does, so the u8 outputs agree exactly).
    let dir = fixture("qlinear-conv");
    let (runtime, outputs) = run(&dir, "x");
    assert!(
        runtime
            .repairs()
            .iter()
            .any(|r| r.starts_with("read 1 per-channel zero points")),
        "{:?}",
        runtime.repairs()
    );
    let nodes = runtime
        .profile(&[npy(dir.join("input.npy"), "x")], 1)
        .unwrap();
    // tract's convolution multiplies the kernel (its `a`) by the im2col matrix (`b`): the kernel's
    // zero point times the column sums, and the terms after it in the chain.
    let compensations = unfused(
        &nodes,
        &[
            ".sum_b",
            ".a0_sum_b",
            ".minus_a0_B",
            ".minus_b0_A",
            ".plus_a0_k_b0",
        ],
    );
    assert!(compensations.is_empty(), "{compensations:?}");
    assert_close(
        &outputs[0],
        &npy(dir.join("y.npy"), "y"),
        0.0,
        "qlinear-conv",
    );
}

#[test]
fn shipped_qdq_models_run_inferd_s_quantize_linear() {
    // Their outputs are checked against onnxruntime's in models.rs; here, that the plan runs
    // inferd's QuantizeLinear or fused quantize-dequantize (bit-identical to tract's: unit tests in
    // src/model/runtime/quantize_linear.rs) and none of tract's QuantizeLinear.
    let registry = inferd::model::Registry::load(&repo_root().join("models")).unwrap();
    for name in ["digits-mlp-int8", "silero-vad-int8"] {
        let m = registry.get(name, None).unwrap();
        let ops: Vec<String> = m
            .runtime
            .profile(&m.warmup_inputs, 1)
            .unwrap()
            .into_iter()
            .map(|n| n.op)
            .collect();
        let ours = |op: &String| {
            op == "FakeQuantize(inferd)"
                || (op.starts_with("QuantizeLinear") && op.ends_with("(inferd)"))
        };
        assert!(ops.iter().any(ours), "{name}: {ops:?}");
        assert!(
            !ops.iter()
                .any(|op| op == "QuantizeLinearU8" || op == "QuantizeLinearI8"),
            "{name}: {ops:?}"
        );
    }
}

#[test]
fn quantized_depthwise_convolutions_run_on_the_float_depthwise_op_and_match_onnxruntime_exactly() {
    use inferd::model::runtime::Prepared;
    // Not a wrong answer but a slow one: tract 0.23.9 runs them as an im2col and one single-row
    // integer matmul per channel. Sums of products of 8-bit integers are exact in f32 below 2^24,
    // so the outputs stay onnxruntime's to the last bit (u8 after requantization, i32 for
    // ConvInteger), whether the model is imported or read back from the prepared-model cache (the
    // dynamic one has no cached form: tract's NNEF has no DynamicQuantizeLinear).
    // Both fixtures read their input from `x`.
    for (name, output, convs, cached) in [
        ("qlinear-depthwise", "y", 2, true),
        ("integer-depthwise", "acc", 1, false),
    ] {
        let dir = fixture(name);
        let bytes = std::fs::read(dir.join("model.onnx")).unwrap();
        let (prepared, _) = Prepared::from_onnx(&bytes, None).unwrap();
        let mut runtimes = Vec::new();
        if cached {
            let archive = prepared.to_nnef().unwrap();
            let read_back = Prepared::from_nnef(
                &archive,
                prepared.output_names().to_vec(),
                prepared.repairs().to_vec(),
            )
            .unwrap();
            runtimes.push(("from the cache", read_back.into_runtime().unwrap()));
        }
        runtimes.push(("imported", prepared.into_runtime().unwrap()));
        for (how, runtime) in runtimes {
            let what = format!("{name} ({how})");
            let note = format!("runs {convs} quantized depthwise convolutions");
            assert!(
                runtime.repairs().iter().any(|r| r.contains(&note)),
                "{what}: {:?}",
                runtime.repairs()
            );
            let input = npy(dir.join("input.npy"), "x");
            let ops: Vec<String> = runtime
                .profile(std::slice::from_ref(&input), 1)
                .unwrap()
                .into_iter()
                .map(|n| n.op)
                .collect();
            assert!(
                ops.iter().filter(|op| op.contains("DepthWise")).count() == convs,
                "{what}: {ops:?}"
            );
            assert!(
                !ops.iter().any(|op| op.contains("Im2col")),
                "{what}: {ops:?}"
            );
            let got = runtime.run(vec![input]).unwrap();
            let want = npy(dir.join(format!("{output}.npy")), output);
            assert_close(&got[0], &want, 0.0, &what);
        }
    }
}
