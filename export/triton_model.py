"""A dfer-edge model for Triton's python backend: the exported ONNX in ONNX Runtime on the
server's CPU, the form a CPU-only tritonserver runs (nvidia-pytriton's has only this backend).

``python -m export.triton MODEL --backend python`` copies this file as <name>/1/model.py beside
model.onnx; it runs inside the server's Python stub, never in dfer-edge itself (it needs only
numpy and onnxruntime there). Tensors cross by DLPack both ways: the stub of tritonserver 2.51
is built against NumPy 1, and under NumPy 2 its ``as_numpy()`` gives wrong values and
``Tensor(name, array)`` sends zero bytes (seen here with NumPy 2.4; tests/test_triton.py
compares every answer with local ONNX Runtime).
"""

import json
from pathlib import Path

import numpy as np
import onnxruntime
import triton_python_backend_utils as pb_utils

THREADS_PARAMETER = "intra_op_threads"


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # fp16 graphs warn about constant folding on every load
        threads = config.get("parameters", {}).get(THREADS_PARAMETER, {}).get("string_value")
        if threads:
            options.intra_op_num_threads = int(threads)
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = config["input"][0]["name"]
        self.outputs = [output["name"] for output in config["output"]]

    def execute(self, requests):
        """The dynamic batcher may hand over several requests: one ONNX Runtime run for all of
        them, split back by rows. A failure answers every request with its cause."""
        try:
            inputs = [np.from_dlpack(pb_utils.get_input_tensor_by_name(r, self.input)) for r in requests]
            results = self.session.run(self.outputs, {self.input: np.concatenate(inputs)})
        except Exception as err:
            error = pb_utils.TritonError(f"{type(err).__name__}: {err}")
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        responses, start = [], 0
        for clips in inputs:
            rows = slice(start, start + len(clips))
            start += len(clips)
            tensors = [pb_utils.Tensor.from_dlpack(name, np.ascontiguousarray(result[rows]))
                       for name, result in zip(self.outputs, results)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
