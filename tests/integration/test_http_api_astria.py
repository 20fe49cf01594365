"""Astria's REST API against the real gateway (gateway_support's stack, the HTTP service on loopback):
the curl examples of Astria's docs (multipart and JSON), a client written the way Astria's docs and its
sample app poll, the prompt callback relayed through the gateway's signed, retried callback, tunes, and
every refusal as the 4xx Astria's clients expect."""

from __future__ import annotations

import asyncio
import io
import ipaddress
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from gateway_support import (  # noqa: F401 - fixtures
    MODEL,
    SIGNING_KEY,
    ImageServer,
    bearer,
    capabilities_fixture,
    safetensors_bytes,
    segmentation_models_fixture,
    stack_fixture,
)
from http_api_support import HttpApi, start_http_api
from PIL import Image

from multipass.callback_signing import tenant_key
from multipass.names import BUCKET_JOBS, BUCKET_TUNES
from multipass.v1 import jobs_pb2
from multipass_gateway.settings import FetchAllowList
from multipass_http_api.astria.callbacks import RELAY_PATH, CallbackSettings, sign, verify

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)
#: Small, so that an upload a few times larger stays within what the service reads before its 413.
MAX_BODY = 16 * 1024


@pytest.fixture(name="astria_overrides")
def astria_overrides_fixture() -> dict:
    """Settings of the HTTP service a test changes (parametrize it)."""
    return {}


@pytest.fixture(name="astria_api")
async def astria_api_fixture(stack, astria_overrides):
    """Gateway and HTTP service allowed to call loopback (the relay and the test's receiver)."""
    await stack.start_gateway(fetch_allow=FetchAllowList(networks=LOOPBACK))
    tenant = await stack.tenant("acme")
    handle = await start_http_api(
        stack,
        max_body_bytes=MAX_BODY,
        astria_callbacks=CallbackSettings(
            signing_key=SIGNING_KEY, allow_networks=LOOPBACK, timeout_seconds=5.0
        ),
        **astria_overrides,
    )
    try:
        yield HttpApi(handle=handle, stack=stack, key=tenant.api_key, tenant=tenant.tenant)
    finally:
        await handle.stop(1.0)


def registration(title: str, name: str, *fields: tuple[str, str]) -> list[tuple]:
    """Multipart fields of a tune registration with a LoRA file: title, class name and ``fields``."""
    return [
        ("tune[title]", (None, title)),
        ("tune[name]", (None, name)),
        *((key, (None, value)) for key, value in fields),
        ("tune[weights]", ("lora.safetensors", safetensors_bytes(), "application/octet-stream")),
    ]


class Receiver:
    """A loopback HTTP server recording the POSTs it gets; answers ``statuses`` in turn, then 200."""

    def __init__(self, statuses: tuple[int, ...] = ()):
        self.requests: list[tuple[dict, bytes]] = []
        self.statuses = list(statuses)
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                owner.requests.append((dict(self.headers), body))
                self.send_response(owner.statuses.pop(0) if owner.statuses else 200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/webhooks/prompt?user_id=42"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def astria_style_client(base_url: str, key: str, tune_id: int, callback: str) -> tuple[dict, dict]:
    """A client written against Astria's docs (requests-style multipart POST, then polling the prompt
    until ``images`` is non-empty or ``user_error`` is set); only the base URL differs from Astria's."""
    headers = {"Authorization": f"Bearer {key}"}
    data = {
        "prompt[text]": "a portrait of ohwx woman, golden hour",
        "prompt[negative_prompt]": "blurry",
        "prompt[num_images]": "1",
        "prompt[steps]": "2",
        "prompt[w]": "256",
        "prompt[h]": "256",
        "prompt[super_resolution]": "false",
        "prompt[callback]": callback,
    }
    with httpx.Client(base_url=base_url, headers=headers, timeout=30) as client:
        created = client.post(f"/tunes/{tune_id}/prompts", data=data)
        created.raise_for_status()
        prompt = created.json()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            polled = client.get(f"/tunes/{tune_id}/prompts/{prompt['id']}")
            polled.raise_for_status()
            current = polled.json()
            if current["images"] or current["user_error"]:
                return prompt, current
            time.sleep(0.2)
    raise AssertionError("the prompt never settled")


async def test_curl_examples_multipart_and_json(astria_api):
    """``curl -X POST -H "Authorization: Bearer $KEY" /tunes/690204/prompts -F prompt[text]=... ...``."""
    async with astria_api.client() as client:
        response = await client.post(
            "/tunes/690204/prompts",
            files={
                "prompt[text]": (None, "a room BREAK BREAK ohwx woman BREAK ohwx man"),
                "prompt[num_images]": (None, "1"),
                "prompt[steps]": (None, "2"),
                "prompt[w]": (None, "256"),
                "prompt[h]": (None, "256"),
                "prompt[inpaint_faces]": (None, "0"),
                "prompt[use_lpw]": (None, "true"),
                "prompt[foo]": (None, "bar"),
            },
        )
        assert response.status_code == 201, response.text
        created = response.json()
        assert created["tune_id"] == 690204 and created["images"] == [] and created["trained_at"] is None
        assert created["text"] == "a room BREAK BREAK ohwx woman BREAK ohwx man"
        assert created["steps"] == 2 and created["num_images"] == 1 and created["cfg_scale"] is None
        assert created["use_lpw"] is True and created["inpaint_faces"] is False
        assert "unknown field prompt[foo] ignored" in created["warnings"]
        # A base (gallery) tune id with no tune tagged: the base model alone, which a typo'd id also gives.
        assert (
            "tune 690204 is not one of your tunes and the text tags none: the prompt runs on the base model alone"
        ) in created["warnings"]
        assert created["url"].endswith(f"/tunes/690204/prompts/{created['id']}.json")

        as_json = await client.post(
            "/tunes/690204/prompts",
            json={
                "prompt": {"text": "a lighthouse", "num_images": 2, "steps": 2, "seed": 7, "w": 256, "h": 256}
            },
        )
        assert as_json.status_code == 201, as_json.text
        second = as_json.json()
        assert second["seed"] == 7 and second["num_images"] == 2

        done = await poll(client, f"/prompts/{second['id']}.json")
        assert len(done["images"]) == 2 and done["trained_at"] and done["user_error"] is None
        image = await client.get(done["images"][0])
        assert image.status_code == 200 and image.content[:4] == b"\x89PNG"
        first = await poll(client, f"/tunes/690204/prompts/{created['id']}")
        assert len(first["images"]) == 1

        listed = (await client.get("/tunes/690204/prompts", params={"limit": 1, "offset": 1})).json()
        assert [item["id"] for item in listed] == [created["id"]]
        # The keyset cursor: the page after the newest prompt, by its id.
        newest = (await client.get("/tunes/690204/prompts", params={"limit": 1})).json()
        after = await client.get("/tunes/690204/prompts", params={"limit": 1, "before_id": newest[0]["id"]})
        assert [item["id"] for item in after.json()] == [created["id"]], after.text
        oldest = await client.get("/prompts", params={"before_id": created["id"]})
        assert created["id"] not in {item["id"] for item in oldest.json()}
        assert {item["id"] for item in (await client.get("/prompts")).json()} >= {created["id"], second["id"]}
        assert (await client.get(f"/tunes/1234/prompts/{created['id']}")).status_code == 404
        assert (await client.get("/prompts", params={"limit": 121})).status_code == 422

        duplicate = await client.post(
            f"/prompts/{second['id']}/duplicate", json={"prompt": {"num_images": 1}}
        )
        assert duplicate.status_code == 201, duplicate.text
        copy = duplicate.json()
        assert copy["id"] != second["id"] and copy["text"] == "a lighthouse"
        assert copy["seed"] == 7 and copy["num_images"] == 1 and copy["tune_id"] == 690204

    other = await astria_api.stack.tenant("other")
    async with astria_api.client(other.api_key) as stranger:
        hidden = await stranger.get(f"/prompts/{created['id']}")
        assert hidden.status_code == 404
        assert hidden.json()["error"] == f"prompt {created['id']} does not exist"  # this API's words
        assert (await stranger.delete(f"/prompts/{created['id']}")).status_code == 404
    async with astria_api.client() as client:
        # Deleting a prompt deletes it (and its images): 404 afterwards, gone from the lists.
        image_url = done["images"][0]
        removed = await client.delete(f"/tunes/690204/prompts/{second['id']}")
        assert removed.status_code == 200, removed.text
        assert removed.json()["id"] == second["id"] and removed.json()["images"] == []
        assert any(w.startswith("deleted: ") for w in removed.json()["warnings"])
        assert (await client.get(f"/prompts/{second['id']}")).status_code == 404
        assert (await client.get(image_url)).status_code == 404
        assert second["id"] not in {item["id"] for item in (await client.get("/prompts")).json()}
        assert (await client.delete(f"/prompts/{second['id']}")).status_code == 404


async def test_a_duplicate_carries_the_uploaded_input_and_mask_images(astria_api):
    """A duplicate of an inpainting prompt whose input and mask were uploaded runs on the same input and
    mask (it used to run as txt2img, then without the mask), and makes the same image with the same seed."""
    picture, mask = _photo_and_box_mask()
    async with astria_api.client() as client:
        created = await client.post(
            "/tunes/690204/prompts",
            data={
                "prompt[text]": "a painting",
                "prompt[steps]": "2",
                "prompt[num_images]": "1",
                "prompt[seed]": "77",
            },
            files={
                "prompt[input_image]": ("in.png", picture.getvalue(), "image/png"),
                "prompt[mask_image]": ("mask.png", mask.getvalue(), "image/png"),
            },
        )
        assert created.status_code == 201, created.text
        # The job holds its copies: the uploads made for it are deleted at once.
        assert not await astria_api.stack.store.list_keys(BUCKET_JOBS, f"uploads/{astria_api.tenant}/")
        duplicate = await client.post(f"/prompts/{created.json()['id']}/duplicate", json={"prompt": {}})
        assert duplicate.status_code == 201, duplicate.text
        unmasked = await client.post(
            f"/prompts/{created.json()['id']}/duplicate",
            data={"prompt[text]": "a painting"},
            files={"prompt[mask_image]": ("mask.png", _white_mask(), "image/png")},
        )
        assert unmasked.status_code == 201, unmasked.text

    async def job_of(prompt_id: str) -> jobs_pb2.Job:
        return await astria_api.stack.jobs.GetJob(
            jobs_pb2.GetJobRequest(job_id=prompt_id),
            metadata=(("authorization", f"Bearer {astria_api.key}"),),
        )

    async def inputs_of(prompt_id: str) -> tuple[bytes, bytes]:
        job = await job_of(prompt_id)
        (prepare,) = [p for p in job.images[0].passes if p.kind == "prepare"]
        assert prepare.output.key and job.mask_image.key, "the job has no input or mask image"
        store = astria_api.stack.store
        return (
            await store.get_bytes(prepare.output.bucket, prepare.output.key),
            await store.get_bytes(job.mask_image.bucket, job.mask_image.key),
        )

    assert await inputs_of(duplicate.json()["id"]) == await inputs_of(created.json()["id"])
    # A mask the duplicate's body gives replaces the carried one.
    assert (await inputs_of(unmasked.json()["id"]))[1] != (await inputs_of(created.json()["id"]))[1]


def _photo_and_box_mask() -> tuple[io.BytesIO, io.BytesIO]:
    """A plain 256x256 photo and a mask whose white square (the middle half) is what to repaint."""
    from PIL import ImageDraw

    picture, mask = io.BytesIO(), io.BytesIO()
    Image.new("RGB", (256, 256), (200, 120, 40)).save(picture, "PNG")
    drawn = Image.new("L", (256, 256), 0)
    ImageDraw.Draw(drawn).rectangle((64, 64, 191, 191), fill=255)
    drawn.save(mask, "PNG")
    return picture, mask


def _white_mask() -> bytes:
    data = io.BytesIO()
    Image.new("L", (256, 256), 255).save(data, "PNG")
    return data.getvalue()


async def test_an_uploaded_mask_image_makes_the_base_pass_an_inpaint_inside_it(astria_api):
    picture, mask = _photo_and_box_mask()
    async with astria_api.client() as client:
        created = await client.post(
            "/tunes/690204/prompts",
            data={"prompt[text]": "a window", "prompt[steps]": "2", "prompt[num_images]": "1"},
            files={
                "prompt[input_image]": ("in.png", picture.getvalue(), "image/png"),
                "prompt[mask_image]": ("mask.png", mask.getvalue(), "image/png"),
            },
        )
        assert created.status_code == 201, created.text
        done = await poll(client, f"/prompts/{created.json()['id']}")
        assert done["images"] and done["user_error"] is None
    job_id = str(created.json()["id"])
    base = next(r for r in astria_api.stack.worker.seen if r.job_id == job_id and r.pass_name == "base")
    prefix = f"jobs/{astria_api.tenant}/{job_id}/inputs/"
    assert base.spec.image.key.startswith(prefix) and base.spec.mask.key.startswith(prefix)
    stored = await astria_api.stack.store.get_bytes(base.spec.mask.bucket, base.spec.mask.key)
    white = Image.open(io.BytesIO(stored)).convert("L").point(lambda v: 255 if v > 127 else 0).getbbox()
    assert white == (64, 64, 192, 192)  # the caller's rectangle, at the job's size (256x256)
    # The job keeps its own copies: the uploads made for it are gone.
    assert not await astria_api.stack.store.list_keys(BUCKET_JOBS, f"uploads/{astria_api.tenant}/")


async def poll(client: httpx.AsyncClient, path: str, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        response = await client.get(path)
        assert response.status_code == 200, response.text
        body = response.json()
        if body["images"] or body["user_error"]:
            return body
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.1)


async def test_unmodified_client_and_signed_retried_callback(astria_api):
    receiver = Receiver(statuses=(503,))
    try:
        created, done = await asyncio.to_thread(
            astria_style_client, astria_api.url, astria_api.key, 690204, receiver.url
        )
        assert created["callback"] == receiver.url and created["images"] == []
        assert len(done["images"]) == 1 and done["trained_at"]
        deadline = time.monotonic() + 30
        while len(receiver.requests) < 2:
            assert time.monotonic() < deadline, receiver.requests
            await asyncio.sleep(0.1)
    finally:
        receiver.close()
    headers, body = receiver.requests[-1]
    # The tenant's own key (GET /v1/callback-key), not the deployment's secret.
    async with astria_api.client() as client:
        key = (await client.get("/v1/callback-key")).json()["callback_signing_key"]
    assert key == tenant_key(SIGNING_KEY, astria_api.tenant)
    assert verify(headers["X-Multipass-Signature"], body, key)
    assert not verify(headers["X-Multipass-Signature"], body, SIGNING_KEY)
    prompt = json.loads(body)["prompt"]
    assert prompt["id"] == created["id"] and prompt["images"] and prompt["callback"] == receiver.url
    assert headers["X-Multipass-Attempt"] == "2"
    async with astria_api.client() as client:
        job = (await client.get(f"/v1/jobs/{created['id']}")).json()
    assert job["callback_outcome"].startswith("delivered (HTTP 200, attempt 2)")


async def test_callback_to_an_internal_address_is_refused(astria_api):
    async with astria_api.client() as client:
        response = await client.post(
            "/tunes/1/prompts", data={"prompt[text]": "a cat", "prompt[callback]": "http://10.1.2.3/hook"}
        )
    assert response.status_code == 422
    assert "a private address; refused" in response.json()["errors"]["prompt[callback]"][0]


async def test_the_relay_takes_only_callbacks_signed_with_the_key_of_the_tenant_they_name(astria_api):
    """A callback relabelled with another tenant, signed with the deployment's secret or unsigned is 401:
    the relay derives the key from X-Multipass-Tenant, so no tenant can sign for another."""
    body = b'{"job_id": "0123456789abcdef01234567"}'
    now = int(time.time())
    mine = tenant_key(SIGNING_KEY, astria_api.tenant)
    cases = {
        "relabelled": {"X-Multipass-Tenant": "t" + "0" * 16, "X-Multipass-Signature": sign(body, mine, now)},
        "the secret": {
            "X-Multipass-Tenant": astria_api.tenant,
            "X-Multipass-Signature": sign(body, SIGNING_KEY, now),
        },
        "no tenant": {"X-Multipass-Signature": sign(body, mine, now)},
    }
    async with astria_api.client("") as client:
        for case, headers in cases.items():
            refused = await client.post(RELAY_PATH, content=body, headers=headers)
            assert refused.status_code == 401, (case, refused.text)
        # Its own key passes the check (then the body is no prompt callback: 422, not 401).
        headers = {"X-Multipass-Tenant": astria_api.tenant, "X-Multipass-Signature": sign(body, mine, now)}
        assert (await client.post(RELAY_PATH, content=body, headers=headers)).status_code == 422


async def test_tunes_register_prompt_with_own_tune_and_delete(astria_api):
    async with astria_api.client() as client:
        training = await client.post(
            "/tunes",
            files=[
                ("tune[title]", (None, "order-1")),
                ("tune[name]", (None, "woman")),
                ("tune[images][]", ("a.png", b"\x89PNG....", "image/png")),
            ],
        )
        assert training.status_code == 422
        assert "training is not offered" in training.json()["errors"]["tune[weights]"][0]

        registered = await client.post(
            "/tunes",
            files=[
                ("tune[title]", (None, "order-2")),
                ("tune[name]", (None, "woman")),
                ("tune[token]", (None, "ohwx")),
                ("tune[branch]", (None, "sd15")),
                ("tune[model_type]", (None, "lora")),
                ("tune[weights]", ("lora.safetensors", safetensors_bytes(), "application/octet-stream")),
                ("tune[steps]", (None, "500")),
            ],
        )
        assert registered.status_code == 201, registered.text
        tune = registered.json()
        assert tune["name"] == "woman" and tune["token"] == "ohwx" and tune["model_type"] == "lora"
        assert tune["branch"] == "sd15" and tune["trained_at"] and tune["title"] == "order-2"
        assert any("tune[steps] ignored" in warning for warning in tune["warnings"])
        assert (await client.get(f"/tunes/{tune['id']}.json")).json()["id"] == tune["id"]
        assert tune["id"] in [item["id"] for item in (await client.get("/tunes")).json()]

        prompt = await client.post(
            f"/tunes/{tune['id']}/prompts",
            json={"prompt": {"text": "ohwx woman", "steps": 2, "w": 256, "h": 256}},
        )
        assert prompt.status_code == 201, prompt.text
        assert prompt.json()["text"] == "ohwx woman"
        job = (await client.get(f"/v1/jobs/{prompt.json()['id']}")).json()
        assert job["prompt"] == f"<lora:{tune['id']}:1> ohwx woman"

        deleted = await client.delete(f"/tunes/{tune['id']}")
        assert deleted.status_code == 200
        assert (await client.get(f"/tunes/{tune['id']}")).status_code == 404


async def test_refusals_are_the_4xx_astria_clients_expect(astria_api):
    async with astria_api.client() as client:
        bad = await client.post("/tunes/1/prompts", data={"prompt[text]": "a cat", "prompt[steps]": "99"})
        assert bad.status_code == 422 and "prompt[steps]" in bad.json()["errors"], bad.text
        assert "error" in bad.json()
        flag = await client.post(
            "/tunes/1/prompts", data={"prompt[text]": "a cat", "prompt[hires_fix]": "maybe"}
        )
        assert flag.status_code == 422 and "prompt[hires_fix]" in flag.json()["errors"]
        missing = await client.post("/tunes/1/prompts", json={"prompt": {"steps": 2}})
        assert missing.status_code == 422 and "prompt[text]" in missing.json()["errors"]
        not_image = await client.post(
            "/tunes/1/prompts",
            data={"prompt[text]": "a cat", "prompt[controlnet]": "canny"},
            files={"prompt[input_image]": ("notes.txt", b"hello", "text/plain")},
        )
        assert not_image.status_code == 422 and "prompt[input_image]" in not_image.json()["errors"]
        garbage_png = await client.post(
            "/tunes/1/prompts",
            data={"prompt[text]": "a cat"},
            files={"prompt[input_image]": ("x.png", b"not really a png", "image/png")},
        )
        assert garbage_png.status_code == 422 and "prompt[input_image]" in garbage_png.json()["errors"]
        broken = await client.post(
            "/tunes/1/prompts",
            content=b'--xyz\r\nContent-Disposition: form-data; name="prompt[text]"\r\n\r\nno end',
            headers={"Content-Type": "multipart/form-data; boundary=xyz"},
        )
        assert broken.status_code == 422, broken.text
        bad_json = await client.post(
            "/tunes/1/prompts", content=b"{not json", headers={"Content-Type": "application/json"}
        )
        assert bad_json.status_code == 422
        huge = await client.post(
            "/tunes/1/prompts",
            data={"prompt[text]": "a cat"},
            files={"prompt[input_image]": ("big.png", b"\x89PNG" + b"a" * (2 * MAX_BODY), "image/png")},
        )
        assert huge.status_code == 413 and "larger than" in huge.json()["error"]
        assert (await client.get("/prompts/0123456789abcdef01234567")).status_code == 404
        assert (await client.get("/prompts/nonsense")).status_code == 404
        assert (await client.get("/tunes/abc/prompts")).status_code == 404
        listed = (await client.get("/prompts")).json()
        assert listed == []
        for path in ("/prompts", "/tunes/1/prompts", "/tunes"):
            deep = await client.get(path, params={"offset": 10_001})
            assert deep.status_code == 400 and deep.json()["errors"] == {
                "offset": ["got 10001; allowed: 0..10000"]
            }, (path, deep.text)
        not_an_id = await client.get("/prompts", params={"before_id": "yesterday"})
        assert not_an_id.status_code == 400 and "before_id" in not_an_id.json()["errors"]
        pack = await client.post("/p/260/tunes", json={"tune": {"title": "t", "name": "man"}})
        assert pack.status_code == 404 and "packs are not offered here" in pack.json()["error"]
    async with astria_api.client("") as anonymous:
        assert (await anonymous.post("/p/260/tunes", json={})).status_code == 401
        assert (await anonymous.get("/prompts")).status_code == 401
        assert (await anonymous.get("/prompts", params={"offset": 99999})).status_code == 401
        assert (await anonymous.get("/tunes", params={"limit": 500})).status_code == 401
        assert (await anonymous.post("/tunes/1/prompts", json={"prompt": {}})).status_code == 401
    async with astria_api.client("sd_wrong") as wrong:
        assert (await wrong.post("/tunes/1/prompts", data={"prompt[text]": "a cat"})).status_code == 401
        assert (await wrong.post("/p/260/tunes", json={})).status_code == 401


async def test_tune_characteristics_template_the_prompts_of_the_tune(astria_api):
    """``tune[characteristics]`` (JSON object or form fields) fill ``{{name}}`` in the tune's prompts."""
    async with astria_api.client() as client:
        form = await client.post(
            "/tunes",
            files=registration(
                "order-3",
                "woman",
                ("tune[characteristics][eye_color]", "green eyes"),
                ("tune[characteristics][hair]", "red curly hair"),
            ),
        )
        assert form.status_code == 201, form.text
        tune = form.json()
        assert tune["characteristics"] == {"eye_color": "green eyes", "hair": "red curly hair"}
        assert not any("characteristics" in w for w in tune.get("warnings", []))
        assert (await client.get(f"/tunes/{tune['id']}")).json()["characteristics"] == tune["characteristics"]
        prompt = await client.post(
            f"/tunes/{tune['id']}/prompts",
            json={"prompt": {"text": "portrait of ohwx woman, {{hair}}, {{eye_color}}", "w": 256, "h": 256}},
        )
        assert prompt.status_code == 201, prompt.text
        assert prompt.json()["text"] == "portrait of ohwx woman, {{hair}}, {{eye_color}}"  # as written
        job = (await client.get(f"/v1/jobs/{prompt.json()['id']}")).json()
        assert "ohwx woman, red curly hair, green eyes" in job["parsed"]["base_effective_prompt"]
        unknown = await client.post(
            f"/tunes/{tune['id']}/prompts", json={"prompt": {"text": "ohwx woman, {{freckles}}"}}
        )
        assert unknown.status_code == 422 and "{{freckles}}" in unknown.json()["errors"]["prompt[text]"][0]

        as_json = await client.post(
            "/tunes",
            json={
                "tune": {
                    "title": "order-4",
                    "name": "man",
                    "weights_url": "",
                    "characteristics": {"beard": "short beard", "bad name": "x"},
                }
            },
        )
        assert as_json.status_code == 422
        errors = as_json.json()["errors"]
        assert "tune[weights]" in errors  # no weights: refused before the gateway is asked
        bad_name = await client.post(
            "/tunes",
            files=registration(
                "order-5",
                "man",
                ("tune[characteristics][bad name]", "x"),
                ("tune[characteristics][beard]", "y" * 300),
            ),
        )
        assert bad_name.status_code == 422, bad_name.text
        assert set(bad_name.json()["errors"]) == {"tune[characteristics]", "tune[characteristics][beard]"}
        not_object = await client.post(
            "/tunes", json={"tune": {"title": "t", "name": "man", "characteristics": ["beard"]}}
        )
        assert not_object.status_code == 422 and "tune[characteristics]" in not_object.json()["errors"]


async def test_patch_tune_changes_title_name_and_characteristics(astria_api):
    async with astria_api.client() as client:
        created = await client.post(
            "/tunes",
            files=registration("order-6", "woman", ("tune[characteristics][eye_color]", "green eyes")),
        )
        tune = created.json()
        patched = await client.patch(
            f"/tunes/{tune['id']}",
            json={"tune": {"title": "Anna", "characteristics": {"hair": "red hair"}, "token": "zzz"}},
        )
        assert patched.status_code == 200, patched.text
        body = patched.json()
        assert body["title"] == "Anna" and body["name"] == "woman" and body["token"] == tune["token"]
        assert body["characteristics"] == {"hair": "red hair"}  # replaced as a whole
        assert any("tune[token] ignored" in w for w in body["warnings"])
        assert (await client.get(f"/tunes/{tune['id']}")).json()["title"] == "Anna"
        assert tune["updated_at"] == tune["created_at"] and body["created_at"] == tune["created_at"]
        assert body["updated_at"] > tune["updated_at"]  # ISO 8601 UTC times compare as text
        form = await client.patch(f"/tunes/{tune['id']}", data={"tune[name]": "man"})
        assert form.status_code == 200 and form.json()["name"] == "man", form.text
        bad = await client.patch(
            f"/tunes/{tune['id']}", json={"tune": {"name": "Dog!", "characteristics": {"hair": "x" * 300}}}
        )
        assert bad.status_code == 422
        assert set(bad.json()["errors"]) == {"tune[name]", "tune[characteristics][hair]"}, bad.text
        nothing = await client.patch(f"/tunes/{tune['id']}", json={"tune": {"branch": "sdxl1"}})
        assert nothing.status_code == 422 and "tune" in nothing.json()["errors"], nothing.text
        missing = await client.patch("/tunes/999999", json={"tune": {"title": "x"}})
        assert missing.status_code == 404
    async with astria_api.client(key="") as anonymous:
        refused = await anonymous.patch(f"/tunes/{tune['id']}", json={"tune": {"name": "Dog!"}})
        assert refused.status_code == 401, refused.text


async def test_prompts_attributes_are_created_on_the_registered_tune(astria_api):
    """Astria clients send the tune's first prompts with it (``prompts_attributes``, queued until the end of
    training there); here the weights are registered at once, so they are submitted at once."""
    async with astria_api.client() as client:
        created = await client.post(
            "/tunes",
            files=registration(
                "order-7",
                "woman",
                ("tune[characteristics][hair]", "red hair"),
                ("tune[prompts_attributes][][text]", "portrait of ohwx woman, {{hair}}"),
                ("tune[prompts_attributes][][w]", "256"),
                ("tune[prompts_attributes][][h]", "256"),
                ("tune[prompts_attributes][][text]", "ohwx woman at the beach"),
                ("tune[prompts_attributes][][steps]", "99"),
            ),
        )
        assert created.status_code == 201, created.text
        tune = created.json()
        (prompt,) = tune["prompts"]  # the second one asks 99 steps: refused, named in a warning
        assert prompt["tune_id"] == tune["id"] and prompt["text"] == "portrait of ohwx woman, {{hair}}"
        assert any(
            w.startswith("tune[prompts_attributes][1] not created") and "steps" in w for w in tune["warnings"]
        )
        job = (await client.get(f"/v1/jobs/{prompt['id']}")).json()
        assert "ohwx woman, red hair" in job["parsed"]["base_effective_prompt"]
        listed = (await client.get(f"/tunes/{tune['id']}/prompts")).json()
        assert [p["id"] for p in listed] == [prompt["id"]]

        as_json = await client.post(
            "/tunes",
            json={
                "tune": {
                    "title": "order-8",
                    "name": "man",
                    "weights_url": "https://example.invalid/lora.safetensors",
                    "prompts_attributes": "not a list",
                }
            },
        )
        assert as_json.status_code == 422 and "tune[prompts_attributes]" in as_json.json()["errors"]


async def test_tune_callback_is_posted_once_the_tune_is_registered(astria_api):
    """Astria's sample app waits for ``{"tune": {...}}`` at its tune callback before it lets users prompt;
    the weights are ready at registration, so the callback follows the answer, signed."""
    receiver = Receiver()
    try:
        async with astria_api.client() as client:
            created = await client.post(
                "/tunes",
                files=registration("order-9", "woman", ("tune[callback]", receiver.url)),
            )
            assert created.status_code == 201, created.text
            assert created.json()["callback"] == receiver.url
            refused = await client.post(
                "/tunes",
                files=registration("order-10", "woman", ("tune[callback]", "http://10.1.2.3/hook")),
            )
            assert refused.status_code == 422, refused.text
            assert "a private address" in refused.json()["errors"]["tune[callback]"][0]
        deadline = time.monotonic() + 10
        while not receiver.requests:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    finally:
        receiver.close()
    (headers, body), *more = receiver.requests
    assert not more
    assert verify(headers["X-Multipass-Signature"], body, tenant_key(SIGNING_KEY, astria_api.tenant))
    assert not verify(headers["X-Multipass-Signature"], body, SIGNING_KEY)
    assert headers["X-Multipass-Tune-Id"] == str(created.json()["id"])
    tune = json.loads(body)["tune"]
    assert tune["id"] == created.json()["id"] and tune["trained_at"] and tune["callback"] == receiver.url


@pytest.mark.parametrize("capabilities", [["pass:base", "pass:person", f"faceid:{MODEL}"]], ids=["faceid"])
async def test_a_faceid_tune_is_created_from_face_images_alone(astria_api):
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "tan").save(buffer, "PNG")
    async with astria_api.client() as client:
        created = await client.post(
            "/tunes",
            files=[
                ("tune[title]", (None, "order-11")),
                ("tune[name]", (None, "woman")),
                ("tune[model_type]", (None, "faceid")),
                ("tune[images][]", ("face.png", buffer.getvalue(), "image/png")),
            ],
        )
        assert created.status_code == 201, created.text
        tune = created.json()
        assert tune["model_type"] == "faceid" and tune["trained_at"]
        # The tune holds its copies of the faces; the uploads made for them are gone.
        store = astria_api.stack.store
        assert not await store.list_keys(BUCKET_JOBS, f"uploads/{astria_api.tenant}/")
        assert await store.list_keys(BUCKET_TUNES, f"tunes/{astria_api.tenant}/{tune['id']}/reference-")
        # orig_images: the faces it was made from, as links that need no API key (Astria's are public URLs).
        (link,) = tune["orig_images"]
        async with httpx.AsyncClient() as anyone:
            face = await anyone.get(link)
        assert face.status_code == 200 and Image.open(io.BytesIO(face.content)).size == (64, 64)
        assert len((await client.get(f"/tunes/{tune['id']}")).json()["orig_images"]) == 1
        no_images = await client.post(
            "/tunes", data={"tune[title]": "order-12", "tune[name]": "man", "tune[model_type]": "faceid"}
        )
        assert no_images.status_code == 422 and "tune[images][]" in no_images.json()["errors"]
        # A prompt under the tune applies it as <faceid:ID:1> (a <lora:...> tag of it is refused, saying why).
        prompt = await client.post(
            f"/tunes/{tune['id']}/prompts", json={"prompt": {"text": "ohwx woman", "w": 256, "h": 256}}
        )
        assert prompt.status_code == 201, prompt.text
        assert prompt.json()["text"] == "ohwx woman" and prompt.json()["tune_id"] == tune["id"]
        job = (await client.get(f"/v1/jobs/{prompt.json()['id']}")).json()
        assert job["prompt"] == f"<faceid:{tune['id']}:1> ohwx woman"
        as_lora = await client.post(
            "/tunes/1/prompts", json={"prompt": {"text": f"ohwx woman <lora:{tune['id']}:1>"}}
        )
        assert as_lora.status_code == 422 and f"<faceid:{tune['id']}:1>" in json.dumps(as_lora.json())


@pytest.mark.parametrize("astria_overrides", [{"astria_idempotency": True}], ids=["idempotent"])
async def test_account_idempotency_answers_repeats_with_the_first_tune_and_prompt(astria_api):
    async with astria_api.client() as client:
        first = await client.post("/tunes", files=registration("order-13", "woman"))
        again = await client.post("/tunes", files=registration("order-13", "woman"))
        assert first.status_code == again.status_code == 201, again.text
        assert again.json()["id"] == first.json()["id"]
        assert any("exists: answered with it" in w for w in again.json()["warnings"])
        other = await client.post("/tunes", files=registration("order-14", "woman"))
        assert other.json()["id"] != first.json()["id"]
        tune = first.json()["id"]

        body = {"prompt": {"text": "ohwx woman, portrait", "steps": 2, "w": 256, "h": 256, "seed": 7}}
        one = (await client.post(f"/tunes/{tune}/prompts", json=body)).json()
        two = (await client.post(f"/tunes/{tune}/prompts", json=body)).json()
        assert one["id"] == two["id"]
        # A field outside Astria's key (film grain) does not make it another prompt; a keyed one (seed) does.
        grain = {"prompt": {**body["prompt"], "film_grain": True}}
        assert (await client.post(f"/tunes/{tune}/prompts", json=grain)).json()["id"] == one["id"]
        seeded = {"prompt": {**body["prompt"], "seed": 8}}
        assert (await client.post(f"/tunes/{tune}/prompts", json=seeded)).json()["id"] != one["id"]
        # Another tune, the same fields: another prompt.
        elsewhere = (await client.post(f"/tunes/{other.json()['id']}/prompts", json=body)).json()
        assert elsewhere["id"] != one["id"]


async def test_without_account_idempotency_repeats_are_new_prompts(astria_api):
    async with astria_api.client() as client:
        tune = (await client.post("/tunes", files=registration("order-15", "woman"))).json()["id"]
        again = await client.post("/tunes", files=registration("order-15", "woman"))
        assert again.json()["id"] != tune
        body = {"prompt": {"text": "ohwx woman", "steps": 2, "w": 256, "h": 256, "seed": 7}}
        one = (await client.post(f"/tunes/{tune}/prompts", json=body)).json()
        two = (await client.post(f"/tunes/{tune}/prompts", json=body)).json()
        assert one["id"] != two["id"]


async def test_tune_image_urls_become_reference_faces(astria_api):
    """Astria clients send face photos as ``tune[image_urls][]``: fetched (safely) and kept with the tune."""
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "tan").save(buffer, "PNG")
    server = ImageServer(buffer.getvalue())
    try:
        async with astria_api.client() as client:
            created = await client.post(
                "/tunes",
                json={
                    "tune": {
                        "title": "order-16",
                        "name": "woman",
                        "model_type": "faceid",
                        "image_urls": [server.url, server.url],
                    }
                },
            )
            assert created.status_code == 201, created.text
            assert created.json()["model_type"] == "faceid"
            internal = await client.post(
                "/tunes",
                json={
                    "tune": {
                        "title": "order-17",
                        "name": "woman",
                        "model_type": "faceid",
                        "image_urls": ["http://10.9.8.7/face.png"],
                    }
                },
            )
            assert internal.status_code == 422 and "tune[image_urls][]" in internal.json()["errors"]
    finally:
        server.close()
    assert server.hits == 2
    tune = await astria_api.stack.tunes.GetTune(
        jobs_pb2.GetTuneRequest(tune_id=str(created.json()["id"])), metadata=bearer(astria_api.key)
    )
    assert len(tune.reference_images) == 2


async def test_bodies_no_protobuf_string_can_carry_are_422_naming_the_field_and_401_without_a_key(astria_api):
    """A lone UTF-16 surrogate (valid JSON, not valid Unicode) and JSON nested too deeply for the decoder:
    each a 422 naming where, on both API families; without a key, a 401 like any other bad request."""
    json_headers = {"Content-Type": "application/json"}
    surrogate = [
        ("POST", "/tunes/1/prompts", b'{"prompt": {"text": "a \\ud800 cat"}}', "prompt[text]"),
        ("POST", "/tunes", b'{"tune": {"title": "x\\udfff", "name": "man"}}', "tune[title]"),
        ("PATCH", "/tunes/1", b'{"tune": {"title": "\\ud800"}}', "tune[title]"),
        ("POST", "/v1/jobs", b'{"prompt": "a \\ud800 cat"}', "prompt"),
        ("POST", "/v1/jobs", b'{"prompt": "a cat", "params": {"steps": "\\ud800"}}', "params.steps"),
    ]
    deep = b"[" * 5_000
    async with astria_api.client() as client:
        for method, path, body, field in surrogate:
            answer = await client.request(method, path, content=body, headers=json_headers)
            assert answer.status_code == 422, (path, answer.text)
            assert field in answer.json()["errors"], (path, answer.text)
            assert "surrogate" in answer.text
        for path in ("/tunes/1/prompts", "/tunes", "/v1/jobs"):
            answer = await client.post(path, content=deep, headers=json_headers)
            assert answer.status_code == 422 and list(answer.json()["errors"]) == ["body"], (
                path,
                answer.text,
            )
        form = await client.post(
            "/tunes/1/prompts",
            content=b"prompt%5Btext%5D=a+%ED%A0%80+cat",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert form.status_code != 500, form.text
        # the service is still fine
        fine = await client.post("/tunes/1/prompts", data={"prompt[text]": "a cat", "prompt[steps]": "2"})
        assert fine.status_code == 201, fine.text
    async with astria_api.client("") as anonymous:
        for method, path, body, _field in surrogate:
            answer = await anonymous.request(method, path, content=body, headers=json_headers)
            assert answer.status_code == 401, (path, answer.text)
        for path in ("/tunes/1/prompts", "/tunes", "/v1/jobs"):
            assert (await anonymous.post(path, content=deep, headers=json_headers)).status_code == 401, path
