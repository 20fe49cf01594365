"""What NATS failures mean to the rest of Multipass.

Connection-level failures (timeouts, a closed or reconnecting connection, no JetStream answer) become
:class:`~multipass.errors.Unavailable`, oversized payloads :class:`~multipass.errors.InvalidInput`;
callers never see a NATS exception. A KV write that loses a race raises a :class:`KvConflict`, for the
caller to retry or to take as an answer.
"""

from __future__ import annotations

import asyncio
import contextlib

import nats.errors
import nats.js.errors

from multipass.errors import InvalidInput, Unavailable, Violation

CONNECTION_ERRORS = (
    nats.errors.TimeoutError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionDrainingError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.NoRespondersError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.ServerError,
    asyncio.TimeoutError,
    OSError,
)


class KvConflict(Exception):
    """A compare-and-set write lost to another writer; nothing was written."""


class KeyExists(KvConflict):
    """``create`` found the key already there."""


class RevisionMismatch(KvConflict):
    """``update`` found another revision of the key than the one it expected (or no key at all)."""


class KeyVanished(KvConflict):
    """``create`` found the key, which was then removed before the creation could replace it."""


@contextlib.contextmanager
def nats_errors(what: str):
    """Turn connection-level NATS failures into Unavailable and oversized payloads into InvalidInput."""
    try:
        yield
    except nats.errors.MaxPayloadError as error:
        raise InvalidInput.of([Violation("message", f"too large to {what}: {error}")]) from error
    except CONNECTION_ERRORS as error:
        raise Unavailable(f"NATS unavailable ({what}): {type(error).__name__} {error}".rstrip()) from error
