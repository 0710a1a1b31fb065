"""Verification of an export: checks that fail, with one line saying by how much.

* A checkpoint's export runs in ONNX Runtime against fp32 PyTorch on generated face clips; its
  max |Δlogit| and |Δprob| must stay within the precision's tolerance (export.precision, where
  the bounds and the measurements behind them are).
* An ONNX input has no PyTorch reference: its logits on generated clips must be finite.
* A new engine, where this machine can run it, against ONNX Runtime on the same clips, within
  twice the tolerance (each of the two is within it of fp32).

python -m export.onnx and python -m export.trt exit with 4 when a check fails.
"""

from __future__ import annotations

import dataclasses
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
    """A batch of normalised model inputs made from generated face-like videos."""
    from runtime.synthetic import synthetic_face_frames

    clips = [spec.normalize(synthetic_face_frames(spec.frames, spec.height, spec.width, seed + i)) for i in range(batch)]
    return np.stack(clips)


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

    @classmethod
    def of(cls, reference: np.ndarray, actual: np.ndarray, tolerance: Tolerance) -> Agreement:
        reference, actual = np.asarray(reference, np.float64), np.asarray(actual, np.float64)
        p, q = softmax(reference), softmax(actual)
        scale = float(np.abs(reference).max())
        return cls(
            clips=len(reference),
            top1_agree=float((p.argmax(1) == q.argmax(1)).mean()),
            max_abs_logit_diff=float(np.abs(actual - reference).max()),
            max_prob_diff=float(np.abs(q - p).max()),
            logit_scale=scale,
            logit_bound=tolerance.logit_bound(scale),
            prob_bound=tolerance.prob_atol,
        )

    @property
    def passed(self) -> bool:  # False for NaN differences too
        return self.max_abs_logit_diff <= self.logit_bound and self.max_prob_diff <= self.prob_bound

    def summary(self) -> str:
        return (f"top-1 agreement {self.top1_agree:.0%}, max |Δlogit| {self.max_abs_logit_diff:.1e} (bound {self.logit_bound:.1e}), "
                f"max |Δprob| {self.max_prob_diff:.1e} (bound {self.prob_bound:.1e})")

    def failure(self, what: str) -> str | None:
        """One line saying by how much `what` missed its bounds, or None when it kept them."""
        if self.passed:
            return None
        return f"{what} disagree beyond the tolerance on {self.clips} generated clips: {self.summary()}"


def run_onnx(path: Path, clips: np.ndarray) -> np.ndarray:
    """The ONNX file's logits in ONNX Runtime (CPU), clips cast to its input dtype."""
    session = onnx_session(path)
    clip = session.get_inputs()[0]
    feed = clips.astype(np.float16 if clip.type == "tensor(float16)" else np.float32)
    return session.run([session.get_outputs()[0].name], {clip.name: feed})[0].astype(np.float64)


def against_pytorch(loaded, path: Path, precision: str, batch: int = 2) -> tuple[Agreement, np.ndarray]:
    """fp32 PyTorch vs the ONNX file (at its precision) in ONNX Runtime; the agreement and the
    ONNX Runtime probabilities."""
    import torch

    clips = generated_clips(loaded.spec, batch)
    with torch.no_grad():
        expected = loaded.model(torch.from_numpy(clips)).numpy()
    actual = run_onnx(path, clips)
    return Agreement.of(expected, actual, PRECISIONS[precision].tolerance), softmax(actual)


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

    def record(self) -> dict:
        found = dataclasses.asdict(self.onnxruntime) if self.onnxruntime else {}
        found.pop("clips", None)
        engine = dataclasses.asdict(self.engine_vs_onnxruntime) if self.engine_vs_onnxruntime else None
        return {"reference": self.reference, "clips": self.clips, **found, "finite": self.finite,
                "engine": self.engine, "engine_vs_onnxruntime": engine, "passed": self.failure is None, "failure": self.failure}

    def summary(self, precision: str) -> str:
        """The verify stage's line."""
        if self.onnxruntime is not None:
            text = f"ONNX Runtime {precision} vs {PYTORCH}, {self.clips} generated clips: {self.onnxruntime.summary()}"
        else:
            text = f"ONNX Runtime {precision} ran {self.clips} generated clips (finite: {self.finite}); no PyTorch reference for an ONNX input"
        return f"{text}; {self.engine}"


def verify_onnx(path: Path, precision: str, spec, loaded=None) -> Verification:
    """The bundle's ONNX against fp32 PyTorch when the checkpoint is loaded, else for finite logits."""
    if loaded is not None:
        agreement, probabilities = against_pytorch(loaded, path, precision)
        what = f"ONNX Runtime {precision} and {PYTORCH}"
        return Verification(reference=PYTORCH, clips=agreement.clips, finite=bool(np.isfinite(probabilities).all()),
                            onnxruntime=agreement, failure=agreement.failure(what))
    logits = run_onnx(path, generated_clips(spec, 2))
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
        clips = generated_clips(source.spec, batch).astype(backend.input_dtype)
        ours = backend.run(clips)
    finally:
        backend.close()
    agreement = Agreement.of(run_onnx(source.onnx_path, clips), ours, PRECISIONS[precision].tolerance.scaled(2))
    note = f"engine ran on {backend.sm} ({batch} generated clips) against ONNX Runtime: {agreement.summary()}"
    failure = verification.failure or agreement.failure(f"the {precision} engine on {backend.sm} and ONNX Runtime")
    return dataclasses.replace(verification, engine=note, engine_vs_onnxruntime=agreement, failure=failure)
