"""How one gateway replica bounds the files it receives (tune files, uploaded images).

* Slots: each upload holds one from its first byte to its stored result; one more is refused at once with
  RESOURCE_EXHAUSTED rather than queued (a queued upload would hold its client's stream open with nothing
  read). One tenant holds at most its share of them, so a tenant that keeps uploads open (slowly, or
  many) never keeps the others out.
* Pace: a stream that sends nothing for ``idle_seconds`` is given up with DEADLINE_EXCEEDED, freeing
  its slot.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import TypeVar

from multipass.errors import DeadlineExceeded, ResourceExhausted

T = TypeVar("T")


class UploadSlots:
    def __init__(
        self,
        limit: int,
        *,
        retry_after_seconds: float,
        what: str,
        scope: str,
        setting: str,
        per_tenant: int | None = None,
    ):
        self.limit = limit
        #: Slots one tenant may hold at once: half of them (at least one) unless given.
        self.per_tenant = per_tenant if per_tenant is not None else max(1, limit // 2)
        self.retry_after_seconds = retry_after_seconds
        self.what = what
        self.scope = scope
        self.setting = setting
        self._held: Counter[str] = Counter()

    @property
    def running(self) -> int:
        """Uploads holding a slot now (one event loop changes the counts: no lock)."""
        return sum(self._held.values())

    @contextlib.contextmanager
    def hold(self, tenant: str = "") -> Iterator[None]:
        """A slot for the block; ResourceExhausted when every slot, or the tenant's share, is taken."""
        if self.running >= self.limit:
            self._refuse(
                f"{self.running} {self.what} are in progress on this gateway replica, the most it receives at once"
            )
        if self._held[tenant] >= self.per_tenant:
            self._refuse(
                f"this tenant has {self._held[tenant]} {self.what} in progress on this gateway replica, its share "
                f"of the {self.limit} it receives at once"
            )
        self._held[tenant] += 1
        try:
            yield
        finally:
            self._held[tenant] -= 1
            if self._held[tenant] <= 0:
                del self._held[tenant]

    def _refuse(self, situation: str) -> None:
        raise ResourceExhausted(
            f"{situation} ({self.setting}); retry after {self.retry_after_seconds:g} s",
            retry_after_seconds=self.retry_after_seconds,
            metadata={"scope": self.scope, "limit": str(self.limit)},
        )


async def paced(items: AsyncIterator[T], idle_seconds: float, setting: str) -> AsyncIterator[T]:
    """``items``, each due within ``idle_seconds`` of the one before; DEADLINE_EXCEEDED when one is not."""
    iterator = aiter(items)
    while True:
        try:
            item = await asyncio.wait_for(anext(iterator), idle_seconds)
        except StopAsyncIteration:
            return
        except TimeoutError as error:
            raise DeadlineExceeded(
                f"nothing received for {idle_seconds:g} s; the upload was given up ({setting})"
            ) from error
        yield item
