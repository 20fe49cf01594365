"""The work of ``multipass segment``: masks for one image file, in-process or through a running service.

In-process, the segmentation service's own segmenter runs on models from ``--model-dir`` or
``MULTIPASS_MODEL_DIR``, else on tiny random models built once under ``.multipass/models``. Against a
running service, the image is uploaded to the ``multipass-jobs`` bucket under ``previews/`` and the
masks the service writes are downloaded.
"""

from __future__ import annotations

import argparse
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from PIL import Image

from multipass.config import EnvReader
from multipass.connections import S3Settings
from multipass.grpc.errors import from_rpc_error
from multipass.images import decode_image, sha256_hex
from multipass.names import BUCKET_JOBS
from multipass.store import ObjectStore
from multipass.v1 import segmentation_pb2, segmentation_pb2_grpc
from multipass_dev.tiny_models import segmentation as tiny
from multipass_segmentation.mask_ops import Dilation, box_mask, to_uint8
from multipass_segmentation.models import load_models, resolve_device
from multipass_segmentation.segmenter import Segmenter, TextMaskSpec

DEFAULT_TINY_DIR = Path(".multipass/models")
PREVIEW_PREFIX = "previews/"


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


def _numbered(out: Path, kind: str, index: int) -> Path:
    return out.with_name(f"{out.stem}-{kind}-{index}.png")


def _read_image(path: Path):
    return np.asarray(decode_image(path.read_bytes(), field=str(path)))


def _save(path: Path, mask) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8(mask), "L").save(path)


def _face_mask(shape: tuple[int, int], box):
    return box_mask(shape, box)


# in-process --------------------------------------------------------------------------------------


def _model_dir(args: argparse.Namespace) -> Path:
    if args.model_dir:
        return args.model_dir
    if os.environ.get("MULTIPASS_MODEL_DIR"):
        return Path(os.environ["MULTIPASS_MODEL_DIR"])
    tiny.build(DEFAULT_TINY_DIR)
    return DEFAULT_TINY_DIR


def in_process(args: argparse.Namespace, out: Path) -> Outcome:
    """The masks ``args`` asks for, from models loaded in this process."""
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


async def remote(args: argparse.Namespace, out: Path) -> Outcome:
    """The masks ``args`` asks for, from the segmentation service at ``args.addr``."""
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
