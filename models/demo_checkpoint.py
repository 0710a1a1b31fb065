"""Write a seeded, randomly initialised checkpoint in the official format, marked untrained.

For people without trained weights: the whole pipeline (export, engine build, runtime) runs on
it, and everything that prints its predictions says they are untrained.

    python -m models.demo_checkpoint --family ifdd -o demo_ifdd.pth
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from models import FAMILIES, family_module
from models.checkpoint import META_KEY

UNTRAINED_NOTE = "random initialisation from models.demo_checkpoint: predictions are meaningless"


def write_demo_checkpoint(family: str, path: str | Path, seed: int = 0, config: dict | None = None) -> Path:
    """Build the family's model under a fixed seed and save {'model': state_dict, META_KEY: ...}."""
    import torch

    module = family_module(family)
    torch.manual_seed(seed)
    model = module.build_model(config)
    meta = {"family": family, "untrained": True, "seed": seed, "config": dict(model.config), "note": UNTRAINED_NOTE}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), META_KEY: meta}, path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.demo_checkpoint", description=__doc__.splitlines()[0])
    parser.add_argument("--family", required=True, choices=FAMILIES)
    parser.add_argument("-o", "--output", required=True, help="checkpoint file to write (.pth)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", help="JSON object of model config overrides (S4D: reduced sizes for tests)")
    args = parser.parse_args(argv)
    try:
        config = json.loads(args.config) if args.config else None
        path = write_demo_checkpoint(args.family, args.output, args.seed, config)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({args.family}, seed {args.seed}, UNTRAINED demo weights)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
