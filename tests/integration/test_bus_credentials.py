"""The NATS password of ``MULTIPASS_NATS_URL`` (``nats://user:password@host:4222``, as the Kubernetes
manifests build it from the ``nats-users`` Secret) never reaches a log line or an error message."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from multipass.bus import Bus
from multipass.errors import Unavailable
from multipass.logs import JsonFormatter
from multipass_dev.local.process import free_port

PASSWORD = "n4ts-pa55w0rd"


def with_credentials(url: str) -> str:
    return url.replace("nats://", f"nats://gateway:{PASSWORD}@", 1)


def written(caplog: pytest.LogCaptureFixture) -> str:
    formatter = JsonFormatter("tests")
    return "\n".join(formatter.format(record) for record in caplog.records)


async def test_connect_reconnect_and_disconnect_logs_leave_the_password_out(nats_server, caplog):
    caplog.set_level(logging.INFO, logger="multipass.bus")
    bus = await Bus.connect(with_credentials(nats_server.url), name="tests", max_reconnect_wait=0.2)
    try:
        nats_server.stop()
        nats_server.restart()
        deadline = time.monotonic() + 10
        while "nats reconnected" not in caplog.text:
            assert time.monotonic() < deadline, "no reconnect logged"
            await asyncio.sleep(0.05)
    finally:
        await bus.close()
    lines = written(caplog)
    for message in ("nats connected", "nats disconnected", "nats reconnected"):
        assert message in lines
    assert PASSWORD not in lines
    assert "nats://gateway:***@127.0.0.1" in lines


async def test_a_failed_connect_names_the_server_without_the_password():
    url = with_credentials(f"nats://127.0.0.1:{free_port()}")
    with pytest.raises(Unavailable, match="cannot connect") as raised:
        await Bus.connect(url, name="t", connect_timeout=0.5)
    assert PASSWORD not in str(raised.value)
    assert "gateway:***@127.0.0.1" in str(raised.value)
