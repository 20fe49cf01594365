"""A small typed client of the public Multipass API (Jobs, Tunes, Admin) over synchronous gRPC, and the
``multipass`` command. It depends only on the generated stubs (``multipass.v1``), never on the runtime
library or a service.

>>> from multipass_client import connect
>>> with connect("127.0.0.1:50050", api_key="mpk_...") as client:
...     job_id = client.jobs.submit("a cat").job_id
...     job = client.jobs.wait(job_id)

Names are imported lazily, so the command-line modules can import ``multipass_client.cli.options`` without
loading grpc (``multipass --help`` stays fast).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "AdminClient": "multipass_client.admin",
    "Client": "multipass_client.channel",
    "connect": "multipass_client.channel",
    "open_channel": "multipass_client.channel",
    "describe_rpc_error": "multipass_client.errors",
    "error_reason": "multipass_client.errors",
    "JobsClient": "multipass_client.jobs",
    "TERMINAL_STATES": "multipass_client.jobs",
    "TunesClient": "multipass_client.tunes",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'multipass_client' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
