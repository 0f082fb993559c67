"""Produces the int8 variant of a model from its fp32 form and calibration data, avoiding the graphs
tract 0.23.9 miscomputes. Check the result with `inferd validate` before shipping it (doc/INT8.md).

    python3 models/quantize.py FP32.onnx OUT.onnx --calibration DIR [options]

DIR holds one <input>.npy per model input, in the layout `inferd validate` reads: axis 0 indexes the
samples (each is fed as a batch of one), except a file whose shape is the input's fixed shape, which
every sample shares. `--carry OUTPUT=INPUT` feeds an output back as an input on the next sample (a
recurrent state): the fp32 model is run in order to produce the states the calibration sees, as a
real stream would. `--skip N` leaves the first N samples out (keep them for validation).

Defaults and why:
- QDQ format, u8 activations, s8 weights per channel, MinMax calibration: what tract imports
  (DequantizeLinear of constant weights is folded at load) and what onnxruntime's CPU kernels favour.
- Only Conv, MatMul and Gemm are quantized (--op-types): a Softmax between DequantizeLinear and
  QuantizeLinear is folded by tract into a lookup table that answers 1.0 (inferd repairs the common
  case at load, `src/model/runtime/traps.rs`, but a model should not depend on it); other activations
  gain nothing from int8 in tract, whose QDQ path runs them in float.
- --reduce-range (7-bit weights) is off: it costs accuracy and only pays on AVX2 u8s8 kernels that
  saturate at i16 (onnxruntime on CPUs without VNNI); tract's kernels do not saturate.

Needs onnx, onnxruntime and numpy from PyPI (tested with onnx 1.23.2, onnxruntime 1.32.0).
"""
import argparse
import os
import tempfile

import numpy as np
import onnx
import onnx.version_converter
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)


def load_samples(model_path, folder, carry, skip, limit):
    """The calibration feeds, in order, with carried inputs produced by the fp32 model."""
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    inputs = session.get_inputs()
    columns = {}
    rows = None
    for spec in inputs:
        value = np.load(os.path.join(folder, spec.name + ".npy"))
        fixed = all(isinstance(d, int) for d in spec.shape) and list(value.shape) == list(spec.shape)
        columns[spec.name] = (fixed, value)
        if not fixed:
            if rows is not None and rows != value.shape[0]:
                raise SystemExit(f"{spec.name}.npy has {value.shape[0]} samples, another input {rows}")
            rows = value.shape[0]
    rows = rows or 1
    pairs = [p.split("=", 1) for p in carry]
    outputs = [o.name for o in session.get_outputs()]
    state = {}
    feeds = []
    for ix in range(rows):
        feed = {}
        for name, (fixed, value) in columns.items():
            feed[name] = value if fixed else value[ix : ix + 1]
        feed.update(state)
        if ix >= skip and (limit is None or len(feeds) < limit):
            feeds.append(feed)
        if pairs:
            results = dict(zip(outputs, session.run(None, feed)))
            state = {inp: results[out] for out, inp in pairs}
        elif ix >= skip and limit is not None and len(feeds) >= limit:
            break
    return feeds


def constants_to_initializers(src, dst):
    """Moves tensors held by Constant nodes into initializers: onnxruntime's quantizer quantizes
    only initializer weights, and exporters (torch, OpenVINO) often write weights as Constant nodes,
    which would leave every weight in float and quantize only activations."""
    model = onnx.load(src)
    graph = model.graph
    kept = []
    for node in graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            tensor = onnx.TensorProto()
            tensor.CopyFrom(node.attribute[0].t)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
        else:
            kept.append(node)
    moved = len(graph.node) - len(kept)
    del graph.node[:]
    graph.node.extend(kept)
    # Per-channel weights need DequantizeLinear's `axis`, which opset 13 introduced; older exports
    # (PaddlePaddle's, opset 10) are converted first, or the result is an invalid model.
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    if opset < 13:
        model = onnx.version_converter.convert_version(model, 13)
    onnx.save(model, dst)
    return moved


class Reader(CalibrationDataReader):
    def __init__(self, feeds):
        self.feeds = iter(feeds)

    def get_next(self):
        return next(self.feeds, None)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("fp32")
    ap.add_argument("out")
    ap.add_argument("--calibration", required=True, help="folder of <input>.npy (see above)")
    ap.add_argument("--carry", action="append", default=[], metavar="OUTPUT=INPUT")
    ap.add_argument("--skip", type=int, default=0, help="leave out the first N samples")
    ap.add_argument("--limit", type=int, help="use at most N samples")
    ap.add_argument("--op-types", default="Conv,MatMul,Gemm")
    ap.add_argument("--exclude", action="append", default=[], metavar="NODE", help="node names to leave in float")
    ap.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor, not per channel")
    ap.add_argument("--reduce-range", action="store_true")
    ap.add_argument("--method", choices=["minmax", "entropy", "percentile"], default="minmax")
    args = ap.parse_args()
    op_types = [t for t in args.op_types.split(",") if t]
    if any(t in ("Softmax", "LogSoftmax", "Hardmax") for t in op_types):
        raise SystemExit("refusing to quantize Softmax: tract 0.23.9 folds it into a wrong lookup table")
    feeds = load_samples(args.fp32, args.calibration, args.carry, args.skip, args.limit)
    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[args.method]
    staged = tempfile.NamedTemporaryFile(suffix=".onnx", delete=False).name
    moved = constants_to_initializers(args.fp32, staged)
    quantize_static(
        staged,
        args.out,
        Reader(feeds),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=op_types,
        nodes_to_exclude=args.exclude,
        per_channel=not args.per_tensor,
        reduce_range=args.reduce_range,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=method,
    )
    os.unlink(staged)
    print(f"wrote {args.out}: {moved} Constant nodes made initializers, {len(feeds)} calibration samples, {','.join(op_types)}, "
          f"{'per-tensor' if args.per_tensor else 'per-channel'}, {args.method}")


if __name__ == "__main__":
    main()
