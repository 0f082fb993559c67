"""onnxruntime's latency for the int8 comparisons of doc/INT8.md, measured the same way by every
script that reports it (`int8_variants.py`, `minilm_variants.py`): one intra-op and one inter-op
thread, like tract's single-thread figures, and the median of warm runs.
"""
import statistics
import time

import onnxruntime as ort


def ort_median(path, feeds, runs):
    """Median milliseconds of `runs` runs of the model at `path` on `feeds`, after
    max(5, runs // 10) warm-up runs."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    for _ in range(max(5, runs // 10)):
        session.run(None, feeds)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3
