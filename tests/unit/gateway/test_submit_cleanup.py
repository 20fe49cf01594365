"""A submit that did not go through leaves nothing: its record, marker and inputs go at once, or, while NATS
or the object store is down, in the background, the record before the marker."""

from __future__ import annotations

import asyncio

from multipass.errors import Unavailable
from multipass_gateway.app.submit_cleanup import SubmitCleanup


class Outage:
    """Where the job's pieces are; each removal fails while ``down`` (as with NATS or S3 unreachable)."""

    def __init__(self):
        self.down = False
        self.records = {("acme", "j1")}
        self.markers = {("acme", "j1")}
        self.prefixes = {"jobs/acme/j1/"}
        self.order: list[str] = []

    def _check(self) -> None:
        if self.down:
            raise Unavailable("NATS unavailable: timeout")

    # JobStore
    async def delete(self, tenant: str, job_id: str) -> None:
        self._check()
        self.records.discard((tenant, job_id))
        self.order.append("record")

    # PendingBudget
    async def remove(self, tenant: str, job_id: str) -> None:
        self._check()
        self.markers.discard((tenant, job_id))
        self.order.append("marker")

    # ObjectStore
    async def delete_prefix(self, bucket: str, prefix: str) -> None:
        self._check()
        self.prefixes.discard(prefix)
        self.order.append("objects")


def cleanup_for(outage: Outage, **timing) -> SubmitCleanup:
    return SubmitCleanup(jobs=outage, budget=outage, objects=outage, **timing)  # type: ignore[arg-type]


async def test_everything_goes_at_once_when_nothing_is_down():
    outage = Outage()
    cleanup = cleanup_for(outage)
    await cleanup.discard("acme", "j1", record=True)
    assert not outage.records and not outage.markers and not outage.prefixes
    assert outage.order == ["record", "marker", "objects"]
    assert cleanup.pending == 0


async def test_a_record_never_written_is_not_deleted():
    outage = Outage()
    await cleanup_for(outage).discard("acme", "j1", record=False)
    assert outage.records == {("acme", "j1")} and outage.order == ["marker", "objects"]


async def test_during_an_outage_the_cleanup_is_retried_until_it_succeeds():
    outage = Outage()
    outage.down = True
    cleanup = cleanup_for(outage, first_pause=0.01, max_pause=0.02)
    await cleanup.discard("acme", "j1", record=True)  # returns at once: the submit's error goes out
    assert cleanup.pending == 1
    await asyncio.sleep(0.05)
    assert outage.records and outage.markers  # still down: the marker stays while the record may exist
    outage.down = False
    for _ in range(50):
        if not cleanup.pending:
            break
        await asyncio.sleep(0.01)
    assert cleanup.pending == 0
    assert not outage.records and not outage.markers and not outage.prefixes
    assert outage.order.index("record") < outage.order.index("marker")


async def test_a_cleanup_gives_up_after_its_deadline_and_close_stops_the_rest():
    outage = Outage()
    outage.down = True
    cleanup = cleanup_for(outage, deadline=0.05, first_pause=0.01, max_pause=0.01)
    await cleanup.discard("acme", "j1", record=True)
    await asyncio.sleep(0.1)
    assert cleanup.pending == 0 and outage.records  # given up (logged), not retried for ever
    await cleanup.discard("acme", "j2", record=True)
    assert cleanup.pending == 1
    await cleanup.close()
    assert cleanup.pending == 0
