"""Jobs through the public API of the local stack: a two-person job end to end, cancel, idempotency,
refused URLs."""

from __future__ import annotations

import io
import json
import time
import uuid

import grpc
import pytest
from e2e_support import FAST, follow, register_lora, two_person_prompt
from PIL import Image

from multipass.v1 import jobs_pb2
from multipass_client.downloads import generation_chain
from multipass_client.errors import violations_of

pytestmark = pytest.mark.e2e

COMPLETED, SKIPPED = jobs_pb2.PASS_STATUS_COMPLETED, jobs_pb2.PASS_STATUS_SKIPPED


def read_png(reader, ref) -> Image.Image:
    image = Image.open(io.BytesIO(reader.read(ref.bucket, ref.key)))
    image.load()
    return image


def test_two_person_job_runs_every_pass_and_stores_every_output(stack, client, sd15_model, tmp_path):
    woman = register_lora(client, sd15_model, tmp_path, seed=11, class_name="woman")
    man = register_lora(client, sd15_model, tmp_path, seed=12, class_name="man")
    prompt_file = tmp_path / "two-persons.prompt"
    prompt_file.write_text(two_person_prompt(woman, man))
    out = tmp_path / "out"

    # As a user: address, API key and object store come from the stack directory.
    params = [arg for name, value in FAST.items() for arg in ("--param", f"{name}={value}")]
    result = stack.cli("submit", "-f", str(prompt_file), *params, "--wait", "--out", str(out))
    assert result.returncode == 0, result.stderr[-4000:]
    job_id = result.stdout.split()[-1]

    job = client.jobs.get(job_id)
    assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED
    assert job.progress == pytest.approx(1.0)

    # Person assignments: one per BREAK segment, left to right, with their own tune and weight.
    assert [p.index for p in job.persons] == [0, 1]
    assert [(lora.tune_id, lora.weight) for lora in job.persons[0].loras] == [(woman, pytest.approx(1.0))]
    assert [(lora.tune_id, lora.weight) for lora in job.persons[1].loras] == [(man, pytest.approx(0.8))]
    assert "red evening gown" in job.persons[0].prompt and "black tuxedo" in job.persons[1].prompt
    left, right = (p.slot_box for p in job.persons)
    assert left.x0 < left.x1 <= 256 and right.x0 < right.x1 <= 256
    assert (left.x0 + left.x1) / 2 < (right.x0 + right.x1) / 2

    reader = stack.s3()
    assert len(job.images) == 1
    for image in job.images:
        assert image.status == COMPLETED
        names = [state.name for state in generation_chain(image)]
        assert names[0] == "base"
        assert names.index("segment") < names.index("person-0") < names.index("person-1")
        for state in image.passes:
            assert state.status in (COMPLETED, SKIPPED), (state.name, state.status, state.error.message)
            if state.name.startswith(("base", "person-")):
                assert state.output.key, f"pass {state.name} has no output"
            if state.output.key:
                stored = read_png(reader, state.output)  # present in the object store
                assert stored.size == (state.output.width, state.output.height)
                assert state.output.key.startswith("jobs/") and f"/{job_id}/" in state.output.key
        for person in job.persons:
            mask = image.masks[f"person-{person.index}"]
            stored = read_png(reader, mask)
            assert stored.size == (256, 256)
            assert person.masks[image.index].key == mask.key
        assert read_png(reader, image.final).size[0] >= 256

    # The download the CLI made.
    directory = out / job_id
    downloaded = json.loads((directory / "job.json").read_text())
    assert downloaded["job_id"] == job_id and downloaded["state"] == "JOB_STATE_SUCCEEDED"
    files = sorted(p.name for p in (directory / "image-0").iterdir())
    assert files[0] == "00-base.png"
    position = {state.name: index for index, state in enumerate(generation_chain(job.images[0]))}
    for name in ("person-0", "person-1"):
        assert f"{position[name]:02d}-{name}.png" in files
        assert f"mask-{name}.png" in files
    assert {"final.png", "contact-sheet.png"} <= set(files)
    with Image.open(directory / "image-0" / "contact-sheet.png") as sheet:
        assert sheet.width >= 2 * 192 and sheet.height >= 4 * 192


def test_the_event_stream_is_gap_free_resumable_and_ends_with_the_outcome(client):
    job_id = client.jobs.submit("a red bicycle leaning on a wall", FAST).job_id
    job, events = follow(client, job_id)
    assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED
    sequences = [event.sequence for event in events]
    assert sequences == list(range(1, len(events) + 1))
    assert events[0].WhichOneof("event") == "accepted"
    assert events[-1].WhichOneof("event") == "finished"
    assert events[-1].finished.state == jobs_pb2.JOB_STATE_SUCCEEDED
    progress = [event.progress for event in events]
    assert progress == sorted(progress) and progress[-1] == pytest.approx(1.0)
    kinds = {event.WhichOneof("event") for event in events}
    assert {"pass_started", "step_progress", "pass_completed"} <= kinds
    assert job.last_sequence == sequences[-1]
    # Resuming from a sequence number replays only what came after it.
    replayed = list(client.jobs.watch(job_id, after_sequence=sequences[-3]))
    assert [event.sequence for event in replayed] == sequences[-2:]


def test_a_cancelled_job_stops(client):
    params = {**FAST, "steps": "50", "num_images": "8"}
    job_id = client.jobs.submit("a city at night, long exposure", params).job_id
    for event in client.jobs.watch(job_id):
        if event.WhichOneof("event") in ("pass_started", "step_progress"):
            break
    response = client.jobs.cancel(job_id)
    assert response.cancelled, response.message
    job, events = follow(client, job_id, timeout=60)
    assert job.state == jobs_pb2.JOB_STATE_CANCELLED
    assert events[-1].finished.state == jobs_pb2.JOB_STATE_CANCELLED
    statuses = [state.status for image in job.images for state in image.passes]
    assert jobs_pb2.PASS_STATUS_RUNNING not in statuses and jobs_pb2.PASS_STATUS_QUEUED not in statuses
    assert jobs_pb2.PASS_STATUS_CANCELLED in statuses
    assert sum(1 for status in statuses if status == COMPLETED) < len(statuses)
    # Nothing keeps running for it.
    time.sleep(2)
    assert client.jobs.get(job_id).last_sequence == job.last_sequence
    again = client.jobs.cancel(job_id)
    assert not again.cancelled and again.state == jobs_pb2.JOB_STATE_CANCELLED


def test_resubmitting_with_the_same_idempotency_key_returns_the_same_job(client):
    key = f"e2e-{uuid.uuid4()}"
    first = client.jobs.submit("a lighthouse in fog", FAST, idempotency_key=key)
    second = client.jobs.submit("a lighthouse in fog", FAST, idempotency_key=key)
    assert not first.existing
    assert second.existing and second.job_id == first.job_id
    job, _ = follow(client, first.job_id)
    assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED and job.idempotency_key == key
    third = client.jobs.submit("a lighthouse in fog", FAST, idempotency_key=key)
    assert third.existing and third.job_id == first.job_id
    listed = [j.job_id for j in client.jobs.list(limit=100)]
    assert listed.count(first.job_id) == 1


@pytest.mark.parametrize(
    ("param", "url"),
    [
        ("input_image_url", "http://127.0.0.1/inputs/photo.png"),
        ("input_image_url", "http://169.254.169.254/latest/meta-data/"),
        ("mask_image_url", "http://169.254.169.254/latest/meta-data/iam/"),
    ],
)
def test_urls_to_private_addresses_are_refused(client, param, url):
    with pytest.raises(grpc.RpcError) as caught:
        client.jobs.submit("a garden in spring", {**FAST, param: url})
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert any(param in field for field, _ in violations_of(caught.value)), violations_of(caught.value)


def test_a_callback_to_a_private_address_is_refused(client):
    with pytest.raises(grpc.RpcError) as caught:
        client.jobs.submit("a garden in spring", FAST, callback_url="http://127.0.0.1:9/hooks")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert any("callback_url" in field for field, _ in violations_of(caught.value)), violations_of(
        caught.value
    )


def test_the_cli_prints_the_code_and_field_violations(stack):
    result = stack.cli(
        "submit", "a cat", "--input-image", "http://169.254.169.254/latest/meta-data/", "--param", "steps=0"
    )
    assert result.returncode == 1
    first_line, *details = result.stderr.strip().splitlines()
    assert first_line.startswith("INVALID_ARGUMENT")
    assert any("input_image_url" in line for line in details) or any("steps" in line for line in details)


def test_reference_only_control_and_the_composition_adapter_run_from_an_uploaded_picture(client, tmp_path):
    photo = tmp_path / "look.png"
    Image.new("RGB", (256, 256), (180, 60, 40)).save(photo)
    upload = client.jobs.upload_image(photo)
    for kind in ("reference", "composition"):
        params = {**FAST, "controlnet": kind, "controlnet_txt2img": "true"}
        submitted = client.jobs.submit("a portrait of a woman", params, input_image_id=upload.image_id)
        job, _ = follow(client, submitted.job_id)
        assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED, (kind, job.error)
    # Composition and a faceid tag of the base pass are both image prompts on its attention: refused.
    with pytest.raises(grpc.RpcError) as refused:
        client.jobs.submit(
            "a portrait <faceid:1:1>", {**FAST, "controlnet": "composition"}, input_image_id=upload.image_id
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = dict(violations_of(refused.value))
    assert "controlnet=composition and <faceid:1:1>" in violations["params.controlnet"]
    client.jobs.delete_upload(upload.image_id)


def test_a_named_lora_of_the_model_directory_runs_and_a_missing_name_is_refused(client):
    # The tiny model directory has diffusion/loras/detail-tweaker.safetensors (kohya layout, SD1.5).
    submitted = client.jobs.submit(
        "a garden <lora:detail-tweaker:0.8> BREAK BREAK ohwx woman <lora:detail-tweaker>", FAST
    )
    job, _ = follow(client, submitted.job_id)
    assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED, job.error
    with pytest.raises(grpc.RpcError) as refused:
        client.jobs.submit("a garden <lora:detail-tweeker:1>", FAST)
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    ((field, description),) = violations_of(refused.value)
    assert (
        field == "<lora:detail-tweeker:1>"
        and "named LoRAs installed: detail-tweaker, sdxl-film-look" in description
    )


def test_a_job_that_only_changes_a_person_prompt_reuses_the_base_pass(client):
    """The pass cache: same scene, seed and size, another person prompt: the base pass comes from the cache,
    the person pass runs."""
    scene = f"a quiet library {uuid.uuid4().hex[:8]} BREAK soft light BREAK "
    params = {**FAST, "seed": "4242"}
    first, _ = follow(client, client.jobs.submit(scene + "ohwx woman, green coat", params).job_id)
    second, _ = follow(client, client.jobs.submit(scene + "ohwx woman, yellow raincoat", params).job_id)
    assert first.state == second.state == jobs_pb2.JOB_STATE_SUCCEEDED, (first.error, second.error)

    def passes(job):
        return {p.name: p for p in job.images[0].passes}

    assert not passes(first)["base"].cache_hit  # the scene is new (its words are unique to this test)
    assert passes(second)["base"].cache_hit
    assert passes(second)["base"].output.sha256 == passes(first)["base"].output.sha256
    assert not passes(second)["person-0"].cache_hit
    assert passes(second)["person-0"].output.sha256 != passes(first)["person-0"].output.sha256
