"""Notes between replicas: batched per event-loop turn, none lost while one is being sent, own ones ignored."""

from __future__ import annotations

import asyncio

from multipass.bus import CoreMessage
from multipass_gateway.infra.replica_notes import SUBJECT, ReplicaNotes


class SlowBus:
    """Stands in for the bus: each core publish takes a moment, like a busy socket."""

    def __init__(self):
        self.sent: list[bytes] = []

    async def publish_core(self, subject: str, payload: bytes, *, flush: bool = True) -> None:
        assert subject == SUBJECT and not flush
        await asyncio.sleep(0.01)
        self.sent.append(payload)


def message(data: bytes) -> CoreMessage:
    return CoreMessage(SUBJECT, data, {})


async def test_notes_noted_while_sending_are_sent_too_and_peers_hear_each_line():
    sender = ReplicaNotes(SlowBus())  # type: ignore[arg-type]
    sender._subscription = object()  # type: ignore[assignment] - started, as far as sending goes
    sender.written("sched.ready.t.j1.0.base.1")
    sender.removed("sched.*.t.j0.0.base.1")
    await asyncio.sleep(0.005)  # the first message is on its way
    sender.written("active.t.j1", "4")
    for _ in range(50):
        if len(sender.bus.sent) == 2:
            break
        await asyncio.sleep(0.01)
    first, second = sender.bus.sent
    assert first.decode().splitlines()[1:] == ["+ sched.ready.t.j1.0.base.1", "- sched.*.t.j0.0.base.1"]
    assert second.decode().splitlines()[1:] == ["+ active.t.j1 4"]

    heard = []
    peer = ReplicaNotes(None)
    peer.listen(lambda op, key, value: heard.append((op, key, value)))
    await peer._on_message(message(first))
    await peer._on_message(message(second))
    await sender._on_message(message(first))  # its own: ignored
    assert heard == [
        ("+", "sched.ready.t.j1.0.base.1", ""),
        ("-", "sched.*.t.j0.0.base.1", ""),
        ("+", "active.t.j1", "4"),
    ]


async def test_notes_are_not_sent_before_start():
    notes = ReplicaNotes(SlowBus())  # type: ignore[arg-type]
    notes.written("sched.ready.t.j1.0.base.1")
    await asyncio.sleep(0.02)
    assert notes.bus.sent == []
