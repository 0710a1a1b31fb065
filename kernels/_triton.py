"""What the Triton kernel modules share: the optional import, input checks and small helpers.

Triton is the optional ``kernels`` extra. The op modules (references, dispatchers, ONNX
functions) must import without it, so the kernels are decorated through :func:`jit` and
:func:`autotune` here; without Triton they become placeholders that raise a clear error when
launched.

Triton chooses between compiling and interpreting when ``@triton.jit`` runs, i.e. when a kernel
module is first imported: with ``TRITON_INTERPRET=1`` in the environment at that moment the
kernels run on CPU tensors through Triton's numpy interpreter (how CI tests them), otherwise
they compile for the GPU. :func:`interpreting` reports which mode this process is in.
"""

from __future__ import annotations

import dataclasses
import functools

MISSING = "Triton ≥ 3.4 is not installed (pip install 'dfer-edge[kernels]'; tested with 3.9)"

try:
    import triton
    import triton.language as tl
except ModuleNotFoundError:  # the `kernels` extra is not installed
    triton = tl = None
if triton is not None and not hasattr(triton, "knobs"):  # before 3.4: too old for these kernels
    MISSING = f"Triton {triton.__version__} is too old: {MISSING}"
    triton = tl = None

# Read once, as the op modules import this module right before decorating their kernels: the
# mode the kernels were built in, even if the environment changes later.
_INTERPRETED = triton is not None and bool(triton.knobs.runtime.interpret)


class _Unavailable:
    """Stands where a kernel would be when Triton is missing; launching it explains why."""

    def __init__(self, fn):
        self.fn = fn
        functools.update_wrapper(self, fn)

    def __getitem__(self, grid):
        raise RuntimeError(f"cannot launch {self.fn.__name__}: {MISSING}")


def jit(fn):
    """``triton.jit`` when Triton is installed, else a placeholder."""
    return triton.jit(fn) if triton is not None else _Unavailable(fn)


def autotune(configs, key: list[str]):
    """``triton.autotune`` over ``configs`` (a list of (meta dict, num_warps, num_stages))."""
    if triton is None:
        return lambda kernel: kernel
    return triton.autotune(
        [triton.Config(dict(meta), num_warps=warps, num_stages=stages) for meta, warps, stages in configs], key=key
    )


def interpreting() -> bool:
    """True when this process's kernels were built for Triton's CPU interpreter."""
    return _INTERPRETED


def require_triton(op: str) -> None:
    if triton is None:
        raise RuntimeError(f"{op} kernel: {MISSING}")


def check_kernel_inputs(op: str, named: dict) -> None:
    """ValueError naming the first tensor on the wrong device or with the wrong dtype.

    Kernels run on CUDA; under the interpreter (``TRITON_INTERPRET=1``) on CPU. All tensors
    must share x's device and dtype (the reference has the same rule: no silent casts).
    """
    require_triton(op)
    first_name, first = next(iter(named.items()))
    dtype = first.dtype
    supported = _supported_dtypes()
    if dtype not in supported:
        names = ", ".join(sorted(str(d) for d in supported))
        raise ValueError(f"{op} kernel: {first_name} dtype {dtype} is not supported (use one of {names})")
    want = "cpu" if interpreting() else "cuda"
    for name, tensor in named.items():
        if tensor.device.type != want:
            hint = "" if interpreting() else " (set TRITON_INTERPRET=1 before importing kernels to run on CPU)"
            raise ValueError(f"{op} kernel: {name} is on {tensor.device}, the kernel runs on {want}{hint}")
        if tensor.device != first.device:
            raise ValueError(f"{op} kernel: {name} is on {tensor.device} but {first_name} is on {first.device}")
        if tensor.dtype != dtype:
            raise ValueError(f"{op} kernel: {name} dtype {tensor.dtype} does not match {first_name} dtype {dtype}")


@functools.cache
def _supported_dtypes():
    import torch

    return frozenset({torch.float32, torch.float16, torch.bfloat16})


def dot_precision(dtype, interpreter: bool | None = None) -> str:
    """The DOT_PRECISION constexpr of :func:`dot` for operands of this dtype.

    fp32 operands multiply in full fp32 ("ieee"), not TF32: the fp32 path is the accurate one.
    For 16-bit operands the value is unused, except that bf16 under the interpreter multiplies
    in fp32 ("upcast") because the interpreter's bf16 tl.dot multiplies the raw bit patterns
    (triton-lang/triton#11584, "not supported yet"); bf16 products are exact in fp32, so this
    matches the GPU's bf16 MMA with fp32 accumulation.
    """
    import torch

    if dtype == torch.float32:
        return "ieee"
    interpreter = interpreting() if interpreter is None else interpreter
    return "upcast" if dtype == torch.bfloat16 and interpreter else "tf32"


def next_power_of_2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@jit
def gelu(z):
    """Exact (erf) GELU in fp32, as torch.nn.functional.gelu's default."""
    return 0.5 * z * (1.0 + tl.math.erf(z * 0.7071067811865476))


@jit
def dot(a, b, acc, DOT_PRECISION: tl.constexpr):
    """acc + a @ b with fp32 accumulation; DOT_PRECISION from :func:`dot_precision`."""
    if DOT_PRECISION == "upcast":
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc, input_precision=DOT_PRECISION)


@jit
def tanh(z):
    """tanh from exp: saturates to ±1 without overflow (exp(2z) = inf gives 1)."""
    return 1.0 - 2.0 / (tl.exp(2.0 * z) + 1.0)


@dataclasses.dataclass(frozen=True)
class AotVariant:
    """One ahead-of-time compilation of one kernel, as its op module launches it.

    ``signature`` maps every runtime argument, in order, to its Triton type ("*fp16", "i32",
    "fp32"); every other argument of the kernel is a constexpr given in ``constexprs``.
    ``divisibility`` promises that an argument is a multiple of n (pointers: bytes), as Triton's
    JIT would specialise it; the compiled code is only valid for launches that keep the promise
    (it is what lets loads vectorise and pipeline). ``grid`` is the launch rule per axis:
    expressions over the runtime arguments, the constexprs and ``batch``, with ``cdiv``.
    """

    op: str
    kernel: object  # the JITFunction
    dtype: str
    tag: str
    signature: dict
    constexprs: dict
    divisibility: dict
    num_warps: int
    num_stages: int
    grid: tuple

    @property
    def name(self) -> str:
        tag = f"_{self.tag}" if self.tag else ""
        return f"{self.kernel.fn.__name__.strip('_')}_{self.dtype}{tag}_w{self.num_warps}s{self.num_stages}"


def divisibility(pointers, **sizes: int) -> dict:
    """Alignment promises for AOT: 16 B for every pointer, and for each size the largest power
    of two (≤ 16) dividing its deployment value (sizes that are odd get no promise)."""
    hints = {name: 16 for name in pointers}
    for name, value in sizes.items():
        low_bit = value & -value
        if low_bit >= 2:
            hints[name] = min(16, low_bit)
    return hints


TRITON_TYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def triton_type(dtype) -> str:
    """torch dtype → Triton pointer element type name."""
    return TRITON_TYPES[str(dtype).removeprefix("torch.")]
