"""``multipass segment``: masks for one image file, in-process or through a running segmentation service.

::

    multipass segment IMAGE (--prompt TEXT [--negative TEXT] [--invert] [--dilate N|N%] | --faces | --slots N)
                      [--out PATH] [--json] [--addr HOST:PORT] [--model-dir DIR]

``--prompt`` writes one mask (``prompt - negative -> dilate/erode -> invert``); ``--slots N`` lays out N
person slots from the persons found in the image and writes one mask per slot; ``--faces`` writes one box
mask per face. Files are ``PATH`` for a prompt mask and ``<PATH stem>-person-<i>.png`` /
``<PATH stem>-face-<i>.png`` otherwise (PATH defaults to ``<IMAGE stem>-mask.png``). ``--json`` prints
boxes, scores and labels.

In-process by default, with models from ``--model-dir`` or ``MULTIPASS_MODEL_DIR``, else tiny random
models built once under ``.multipass/models``. With ``--addr`` the image is uploaded to the
``multipass-jobs`` bucket under ``previews/`` (``MULTIPASS_S3_*`` settings) and the service is called.
The work is in :mod:`multipass_dev.cli.segment_masks`, imported when the command runs (it loads the
segmentation models and torch).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from multipass.errors import MultipassError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="masks for an image: a text prompt, person slots or faces",
        description="Write masks for IMAGE: a text-prompted mask, one mask per person slot, or one box mask per face.",
    )
    parser.add_argument("image", type=Path, help="image file (PNG, JPEG, WebP, ...)")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", help="what to mask, e.g. 'face' or 'red shirt, hat'")
    what.add_argument("--faces", action="store_true", help="one box mask per detected face")
    what.add_argument(
        "--slots", type=int, metavar="N", help="lay out N person slots from the image, one mask each"
    )
    parser.add_argument("--negative", default="", help="what to cut out of the prompt mask")
    parser.add_argument("--invert", action="store_true", help="invert the prompt mask (after dilate/erode)")
    parser.add_argument(
        "--dilate",
        help="grow the prompt mask by pixels (12) or percent of the shorter side (5%%); a minus sign shrinks it "
        "(write --dilate=-5%% for a negative percent)",
    )
    parser.add_argument("--out", type=Path, help="output PNG (default <IMAGE stem>-mask.png)")
    parser.add_argument("--json", action="store_true", help="print boxes, scores and labels as JSON")
    parser.add_argument("--addr", help="HOST:PORT of a running segmentation service (default: in-process)")
    parser.add_argument(
        "--model-dir", type=Path, help="model directory (default MULTIPASS_MODEL_DIR, else tiny models)"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from multipass_dev.cli import segment_masks

    problem = _check_args(args)
    if problem:
        print(f"multipass segment: {problem}", file=sys.stderr)
        return 2
    out = args.out or Path(f"{args.image.stem}-mask.png")
    try:
        if args.addr:
            outcome = asyncio.run(segment_masks.remote(args, out))
        else:
            outcome = segment_masks.in_process(args, out)
    except MultipassError as error:
        print(f"multipass segment: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"multipass segment: {error}", file=sys.stderr)
        return 1
    if args.json:
        report = {
            "image": str(args.image),
            "masks": [w.as_json() for w in outcome.written],
            "warnings": outcome.warnings,
        }
        if args.slots is not None:
            report["slots"] = outcome.slots
            report["source"] = outcome.source
        print(json.dumps(report, indent=2))
    else:
        for item in outcome.written:
            print(item.path)
        for warning in outcome.warnings:
            print(f"warning: {warning}", file=sys.stderr)
    return 0


def _check_args(args: argparse.Namespace) -> str | None:
    if args.prompt is None and (args.negative or args.invert or args.dilate):
        return "--negative, --invert and --dilate apply to --prompt only"
    if args.prompt is not None and not args.prompt.strip():
        return "--prompt is empty"
    if args.slots is not None and not 1 <= args.slots <= 16:
        return f"--slots got {args.slots}; expected 1..16"
    if not args.image.is_file():
        return f"{args.image} is not a file"
    return None
