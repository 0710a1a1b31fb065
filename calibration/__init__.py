"""INT8/FP8 calibration from real video clips, with the accuracy cost reported (DESIGN §5).

    clips.py     videos → clips, cut by the runtime's own decode/clip pieces; calibration and
                 held-out sets from different videos
    qdq.py       fp32 ONNX + clips → QDQ ONNX (onnxruntime.quantization) for strongly typed
                 TensorRT builds
    accuracy.py  QDQ vs fp32 in ONNX Runtime on the held-out clips, per class, against a bound

``python -m export.trt model.pth --precision int8 --calib videos/`` runs all three.
"""

from calibration.accuracy import ACCURACY_BOUNDS, AccuracyBound, accuracy_cost, compare, summary as cost_summary
from calibration.clips import CalibrationClips, calibration_clips, cut_clips, video_files
from calibration.qdq import SCHEMES, QdqResult, quantize

__all__ = ["ACCURACY_BOUNDS", "SCHEMES", "AccuracyBound", "CalibrationClips", "QdqResult", "accuracy_cost", "calibration_clips",
           "compare", "cost_summary", "cut_clips", "quantize", "video_files"]
