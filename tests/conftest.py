"""Fixtures shared by every test tier: real nats-server and S3 (moto) servers on loopback.

* ``nats_server``: a fresh nats-server with JetStream per test (temp storage), stopped in ``finally``.
* ``bus``: a connected :class:`multipass.bus.Bus` on it, topology ensured, closed afterwards.
* ``s3_server``: one moto S3 server per session; ``s3`` resets it before the test that uses it.
* ``s3_settings`` / ``store``: settings for that server and an :class:`ObjectStore` with the buckets.

A missing server binary fails the test with a message naming the package to install; it never skips.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from multipass.bus import Bus
from multipass.connections import S3Settings
from multipass.names import BUCKET_JOBS, BUCKET_MODELS, BUCKET_TUNES
from multipass.store import ObjectStore
from multipass_dev.local import BinaryNotFound, NatsServerProcess, S3ServerProcess


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """A command run in-process (``configure_logging``) points the root logger at the test's captured
    stdout; restored afterwards, so no later thread logs into a stream pytest has closed."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """Under ``pytest -n N --dist loadfile`` (``make test``) each module's tests run on one worker, so its
    module fixtures start once, and every end-to-end module shares the one worker that starts the stack."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "tests/e2e" if path.startswith("tests/e2e/") else path

    return ModuleScheduling(config, log)


def _missing_binary(error: BinaryNotFound) -> None:
    where = "CI (CI=true)" if os.environ.get("CI", "").lower() in ("1", "true", "yes") else "this machine"
    pytest.fail(f"integration server binary missing on {where}: {error}", pytrace=False)


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServerProcess]:
    try:
        server = NatsServerProcess.start(tmp_path / "nats")
    except BinaryNotFound as error:
        _missing_binary(error)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def bus(nats_server: NatsServerProcess) -> AsyncIterator[Bus]:
    connected = await Bus.connect(nats_server.url, name="tests")
    try:
        await connected.ensure_topology()
        yield connected
    finally:
        await connected.close()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3ServerProcess]:
    try:
        server = S3ServerProcess.start(log_dir=tmp_path_factory.mktemp("s3"))
    except BinaryNotFound as error:
        _missing_binary(error)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3(s3_server: S3ServerProcess) -> S3ServerProcess:
    """The session's S3 server, emptied for this test (and resumed, should a previous test have paused it)."""
    s3_server.resume()
    if not s3_server.running:
        s3_server.restart()
    s3_server.reset()
    return s3_server


@pytest.fixture
def s3_settings(s3: S3ServerProcess) -> S3Settings:
    return S3Settings(
        endpoint=s3.endpoint,
        access_key="multipass",
        secret_key="multipass-secret",
        secure=False,
        region="us-east-1",
    )


@pytest.fixture
async def store(s3_settings: S3Settings) -> ObjectStore:
    object_store = ObjectStore.from_settings(s3_settings)
    await object_store.ensure_buckets([BUCKET_JOBS, BUCKET_TUNES, BUCKET_MODELS])
    return object_store
