"""GatedExpertMLP: S4D's block FFN plus its Mixture of Adapter Experts as one wide MLP.

Contract (shared DESIGN §4.2): ``GatedExpertMLP(x, h, W1cat, b1cat, W2cat, b2cat)`` with
attributes num_experts E, top_k, expert_dim F, computing

    x + MLP(h) + Σ_top-k g_e · Expert_e(h),   g = softmax over the top-k router logits

With the deterministic router (no noise, no capacity) this is a single wide MLP:
GEMM 1 computes h · [W_fc1 | W_down_0..E−1 | W_router] + b1cat with GELU on all but the router
columns; each expert's F hidden columns are scaled by its gate (0 for experts outside the top-k);
GEMM 2 multiplies by [W_fc2 ; W_up_0..E−1]. The experts' output biases are gated too, so b2cat
is (1+E, D): row 0 the fc2 bias (always on), rows 1..E the expert biases, mixed by the gates.
Dense-masked experts cost +25 % FFN FLOPs for S4D and remove every gather and scatter.

Layouts: W1cat (D, H + E·F + E), b1cat (H + E·F + E,), W2cat (H + E·F, D), b2cat (1 + E, D),
where H is the FFN hidden width; x and h are (..., D).

Fixed-gates mode (FineCLIPER's MLP-parallel adapter, AdaptFormer-style): no router columns
(W1cat (D, H + E·F), b1cat (H + E·F,)) and constant gates ``fixed_gates`` (E floats, e.g. one
adapter scaled by s) instead of ``top_k``. ``ffn_activation`` picks the FFN columns' activation:
"gelu" (erf, S4D) or "quick_gelu" (x·σ(1.702x), CLIP's MLP); the experts always use GELU.
During export a fixed-gates call is a dfer::GatedExpertMLP node with attributes num_experts,
expert_dim, fixed_gates (floats) and ffn_activation (string), and no top_k; the routed node is
unchanged. An ONNX function body cannot branch on an attribute without ``If`` (which TensorRT
graphs avoid), so a model holds the one function its nodes need
(kernels.gated_expert_mlp_onnx.onnx_function_for): the routed one, or the fixed-gates one for
its FFN activation.

The Triton kernels (CUDA, or CPU under ``TRITON_INTERPRET=1``) are the two GEMMs: GEMM 1 writes
the GELU hidden (x's dtype; QuickGELU on the FFN columns when asked) and the router logits (fp32, so fp16 rounding cannot reorder
near-tied experts); GEMM 2's prologue turns each row's logits into top-k softmax gates, its
K loop runs the FFN columns and then each expert's columns into a separate fp32 partial sum that
is scaled by the row's gate together with that expert's bias, and its epilogue adds fc2's bias
and the residual x.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from kernels import ONNX_DOMAIN, ONNX_DOMAIN_VERSION, emit_custom_op
from kernels._triton import AotVariant, autotune, cdiv, check_kernel_inputs, dot, dot_precision, gelu, interpreting
from kernels._triton import divisibility, jit, next_power_of_2, tl, triton_type

OP_NAME = "GatedExpertMLP"


def pack_gated_expert_weights(
    fc1: nn.Linear, fc2: nn.Linear, experts: list[tuple[nn.Linear, nn.Linear]], router: nn.Linear
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Concatenate an FFN, its experts (down, up) and the router into the op's four weights."""
    downs = [down for down, _ in experts]
    ups = [up for _, up in experts]
    w1cat = torch.cat([fc1.weight] + [d.weight for d in downs] + [router.weight], 0).t()
    b1cat = torch.cat([fc1.bias] + [d.bias for d in downs] + [router.bias], 0)
    w2cat = torch.cat([fc2.weight] + [u.weight for u in ups], 1).t()
    b2cat = torch.stack([fc2.bias] + [u.bias for u in ups], 0)
    return w1cat, b1cat, w2cat, b2cat


FFN_ACTIVATIONS = ("gelu", "quick_gelu")
QUICK_GELU_ALPHA = 1.702  # CLIP's QuickGELU: x * sigmoid(1.702 x)


def gated_expert_mlp(
    x, h, w1cat, b1cat, w2cat, b2cat, *, num_experts: int, top_k: int | None = None, expert_dim: int,
    fixed_gates=None, ffn_activation: str = "gelu", use_kernel: bool = False,
):  # fmt: skip
    """x + MLP(h) + gated experts(h): routed by the top-k router, or with ``fixed_gates``.

    During ONNX export each call is one dfer custom node (routed or fixed-gates attributes);
    with ``use_kernel`` and x on CUDA (never while exporting) the Triton kernels run; otherwise
    the PyTorch reference, CPU included.
    """
    _check_shapes(x, h, w1cat, b1cat, w2cat, b2cat, num_experts, top_k, expert_dim, fixed_gates, ffn_activation)
    if emit_custom_op() and fixed_gates is not None:
        return torch.onnx.ops.symbolic(
            f"{ONNX_DOMAIN}::{OP_NAME}",
            [x, h, w1cat, b1cat, w2cat, b2cat],
            attrs={
                "num_experts": num_experts, "expert_dim": expert_dim, "fixed_gates": [float(g) for g in fixed_gates],
                "ffn_activation": ffn_activation,
            },
            dtype=x.dtype,
            shape=x.shape,
            version=ONNX_DOMAIN_VERSION,
        )
    if emit_custom_op():
        if ffn_activation != "gelu":
            raise ValueError(f"GatedExpertMLP: the routed node exports with a gelu FFN only, got {ffn_activation!r}")
        return torch.onnx.ops.symbolic(
            f"{ONNX_DOMAIN}::{OP_NAME}",
            [x, h, w1cat, b1cat, w2cat, b2cat],
            attrs={"num_experts": num_experts, "top_k": top_k, "expert_dim": expert_dim},
            dtype=x.dtype,
            shape=x.shape,
            version=ONNX_DOMAIN_VERSION,
        )
    options = dict(num_experts=num_experts, top_k=top_k, expert_dim=expert_dim, fixed_gates=fixed_gates,
                   ffn_activation=ffn_activation)  # fmt: skip
    if use_kernel and x.is_cuda and not torch.onnx.is_in_onnx_export():
        return gated_expert_mlp_triton(x, h, w1cat, b1cat, w2cat, b2cat, **options)
    return gated_expert_mlp_ref(x, h, w1cat, b1cat, w2cat, b2cat, **options)


def gated_expert_mlp_ref(
    x, h, w1cat, b1cat, w2cat, b2cat, *, num_experts: int, top_k: int | None = None, expert_dim: int, fixed_gates=None,
    ffn_activation: str = "gelu",
):  # fmt: skip
    """Pure-PyTorch reference of the op (dense-masked, deterministic top-k or fixed gates)."""
    hidden_width = w2cat.shape[0]
    ffn_width = hidden_width - num_experts * expert_dim
    pre = torch.matmul(h, w1cat) + b1cat
    hidden = F.gelu(pre[..., :hidden_width])
    if ffn_activation == "quick_gelu":
        ffn_pre = pre[..., :ffn_width]
        hidden = torch.cat([ffn_pre * torch.sigmoid(QUICK_GELU_ALPHA * ffn_pre), hidden[..., ffn_width:]], -1)
    if fixed_gates is None:
        gates = top_k_gates(pre[..., hidden_width:], top_k)
    else:
        gates = torch.tensor(list(fixed_gates), dtype=x.dtype, device=x.device).expand(*x.shape[:-1], num_experts)
    expert_hidden = hidden[..., ffn_width:].unflatten(-1, (num_experts, expert_dim)) * gates.unsqueeze(-1)
    hidden = torch.cat([hidden[..., :ffn_width], expert_hidden.flatten(-2)], -1)
    return x + torch.matmul(hidden, w2cat) + b2cat[0] + torch.matmul(gates, b2cat[1:])


def top_k_gates(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Softmax over the top-k logits, zero elsewhere, built from one-hots (no scatter)."""
    values, indices = logits.topk(top_k, dim=-1)
    probs = torch.softmax(values, dim=-1)
    experts = torch.arange(logits.shape[-1], device=logits.device)
    one_hot = (indices.unsqueeze(-1) == experts).to(logits.dtype)
    return (probs.unsqueeze(-1) * one_hot).sum(-2)


def _check_shapes(
    x, h, w1cat, b1cat, w2cat, b2cat, num_experts, top_k, expert_dim, fixed_gates=None, ffn_activation="gelu"
) -> None:  # fmt: skip
    dim = x.shape[-1]
    if ffn_activation not in FFN_ACTIVATIONS:
        raise ValueError(f"GatedExpertMLP: ffn_activation must be one of {', '.join(FFN_ACTIVATIONS)}, got {ffn_activation!r}")
    if h.shape != x.shape:
        raise ValueError(f"GatedExpertMLP: h {tuple(h.shape)} must have the shape of x {tuple(x.shape)}")
    if fixed_gates is None:
        if top_k is None or not 1 <= top_k <= num_experts:
            raise ValueError(f"GatedExpertMLP: top_k must be in 1..{num_experts}, got {top_k}")
    elif top_k is not None:
        raise ValueError("GatedExpertMLP: give top_k (router) or fixed_gates (no router), not both")
    elif len(fixed_gates) != num_experts:
        raise ValueError(f"GatedExpertMLP: fixed_gates must hold {num_experts} values, got {len(fixed_gates)}")
    hidden_width = w2cat.shape[0]
    if hidden_width <= num_experts * expert_dim or tuple(w2cat.shape) != (hidden_width, dim):
        raise ValueError(
            f"GatedExpertMLP: W2cat must be (H + E·F, {dim}) with E·F = {num_experts * expert_dim}, got {tuple(w2cat.shape)}"
        )
    width1 = hidden_width + (num_experts if fixed_gates is None else 0)
    if tuple(w1cat.shape) != (dim, width1) or tuple(b1cat.shape) != (width1,):
        raise ValueError(
            f"GatedExpertMLP: W1cat/b1cat must be ({dim}, {width1})/({width1},), got {tuple(w1cat.shape)}/{tuple(b1cat.shape)}"
        )
    if tuple(b2cat.shape) != (1 + num_experts, dim):
        raise ValueError(f"GatedExpertMLP: b2cat must be ({1 + num_experts}, {dim}), got {tuple(b2cat.shape)}")


# ----------------------------------------------------------------------------------------------
# Triton kernels and their launcher

# Tiles the autotuner chooses from: (meta, num_warps, num_stages). BLOCK_K ≤ 64 divides S4D's
# 192-wide experts and 3072-wide FFN, so GEMM 2 wastes no K work on either. Shared memory as
# kernels.aot measures it (Triton 3.9): ≤ 96 KiB in fp16/bf16 and ≤ 144 KiB in fp32, so every
# tile fits sm_87's 163 KiB and sm_90's 227 KiB. Common Ampere/Hopper fp16 tiles, not yet tuned
# on a GPU.
GEMM_CONFIGS = [
    ({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64}, 8, 3),
    ({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 64}, 4, 4),
    ({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64}, 4, 4),
    ({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64}, 4, 4),
    ({"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 32}, 4, 5),
]
_GROUP_M = 8  # row tiles that share the column tiles' weights in L2


def gated_expert_mlp_triton(
    x, h, w1cat, b1cat, w2cat, b2cat, *, num_experts: int, top_k: int | None = None, expert_dim: int, fixed_gates=None,
    ffn_activation: str = "gelu",
):  # fmt: skip
    """The op on the Triton kernels: same contract and result as gated_expert_mlp_ref."""
    _check_shapes(x, h, w1cat, b1cat, w2cat, b2cat, num_experts, top_k, expert_dim, fixed_gates, ffn_activation)
    check_kernel_inputs(OP_NAME, {"x": x, "h": h, "W1cat": w1cat, "b1cat": b1cat, "W2cat": w2cat, "b2cat": b2cat})
    dim = x.shape[-1]
    x2, h2 = x.reshape(-1, dim).contiguous(), h.reshape(-1, dim).contiguous()
    rows, hidden_width, width1 = x2.shape[0], w2cat.shape[0], w1cat.shape[1]
    out = torch.empty_like(x2)
    if rows == 0:
        return out.reshape(x.shape)
    hidden = x.new_empty(rows, hidden_width)
    routed = fixed_gates is None
    logits = x.new_empty(rows if routed else 1, num_experts, dtype=torch.float32)  # untouched without a router
    gates = logits if routed else _gates_on(x.device, tuple(float(g) for g in fixed_gates))
    ffn_width = hidden_width - num_experts * expert_dim
    quick_gelu_cols = ffn_width if ffn_activation == "quick_gelu" else 0
    params = _launch_params(x.dtype, num_experts, top_k, routed, quick_gelu_cols=quick_gelu_cols)
    _launch(
        _gemm1_kernel, rows, width1, params["gemm1"],
        h2, w1cat, b1cat.contiguous(), hidden, logits, rows, dim, hidden_width, width1, *w1cat.stride(),
    )  # fmt: skip
    _launch(
        _gemm2_kernel, rows, dim, params["gemm2"],
        hidden, w2cat, b2cat.contiguous(), x2, logits, gates, out,
        rows, dim, hidden_width, ffn_width, num_experts, expert_dim, *w2cat.stride(),
    )  # fmt: skip
    return out.reshape(x.shape)


@functools.lru_cache(maxsize=64)
def _gates_on(device, gates: tuple) -> torch.Tensor:
    """Fixed gates as an fp32 device tensor, made once: no host copy per call (or in a CUDA graph)."""
    return torch.tensor(gates, dtype=torch.float32, device=device)


def _launch_params(
    dtype, num_experts: int, top_k: int | None, routed: bool, interpreter: bool | None = None, quick_gelu_cols: int = 0
) -> dict:  # fmt: skip
    """Constexprs of both GEMMs beside the autotuned tile (kernels.aot uses the same).

    QUICK_GELU_COLS: GEMM 1's leading hidden columns that take QuickGELU (CLIP's FFN), 0 for
    none; a constexpr, so the GELU-only (S4D) kernels compile to the code they had without it."""
    common = {"GROUP_M": _GROUP_M, "DOT_PRECISION": dot_precision(dtype, interpreter)}
    gating = {"TOP_K": top_k if routed else 1, "EXPERTS_P": next_power_of_2(num_experts), "FIXED_GATES": not routed}
    return {"gemm1": dict(common, QUICK_GELU_COLS=quick_gelu_cols), "gemm2": dict(common, **gating)}


def _launch(kernel, rows: int, cols: int, meta: dict, *args) -> None:
    """Launch over (rows × cols) output tiles: autotuned on GPU, one fixed tile when interpreting."""
    if interpreting():
        # Each program costs numpy calls per op, so few tiles that fit the problem are fastest:
        # S4D's width on 5 tokens takes 3.6 s with these (16×256×32), 11.6 s with 64×64×32.
        fit = lambda n, most: min(most, max(16, next_power_of_2(n)))  # noqa: E731
        tile = {"BLOCK_M": fit(rows, 64), "BLOCK_N": fit(cols, 256), "BLOCK_K": 32}
        grid = (cdiv(rows, tile["BLOCK_M"]) * cdiv(cols, tile["BLOCK_N"]),)
        kernel.fn[grid](*args, **meta, **tile)
        return
    kernel[lambda tile: (cdiv(rows, tile["BLOCK_M"]) * cdiv(cols, tile["BLOCK_N"]),)](*args, **meta)


@jit
def _tile(rows, cols, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """This program's output tile: row and column indices and their in-bounds masks. Tiles are
    walked GROUP_M row tiles at a time for L2 reuse; row indices are int64 (rows · width can
    pass 2^31)."""
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(rows, BLOCK_M)
    tiles_n = tl.cdiv(cols, BLOCK_N)
    per_group = GROUP_M * tiles_n
    first_m = (pid // per_group) * GROUP_M
    group_m = tl.minimum(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_m
    pid_n = (pid % per_group) // group_m
    rm = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    return rm, rn, rm < rows, rn < cols


@jit
def _gemm1_kernel(
    h_ptr, w_ptr, b_ptr, hidden_ptr, logits_ptr, rows, dim, hidden_width, width, stride_wk, stride_wn,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    DOT_PRECISION: tl.constexpr, QUICK_GELU_COLS: tl.constexpr,
):  # fmt: skip
    """hidden = gelu(h · W1[:, :hidden_width] + b) (QuickGELU on the first QUICK_GELU_COLS
    columns); logits = h · W1[:, hidden_width:] + b in fp32."""
    rm, rn, m_ok, n_ok = _tile(rows, width, BLOCK_M, BLOCK_N, GROUP_M)
    acc = _segment(h_ptr + rm[:, None] * dim, w_ptr, rn, m_ok, n_ok, 0, dim, stride_wk, stride_wn,
                   BLOCK_M, BLOCK_N, BLOCK_K, DOT_PRECISION)  # fmt: skip
    acc += tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    is_hidden = rn < hidden_width
    activated = gelu(acc)
    if QUICK_GELU_COLS > 0:
        quick = acc / (1.0 + tl.exp(-1.702 * acc))  # QUICK_GELU_ALPHA
        activated = tl.where((rn < QUICK_GELU_COLS)[None, :], quick, activated)
    hidden = activated.to(hidden_ptr.dtype.element_ty)
    tl.store(hidden_ptr + rm[:, None] * hidden_width + rn[None, :], hidden, mask=m_ok[:, None] & is_hidden[None, :])
    router = n_ok & (rn >= hidden_width)
    logits_at = logits_ptr + rm[:, None] * (width - hidden_width) + (rn - hidden_width)[None, :]
    tl.store(logits_at, acc, mask=m_ok[:, None] & router[None, :])


@jit
def _gemm2_kernel(
    hidden_ptr, w_ptr, b_ptr, x_ptr, logits_ptr, gates_ptr, out_ptr,
    rows, dim, hidden_width, ffn_width, num_experts, expert_dim, stride_wk, stride_wn,
    TOP_K: tl.constexpr, EXPERTS_P: tl.constexpr, FIXED_GATES: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """out = x + hidden[:, :H] · W2[:H] + b2[0] + Σ_e g_e · (hidden_e · W2_e + b2[1 + e])."""
    rm, rn, m_ok, n_ok = _tile(rows, dim, BLOCK_M, BLOCK_N, GROUP_M)
    experts = tl.arange(0, EXPERTS_P)
    gates = _row_gates(logits_ptr, gates_ptr, rm, m_ok, experts, num_experts, TOP_K, FIXED_GATES, BLOCK_M)
    rows_at = hidden_ptr + rm[:, None] * hidden_width
    acc = _segment(rows_at, w_ptr, rn, m_ok, n_ok, 0, ffn_width, stride_wk, stride_wn,
                   BLOCK_M, BLOCK_N, BLOCK_K, DOT_PRECISION)  # fmt: skip
    acc += tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    for e in range(0, num_experts):
        start = ffn_width + e * expert_dim
        part = _segment(rows_at, w_ptr, rn, m_ok, n_ok, start, start + expert_dim, stride_wk, stride_wn,
                        BLOCK_M, BLOCK_N, BLOCK_K, DOT_PRECISION)  # fmt: skip
        part += tl.load(b_ptr + (1 + e) * dim + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        gate = tl.sum(tl.where(experts[None, :] == e, gates, 0.0), axis=1)
        acc += gate[:, None] * part
    at = rm[:, None] * dim + rn[None, :]
    ok = m_ok[:, None] & n_ok[None, :]
    acc += tl.load(x_ptr + at, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + at, acc.to(out_ptr.dtype.element_ty), mask=ok)


@jit
def _segment(
    rows_at, w_ptr, rn, m_ok, n_ok, start, end, stride_wk, stride_wn,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """fp32 A[:, start:end] · W[start:end, rn] for a row tile (rows_at: the rows' base pointers)."""
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(start, end, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < end
        a = tl.load(rows_at + k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        w_at = w_ptr + k[:, None] * stride_wk + rn[None, :] * stride_wn
        b = tl.load(w_at, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc = dot(a, b, acc, DOT_PRECISION)
    return acc


@jit
def _row_gates(
    logits_ptr, gates_ptr, rm, m_ok, experts, num_experts,
    TOP_K: tl.constexpr, FIXED_GATES: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    """(BLOCK_M, EXPERTS_P) fp32 gates: the fixed ones, or softmax over each row's top-k logits."""
    e_ok = experts < num_experts
    if FIXED_GATES:
        fixed = tl.load(gates_ptr + experts, mask=e_ok, other=0.0)
        gates = tl.zeros((BLOCK_M, experts.shape[0]), dtype=tl.float32) + fixed[None, :]
    else:
        at = logits_ptr + rm[:, None] * num_experts + experts[None, :]
        logits = tl.load(at, mask=m_ok[:, None] & e_ok[None, :], other=0.0)
        logits = tl.where(e_ok[None, :], logits, float("-inf"))
        gates = _top_k_softmax(logits, experts, TOP_K)
    return gates


@jit
def _top_k_softmax(logits, experts, TOP_K: tl.constexpr):
    """Softmax over each row's TOP_K largest logits, 0 elsewhere (ties: lowest expert first)."""
    remaining = logits
    chosen = logits != logits  # all False (no NaN logits reach here)
    for _ in tl.static_range(TOP_K):
        best = tl.max(remaining, axis=1)
        first = tl.min(tl.where(remaining == best[:, None], experts[None, :], experts.shape[0]), axis=1)
        pick = experts[None, :] == first[:, None]
        chosen = chosen | pick
        remaining = tl.where(pick, float("-inf"), remaining)
    top = tl.max(logits, axis=1)
    weights = tl.where(chosen, tl.exp(logits - top[:, None]), 0.0)
    return weights / tl.sum(weights, axis=1)[:, None]


_gemm1_kernel = autotune(GEMM_CONFIGS, key=["rows", "dim", "width"])(_gemm1_kernel)
_gemm2_kernel = autotune(GEMM_CONFIGS, key=["rows", "dim", "hidden_width"])(_gemm2_kernel)


def pin_gemm_tile(index: int | None) -> None:
    """Let both GEMMs' autotuners choose only GEMM_CONFIGS[index] (None: all of them again).

    A lent GPU has minutes, and autotuning compiles every tile of both GEMMs per dtype and
    problem key: pinning one tile compiles one and benchmarks none (Triton runs a lone config
    without timing it). Under the interpreter the launcher ignores the autotuner anyway.
    """
    for kernel in (_gemm1_kernel, _gemm2_kernel):
        if not hasattr(kernel, "configs"):
            raise RuntimeError(f"{kernel!r} is not a Triton autotuner: this Triton build cannot pin a tile")
        every = _ALL_TILES.setdefault(kernel, list(kernel.configs))  # in GEMM_CONFIGS' order
        kernel.configs = every if index is None else [every[index]]


_ALL_TILES: dict = {}


def aot_variants(dim: int = 768, ffn_width: int = 3072, num_experts: int = 8, expert_dim: int = 192, top_k: int = 2):
    """Every compilation kernels.aot makes: both GEMMs × fp32/fp16/bf16 × every autotune tile,
    GEMM 2 routed (top_k of num_experts) and with fixed gates, with alignment promises from
    these (S4D's) sizes; the token count stays free. Weights are row-major (stride 1 along the
    output features), as an ONNX initializer or a TensorRT weight arrives. GEMM 1 with
    QuickGELU FFN columns (FineCLIPER, QUICK_GELU_COLS = 3072) is not among them yet: no
    plugin consumes these PTX files so far (README, Kernels)."""
    hidden_width = ffn_width + num_experts * expert_dim
    variants = []
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        io = f"*{triton_type(dtype)}"
        gemm1_sig = dict(h_ptr=io, w_ptr=io, b_ptr=io, hidden_ptr=io, logits_ptr="*fp32", rows="i32", dim="i32",
                         hidden_width="i32", width="i32", stride_wk="i32")  # fmt: skip
        gemm2_sig = dict(hidden_ptr=io, w_ptr=io, b_ptr=io, x_ptr=io, logits_ptr="*fp32", gates_ptr="*fp32",
                         out_ptr=io, rows="i32", dim="i32", hidden_width="i32", ffn_width="i32", num_experts="i32",
                         expert_dim="i32", stride_wk="i32")  # fmt: skip
        for routed in (True, False):
            width = hidden_width + (num_experts if routed else 0)
            sizes1 = dict(dim=dim, hidden_width=hidden_width, width=width, stride_wk=width)
            sizes2 = dict(dim=dim, hidden_width=hidden_width, ffn_width=ffn_width, expert_dim=expert_dim, stride_wk=dim)
            params = _launch_params(dtype, num_experts, top_k if routed else None, routed, interpreter=False)
            kernels = [(_gemm2_kernel, gemm2_sig, params["gemm2"], sizes2, "routed" if routed else "fixed", "dim")]
            if routed:  # GEMM 1 is the same kernel in both modes, only its width differs
                kernels.insert(0, (_gemm1_kernel, gemm1_sig, params["gemm1"], sizes1, "", "width"))
            for tile, warps, stages in GEMM_CONFIGS:
                tile_tag = "x".join(str(tile[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
                for kernel, signature, meta, sizes, tag, cols in kernels:
                    pointers = [name for name, kind in signature.items() if kind.startswith("*")]
                    variants.append(AotVariant(
                        OP_NAME, kernel.fn, triton_type(dtype), "_".join(filter(None, (tag, tile_tag))), signature,
                        dict(meta, **tile, stride_wn=1), divisibility(pointers, **sizes), warps, stages,
                        (f"cdiv(rows, BLOCK_M) * cdiv({cols}, BLOCK_N)", "1", "1"),
                    ))  # fmt: skip
    return variants


def onnx_function():
    """The routed op's decomposition in standard ONNX ops (kernels.gated_expert_mlp_onnx holds
    it beside the fixed-gates ones)."""
    from kernels.gated_expert_mlp_onnx import onnx_function as routed

    return routed()


def onnx_function_for(nodes):
    """The function a model's GatedExpertMLP nodes need (kernels.gated_expert_mlp_onnx)."""
    from kernels.gated_expert_mlp_onnx import onnx_function_for as choose

    return choose(nodes)
