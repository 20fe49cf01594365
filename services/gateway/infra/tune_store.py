"""Tunes (a tenant's LoRAs and checkpoints): records in KV ``multipass-tunes``, files in bucket ``multipass-tunes``.

Record key ``<tenant>.<tune_id>`` (value: the ``Tune`` message); file ``tunes/<tenant>/<tune_id>/<kind>.safetensors``.
Tune ids are digits (the prompt language's ``<lora:ID:W>``) that sort by creation time. Only safetensors
files are accepted: pickled ``.ckpt``/``.pt`` files execute code when loaded.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import secrets
import time
from collections.abc import AsyncIterator

from google.protobuf.message import DecodeError

from multipass import names, tune_formats
from multipass.bus import KvBucket
from multipass.errors import Internal, InvalidInput, NotFound, Reason, Violation, echo
from multipass.images import decode_image
from multipass.safetensors_header import header_problem
from multipass.store import ObjectStore
from multipass.v1 import common_pb2, jobs_pb2
from multipass_gateway.domain import request_checks
from multipass_gateway.domain.page_tokens import page_token, parse_page_token
from multipass_gateway.domain.tune_checks import (
    FACEID,
    check_metadata,
    check_update,
    update_paths,
)
from multipass_gateway.infra.fetch import FetchError, SafeHttp
from multipass_gateway.settings import Limits

_TUNE_ID = re.compile(r"^[0-9]{1,24}$")
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


def valid_tune_id(tune_id: str) -> bool:
    return bool(_TUNE_ID.match(tune_id))


def new_tune_id() -> str:
    """16 digits: milliseconds since the epoch, then 3 random digits (sorts by creation time)."""
    return f"{int(time.time() * 1000):013d}{secrets.randbelow(1000):03d}"


def check_safetensors(data: bytes, field: str, family: str = "") -> None:
    """InvalidInput unless ``data`` is a safetensors file (8-byte header length, then a JSON object)."""
    problem = None
    if len(data) < 10:
        problem = f"is {len(data)} bytes; not a safetensors file"
    else:
        size = int.from_bytes(data[:8], "little")
        if size < 2 or size > min(MAX_SAFETENSORS_HEADER, len(data) - 8):
            problem = "is not a safetensors file (bad header length); pickled checkpoints are not accepted"
        else:
            try:
                header = json.loads(data[8 : 8 + size])
            except (UnicodeDecodeError, ValueError):
                header = None
            if not isinstance(header, dict):
                problem = "is not a safetensors file (header is not a JSON object)"
    if not problem:
        described = header_problem(header, len(data) - 8 - size)
        problem = f"is a damaged safetensors file: {described}" if described else None
    if problem:
        raise InvalidInput.of([Violation(field, problem)])
    check_tune_format(header, field, family)


def check_tune_format(header: dict, field: str, family: str = "") -> None:
    """InvalidInput naming the format of a tune file the worker cannot load (LyCORIS LoHa, LoKr, ...)."""
    shapes = {
        name: entry.get("shape", [])
        for name, entry in header.items()
        if name != "__metadata__" and isinstance(entry, dict)
    }
    found = tune_formats.classify(shapes, shapes)
    if found is not None and not found.supported:
        raise InvalidInput.of([Violation(field, found.unsupported)])
    mismatch = tune_formats.family_mismatch(shapes, family) if family else None
    if mismatch:
        raise InvalidInput.of(
            [Violation("metadata.base_family", f"got {family}; the file is not: {mismatch}")]
        )
    if found is None and not any("lora" in name for name in shapes):
        example = next(iter(shapes), "")
        raise InvalidInput.of(
            [
                Violation(
                    field,
                    f"is in no tune format the workers load (tensors such as {example[:120]!r}): expected a LoRA "
                    "(kohya lora_unet_*/lora_te*_*, diffusers/PEFT *.lora_A/*.lora_B, ComfyUI diffusion_model.*) "
                    "or a checkpoint (model.diffusion_model.* or unet.*)",
                )
            ]
        )


def unknown_upload(field: str, image_id: str) -> NotFound:
    """NOT_FOUND for an image id that names no upload of the tenant, naming the field."""
    return NotFound(
        f"invalid {field}: no uploaded image {echo(image_id)}",
        violations=[Violation(field, f"no uploaded image {echo(image_id)}")],
        reason=Reason.UNKNOWN_IMAGE,
        metadata={"imageId": image_id},
    )


class TuneStore:
    def __init__(self, store: KvBucket, objects: ObjectStore, http: SafeHttp, limits: Limits):
        self._kv = store
        self._objects = objects
        self._http = http
        self._limits = limits

    async def register(
        self, tenant: str, metadata: jobs_pb2.TuneMetadata, chunks: AsyncIterator[bytes]
    ) -> jobs_pb2.Tune:
        """Validate, store the file and the record; the file comes from ``chunks`` or ``metadata.url``."""
        data = bytearray()
        async for chunk in chunks:
            data += chunk
            if len(data) > self._limits.max_tune_bytes:
                raise InvalidInput.of(
                    [Violation("chunk", f"file is larger than {self._limits.max_tune_bytes} bytes")]
                )
        problems = check_metadata(metadata, streamed=bool(data))
        if problems:
            raise InvalidInput.of(problems)
        # Uploaded and fetched faces are read and checked first, and stored with the tune (deleted with it)
        # only once everything else is valid.
        faces = [
            await self._uploaded_reference(tenant, image_id, f"metadata.reference_image_ids[{index}]")
            for index, image_id in enumerate(metadata.reference_image_ids)
        ]
        faces += [
            await self._fetch_reference(url, f"metadata.reference_image_urls[{index}]")
            for index, url in enumerate(metadata.reference_image_urls)
        ]
        tune_id = new_tune_id()
        if metadata.kind == FACEID:
            references = await self._store_references(tenant, tune_id, faces)
            return await self._store_record(tenant, metadata, references, file_ref=None, tune_id=tune_id)
        if metadata.url:
            try:
                fetched = await self._http.fetch(
                    metadata.url,
                    max_bytes=self._limits.max_tune_bytes,
                    timeout=max(self._limits.fetch_timeout_seconds, 60.0),
                    max_redirects=self._limits.max_redirects,
                )
            except FetchError as error:
                raise InvalidInput.of([Violation("metadata.url", error.reason)]) from error
            data = bytearray(fetched.data)
        field = "metadata.url" if metadata.url else "chunk"
        content = bytes(data)
        digest = hashlib.sha256(content).hexdigest()
        if metadata.sha256 and metadata.sha256.lower() != digest:
            raise InvalidInput.of(
                [
                    Violation(
                        "metadata.sha256", f"the file's SHA-256 is {digest}, not {metadata.sha256.lower()}"
                    )
                ]
            )
        check_safetensors(content, field, metadata.base_family)
        kind = metadata.kind or "lora"
        references = await self._store_references(tenant, tune_id, faces)
        file_ref = await self._objects.put_bytes(
            names.BUCKET_TUNES, f"{names.tune_prefix(tenant, tune_id)}{kind}.safetensors", content
        )
        return await self._store_record(tenant, metadata, references, file_ref=file_ref, tune_id=tune_id)

    async def _store_record(
        self,
        tenant: str,
        metadata: jobs_pb2.TuneMetadata,
        references: list[common_pb2.ImageRef],
        *,
        file_ref: common_pb2.ObjectRef | None,
        tune_id: str = "",
    ) -> jobs_pb2.Tune:
        tune_id = tune_id or new_tune_id()
        tune = jobs_pb2.Tune(
            tune_id=tune_id,
            name=metadata.name or f"{metadata.token} {metadata.class_name}",
            token=metadata.token,
            class_name=metadata.class_name,
            base_family=metadata.base_family,
            kind=metadata.kind or "lora",
            reference_images=references,
            characteristics=dict(metadata.characteristics),
        )
        if file_ref is not None:
            tune.file.CopyFrom(file_ref)
        tune.created_at.GetCurrentTime()
        tune.updated_at.CopyFrom(tune.created_at)
        await self._kv.create(names.tune_key(tenant, tune_id), tune.SerializeToString())
        return tune

    async def _fetch_reference(self, url: str, field: str) -> tuple[bytes, tuple[int, int]]:
        """A reference face image from ``url`` (the user's address, fetched safely), checked to decode."""
        try:
            fetched = await self._http.fetch(
                url,
                max_bytes=self._limits.max_image_bytes,
                timeout=self._limits.fetch_timeout_seconds,
                max_redirects=self._limits.max_redirects,
            )
        except FetchError as error:
            raise InvalidInput.of([Violation(field, error.reason)]) from error
        image = await asyncio.to_thread(
            decode_image, fetched.data, field=field, max_pixels=self._limits.max_image_pixels
        )
        return fetched.data, image.size

    async def _store_references(
        self, tenant: str, tune_id: str, images: list[tuple[bytes, tuple[int, int]]]
    ) -> list[common_pb2.ImageRef]:
        """Reference face images stored with the tune (``reference-<k>``, deleted with it)."""
        stored = []
        for number, (data, (width, height)) in enumerate(images):
            ref = await self._objects.put_bytes(
                names.BUCKET_TUNES, f"{names.tune_prefix(tenant, tune_id)}reference-{number}", data
            )
            stored.append(
                common_pb2.ImageRef(
                    bucket=ref.bucket,
                    key=ref.key,
                    sha256=ref.sha256,
                    size=ref.size,
                    width=width,
                    height=height,
                )
            )
        return stored

    async def _uploaded_reference(
        self, tenant: str, image_id: str, field: str
    ) -> tuple[bytes, tuple[int, int]]:
        """An uploaded reference face image (``UploadImage``), checked to decode."""
        try:
            data = await self._objects.get_bytes(
                names.BUCKET_JOBS,
                names.upload_key(tenant, image_id),
                max_bytes=self._limits.max_image_bytes,
                field=field,
            )
        except NotFound as error:
            raise unknown_upload(field, image_id) from error
        image = await asyncio.to_thread(
            decode_image, data, field=field, max_pixels=self._limits.max_image_pixels
        )
        return data, image.size

    async def find(self, tenant: str, tune_id: str) -> jobs_pb2.Tune | None:
        if not valid_tune_id(tune_id):
            return None
        found = await self._kv.get(names.tune_key(tenant, tune_id))
        if found is None:
            return None
        tune = jobs_pb2.Tune()
        try:
            tune.ParseFromString(found.value)
        except DecodeError as error:
            raise Internal(f"tune record {tune_id} is damaged") from error
        return tune

    async def get(self, tenant: str, tune_id: str) -> jobs_pb2.Tune:
        """The tenant's tune; NotFound for a missing tune and for another tenant's tune alike."""
        tune = await self.find(tenant, tune_id)
        if tune is None:
            raise NotFound(
                f"tune {echo(tune_id)} does not exist",
                reason=Reason.UNKNOWN_TUNE,
                metadata={"tuneId": tune_id},
            )
        return tune

    async def list(self, tenant: str, page_size: int, token: str) -> tuple[list[jobs_pb2.Tune], str]:
        problems = request_checks.page_size(page_size)
        if problems:
            raise InvalidInput.of(problems)
        size = page_size or request_checks.DEFAULT_PAGE_SIZE
        after = parse_page_token(token)
        ids = sorted(await self.ids(tenant), key=lambda i: (len(i), i), reverse=True)
        if after:
            ids = [i for i in ids if (len(i), i) < (len(after), after)]
        tunes = []
        for tune_id in ids:
            tune = await self.find(tenant, tune_id)
            if tune is not None:
                tunes.append(tune)
            if len(tunes) == size:
                break
        more = bool(tunes) and tunes[-1].tune_id != ids[-1] if ids else False
        return tunes, page_token(tunes[-1].tune_id) if more else ""

    async def update(self, tenant: str, request: jobs_pb2.UpdateTuneRequest) -> jobs_pb2.Tune:
        """Change the fields ``request.update_mask`` names (or those it sets); NotFound as :meth:`get`."""
        paths = update_paths(request)
        problems = check_update(request, paths)
        if problems:
            raise InvalidInput.of(problems)
        tune = await self.get(tenant, request.tune_id)
        key = names.tune_key(tenant, tune.tune_id)
        changed: dict[str, jobs_pb2.Tune] = {}

        def mutate(current: bytes | None) -> bytes | None:
            if current is None:
                return None  # deleted meanwhile
            record = jobs_pb2.Tune()
            record.ParseFromString(current)
            if "name" in paths:
                record.name = request.name
            if "class_name" in paths:
                record.class_name = request.class_name
            if "characteristics" in paths:
                record.characteristics.clear()
                record.characteristics.update(request.characteristics)
            record.updated_at.GetCurrentTime()
            changed["tune"] = record
            return record.SerializeToString()

        value, _revision = await self._kv.compare_and_set(key, mutate)
        if value is None:
            return await self.get(tenant, request.tune_id)  # NotFound: deleted meanwhile
        return changed["tune"]

    async def ids(self, tenant: str) -> list[str]:
        """Every tune id of ``tenant``."""
        prefix = f"{tenant}."
        return [key[len(prefix) :] for key in await self._kv.keys(f"{tenant}.*")]

    async def delete(self, tenant: str, tune_id: str) -> int:
        """Delete the tenant's tune and its files; how many files went (NotFound for no such tune)."""
        tune = await self.get(tenant, tune_id)
        await self._kv.delete(names.tune_key(tenant, tune.tune_id))
        return await self._objects.delete_prefix(names.BUCKET_TUNES, names.tune_prefix(tenant, tune.tune_id))
