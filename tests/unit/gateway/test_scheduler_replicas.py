"""Two schedulers (replicas) on one nats-server: notes keep their mirrors current, KV stays the truth."""

from __future__ import annotations

import asyncio

from multipass import names
from multipass.v1 import diffusion_pb2, events_pb2
from multipass_gateway.domain.scheduling import PassKey
from multipass_gateway.infra.pass_scheduler import PassScheduler
from multipass_gateway.infra.replica_notes import ReplicaNotes


def request(job: str, image: int = 0) -> events_pb2.OutboxRequest:
    pass_request = diffusion_pb2.PassRequest(
        job_id=job, tenant="t", image_index=image, pass_name="base", attempt=1
    )
    return events_pb2.OutboxRequest(
        subject=names.diffusion_pass_subject("sd15-tiny"),
        msg_id=f"{job}:{image}:base:1",
        request=pass_request,
    )


async def eventually(predicate, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    assert predicate()


async def replica(bus, **limits) -> PassScheduler:
    notes = ReplicaNotes(bus)
    await notes.start()
    scheduler = PassScheduler(bus, await bus.kv(names.KV_JOBS), notes=notes, **limits)
    await scheduler.resync()
    return scheduler


async def test_each_replica_releases_its_own_passes_and_either_frees_the_slot(bus):
    await bus.ensure_topology()
    a = await replica(bus, tenant_limit=2, global_limit=2)
    b = await replica(bus, tenant_limit=2, global_limit=2)
    await a.enqueue("t", request("j1"))  # room, and nothing waits: released at once
    await a.enqueue("t", request("j2"))
    await a.enqueue("t", request("j3"))  # at the global bound: queued
    await eventually(lambda: len(b.mirror.flight) == 2 and len(b.mirror.ready) == 1)
    assert await b.release_once() == 0  # the global bound holds across replicas
    assert await a.release_once() == 0
    await b.enqueue("t", request("j4"))  # B's own pass queues behind A's: nothing overtakes
    assert len(b.mirror.flight) == 2 and PassKey("t", "j4", 0, "base", 1) in b.mirror.ready
    await b.withdraw("t", "j4", delete_released=False)

    # B saw the first pass end (it consumed the event): A's slot frees at once, through the note.
    await b.done(PassKey("t", "j1", 0, "base", 1))
    await eventually(lambda: len(a.mirror.flight) == 1)
    assert await b.release_once() == 0  # j3 is A's to release
    assert await a.release_once() == 1
    queues = await a.queues()  # KV agrees with the mirrors
    assert sorted(k.job_id for k in queues.flight) == ["j2", "j3"] and not queues.ready

    # A withdraws a job; B forgets it too; the flight marker's note arriving late does not revive it.
    await a.withdraw("t", "j2", delete_released=False)
    await eventually(lambda: PassKey("t", "j2", 0, "base", 1) not in b.mirror.flight)
    b.mirror.on_note("+", PassKey("t", "j3", 0, "base", 1).flight_key, "")
    await b.done(PassKey("t", "j3", 0, "base", 1))
    b.mirror.on_note("+", PassKey("t", "j3", 0, "base", 1).flight_key, "")  # overtaken note
    assert b.mirror.flight == set()
    await eventually(lambda: a.mirror.flight == set())
    assert (await a.queues()).flight == []


async def test_entries_of_a_replica_that_died_are_released_by_another(bus):
    await bus.ensure_topology()
    dead = await replica(bus, tenant_limit=1, global_limit=4)
    alive = await replica(bus, tenant_limit=4, global_limit=4)
    alive.resync_interval = 0.05  # orphans after two resync intervals
    await dead.enqueue("t", request("j0"))  # released at once
    await dead.enqueue("t", request("j1"))  # at the dead replica's tenant bound: queued
    await eventually(lambda: len(alive.mirror.ready) == 1)
    await dead.mirror.notes.stop()
    await asyncio.sleep(0.15)
    assert await alive.release_once() == 1
    assert [k.job_id for k in (await alive.queues()).flight] == ["j0", "j1"]
