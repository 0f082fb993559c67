"""Writes the JSON request body for the Python peer from a shipped model's sample inputs."""
import glob
import json
import os
import sys

import numpy as np

sample_dir, out = sys.argv[1], sys.argv[2]
inputs = {}
for path in sorted(glob.glob(os.path.join(sample_dir, "*.npy"))):
    array = np.load(path)
    name = os.path.splitext(os.path.basename(path))[0]
    inputs[name] = {"dtype": str(array.dtype), "shape": list(array.shape), "data": array.ravel().tolist()}
with open(out, "w") as f:
    json.dump({"inputs": inputs}, f)
