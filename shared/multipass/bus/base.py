"""What every part of the bus shares: the NATS connection, its JetStream context and the live subscriptions.

The parts of :class:`~multipass.bus.Bus` (publishing, consuming, KV, replay, ...) each build on this
state; only modules of this package touch the connection or the JetStream context.
"""

from __future__ import annotations

import asyncio

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext


class BusBase:
    def __init__(self, nc: NATS, name: str, url: str):
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.name = name
        self.url = url
        self._live: set[object] = set()
        self._kv: dict[str, object] = {}
        self._closing = False
        self._closing_event = asyncio.Event()

    @property
    def is_connected(self) -> bool:
        return self.nc.is_connected

    def _remember(self, live: object) -> None:
        """Keep ``live`` (it has ``unsubscribe()``) to end when the bus closes."""
        self._live.add(live)

    def _forget(self, live: object) -> bool:
        """Drop ``live`` from the subscriptions :meth:`close` ends; False if it was not there (any more)."""
        if live in self._live:
            self._live.discard(live)
            return True
        return False
