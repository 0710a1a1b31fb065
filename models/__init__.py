"""Faithful PyTorch re-implementations of published DFER models, loadable from official checkpoints.

Each family has an entry module (models/ifdd.py, models/s4d.py, built from parts in
models/<family>_*.py) exposing ``FAMILY``, ``SIGNATURE`` (state_dict keys that identify it),
``build_model(config, **options)`` returning an eval model with ``.spec`` (ModelSpec) and
``.config`` (JSON-able dict), and ``config_from_state_dict(state_dict)``. ``load(path)`` detects
the family and loads strictly; an option another family owns (``FAMILY_OPTIONS``) is an error.

Torch is imported only when a model is loaded, and the spec (runtime.spec) needs none.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runtime.metadata import weights_note
from runtime.spec import ModelSpec

if TYPE_CHECKING:
    from torch import nn

FAMILIES = ("ifdd", "s4d", "finecliper")
# Options that only some families understand (given for another family, an error); the others
# are passed to every family.
FAMILY_OPTIONS = {"router_mode": ("s4d",), "num_frames": ("finecliper",), "fuse_adapter": ("finecliper",)}


@dataclass
class LoadedModel:
    """A built, strictly loaded eval model and what is known about where it came from."""

    model: "nn.Module"
    family: str
    spec: ModelSpec
    config: dict
    checkpoint_sha256: str
    metadata: dict = field(default_factory=dict)

    @property
    def untrained(self) -> bool:
        """True for demo checkpoints: their predictions mean nothing."""
        return bool(self.metadata.get("untrained", False))

    @property
    def demo(self) -> str:
        """"distilled" (seeded backbone, head fitted to a FER model), "random", or "" (not a demo)."""
        return str(self.metadata.get("demo", ""))

    @property
    def weights_note(self) -> str:
        """What the CLIs print beside predictions of demo weights ("" for real checkpoints)."""
        return weights_note(self.untrained, self.demo)


def family_module(name: str):
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}")
    return importlib.import_module(f"models.{name}")


def detect_family(keys) -> str:
    """Name the family whose signature keys are all present, or explain why none fits."""
    keys = set(keys)
    misses = {}
    for name in FAMILIES:
        missing = [k for k in family_module(name).SIGNATURE if k not in keys]
        if not missing:
            return name
        misses[name] = missing
    from models.checkpoint import CheckpointError

    sample = ", ".join(sorted(keys)[:4]) or "(none)"
    why = "; ".join(f"{name} needs {', '.join(m[:2])}" for name, m in misses.items())
    raise CheckpointError(
        f"unknown model family: known families are {', '.join(FAMILIES)}; the checkpoint's first keys "
        f"({sample}) match none ({why})"
    )


def load(path: str | os.PathLike, *, use_ema: bool = False, **options: Any) -> LoadedModel:
    """Load an official (or demo) checkpoint into the matching model, strictly."""
    from models.checkpoint import META_KEY, load_strict, read_checkpoint, unwrap_state_dict

    raw = read_checkpoint(path)
    metadata = raw.get(META_KEY) if isinstance(raw.get(META_KEY), dict) else {}
    state_dict = unwrap_state_dict(raw, use_ema=use_ema)
    family = detect_family(state_dict)
    _check_family_options(family, options)
    module = family_module(family)
    config = metadata.get("config") or module.config_from_state_dict(state_dict)
    model = module.build_model(config, **options)
    load_strict(model, state_dict, family)
    model.eval()
    return LoadedModel(model, family, model.spec, dict(model.config), sha256_of(path), metadata)


def _check_family_options(family: str, options: dict[str, Any]) -> None:
    """ValueError for an option meant for other families: dropping it would hide the mistake."""
    for name in options:
        accepted = FAMILY_OPTIONS.get(name, FAMILIES)
        if family not in accepted:
            only = ", ".join(accepted)
            raise ValueError(f"option {name} is accepted only by {only} models, not by this {family} checkpoint")


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
