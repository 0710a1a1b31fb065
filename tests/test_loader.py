"""models.load: family detection, official wrappers, demo checkpoints and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import models
from models.checkpoint import CheckpointError
from models.demo_checkpoint import write_demo_checkpoint

ROOT = Path(__file__).resolve().parents[1]
# A reduced S4D (the fixture's model_small config) keeps these tests fast.
SMALL_S4D = {"img_size": 64, "embed_dim": 64, "depth": 4, "num_heads": 4, "moe_layers": [2, 3]}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, proc.stderr
    for needle in needles:
        assert needle in error_lines[0], error_lines[0]


@pytest.fixture(scope="module")
def small_s4d(tmp_path_factory) -> Path:
    return write_demo_checkpoint("s4d", tmp_path_factory.mktemp("ckpt") / "s4d_small.pth", seed=3, config=SMALL_S4D)


def test_demo_checkpoint_cli_round_trip(tmp_path):
    path = tmp_path / "demo.pth"
    proc = run_cli("models.demo_checkpoint", "--family", "s4d", "--config", json.dumps(SMALL_S4D), "-o", str(path))
    assert proc.returncode == 0, proc.stderr
    assert "UNTRAINED" in proc.stdout
    loaded = models.load(path)
    assert loaded.family == "s4d" and loaded.untrained
    assert loaded.spec.height == 64 and loaded.spec.labels[0] == "happy"
    assert {k: json.loads(json.dumps(loaded.config))[k] for k in SMALL_S4D} == SMALL_S4D
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"model", "dfer_meta"}  # the official layout plus our metadata


def test_demo_checkpoints_are_seeded(tmp_path):
    a = write_demo_checkpoint("s4d", tmp_path / "a.pth", seed=5, config=SMALL_S4D)
    b = write_demo_checkpoint("s4d", tmp_path / "b.pth", seed=5, config=SMALL_S4D)
    c = write_demo_checkpoint("s4d", tmp_path / "c.pth", seed=6, config=SMALL_S4D)
    sd = [torch.load(p, weights_only=True)["model"] for p in (a, b, c)]
    key = "patch_embed.proj.weight"
    assert torch.equal(sd[0][key], sd[1][key]) and not torch.equal(sd[0][key], sd[2][key])


@pytest.mark.parametrize("wrap", ["state_dict", "module_prefix", "bare", "ema"])
def test_official_wrappers_are_accepted(small_s4d, tmp_path, wrap):
    raw = torch.load(small_s4d, weights_only=True)
    state, meta = raw["model"], raw["dfer_meta"]
    if wrap == "state_dict":
        ckpt = {"state_dict": state, "dfer_meta": meta}
    elif wrap == "module_prefix":
        ckpt = {"model": {f"module.{k}": v for k, v in state.items()}, "dfer_meta": meta}
    elif wrap == "bare":
        ckpt = dict(state)
    else:
        ckpt = {"model": state, "model_ema": {k: v + 1 for k, v in state.items()}, "dfer_meta": meta}
    path = tmp_path / f"{wrap}.pth"
    torch.save(ckpt, path)
    loaded = models.load(path, use_ema=(wrap == "ema"))
    offset = 1 if wrap == "ema" else 0
    got = loaded.model.state_dict()["patch_embed.proj.weight"]
    assert torch.equal(got, state["patch_embed.proj.weight"] + offset)
    if wrap == "bare":  # no metadata: sizes come from the weights, the clip size from the official default
        assert loaded.config["embed_dim"] == 64 and loaded.spec.height == 160


def test_unknown_family_lists_families_and_keys(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"model": {"conv1.weight": torch.zeros(2, 3), "fc.bias": torch.zeros(2)}}, path)
    with pytest.raises(CheckpointError) as err:
        models.load(path)
    message = str(err.value)
    assert "ifdd, s4d" in message and "conv1.weight" in message
    assert_one_line_error(run_cli("export.onnx", str(path)), "unknown model family", "conv1.weight")


def test_truncated_and_foreign_files(small_s4d, tmp_path):
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(small_s4d.read_bytes()[: small_s4d.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        models.load(truncated)
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights\n")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        models.load(text)
    assert_one_line_error(run_cli("export.onnx", str(truncated)), "truncated.pth")
    assert_one_line_error(run_cli("export.onnx", str(tmp_path / "missing.pth")), "no such checkpoint file")


def test_shape_mismatch_names_key_and_shapes(small_s4d, tmp_path):
    raw = torch.load(small_s4d, weights_only=True)
    raw["model"]["head.video.weight"] = torch.zeros(5, 64)
    path = tmp_path / "bad_shape.pth"
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match=r"head\.video\.weight has shape \(5, 64\), the model expects \(7, 64\)"):
        models.load(path)


class _RunsCode:
    """Unpickling this object would run a shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "payload": _RunsCode(marker)}, path)
    with pytest.raises(CheckpointError, match="refused to load"):
        models.load(path)
    proc = run_cli("export.onnx", str(path))
    assert_one_line_error(proc, "refused to load")
    assert not marker.exists(), "loading the checkpoint executed code"


def test_specs_follow_the_official_test_pipelines():
    ifdd = models.family_module("ifdd").SPEC
    assert ifdd.labels == ("happy", "sad", "neutral", "angry", "surprise", "disgust", "fear")
    assert (ifdd.frames, ifdd.height, ifdd.frame_stride, ifdd.mean, ifdd.std) == (16, 224, 1, (0, 0, 0), (1, 1, 1))
    assert ifdd.clip_merge == "logits"
    s4d = models.family_module("s4d").build_model(SMALL_S4D).spec
    assert (s4d.frames, s4d.frame_stride, s4d.mean, s4d.std) == (16, 4, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert s4d.clip_merge == "softmax" and s4d.labels == ifdd.labels


def test_option_of_another_family_is_an_error(small_s4d, tmp_path):
    assert models.load(small_s4d, router_mode="official").model.router_mode == "official"
    ifdd = write_demo_checkpoint("ifdd", tmp_path / "ifdd.pth", seed=0)
    with pytest.raises(ValueError, match=r"^option router_mode is accepted only by s4d models, not by this ifdd checkpoint$"):
        models.load(ifdd, router_mode="official")
