"""Writes the int8 formulations of the shared models that `cargo bench --bench int8 -- --extra DIR`
profiles in tract, and times each in onnxruntime (one thread, median of warm runs) for the
comparison in doc/INT8.md:

    python3 benches/int8_variants.py ../shared/models /tmp/int8-variants

For ppocr-cls, digits-mlp and silero-vad it writes DIR/<model>/:
  fp32.onnx             the shared fp32 file;
  int8-qdq.onnx         the shared int8 file (QDQ, Conv/MatMul/Gemm, per tensor);
  int8-qdq-pc.onnx      models/quantize.py defaults (QDQ, per-channel s8 weights, u8 activations);
  int8-qoperator.onnx   the same calibration as QOperator (QLinearConv / QLinearMatMul);
  int8-dynamic.onnx     quantize_dynamic (MatMulInteger / ConvInteger, activation scales at run time).
Needs onnx, onnxruntime, numpy from PyPI.
"""
import importlib.util
import os
import shutil
import sys

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

from ort_timing import ort_median  # benches/ort_timing.py, beside this script

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("quantize", os.path.join(HERE, "..", "models", "quantize.py"))
quantize = importlib.util.module_from_spec(spec)
spec.loader.exec_module(quantize)

shared, out = sys.argv[1], sys.argv[2]
MODELS = {
    # model: (calibration folder builder, carried pairs)
    "ppocr-cls": ("x", []),
    "digits-mlp": ("X", []),
    "silero-vad": (None, ["stateN=state"]),
}


def calibration_dir(model):
    folder = os.path.join(out, model, "calibration")
    os.makedirs(folder, exist_ok=True)
    if model == "silero-vad":
        speech = np.load(os.path.join(shared, model, "calibration", "speech_16k.npy")).astype(np.float32)
        padded = np.concatenate([np.zeros(64, np.float32), speech])
        frames = np.stack([padded[i * 512 : i * 512 + 576] for i in range(len(speech) // 512)])
        np.save(os.path.join(folder, "input.npy"), frames)
        np.save(os.path.join(folder, "state.npy"), np.zeros((2, 1, 128), np.float32))
    else:
        name = MODELS[model][0]
        shutil.copy(os.path.join(shared, model, "calibration", name + ".npy"), os.path.join(folder, name + ".npy"))
    return folder


print(f"# onnxruntime {ort.__version__}, one thread, median of 200 warm runs on each model's sample (ms)")
print("| model | variant | onnxruntime p50 ms | fp32 / this |")
print("|---|---|---|---|")
for model, (_, carry) in MODELS.items():
    folder = os.path.join(out, model)
    os.makedirs(folder, exist_ok=True)
    fp32 = os.path.join(folder, "fp32.onnx")
    shutil.copy(os.path.join(shared, model, "fp32.onnx"), fp32)
    shutil.copy(os.path.join(shared, model, "int8-qdq.onnx"), os.path.join(folder, "int8-qdq.onnx"))
    cal = calibration_dir(model)
    feeds = quantize.load_samples(fp32, cal, carry, 0, 100)
    staged = os.path.join(folder, "staged.onnx")
    quantize.constants_to_initializers(fp32, staged)
    for name, fmt in [("int8-qdq-pc", QuantFormat.QDQ), ("int8-qoperator", QuantFormat.QOperator)]:
        quantize_static(staged, os.path.join(folder, name + ".onnx"), quantize.Reader(feeds), quant_format=fmt,
                        op_types_to_quantize=["Conv", "MatMul", "Gemm"], per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    quantize_dynamic(staged, os.path.join(folder, "int8-dynamic.onnx"), weight_type=QuantType.QInt8,
                     op_types_to_quantize=["Conv", "MatMul", "Gemm"])
    os.unlink(staged)
    shutil.rmtree(cal)
    sample = {}
    sample_dir = os.path.join(HERE, "..", "models", model, "1", "sample")
    for f in sorted(os.listdir(sample_dir)):
        sample[f[:-4]] = np.load(os.path.join(sample_dir, f))
    base = None
    for variant in ["fp32", "int8-qdq", "int8-qdq-pc", "int8-qoperator", "int8-dynamic"]:
        try:
            ms = ort_median(os.path.join(folder, variant + ".onnx"), sample, runs=200)
        except Exception as e:  # a formulation onnxruntime cannot run is a finding, not a crash
            print(f"| {model} | {variant} | — ({str(e).splitlines()[0][:80]}) | — |")
            continue
        base = base or ms
        print(f"| {model} | {variant} | {ms:.3f} | {base / ms:.2f}× |")
