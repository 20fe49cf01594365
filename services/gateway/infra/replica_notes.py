"""Notes between gateway replicas about the markers they write, so in-memory mirrors stay current.

Each replica keeps a mirror of the scheduler's queues and of the pending-work markers (KV stays the
durable truth; the mirrors spare a KV listing per release round and per SubmitJob). A replica updates
its mirrors on its own writes at once; the writes of the other replicas reach it as notes on the core
NATS subject ``multipass.gateway.notes``: one message per event-loop turn, one line per change,
``<op> <kv key or pattern>[ <value>]`` with op ``+`` (written) or ``-`` (removed). Core NATS is at most
once, so a lost note (a reconnect) leaves a mirror stale until its periodic resync from KV, which bounds
how long a soft multi-replica bound can drift; with one replica nothing depends on notes at all.

The same subject carries revoked API keys (``- key.<digest>``, a key of bucket ``multipass-tenants``): each
replica drops the key from its authentication cache and ends its open streams
(:mod:`multipass_gateway.infra.tenant_store`); a lost note is made up for by the cache TTL and the streams'
recheck. Listeners ignore keys they do not mirror.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable

from multipass import names
from multipass.bus import Bus, CoreMessage, CoreSubscription

log = logging.getLogger(__name__)

SUBJECT = names.GATEWAY_NOTES

#: ``listener(op, key, value)``: op is "+" or "-"; key a KV key or a pattern ending in ``>``.
Listener = Callable[[str, str, str], None]


class ReplicaNotes:
    def __init__(self, bus: Bus | None):
        self.bus = bus
        self.origin = secrets.token_hex(6)
        self._listeners: list[Listener] = []
        self._outgoing: list[str] = []
        self._sending: asyncio.Task | None = None
        self._subscription: CoreSubscription | None = None

    def listen(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def written(self, key: str, value: str = "") -> None:
        self._note(f"+ {key} {value}".rstrip())

    def removed(self, key_or_pattern: str) -> None:
        self._note(f"- {key_or_pattern}")

    def _note(self, line: str) -> None:
        if self.bus is None or self._subscription is None:
            return  # not started (unit tests, or a single process without peers to tell)
        self._outgoing.append(line)
        if self._sending is None or self._sending.done():
            self._sending = asyncio.get_running_loop().create_task(self._send())

    async def _send(self) -> None:
        await asyncio.sleep(0)  # gather this turn's changes into one message
        # Lines noted while a message is being sent go in the next one, sent by this same task.
        while self._outgoing:
            lines, self._outgoing = self._outgoing, []
            payload = "\n".join([self.origin, *lines]).encode()
            try:
                await self.bus.publish_core(SUBJECT, payload, flush=False)
            except Exception as error:  # noqa: BLE001 - peers resync from KV; a note is an optimisation
                log.debug("replica note not sent", extra={"error": repr(error)})

    async def start(self) -> None:
        if self.bus is not None:
            self._subscription = await self.bus.subscribe_core(SUBJECT, self._on_message)

    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.unsubscribe()
            self._subscription = None

    async def _on_message(self, msg: CoreMessage) -> None:
        origin, _, body = (msg.data or b"").decode(errors="replace").partition("\n")
        if origin == self.origin:
            return
        for line in body.splitlines():
            op, _, rest = line.partition(" ")
            key, _, value = rest.partition(" ")
            if op not in ("+", "-") or not key:
                continue
            for listener in self._listeners:
                listener(op, key, value)
