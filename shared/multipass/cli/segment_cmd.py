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
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_TINY_DIR = Path(".multipass/models")
PREVIEW_PREFIX = "previews/"


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


@dataclass
class Written:
    path: Path
    label: str
    box: tuple[float, float, float, float] | None
    score: float
    fallback: bool = False
    area_fraction: float = 0.0
    slot_index: int | None = None

    def as_json(self) -> dict:
        entry = {
            "path": str(self.path),
            "label": self.label,
            "box": list(self.box) if self.box else None,
            "score": round(self.score, 4),
            "fallback": self.fallback,
            "area_fraction": round(self.area_fraction, 6),
        }
        if self.slot_index is not None:
            entry["slot_index"] = self.slot_index
        return entry


@dataclass
class Outcome:
    written: list[Written] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    slots: list[dict] = field(default_factory=list)
    source: str = ""


def run(args: argparse.Namespace) -> int:
    from multipass.errors import MultipassError

    problem = _check_args(args)
    if problem:
        print(f"multipass segment: {problem}", file=sys.stderr)
        return 2
    out = args.out or Path(f"{args.image.stem}-mask.png")
    try:
        if args.addr:
            import asyncio

            outcome = asyncio.run(_remote(args, out))
        else:
            outcome = _in_process(args, out)
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


def _numbered(out: Path, kind: str, index: int) -> Path:
    return out.with_name(f"{out.stem}-{kind}-{index}.png")


def _read_image(path: Path):
    import numpy as np

    from multipass.images import decode_image

    return np.asarray(decode_image(path.read_bytes(), field=str(path)))


def _save(path: Path, mask) -> None:
    from PIL import Image

    from multipass_segmentation.mask_ops import to_uint8

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8(mask), "L").save(path)


def _face_mask(shape: tuple[int, int], box):
    from multipass_segmentation.mask_ops import box_mask

    return box_mask(shape, box)


# in-process --------------------------------------------------------------------------------------


def _model_dir(args: argparse.Namespace) -> Path:
    if args.model_dir:
        return args.model_dir
    if os.environ.get("MULTIPASS_MODEL_DIR"):
        return Path(os.environ["MULTIPASS_MODEL_DIR"])
    from multipass.tiny_models import segmentation as tiny

    tiny.build(DEFAULT_TINY_DIR)
    return DEFAULT_TINY_DIR


def _in_process(args: argparse.Namespace, out: Path) -> Outcome:

    from multipass_segmentation.mask_ops import Dilation
    from multipass_segmentation.models import load_models, resolve_device
    from multipass_segmentation.segmenter import Segmenter, TextMaskSpec

    image = _read_image(args.image)
    dilation = Dilation.parse(args.dilate, field="--dilate") if args.dilate else None
    device = resolve_device(os.environ.get("MULTIPASS_SEGMENTATION_DEVICE", "auto"))
    segmenter = Segmenter(load_models(_model_dir(args), device))
    outcome = Outcome()
    if args.prompt is not None:
        spec = TextMaskSpec(args.prompt, negative=args.negative, invert=args.invert, dilation=dilation)
        result = segmenter.text_mask(image, spec, field="--prompt")
        mask = result.masks[0]
        _save(out, mask.mask)
        outcome.written.append(
            Written(out, mask.label, mask.box, mask.score, area_fraction=mask.area_fraction)
        )
        outcome.warnings += result.warnings
    elif args.slots is not None:
        height, width = image.shape[:2]
        layout = segmenter.layout(width, height, args.slots, image)
        outcome.warnings += layout.warnings
        outcome.source = layout.source
        outcome.slots = [{"index": s.index, "box": list(s.box.as_tuple())} for s in layout.slots]
        if layout.slots:
            result = segmenter.person_masks(image, layout.slots, field="slots")
            outcome.warnings += result.warnings
            for mask in result.masks:
                path = _numbered(out, "person", mask.index)
                _save(path, mask.mask)
                outcome.written.append(
                    Written(path, mask.label, mask.box, mask.score, mask.fallback, mask.area_fraction)
                )
    else:
        for i, face in enumerate(segmenter.detect_faces(image)):
            path = _numbered(out, "face", i)
            mask = _face_mask(image.shape[:2], face.box.as_tuple())
            _save(path, mask)
            outcome.written.append(
                Written(
                    path,
                    f"face-{i}",
                    face.box.as_tuple(),
                    face.score,
                    area_fraction=float(mask.mean()),
                    slot_index=face.slot_index,
                )
            )
    return outcome


# against a running service -----------------------------------------------------------------------


async def _remote(args: argparse.Namespace, out: Path) -> Outcome:
    import io

    import grpc
    import numpy as np
    from PIL import Image

    from multipass.config import EnvReader
    from multipass.connections import S3Settings
    from multipass.grpc_errors import from_rpc_error
    from multipass.images import decode_image, sha256_hex
    from multipass.store import BUCKET_JOBS, ObjectStore
    from multipass.v1 import segmentation_pb2, segmentation_pb2_grpc
    from multipass_segmentation.mask_ops import Dilation

    env = EnvReader()
    s3 = S3Settings.from_env(env)
    token = env.str("INTERNAL_TOKEN", "")
    env.check()
    store = ObjectStore.from_settings(s3)
    data = args.image.read_bytes()
    picture = decode_image(data, field=str(args.image))
    digest = sha256_hex(data)
    ref = await store.put_image(BUCKET_JOBS, f"{PREVIEW_PREFIX}{digest}.png", picture)
    prefix = f"{PREVIEW_PREFIX}{digest}/"
    metadata = (("x-multipass-internal", token),) if token else ()
    outcome = Outcome()

    async def fetch_to(path: Path, mask_ref) -> None:
        png = await store.get_bytes(mask_ref.bucket, mask_ref.key)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.open(io.BytesIO(png)).save(path)

    async with grpc.aio.insecure_channel(args.addr) as channel:
        stub = segmentation_pb2_grpc.SegmentationStub(channel)
        try:
            if args.prompt is not None:
                text = segmentation_pb2.TextMaskRequest(
                    prompt=args.prompt, negative=args.negative, invert=args.invert
                )
                if args.dilate:
                    dilation = Dilation.parse(args.dilate, field="--dilate")
                    if dilation.percent:
                        text.dilate_percent = dilation.amount
                    else:
                        text.dilate_pixels = int(dilation.amount)
                response = await stub.Segment(
                    segmentation_pb2.SegmentRequest(image=ref, text=text, output_prefix=prefix),
                    metadata=metadata,
                )
                mask = response.masks[0]
                await fetch_to(out, mask.mask)
                outcome.written.append(
                    Written(out, mask.label, _box(mask.box), mask.score, area_fraction=mask.area_fraction)
                )
                outcome.warnings += list(response.warnings)
            elif args.slots is not None:
                layout = await stub.Layout(
                    segmentation_pb2.LayoutRequest(count=args.slots, image=ref), metadata=metadata
                )
                outcome.warnings += list(layout.warnings)
                outcome.source = layout.source
                outcome.slots = [{"index": s.index, "box": list(_box(s.box))} for s in layout.slots]
                if layout.slots:
                    response = await stub.Segment(
                        segmentation_pb2.SegmentRequest(
                            image=ref,
                            persons=segmentation_pb2.PersonMasksRequest(slots=layout.slots),
                            output_prefix=prefix,
                        ),
                        metadata=metadata,
                    )
                    outcome.warnings += list(response.warnings)
                    for mask in response.masks:
                        path = _numbered(out, "person", mask.index)
                        await fetch_to(path, mask.mask)
                        outcome.written.append(
                            Written(
                                path,
                                mask.label,
                                _box(mask.box),
                                mask.score,
                                mask.fallback,
                                mask.area_fraction,
                            )
                        )
            else:
                response = await stub.DetectFaces(
                    segmentation_pb2.DetectFacesRequest(image=ref), metadata=metadata
                )
                shape = (picture.height, picture.width)
                for i, face in enumerate(response.faces):
                    path = _numbered(out, "face", i)
                    mask = _face_mask(shape, _box(face.box))
                    _save(path, mask)
                    outcome.written.append(
                        Written(
                            path,
                            f"face-{i}",
                            _box(face.box),
                            face.score,
                            area_fraction=float(np.mean(mask)),
                            slot_index=face.slot_index,
                        )
                    )
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from error
    return outcome


def _box(box) -> tuple[float, float, float, float]:
    return (box.x0, box.y0, box.x1, box.y1)
