"""The accuracy cost of a quantised model: its ONNX Runtime outputs against the fp32 ONNX's on
held-out clips (never the calibration ones). Without labels this measures agreement with the
fp32 model, which is what quantisation can change."""

from __future__ import annotations

import numpy as np

from runtime.backends import onnx_session
from runtime.numeric import softmax


def accuracy_cost(reference_path, quantized_path, clips: np.ndarray, labels: tuple[str, ...], batch: int = 2) -> dict:
    """top-1 agreement, max |Δprob|, mean KL(fp32 ‖ quantised) in nats, and top-1 agreement per
    class the fp32 model predicted (so a class the quantised model loses shows up)."""
    if not len(clips):
        raise ValueError("the accuracy cost needs at least one held-out clip")
    reference = _probabilities(onnx_session(reference_path), clips, batch)
    quantized = _probabilities(onnx_session(quantized_path), clips, batch)
    agree = reference.argmax(1) == quantized.argmax(1)
    kl = (reference * (np.log(reference) - np.log(quantized))).sum(1)
    per_class = {}
    for index, label in enumerate(labels):
        chosen = reference.argmax(1) == index
        if chosen.any():
            per_class[label] = {"clips": int(chosen.sum()), "top1_agree": round(float(agree[chosen].mean()), 4)}
    return {
        "reference": "fp32 ONNX in ONNX Runtime",
        "clips": len(clips),
        "top1_agree": round(float(agree.mean()), 4),
        "max_prob_diff": float(np.abs(reference - quantized).max()),
        "mean_kl": float(kl.mean()),
        "per_class": per_class,
    }


def _probabilities(session, clips: np.ndarray, batch: int) -> np.ndarray:
    """Softmax in float64 of the session's logits, so log() of small probabilities stays finite."""
    name = session.get_inputs()[0].name
    logits = np.concatenate([session.run(None, {name: clips[i : i + batch].astype(np.float32)})[0] for i in range(0, len(clips), batch)])
    return softmax(logits.astype(np.float64))
