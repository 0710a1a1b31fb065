"""LiftingSplit: IFDD's ISSM, the adaptive temporal split of the lifting scheme.

Contract (shared DESIGN §4.1): ``LiftingSplit(x, W_dim, b_dim, W_offA, W_offD) -> (x_a, x_d)``
with x tokens (B, T·H·W, C), token index t·H·W + h·W + w, and outputs (B, T/2·H·W, C).

A small predictor turns x into 4 "approximation" and 4 "detail" sampling positions per sample:
a 1×1 conv C→K with GELU gives a descriptor per frame, the frame similarity S = D·Dᵀ / C (the
official divisor is C, not √C), row softmaxes of S and −S, a bias-free Linear T²→T/2 each, and
tanh·2. Output frame j is a linear interpolation of the input frames at that position.

The official code interpolates with grid_sample on a (T × 1) image after normalising the
positions with the align_corners=True convention while sampling with align_corners=False and
border padding. The effective source coordinate is therefore p·T/(T−1) − 0.5, clamped to
[0, T−1]. We reproduce that exactly, but as a dense (T/2 × T) "hat" weight matrix applied with
one batched MatMul: no GridSample, gather or scatter reaches the ONNX graph or TensorRT.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kernels import ONNX_DOMAIN, ONNX_DOMAIN_VERSION, emit_custom_op

OP_NAME = "LiftingSplit"
RECEPTIVE_FIELD = 2.0  # tanh output (−1, 1) scaled to ±2 frames, as in the official module


def lifting_split(x, w_dim, b_dim, w_off_a, w_off_d, *, frames: int, height: int, width: int):
    """Split tokens into approximation and detail frames; a custom node during ONNX export."""
    _check_shapes(x, w_dim, b_dim, w_off_a, w_off_d, frames, height, width)
    if emit_custom_op():
        batch, _, channels = x.shape
        out_shape = [batch, frames // 2 * height * width, channels]
        x_a, x_d = torch.onnx.ops.symbolic_multi_out(
            f"{ONNX_DOMAIN}::{OP_NAME}",
            [x, w_dim, b_dim, w_off_a, w_off_d],
            attrs={"frames": frames, "height": height, "width": width},
            dtypes=[x.dtype, x.dtype],
            shapes=[out_shape, out_shape],
            version=ONNX_DOMAIN_VERSION,
        )
        return x_a, x_d
    return lifting_split_ref(x, w_dim, b_dim, w_off_a, w_off_d, frames=frames, height=height, width=width)


def lifting_split_ref(x, w_dim, b_dim, w_off_a, w_off_d, *, frames: int, height: int, width: int):
    """Pure-PyTorch reference of the op (fp32 ground truth for kernels and exports)."""
    weights_a, weights_d = interpolation_weights(x, w_dim, b_dim, w_off_a, w_off_d, frames=frames)
    batch, _, channels = x.shape
    per_frame = x.reshape(batch, frames, -1)  # (B, T, H·W·C): frames are contiguous blocks
    x_a = torch.matmul(weights_a, per_frame).reshape(batch, -1, channels)
    x_d = torch.matmul(weights_d, per_frame).reshape(batch, -1, channels)
    return x_a, x_d


def interpolation_weights(x, w_dim, b_dim, w_off_a, w_off_d, *, frames: int):
    """The (B, T/2, T) two-tap weights of the approximation and the detail frames."""
    positions_a, positions_d = sampling_positions(x, w_dim, b_dim, w_off_a, w_off_d, frames=frames)
    return _hat_weights(positions_a, frames), _hat_weights(positions_d, frames)


def sampling_positions(x, w_dim, b_dim, w_off_a, w_off_d, *, frames: int):
    """Positions in frame units, before the official normalisation (fixture intermediates)."""
    batch, _, channels = x.shape
    tokens = x.reshape(batch, frames, -1, channels)
    descriptor = F.gelu(torch.matmul(tokens, w_dim.t()) + b_dim).reshape(batch, frames, -1)
    similarity = torch.matmul(descriptor * (1.0 / channels), descriptor.transpose(1, 2))
    offsets_a = torch.tanh(torch.softmax(similarity, -1).flatten(1) @ w_off_a.t()) * RECEPTIVE_FIELD
    offsets_d = torch.tanh(torch.softmax(-similarity, -1).flatten(1) @ w_off_d.t()) * RECEPTIVE_FIELD
    slots = torch.arange(0, frames, 2, device=x.device, dtype=x.dtype)
    return slots + offsets_a, slots + 1 + offsets_d


def _hat_weights(positions, frames: int):
    """Bilinear weights of grid_sample(border, align_corners=False) at align_corners=True grid."""
    grid = 2.0 * positions / (frames - 1) - 1.0
    source = ((grid + 1.0) * frames - 1.0) / 2.0
    source = source.clamp(0.0, frames - 1.0)
    frame_index = torch.arange(frames, device=positions.device, dtype=positions.dtype)
    return torch.relu(1.0 - (source.unsqueeze(-1) - frame_index).abs())


def _check_shapes(x, w_dim, b_dim, w_off_a, w_off_d, frames, height, width) -> None:
    if x.dim() != 3:
        raise ValueError(f"LiftingSplit: x must be (B, T·H·W, C), got {tuple(x.shape)}")
    if frames < 2 or frames % 2:
        raise ValueError(f"LiftingSplit: frames must be even and ≥ 2, got {frames}")
    if x.shape[1] != frames * height * width:
        raise ValueError(f"LiftingSplit: x has {x.shape[1]} tokens, expected T·H·W = {frames * height * width}")
    channels = x.shape[2]
    if w_dim.dim() != 2 or w_dim.shape[1] != channels or tuple(b_dim.shape) != (w_dim.shape[0],):
        raise ValueError(
            f"LiftingSplit: W_dim must be (K, {channels}) with b_dim (K,), got {tuple(w_dim.shape)} and {tuple(b_dim.shape)}"
        )
    expected = (frames // 2, frames * frames)
    for name, weight in (("W_offA", w_off_a), ("W_offD", w_off_d)):
        if tuple(weight.shape) != expected:
            raise ValueError(f"LiftingSplit: {name} must be {expected}, got {tuple(weight.shape)}")


def onnx_function():
    """The op's decomposition in standard ONNX ops, as a model-local function of domain dfer.

    Mirrors lifting_split_ref line by line; tests compare the two through ONNX Runtime.
    """
    from onnxscript import opset18 as op
    from onnxscript import script
    from onnxscript.values import Opset

    dfer = Opset(ONNX_DOMAIN, ONNX_DOMAIN_VERSION)
    inv_sqrt2 = 1.0 / math.sqrt(2.0)

    @script(dfer, default_opset=op)
    def LiftingSplit(x, w_dim, b_dim, w_off_a, w_off_d, frames: int, height: int, width: int):
        t = op.Constant(value_int=frames)
        t_f = op.CastLike(t, x)
        batch = op.Shape(x, start=0, end=1)
        channels = op.Shape(x, start=2, end=3)
        one_d = op.Constant(value_ints=[1])
        minus_one = op.Constant(value_ints=[-1])
        t_1d = op.Reshape(t, one_d)
        tokens = op.Reshape(x, op.Concat(batch, t_1d, minus_one, channels, axis=0))
        pre = op.Add(op.MatMul(tokens, op.Transpose(w_dim, perm=[1, 0])), b_dim)
        half = op.CastLike(0.5, x)
        gelu = op.Mul(op.Mul(pre, half), op.Add(op.CastLike(1.0, x), op.Erf(op.Mul(pre, op.CastLike(inv_sqrt2, x)))))
        descriptor = op.Reshape(gelu, op.Concat(batch, t_1d, minus_one, axis=0))
        scaled = op.Div(descriptor, op.CastLike(channels, x))
        similarity = op.MatMul(scaled, op.Transpose(descriptor, perm=[0, 2, 1]))
        flat = op.Concat(batch, minus_one, axis=0)
        two = op.CastLike(2.0, x)
        probs_a = op.Reshape(op.Softmax(similarity, axis=-1), flat)
        probs_d = op.Reshape(op.Softmax(op.Neg(similarity), axis=-1), flat)
        offsets_a = op.Mul(op.Tanh(op.MatMul(probs_a, op.Transpose(w_off_a, perm=[1, 0]))), two)
        offsets_d = op.Mul(op.Tanh(op.MatMul(probs_d, op.Transpose(w_off_d, perm=[1, 0]))), two)
        zero_i = op.Constant(value_int=0)
        one_i = op.Constant(value_int=1)
        two_i = op.Constant(value_int=2)
        slots_a = op.CastLike(op.Range(zero_i, t, two_i), x)
        slots_d = op.CastLike(op.Range(one_i, t, two_i), x)
        frame_index = op.CastLike(op.Range(zero_i, t, one_i), x)
        one = op.CastLike(1.0, x)
        t_minus_1 = op.Sub(t_f, one)
        # official normalisation (align_corners=True) sampled with align_corners=False, border
        grid_a = op.Sub(op.Div(op.Mul(two, op.Add(slots_a, offsets_a)), t_minus_1), one)
        grid_d = op.Sub(op.Div(op.Mul(two, op.Add(slots_d, offsets_d)), t_minus_1), one)
        zero = op.CastLike(0.0, x)
        src_a = op.Clip(op.Div(op.Sub(op.Mul(op.Add(grid_a, one), t_f), one), two), zero, t_minus_1)
        src_d = op.Clip(op.Div(op.Sub(op.Mul(op.Add(grid_d, one), t_f), one), two), zero, t_minus_1)
        axis_last = op.Constant(value_ints=[-1])
        w_a = op.Relu(op.Sub(one, op.Abs(op.Sub(op.Unsqueeze(src_a, axis_last), frame_index))))
        w_d = op.Relu(op.Sub(one, op.Abs(op.Sub(op.Unsqueeze(src_d, axis_last), frame_index))))
        per_frame = op.Reshape(x, op.Concat(batch, t_1d, minus_one, axis=0))
        out_shape = op.Concat(batch, minus_one, channels, axis=0)
        x_a = op.Reshape(op.MatMul(w_a, per_frame), out_shape)
        x_d = op.Reshape(op.MatMul(w_d, per_frame), out_shape)
        return x_a, x_d

    return LiftingSplit
