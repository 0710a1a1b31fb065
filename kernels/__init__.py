"""The two hot spots the papers add, each as one op with one definition of its semantics.

Every op module holds a pure-PyTorch reference (the ground truth), the dispatcher the models
call, the ONNX function that decomposes the op's custom node into standard ops, and the Triton
kernels with their launcher (``kernels._triton`` holds what they share; ``python -m
kernels.aot`` compiles them to PTX without a GPU). During ``torch.onnx.export`` the dispatcher
emits a single ``dfer::<Op>`` node instead of the decomposition, unless the exporter switched
custom ops off (``--no-custom-ops``); outside of export it runs the kernels when the model asks
for them (``use_kernels``) and the tensors are on CUDA, the reference otherwise.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

ONNX_DOMAIN = "dfer"
ONNX_DOMAIN_VERSION = 1

_custom_ops_enabled = True


@contextlib.contextmanager
def onnx_custom_ops(enabled: bool) -> Iterator[None]:
    """Choose, for the duration of an export, whether hot spots become dfer custom nodes."""
    global _custom_ops_enabled
    previous, _custom_ops_enabled = _custom_ops_enabled, enabled
    try:
        yield
    finally:
        _custom_ops_enabled = previous


def emit_custom_op() -> bool:
    """True while torch.onnx.export traces a model and custom nodes are wanted."""
    import torch

    return _custom_ops_enabled and torch.onnx.is_in_onnx_export()
