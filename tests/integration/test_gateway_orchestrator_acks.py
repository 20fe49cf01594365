"""The orchestrator acks pass events without waiting for the server's confirmation: an ack lost on the
way only makes the event come back after ack_wait, and applying it again changes nothing."""

from __future__ import annotations

import asyncio

import nats.aio.client
from gateway_support import (  # noqa: F401 - fixtures
    bearer,
    capabilities_fixture,
    segmentation_models_fixture,
    stack_fixture,
    wait_for_job,
)

from multipass import names
from multipass.v1 import jobs_pb2
from multipass_gateway.app import orchestrator

ACK_WAIT = 1.0
ORCHESTRATOR_ACKS = f"$JS.ACK.{names.STREAM_EVENTS}.{names.ORCHESTRATOR_DURABLE}."


async def two_person_job(stack, *, steps: int):
    """Start the gateway, run a two-person job to success; the tenant and the ended job."""
    await stack.start_gateway()
    tenant = await stack.tenant("acme")
    submitted = await stack.jobs.SubmitJob(
        jobs_pb2.SubmitJobRequest(
            prompt="a room BREAK photo BREAK ohwx woman BREAK ohwx man",
            params={"steps": str(steps), "w": "256", "h": "256"},
        ),
        metadata=bearer(tenant.api_key),
    )
    job = await wait_for_job(stack, submitted.job_id, tenant.api_key)
    assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED
    return tenant, job


async def test_lost_orchestrator_acks_only_cause_harmless_redeliveries(stack, monkeypatch):
    monkeypatch.setattr(orchestrator, "ACK_WAIT_SECONDS", ACK_WAIT)
    lost: list[str] = []
    seen: list[str] = []
    publish = nats.aio.client.Client.publish

    async def lossy_publish(self, subject, payload=b"", reply="", headers=None):
        # Every third unconfirmed ack of the orchestrator (up to 6) never reaches the server.
        if subject.startswith(ORCHESTRATOR_ACKS) and payload == b"+ACK" and not reply:
            seen.append(subject)
            if len(seen) % 3 == 0 and len(lost) < 6:
                lost.append(subject)
                return None
        return await publish(self, subject, payload, reply=reply, headers=headers)

    monkeypatch.setattr(nats.aio.client.Client, "publish", lossy_publish)
    tenant, job = await two_person_job(stack, steps=3)
    assert lost, "no orchestrator ack was dropped: the orchestrator confirms its acks"

    # The events whose acks were lost come back after ack_wait (delivery count 2+), are applied again
    # and acked. Ack subjects: $JS.ACK.<stream>.<durable>.<delivery count>.<stream seq>.<consumer seq>...
    def stream_seq(subject: str) -> str:
        return subject.split(".")[5]

    def redelivered_and_acked() -> bool:
        acked = {stream_seq(s) for s in seen if s not in lost and int(s.split(".")[4]) >= 2}
        return {stream_seq(s) for s in lost} <= acked

    for _ in range(150):
        if redelivered_and_acked():
            break
        await asyncio.sleep(0.1)
    assert redelivered_and_acked(), (lost, seen)
    for _ in range(50):  # the last ack travels on the gateway's connection, this reads on another
        state = await stack.bus.consumer_info(names.STREAM_EVENTS, names.ORCHESTRATOR_DURABLE)
        if state.num_ack_pending == 0 and state.num_pending == 0:
            break
        await asyncio.sleep(0.1)
    assert state.num_ack_pending == 0 and state.num_pending == 0, state
    again = await stack.jobs.GetJob(
        jobs_pb2.GetJobRequest(job_id=job.job_id), metadata=bearer(tenant.api_key)
    )
    assert again.state == jobs_pb2.JOB_STATE_SUCCEEDED
    assert again.last_sequence == job.last_sequence and again.updated_at == job.updated_at
    assert [image.passes for image in again.images] == [image.passes for image in job.images]


async def test_the_segment_steps_completion_is_applied_where_it_was_published_and_only_once(
    stack, monkeypatch
):
    applied: list[tuple[str, str]] = []
    apply_batch = orchestrator.Orchestrator._apply_batch

    async def recording(self, events):
        applied.extend((e.pass_name, e.WhichOneof("event")) for e in events)
        return await apply_batch(self, events)

    monkeypatch.setattr(orchestrator.Orchestrator, "_apply_batch", recording)
    _tenant, job = await two_person_job(stack, steps=2)
    for _ in range(50):  # the stream's delivery of the event is acknowledged, not applied again
        state = await stack.bus.consumer_info(names.STREAM_EVENTS, names.ORCHESTRATOR_DURABLE)
        if state.num_ack_pending == 0 and state.num_pending == 0:
            break
        await asyncio.sleep(0.1)
    assert state.num_ack_pending == 0 and state.num_pending == 0, state
    assert applied.count(("segment", "completed")) == 1, applied
    assert applied.count(("base", "completed")) == 1  # a worker's event: applied from the stream, once
    (segment,) = [p for p in job.images[0].passes if p.name == "segment"]
    assert segment.status == jobs_pb2.PASS_STATUS_COMPLETED and segment.started_at.seconds > 0
