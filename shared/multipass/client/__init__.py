"""A small typed client of the public Multipass API (Jobs, Tunes, Admin) over synchronous gRPC.

>>> from multipass.client import connect
>>> with connect("127.0.0.1:50050", api_key="mpk_...") as client:
...     job_id = client.jobs.submit("a cat").job_id
...     job = client.jobs.wait(job_id)

Names are imported lazily, so the command-line modules can import ``multipass.client.options`` without
loading grpc (``multipass --help`` stays fast).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "AdminClient": "multipass.client.admin",
    "Client": "multipass.client.channel",
    "connect": "multipass.client.channel",
    "open_channel": "multipass.client.channel",
    "describe_rpc_error": "multipass.client.errors",
    "JobsClient": "multipass.client.jobs",
    "TERMINAL_STATES": "multipass.client.jobs",
    "TunesClient": "multipass.client.tunes",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'multipass.client' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
