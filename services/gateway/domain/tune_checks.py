"""What a tune registration or update may say (pure): token, class word, family, kind, sizes, reference
images and characteristics, each refusal naming its field. The store (``infra/tune_store.py``) asks
:func:`check_fields` before it reads a chunk of the file or writes anything, and :func:`check_source` as soon
as the chunks tell (a chunk for a tune that takes none is refused before the next is read).
"""

from __future__ import annotations

import re

from multipass.errors import Violation, echo
from multipass.v1 import jobs_pb2
from multipass_gateway.domain import characteristics

FAMILIES = ("sd15", "sdxl")
KINDS = ("lora", "checkpoint", "faceid")
#: A tune of reference face images only (Astria's ``model_type=faceid``): no file, used as ``<faceid:ID:W>``
#: and by face swap; its family is that of whichever model runs the pass.
FACEID = "faceid"
_TOKEN = re.compile(r"^[a-z0-9]{2,32}$")
_CLASS = re.compile(r"^[a-z][a-z -]{0,31}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_UPLOAD_ID = re.compile(r"^[0-9a-f]{24}$")
MAX_REFERENCE_IMAGES = 10


def _class_word(field: str, value: str) -> list[Violation]:
    if _CLASS.match(value):
        return []
    return [Violation(field, f"got {echo(value)}; expected a lower-case class word, e.g. 'woman'")]


def valid_upload_id(image_id: str) -> bool:
    return bool(_UPLOAD_ID.match(image_id))


def check_metadata(metadata: jobs_pb2.TuneMetadata, *, streamed: bool) -> list[Violation]:
    """Every violation of a registration: :func:`check_fields`, then :func:`check_source`."""
    return check_fields(metadata) + check_source(metadata, streamed=streamed)


def check_fields(metadata: jobs_pb2.TuneMetadata) -> list[Violation]:
    """What the metadata alone says wrong: asked before any chunk of the file is read."""
    problems = []
    if not _TOKEN.match(metadata.token):
        problems.append(
            Violation(
                "metadata.token",
                f"got {echo(metadata.token)}; expected 2..32 lower-case letters or digits, e.g. 'ohwx'",
            )
        )
    problems += _class_word("metadata.class_name", metadata.class_name)
    faceid = metadata.kind == FACEID
    if metadata.base_family not in FAMILIES and not (faceid and not metadata.base_family):
        problems.append(
            Violation(
                "metadata.base_family",
                f"got {echo(metadata.base_family)}; expected one of {', '.join(FAMILIES)}",
            )
        )
    if metadata.kind and metadata.kind not in KINDS:
        problems.append(
            Violation("metadata.kind", f"got {echo(metadata.kind)}; expected one of {', '.join(KINDS)}")
        )
    if len(metadata.name) > 100 or not metadata.name.isprintable():
        problems.append(Violation("metadata.name", "expected at most 100 printable characters"))
    if metadata.sha256 and not _SHA256.match(metadata.sha256.lower()):
        problems.append(Violation("metadata.sha256", f"got {echo(metadata.sha256)}; expected 64 hex digits"))
    if faceid:
        if metadata.url:
            problems.append(_faceid_file("metadata.url"))
        if not metadata.reference_image_ids and not metadata.reference_image_urls:
            problems.append(
                Violation(
                    "metadata.reference_image_ids",
                    "a faceid tune needs at least one reference image (reference_image_ids or _urls)",
                )
            )
    problems += characteristics.check(metadata.characteristics)
    count = len(metadata.reference_image_ids) + len(metadata.reference_image_urls)
    if count > MAX_REFERENCE_IMAGES:
        problems.append(
            Violation(
                "metadata.reference_image_urls"
                if metadata.reference_image_urls
                else "metadata.reference_image_ids",
                f"got {count} images{' (ids and urls together)' if metadata.reference_image_urls else ''}; "
                f"at most {MAX_REFERENCE_IMAGES}",
            )
        )
    else:
        for index, image_id in enumerate(metadata.reference_image_ids):
            if not valid_upload_id(image_id):
                problems.append(
                    Violation(
                        f"metadata.reference_image_ids[{index}]",
                        f"got {echo(image_id)}; expected an image_id returned by UploadImage",
                    )
                )
    return problems


def check_source(metadata: jobs_pb2.TuneMetadata, *, streamed: bool) -> list[Violation]:
    """Where the file comes from, once it is known whether chunks came (``streamed``): a faceid tune has no
    file, any other tune has exactly one of ``metadata.url`` and chunks. The store asks it at the first
    chunk of a tune that takes none (a faceid tune, a tune with a URL), else at the stream's end. A faceid
    tune's URL is :func:`check_fields`' concern."""
    if metadata.kind == FACEID:
        return [_faceid_file("chunk")] if streamed and not metadata.url else []
    if metadata.url and streamed:
        return [Violation("metadata.url", "give either a URL or file chunks, not both")]
    if not metadata.url and not streamed:
        return [
            Violation("chunk", "no file: send the file in chunks after the metadata, or set metadata.url")
        ]
    return []


def _faceid_file(field: str) -> Violation:
    return Violation(
        field,
        "a faceid tune has no file: its reference images (metadata.reference_image_ids) are the "
        "identity; register LoRA weights as kind lora",
    )


UPDATABLE = ("name", "class_name", "characteristics")


def update_paths(request: jobs_pb2.UpdateTuneRequest) -> tuple[str, ...]:
    """The fields an update changes: its mask's paths, or (no mask) the fields it sets."""
    if request.update_mask.paths:
        return tuple(dict.fromkeys(request.update_mask.paths))
    return tuple(name for name in UPDATABLE if getattr(request, name))


def check_update(request: jobs_pb2.UpdateTuneRequest, paths: tuple[str, ...]) -> list[Violation]:
    problems = []
    if not request.tune_id:
        problems.append(Violation("tune_id", "is required"))
    unknown = [path for path in paths if path not in UPDATABLE]
    if unknown:
        problems.append(
            Violation(
                "update_mask",
                f"got {', '.join(echo(p) for p in unknown)}; expected some of {', '.join(UPDATABLE)} "
                "(a tune's file, token and family cannot change: register a new tune)",
            )
        )
    elif not paths:
        problems.append(
            Violation("update_mask", f"nothing to change: set some of {', '.join(UPDATABLE)} or name them")
        )
    if "name" in paths and (not request.name or len(request.name) > 100 or not request.name.isprintable()):
        problems.append(Violation("name", "expected 1..100 printable characters"))
    if "class_name" in paths:
        problems += _class_word("class_name", request.class_name)
    if "characteristics" in paths:
        problems += characteristics.check(request.characteristics, "characteristics")
    return problems
