"""Worker decisions without servers: transient faults nak with backoff, the last delivery terms."""

from __future__ import annotations

import pytest
from diffusion_testkit import SD15_MODEL, pass_delivery, spec

from multipass.bus import Delivery, Nak, Term
from multipass.errors import Unavailable
from multipass.v1 import common_pb2, diffusion_pb2, events_pb2
from multipass_diffusion.worker import DiffusionWorker


class RecordingBus:
    def __init__(self):
        self.published: list[tuple[str, events_pb2.PassEvent, str]] = []

    async def publish(self, subject, message, *, msg_id):
        self.published.append((subject, message, msg_id))


class DownStore:
    async def get_image(self, ref, **kwargs):
        raise Unavailable(
            "object store at 127.0.0.1:9 unreachable (multipass-jobs/x.png): ConnectionRefusedError"
        )


def delivery(request: diffusion_pb2.PassRequest, num_delivered: int, max_deliver: int = 5) -> Delivery:
    return pass_delivery(request, num_delivered, max_deliver, msg_id="J9:0:base:0")


@pytest.fixture
def worker(engine, settings):
    from concurrent.futures import ThreadPoolExecutor

    executor = ThreadPoolExecutor(max_workers=1)
    yield DiffusionWorker(settings, engine, RecordingBus(), DownStore(), executor)
    executor.shutdown()


def request() -> diffusion_pb2.PassRequest:
    image = common_pb2.ImageRef(bucket="multipass-jobs", key="x.png")
    return diffusion_pb2.PassRequest(
        job_id="J9",
        tenant="t",
        pass_name="base",
        spec=spec(image=image, denoising_strength=0.5),
        output_bucket="multipass-jobs",
        output_key="o.png",
    )


async def test_unavailable_store_naks_with_growing_backoff(worker):
    first = await worker.handle(SD15_MODEL, delivery(request(), 1))
    second = await worker.handle(SD15_MODEL, delivery(request(), 3))
    assert first == Nak(1.0) and second == Nak(5.0)
    failed = [(m, i) for s, m, i in worker.bus.published if s.endswith(".failed")]
    assert [m.failed.retriable for m, _ in failed] == [True, True]
    assert failed[0][0].failed.error.code == common_pb2.ERROR_CODE_UNAVAILABLE
    assert [i for _, i in failed] == ["J9:0:base:0:failed:retry1", "J9:0:base:0:failed:retry3"]


async def test_the_last_delivery_terms_with_a_final_failed_event(worker):
    decision = await worker.handle(SD15_MODEL, delivery(request(), 5, max_deliver=5))
    assert isinstance(decision, Term) and decision.reason.startswith("UNAVAILABLE")
    subject, message, msg_id = worker.bus.published[-1]
    assert subject == "multipass.events.J9.failed" and msg_id == "J9:0:base:0:failed"
    assert not message.failed.retriable and message.failed.error.pass_name == "base"


async def test_a_cancel_before_the_pass_starts_terms_it(worker):
    class Msg:
        subject = "multipass.cancel.J9"

    await worker._on_cancel(Msg())
    decision = await worker.handle(SD15_MODEL, delivery(request(), 1))
    assert isinstance(decision, Term)
    assert worker.bus.published[-1][1].failed.error.code == common_pb2.ERROR_CODE_CANCELLED


async def test_the_failure_line_carries_job_tenant_and_pass(worker):
    """One job is followed across services by job_id, tenant and pass on every line a pass writes."""
    import json
    import logging

    from multipass.logs import JsonFormatter

    lines: list[dict] = []

    class Lines(logging.Handler):
        def emit(self, record):
            lines.append(json.loads(JsonFormatter("diffusion").format(record)))

    handler = Lines()
    logger = logging.getLogger("multipass_diffusion.worker")
    logger.addHandler(handler)
    try:
        await worker.handle(SD15_MODEL, delivery(request(), 1))
    finally:
        logger.removeHandler(handler)
    (line,) = [line for line in lines if line["message"] == "pass failed; nak"]
    assert (line["job_id"], line["tenant"], line["pass"]) == ("J9", "t", "base")
