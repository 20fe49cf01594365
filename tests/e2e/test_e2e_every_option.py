"""A job with every finishing option on, through the public API of the local stack: every planned pass
runs in chain order and stores its output, and the finishing passes do what they say to the image size."""

from __future__ import annotations

import io

import pytest
from e2e_support import follow
from PIL import Image
from skimage import data as sample_images

from multipass.v1 import jobs_pb2

pytestmark = pytest.mark.e2e

COMPLETED, SKIPPED = jobs_pb2.PASS_STATUS_COMPLETED, jobs_pb2.PASS_STATUS_SKIPPED
EVERY_OPTION = {
    "steps": "2",
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
CHAIN = [
    "base",
    "segment",
    "person-0",
    "person-1",
    "hires",
    "faces",
    "face_correct",
    "face_swap",
    "upscale",
    "finish",
]


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_job_with_every_option_runs_every_pass_in_order(stack, client, sd15_model, tmp_path):
    from multipass_dev.tiny_models.diffusion import write_random_lora

    face = Image.fromarray(sample_images.astronaut()).crop((140, 20, 340, 220))
    reference = client.jobs.upload_image(png_bytes(face), "reference.png").image_id
    tunes = []
    for seed, class_name in ((21, "woman"), (22, "man")):
        lora = write_random_lora(sd15_model, tmp_path / f"lora-{seed}.safetensors", seed=seed)
        tune = client.tunes.register(
            lora, token="ohwx", class_name=class_name, base_family="sd15", reference_image_ids=(reference,)
        )
        assert len(tune.reference_images) == 1
        tunes.append(tune.tune_id)
    prompt = (
        "a couple on a beach at sunset BREAK film photo "
        f"BREAK ohwx woman, summer dress <lora:{tunes[0]}:1> BREAK ohwx man, linen shirt <lora:{tunes[1]}:1>"
    )

    submitted = client.jobs.submit(prompt, EVERY_OPTION)
    job, events = follow(client, submitted.job_id, timeout=400)

    assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED, job.error.message
    (image,) = job.images
    states = {state.name: state for state in image.passes}
    planned = [state.name for state in image.passes if state.name in CHAIN]
    assert planned == CHAIN, [state.name for state in image.passes]
    for name in CHAIN:
        state = states[name]
        assert state.status in (COMPLETED, SKIPPED), (name, state.status, state.error.message)
    for name in ("base", "person-0", "person-1", "hires", "upscale", "finish"):
        assert states[name].status == COMPLETED and states[name].output.key, name
    # The tiny landmark detector finds a face in every image, so each face pass ran on the worker (on
    # landmark-aligned crops) and stored its own output rather than passing the image through.
    for name in ("faces", "face_correct", "face_swap"):
        assert states[name].status == COMPLETED, name
        assert states[name].output.key.endswith(f"/{name}.png"), (name, states[name].output.key)
    # hires enlarges the 256 px scene (by MULTIPASS_GATEWAY_HIRES_SCALE), the upscaler multiplies by four,
    # finishing keeps the size.
    assert states["base"].output.width == 256 < states["hires"].output.width
    assert states["upscale"].output.width == 4 * states["hires"].output.width
    assert (image.final.width, image.final.height) == (
        states["upscale"].output.width,
        states["upscale"].output.height,
    )
    completed = [e.pass_completed.pass_name for e in events if e.WhichOneof("event") == "pass_completed"]
    assert [name for name in completed if name in CHAIN] == [
        name for name in CHAIN if states[name].status == COMPLETED
    ]
    stored = stack.s3().read(image.final.bucket, image.final.key)
    assert Image.open(io.BytesIO(stored)).size == (image.final.width, image.final.height)
