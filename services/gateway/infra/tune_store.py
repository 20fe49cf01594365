"""Tunes (a tenant's LoRAs and checkpoints): records in KV ``multipass-tunes``, files in bucket ``multipass-tunes``.

Record key ``<tenant>.<tune_id>`` (value: the ``Tune`` message); file ``tunes/<tenant>/<tune_id>/<kind>.safetensors``.
Tune ids are digits (the prompt language's ``<lora:ID:W>``) that sort by creation time. Only safetensors
files are accepted: pickled ``.ckpt``/``.pt`` files execute code when loaded.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from google.protobuf.message import DecodeError

from multipass import names
from multipass.bus import KvBucket
from multipass.errors import (
    Internal,
    InvalidInput,
    NotFound,
    Reason,
    ResourceExhausted,
    Violation,
    echo,
)
from multipass.images import decode_image
from multipass.store import ObjectStore
from multipass.v1 import common_pb2, jobs_pb2
from multipass_gateway.domain import request_checks
from multipass_gateway.domain.page_tokens import page_token, parse_page_token
from multipass_gateway.domain.tune_checks import (
    FACEID,
    check_fields,
    check_source,
    check_update,
    update_paths,
)
from multipass_gateway.domain.tune_files import check_safetensors_head
from multipass_gateway.infra.fetch import FetchError, SafeHttp
from multipass_gateway.infra.tune_spool import TuneSpool
from multipass_gateway.infra.upload_limits import UploadSlots, paced
from multipass_gateway.settings import Limits

_TUNE_ID = re.compile(r"^[0-9]{1,24}$")


def valid_tune_id(tune_id: str) -> bool:
    return bool(_TUNE_ID.match(tune_id))


def new_tune_id() -> str:
    """16 digits: milliseconds since the epoch, then 3 random digits (sorts by creation time)."""
    return f"{int(time.time() * 1000):013d}{secrets.randbelow(1000):03d}"


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
        #: Tune files being received now (``limits.max_tune_uploads`` at most).
        self.uploads = UploadSlots(
            limits.max_tune_uploads,
            retry_after_seconds=limits.retry_after_seconds,
            what="tune file uploads",
            scope="tune_uploads",
            setting="MULTIPASS_GATEWAY_MAX_TUNE_UPLOADS",
        )

    async def register(
        self,
        tenant: str,
        metadata: jobs_pb2.TuneMetadata,
        chunks: AsyncIterator[bytes],
        still_allowed: Callable[[], Awaitable[None]] | None = None,
    ) -> jobs_pb2.Tune:
        """Validate, store the file and the record; the file comes from ``chunks`` or ``metadata.url``.

        The metadata is checked before the file is read: bad metadata is refused after at most one more
        message (which tells whether a file follows, so the refusal names every problem at once), and a
        chunk the tune takes none of is refused before the next is read. A file holds one of
        :attr:`uploads` while it is received, checked and stored; streamed files go to a
        :class:`TuneSpool` (the gateway never holds one whole in memory). ``still_allowed`` is awaited
        once everything is received and checked, before anything is stored (it raises when the caller's
        key was revoked meanwhile, or its tenant removed: nothing is left behind for no one).
        """
        allowed = still_allowed or _always_allowed
        problems = check_fields(metadata)
        if problems:
            following = await anext(chunks, None)
            if following is None or following:  # an empty chunk says nothing of what follows
                problems += check_source(metadata, streamed=following is not None)
            raise InvalidInput.of(problems)
        await self.check_room(tenant)
        if metadata.kind == FACEID:
            await _refuse_chunks(metadata, chunks)
            faces = await self._reference_faces(tenant, metadata)
            await allowed()
            tune_id = new_tune_id()
            references = await self._store_references(tenant, tune_id, faces)
            return await self._store_record(tenant, metadata, references, file_ref=None, tune_id=tune_id)
        with self.uploads.hold(tenant):
            # A slot is held only while the file moves: a client that stops sending gives it up.
            chunks = paced(chunks, self._limits.upload_idle_seconds, "MULTIPASS_GATEWAY_UPLOAD_IDLE_SECONDS")
            if metadata.url:
                await _refuse_chunks(metadata, chunks)
                return await self._register_fetched(tenant, metadata, allowed)
            with TuneSpool(self._limits.max_tune_bytes) as spool:
                async for chunk in chunks:
                    await spool.write(chunk)
                problems = check_source(metadata, streamed=spool.size > 0)
                if problems:
                    raise InvalidInput.of(problems)
                return await self._register_spooled(tenant, metadata, spool, allowed)

    async def _register_spooled(
        self,
        tenant: str,
        metadata: jobs_pb2.TuneMetadata,
        spool: TuneSpool,
        allowed: Callable[[], Awaitable[None]],
        field: str = "chunk",
    ) -> jobs_pb2.Tune:
        faces = await self._reference_faces(tenant, metadata)
        _check_sha256(metadata, spool.sha256)
        head = await asyncio.to_thread(spool.head)
        await asyncio.to_thread(check_safetensors_head, head, spool.size, field, metadata.base_family)
        await allowed()
        tune_id = new_tune_id()
        references = await self._store_references(tenant, tune_id, faces)
        file_ref = await self._objects.put_file(
            names.BUCKET_TUNES, _file_key(tenant, tune_id, metadata), spool.reader(), spool.size, spool.sha256
        )
        return await self._store_record(tenant, metadata, references, file_ref=file_ref, tune_id=tune_id)

    async def _register_fetched(
        self, tenant: str, metadata: jobs_pb2.TuneMetadata, allowed: Callable[[], Awaitable[None]]
    ) -> jobs_pb2.Tune:
        """A tune whose file is at ``metadata.url``: fetched into a spool as it is read (never whole in
        memory), then checked and stored like a streamed one."""
        with TuneSpool(self._limits.max_tune_bytes) as spool:
            try:
                await self._http.fetch(
                    metadata.url,
                    max_bytes=self._limits.max_tune_bytes,
                    timeout=max(self._limits.fetch_timeout_seconds, 60.0),
                    max_redirects=self._limits.max_redirects,
                    sink=spool.append,
                )
            except FetchError as error:
                raise InvalidInput.of([Violation("metadata.url", error.reason)]) from error
            return await self._register_spooled(tenant, metadata, spool, allowed, "metadata.url")

    async def _reference_faces(
        self, tenant: str, metadata: jobs_pb2.TuneMetadata
    ) -> list[tuple[bytes, tuple[int, int]]]:
        """Uploaded and fetched faces, read and checked; stored with the tune (deleted with it) only once
        everything else is valid."""
        faces = [
            await self._uploaded_reference(tenant, image_id, f"metadata.reference_image_ids[{index}]")
            for index, image_id in enumerate(metadata.reference_image_ids)
        ]
        faces += [
            await self._fetch_reference(url, f"metadata.reference_image_urls[{index}]")
            for index, url in enumerate(metadata.reference_image_urls)
        ]
        return faces

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

    async def check_room(self, tenant: str) -> None:
        """RESOURCE_EXHAUSTED (QUOTA_EXCEEDED, ``scope=tunes``) when the tenant holds its most tunes
        (``MULTIPASS_GATEWAY_TENANT_MAX_TUNES``): each tune is a stored file and records. Registrations
        running together may pass the check together, so the bound holds to within those."""
        most = self._limits.tenant_max_tunes
        held = len(await self.ids(tenant))
        if held >= most:
            raise ResourceExhausted(
                f"this tenant holds {held} tunes, the most it may ({most}): delete some with DeleteTune",
                retry_after_seconds=60.0,
                reason=Reason.QUOTA_EXCEEDED,
                metadata={"scope": "tunes", "limit": str(most)},
            )

    async def ids(self, tenant: str) -> list[str]:
        """Every tune id of ``tenant``."""
        prefix = f"{tenant}."
        return [key[len(prefix) :] for key in await self._kv.keys(f"{tenant}.*")]

    async def delete(self, tenant: str, tune_id: str) -> int:
        """Delete the tenant's tune and its files; how many files went (NotFound for no such tune)."""
        tune = await self.get(tenant, tune_id)
        await self._kv.delete(names.tune_key(tenant, tune.tune_id))
        return await self._objects.delete_prefix(names.BUCKET_TUNES, names.tune_prefix(tenant, tune.tune_id))


async def _always_allowed() -> None:
    return None


async def _refuse_chunks(metadata: jobs_pb2.TuneMetadata, chunks: AsyncIterator[bytes]) -> None:
    """Read a stream that should end after the metadata; its first non-empty chunk is refused at once."""
    async for chunk in chunks:
        if chunk:
            raise InvalidInput.of(check_source(metadata, streamed=True))


def _check_sha256(metadata: jobs_pb2.TuneMetadata, digest: str) -> None:
    if metadata.sha256 and metadata.sha256.lower() != digest:
        raise InvalidInput.of(
            [Violation("metadata.sha256", f"the file's SHA-256 is {digest}, not {metadata.sha256.lower()}")]
        )


def _file_key(tenant: str, tune_id: str, metadata: jobs_pb2.TuneMetadata) -> str:
    return f"{names.tune_prefix(tenant, tune_id)}{metadata.kind or 'lora'}.safetensors"
