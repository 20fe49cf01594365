"""Running ahead: a person pass whose request names the next one starts it on its output at once, and the
next request takes that result when it is exactly the pass run ahead (real worker, nats-server and S3)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from diffusion_support import serving, tiny_worker_settings
from test_diffusion_worker import BUCKET_JOBS, box_mask, pass_request, scene, watch

from multipass import names
from multipass.names import BUCKET_TUNES
from multipass.v1 import common_pb2, diffusion_pb2, prompt_pb2
from multipass_dev.tiny_models.diffusion import SD15_MODEL, write_random_lora
from multipass_diffusion import metrics

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
async def service(model_root, nats_server, s3_settings, tmp_path):
    # Every pass computes: outputs are compared, not cached.
    settings = tiny_worker_settings(
        model_root, nats_server.url, s3_settings.endpoint, tmp_path / "tunes", PASS_CACHE="off"
    )
    async with serving(settings) as running:
        yield running


def outcomes() -> dict[str, float]:
    return {
        outcome: metrics.RUN_AHEAD.labels(outcome=outcome)._value.get()
        for outcome in ("used", "unused", "yielded", "failed")
    }


def person_passes() -> float:
    return metrics.PASSES.labels(pass_kind="person", outcome="succeeded")._value.get()


def counted_since(before: dict[str, float]) -> dict[str, float]:
    return {k: v - before[k] for k, v in outcomes().items() if v != before[k]}


async def person_specs(store, service, model_root, job_id: str, *, steps: int = 4):
    """An input image, two person masks and LoRAs: the specs of person-0 and person-1."""
    image = await store.put_image(BUCKET_JOBS, f"jobs/t1/{job_id}/image-0/base.png", scene(96, 64))
    specs = []
    for index, box in enumerate(((10, 10, 45, 60), (50, 10, 90, 60))):
        lora = write_random_lora(
            model_root / "diffusion" / SD15_MODEL,
            Path(service.settings.tune_cache_dir).parent / f"lora-{index}.safetensors",
            seed=index,
        )
        tune = await store.put_bytes(BUCKET_TUNES, f"tunes/t1/{index}/lora.safetensors", lora.read_bytes())
        mask = await store.put_image(
            BUCKET_JOBS, f"jobs/t1/{job_id}/image-0/mask-person-{index}.png", box_mask((96, 64), box)
        )
        specs.append(
            diffusion_pb2.PassSpec(
                kind="person",
                model=SD15_MODEL,
                prompt=f"person {index}",
                steps=steps,
                cfg_scale=5.0,
                seed=7 + index,
                mask=mask,
                loras=[prompt_pb2.LoraRef(tune_id=str(index), weight=0.8, kind="lora")],
                tune_files={str(index): tune},
            )
        )
    specs[0].image.CopyFrom(image)
    return specs


def request_for(job_id: str, pass_name: str, spec: diffusion_pb2.PassSpec) -> diffusion_pb2.PassRequest:
    return pass_request(job_id, pass_name, spec, attempt=1)


async def publish(bus, request: diffusion_pb2.PassRequest) -> None:
    await bus.publish(
        names.diffusion_pass_subject(SD15_MODEL),
        request,
        msg_id=names.pass_msg_id(request.job_id, 0, request.pass_name, request.attempt),
    )


async def first_then_second(bus, job_id, first_spec, second_spec, *, hint: diffusion_pb2.PassSpec | None):
    """person-0 (naming person-1 as its next pass when ``hint``), then person-1 on its output, as the
    gateway sends them; returns the events of both and person-1's result."""
    events = await watch(bus, job_id)
    first = request_for(job_id, "person-0", first_spec)
    if hint is not None:
        first.next_pass.CopyFrom(request_for(job_id, "person-1", hint))
    await publish(bus, first)
    completed = (await events.until("completed", "person-0"))[-1][1].completed.result
    second = request_for(job_id, "person-1", second_spec)
    second.spec.image.CopyFrom(completed.output)
    await publish(bus, second)
    seen = await events.until("completed", "person-1")
    return seen, seen[-1][1].completed.result


async def test_the_next_person_pass_run_ahead_answers_its_request_with_the_same_image(
    service, bus, store, model_root
):
    first, second = await person_specs(store, service, model_root, "RA1")
    # The reference: the same two passes, nothing run ahead.
    _, alone = await first_then_second(bus, "RA0", first, second, hint=None)
    before, passes = outcomes(), person_passes()
    seen, ahead = await first_then_second(bus, "RA1", first, second, hint=second)
    assert counted_since(before) == {"used": 1}
    assert person_passes() == passes + 2  # each pass counted once, the one run ahead when it was taken
    assert ahead.output.sha256 == alone.output.sha256  # the very image a run of the request gives
    assert ahead.output.key == "jobs/t1/RA1/image-0/person-1.png"
    assert await store.exists(BUCKET_JOBS, ahead.output.key)
    kinds = [kind for kind, event in seen if event.pass_name == "person-1"]
    assert kinds[0] == "started" and kinds[-1] == "completed"
    assert ahead.metadata["steps_run"] == "2" and not ahead.cache_hit


async def test_a_next_request_that_differs_runs_as_usual(service, bus, store, model_root):
    first, second = await person_specs(store, service, model_root, "RA2")
    changed = diffusion_pb2.PassSpec()
    changed.CopyFrom(second)
    changed.seed += 1
    _, alone = await first_then_second(bus, "RA3", first, changed, hint=None)
    before, passes = outcomes(), person_passes()
    _, result = await first_then_second(bus, "RA2", first, changed, hint=second)  # run ahead: old seed
    assert result.output.sha256 == alone.output.sha256
    assert person_passes() == passes + 2  # the unused run is not a pass
    assert set(counted_since(before)) <= {"unused", "yielded"} and counted_since(before)


async def test_a_cancel_stops_the_run_ahead_and_fails_its_request(service, bus, store, model_root):
    first, second = await person_specs(store, service, model_root, "RA4", steps=150)
    first.steps = 4
    events = await watch(bus, "RA4")
    before = outcomes()
    request = request_for("RA4", "person-0", first)
    request.next_pass.CopyFrom(request_for("RA4", "person-1", second))
    await publish(bus, request)
    completed = (await events.until("completed", "person-0"))[-1][1].completed.result
    # person-1 runs ahead for 75 steps (strength 0.5): the cancel comes while it fetches or runs.
    await bus.publish_core(names.cancel_subject("RA4"), b"")
    follow = request_for("RA4", "person-1", second)
    follow.spec.image.CopyFrom(completed.output)
    await publish(bus, follow)
    failed = (await events.until("failed", "person-1", timeout=60))[-1][1].failed
    assert failed.error.code == common_pb2.ERROR_CODE_CANCELLED and not failed.retriable
    async with asyncio.timeout(30):  # the run ahead stops at its next step
        while not counted_since(before):
            await asyncio.sleep(0.05)
    assert counted_since(before) == {"yielded": 1}


async def test_the_steps_left_when_the_request_takes_the_run_are_its_progress(
    service, bus, store, model_root
):
    first, second = await person_specs(store, service, model_root, "RA5", steps=150)
    first.steps = 4
    seen, result = await first_then_second(bus, "RA5", first, second, hint=second)
    events = [(kind, event) for kind, event in seen if event.pass_name == "person-1"]
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "started" and kinds[-1] == "completed" and "progress" in kinds
    steps = [event.progress.step for kind, event in events if kind == "progress"]
    assert steps == sorted(steps) and steps[-1] == 75  # strength 0.5 of 150 steps
    assert result.metadata["steps_run"] == "75"
