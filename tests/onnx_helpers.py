"""Run one dfer custom node through ONNX Runtime, the way an exported model carries it."""

from __future__ import annotations

import numpy as np


def run_custom_node(op_type: str, inputs: dict[str, np.ndarray], outputs: dict[str, tuple], **attrs) -> list[np.ndarray]:
    """Build a one-node model (node + its model-local function), check it, run it in ORT."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    from export.onnx import OPSET, attach_custom_op_functions
    from kernels import ONNX_DOMAIN

    elem = helper.np_dtype_to_tensor_dtype(next(iter(inputs.values())).dtype)
    node = helper.make_node(op_type, list(inputs), list(outputs), domain=ONNX_DOMAIN, **attrs)
    graph = helper.make_graph(
        [node],
        f"single_{op_type}",
        [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape) for k, v in inputs.items()],
        [helper.make_tensor_value_info(name, elem, shape) for name, shape in outputs.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    assert attach_custom_op_functions(model) == (op_type,)
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(list(outputs), inputs)
