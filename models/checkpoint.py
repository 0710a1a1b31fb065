"""Reading checkpoints written by the official repositories, safely.

A checkpoint is an untrusted pickle: it is only ever read with ``torch.load(weights_only=True)``,
which refuses any object that would run code. The official repos wrap the weights in
``{'model': ...}`` (IFDD, S4D/VideoMAE), ``{'state_dict': ...}``, ``{'module': ...}`` or keep an
``ema`` copy; DataParallel adds ``module.`` prefixes. Everything here turns those into a plain
state_dict and loads it strictly, with errors that name the key and the shapes.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

# Wrapper keys the official training scripts use, in order of preference. 'model_ema' and
# 'ema' hold the averaged weights; they are used when the caller asks for them.
WRAPPER_KEYS = ("model", "state_dict", "module", "net")
EMA_KEYS = ("model_ema", "ema", "state_dict_ema")
META_KEY = "dfer_meta"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with a one-line reason naming the problem."""


class ConfigRecord:
    """What a family's config dataclass needs to travel in a checkpoint's metadata: from_dict
    refuses unknown fields (naming them and the family, ``CONFIG_NAME``) and to_dict is JSON-able
    (tuples become lists)."""

    CONFIG_NAME: ClassVar[str]

    @classmethod
    def from_dict(cls, data: dict | None):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data or {}) - names)
        if unknown:
            raise ValueError(f"unknown {cls.CONFIG_NAME} config field(s): {', '.join(unknown)}")
        return cls(**(data or {}))

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Load the raw checkpoint dict without executing anything in it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        unsafe = [line.strip().rstrip(".") for line in str(err).splitlines() if "GLOBAL" in line]
        if unsafe:
            raise CheckpointError(
                f"{path}: refused to load: the file holds Python objects that would run code when "
                f"unpickled ({unsafe[0]}); only plain tensors are accepted"
            ) from err
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({_reason(err)})") from err
    except Exception as err:  # torch.load fails on garbage with many exception types
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint, truncated or corrupt ({_reason(err)})") from err
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(raw).__name__}")
    return raw


def _reason(err: Exception) -> str:
    """The most specific line of a loader error (torch wraps the cause in boilerplate)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    specific = [line for line in lines if "Unsupported" in line or "failed" in line.lower()]
    line = (specific or lines or [type(err).__name__])[-1 if specific else 0]
    return f"{type(err).__name__}: {line.split('. ')[0][:160]}"


def unwrap_state_dict(raw: dict, use_ema: bool = False) -> dict[str, torch.Tensor]:
    """Find the state_dict inside an official checkpoint and strip DataParallel prefixes."""
    candidates = (EMA_KEYS + WRAPPER_KEYS) if use_ema else WRAPPER_KEYS
    state = raw
    for key in candidates:
        if isinstance(raw.get(key), dict):
            state = raw[key]
            break
    else:
        if use_ema:
            raise CheckpointError(f"no EMA weights in the checkpoint (looked for {', '.join(EMA_KEYS)})")
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(
            f"no tensors found in the checkpoint (top-level keys: {', '.join(map(str, list(raw)[:8]))})"
        )
    return {_strip_prefix(k): v for k, v in tensors.items()}


def _strip_prefix(key: str) -> str:
    for prefix in ("module.", "_orig_mod."):
        while key.startswith(prefix):
            key = key[len(prefix):]
    return key


def load_strict(model: nn.Module, state_dict: dict[str, torch.Tensor], family: str) -> None:
    """load_state_dict(strict=True) with one clear line for the first thing that disagrees."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (first: {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first: {', '.join(unexpected[:3])})")
        raise CheckpointError(f"checkpoint does not match the {family} model: keys {'; '.join(parts)}")
    for key, tensor in expected.items():
        if tuple(state_dict[key].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"checkpoint does not match the {family} model: {key} has shape "
                f"{tuple(state_dict[key].shape)}, the model expects {tuple(tensor.shape)}"
            )
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state_dict.items()}, strict=True)
