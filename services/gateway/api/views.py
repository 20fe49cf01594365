"""Public views: a job record (GetJob, ListJobs, callbacks) as the Job with presigned image URLs, and a
tune with presigned URLs of its reference images."""

from __future__ import annotations

import asyncio

from multipass.store import ObjectStore
from multipass.v1 import events_pb2, jobs_pb2


async def public_job(
    record: events_pb2.JobRecord, objects: ObjectStore, expiry_seconds: int, *, urls: bool = True
) -> jobs_pb2.Job:
    job = jobs_pb2.Job()
    job.CopyFrom(record.job)
    if record.HasField("mask_image"):
        job.mask_image.CopyFrom(record.mask_image)
    if urls:
        finals = [image for image in job.images if image.final.key]
        links = await asyncio.gather(
            *(objects.presigned_get(image.final.bucket, image.final.key, expiry_seconds) for image in finals)
        )
        for image, link in zip(finals, links, strict=True):
            image.url = link
    return job


async def public_tune(tune: jobs_pb2.Tune, objects: ObjectStore, expiry_seconds: int) -> jobs_pb2.Tune:
    view = jobs_pb2.Tune()
    view.CopyFrom(tune)
    view.ClearField("reference_image_urls")  # never stored; signed afresh for each answer
    links = await asyncio.gather(
        *(objects.presigned_get(image.bucket, image.key, expiry_seconds) for image in tune.reference_images)
    )
    view.reference_image_urls.extend(links)
    return view
