"""The public view of a job record (GetJob, ListJobs, callbacks): the Job with presigned image URLs."""

from __future__ import annotations

import asyncio

from multipass.store import ObjectStore
from multipass.v1 import events_pb2, jobs_pb2


async def public_job(
    record: events_pb2.JobRecord, objects: ObjectStore, expiry_seconds: int, *, urls: bool = True
) -> jobs_pb2.Job:
    job = jobs_pb2.Job()
    job.CopyFrom(record.job)
    if urls:
        finals = [image for image in job.images if image.final.key]
        links = await asyncio.gather(
            *(objects.presigned_get(image.final.bucket, image.final.key, expiry_seconds) for image in finals)
        )
        for image, link in zip(finals, links, strict=True):
            image.url = link
    return job
