"""What the diffusion workers serve (``Diffusion.Info``: models, families, capabilities), as SubmitJob
checks it: answered from memory, kept fresh in the background, and kept in KV for when no worker runs.

- An answer younger than ``ttl`` seconds is used as it is.
- An older one starts one refresh (never two at a time) and waits for it at most ``wait_seconds``; a worker
  that does not answer by then (busy, stalled, restarting) leaves the old answer in use, and no one waits or
  asks again for ``retry_seconds``. So workers that stop answering never hold submits up for the RPC's deadline
  each, one after the other.
- An answer that lists no model (a worker answers while it still loads its models) counts as none.
- With no answer yet (a replica that just started), the first caller asks and the others wait for that same
  call; when no worker answers, the last answer any replica stored in KV stands in (``info.diffusion`` in
  ``multipass-jobs``): diffusion workers that scale to zero still get their jobs queued (their queue's lag is
  what starts them). Only with nothing stored either is it UNAVAILABLE.
- :meth:`run` refreshes every half ``ttl`` in the background, so submits seldom ask themselves; an answer is
  stored when it differs from the stored one, and again every ten minutes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable

from google.protobuf.message import DecodeError

from multipass import names
from multipass.bus import KvBucket
from multipass.errors import MultipassError, Unavailable
from multipass.v1 import diffusion_pb2

log = logging.getLogger(__name__)

#: Longest a caller holding an out-of-date answer waits for a refresh before using the old answer.
WAIT_SECONDS = 1.0
#: After a refresh that no worker answered, callers use the old answer without asking for this long.
RETRY_SECONDS = 5.0
#: Shortest pause between background refreshes (a ttl of 0 means "ask at every submit").
MIN_REFRESH_INTERVAL = 1.0
#: An unchanged answer is written again after this long (the stored one may have been removed).
RESTORE_SECONDS = 600.0

Ask = Callable[[], Awaitable[diffusion_pb2.InfoResponse]]


class DiffusionInfo:
    def __init__(
        self,
        ask: Ask,
        ttl: float,
        *,
        store: KvBucket | None = None,
        wait_seconds: float = WAIT_SECONDS,
        retry_seconds: float = RETRY_SECONDS,
    ):
        self._ask = ask
        self.ttl = ttl
        self._store = store
        self.wait_seconds = wait_seconds
        self.retry_seconds = retry_seconds
        self._answer: diffusion_pb2.InfoResponse | None = None
        #: Monotonic time of the answer (-inf for one taken from KV: out of date from the start).
        self._at = -math.inf
        #: Until then, an out-of-date answer is used without asking (the last ask found no worker).
        self._quiet_until = -math.inf
        self._refreshing: asyncio.Future | None = None
        #: The bytes KV holds, as far as this replica knows (an equal answer is not written again).
        self._stored: bytes | None = None
        self._stored_at = -math.inf
        self._last_error: MultipassError | None = None

    async def get(self) -> diffusion_pb2.InfoResponse:
        now = time.monotonic()
        answer = self._answer
        if answer is not None and (now - self._at < self.ttl or now < self._quiet_until):
            return answer
        refreshing = self._refresh_once()
        if answer is None:
            await asyncio.shield(refreshing)
        else:
            try:
                await asyncio.wait_for(asyncio.shield(refreshing), self.wait_seconds)
            except TimeoutError:
                # The refresh goes on; this submit, and those until the retry, use the answer at hand.
                self._quiet_until = time.monotonic() + self.retry_seconds
            except Exception:  # noqa: BLE001 - an answer is at hand: the submit goes on with it
                log.exception("Diffusion.Info refresh failed; using the last answer")
        if self._answer is None:
            raise Unavailable(
                f"no diffusion worker answered Diffusion.Info ({self._last_error}); "
                "models and capabilities cannot be checked"
            )
        return self._answer

    def _refresh_once(self) -> asyncio.Future:
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self.refresh())
        return self._refreshing

    async def refresh(self) -> bool:
        """Ask a worker now; whether one answered (errors are logged, the old answer stays)."""
        try:
            answer = await self._ask()
            if not answer.models:
                # A worker answers Info while it still loads its models: not an answer to check against.
                raise Unavailable("the diffusion worker that answered serves no model yet (still loading)")
        except MultipassError as error:
            self._last_error = error
            self._quiet_until = time.monotonic() + self.retry_seconds
            if self._answer is None:
                self._answer = await self._load()
                if self._answer is not None:
                    log.warning(
                        "no diffusion worker answered Diffusion.Info; using the answer stored in KV",
                        extra={"error": str(error), "models": list(self._answer.models)},
                    )
                    return False
            if self._answer is not None:
                log.warning("Diffusion.Info failed; using the last answer", extra={"error": str(error)})
            return False
        self._answer, self._at, self._quiet_until = answer, time.monotonic(), -math.inf
        await self._save(answer)
        return True

    async def _load(self) -> diffusion_pb2.InfoResponse | None:
        if self._store is None:
            return None
        try:
            entry = await self._store.get(names.DIFFUSION_INFO_KEY)
        except MultipassError as error:
            log.warning("stored Diffusion.Info not readable", extra={"error": str(error)})
            return None
        if entry is None or not entry.value:
            return None
        answer = diffusion_pb2.InfoResponse()
        try:
            answer.ParseFromString(entry.value)
        except DecodeError:
            log.warning("stored Diffusion.Info is damaged; ignored", extra={"key": names.DIFFUSION_INFO_KEY})
            return None
        self._stored = entry.value
        return answer

    async def _save(self, answer: diffusion_pb2.InfoResponse) -> None:
        if self._store is None:
            return
        value = answer.SerializeToString(deterministic=True)
        if value == self._stored and time.monotonic() - self._stored_at < RESTORE_SECONDS:
            return
        try:
            await self._store.put(names.DIFFUSION_INFO_KEY, value)
        except MultipassError as error:
            log.warning("Diffusion.Info not stored", extra={"error": str(error)})
            return
        self._stored, self._stored_at = value, time.monotonic()

    async def run(self, stop: asyncio.Event) -> None:
        """Refresh every half ``ttl`` (at least every :data:`MIN_REFRESH_INTERVAL` s) until ``stop``."""
        interval = max(MIN_REFRESH_INTERVAL, self.ttl / 2)
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                refreshing = self._refresh_once()
                await asyncio.wait({refreshing, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if refreshing.done() and not refreshing.cancelled() and refreshing.exception() is not None:
                    log.error("Diffusion.Info refresh failed", exc_info=refreshing.exception())
                await asyncio.wait({stopping}, timeout=interval)
        finally:
            stopping.cancel()
