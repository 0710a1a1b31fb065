"""The models stage of ``benchmarks.gpu_run``: IFDD and S4D in fp16, and a plain-ViT ceiling.

Variants per family: ``official`` (S4D's noisy, capacity-limited router; IFDD has one mode),
``deploy`` (S4D's deterministic router, PyTorch only), ``kernels`` (deploy with the Triton
kernels), each ``eager``, ``compiled`` (torch.compile) and, for kernels, ``cudagraphs`` (the
compiled forward captured once per batch in a CUDA graph and replayed; it reuses the compiled
variant's compile). ``vit`` is a plain ViT-B on S4D's 800 tokens with SDPA: what S4D's
architecture could reach in PyTorch without its MoE.

Checks before timing: a deploy or kernels variant's logits against the fp32 deploy model's
(:data:`MODEL_ATOL`); an eager kernels variant must also have called its kernel (CUDA only:
on CPU the models dispatch to the references). Official S4D and the ViT are other computations:
finite logits only.
"""

from __future__ import annotations

import copy
import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.gpu_harness import (
    Case,
    CheckFailed,
    Measurement,
    checked_timing,
    count_calls,
    finite,
    within_rounding,
)
from benchmarks.gpu_plan import Plan, Setup

# Two fp16 ulps at |logit| < 2, beyond twice the fp16 PyTorch deploy model's own worst error.
MODEL_ATOL = 2e-3
# Run order: the cheap eager runs first, then the compiles: the kernels (issue 4's targets), the
# ViT ceiling, then the PyTorch-only compiled baselines.
ORDER = (
    ("s4d", "official_eager"), ("s4d", "deploy_eager"), ("s4d", "kernels_eager"),
    ("ifdd", "official_eager"), ("ifdd", "kernels_eager"), ("vit", "plain_eager"),
    ("s4d", "kernels_compiled"), ("s4d", "kernels_cudagraphs"), ("ifdd", "kernels_compiled"),
    ("ifdd", "kernels_cudagraphs"), ("vit", "plain_compiled"), ("vit", "plain_cudagraphs"),
    ("s4d", "deploy_compiled"), ("ifdd", "official_compiled"), ("s4d", "official_compiled"),
)  # fmt: skip
KERNEL_OF = {"s4d": ("kernels.gated_expert_mlp", "gated_expert_mlp_triton"),
             "ifdd": ("kernels.lifting_split", "lifting_split_triton")}  # fmt: skip


class PlainViT(nn.Module):
    """A ViT-B-style encoder (tubelet embed, pre-norm blocks with SDPA, mean pool, head)."""

    def __init__(self, *, dim: int, depth: int, heads: int, mlp: int, img: int, patch: int, frames: int, tubelet: int):
        super().__init__()
        self.frames, self.img = frames, img
        self.embed = nn.Conv3d(3, dim, (tubelet, patch, patch), stride=(tubelet, patch, patch))
        self.blocks = nn.ModuleList(_PlainBlock(dim, heads, mlp) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 7)

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(clip).flatten(2).transpose(1, 2)
        for block in self.blocks:
            tokens = block(tokens)
        return self.head(self.norm(tokens.mean(1)))


class _PlainBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, mlp), nn.Linear(mlp, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(batch, tokens, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, tokens, dim))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class IfddLiftingHead(nn.Module):
    """The dry run's IFDD: its lifting module (ISSM + LADM, where the kernel sits) and head on tokens."""

    def __init__(self, *, dim: int = 32, heads: int = 2, frames: int = 4):
        super().__init__()
        from models.ifdd import ClassifierHead, LiftingModule

        self.grid, self.dim = (frames, 7, 7), dim
        self.lifting = LiftingModule(dim, heads, self.grid)
        self.head = ClassifierHead(dim)

    @property
    def use_kernels(self) -> bool:
        return self.lifting.adapt_split.use_kernels

    @use_kernels.setter
    def use_kernels(self, enabled: bool) -> None:
        self.lifting.adapt_split.use_kernels = bool(enabled)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.lifting(tokens))


@dataclass(frozen=True)
class Variant:
    family: str
    mode: str  # official, deploy, kernels, plain
    execution: str  # eager, compiled, cudagraphs

    @property
    def name(self) -> str:
        return f"{self.mode}_{self.execution}"

    @property
    def compiled(self) -> bool:
        return self.execution != "eager"

    @property
    def checked(self) -> bool:
        """Compared with the fp32 deploy model: S4D's official router is noisy, the ViT another model."""
        return self.mode in ("deploy", "kernels") or (self.family, self.mode) == ("ifdd", "official")


def model_cases(plan: Plan) -> list[Case]:
    bank = ModelBank(plan)
    cases = []
    for family, name in ORDER:
        mode, execution = name.split("_")
        variant = Variant(family, mode, execution)
        for index, batch in enumerate(plan.model_batches):
            setups = [Setup(f"build:{family}", plan.costs.build_s[family])]
            if variant.compiled:
                kind = "static" if index == 0 else "dynamic"
                setups.append(
                    Setup(f"inductor:{family}_{mode}:{kind}", plan.costs.inductor_model_s[f"{family}_{mode}"])
                )
            cases.append(Case(
                name=f"models/{family}/{variant.name}/b{batch}", stage="models", group=family, variant=variant.name,
                size=batch, run=functools.partial(bank.measure, variant, batch), timing_s=plan.costs.timed_model_s,
                setups=tuple(setups),
            ))  # fmt: skip
    return cases


class ModelBank:
    """Builds each family once (fp32 reference weights, fp16 copies per mode) and keeps the
    compiled modules and per-batch references for the cases that share them."""

    def __init__(self, plan: Plan):
        self.plan = plan

    def measure(self, variant: Variant, batch: int) -> Measurement:
        clip, ref32, low = self.references(variant.family, batch)
        module = self.module(variant.family, variant.mode)
        if variant.execution == "eager":
            fn = functools.partial(module, clip)
        elif variant.execution == "compiled":
            fn = functools.partial(self.compiled(variant.family, variant.mode), clip)
        else:
            fn = GraphedCall(self.compiled(variant.family, variant.mode), clip, capture=self.plan.cuda_graphs)
        uncaptured = variant.execution == "cudagraphs" and not self.plan.cuda_graphs
        note = "no CUDA: the compiled forward runs uncaptured" if uncaptured else ""
        calls: list = []
        counted = variant.mode == "kernels" and variant.execution == "eager"  # Dynamo would trace a counter

        def first_call():
            module_name, attribute = KERNEL_OF[variant.family]
            with count_calls(importlib.import_module(module_name), attribute) as launched:
                out = fn()
            calls.extend(launched)
            return out

        def check(logits) -> str:
            if variant.checked:
                summary = within_rounding(logits, ref32, low, atol=MODEL_ATOL, name="logits", per_element=False)
            else:
                summary = finite(logits, name="logits")
            return summary + (f"; {self._kernel_path(variant, calls)}" if counted else "")

        return checked_timing(fn, check, plan=self.plan, first=first_call if counted else None, items=batch,
                              item_name="clips", note=note)  # fmt: skip

    def _kernel_path(self, variant: Variant, calls: list) -> str:
        """On CUDA a kernels variant must have called its kernel launcher in its first forward."""
        attribute = KERNEL_OF[variant.family][1]
        if self.plan.device != "cuda":
            return f"{attribute} called {len(calls)}× (CPU: the models run the references)"
        if not calls:
            raise CheckFailed(f"kernel path not taken: {attribute} never called")
        return f"{attribute} called {len(calls)}× per forward"

    @functools.cache  # noqa: B019  (one bank per run, kept for the whole run)
    def fp32(self, family: str) -> nn.Module:
        """The family's fp32 model in deploy mode without kernels: the reference everything is checked against."""
        torch.manual_seed(0)
        plan = self.plan
        if family == "s4d":
            from models import s4d

            model = s4d.build_model(plan.s4d_config, router_mode="deploy")
        elif family == "ifdd":
            from models import ifdd

            model = IfddLiftingHead() if plan.tiny_ifdd else ifdd.build_model()
        else:
            model = PlainViT(**plan.vit)
        return model.to(plan.device).eval()

    @functools.cache  # noqa: B019  (one bank per run, kept for the whole run)
    def module(self, family: str, mode: str) -> nn.Module:
        model = copy.deepcopy(self.fp32(family)).to(getattr(torch, self.plan.dtype))
        if mode == "official" and family == "s4d":
            model.set_router_mode("official")
        if mode == "kernels":
            model.use_kernels = True
        return model.eval()

    @functools.cache  # noqa: B019  (one bank per run, kept for the whole run)
    def compiled(self, family: str, mode: str) -> Callable:
        return torch.compile(self.module(family, mode), backend=self.plan.compile_backend)

    def input_shape(self, family: str, batch: int) -> tuple[int, ...]:
        model = self.fp32(family)
        if isinstance(model, IfddLiftingHead):
            frames, height, width = model.grid
            return (batch, frames * height * width, model.dim)
        if family in ("ifdd", "s4d"):
            return model.spec.input_shape(batch)
        vit = self.plan.vit
        return (batch, 3, vit["frames"], vit["img"], vit["img"])

    @functools.cache  # noqa: B019  (one bank per run, kept for the whole run)
    def references(self, family: str, batch: int):
        """(fp16 input, fp32 deploy logits, fp16 PyTorch deploy logits) for one batch."""
        generator = torch.Generator().manual_seed(batch)
        clip32 = torch.rand(self.input_shape(family, batch), generator=generator).to(self.plan.device)
        clip = clip32.to(getattr(torch, self.plan.dtype))
        if family == "vit":
            return clip, None, None
        ref32 = self.fp32(family)(clip32).float()
        low = self.module(family, "official" if family == "ifdd" else "deploy")(clip).float()
        return clip, ref32, low


class GraphedCall:
    """The compiled forward captured in a CUDA graph on first call, replayed after (input copied in
    each time, as torch.compile's reduce-overhead mode does); uncaptured without CUDA."""

    def __init__(self, fn: Callable, clip: torch.Tensor, *, capture: bool):
        self.fn, self.clip, self.capture = fn, clip, capture
        self.graph = None

    def __call__(self) -> torch.Tensor:
        if not self.capture:
            return self.fn(self.clip)
        if self.graph is None:
            self.static = self.clip.clone()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):  # warm up (compile, autotune) off the capture
                for _ in range(2):
                    self.fn(self.static)
            torch.cuda.current_stream().wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.out = self.fn(self.static)
        self.static.copy_(self.clip)
        self.graph.replay()
        return self.out
