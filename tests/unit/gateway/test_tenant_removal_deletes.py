"""A removed tenant's jobs and tunes are deleted a bounded number at a time, the vanished ones skipped."""

from __future__ import annotations

import asyncio

import pytest

from multipass.errors import NotFound, Unavailable
from multipass_gateway.app import tenant_removal


async def test_deletes_run_concurrently_up_to_the_bound_and_skip_what_vanished():
    running, most, finished = 0, 0, []

    async def delete(item: str) -> int:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.01)
        running -= 1
        if item.endswith("7"):
            raise NotFound(f"{item} is gone")
        finished.append(item)
        return 1

    ids = [f"job{k}" for k in range(40)]
    results = await tenant_removal._each(ids, delete)
    assert most == tenant_removal.CONCURRENT_DELETES
    assert len(results) == 36 and sorted(finished) == sorted(i for i in ids if not i.endswith("7"))


async def test_another_error_is_raised_once_every_delete_has_ended():
    ended = []

    async def delete(item: str) -> int:
        await asyncio.sleep(0.001 * int(item))
        if item == "3":
            raise Unavailable("object store unreachable")
        ended.append(item)
        return 1

    with pytest.raises(Unavailable, match="unreachable"):
        await tenant_removal._each([str(k) for k in range(30)], delete)
    assert len(ended) == 29  # nothing left running behind the error
