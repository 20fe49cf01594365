"""The diffusion worker in-process against a real nats-server and S3 endpoint, on the tiny SD1.5 model."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import pytest
from diffusion_support import serving, tiny_worker_settings
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_probes import check_streaming_probes
from PIL import Image

from multipass import names
from multipass.images import sha256_hex
from multipass.names import BUCKET_JOBS, BUCKET_TUNES
from multipass.v1 import common_pb2, diffusion_pb2, diffusion_pb2_grpc, events_pb2, prompt_pb2
from multipass_dev.tiny_models.diffusion import SD15_MODEL, TINY_WORKING_SIZE, write_random_lora
from multipass_diffusion.passes.registry import HANDLERS

pytestmark = pytest.mark.timeout(120)


def scene(width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(0)
    array = rng.integers(0, 60, size=(height, width, 3), dtype=np.uint8)
    array[height // 4 : 3 * height // 4, width // 3 : 2 * width // 3] = (220, 200, 40)
    return Image.fromarray(array)


def box_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


@pytest.fixture
async def service(model_root, nats_server, s3_settings, tmp_path):
    settings = tiny_worker_settings(
        model_root,
        nats_server.url,
        s3_settings.endpoint,
        tmp_path / "tunes",
        PROGRESS_INTERVAL_S="0",
        ACK_WAIT_S="10",
    )
    async with serving(settings) as running:
        yield running


class Events:
    """Every PassEvent of one job, as the gateway would see them."""

    def __init__(self):
        self.queue: asyncio.Queue[tuple[str, events_pb2.PassEvent]] = asyncio.Queue()

    async def on_message(self, msg) -> None:
        event = events_pb2.PassEvent()
        event.ParseFromString(msg.data)
        await self.queue.put((msg.subject.rsplit(".", 1)[1], event))

    async def each(
        self, name: str, pass_names: set[str], timeout: float = 30.0
    ) -> dict[str, events_pb2.PassEvent]:
        """The ``name`` event of every pass in ``pass_names``, in whatever order they come."""
        found: dict[str, events_pb2.PassEvent] = {}
        async with asyncio.timeout(timeout):
            while set(found) != pass_names:
                kind, event = await self.queue.get()
                if kind == name and event.pass_name in pass_names:
                    found[event.pass_name] = event
        return found

    async def until(
        self, name: str, pass_name: str, timeout: float = 30.0
    ) -> list[tuple[str, events_pb2.PassEvent]]:
        seen = []
        async with asyncio.timeout(timeout):
            while True:
                kind, event = await self.queue.get()
                seen.append((kind, event))
                if kind == name and event.pass_name == pass_name:
                    return seen


async def settled(bus):
    """The consumer's state once the last decision reached the server (the event precedes the ack)."""
    for _ in range(50):
        state = await bus.consumer_info(names.STREAM_PASSES, names.diffusion_durable(SD15_MODEL))
        if state.num_ack_pending == 0:
            return state
        await asyncio.sleep(0.1)
    return state


async def watch(bus, job_id: str) -> Events:
    events = Events()
    await bus.subscribe_core(f"{names.EVENTS_PREFIX}.{job_id}.>", events.on_message)
    return events


def pass_request(
    job_id: str, pass_name: str, spec: diffusion_pb2.PassSpec, *, attempt: int = 0, tenant: str = "t1"
) -> diffusion_pb2.PassRequest:
    """A request of the tenant's (t1's) image 0, its output at the job's usual key."""
    return diffusion_pb2.PassRequest(
        job_id=job_id,
        tenant=tenant,
        image_index=0,
        pass_name=pass_name,
        attempt=attempt,
        spec=spec,
        output_bucket=BUCKET_JOBS,
        output_key=f"jobs/{tenant}/{job_id}/image-0/{pass_name}.png",
    )


async def submit(
    bus,
    job_id: str,
    pass_name: str,
    spec: diffusion_pb2.PassSpec,
    *,
    model: str = SD15_MODEL,
    tenant: str = "t1",
) -> diffusion_pb2.PassRequest:
    request = pass_request(job_id, pass_name, spec, tenant=tenant)
    await bus.publish(
        names.diffusion_pass_subject(model), request, msg_id=names.pass_msg_id(job_id, 0, pass_name, 0)
    )
    return request


def base_spec(**fields) -> diffusion_pb2.PassSpec:
    values = {
        "kind": "base",
        "model": SD15_MODEL,
        "prompt": "a lighthouse",
        "steps": 4,
        "cfg_scale": 5.0,
        "seed": 3,
        "width": 64,
        "height": 64,
    }
    values.update(fields)
    return diffusion_pb2.PassSpec(**values)


async def test_health_and_info(service):
    async with grpc.aio.insecure_channel(service.grpc_address) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="multipass.v1.Diffusion")
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        info = await diffusion_pb2_grpc.DiffusionStub(channel).Info(diffusion_pb2.InfoRequest())
    assert list(info.models) == [SD15_MODEL]
    assert dict(info.model_families) == {SD15_MODEL: "sd15"}
    # The tiny UNet's sample_size (8) times its VAE's scale factor (8); SD1.5's own files say 64 x 8 = 512.
    assert dict(info.model_native_sizes) == {SD15_MODEL: 64}
    assert (info.model_family, info.device, info.dtype, info.working_size) == (
        "sd15",
        "cpu",
        "float32",
        TINY_WORKING_SIZE,
    )
    assert {
        "controlnet:canny",
        "controlnet:pose",
        "preprocessor:hed",
        f"inpaint_unet:{SD15_MODEL}",
        # The finishing components the tiny models include.
        "upscaler",
        "face_restorer",
        "face_swapper",
        "prompt_expander",
        # IP-Adapter FaceID of the SD1.5 family and the face swapper's embedder.
        "faceid",
        f"faceid:{SD15_MODEL}",
    } <= set(info.capabilities)
    # The features of its model directory, as `multipass models check` reports them.
    features = {f.name: f for f in info.features}
    assert {"base", "inpaint", "controlnet:pose", "upscaler", "face_restorer", "face_swap", "faceid"} <= {
        name for name, f in features.items() if f.available
    }
    assert "sam" not in features  # the segmentation service's
    assert features["upscaler"].path.startswith("diffusion/upscaler/") and features["upscaler"].fix == ""
    kinds = {c.removeprefix("pass:") for c in info.capabilities if c.startswith("pass:")}
    finishing = {"hires", "faces", "face_correct", "face_swap", "upscale", "finish"}
    assert kinds == set(HANDLERS) >= {"base", "person", "composite", *finishing}
    assert info.resident_memory > 0


async def test_health_watch_and_reflection_v1_stream_and_close_cleanly(service, caplog):
    await check_streaming_probes(service.grpc_address, "multipass.v1.Diffusion", caplog)


async def test_passes_complete_with_progress_outputs_and_cache_hits(service, bus, store, model_root):
    events = await watch(bus, "J1")
    source = scene(96, 64)
    image_ref = await store.put_image(BUCKET_JOBS, "jobs/t1/J1/inputs/input.png", source)
    request = await submit(
        bus, "J1", "base", base_spec(image=image_ref, width=0, height=0, denoising_strength=0.75)
    )
    seen = await events.until("completed", "base")
    kinds = [kind for kind, _ in seen]
    assert kinds[0] == "started" and kinds[-1] == "completed"
    assert [e.progress.step for k, e in seen if k == "progress"] == [1, 2, 3]
    # img2img at strength 0.75 runs 4 × 0.75 = 3 steps, and says so from its start.
    assert seen[0][1].started.steps_total == 3
    assert {e.progress.steps_total for k, e in seen if k == "progress"} == {3}
    result = seen[-1][1].completed.result
    assert (result.output.bucket, result.output.key) == (BUCKET_JOBS, request.output_key)
    assert (result.output.width, result.output.height) == (96, 64)
    stored = await store.get_bytes(BUCKET_JOBS, request.output_key)
    assert sha256_hex(stored) == result.output.sha256
    assert not result.cache_hit and result.metadata["task"] == "img2img"

    await submit(
        bus, "J1", "base-again", base_spec(image=image_ref, width=0, height=0, denoising_strength=0.75)
    )
    again = (await events.until("completed", "base-again"))[-1][1].completed.result
    assert again.cache_hit and again.spec_hash == result.spec_hash
    assert await store.get_bytes(BUCKET_JOBS, again.output.key) == stored
    assert await store.exists(BUCKET_JOBS, f"cache/{result.spec_hash}.png")
    # Another tenant's same pass is no hit: the cache is the tenant's own.
    await submit(
        bus,
        "J1",
        "base-other",
        base_spec(image=image_ref, width=0, height=0, denoising_strength=0.75),
        tenant="t2",
    )
    other = (await events.until("completed", "base-other"))[-1][1].completed.result
    assert not other.cache_hit and other.spec_hash != result.spec_hash

    lora = write_random_lora(
        model_root / "diffusion" / SD15_MODEL,
        Path(service.settings.tune_cache_dir).parent / "lora.safetensors",
        seed=9,
    )
    tune_ref = await store.put_bytes(BUCKET_TUNES, "tunes/t1/77/lora.safetensors", lora.read_bytes())
    mask_ref = await store.put_image(
        BUCKET_JOBS, "jobs/t1/J1/image-0/mask-person-0.png", box_mask((96, 64), (20, 10, 60, 60))
    )
    person = base_spec(
        kind="person",
        image=result.output,
        mask=mask_ref,
        width=0,
        height=0,
        loras=[prompt_pb2.LoraRef(tune_id="77", weight=0.8, kind="lora")],
        tune_files={"77": tune_ref},
    )
    await submit(bus, "J1", "person-0", person)
    person_events = await events.until("completed", "person-0")
    done = person_events[-1][1].completed.result
    # A person pass inpaints at strength 0.5 (its default): 4 steps × 0.5 = 2 steps run and reported.
    assert [e.started.steps_total for k, e in person_events if k == "started"] == [2]
    assert [e.progress.step for k, e in person_events if k == "progress"] == [1, 2]
    assert done.metadata["steps_run"] == "2"
    assert done.metadata["adapters"].startswith("t77_") and "crop_box" in done.metadata
    consumer = await settled(bus)
    assert (consumer.num_pending, consumer.num_ack_pending, consumer.num_redelivered) == (0, 0, 0)


async def test_a_second_order_scheduler_reports_the_steps_asked_for(service, bus, store):
    """DPM++ SDE evaluates the UNet twice a step (7 timesteps for 4 steps): events still count 4 steps."""
    events = await watch(bus, "J5")
    await submit(bus, "J5", "base", base_spec(scheduler="dpm++sde", steps=4))
    seen = await events.until("completed", "base")
    assert seen[0][1].started.steps_total == 4
    progress = [(e.progress.step, e.progress.steps_total) for k, e in seen if k == "progress"]
    assert progress == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert seen[-1][1].completed.result.metadata["steps_run"] == "4"


def object_ref(image: common_pb2.ImageRef) -> common_pb2.ObjectRef:
    return common_pb2.ObjectRef(bucket=image.bucket, key=image.key, sha256=image.sha256, size=image.size)


async def test_face_passes_and_faceid_fetch_their_tunes_and_reference_images(service, bus, store, model_root):
    """A face's LoRA (not among spec.loras) and a tune's reference images reach the engine's tune paths."""
    events = await watch(bus, "J4")
    image = await store.put_image(BUCKET_JOBS, "jobs/t1/J4/image-0/person-0.png", scene(96, 64))
    lora = write_random_lora(
        model_root / "diffusion" / SD15_MODEL,
        Path(service.settings.tune_cache_dir).parent / "face-lora.safetensors",
        seed=11,
    )
    tune_ref = await store.put_bytes(BUCKET_TUNES, "tunes/t1/78/lora.safetensors", lora.read_bytes())
    box = common_pb2.Box(x0=30, y0=10, x1=62, y1=42)
    face_lora = prompt_pb2.LoraRef(tune_id="78", weight=0.8, kind="lora")
    faces = base_spec(
        kind="faces",
        image=image,
        width=0,
        height=0,
        faces=[diffusion_pb2.FaceTarget(box=box, prompt="a smiling face", loras=[face_lora])],
        tune_files={"78": tune_ref},
    )
    await submit(bus, "J4", "faces", faces)
    done = (await events.until("completed", "faces"))[-1][1].completed.result
    assert done.metadata["faces"] == "1" and done.metadata["adapters"].startswith("t78_")

    references = {}
    for k in range(2):
        picture = scene(48, 48).rotate(90 * k)
        stored = await store.put_image(BUCKET_JOBS, f"uploads/t1/reference-{k}.png", picture)
        references[f"78/reference-{k}"] = object_ref(stored)
    swap = base_spec(
        kind="face_swap",
        image=done.output,
        width=0,
        height=0,
        faces=[diffusion_pb2.FaceTarget(box=box, loras=[face_lora])],
        tune_files=references,
    )
    await submit(bus, "J4", "face_swap", swap)
    swapped = (await events.until("completed", "face_swap"))[-1][1].completed.result
    assert swapped.metadata["faces_swapped"] == "0:78"
    assert not any("skipped" in w or "unchanged" in w for w in swapped.warnings)

    # <faceid:78:0.7>: the person pass is conditioned on the identity of the same reference images.
    mask = await store.put_image(
        BUCKET_JOBS, "jobs/t1/J4/image-0/mask-person-0.png", box_mask((96, 64), (20, 5, 70, 60))
    )
    faceid_ref = prompt_pb2.LoraRef(tune_id="78", weight=0.7, kind="faceid")
    person = base_spec(kind="person", image=image, mask=mask, width=0, height=0, tune_files=references)
    await submit(bus, "J4", "person-plain", person)
    plain = (await events.until("completed", "person-plain"))[-1][1].completed.result
    person.loras.append(faceid_ref)
    await submit(bus, "J4", "person-faceid", person)
    conditioned = (await events.until("completed", "person-faceid"))[-1][1].completed.result
    assert conditioned.metadata["faceid"] == "78:0.7" and not conditioned.warnings
    assert conditioned.spec_hash != plain.spec_hash
    assert await store.get_bytes(BUCKET_JOBS, conditioned.output.key) != await store.get_bytes(
        BUCKET_JOBS, plain.output.key
    )
    # A faceid tag whose tune has no reference images in the spec is refused naming the tag.
    bare = base_spec(loras=[prompt_pb2.LoraRef(tune_id="79", weight=1.0, kind="faceid")])
    await submit(bus, "J4", "base-faceid-bare", bare)
    refused = (await events.until("failed", "base-faceid-bare"))[-1][1].failed
    assert refused.error.code == common_pb2.ERROR_CODE_INVALID_ARGUMENT and not refused.retriable
    assert [v.field for v in refused.error.field_violations] == ["<faceid:79:1>"]

    # A tune file without its sha256 cannot be cached: refused naming the entry.
    unhashed = diffusion_pb2.PassSpec()
    unhashed.CopyFrom(swap)
    unhashed.tune_files["78/reference-1"].sha256 = ""
    await submit(bus, "J4", "face_swap-unhashed", unhashed)
    failed = (await events.until("failed", "face_swap-unhashed"))[-1][1].failed
    assert failed.error.code == common_pb2.ERROR_CODE_INVALID_ARGUMENT and not failed.retriable
    assert [v.field for v in failed.error.field_violations] == ["spec.tune_files[78/reference-1].sha256"]


async def test_bad_specs_are_terminated_with_a_failed_event(service, bus, store):
    events = await watch(bus, "J2")
    await submit(bus, "J2", "base", base_spec(steps=0, scheduler="ddim"))
    failed = (await events.until("failed", "base"))[-1][1].failed
    assert not failed.retriable
    assert failed.error.code == common_pb2.ERROR_CODE_INVALID_ARGUMENT
    assert failed.error.pass_name == "base"
    assert [v.field for v in failed.error.field_violations] == ["spec.steps"]

    missing = base_spec(image=common_pb2.ImageRef(bucket=BUCKET_JOBS, key="jobs/t1/J2/inputs/none.png"))
    await submit(bus, "J2", "missing-input", missing)
    not_found = (await events.until("failed", "missing-input"))[-1][1].failed
    assert not_found.error.code == common_pb2.ERROR_CODE_NOT_FOUND and "none.png" in not_found.error.message

    await submit(bus, "J2", "wrong-model", base_spec(model="sdxl-tiny"))
    wrong = (await events.until("failed", "wrong-model"))[-1][1].failed
    assert (
        wrong.error.code == common_pb2.ERROR_CODE_INVALID_ARGUMENT
        and "spec.model" in wrong.error.field_violations[0].field
    )

    consumer = await settled(bus)
    assert (consumer.num_pending, consumer.num_ack_pending, consumer.num_redelivered) == (0, 0, 0)
    assert not await store.exists(BUCKET_JOBS, "jobs/t1/J2/image-0/base.png")


async def test_cancel_stops_the_running_pass(service, bus, store):
    events = await watch(bus, "J3")
    await submit(bus, "J3", "base", base_spec(steps=150, width=128, height=128))
    seen = await events.until("progress", "base")
    await bus.publish_core(names.cancel_subject("J3"), b"")
    seen += await events.until("failed", "base")
    failed = seen[-1][1].failed
    assert failed.error.code == common_pb2.ERROR_CODE_CANCELLED and not failed.retriable
    steps = [e.progress.step for k, e in seen if k == "progress"]
    assert max(steps) < 150
    assert not await store.exists(BUCKET_JOBS, "jobs/t1/J3/image-0/base.png")


# -- prefetch: a held pass waits for the device with its inputs fetched ---------------------------------


async def ack_pending_becomes(bus, wanted: int, timeout: float = 5.0) -> int:
    state = None
    async with asyncio.timeout(timeout):
        while True:
            state = await bus.consumer_info(names.STREAM_PASSES, names.diffusion_durable(SD15_MODEL))
            if state.num_ack_pending == wanted:
                return wanted
            await asyncio.sleep(0.05)


async def test_a_held_pass_runs_right_after_the_running_one(service, bus, store):
    from multipass_diffusion import metrics

    assert service.settings.prefetch_depth == 1
    idle_count = metrics.DEVICE_IDLE._sum.get(), sum(b.get() for b in metrics.DEVICE_IDLE._buckets)
    busy = metrics.DEVICE_BUSY._value.get()
    events = await watch(bus, "J5")
    await submit(bus, "J5", "slow", base_spec(steps=60, width=128, height=128))
    await submit(bus, "J5", "next", base_spec(seed=8))
    seen = await events.until("progress", "slow")
    assert await ack_pending_becomes(bus, 2) == 2  # the second pass is held by this worker meanwhile
    seen += await events.until("completed", "next")
    kinds = [(k, e.pass_name) for k, e in seen]
    assert ("started", "next") not in kinds[: kinds.index(("progress", "slow"))]
    last_slow_step = max(i for i, (k, name) in enumerate(kinds) if k == "progress" and name == "slow")
    assert kinds.index(("started", "next")) > last_slow_step  # one pass on the device at a time
    assert await store.exists(BUCKET_JOBS, "jobs/t1/J5/image-0/next.png")
    assert sum(b.get() for b in metrics.DEVICE_IDLE._buckets) > idle_count[1]
    assert metrics.DEVICE_BUSY._value.get() > busy
    gaps = [gap for gap, _ in service.worker.device.history if gap is not None]
    assert gaps and all(gap >= 0 for gap in gaps)


async def test_a_cancelled_held_pass_fails_without_starting(service, bus, store):
    running, held = await watch(bus, "J7"), await watch(bus, "J8")
    await submit(bus, "J7", "slow", base_spec(steps=150, width=128, height=128))
    await submit(bus, "J8", "held", base_spec())
    await running.until("progress", "slow")
    assert await ack_pending_becomes(bus, 2) == 2
    await bus.publish_core(names.cancel_subject("J8"), b"")
    seen = await held.until("failed", "held", timeout=5.0)
    assert seen[-1][1].failed.error.code == common_pb2.ERROR_CODE_CANCELLED
    assert "started" not in [k for k, _ in seen]
    assert not await store.exists(BUCKET_JOBS, "jobs/t1/J8/image-0/held.png")
    await bus.publish_core(names.cancel_subject("J7"), b"")
    await running.until("failed", "slow")
    consumer = await settled(bus)
    assert (consumer.num_pending, consumer.num_ack_pending) == (0, 0)


async def test_stopping_hands_a_held_pass_back_at_once(service, bus, store):
    events = await watch(bus, "J6")
    await submit(bus, "J6", "slow", base_spec(steps=150, width=128, height=128))
    held = await submit(bus, "J6", "held", base_spec())
    await events.until("progress", "slow")
    assert await ack_pending_becomes(bus, 2) == 2
    stopping = asyncio.create_task(service.worker.stop())
    # Another worker gets the held pass while the slow one still runs on this one.
    other = await bus.js.pull_subscribe_bind(
        durable=names.diffusion_durable(SD15_MODEL), stream=names.STREAM_PASSES
    )
    try:
        (msg,) = await other.fetch(1, timeout=5.0)
        taken = diffusion_pb2.PassRequest()
        taken.ParseFromString(msg.data)
        assert taken.pass_name == held.pass_name and msg.metadata.num_delivered == 2
        assert not stopping.done()
        await msg.ack()
    finally:
        await other.unsubscribe()
    await bus.publish_core(names.cancel_subject("J6"), b"")
    seen = await events.until("failed", "slow")
    await stopping
    assert ("started", "held") not in [(k, e.pass_name) for k, e in seen]
    assert (await settled(bus)).num_ack_pending == 0


async def test_a_mask_copy_riding_on_the_request_stands_in_for_the_store_read_only_when_it_is_that_object(
    service, bus, store
):
    from multipass_diffusion import metrics

    def copies_seen(outcome: str) -> float:
        return metrics.INPUT_COPIES.labels(outcome=outcome)._value.get()

    events = await watch(bus, "J9")
    await submit(bus, "J9", "base", base_spec())
    base = (await events.until("completed", "base"))[-1][1].completed.result.output
    mask_key = "jobs/t1/J9/image-0/mask-person-0.png"
    mask_ref = await store.put_image(BUCKET_JOBS, mask_key, box_mask((64, 64), (10, 10, 50, 60)))
    stored = await store.get_bytes(BUCKET_JOBS, mask_key)
    good = common_pb2.ObjectCopy(bucket=BUCKET_JOBS, key=mask_key, sha256=mask_ref.sha256, data=stored)
    damaged = common_pb2.ObjectCopy(
        bucket=BUCKET_JOBS, key=mask_key, sha256=mask_ref.sha256, data=stored[:-1]
    )

    async def person_with(
        pass_name: str, copies: list[common_pb2.ObjectCopy], seed: int
    ) -> diffusion_pb2.PassResult:
        request = diffusion_pb2.PassRequest(
            job_id="J9",
            tenant="t1",
            pass_name=pass_name,
            spec=base_spec(kind="person", image=base, mask=mask_ref, width=0, height=0, seed=seed),
            output_bucket=BUCKET_JOBS,
            output_key=f"jobs/t1/J9/image-0/{pass_name}.png",
            copies=copies,
        )
        await bus.publish(
            names.diffusion_pass_subject(SD15_MODEL), request, msg_id=names.pass_msg_id("J9", 0, pass_name, 0)
        )
        return (await events.until("completed", pass_name))[-1][1].completed.result

    hits, misses = copies_seen("hit"), copies_seen("miss")
    # Each pass its own seed: no pass-cache hit, every pass runs on the mask it read.
    results = [await person_with("person-store", [], 11), await person_with("person-damaged", [damaged], 12)]
    assert (copies_seen("hit"), copies_seen("miss")) == (hits, misses + 1)  # the damaged copy: the store
    await store.delete(BUCKET_JOBS, mask_key)  # only the copy can give the mask now
    results.append(await person_with("person-copy", [good], 13))
    assert copies_seen("hit") == hits + 1
    assert all(not r.cache_hit and r.output.sha256 for r in results)
    consumer = await settled(bus)
    assert (consumer.num_pending, consumer.num_ack_pending) == (0, 0)


async def test_a_small_output_comes_back_as_a_copy_on_completed_only_when_the_request_asks(
    service, bus, store
):
    events = await watch(bus, "J10")
    plain = await submit(bus, "J10", "base", base_spec(seed=21))
    asked = diffusion_pb2.PassRequest()
    asked.CopyFrom(plain)
    asked.pass_name, asked.output_key, asked.copy_output = "base-copied", "jobs/t1/J10/image-0/b2.png", True
    asked.spec.seed = 22
    await bus.publish(
        names.diffusion_pass_subject(SD15_MODEL), asked, msg_id=names.pass_msg_id("J10", 0, "base-copied", 0)
    )
    # The two passes may complete in either order (the second runs while the first is stored).
    completed = await events.each("completed", {"base", "base-copied"})
    without, with_copy = completed["base"].completed, completed["base-copied"].completed
    assert not without.HasField("output_copy")
    copy, output = with_copy.output_copy, with_copy.result.output
    # The copy is the stored object itself (stored before the event went out).
    assert (copy.bucket, copy.key, copy.sha256) == (output.bucket, output.key, output.sha256)
    assert copy.data == await store.get_bytes(output.bucket, output.key)
    assert sha256_hex(copy.data) == output.sha256
