"""Every pass a worker gives up on is counted in ``multipass_passes_total``, once, whatever failed.

The pass failure ratio (dashboard and ``MultipassPassFailureRatioHigh``) reads this counter, so a pass
that fails before the engine runs (an input or tune that cannot be read, a tune file that no longer
matches its reference, a cancel before the device turn) must count as much as one that fails inside it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from diffusion_testkit import SD15_MODEL, pass_delivery, spec

from multipass.bus import Delivery, Nak, Term
from multipass.errors import FailedPrecondition, Unavailable
from multipass.v1 import common_pb2, diffusion_pb2
from multipass_diffusion import metrics
from multipass_diffusion.worker import DiffusionWorker


class NullBus:
    async def publish(self, subject, message, *, msg_id):
        return None


class FailingStore:
    """Every read fails with the error it is given."""

    def __init__(self, error: Exception):
        self.error = error

    async def get_image(self, ref, **kwargs):
        raise self.error


def delivery(request: diffusion_pb2.PassRequest, num_delivered: int, max_deliver: int = 5) -> Delivery:
    return pass_delivery(request, num_delivered, max_deliver, msg_id="J7:0:hires:1")


def request(**spec_fields) -> diffusion_pb2.PassRequest:
    return diffusion_pb2.PassRequest(
        job_id="J7",
        tenant="t",
        pass_name="hires",
        spec=spec(kind="hires", **spec_fields),
        output_bucket="multipass-jobs",
        output_key="o.png",
    )


def with_input() -> dict:
    return {"image": common_pb2.ImageRef(bucket="multipass-jobs", key="x.png"), "denoising_strength": 0.5}


def counted() -> dict[str, float]:
    return {
        outcome: metrics.PASSES.labels(pass_kind="hires", outcome=outcome)._value.get()
        for outcome in ("succeeded", "failed", "cancelled", "retried")
    }


@pytest.fixture
def make_worker(engine, settings):
    executor = ThreadPoolExecutor(max_workers=1)

    def make(store) -> DiffusionWorker:
        return DiffusionWorker(settings, engine, NullBus(), store, executor)

    yield make
    executor.shutdown()


def grew(before: dict[str, float]) -> dict[str, float]:
    return {
        outcome: value - before[outcome] for outcome, value in counted().items() if value != before[outcome]
    }


async def test_an_input_that_does_not_match_its_reference_counts_as_failed(make_worker):
    worker = make_worker(
        FailingStore(FailedPrecondition("multipass-jobs/x.png does not match its reference"))
    )
    before = counted()
    decision = await worker.handle(SD15_MODEL, delivery(request(**with_input()), 1))
    assert isinstance(decision, Term)
    assert grew(before) == {"failed": 1}


async def test_an_unreachable_store_counts_as_retried_then_failed_on_the_last_delivery(make_worker):
    worker = make_worker(FailingStore(Unavailable("object store at 127.0.0.1:9 unreachable")))
    before = counted()
    assert isinstance(await worker.handle(SD15_MODEL, delivery(request(**with_input()), 1)), Nak)
    assert grew(before) == {"retried": 1}
    assert isinstance(await worker.handle(SD15_MODEL, delivery(request(**with_input()), 5)), Term)
    assert grew(before) == {"retried": 1, "failed": 1}


async def test_a_cancel_before_the_device_turn_counts_as_cancelled(make_worker):
    class Msg:
        subject = "multipass.cancel.J7"

    worker = make_worker(FailingStore(AssertionError("no read expected")))
    await worker._on_cancel(Msg())
    before = counted()
    assert isinstance(await worker.handle(SD15_MODEL, delivery(request(), 1)), Term)
    assert grew(before) == {"cancelled": 1}


async def test_a_pass_the_engine_refuses_counts_once(make_worker):
    worker = make_worker(FailingStore(AssertionError("no read expected")))
    before = counted()
    # hires without an input image: refused by the pass's own validation, inside the engine
    assert isinstance(await worker.handle(SD15_MODEL, delivery(request(), 1)), Term)
    assert grew(before) == {"failed": 1}


async def test_a_request_taken_again_counts_as_a_redelivery(make_worker):
    """``multipass_pass_redeliveries_total``: deliveries after the first (a nak'ed retry, a dead worker's
    pass), so passes run again show on the dashboard; a first delivery is not one."""
    worker = make_worker(FailingStore(Unavailable("object store at 127.0.0.1:9 unreachable")))
    redelivered = metrics.PASS_REDELIVERIES.labels(pass_kind="hires")
    before = redelivered._value.get()
    await worker.handle(SD15_MODEL, delivery(request(**with_input()), 1))
    assert redelivered._value.get() == before
    await worker.handle(SD15_MODEL, delivery(request(**with_input()), 2))
    await worker.handle(SD15_MODEL, delivery(request(**with_input()), 3))
    assert redelivered._value.get() == before + 2
