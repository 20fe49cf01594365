"""A worker heartbeats the pass it runs, so the short default ack wait is safe for long passes: a pass that
runs longer than the ack wait stays with its live worker, and after that worker is SIGKILLed the pass goes
to another worker within the ack wait (not the two minutes of a long ack wait).

One worker process with the default settings on a NATS server of its own (the ack wait is a property of the
shared consumer, so the cluster's workers, started with 5 s, must not share it); the test itself is the
"other worker" that takes the redelivered pass.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import pytest
from chaos_support import MODELS_ROOT, new_token, worker_process

from multipass import names
from multipass.bus import Bus
from multipass.bus.consume import HEARTBEATS_PER_ACK_WAIT
from multipass.v1 import diffusion_pb2, events_pb2
from multipass_dev.local import NatsServerProcess

pytestmark = pytest.mark.timeout(240)
#: Large and slow enough on the tiny model (one torch thread) to outlast the ack wait by far on any CPU.
LONG_PASS = {"steps": 150, "width": 768, "height": 768}


@pytest.fixture
def lone_nats(tmp_path):
    server = NatsServerProcess.start(tmp_path / "nats")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def default_worker(lone_nats, s3_server, tmp_path):
    """A worker process whose ack wait and heartbeats are the defaults (no MULTIPASS_DIFFUSION_ACK_WAIT_S)."""
    from multipass_dev.tiny_models import build_tiny_models

    build_tiny_models(MODELS_ROOT)
    s3_server.resume()
    if not s3_server.running:
        s3_server.restart()
    worker = worker_process("lone", tmp_path, lone_nats.url, s3_server.endpoint, new_token(), ack_wait=None)
    worker.spawn()
    try:
        worker.wait_serving(180)
        yield worker
    finally:
        worker.stop()


async def test_a_long_pass_stays_with_its_live_worker_and_comes_back_soon_after_it_dies(
    lone_nats, default_worker
):
    from multipass_dev.tiny_models.diffusion import SD15_MODEL

    bus = await Bus.connect(lone_nats.url, name="heartbeat-test")
    try:
        durable = names.diffusion_durable(SD15_MODEL)
        config = (await bus.js.consumer_info(names.STREAM_PASSES, durable)).config
        ack_wait = float(config.ack_wait)
        assert 5.0 <= ack_wait <= 15.0, f"the worker's default ack wait is {ack_wait} s"

        started: list[float] = []
        progress: list[int] = []
        completed: list[str] = []

        async def on_event(msg) -> None:
            event = events_pb2.PassEvent()
            event.ParseFromString(msg.data)
            kind = event.WhichOneof("event")
            if kind == "started":
                started.append(time.monotonic())
            elif kind == "progress":
                progress.append(event.progress.step)
            elif kind in ("completed", "failed"):
                completed.append(kind)

        await bus.subscribe_core(f"{names.EVENTS_PREFIX}.HB1.>", on_event)
        request = diffusion_pb2.PassRequest(
            job_id="HB1",
            tenant="t1",
            image_index=0,
            pass_name="base",
            attempt=1,
            spec=diffusion_pb2.PassSpec(
                kind="base", model=SD15_MODEL, prompt="a long exposure", seed=1, cfg_scale=5.0, **LONG_PASS
            ),
            output_bucket=names.BUCKET_JOBS,
            output_key="jobs/t1/HB1/image-0/base.png",
        )
        await bus.publish(
            names.diffusion_pass_subject(SD15_MODEL), request, msg_id=names.pass_msg_id("HB1", 0, "base", 1)
        )
        async with asyncio.timeout(60):
            while not progress:
                await asyncio.sleep(0.1)

        # Alive: the pass runs past the ack wait (and a margin) without being handed to anyone else.
        await asyncio.sleep(ack_wait + 3.0 - (time.monotonic() - started[0]))
        running_for = time.monotonic() - started[0]
        state = await bus.consumer_info(names.STREAM_PASSES, durable)
        assert not completed, "the pass ended before it outlasted the ack wait: make LONG_PASS longer"
        assert (state.num_redelivered, state.num_ack_pending, len(started)) == (0, 1, 1), state
        steps_before_kill = max(progress)

        # Dead: SIGKILL (no nak, no goodbye); the pass is redelivered within the ack wait.
        default_worker.kill()
        killed_at = time.monotonic()
        other = await bus.js.pull_subscribe_bind(durable=durable, stream=names.STREAM_PASSES)
        try:
            (msg,) = await other.fetch(1, timeout=ack_wait + 10.0)
            redelivered_after = time.monotonic() - killed_at
            taken = diffusion_pb2.PassRequest()
            taken.ParseFromString(msg.data)
            assert (taken.job_id, taken.pass_name, msg.metadata.num_delivered) == ("HB1", "base", 2)
            await msg.ack()
        finally:
            await other.unsubscribe()
        heartbeat = ack_wait / HEARTBEATS_PER_ACK_WAIT
        # At most one ack wait after the last heartbeat, which came at most one heartbeat before the kill.
        assert ack_wait - heartbeat - 1.0 <= redelivered_after <= ack_wait + 2.0, redelivered_after
    finally:
        await bus.close()
    figures = {
        "ack_wait_s": ack_wait,
        "heartbeat_s": round(heartbeat, 1),
        "pass_ran_alive_s": round(running_for, 1),
        "steps_before_kill": steps_before_kill,
        "redelivered_after_kill_s": round(redelivered_after, 1),
    }
    print(f"RELIABILITY heartbeats {json.dumps(figures, sort_keys=True)}", file=sys.stderr)
