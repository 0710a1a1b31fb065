"""GatedExpertMLP's custom node in standard ONNX ops: the model-local functions of domain dfer
that ONNX Runtime runs and a TensorRT plugin may replace (the op's semantics and kernels are in
kernels.gated_expert_mlp, whose reference these mirror; tests compare them through ONNX Runtime).

An ONNX function body cannot branch on an attribute without ``If`` (which TensorRT graphs
avoid), so there are three bodies: routed (S4D), and fixed gates with a GELU or a QuickGELU FFN
(FineCLIPER); a model holds the one its nodes need (``onnx_function_for``).
"""

from __future__ import annotations

import math

from kernels import ONNX_DOMAIN, ONNX_DOMAIN_VERSION
from kernels.gated_expert_mlp import FFN_ACTIVATIONS, QUICK_GELU_ALPHA


def onnx_function():
    """The op's decomposition in standard ONNX ops, as a model-local function of domain dfer.

    Mirrors gated_expert_mlp_ref; tests compare the two through ONNX Runtime.
    """
    from onnxscript import opset18 as op
    from onnxscript import script
    from onnxscript.values import Opset

    dfer = Opset(ONNX_DOMAIN, ONNX_DOMAIN_VERSION)
    inv_sqrt2 = 1.0 / math.sqrt(2.0)

    @script(dfer, default_opset=op)
    def GatedExpertMLP(x, h, w1cat, b1cat, w2cat, b2cat, num_experts: int, top_k: int, expert_dim: int):
        one_d = op.Constant(value_ints=[1])
        experts = op.Constant(value_int=num_experts)
        k = op.Reshape(op.Constant(value_int=top_k), one_d)
        width = op.Reshape(op.Constant(value_int=expert_dim), one_d)
        zero_d = op.Constant(value_ints=[0])
        last = op.Constant(value_ints=[-1])
        big = op.Constant(value_ints=[9223372036854775807])
        hidden_width = op.Shape(w2cat, start=0, end=1)
        ffn_width = op.Sub(hidden_width, op.Mul(op.Reshape(experts, one_d), width))
        pre = op.Add(op.MatMul(h, w1cat), b1cat)
        hidden_pre = op.Slice(pre, zero_d, hidden_width, last)
        logits = op.Slice(pre, hidden_width, big, last)
        gelu = op.Mul(
            op.Mul(hidden_pre, op.CastLike(0.5, x)),
            op.Add(op.CastLike(1.0, x), op.Erf(op.Mul(hidden_pre, op.CastLike(inv_sqrt2, x)))),
        )
        values, indices = op.TopK(logits, k, axis=-1)
        probs = op.Softmax(values, axis=-1)
        expert_ids = op.Range(op.Constant(value_int=0), experts, op.Constant(value_int=1))
        one_hot = op.CastLike(op.Equal(op.Unsqueeze(indices, last), expert_ids), x)
        gates = op.ReduceSum(op.Mul(op.Unsqueeze(probs, last), one_hot), op.Constant(value_ints=[-2]), keepdims=0)
        ffn_hidden = op.Slice(gelu, zero_d, ffn_width, last)
        expert_hidden = op.Slice(gelu, ffn_width, big, last)
        lead = op.Shape(expert_hidden, start=0, end=-1)
        split = op.Reshape(expert_hidden, op.Concat(lead, op.Reshape(experts, one_d), width, axis=0))
        gated = op.Reshape(op.Mul(split, op.Unsqueeze(gates, last)), op.Concat(lead, last, axis=0))
        hidden = op.Concat(ffn_hidden, gated, axis=-1)
        base_bias = op.Squeeze(op.Slice(b2cat, zero_d, one_d, zero_d), zero_d)
        expert_bias = op.Slice(b2cat, one_d, big, zero_d)
        out = op.Add(op.MatMul(hidden, w2cat), base_bias)
        return op.Add(op.Add(x, out), op.MatMul(gates, expert_bias))

    return GatedExpertMLP


def onnx_function_for(nodes) -> object:
    """The function a model's GatedExpertMLP nodes need: routed (S4D) or fixed-gates for their
    FFN activation. One function per op name fits in a model, so mixed nodes are an error."""
    kinds = set()
    for node in nodes:
        attrs = {a.name: a for a in node.attribute}
        if "fixed_gates" not in attrs:
            kinds.add("routed")
            continue
        activation = attrs["ffn_activation"].s.decode() if "ffn_activation" in attrs else "gelu"
        if activation not in FFN_ACTIVATIONS:
            raise ValueError(f"GatedExpertMLP node {node.name!r}: unknown ffn_activation {activation!r}")
        kinds.add(activation)
    if len(kinds) > 1:
        raise ValueError(
            f"GatedExpertMLP nodes of several kinds ({', '.join(sorted(kinds))}) cannot share one model-local function"
        )
    kind = kinds.pop() if kinds else "routed"
    return onnx_function() if kind == "routed" else onnx_function_fixed_gates(kind)


def onnx_function_fixed_gates(ffn_activation: str = "quick_gelu"):
    """The fixed-gates op in standard ONNX ops (mirrors gated_expert_mlp_ref with fixed_gates):
    the gates come from the node's ``fixed_gates`` attribute, the FFN columns take
    ``ffn_activation`` (the body is the one for that value; the node carries it for plugins)."""
    from onnxscript import opset18 as op
    from onnxscript import script
    from onnxscript.values import Opset

    if ffn_activation not in FFN_ACTIVATIONS:
        raise ValueError(f"ffn_activation must be one of {', '.join(FFN_ACTIVATIONS)}, got {ffn_activation!r}")
    dfer = Opset(ONNX_DOMAIN, ONNX_DOMAIN_VERSION)
    inv_sqrt2 = 1.0 / math.sqrt(2.0)
    alpha = QUICK_GELU_ALPHA

    # Two bodies, equal but for the FFN activation's two lines (onnxscript turns a Python `if`
    # into an ONNX If node, which is what this avoids).
    if ffn_activation == "quick_gelu":

        @script(dfer, default_opset=op)
        def GatedExpertMLP(x, h, w1cat, b1cat, w2cat, b2cat, num_experts: int, expert_dim: int,
                           fixed_gates: list[float], ffn_activation: str):  # fmt: skip
            one_d, zero_d, last = op.Constant(value_ints=[1]), op.Constant(value_ints=[0]), op.Constant(value_ints=[-1])
            big = op.Constant(value_ints=[9223372036854775807])
            experts = op.Reshape(op.Constant(value_int=num_experts), one_d)
            width = op.Reshape(op.Constant(value_int=expert_dim), one_d)
            gates = op.CastLike(op.Constant(value_floats=fixed_gates), x)
            hidden_width = op.Shape(w2cat, start=0, end=1)
            ffn_width = op.Sub(hidden_width, op.Mul(experts, width))
            pre = op.Add(op.MatMul(h, w1cat), b1cat)
            ffn_pre = op.Slice(pre, zero_d, ffn_width, last)
            ffn_act = op.Mul(ffn_pre, op.Sigmoid(op.Mul(ffn_pre, op.CastLike(alpha, x))))
            expert_pre = op.Slice(pre, ffn_width, big, last)
            expert_act = op.Mul(
                op.Mul(expert_pre, op.CastLike(0.5, x)),
                op.Add(op.CastLike(1.0, x), op.Erf(op.Mul(expert_pre, op.CastLike(inv_sqrt2, x)))),
            )
            lead = op.Shape(expert_act, start=0, end=-1)
            split = op.Reshape(expert_act, op.Concat(lead, experts, width, axis=0))
            gated = op.Reshape(op.Mul(split, op.Unsqueeze(gates, last)), op.Concat(lead, last, axis=0))
            hidden = op.Concat(ffn_act, gated, axis=-1)
            base_bias = op.Squeeze(op.Slice(b2cat, zero_d, one_d, zero_d), zero_d)
            expert_bias = op.MatMul(gates, op.Slice(b2cat, one_d, big, zero_d))
            return op.Add(x, op.Add(op.MatMul(hidden, w2cat), op.Add(base_bias, expert_bias)))

        return GatedExpertMLP

    @script(dfer, default_opset=op)
    def GatedExpertMLP(x, h, w1cat, b1cat, w2cat, b2cat, num_experts: int, expert_dim: int,
                       fixed_gates: list[float], ffn_activation: str):  # fmt: skip
        one_d, zero_d, last = op.Constant(value_ints=[1]), op.Constant(value_ints=[0]), op.Constant(value_ints=[-1])
        big = op.Constant(value_ints=[9223372036854775807])
        experts = op.Reshape(op.Constant(value_int=num_experts), one_d)
        width = op.Reshape(op.Constant(value_int=expert_dim), one_d)
        gates = op.CastLike(op.Constant(value_floats=fixed_gates), x)
        hidden_width = op.Shape(w2cat, start=0, end=1)
        ffn_width = op.Sub(hidden_width, op.Mul(experts, width))
        pre = op.Add(op.MatMul(h, w1cat), b1cat)
        hidden_pre = op.Slice(pre, zero_d, hidden_width, last)
        act = op.Mul(
            op.Mul(hidden_pre, op.CastLike(0.5, x)),
            op.Add(op.CastLike(1.0, x), op.Erf(op.Mul(hidden_pre, op.CastLike(inv_sqrt2, x)))),
        )
        ffn_act = op.Slice(act, zero_d, ffn_width, last)
        expert_act = op.Slice(act, ffn_width, big, last)
        lead = op.Shape(expert_act, start=0, end=-1)
        split = op.Reshape(expert_act, op.Concat(lead, experts, width, axis=0))
        gated = op.Reshape(op.Mul(split, op.Unsqueeze(gates, last)), op.Concat(lead, last, axis=0))
        hidden = op.Concat(ffn_act, gated, axis=-1)
        base_bias = op.Squeeze(op.Slice(b2cat, zero_d, one_d, zero_d), zero_d)
        expert_bias = op.MatMul(gates, op.Slice(b2cat, one_d, big, zero_d))
        return op.Add(x, op.Add(op.MatMul(hidden, w2cat), op.Add(base_bias, expert_bias)))

    return GatedExpertMLP
