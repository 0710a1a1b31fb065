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

The Triton kernels (CUDA, or CPU under ``TRITON_INTERPRET=1``) run the op in three launches:
a descriptor pass over x, a one-program-per-sample predictor that turns the descriptors into
the (T/2 × T) weights, and the gather, where each program loads a tile of all T frames once and
writes its tile of every output frame once. x is read twice in all and each output written once.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kernels import ONNX_DOMAIN, ONNX_DOMAIN_VERSION, emit_custom_op
from kernels._triton import AotVariant, cdiv, check_kernel_inputs, dot, dot_precision, gelu, jit, next_power_of_2, tanh
from kernels._triton import divisibility, tl, triton_type

OP_NAME = "LiftingSplit"
RECEPTIVE_FIELD = 2.0  # tanh output (−1, 1) scaled to ±2 frames, as in the official module


def lifting_split(
    x, w_dim, b_dim, w_off_a, w_off_d, *, frames: int, height: int, width: int, use_kernel: bool = False
):
    """Split tokens into approximation and detail frames.

    A custom node during ONNX export; the Triton kernel when ``use_kernel`` is set and x is on
    CUDA (never while exporting); the PyTorch reference otherwise, CPU included.
    """
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
    if use_kernel and x.is_cuda and not torch.onnx.is_in_onnx_export():
        return lifting_split_triton(x, w_dim, b_dim, w_off_a, w_off_d, frames=frames, height=height, width=width)
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


# ----------------------------------------------------------------------------------------------
# Triton kernels and their launcher


def lifting_split_triton(x, w_dim, b_dim, w_off_a, w_off_d, *, frames: int, height: int, width: int):
    """The op on the Triton kernels: same contract and result as lifting_split_ref."""
    x, *weights = _kernel_inputs(x, w_dim, b_dim, w_off_a, w_off_d, frames, height, width)
    batch, tokens, channels = x.shape
    x_a = x.new_empty(batch, tokens // 2, channels)
    x_d = torch.empty_like(x_a)
    if batch == 0:
        return x_a, x_d
    interpolation, _ = _predict(x, *weights, frames, height, width)
    p = _launch_params(frames, weights[0].shape[0])["gather"]
    frame_size = height * width * channels
    grid = (cdiv(frame_size, p["BLOCK"]), batch)
    _gather_kernel[grid](x, interpolation, x_a, x_d, frame_size, FRAMES=frames, **p)
    return x_a, x_d


def sampling_positions_triton(x, w_dim, b_dim, w_off_a, w_off_d, *, frames: int, height: int, width: int):
    """The predictor's positions from the kernels (fp32), as sampling_positions returns them."""
    inputs = _kernel_inputs(x, w_dim, b_dim, w_off_a, w_off_d, frames, height, width)
    _, positions = _predict(*inputs, frames, height, width)
    return positions[:, 0], positions[:, 1]


def _kernel_inputs(x, w_dim, b_dim, w_off_a, w_off_d, frames, height, width):
    """Validated, contiguous inputs (ValueError naming the first problem)."""
    _check_shapes(x, w_dim, b_dim, w_off_a, w_off_d, frames, height, width)
    named = {"x": x, "W_dim": w_dim, "b_dim": b_dim, "W_offA": w_off_a, "W_offD": w_off_d}
    check_kernel_inputs(OP_NAME, named)
    return [t.contiguous() for t in named.values()]


def _predict(x, w_dim, b_dim, w_off_a, w_off_d, frames, height, width):
    """Descriptor and predictor kernels → (B, T, T) weights (T/2 approx rows, T/2 detail rows)
    and (B, 2, T/2) positions, both fp32."""
    batch, tokens, channels = x.shape
    descriptor_dim = w_dim.shape[0]
    weights = x.new_empty(batch, frames, frames, dtype=torch.float32)
    positions = x.new_empty(batch, 2, frames // 2, dtype=torch.float32)
    if batch == 0:
        return weights, positions
    p = _launch_params(frames, descriptor_dim)
    descriptors = x.new_empty(batch * tokens, descriptor_dim, dtype=torch.float32)
    grid = (cdiv(batch * tokens, p["descriptor"]["BLOCK_ROWS"]),)
    _descriptor_kernel[grid](
        x, w_dim, b_dim, descriptors, batch * tokens, channels, descriptor_dim,
        DOT_PRECISION=dot_precision(x.dtype), **p["descriptor"],
    )  # fmt: skip
    _predictor_kernel[(batch,)](
        descriptors, w_off_a, w_off_d, weights, positions, height * width * descriptor_dim, channels,
        RECEPTIVE_FIELD, FRAMES=frames, **p["predictor"],
    )  # fmt: skip
    return weights, positions


def _launch_params(frames: int, descriptor_dim: int) -> dict:
    """Block sizes and warps of the three kernels (the launcher and kernels.aot both use these).

    The gather gives each thread 8 consecutive elements per frame (16 B loads in fp16); the
    descriptor tile is 64 tokens × 64 channels against K padded to tl.dot's minimum of 16.
    Not yet tuned on a GPU.
    """
    half_p = next_power_of_2(frames // 2)
    return {
        "descriptor": dict(
            K_P=max(16, next_power_of_2(descriptor_dim)), BLOCK_ROWS=64, BLOCK_C=64, num_warps=4, num_stages=3
        ),
        "predictor": dict(FRAMES_P=next_power_of_2(frames), HALF_P=half_p, BLOCK_F=64, num_warps=4, num_stages=1),
        "gather": dict(HALF_P=half_p, BLOCK=1024, num_warps=4, num_stages=1),
    }


@jit
def _descriptor_kernel(
    x_ptr, w_ptr, b_ptr, d_ptr, rows, channels, descriptor_dim,
    K_P: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_C: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """d[r, k] = gelu(x[r, :] · W[k, :] + b[k]) in fp32 for BLOCK_ROWS token rows: x's first read."""
    row = tl.program_id(0).to(tl.int64) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    k = tl.arange(0, K_P)
    row_ok = row < rows
    k_ok = k < descriptor_dim
    acc = tl.zeros((BLOCK_ROWS, K_P), dtype=tl.float32)
    for c0 in range(0, channels, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        c_ok = c < channels
        x = tl.load(x_ptr + row[:, None] * channels + c[None, :], mask=row_ok[:, None] & c_ok[None, :], other=0.0)
        w = tl.load(w_ptr + k[None, :] * channels + c[:, None], mask=k_ok[None, :] & c_ok[:, None], other=0.0)
        acc = dot(x, w, acc, DOT_PRECISION)
    bias = tl.load(b_ptr + k, mask=k_ok, other=0.0).to(tl.float32)
    d = gelu(acc + bias[None, :])
    tl.store(d_ptr + row[:, None] * descriptor_dim + k[None, :], d, mask=row_ok[:, None] & k_ok[None, :])


@jit
def _predictor_kernel(
    d_ptr, w_off_a_ptr, w_off_d_ptr, weights_ptr, positions_ptr, features, channels, receptive_field,
    FRAMES: tl.constexpr, FRAMES_P: tl.constexpr, HALF_P: tl.constexpr, BLOCK_F: tl.constexpr,
):  # fmt: skip
    """One sample: similarity of its frame descriptors → positions → (T, T) two-tap weights."""
    b = tl.program_id(0).to(tl.int64)
    t = tl.arange(0, FRAMES_P)
    t_ok = t < FRAMES
    similarity = tl.zeros((FRAMES_P, FRAMES_P), dtype=tl.float32)
    for f0 in range(0, features, BLOCK_F):
        f = f0 + tl.arange(0, BLOCK_F)
        ok = t_ok[:, None] & (f < features)[None, :]
        d = tl.load(d_ptr + (b * FRAMES + t[:, None]) * features + f[None, :], mask=ok, other=0.0)
        similarity += tl.sum(d[:, None, :] * d[None, :, :], axis=2)
    similarity = similarity / channels
    j = tl.arange(0, HALF_P)
    half = FRAMES // 2
    slots = 2.0 * j.to(tl.float32)
    pos_a = slots + receptive_field * _offset_logits(similarity, w_off_a_ptr, FRAMES, FRAMES_P, HALF_P)
    pos_d = slots + 1.0 + receptive_field * _offset_logits(-similarity, w_off_d_ptr, FRAMES, FRAMES_P, HALF_P)
    tl.store(positions_ptr + b * FRAMES + j, pos_a, mask=j < half)
    tl.store(positions_ptr + b * FRAMES + half + j, pos_d, mask=j < half)
    _store_hat_weights(pos_a, weights_ptr + b * FRAMES * FRAMES, FRAMES, FRAMES_P, HALF_P)
    _store_hat_weights(pos_d, weights_ptr + b * FRAMES * FRAMES + half * FRAMES, FRAMES, FRAMES_P, HALF_P)


@jit
def _offset_logits(scores, w_ptr, FRAMES: tl.constexpr, FRAMES_P: tl.constexpr, HALF_P: tl.constexpr):
    """tanh(Linear(row-softmax(scores).flatten())) over the valid FRAMES × FRAMES block."""
    t = tl.arange(0, FRAMES_P)
    valid = (t < FRAMES)[:, None] & (t < FRAMES)[None, :]
    scores = tl.where(valid, scores, float("-inf"))
    row_max = tl.where(t < FRAMES, tl.max(scores, axis=1), 0.0)
    e = tl.where(valid, tl.exp(scores - row_max[:, None]), 0.0)
    denom = tl.sum(e, axis=1)
    probs = e / tl.where(denom > 0.0, denom, 1.0)[:, None]
    j = tl.arange(0, HALF_P)[:, None, None]
    i = t[None, :, None]
    k = t[None, None, :]
    w_ok = (j < FRAMES // 2) & (i < FRAMES) & (k < FRAMES)
    w = tl.load(w_ptr + j * (FRAMES * FRAMES) + i * FRAMES + k, mask=w_ok, other=0.0).to(tl.float32)
    return tanh(tl.sum(tl.sum(w * probs[None, :, :], axis=2), axis=1))


@jit
def _store_hat_weights(positions, out_ptr, FRAMES: tl.constexpr, FRAMES_P: tl.constexpr, HALF_P: tl.constexpr):
    """Two-tap weights at p·T/(T−1) − 0.5 clamped to [0, T−1], in _hat_weights' arithmetic order."""
    grid = 2.0 * positions / (FRAMES - 1) - 1.0
    source = ((grid + 1.0) * FRAMES - 1.0) / 2.0
    source = tl.minimum(tl.maximum(source, 0.0), FRAMES - 1.0)
    j = tl.arange(0, HALF_P)
    t = tl.arange(0, FRAMES_P)
    w = tl.maximum(1.0 - tl.abs(source[:, None] - t[None, :].to(tl.float32)), 0.0)
    tl.store(out_ptr + j[:, None] * FRAMES + t[None, :], w, mask=(j < FRAMES // 2)[:, None] & (t < FRAMES)[None, :])


@jit
def _gather_kernel(
    x_ptr, weights_ptr, xa_ptr, xd_ptr, frame_size,
    FRAMES: tl.constexpr, HALF_P: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """One tile of every frame of one sample, read once; its tile of every output frame, written once."""
    b = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < frame_size
    j = tl.arange(0, HALF_P)
    j_ok = j < FRAMES // 2
    w_base = weights_ptr + b * FRAMES * FRAMES
    acc_a = tl.zeros((HALF_P, BLOCK), dtype=tl.float32)
    acc_d = tl.zeros((HALF_P, BLOCK), dtype=tl.float32)
    for t in tl.static_range(FRAMES):
        frame = tl.load(x_ptr + (b * FRAMES + t) * frame_size + offs, mask=ok, other=0.0).to(tl.float32)
        w_a = tl.load(w_base + j * FRAMES + t, mask=j_ok, other=0.0)
        w_d = tl.load(w_base + (FRAMES // 2 + j) * FRAMES + t, mask=j_ok, other=0.0)
        acc_a += w_a[:, None] * frame[None, :]
        acc_d += w_d[:, None] * frame[None, :]
    out = (b * (FRAMES // 2) + j[:, None]) * frame_size + offs[None, :]
    out_ok = j_ok[:, None] & ok[None, :]
    tl.store(xa_ptr + out, acc_a.to(xa_ptr.dtype.element_ty), mask=out_ok)
    tl.store(xd_ptr + out, acc_d.to(xd_ptr.dtype.element_ty), mask=out_ok)


def aot_variants(frames: int = 8, height: int = 7, width: int = 7, channels: int = 768, descriptor_dim: int = 7):
    """Every compilation kernels.aot makes of this op: the three kernels × fp32/fp16/bf16, with
    alignment promises from these (IFDD's) sizes; the batch stays free."""
    p = _launch_params(frames, descriptor_dim)
    frame_tokens = height * width
    variants = []
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        io = f"*{triton_type(dtype)}"
        kernels = (
            (_descriptor_kernel, dict(x_ptr=io, w_ptr=io, b_ptr=io, d_ptr="*fp32", rows="i32", channels="i32",
             descriptor_dim="i32"), dict(p["descriptor"], DOT_PRECISION=dot_precision(dtype, interpreter=False)),
             dict(rows=frames * frame_tokens, channels=channels), ("cdiv(rows, BLOCK_ROWS)", "1", "1")),
            (_predictor_kernel, dict(d_ptr="*fp32", w_off_a_ptr=io, w_off_d_ptr=io, weights_ptr="*fp32",
             positions_ptr="*fp32", features="i32", channels="i32", receptive_field="fp32"),
             dict(p["predictor"], FRAMES=frames), dict(channels=channels), ("batch", "1", "1")),
            (_gather_kernel, dict(x_ptr=io, weights_ptr="*fp32", xa_ptr=io, xd_ptr=io, frame_size="i32"),
             dict(p["gather"], FRAMES=frames), dict(frame_size=frame_tokens * channels),
             ("cdiv(frame_size, BLOCK)", "batch", "1")),
        )  # fmt: skip
        for kernel, signature, meta, sizes, grid in kernels:
            meta = dict(meta)
            warps, stages = meta.pop("num_warps"), meta.pop("num_stages")
            pointers = [name for name, kind in signature.items() if kind.startswith("*")]
            hints = divisibility(pointers, **sizes)
            variants.append(
                AotVariant(OP_NAME, kernel, triton_type(dtype), "", signature, meta, hints, warps, stages, grid)
            )
    return variants


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
