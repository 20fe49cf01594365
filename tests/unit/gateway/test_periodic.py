"""Background work repeated until the gateway stops: failures are logged, the next round still comes."""

from __future__ import annotations

import asyncio
import logging

from multipass.errors import Unavailable
from multipass_gateway.infra import periodic


async def test_every_survives_failures_and_stops_at_once(caplog):
    stop = asyncio.Event()
    calls = []

    async def action():
        calls.append(len(calls))
        if len(calls) == 1:
            raise Unavailable("object store down")
        if len(calls) == 2:
            raise RuntimeError("a bug")
        if len(calls) == 4:
            stop.set()

    with caplog.at_level(logging.WARNING):
        await asyncio.wait_for(periodic.every(0.01, stop, action, what="upload expiry"), 5)
    assert calls == [0, 1, 2, 3]
    records = [(r.levelno, r.getMessage(), r.exc_info is not None) for r in caplog.records]
    assert records == [
        (logging.WARNING, "upload expiry failed", False),
        (logging.ERROR, "upload expiry failed", True),
    ]


async def test_a_stop_during_the_wait_ends_the_loop_without_another_round():
    stop = asyncio.Event()
    calls = []

    async def action():
        calls.append(1)
        asyncio.get_running_loop().call_later(0.05, stop.set)

    await asyncio.wait_for(periodic.every(3600, stop, action, what="sweep"), 5)
    assert calls == [1]
