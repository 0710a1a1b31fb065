"""Ahead-of-time compilation of every Triton kernel, for Jetson Orin (sm_87) and H100 (sm_90).

    python -m kernels.aot --target sm_87,sm_90 -o DIR [--dtype fp16,bf16,fp32] [--ptx-version 82] [--jobs N]

No GPU is needed: ``triton.compile`` with a ``GPUTarget`` runs LLVM and the ptxas that ships
with Triton. Every kernel × dtype × autotune tile × target gives ``DIR/<op>/<name>.<target>.ptx``
(what TensorRT's ``aot_impl`` or ``cuModuleLoadData`` takes), the matching ``.cubin`` and a
``.json`` with everything a launcher needs (see :class:`CompiledKernel`); ``DIR/manifest.json``
lists them all plus the variants left out, each with its reason.

The PTX entry takes the runtime arguments in the listed order followed by Triton's two scratch
pointers (``global_scratch``, ``profile_scratch``); every kernel here needs 0 bytes of either
(checked at compile time), so a launcher passes null for both.

PTX ISA: Triton 3.9 would write PTX 8.8 for sm_87 and 9.4 for sm_90 (its ptxas 12.9 / 13.4),
which a driver older than CUDA 12.9 / 13.4 refuses to JIT. The default here, 8.2, loads on every
JetPack 6 (CUDA 12.2+) and every H100 driver of the CUDA 12 era.
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import dataclasses
import hashlib
import importlib
import inspect
import json
import operator
import os
import sys
from pathlib import Path

OP_MODULES = ("kernels.lifting_split", "kernels.gated_expert_mlp")
TARGETS = {"sm_87": 87, "sm_90": 90}
# Largest shared memory one block may use (CUDA C Programming Guide, compute capabilities table).
MAX_SHARED_BYTES = {87: 163 * 1024, 90: 227 * 1024}
DTYPES = ("fp32", "fp16", "bf16")
DEFAULT_PTX_VERSION = 82
SCRATCH_PARAMS = ("global_scratch", "profile_scratch")


@dataclasses.dataclass(frozen=True)
class CompiledKernel:
    """What a launcher needs to run one compiled kernel (the ``.json`` beside its PTX)."""

    op: str
    variant: str  # <kernel>_<dtype>[_<tag>]_w<warps>s<stages>, unique per op
    symbol: str  # the PTX .entry name
    target: str  # "sm_87"
    dtype: str
    num_warps: int
    num_stages: int
    threads_per_block: int
    shared_bytes: int  # dynamic shared memory to request at launch
    grid: list  # launch rule per axis, in the op's shape names
    arguments: list  # [[name, Triton type], ...] in PTX parameter order, before the scratch pointers
    scratch_params: list  # trailing pointer parameters, always given null (their sizes are 0)
    constexprs: dict
    divisibility: dict  # launch preconditions: argument → multiple of n (pointers: bytes)
    ptx_file: str
    cubin_file: str
    ptx_sha256: str
    ptx_version: int
    kernel_source_sha256: str
    triton_version: str

    def grid_for(self, **values: int) -> tuple[int, int, int]:
        """The launch grid for these runtime argument values (and ``batch`` where the rule uses it)."""
        return tuple(_evaluate(rule, {**self.constexprs, **values}) for rule in self.grid)

    def check_launch(self, **values: int) -> None:
        """ValueError if a runtime value breaks a divisibility promise the code was compiled with."""
        for name, multiple in self.divisibility.items():
            if name in values and values[name] % multiple:
                raise ValueError(f"{self.variant}: {name}={values[name]} is not a multiple of {multiple}")

    @classmethod
    def from_json(cls, path: Path) -> "CompiledKernel":
        return cls(**json.loads(Path(path).read_text()))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)


class AotError(Exception):
    """A kernel that cannot be compiled ahead of time, or bad options."""


def variants(dtypes=DTYPES) -> list:
    """Every AotVariant of every op module, for the given dtypes."""
    found = []
    for module in OP_MODULES:
        found += [v for v in importlib.import_module(module).aot_variants() if v.dtype in dtypes]
    return found


def compile_all(out_dir: Path, targets, dtypes=DTYPES, ptx_version: int = DEFAULT_PTX_VERSION, jobs: int = 1) -> dict:
    """Compile everything into out_dir; returns the manifest (also written as manifest.json)."""
    _require_compiler()
    out_dir = Path(out_dir)
    todo = [(index, arch) for index in range(len(variants(dtypes))) for arch in targets]
    work = [(tuple(dtypes), index, arch, ptx_version, str(out_dir)) for index, arch in todo]
    if jobs > 1:
        with concurrent.futures.ProcessPoolExecutor(jobs) as pool:
            results = list(pool.map(_compile_one, work))
    else:
        results = [_compile_one(item) for item in work]
    import triton

    manifest = {
        "triton_version": triton.__version__,
        "targets": [f"sm_{arch}" for arch in targets],
        "dtypes": list(dtypes),
        "ptx_version": ptx_version,
        "kernels": [r for r in results if "skipped" not in r],
        "skipped": [r for r in results if "skipped" in r],
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


def load_manifest(out_dir: Path) -> list[CompiledKernel]:
    """The CompiledKernel records of a compile_all output folder, read back from their .json."""
    out_dir = Path(out_dir)
    manifest = json.loads((out_dir / "manifest.json").read_text())
    return [CompiledKernel.from_json(out_dir / entry["json"]) for entry in manifest["kernels"]]


def _compile_one(item) -> dict:
    """Compile one variant for one target; write .ptx/.cubin/.json; the manifest entry."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    dtypes, index, arch, ptx_version, out_dir = item
    v = variants(dtypes)[index]
    fn = v.kernel
    target = f"sm_{arch}"
    missing = [n for n in fn.arg_names if n not in v.signature and n not in v.constexprs]
    if missing:
        raise AotError(f"{v.name}: arguments {missing} are neither runtime arguments nor constexprs")
    signature = {n: v.signature.get(n, "constexpr") for n in fn.arg_names}
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", d]] for n, d in v.divisibility.items()}
    source = ASTSource(fn=fn, signature=signature, constexprs=v.constexprs, attrs=attrs)
    options = {"num_warps": v.num_warps, "num_stages": v.num_stages, "ptx_version": ptx_version,
               "enable_fp_fusion": True}  # fmt: skip
    try:
        compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)
    except Exception as error:  # a compiler failure names the variant, not a 40-line MLIR trace
        raise AotError(f"{v.name} for {target} did not compile: {str(error).splitlines()[0]}") from error
    meta = compiled.metadata
    for scratch in ("global_scratch_size", "profile_scratch_size"):
        if getattr(meta, scratch, 0):
            raise AotError(f"{v.name} for {target} needs {getattr(meta, scratch)} B of {scratch}: launchers pass null")
    if meta.shared > MAX_SHARED_BYTES[arch]:
        reason = f"needs {meta.shared} B of shared memory, {target} allows {MAX_SHARED_BYTES[arch]}"
        return {"op": v.op, "variant": v.name, "target": target, "skipped": reason}
    stem = Path(v.op) / f"{v.name}.{target}"
    folder = Path(out_dir) / v.op
    folder.mkdir(parents=True, exist_ok=True)
    ptx = compiled.asm["ptx"]
    (Path(out_dir) / f"{stem}.ptx").write_text(ptx)
    (Path(out_dir) / f"{stem}.cubin").write_bytes(compiled.asm["cubin"])
    record = CompiledKernel(
        op=v.op, variant=v.name, symbol=meta.name, target=target, dtype=v.dtype,
        num_warps=v.num_warps, num_stages=v.num_stages, threads_per_block=v.num_warps * 32,
        shared_bytes=meta.shared, grid=list(v.grid), arguments=[[n, t] for n, t in v.signature.items()],
        scratch_params=list(SCRATCH_PARAMS), constexprs=dict(v.constexprs), divisibility=dict(v.divisibility),
        ptx_file=f"{stem}.ptx", cubin_file=f"{stem}.cubin", ptx_sha256=hashlib.sha256(ptx.encode()).hexdigest(),
        ptx_version=ptx_version, kernel_source_sha256=kernel_source_sha256(fn), triton_version=triton.__version__,
    )  # fmt: skip
    (Path(out_dir) / f"{stem}.json").write_text(record.to_json())
    return {"op": v.op, "variant": v.name, "target": target, "json": f"{stem}.json"}


def kernel_source_sha256(kernel) -> str:
    """sha256 of a kernel's source and of every Triton function it calls, transitively.

    Works on compiled and interpreted kernels alike (both keep the Python function as ``.fn``),
    so a test process running the interpreter can check the hash of compiled artefacts.
    """
    sources: dict[str, str] = {}

    def visit(fn) -> None:
        key = f"{fn.__module__}.{fn.__qualname__}"
        if key in sources:
            return
        sources[key] = inspect.getsource(fn)
        for name in fn.__code__.co_names:
            dependency = fn.__globals__.get(name)
            if type(dependency).__name__ in ("JITFunction", "InterpretedFunction"):
                visit(dependency.fn)

    visit(kernel.fn)
    return hashlib.sha256("".join(f"{k}\n{sources[k]}" for k in sorted(sources)).encode()).hexdigest()


def _evaluate(rule: str, names: dict) -> int:
    """Integer value of a grid rule: names, integers, + - * // and cdiv(a, b); nothing else."""
    binary = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv}

    def value(node) -> int:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name) and node.id in names:
            return int(names[node.id])
        if isinstance(node, ast.BinOp) and type(node.op) in binary:
            return binary[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "cdiv" and len(node.args) == 2:
            return -(-value(node.args[0]) // value(node.args[1]))
        raise ValueError(f"grid rule {rule!r}: cannot evaluate {ast.dump(node)} (missing a value?)")

    return value(ast.parse(rule, mode="eval").body)


def _require_compiler() -> None:
    from kernels._triton import MISSING, interpreting, triton

    if triton is None:
        raise AotError(MISSING)
    if interpreting():
        raise AotError("TRITON_INTERPRET=1 made the kernels interpreter functions; unset it to compile them")


def _parse_list(text: str, allowed, what: str) -> list:
    items = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [item for item in items if item not in allowed]
    if unknown or not items:
        raise AotError(f"unknown {what} {unknown or text!r}; choose from {', '.join(allowed)}")
    return items


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kernels.aot", description=__doc__.split("\n")[0])
    parser.add_argument("--target", default="sm_87,sm_90", help="comma-separated: sm_87 (Jetson Orin), sm_90 (H100)")
    parser.add_argument("-o", "--output", required=True, type=Path, help="output folder")
    parser.add_argument("--dtype", default=",".join(DTYPES), help="comma-separated subset of fp32,fp16,bf16")
    parser.add_argument("--ptx-version", type=int, default=DEFAULT_PTX_VERSION, help="PTX ISA ×10, e.g. 82")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compile processes")
    args = parser.parse_args(argv)
    try:
        targets = [TARGETS[t] for t in _parse_list(args.target, TARGETS, "target")]
        dtypes = _parse_list(args.dtype, DTYPES, "dtype")
        if args.jobs < 1:
            raise AotError(f"--jobs must be ≥ 1, got {args.jobs}")
        args.output.mkdir(parents=True, exist_ok=True)
        manifest = compile_all(args.output, targets, dtypes, args.ptx_version, args.jobs)
    except AotError as error:
        print(f"kernels.aot: {error}", file=sys.stderr)
        return 2
    print(f"{len(manifest['kernels'])} kernels compiled into {args.output}, {len(manifest['skipped'])} left out")
    for entry in manifest["skipped"]:
        print(f"  left out {entry['variant']} for {entry['target']}: {entry['skipped']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
