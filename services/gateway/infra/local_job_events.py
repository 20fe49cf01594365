"""Job events this replica flushes, handed at once to this replica's watchers of the job.

``WatchJob`` reads a job's events back from stream ``MULTIPASS_JOB_EVENTS``; when the replica serving the
stream is the one that flushes them (one replica, or the one that ran the job's last transition), the
round trip through the stream is a wait it need not make. An event is durable once the record holding it
in its outbox is written (a flush that fails is repeated from the record by the next transition, a
watcher or the sweeper, with the same sequence number), so the job store hands the events of every outbox
it flushes to the queues registered here for that job as the flush begins; the stream delivers the same
events too, and the watcher keeps the first of each sequence number.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from multipass.v1 import jobs_pb2


class LocalJobEvents:
    def __init__(self) -> None:
        self._watchers: dict[str, set[asyncio.Queue]] = {}

    def add(self, job_id: str, queue: asyncio.Queue) -> None:
        """Put the job's events this replica publishes into ``queue`` until :meth:`discard`."""
        self._watchers.setdefault(job_id, set()).add(queue)

    def discard(self, job_id: str, queue: asyncio.Queue) -> None:
        queues = self._watchers.get(job_id)
        if queues is not None:
            queues.discard(queue)
            if not queues:
                del self._watchers[job_id]

    def published(self, job_id: str, events: Iterable[jobs_pb2.JobEvent]) -> None:
        queues = self._watchers.get(job_id)
        if not queues:
            return
        for event in events:
            for queue in queues:
                queue.put_nowait(event)

    def __len__(self) -> int:
        return len(self._watchers)
