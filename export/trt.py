"""Checkpoint (or ONNX) → TensorRT engine → self-describing bundle (DESIGN §5–6).

    python -m export.trt model.pth [-o name.dfer] [--precision fp16|fp32|int8|fp8]
        [--calib VIDEO_DIR [--calib-clips N]] [--max-batch N] [--opt-batch N]
        [--builder tensorrt|tensorrt-rtx|auto] [--target sm_86,...]
        [--input float|uint8] [--no-custom-ops] [--no-plugins] [--no-verify]

Precision lives in the ONNX and every network is built STRONGLY_TYPED (export.builder): fp16
and fp32 are exports at that precision; int8 and fp8 are the fp32 export calibrated on clips
cut from the videos under --calib and quantised to a QDQ graph (calibration/), whose accuracy
cost against fp32 on held-out clips goes into the manifest. A QDQ ONNX (from an earlier bundle)
builds again without --calib. ``--input uint8`` exports a graph that takes the decoded uint8
frames and normalises them itself (export.onnx), so the engine does it on the GPU.

Exit status: 0 built and verified; 1 the builder refused the network; 2 bad input (one line
says which); 3 no TensorRT builder installed (the ONNX part of the bundle is still written and
verified); 4 verification failed: ONNX Runtime disagrees with fp32 PyTorch beyond the
precision's tolerance (export.precision), an ONNX input gives non-finite logits, or the engine,
where it runs here, disagrees with ONNX Runtime (the manifest records the failure).

The pieces: export.request (options and their checks), export.stages (the pipeline),
export.manifest (the bundle writer), export.verify, export.builder (TensorRT).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from export.builder import BuildError, NoBuilderError
from export.request import DEFAULT_CALIB_CLIPS, BuildRequest
from export.stages import Progress, build_bundle, write_onnx_part
from export.verify import VerificationFailed
from runtime.spec import INPUT_FORMATS

__all__ = ["BuildRequest", "NoBuilderError", "Progress", "build_bundle", "main", "write_onnx_part"]

EXIT_BUILD_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_NO_BUILDER = 3
EXIT_VERIFY_FAILED = 4


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    request = BuildRequest(
        source=Path(args.source),
        output=Path(args.output) if args.output else None,
        precision=args.precision,
        max_batch=args.max_batch,
        opt_batch=args.opt_batch if args.opt_batch is not None else min(4, max(args.max_batch, 1)),
        builder=args.builder,
        targets=tuple(t.strip() for t in args.target.split(",") if t.strip()),
        custom_ops=not args.no_custom_ops,
        plugins=not args.no_plugins,
        verify=not args.no_verify,
        calib=Path(args.calib) if args.calib else None,
        calib_clips=args.calib_clips,
        input_format=args.input,
    )
    try:
        build_bundle(request)
    except VerificationFailed as err:
        return _error(err, EXIT_VERIFY_FAILED)
    except NoBuilderError as err:
        return _error(err, EXIT_NO_BUILDER)
    except BuildError as err:
        return _error(err, EXIT_BUILD_FAILED)
    except (ValueError, OSError) as err:
        return _error(err, EXIT_BAD_INPUT)
    return 0


def _error(err: Exception, code: int) -> int:
    print(f"error: {err}", file=sys.stderr)
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m export.trt", description="Build a dfer bundle: ONNX + TensorRT engine + manifest.")
    parser.add_argument("source", help="checkpoint (.pth/.ckpt) or an ONNX file written by python -m export.onnx")
    parser.add_argument("-o", "--output", help="bundle directory (default: beside the source, suffix .dfer)")
    parser.add_argument("--precision", help="fp16 (default for checkpoints), fp32, int8, fp8 (int8/fp8 need --calib)")
    parser.add_argument("--calib", help="int8/fp8: folder of videos to calibrate on (a quarter held out for the accuracy cost)")
    parser.add_argument("--calib-clips", type=int, default=DEFAULT_CALIB_CLIPS,
                        help=f"int8/fp8: most clips to calibrate on, and to measure the cost on (default {DEFAULT_CALIB_CLIPS})")
    parser.add_argument("--max-batch", type=int, default=16, help="largest batch the engine accepts (default 16)")
    parser.add_argument("--opt-batch", type=int, help="batch TensorRT tunes for (default min(4, max batch))")
    parser.add_argument("--builder", default="auto", help="tensorrt, tensorrt-rtx or auto (default)")
    parser.add_argument("--target", default="", help="comma-separated GPU targets, e.g. sm_86,sm_89 (TensorRT-RTX)")
    parser.add_argument("--input", choices=INPUT_FORMATS,
                        help="what the graph takes: float (normalised clips; default for checkpoints) or uint8 (decoded frames, normalised in the graph)")
    parser.add_argument("--no-custom-ops", action="store_true", help="export the plain graph, no dfer nodes")
    parser.add_argument("--no-plugins", action="store_true", help="inline the dfer ops even where plugins exist")
    parser.add_argument("--no-verify", action="store_true", help="skip verification (with it, a disagreement beyond the tolerance exits with 4)")
    return parser


if __name__ == "__main__":
    sys.exit(main())
