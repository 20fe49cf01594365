"""The bus: one NATS connection with JetStream, connected with reconnects forever and closed in order.

:class:`Bus` gathers the port's operations, each kept in its own module: core NATS (:mod:`.core`),
publishing (:mod:`.publish`), durable consumers and the consume loop (:mod:`.consumers`, :mod:`.consume`),
KV buckets (:mod:`.kv`), stored messages (:mod:`.streams`), replay (:mod:`.replay`) and the topology
(:mod:`.topology`); every request's reply comes back through :mod:`.replies`. Nothing outside this package touches the NATS client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

import nats.errors
from nats.aio.client import Client as NATS

from multipass.bus.consume import Consuming
from multipass.bus.core import CoreMessaging
from multipass.bus.kv import KeyValueBuckets
from multipass.bus.publish import Publishing
from multipass.bus.replay import Replaying
from multipass.bus.replies import ReplyRouter
from multipass.bus.streams import StoredMessages
from multipass.bus.topology import TopologySetup
from multipass.errors import Unavailable
from multipass.redaction import redact_url

log = logging.getLogger(__package__)


class Bus(CoreMessaging, Publishing, Consuming, KeyValueBuckets, StoredMessages, Replaying, TopologySetup):
    """One NATS connection with JetStream; create with :meth:`connect`, end with :meth:`close`."""

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        name: str,
        connect_timeout: float = 5.0,
        max_reconnect_wait: float = 5.0,
        **opts,
    ) -> Bus:
        """Connect to ``url``, or raise Unavailable if that fails for ``connect_timeout`` seconds.

        Once connected, the client reconnects forever with exponential backoff (capped at
        ``max_reconnect_wait``, jittered) and replays its subscriptions; ``opts`` go to ``nats.connect``.
        """
        nc = NATS()
        ref: list[Bus] = []
        shown = redact_url(url)  # the URL as logs and errors show it: without its password

        async def disconnected() -> None:
            if not (ref and ref[0]._closing):
                log.warning("nats disconnected", extra={"nats_url": shown, "client": name})

        async def reconnected() -> None:
            server = redact_url(str(nc.connected_url.geturl()))
            log.info("nats reconnected", extra={"nats_url": server, "client": name})

        async def closed() -> None:
            log.info("nats connection closed", extra={"client": name})

        async def error(err: Exception) -> None:
            if isinstance(err, (OSError, nats.errors.UnexpectedEOF, asyncio.TimeoutError)):
                log.debug("nats connection error", extra={"client": name, "error": repr(err)})
            else:
                log.warning("nats error", extra={"client": name, "error": repr(err)})

        def next_server(servers, _info):
            attempts = max((server.reconnects for server in servers), default=0)
            delay = min(max_reconnect_wait, 0.1 * 2 ** min(attempts, 16))
            return None, delay * random.uniform(0.5, 1.0)

        options = {
            "servers": [url],
            "name": name,
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.25,
            "connect_timeout": 2,
            "ping_interval": 20,
            "max_outstanding_pings": 3,
            "disconnected_cb": disconnected,
            "reconnected_cb": reconnected,
            "closed_cb": closed,
            "error_cb": error,
            "reconnect_to_server_handler": next_server,
            **opts,
        }
        try:
            await asyncio.wait_for(nc.connect(**options), connect_timeout)
        except (TimeoutError, OSError, nats.errors.Error) as err:
            with contextlib.suppress(Exception):
                await nc.close()
            raise Unavailable(
                f"cannot connect to NATS at {shown} within {connect_timeout:g}s: {redact_url(repr(err))}"
            ) from err
        try:
            await ReplyRouter(nc).install()
        except nats.errors.Error as err:
            with contextlib.suppress(Exception):
                await nc.close()
            raise Unavailable(f"cannot subscribe the reply inbox at {shown}: {err!r}") from err
        bus = cls(nc, name, url)
        ref.append(bus)
        log.info("nats connected", extra={"nats_url": shown, "client": name})
        return bus

    async def close(self, timeout: float = 5.0) -> None:
        """Unsubscribe every live subscription first (a live pull subscription stalls drain), then drain."""
        if self._closing:
            return
        self._closing = True
        self._closing_event.set()
        for live in list(self._live):
            with contextlib.suppress(Exception):
                await live.unsubscribe()
        self._live.clear()
        if self.nc.is_closed:
            return
        try:
            await asyncio.wait_for(self.nc.drain(), timeout)
        except Exception as error:  # noqa: BLE001 - closing must not fail
            log.warning("nats drain failed; closing", extra={"error": repr(error)})
        if not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await self.nc.close()
