"""Our job API over HTTP against a real gateway: submit, get, list, cancel, files and zip, the event
stream (Server-Sent Events, resumable), OpenAPI, metrics by route template, and every refusal as a
precise 4xx (never a 500)."""

from __future__ import annotations

import asyncio
import io
import json
import zipfile

import pytest
from gateway_support import (  # noqa: F401 - fixtures
    capabilities_fixture,
    segmentation_models_fixture,
    stack_fixture,
)
from http_api_support import http_api_fixture, http_api_overrides_fixture  # noqa: F401 - fixtures
from PIL import Image
from prometheus_client import REGISTRY

TWO_PERSONS = "a room BREAK BREAK ohwx woman BREAK ohwx man"
SMALL = {"steps": 2, "w": 256, "h": 256}


def parse_sse(text: str) -> list[dict]:
    """Events of a text/event-stream body: id, event, data (decoded JSON); comments counted apart."""
    events = []
    for block in text.split("\n\n"):
        fields: dict = {}
        for line in block.splitlines():
            if line.startswith(":"):
                fields.setdefault("comments", 0)
                fields["comments"] += 1
                continue
            name, _, value = line.partition(": ")
            fields[name] = value
        if "data" in fields:
            fields["data"] = json.loads(fields["data"])
            events.append(fields)
        elif fields:
            events.append(fields)
    return events


async def read_events(
    client, job_id: str, headers: dict | None = None, params: dict | None = None
) -> list[dict]:
    async with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers, params=params) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        body = (await response.aread()).decode()
    return parse_sse(body)


async def submit(client, **body) -> str:
    response = await client.post("/v1/jobs", json=body)
    assert response.status_code == 201, response.text
    return response.json()["job_id"]


async def test_submit_watch_get_list_files_and_zip(http_api):
    async with http_api.client() as client:
        job_id = await submit(client, prompt=TWO_PERSONS, params=SMALL, seed=7)
        events = [e for e in await read_events(client, job_id) if "event" in e]
        kinds = [e["event"] for e in events]
        assert kinds[0] == "accepted" and kinds[-1] == "finished"
        sequences = [int(e["id"]) for e in events]
        assert sequences == list(range(1, len(events) + 1))
        completed = {
            e["data"]["pass_completed"]["pass_name"]: e for e in events if e["event"] == "pass_completed"
        }
        assert {"base", "segment", "person-0", "person-1"} <= set(completed)
        mask_files = [f for f in completed["segment"]["data"]["files"] if f["kind"] == "mask"]
        assert {f["mask"] for f in mask_files} >= {"person-0", "person-1"}
        assert events[-1]["data"]["finished"]["state"] == "JOB_STATE_SUCCEEDED"

        job = (await client.get(f"/v1/jobs/{job_id}")).json()
        assert job["job_id"] == job_id and job["state"] == "JOB_STATE_SUCCEEDED"
        assert job["images"][0]["seed"] == 7 and job["images"][0]["url"].startswith("http")
        names = {f["name"] for f in job["files"]}
        assert {"base", "person-0", "person-1", "mask-person-0", "mask-person-1", "final"} <= names

        base_url = completed["base"]["data"]["files"][0]["url"]
        image = await client.get(base_url)
        assert image.status_code == 200 and image.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(image.content)).size == (256, 256)

        listed = (await client.get("/v1/jobs", params={"state": "JOB_STATE_SUCCEEDED"})).json()
        assert job_id in [j["job_id"] for j in listed["jobs"]]
        keyed = await submit(client, prompt="a lighthouse", params=SMALL, idempotency_key="shop-42-order-1")
        by_key = (await client.get("/v1/jobs", params={"idempotency_key_prefix": "shop-42-"})).json()
        assert [j["job_id"] for j in by_key["jobs"]] == [keyed]
        too_long = await client.get("/v1/jobs", params={"idempotency_key_prefix": "k" * 129})
        assert too_long.status_code == 422 and "idempotency_key_prefix" in too_long.text

        archive = await client.get(f"/v1/jobs/{job_id}/archive.zip")
        assert archive.status_code == 200 and archive.headers["content-type"] == "application/zip"
        with zipfile.ZipFile(io.BytesIO(archive.content)) as zipped:
            members = set(zipped.namelist())
            assert json.loads(zipped.read("job.json"))["job_id"] == job_id
        assert {"image-0/final.png", "image-0/mask-person-1.png", "image-0/base.png"} <= members

        cancelled = (await client.delete(f"/v1/jobs/{job_id}")).json()
        assert cancelled["cancelled"] is False

        purged = await client.delete(f"/v1/jobs/{job_id}", params={"purge": "true"})
        assert purged.status_code == 200 and purged.json()["deleted"] is True, purged.text
        assert purged.json()["objects_deleted"] >= 3 and purged.json()["state"] == "JOB_STATE_SUCCEEDED"
        for gone in (
            f"/v1/jobs/{job_id}",
            f"/v1/jobs/{job_id}/files/0/final.png",
            f"/v1/jobs/{job_id}/archive.zip",
        ):
            assert (await client.get(gone)).status_code == 404, gone


async def test_event_stream_resumes_after_last_event_id_and_from_seq(http_api):
    async with http_api.client() as client:
        job_id = await submit(client, prompt="a cat", params=SMALL)
        everything = [e for e in await read_events(client, job_id) if "event" in e]
        assert len(everything) > 4
        resumed = [
            e for e in await read_events(client, job_id, headers={"Last-Event-ID": "3"}) if "event" in e
        ]
        assert [int(e["id"]) for e in resumed] == [int(e["id"]) for e in everything[3:]]
        by_query = [e for e in await read_events(client, job_id, params={"from_seq": 4}) if "event" in e]
        assert [int(e["id"]) for e in by_query] == [int(e["id"]) for e in everything[4:]]
        # After the last event of a finished job there is nothing more: the stream ends at once.
        last = everything[-1]["id"]
        assert [
            e for e in await read_events(client, job_id, headers={"Last-Event-ID": last}) if "event" in e
        ] == []
        bad = await client.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": "x1"})
        assert bad.status_code == 422 and "Last-Event-ID" in bad.json()["errors"]


async def test_event_stream_sends_heartbeats_while_the_job_waits(http_api):
    http_api.stack.worker.gate.clear()  # the worker holds every pass until the gate opens
    async with http_api.client() as client:
        job_id = await submit(client, prompt="a cat", params=SMALL)
        chunks = []
        async with client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
            async for chunk in response.aiter_text():
                chunks.append(chunk)
                if sum(c.count(": heartbeat") for c in chunks) >= 2:
                    http_api.stack.worker.gate.set()
        events = parse_sse("".join(chunks))
        assert sum(e.get("comments", 0) for e in events) >= 2
        assert [e for e in events if "event" in e][-1]["event"] == "finished"


async def test_refusals_are_precise_and_never_500(http_api):
    async with http_api.client(key="") as anonymous:
        response = await anonymous.get("/v1/jobs")
        assert response.status_code == 401 and response.json()["error"]
        # Who is asking comes before what is asked: no key is a 401 even for a request that is also bad.
        for bad_anonymous in (
            anonymous.get("/v1/jobs", params={"page_size": 0}),
            anonymous.get("/v1/jobs/x/files/99/base.png"),
            anonymous.post("/v1/jobs", json={"prompt": "x", "bogus": 1}),
        ):
            refused = await bad_anonymous
            assert refused.status_code == 401, refused.text
            assert refused.headers["X-Multipass-Error-Reason"] == "API_KEY_MISSING"
    async with http_api.client(key="mpk_0123456789abcdef_" + "x" * 43) as wrong:
        assert (await wrong.post("/v1/jobs", json={"prompt": "a cat"})).status_code == 401
    other = await http_api.stack.tenant("other")
    async with http_api.client() as client, http_api.client(key=other.api_key) as intruder:
        bad = await client.post(
            "/v1/jobs", json={"prompt": "a cat", "num_images": 99, "params": {"steps": 2}}
        )
        assert bad.status_code == 422
        body = bad.json()
        assert "num_images" in body["errors"] and "99" in json.dumps(body["errors"]), body
        assert "invalid num_images:" in body["error"] and "params.num_images" not in body["error"]

        unknown = await client.post("/v1/jobs", json={"prompt": "a cat", "colour": "red"})
        assert unknown.status_code == 422 and "colour" in unknown.json()["errors"]
        missing = await client.post("/v1/jobs", json={"params": {}})
        assert missing.status_code == 422 and "prompt" in missing.json()["errors"]
        broken = await client.post(
            "/v1/jobs", content=b"{not json", headers={"Content-Type": "application/json"}
        )
        assert broken.status_code == 422 and list(broken.json()["errors"]) == ["body"], broken.text
        for wrong_type in (None, [1]):
            typed = await client.post("/v1/jobs", json={"prompt": "a cat", "params": {"steps": wrong_type}})
            assert typed.status_code == 422 and list(typed.json()["errors"]) == ["params.steps"], typed.text
        bad_state = await client.get("/v1/jobs", params={"state": "DONE"})
        assert bad_state.status_code == 422 and "state" in bad_state.json()["errors"]
        bad_size = await client.get("/v1/jobs", params={"page_size": 1000})
        assert bad_size.status_code == 422 and "page_size" in bad_size.json()["errors"]

        job_id = await submit(client, prompt="a cat", params=SMALL)
        await read_events(client, job_id)
        for path in (
            f"/v1/jobs/{job_id}",
            f"/v1/jobs/{job_id}/events",
            f"/v1/jobs/{job_id}/files/0/final.png",
            f"/v1/jobs/{job_id}/archive.zip",
        ):
            assert (await intruder.get(path)).status_code == 404, path
        assert (await intruder.delete(f"/v1/jobs/{job_id}")).status_code == 404
        assert (await client.get(f"/v1/jobs/{job_id}/files/0/nothing.png")).status_code == 404
        assert (await client.get("/v1/jobs/no-such-job")).status_code == 404
        assert (await client.get("/nowhere")).status_code == 404


@pytest.mark.parametrize("http_api_overrides", [{"max_body_bytes": 4096}])
async def test_oversized_bodies_are_refused_with_413(http_api):
    async with http_api.client() as client:
        declared = await client.post("/v1/jobs", json={"prompt": "a cat " * 2000})
        assert declared.status_code == 413 and "4096" in declared.json()["error"]

        async def chunks():
            for _ in range(10):
                yield b'{"prompt": "' + b"a" * 1000

        streamed = await client.post(
            "/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert streamed.status_code == 413
        # Nothing was submitted.
        assert (await client.get("/v1/jobs")).json()["jobs"] == []


async def test_openapi_describes_every_route_and_metrics_use_templates(http_api):
    async with http_api.client() as client:
        document = (await client.get("/openapi.json")).json()
        paths = document["paths"]
        assert {"post", "get"} <= set(paths["/v1/jobs"])
        assert {"get", "delete"} <= set(paths["/v1/jobs/{job_id}"])
        assert "text/event-stream" in paths["/v1/jobs/{job_id}/events"]["get"]["responses"]["200"]["content"]
        assert "/v1/jobs/{job_id}/archive.zip" in paths
        assert "bearer" in json.dumps(document["components"]["securitySchemes"]).lower()
        # No viewer pages: FastAPI's load their scripts from a CDN onto the web page's origin.
        for viewer in ("/docs", "/redoc"):
            assert (await client.get(viewer)).status_code == 404, viewer
        await client.get("/v1/jobs/some-job-id")
        await client.get("/no/such/route")
    samples = {
        (s.labels["method"], s.labels["route"], s.labels["status"])
        for metric in REGISTRY.collect()
        if metric.name == "multipass_http_requests"
        for s in metric.samples
        if s.name == "multipass_http_requests_total"
    }
    assert ("GET", "/v1/jobs/{job_id}", "404") in samples
    assert ("GET", "<unmatched>", "404") in samples
    assert not any("some-job-id" in route for _m, route, _s in samples)


async def test_an_unreachable_gateway_is_503_without_internal_addresses(http_api):
    await http_api.stack.stop_gateway()
    async with http_api.client() as client:
        response = await client.get("/v1/jobs")
    assert response.status_code == 503
    assert response.json() == {"error": "the service is unavailable; retry later"}


async def test_uploads_over_http_feed_jobs_and_are_deleted_by_their_owner(http_api):
    picture = io.BytesIO()
    Image.new("RGB", (320, 240), (90, 140, 200)).save(picture, "JPEG")
    async with http_api.client() as client:
        raw = await client.post(
            "/v1/uploads",
            content=picture.getvalue(),
            headers={"Content-Type": "image/jpeg", "X-Filename": "a.jpg"},
        )
        assert raw.status_code == 201, raw.text
        uploaded = raw.json()
        assert len(uploaded["image_id"]) == 24 and (uploaded["width"], uploaded["height"]) == (320, 240)
        assert uploaded["expires_at"].endswith("Z")
        form = await client.post("/v1/uploads", files={"file": ("m.png", picture.getvalue(), "image/jpeg")})
        assert form.status_code == 201, form.text
        job_id = await submit(
            client, prompt="BREAK BREAK ohwx woman", params=SMALL, input_image_id=uploaded["image_id"]
        )
        # Refusals name this request's field, never the gRPC one.
        not_image = await client.post("/v1/uploads", content=b"<html>", headers={"Content-Type": "image/png"})
        assert not_image.status_code == 422 and "body" in not_image.json()["errors"]
        wrong_type = await client.post(
            "/v1/uploads", content=b"{}", headers={"Content-Type": "application/json"}
        )
        assert wrong_type.status_code == 422 and "body" in wrong_type.json()["errors"]
        no_file = await client.post(
            "/v1/uploads", files={"image": ("m.png", picture.getvalue(), "image/jpeg")}
        )
        assert no_file.status_code == 422 and "file" in no_file.json()["errors"]
        # Another tenant cannot delete it; its owner can, once; the job has its own copy.
        other = await http_api.stack.tenant("other")
        async with http_api.client(key=other.api_key) as stranger:
            assert (await stranger.delete(f"/v1/uploads/{uploaded['image_id']}")).status_code == 404
        assert (await client.delete(f"/v1/uploads/{uploaded['image_id']}")).status_code == 204
        assert (await client.delete(f"/v1/uploads/{uploaded['image_id']}")).status_code == 404
        assert (await client.delete("/v1/uploads/not-an-id")).status_code == 422
        async with http_api.client(key="") as anonymous:
            assert (await anonymous.post("/v1/uploads", content=picture.getvalue())).status_code == 401
        for _ in range(300):
            job = (await client.get(f"/v1/jobs/{job_id}")).json()
            if job["state"] not in ("JOB_STATE_QUEUED", "JOB_STATE_RUNNING"):
                break
            await asyncio.sleep(0.1)
        assert job["state"] == "JOB_STATE_SUCCEEDED", job


async def test_what_a_json_client_reads_is_complete_and_what_it_sends_is_named(http_api):
    """Zero values are present (image 0 has ``index: 0``), short state names and ``page_size=0`` work,
    the ``Idempotency-Key`` header is the body's key, an unknown tune in the text is the body's fault (422),
    and wrong values are answered with what was sent and what is allowed."""
    async with http_api.client() as client:
        job_id = await submit(client, prompt="a cat", params=SMALL)
        events = await read_events(client, job_id)
        completed = [e["data"] for e in events if e.get("event") == "pass_completed"]
        assert completed and all(data["pass_completed"]["image_index"] == 0 for data in completed), completed
        job = (await client.get(f"/v1/jobs/{job_id}")).json()
        assert job["images"][0]["index"] == 0, job["images"][0]

        listed = await client.get("/v1/jobs", params={"state": ["succeeded"], "page_size": 0})
        assert listed.status_code == 200, listed.text
        assert job_id in [j["job_id"] for j in listed.json()["jobs"]]
        assert (await client.get("/v1/jobs", params={"state": "JOB_STATE_SUCCEEDED"})).status_code == 200
        unknown_state = await client.get("/v1/jobs", params={"state": "done"})
        assert unknown_state.status_code == 422 and "succeeded" in unknown_state.json()["errors"]["state"][0]

        headers = {"Idempotency-Key": "order-77"}
        first = await client.post("/v1/jobs", json={"prompt": "a cat", "params": SMALL}, headers=headers)
        again = await client.post("/v1/jobs", json={"prompt": "a cat", "params": SMALL}, headers=headers)
        assert first.status_code == again.status_code == 201, again.text
        assert again.json()["job_id"] == first.json()["job_id"] and again.json()["existing"]
        both = await client.post(
            "/v1/jobs", json={"prompt": "a cat", "idempotency_key": "other"}, headers=headers
        )
        assert both.status_code == 422 and "Idempotency-Key" in both.json()["errors"], both.text

        tagged = await client.post("/v1/jobs", json={"prompt": "a room <lora:999999:1>", "params": SMALL})
        assert tagged.status_code == 422, tagged.text
        empty = await client.post("/v1/jobs", json={"prompt": "", "params": SMALL})
        assert empty.status_code == 422 and list(empty.json()["errors"]) == ["prompt"], empty.text

        typed = await client.post("/v1/jobs", json={"prompt": "a cat", "params": {"steps": None}})
        assert typed.json()["errors"] == {
            "params.steps": ["got null; expected a string, an integer, a number or a boolean"]
        }
        big = await client.get("/v1/jobs", params={"page_size": 1000})
        assert big.json()["errors"] == {"page_size": ['got "1000"; allowed: at most 100']}, big.text
