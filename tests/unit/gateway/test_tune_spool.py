"""RegisterTune's file never sits whole in the gateway's memory: chunks are spooled (to disk past a small
threshold) with their SHA-256 counted as they come, the file is checked from its head and uploaded from the
spool, the URL path keeps its fetched bytes once, and every spool is closed however the call ends."""

from __future__ import annotations

import asyncio
import hashlib
import tracemalloc

import pytest

from multipass.errors import InvalidInput, ResourceExhausted
from multipass.v1 import common_pb2, jobs_pb2
from multipass_dev.sample_files import lora_safetensors
from multipass_gateway.infra import tune_store as tune_store_module
from multipass_gateway.infra.fetch import Fetched
from multipass_gateway.infra.tune_spool import SPOOL_MEMORY_BYTES, TuneSpool
from multipass_gateway.infra.tune_store import TuneStore
from multipass_gateway.settings import Limits

MiB = 1024 * 1024


lora_file = lora_safetensors


class FakeKv:
    def __init__(self):
        self.values: dict[str, bytes] = {}

    async def create(self, key: str, value: bytes) -> int:
        self.values[key] = value
        return 1

    async def keys(self, pattern: str) -> list[str]:
        prefix = pattern.removesuffix("*")
        return [key for key in self.values if key.startswith(prefix)]


class FakeObjects:
    """put_file reads its stream in parts, as the minio client does; it never takes a bytes object."""

    def __init__(self):
        self.stored: dict[str, tuple[str, int]] = {}
        self.spools_on_disk: list[bool] = []
        self.gate: asyncio.Event | None = None

    async def put_file(self, bucket, key, fileobj, size, sha256):
        if self.gate is not None:
            await self.gate.wait()
        digest, read = hashlib.sha256(), 0
        while part := fileobj.read(MiB):
            digest.update(part)
            read += len(part)
        assert read == size
        self.stored[key] = (digest.hexdigest(), size)
        return common_pb2.ObjectRef(bucket=bucket, key=key, sha256=sha256, size=size)


class FakeHttp:
    def __init__(self, data: bytes):
        self.data = data

    async def fetch(self, url, sink=None, **_limits) -> Fetched:
        if sink is None:
            return Fetched(self.data, url, "application/octet-stream")

        def read_into_sink() -> None:  # as the real fetch does: chunk by chunk, on a worker thread
            view = memoryview(self.data)
            for start in range(0, len(view), MiB):
                sink(bytes(view[start : start + MiB]))

        await asyncio.to_thread(read_into_sink)
        return Fetched(b"", url, "application/octet-stream")


class RecordingSpool(TuneSpool):
    """A spool that remembers itself and the most it ever held in memory."""

    made: list[RecordingSpool] = []
    memory_bytes_for_tests = SPOOL_MEMORY_BYTES

    def __init__(self, max_bytes: int):
        super().__init__(max_bytes, memory_bytes=self.memory_bytes_for_tests)
        self.most_in_memory = 0
        RecordingSpool.made.append(self)

    def _append(self, chunk: bytes) -> None:
        super()._append(chunk)
        self.most_in_memory = max(self.most_in_memory, self.bytes_in_memory)


@pytest.fixture(name="spools")
def spools_fixture(monkeypatch) -> list[RecordingSpool]:
    RecordingSpool.made = []
    monkeypatch.setattr(tune_store_module, "TuneSpool", RecordingSpool)
    return RecordingSpool.made


def store(limits: Limits | None = None, http: FakeHttp | None = None) -> tuple[TuneStore, FakeObjects]:
    objects = FakeObjects()
    return TuneStore(FakeKv(), objects, http, limits or Limits()), objects  # type: ignore[arg-type]


def lora_metadata(**fields) -> jobs_pb2.TuneMetadata:
    return jobs_pb2.TuneMetadata(**{"token": "ohwx", "class_name": "woman", "base_family": "sd15", **fields})


async def chunks_of(data: bytes, size: int, pulled: list[int] | None = None):
    for start in range(0, len(data), size):
        if pulled is not None:
            pulled.append(start)
        yield data[start : start + size]


# the spool -------------------------------------------------------------------------------------------------


async def test_the_spool_moves_to_disk_past_its_threshold_and_keeps_the_bytes():
    data = lora_file(10_000)
    with TuneSpool(len(data), memory_bytes=4096) as spool:
        for start in range(0, len(data), 1000):
            await spool.write(data[start : start + 1000])
            assert spool.bytes_in_memory <= 4096
        assert spool.on_disk and spool.bytes_in_memory == 0
        assert (spool.size, spool.sha256) == (len(data), hashlib.sha256(data).hexdigest())
        assert await asyncio.to_thread(spool.head) == data[: len(data) - 10_000]
        assert spool.reader().read() == data
    assert spool.closed


async def test_a_small_file_stays_in_memory():
    with TuneSpool(1000, memory_bytes=4096) as spool:
        await spool.write(b"x" * 1000)
        assert not spool.on_disk and spool.bytes_in_memory == 1000


async def test_the_spool_refuses_the_chunk_that_passes_the_bound_before_writing_it():
    with TuneSpool(2500, memory_bytes=1024) as spool:
        await spool.write(b"x" * 2000)
        with pytest.raises(InvalidInput) as caught:
            await spool.write(b"x" * 501)
        assert [(v.field, v.description) for v in caught.value.violations] == [
            ("chunk", "file is larger than 2500 bytes")
        ]
        assert spool.size == 2000 and len(spool.reader().read()) == 2000


# the register path -----------------------------------------------------------------------------------------


async def test_bad_metadata_is_refused_without_reading_the_file(spools):
    tunes, objects = store()
    pulled: list[int] = []
    bad = lora_metadata(token="O H")
    with pytest.raises(InvalidInput) as caught:
        await tunes.register("acme", bad, chunks_of(b"\0" * (64 * 1024), 1024, pulled))
    assert {v.field for v in caught.value.violations} == {"metadata.token"}
    # At most the chunk that tells whether a file follows; no spool, nothing stored.
    assert len(pulled) <= 1 and not spools and not objects.stored


async def test_a_chunk_for_a_tune_that_takes_none_is_refused_at_once(spools):
    tunes, _objects = store(http=FakeHttp(lora_file(100)))
    pulled: list[int] = []
    with pytest.raises(InvalidInput) as caught:
        await tunes.register(
            "acme", lora_metadata(url="https://x/y"), chunks_of(b"\0" * 64 * 1024, 1024, pulled)
        )
    assert [v.field for v in caught.value.violations] == ["metadata.url"]
    assert len(pulled) == 1 and not spools


async def test_a_streamed_file_is_spooled_to_disk_and_uploaded_from_there(spools, monkeypatch):
    monkeypatch.setattr(RecordingSpool, "memory_bytes_for_tests", 64 * 1024)
    data = lora_file(1 * MiB)
    tunes, objects = store()
    digest = hashlib.sha256(data).hexdigest()
    tune = await tunes.register("acme", lora_metadata(sha256=digest), chunks_of(data, 16 * 1024))
    (spool,) = spools
    assert spool.on_disk and spool.most_in_memory <= 64 * 1024 and spool.closed
    assert (tune.file.sha256, tune.file.size) == (digest, len(data))
    assert objects.stored[tune.file.key] == (digest, len(data))
    assert tunes.uploads.running == 0


async def test_the_register_path_holds_no_more_than_the_spool_threshold():
    # Python's own allocations while 48 MiB stream through (each chunk is the same bytes object): the spool's
    # threshold and a chunk or two, not the file (the old path held it twice over).
    data = lora_file(48 * MiB)
    chunk_size = 1 * MiB
    chunks = [data[start : start + chunk_size] for start in range(0, len(data), chunk_size)]

    async def stream():
        for chunk in chunks:
            yield chunk

    tunes, objects = store()
    tracemalloc.start()
    try:
        tune = await tunes.register("acme", lora_metadata(), stream())
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert objects.stored[tune.file.key] == (hashlib.sha256(data).hexdigest(), len(data))
    assert peak < SPOOL_MEMORY_BYTES + 4 * chunk_size, f"peaked at {peak / MiB:.1f} MiB"


async def test_a_fetched_file_goes_to_a_spool_as_it_is_read():
    data = lora_file(48 * MiB)
    tunes, objects = store(http=FakeHttp(data))

    async def no_chunks():
        return
        yield

    tracemalloc.start()
    try:
        tune = await tunes.register("acme", lora_metadata(url="https://x/y"), no_chunks())
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert objects.stored[tune.file.key] == (hashlib.sha256(data).hexdigest(), len(data))
    # The spool's memory part (8 MiB) and a chunk or two: never the 48 MiB file.
    assert peak < 12 * MiB, f"peaked at {peak / MiB:.1f} MiB beyond the fetched bytes"


async def test_a_refused_file_closes_its_spool_and_frees_its_slot(spools, monkeypatch):
    monkeypatch.setattr(RecordingSpool, "memory_bytes_for_tests", 1024)
    tunes, objects = store(Limits(max_tune_bytes=4096))
    pickled = b"\x80\x02}q\x00" + b"\0" * 3000
    with pytest.raises(InvalidInput) as not_safetensors:
        await tunes.register("acme", lora_metadata(), chunks_of(pickled, 1024))
    assert (
        "bad header length"
        in dict((v.field, v.description) for v in not_safetensors.value.violations)["chunk"]
    )
    with pytest.raises(InvalidInput) as too_large:
        await tunes.register("acme", lora_metadata(), chunks_of(b"\0" * 8192, 1024))
    assert [(v.field, v.description) for v in too_large.value.violations] == [
        ("chunk", "file is larger than 4096 bytes")
    ]
    assert len(spools) == 2 and all(spool.closed for spool in spools) and spools[0].on_disk
    assert tunes.uploads.running == 0 and not objects.stored


async def test_a_cancelled_upload_closes_its_spool_and_frees_its_slot(spools, monkeypatch):
    monkeypatch.setattr(RecordingSpool, "memory_bytes_for_tests", 1024)
    tunes, _objects = store(Limits(max_tune_uploads=1))
    never = asyncio.Event()

    async def stalled():
        for _ in range(8):
            yield b"\0" * 1024
        await never.wait()
        yield b""

    task = asyncio.create_task(tunes.register("acme", lora_metadata(), stalled()))
    while not spools or spools[0].size < 8 * 1024:
        await asyncio.sleep(0.01)
    assert spools[0].on_disk and tunes.uploads.running == 1
    with pytest.raises(ResourceExhausted):
        await tunes.register("acme", lora_metadata(), chunks_of(lora_file(10), 1024))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert spools[0].closed and tunes.uploads.running == 0


async def test_a_faceid_tune_takes_no_upload_slot():
    tunes, _objects = store(Limits(max_tune_uploads=1))
    faceid = jobs_pb2.TuneMetadata(
        token="ohwx", class_name="woman", kind="faceid", reference_image_ids=["0123456789abcdef01234567"]
    )
    with tunes.uploads.hold(), pytest.raises(InvalidInput) as caught:
        await tunes.register("acme", faceid, chunks_of(b"\0" * 4096, 1024))
    # Refused for its chunk (a faceid tune has no file), not for the busy slot.
    assert [v.field for v in caught.value.violations] == ["chunk"]


async def test_a_tenant_holds_at_most_its_quota_of_tunes_and_is_told_before_sending_a_file():
    from multipass.errors import ResourceExhausted

    tunes, objects = store(Limits(tenant_max_tunes=2))
    for _ in range(2):
        await tunes.register("acme", lora_metadata(), chunks_of(lora_file(4096), 1024))
    pulled: list[int] = []
    with pytest.raises(ResourceExhausted) as full:
        await tunes.register("acme", lora_metadata(), chunks_of(lora_file(4096), 1024, pulled))
    assert "holds 2 tunes, the most it may (2)" in str(full.value) and full.value.metadata["scope"] == "tunes"
    assert pulled == [] and len(objects.stored) == 2  # nothing read, nothing stored
    await tunes.register("other", lora_metadata(), chunks_of(lora_file(4096), 1024))  # its own quota


async def test_an_upload_that_stops_sending_gives_up_its_slot():
    from multipass.errors import DeadlineExceeded

    tunes, objects = store(Limits(max_tune_uploads=1, upload_idle_seconds=1.0))
    stalled = asyncio.Event()

    async def first_chunk_then_nothing():
        yield lora_file(4096)[:1024]
        await stalled.wait()

    with pytest.raises(DeadlineExceeded, match="nothing received for 1 s"):
        await tunes.register("acme", lora_metadata(), first_chunk_then_nothing())
    assert tunes.uploads.running == 0 and not objects.stored
    await tunes.register("acme", lora_metadata(), chunks_of(lora_file(4096), 1024))  # the slot is free
