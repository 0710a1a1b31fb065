"""Write a seeded demo checkpoint in the official format, marked as demo weights.

For people without trained weights: the whole pipeline (export, engine build, runtime) runs on
it, and everything that prints its predictions says they come from no trained model.

    python -m models.demo_checkpoint --family ifdd -o demo_ifdd.pth

The backbone is randomly initialised under ``--seed``. With ``--head auto`` (the default) the
classifier head is the one export.distill_demo fitted to a real FER model on real face videos
(models/demo_heads/<family>.npz), so predictions follow the face: a distilled demo, not a
benchmark model. It is used only where it fits: a config whose shapes differ from the shipped
head's (the reduced S4D sizes of the tests) gets the random head, silently, as does
``--head random``; a backbone that differs from the one the head was fitted on (another seed,
or a torch release that draws other numbers) is refused with one line, and ``auto`` then
writes the random-head demo with that line as a warning, ``--head distilled`` fails with it.
Either way the metadata says which it is (``demo``: "distilled" or "random") and keeps
``untrained: true``: no part of a demo was trained on DFEW.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models import FAMILIES, family_module
from models.checkpoint import META_KEY

UNTRAINED_NOTE = "random initialisation from models.demo_checkpoint: predictions are meaningless"
DISTILLED_NOTE = ("distilled demo, not a benchmark model: seeded random backbone, classifier head fitted by "
                  "export.distill_demo to a per-frame FER model's outputs on a few real face videos")
HEADS_DIR = Path(__file__).with_name("demo_heads")
HEAD_MODES = ("auto", "distilled", "random")
DEMO_SEED = 0  # the seed the shipped heads were fitted for
HEAD_KEYS = {"ifdd": "head.head.1", "s4d": "head.video"}  # state_dict prefix of the fitted Linear
# Fingerprints agree when the draws are the same numbers: a float64 sum over identical float32
# tensors moves by ~1e-16 with the summation order; a different draw moves it by its whole size.
FINGERPRINT_RTOL = 1e-6


class HeadMismatch(ValueError):
    """The shipped distilled head does not fit this backbone; the message is one line."""


@dataclass(frozen=True)
class DistilledHead:
    """A fitted classifier head and what it was fitted on (models/demo_heads/<family>.npz)."""

    family: str
    weight: np.ndarray  # (classes, features) float32
    bias: np.ndarray  # (classes,) float32
    fingerprint: np.ndarray  # (tensors, 2) float64: sum and sum of squares of each backbone tensor
    fingerprint_keys: tuple[str, ...]
    meta: dict  # seed, config, teacher, videos, measurements
    sha256: str

    @classmethod
    def load(cls, family: str, path: Path | None = None) -> DistilledHead:
        path = path or HEADS_DIR / f"{family}.npz"
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            return cls(family, data["weight"], data["bias"], data["fingerprint"], tuple(meta.pop("fingerprint_keys")),
                       meta, hashlib.sha256(path.read_bytes()).hexdigest())

    def check(self, state_dict: dict, config: dict) -> None:
        """HeadMismatch (one line) unless state_dict is the backbone this head was fitted on."""
        key = HEAD_KEYS[self.family]
        shapes = (tuple(state_dict[f"{key}.weight"].shape), tuple(self.weight.shape))
        if config != self.meta["config"] or shapes[0] != shapes[1]:
            fields = sorted(k for k in {*config, *self.meta["config"]} if config.get(k) != self.meta["config"].get(k))
            raise HeadMismatch(f"the shipped distilled {self.family} head fits the full-size config, not one with other "
                               f"{', '.join(fields) or 'head sizes'} (head {shapes[1]} against {shapes[0]})")
        keys, values = backbone_fingerprint(state_dict, self.family)
        if keys != self.fingerprint_keys:
            raise HeadMismatch(f"the {self.family} backbone's tensors differ from those the shipped head was fitted on")
        scale = np.sqrt(self.fingerprint[:, 1:])  # a draw's sum is of the order of its root sum of squares
        close = np.isclose(values, self.fingerprint, rtol=FINGERPRINT_RTOL, atol=FINGERPRINT_RTOL * scale).all(1)
        if not close.all():
            first = keys[int(np.argmin(close))]
            raise HeadMismatch(
                f"the seeded {self.family} backbone differs from the one the shipped head was fitted on (torch seed "
                f"{self.meta['seed']}, torch {self.meta['torch']}; another seed or torch release draws other numbers): "
                f"{int((~close).sum())} of {len(keys)} tensors differ, first {first}")


def backbone_fingerprint(state_dict: dict, family: str) -> tuple[tuple[str, ...], np.ndarray]:
    """Keys and (sum, sum of squares) in float64 of every tensor but the fitted head: cheap
    (0.1–0.3 s at full size) and tells another draw of any one tensor."""
    head = HEAD_KEYS[family] + "."
    keys = tuple(sorted(k for k in state_dict if not k.startswith(head)))
    values = np.array([[float(t.double().sum()), float(t.double().square().sum())]
                       for t in (state_dict[k] for k in keys)])
    return keys, values


def write_demo_checkpoint(family: str, path: str | Path, seed: int = DEMO_SEED, config: dict | None = None,
                          head: str = "auto", clip_visual: str | Path | None = None) -> Path:
    """Build the family's demo (build_demo) and save it (save_demo)."""
    return save_demo(*build_demo(family, seed, config, head, clip_visual=clip_visual), path)


def save_demo(state_dict: dict, meta: dict, path: str | Path) -> Path:
    """{'model': state_dict, META_KEY: meta}: the official layout plus our metadata."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state_dict, META_KEY: meta}, path)
    return path


def build_demo(family: str, seed: int = DEMO_SEED, config: dict | None = None, head: str = "auto",
               clip_visual: str | Path | None = None) -> tuple[dict, dict]:
    """The model built under a fixed seed, with the distilled head put in where it fits (head:
    auto, distilled or random; see the module docstring): its state_dict and metadata.
    clip_visual (finecliper only): a CLIP checkpoint whose image tower replaces the random one."""
    if head not in HEAD_MODES:
        raise ValueError(f"head must be one of {', '.join(HEAD_MODES)}, got {head!r}")
    if clip_visual is not None and family != "finecliper":
        raise ValueError(f"--clip-visual is for the finecliper family, not {family}")
    model = seeded_model(family, seed, config, clip_visual)
    state_dict = model.state_dict()
    meta = {"family": family, "untrained": True, "seed": seed, "config": dict(model.config)}
    if clip_visual is not None:
        meta["clip_visual"] = str(clip_visual)
    meta.update(_head_meta(family, state_dict, _plain(meta["config"]), head))
    return state_dict, meta


def seeded_model(family: str, seed: int, config: dict | None, clip_visual: str | Path | None = None):
    """The demo's random model: torch.manual_seed(seed), then the family's build_model(config).
    export.distill_demo fits the shipped heads on exactly this model (seed DEMO_SEED). With
    clip_visual (finecliper), the sizes come from those CLIP weights, which are loaded into it."""
    import torch

    module = family_module(family)
    visual = None
    if clip_visual is not None:
        from models.clip_weights import read_clip_visual

        visual = read_clip_visual(clip_visual)
        config = {**module.config_from_clip_visual({f"visual.{k}": v for k, v in visual.items()}), **(config or {})}
    torch.manual_seed(seed)
    model = module.build_model(config)
    return model if visual is None else module.load_clip_visual(model, visual)


def _head_meta(family: str, state_dict: dict, config: dict, head: str) -> dict:
    """Swap the distilled head into state_dict when wanted and fitting; the metadata to record."""
    import torch

    random = {"demo": "random", "note": UNTRAINED_NOTE}
    if family not in HEAD_KEYS:  # finecliper: no fitted head; its class embeddings are seeded unit vectors
        if head == "distilled":
            raise HeadMismatch(f"no distilled head ships for {family}; use --head random")
        return {**random, "note": f"{UNTRAINED_NOTE}; class embeddings are seeded random unit vectors, not text-encoder outputs"}
    if head == "random":
        return random
    try:
        distilled = DistilledHead.load(family)
        distilled.check(state_dict, config)
    except (HeadMismatch, OSError) as err:
        if head == "distilled":
            raise HeadMismatch(str(err)) from err
        if isinstance(err, OSError) or config == distilled.meta["config"]:  # a config of other sizes is expected
            warnings.warn(f"{err}; writing the random-head demo", stacklevel=4)
        return {**random, "distilled": f"not used: {err}"}
    key = HEAD_KEYS[family]
    state_dict[f"{key}.weight"] = torch.from_numpy(distilled.weight.copy())
    state_dict[f"{key}.bias"] = torch.from_numpy(distilled.bias.copy())
    fitted = distilled.meta
    return {"demo": "distilled", "note": DISTILLED_NOTE, "teacher": fitted["teacher"], "videos": fitted["videos"],
            "held_out": fitted["held_out"], "head_sha256": distilled.sha256}


def _plain(config: dict) -> dict:
    """The config as its JSON round trip gives it (tuples become lists), to compare with a stored one."""
    return json.loads(json.dumps(config))


def describe(meta: dict) -> str:
    """What a demo checkpoint's predictions are, in one phrase for printing."""
    if meta.get("demo") == "distilled":
        return f"DISTILLED demo weights, not a benchmark model: head fitted to {meta['teacher']}, UNTRAINED backbone"
    if meta.get("family") == "finecliper":
        return "UNTRAINED demo weights, random head: seeded random unit vectors as class embeddings"
    return "UNTRAINED demo weights"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.demo_checkpoint", description=__doc__.splitlines()[0])
    parser.add_argument("--family", required=True, choices=FAMILIES)
    parser.add_argument("-o", "--output", required=True, help="checkpoint file to write (.pth)")
    parser.add_argument("--seed", type=int, default=DEMO_SEED)
    parser.add_argument("--config", help="JSON object of model config overrides (S4D: reduced sizes for tests)")
    parser.add_argument("--head", choices=HEAD_MODES, default="auto",
                        help="classifier head: the shipped distilled one where it fits (auto), it or fail, or random")
    parser.add_argument("--clip-visual", metavar="FILE",
                        help="finecliper: CLIP weights (OpenAI or open_clip naming) for the image tower instead of random ones")
    args = parser.parse_args(argv)
    try:
        config = json.loads(args.config) if args.config else None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            state_dict, meta = build_demo(args.family, args.seed, config, head=args.head, clip_visual=args.clip_visual)
        path = save_demo(state_dict, meta, args.output)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    print(f"wrote {path} ({args.family}, seed {args.seed}, {describe(meta)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
