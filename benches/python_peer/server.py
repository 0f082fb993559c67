"""What users would pick instead of inferd: onnxruntime behind FastAPI/uvicorn, JSON in and out.

Run by benches/python_peer.sh; MODEL_PATH names the ONNX file. One intra-op thread per process, as many
uvicorn worker processes as inferd has inference workers, so both use the same cores.
"""
import os

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, Request

options = ort.SessionOptions()
options.intra_op_num_threads = 1
options.inter_op_num_threads = 1
session = ort.InferenceSession(os.environ["MODEL_PATH"], options, providers=["CPUExecutionProvider"])
names = [o.name for o in session.get_outputs()]
app = FastAPI()


@app.post("/infer")
async def infer(request: Request):
    body = await request.json()
    feeds = {
        name: np.asarray(t["data"], dtype=t["dtype"]).reshape(t["shape"])
        for name, t in body["inputs"].items()
    }
    outputs = session.run(None, feeds)
    return {name: value.tolist() for name, value in zip(names, outputs)}
