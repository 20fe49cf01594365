"""The JetStream streams and KV buckets of Multipass (their settings; names in :mod:`multipass.names`), and
their idempotent creation.

Creating a stream that exists with the same configuration succeeds; one that exists with another
configuration (an older release) is updated in place. Several processes may run this at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import nats.js.errors
from nats.js import JetStreamContext, api

from multipass import names
from multipass.bus.base import BusBase
from multipass.bus.errors import nats_errors
from multipass.errors import FailedPrecondition, Unavailable

log = logging.getLogger(__package__)

DAY = 24 * 3600.0
#: JetStream's answer when a stream exists with a different configuration.
_STREAM_NAME_IN_USE = 10058
#: NATS's default maximum payload; images never travel in messages.
MAX_MESSAGE_BYTES = 1024 * 1024


@dataclass(frozen=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    retention: api.RetentionPolicy
    max_age: float
    duplicate_window: float = 120.0
    max_msg_size: int = MAX_MESSAGE_BYTES

    def config(self, replicas: int) -> api.StreamConfig:
        return api.StreamConfig(
            name=self.name,
            subjects=list(self.subjects),
            retention=self.retention,
            storage=api.StorageType.FILE,
            max_age=self.max_age,
            duplicate_window=self.duplicate_window,
            max_msg_size=self.max_msg_size,
            discard=api.DiscardPolicy.OLD,
            num_replicas=replicas,
        )


@dataclass(frozen=True)
class BucketSpec:
    name: str
    history: int = 1
    #: Seconds a value lives; None keeps values until deleted.
    ttl: float | None = None

    def config(self, replicas: int) -> api.KeyValueConfig:
        return api.KeyValueConfig(
            bucket=self.name,
            history=self.history,
            ttl=self.ttl,
            storage=api.StorageType.FILE,
            replicas=replicas,
        )


STREAMS: tuple[StreamSpec, ...] = (
    # Pass requests: each is removed once a worker acks (or terms) it; stale work expires after a day.
    StreamSpec(names.STREAM_PASSES, (names.PASSES_SUBJECTS,), api.RetentionPolicy.WORK_QUEUE, max_age=DAY),
    # Pass events and job events: kept a week for replay (WatchJob) whoever has read them.
    StreamSpec(names.STREAM_EVENTS, (names.EVENTS_SUBJECTS,), api.RetentionPolicy.LIMITS, max_age=7 * DAY),
    StreamSpec(
        names.STREAM_JOB_EVENTS,
        (names.JOB_EVENTS_SUBJECTS,),
        api.RetentionPolicy.LIMITS,
        max_age=7 * DAY,
    ),
    # Max-deliveries advisories of the pass queue (a pass nobody finished): kept until a gateway acks one,
    # so an advisory sent while no gateway is connected is handled when one is; a day at most.
    StreamSpec(
        names.STREAM_ADVISORIES,
        (names.PASS_MAX_DELIVERIES_ADVISORY,),
        api.RetentionPolicy.WORK_QUEUE,
        max_age=DAY,
    ),
)

BUCKETS: tuple[BucketSpec, ...] = (
    BucketSpec(names.KV_JOBS, history=3),
    # An idempotency key answers repeats of a submit for a day, then expires.
    BucketSpec(names.KV_IDEMPOTENCY, history=1, ttl=DAY),
    BucketSpec(names.KV_TENANTS, history=3),
    BucketSpec(names.KV_TUNES, history=3),
)


async def ensure_stream(js: JetStreamContext, spec: StreamSpec, replicas: int = 1) -> api.StreamInfo:
    config = spec.config(replicas)
    try:
        return await js.add_stream(config)
    except nats.js.errors.BadRequestError as error:
        if error.err_code != _STREAM_NAME_IN_USE:
            raise
    try:
        info = await js.update_stream(config)
    except nats.js.errors.BadRequestError as error:
        raise FailedPrecondition(
            f"stream {spec.name} exists with a configuration that cannot be updated ({error.description}); "
            "delete it or migrate it by hand"
        ) from error
    log.info("stream configuration updated", extra={"stream": spec.name})
    return info


async def ensure_bucket(js: JetStreamContext, spec: BucketSpec, replicas: int = 1):
    try:
        return await js.create_key_value(spec.config(replicas))
    except nats.js.errors.BadRequestError as error:
        if error.err_code != _STREAM_NAME_IN_USE:
            raise
    # Created by an older release with other limits: keep it and its data.
    log.warning("kv bucket exists with another configuration; using it as is", extra={"bucket": spec.name})
    return await js.key_value(spec.name)


async def ensure_topology(js: JetStreamContext, replicas: int = 1) -> None:
    for stream in STREAMS:
        await ensure_stream(js, stream, replicas)
    for bucket in BUCKETS:
        await ensure_bucket(js, bucket, replicas)


class TopologySetup(BusBase):
    async def ensure_topology(self, *, replicas: int = 1) -> None:
        """Create or update the streams and KV buckets above (idempotent)."""
        with nats_errors("create streams"):
            await ensure_topology(self.js, replicas)

    async def await_streams(
        self, streams: tuple[str, ...], *, replicas: int = 1, timeout: float = 120.0, poll: float = 1.0
    ) -> None:
        """Return once every stream of ``streams`` exists, for a service that only uses them.

        The gateway owns the topology (its NATS user may create streams; a worker's may only look them
        up). A worker started first creates them itself where its user may (a local stack, tests); where it
        may not, the server refuses the request without an answer, and the worker waits for the gateway
        to create them, asking again every ``poll`` seconds. Unavailable after ``timeout``.
        """
        deadline = asyncio.get_running_loop().time() + timeout
        tried_to_create = False
        while True:
            missing = [stream for stream in streams if not await self._stream_exists(stream)]
            if not missing:
                return
            if not tried_to_create:
                tried_to_create = True
                with contextlib.suppress(Unavailable):
                    await self.ensure_topology(replicas=replicas)
                    continue
                log.info("waiting for the gateway to create the streams", extra={"streams": missing})
            if asyncio.get_running_loop().time() >= deadline:
                raise Unavailable(f"streams {', '.join(missing)} do not exist (is the gateway running?)")
            await asyncio.sleep(poll)

    async def _stream_exists(self, stream: str) -> bool:
        with nats_errors(f"look up stream {stream}"):
            try:
                await self.js.stream_info(stream)
            except nats.js.errors.NotFoundError:
                return False
        return True
