"""Where the runtime gets its model from: one seam, ``load_model_source(path)``.

It takes a bundle directory (manifest.json + model.onnx + engines, opened and validated by
runtime.bundle) or a plain ONNX file written by ``python -m export.onnx``, whose ``dfer.*``
metadata (runtime.metadata) carries the ModelSpec. Either way the preprocessing is rebuilt from
the spec in numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from runtime.bundle import Bundle, BundleError
from runtime.metadata import read_metadata
from runtime.spec import ModelSpec


@dataclass(frozen=True)
class ModelSource:
    """Everything the runtime needs to know about a model artefact, and where its files are.

    bundle is None for a plain ONNX file (which then holds no engines).
    """

    path: Path
    onnx_path: Path
    spec: ModelSpec
    family: str
    untrained: bool
    bundle: Bundle | None = None
    demo: str = ""  # "distilled" / "random" demo weights (runtime.metadata.DferMetadata.demo)

    @property
    def has_engines(self) -> bool:
        return self.bundle is not None and bool(self.bundle.engines)

    def verified_onnx(self) -> Path:
        """The ONNX file to open; a bundle's is first checked against its manifest's sha256."""
        if self.bundle is None:
            return self.onnx_path
        return self.bundle.verified_path(self.bundle.manifest.onnx.file)


def load_model_source(path: str | Path) -> ModelSource:
    """Open an exported model: a bundle directory, or a ``.onnx`` file with dfer metadata."""
    path = Path(path)
    if path.is_dir():
        bundle = Bundle.open(path)  # BundleError is a ValueError naming the file and field at fault
        failed = (bundle.manifest.verification or {}).get("passed") is False
        if failed:
            raise BundleError(f"{path}: its export failed verification ({bundle.manifest.verification.get('failure')}); "
                              f"it would give wrong answers: fix the export, then build the bundle again")
        return ModelSource(path=path, onnx_path=bundle.onnx_path, spec=bundle.spec, family=bundle.family,
                           untrained=bundle.untrained, bundle=bundle, demo=bundle.manifest.model.demo)
    if not path.is_file():
        raise ValueError(f"model {path} does not exist")
    metadata = read_metadata(path)
    return ModelSource(path=path, onnx_path=path, spec=metadata.spec, family=metadata.family, untrained=metadata.untrained,
                       demo=metadata.demo)
