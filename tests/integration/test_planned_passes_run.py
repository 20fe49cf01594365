"""The gateway's PassSpecs and the diffusion worker agree: a job with every option on, planned by the real
planner, runs pass after pass on the real worker (JetStream, S3, the tiny models of every component).

The gateway's side is driven as the orchestrator drives it: the job state machine queues each pass,
``job_state.build_request`` fills in the chain's images, face passes get their faces through
``face_targets.faces_request``, and each worker event is applied to the record. Only the segmentation
service is replaced: person masks are the slots' boxes and faces are boxes around the slots' heads (the
tiny segmentation models have random weights, so what they find is arbitrary).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from diffusion_support import serving, tiny_worker_settings
from PIL import Image

from multipass import names
from multipass.names import BUCKET_JOBS, BUCKET_TUNES
from multipass.v1 import (
    common_pb2,
    diffusion_pb2,
    diffusion_pb2_grpc,
    events_pb2,
    jobs_pb2,
    segmentation_pb2,
)
from multipass_dev.tiny_models.diffusion import SD15_MODEL, write_random_lora
from multipass_gateway.domain import job_state, planner, requirements
from multipass_gateway.domain.face_targets import faces_request
from multipass_gateway.settings import GatewaySettings
from multipass_prompt_parser.convert import to_proto
from multipass_prompt_parser.parser import parse_prompt
from multipass_segmentation.pose_render import render_pose
from multipass_segmentation.slots import default_layout

pytestmark = pytest.mark.timeout(300)
JOB_ID = "0123456789abcdef01234567"
TENANT = "t0123456789abcdef"
BASE_TUNE, PERSON_TUNE = "101", "102"
PROMPT = (
    f"a garden party at dusk <lora:{BASE_TUNE}:0.6>\n"
    "BREAK warm evening light\n"
    f"BREAK ohwx woman in a red dress <lora:{PERSON_TUNE}:0.8> <faceid:{PERSON_TUNE}:0.7>\n"
    "BREAK a man in a blue suit"
)
#: Every option the planner turns into a pass or a pass option.
PARAMS = {
    "seed": "11",
    "steps": "3",
    "w": "256",
    "h": "256",
    "hires_fix": "true",
    "inpaint_faces": "true",
    "face_correct": "true",
    "face_swap": "true",
    "super_resolution": "true",
    "film_grain": "true",
    "color_grading": "Film Portra",
    "prompt_expansion": "true",
}


@pytest.fixture
async def worker(model_root, nats_server, s3_settings, tmp_path):
    settings = tiny_worker_settings(
        model_root,
        nats_server.url,
        s3_settings.endpoint,
        tmp_path / "tunes",
        PASS_CACHE="off",
        ACK_WAIT_S="60",
    )
    async with serving(settings) as running:
        yield running


class Outcomes:
    """The ``completed`` or ``failed`` event of each pass of the job, as the gateway receives them."""

    def __init__(self):
        self.queue: asyncio.Queue[events_pb2.PassEvent] = asyncio.Queue()

    async def on_message(self, msg) -> None:
        event = events_pb2.PassEvent()
        event.ParseFromString(msg.data)
        if event.WhichOneof("event") in ("completed", "failed"):
            await self.queue.put(event)

    async def of(self, pass_name: str) -> events_pb2.PassEvent:
        async with asyncio.timeout(180):
            while True:
                event = await self.queue.get()
                if event.pass_name == pass_name:
                    return event


def slot_protos(width: int, height: int, count: int):
    """The default layout as the segmentation service's Layout rpc answers it, and its pose drawing."""
    layout = default_layout(width, height, count)
    slots = [
        segmentation_pb2.Slot(
            index=slot.index,
            box=common_pb2.Box(x0=slot.box.x0, y0=slot.box.y0, x1=slot.box.x1, y1=slot.box.y1),
            keypoints=[
                common_pb2.Keypoint(index=k.index, x=k.x, y=k.y, confidence=k.confidence)
                for k in slot.keypoints
            ],
        )
        for slot in layout
    ]
    return slots, Image.fromarray(render_pose(width, height, layout), "RGB")


def picture(seed: int, size: int = 96) -> Image.Image:
    """A face-sized picture with structure (reference images of the person tune)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    array = rng.integers(40, 200, size=(size, size, 3), dtype=np.uint8)
    array[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = (210, 170, 140)
    return Image.fromarray(array)


def job_record(parsed, plans, slots) -> events_pb2.JobRecord:
    """The record SubmitJob writes (``planner.job_record``, without the submit-time details): one pass state per planned pass."""
    job = jobs_pb2.Job(job_id=JOB_ID, state=jobs_pb2.JOB_STATE_QUEUED, prompt=PROMPT, parsed=parsed)
    for plan in plans:
        image = job.images.add(index=plan.index, seed=planner.image_seed(parsed.params.seed, plan.index))
        for planned in plan.passes:
            state = image.passes.add(
                name=planned.name, kind=planned.kind, status=jobs_pb2.PASS_STATUS_PENDING
            )
            if planned.kind in planner.STEP_KINDS:
                state.steps_total = planned.weight
    for person in parsed.persons:
        job.persons.add(index=person.index, prompt=person.effective_prompt, loras=list(person.loras))
    return events_pb2.JobRecord(job=job, tenant=TENANT, plans=plans, slots=slots)


def head_box(slot: segmentation_pb2.Slot, scale: float) -> common_pb2.Box:
    """A face box around the slot's nose keypoint, in an image ``scale`` times the layout's size."""
    nose = next(k for k in slot.keypoints if k.index == 0)
    half = 0.07 * (slot.box.y1 - slot.box.y0)
    return common_pb2.Box(
        x0=(nose.x - half) * scale,
        y0=(nose.y - half) * scale,
        x1=(nose.x + half) * scale,
        y1=(nose.y + half) * scale,
    )


async def test_every_planned_pass_runs_on_the_worker_in_chain_order(worker, bus, store, model_root):
    now = datetime.now(UTC)
    async with grpc.aio.insecure_channel(worker.grpc_address) as channel:
        info = await diffusion_pb2_grpc.DiffusionStub(channel).Info(diffusion_pb2.InfoRequest())
    capabilities = frozenset(info.capabilities)
    parsed = to_proto(parse_prompt(PROMPT, PARAMS))
    assert len(parsed.persons) == 2

    # The checks SubmitJob makes against Diffusion.Info pass on this worker.
    needed = requirements.required_capabilities(
        parsed, has_input_image=False, complete=requirements.is_capability_complete(capabilities)
    )
    assert {"pass:hires", "pass:faces", "pass:face_correct", "pass:face_swap", "pass:upscale"} <= {
        c for c, _ in needed
    }
    assert [c for c, _ in needed if c not in capabilities] == []
    assert f"faceid:{SD15_MODEL}" in capabilities  # what SubmitJob asks for a <faceid:...> tag
    for model in requirements.tune_models(parsed, SD15_MODEL, SD15_MODEL).values():
        assert [requirements.model_family(info, m) for m in model] == ["sd15"]

    # Tunes as the Tunes API stores them: files with their sha256, reference images of the person tune.
    model_dir = model_root / "diffusion" / SD15_MODEL
    tune_files = {}
    for seed, tune_id in enumerate((BASE_TUNE, PERSON_TUNE), start=21):
        lora = write_random_lora(
            model_dir, Path(worker.settings.tune_cache_dir).parent / f"{tune_id}.safetensors", seed=seed
        )
        tune_files[tune_id] = await store.put_bytes(
            BUCKET_TUNES, f"tunes/{TENANT}/{tune_id}/lora.safetensors", lora.read_bytes()
        )
    references = [
        await store.put_image(BUCKET_JOBS, names.upload_key(TENANT, f"{'ab' * 11}{k:02d}"), picture(k))
        for k in range(2)
    ]

    width, height = parsed.params.w, parsed.params.h
    slots, pose = slot_protos(width, height, len(parsed.persons))
    pose_ref = await store.put_image(BUCKET_JOBS, names.input_key(TENANT, JOB_ID, "pose"), pose)
    settings = GatewaySettings()
    config = planner.PlannerConfig(
        base_model=SD15_MODEL,
        person_model=SD15_MODEL,
        capabilities=capabilities,
        hires_scale=settings.hires_scale,
        upscale_factor=settings.upscale_factor,
    )
    inputs = planner.JobInputs(
        seed=parsed.params.seed,
        width=width,
        height=height,
        pose_image=pose_ref,
        slots=slots,
        tune_files=tune_files,
        reference_images={PERSON_TUNE: references},
    )
    plans = planner.plan_job(parsed, inputs, config)
    record = job_record(parsed, plans, slots)
    assert [p.kind for p in record.plans[0].passes] == [
        "prepare", "base", "segment", "person", "person",
        "hires", "faces", "face_correct", "face_swap", "upscale", "finish",
    ]  # fmt: skip

    outcomes = Outcomes()
    await bus.subscribe_core(f"{names.EVENTS_PREFIX}.{JOB_ID}.>", outcomes.on_message)
    requests: dict[str, diffusion_pb2.PassRequest] = {}
    results: dict[str, diffusion_pb2.PassResult] = {}
    dispatch = list(job_state.start(record, now).dispatch)
    while dispatch:
        image_index, pass_index = dispatch.pop(0)
        outbox = job_state.build_request(record, image_index, pass_index)
        request = outbox.request
        planned = record.plans[image_index].passes[pass_index]
        if planned.kind == "segment":
            event = await segmented(store, request, slots)
        else:
            if planned.needs_faces:
                current = request.spec.image
                faces = [
                    segmentation_pb2.Face(box=head_box(slot, current.width / width), slot_index=slot.index)
                    for slot in slots
                ]
                # A face of no person, between the two figures.
                faces.append(
                    segmentation_pb2.Face(
                        box=common_pb2.Box(
                            x0=0.45 * current.width, y0=0.02 * current.height,
                            x1=0.55 * current.width, y1=0.12 * current.height,
                        ),
                        slot_index=-1,
                    )
                )  # fmt: skip
                request = faces_request(record, request, faces, None)
            else:
                assert outbox.subject == names.diffusion_pass_subject(SD15_MODEL)
            requests[request.pass_name] = request
            await bus.publish(
                names.diffusion_pass_subject(request.spec.model),
                request,
                msg_id=names.pass_msg_id(JOB_ID, image_index, request.pass_name, request.attempt, "test"),
            )
            event = await outcomes.of(request.pass_name)
            assert event.WhichOneof("event") == "completed", (
                f"{request.pass_name} failed: {event.failed.error}"
            )
            results[request.pass_name] = event.completed.result
        outcome = job_state.apply_event(record, event, now)
        assert outcome.changed, outcome.note
        dispatch += outcome.dispatch

    assert record.job.state == jobs_pb2.JOB_STATE_SUCCEEDED, record.job.error
    assert all(p.status == jobs_pb2.PASS_STATUS_COMPLETED for p in record.job.images[0].passes)
    assert sorted(results) == sorted(
        ["base", "person-0", "person-1", "hires", "faces", "face_correct", "face_swap", "upscale", "finish"]
    )
    # Images flowed from each pass to the next one.
    chain = [p.name for p in record.plans[0].passes if p.name in requests]
    for before, after in zip(chain, chain[1:], strict=False):
        assert requests[after].spec.image.key == results[before].output.key, after
    sizes = {name: (r.output.width, r.output.height) for name, r in results.items()}
    assert sizes["base"] == sizes["person-1"] == (256, 256)
    assert sizes["hires"] == sizes["face_swap"] == (384, 384)
    assert sizes["upscale"] == sizes["finish"] == (1536, 1536)

    meta = {name: dict(r.metadata) for name, r in results.items()}
    warnings = {name: list(r.warnings) for name, r in results.items()}
    base_prompt = parsed.base_effective_prompt
    # Prompt expansion: on the base pass, and the same expansion on hires (same prompt and seed).
    assert meta["base"]["expanded_prompt"].startswith(base_prompt)
    assert meta["base"]["expanded_prompt"] != base_prompt
    assert meta["hires"]["expanded_prompt"] == meta["base"]["expanded_prompt"]
    assert "controlnet" in meta["base"]["task"]
    assert meta["base"]["adapters"].startswith(f"t{BASE_TUNE}_")
    # Person passes: the person's LoRA only where the person has one, conditioned on the slot's pose.
    assert meta["person-0"]["adapters"].startswith(f"t{PERSON_TUNE}_")
    assert "adapters" not in meta["person-1"]
    # <faceid:...>: person 0 on its tune's reference identity (FaceID's LoRA too), person 1 without.
    assert meta["person-0"]["faceid"] == f"{PERSON_TUNE}:0.7"
    assert "tfaceid_" in meta["person-0"]["adapters"]
    assert sorted(k for k in requests["person-0"].spec.tune_files if "/reference-" in k) == [
        f"{PERSON_TUNE}/reference-0",
        f"{PERSON_TUNE}/reference-1",
    ]
    assert "faceid" not in meta["person-1"]
    assert all("controlnet" in meta[p]["task"] for p in ("person-0", "person-1"))
    assert meta["hires"]["hires_size"] == "384x384"
    # Faces: all three repainted; the person's face with its LoRA (fetched from the faces' tunes).
    assert meta["faces"]["faces"] == "3"
    assert [[(r.kind, r.tune_id) for r in f.loras] for f in requests["faces"].spec.faces] == [
        [("lora", PERSON_TUNE), ("faceid", PERSON_TUNE)],
        [],
        [("lora", BASE_TUNE)],
    ]
    assert meta["face_correct"]["faces"] == "3"
    # Face swap: the identity of person 0's tune from its reference images; the others left as they are.
    assert meta["face_swap"]["faces_swapped"] == f"0:{PERSON_TUNE}"
    assert "face 1 belongs to no tune: face swap skipped for it" in warnings["face_swap"]
    assert "face 2 belongs to no tune: face swap skipped for it" in warnings["face_swap"]
    assert meta["upscale"]["output_size"] == "1536x1536"
    assert (meta["finish"]["color_grading"], meta["finish"]["film_grain"]) == ("Film Portra", "0.35")
    # The faces pass repaints each face with its person's LoRAs and FaceID identity (face 0's tune's
    # reference images travel with the request).
    assert meta["faces"]["faceid"] == f"0:{PERSON_TUNE}:0.7"
    assert sorted(k for k in requests["faces"].spec.tune_files if "/reference-" in k) == [
        f"{PERSON_TUNE}/reference-0",
        f"{PERSON_TUNE}/reference-1",
    ]
    for name, found in warnings.items():
        assert not [w for w in found if "ignored" in w or "not fetched" in w or "unchanged" in w], name


async def segmented(store, request: diffusion_pb2.PassRequest, slots) -> events_pb2.PassEvent:
    """The segment pass's completed event: one mask per person slot (its box), like Segmentation.Segment."""
    image = request.spec.image
    masks = []
    for slot in slots:
        mask = Image.new("L", (image.width, image.height), 0)
        box = slot.box
        mask.paste(255, (int(box.x0), int(box.y0), int(box.x1), int(box.y1)))
        key = f"{names.image_prefix(TENANT, JOB_ID, request.image_index)}mask-person-{slot.index}.png"
        ref = await store.put_image(BUCKET_JOBS, key, mask)
        masks.append(segmentation_pb2.MaskResult(index=slot.index, mask=ref, label=f"person-{slot.index}"))
    return events_pb2.PassEvent(
        job_id=request.job_id,
        tenant=request.tenant,
        image_index=request.image_index,
        pass_name=request.pass_name,
        attempt=request.attempt,
        completed=events_pb2.PassCompleted(result=diffusion_pb2.PassResult(output=image), masks=masks),
    )
