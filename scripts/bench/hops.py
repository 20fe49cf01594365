"""Where a job's milliseconds go between processes: every NATS message of a run, heard as it passes.

A :class:`HopTracer` subscribes to ``>`` on the stack's nats-server from a thread of its own and stamps
each message it hears (``time.perf_counter`` on arrival). From those stamps :func:`job_hops` reads, for one
job, the path of every pass: its request published (the gateway's release), its ``started`` and
``completed`` events (the worker's, or the gateway's for its own passes) and the engine seconds the
``completed`` result carries, so each hop of the critical path gets a number:

* ``dispatch``: the previous pass's ``completed`` heard -> this pass's request published (the gateway:
  applying the event, its record write, the outbox, the ready queue, the release round);
* ``pickup``: request published -> ``started`` (the worker's delivery, its input fetch, its device wait);
* ``run_overhead``: ``started`` -> ``completed`` minus the engine's own seconds (progress events,
  output encoding, the upload, the ``completed`` publish);
* and per job the count of messages by kind (KV writes, JetStream API calls, acks, publishes), which is
  the round-trip budget each change is meant to cut.

The tracer only listens: it adds one subscriber to the server, not a hop to the path.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Heard:
    at: float
    subject: str
    data: bytes


@dataclass
class HopTracer:
    nats_url: str
    messages: list[Heard] = field(default_factory=list)
    _thread: threading.Thread | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _stop: asyncio.Event | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    _error: BaseException | None = None

    def __enter__(self) -> HopTracer:
        self._thread = threading.Thread(target=self._run, name="hop-tracer", daemon=True)
        self._thread.start()
        if not self._ready.wait(15.0) or self._error is not None:
            raise RuntimeError(f"the hop tracer did not connect: {self._error}")
        return self

    def __exit__(self, *exc_info) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10.0)

    def clear(self) -> None:
        self.messages = []

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._listen())
        except BaseException as error:  # noqa: BLE001 - reported to the thread that waits for readiness
            self._error = error
            self._ready.set()
        finally:
            self._loop.close()

    async def _listen(self) -> None:
        from multipass.bus import Bus, CoreMessage

        self._stop = asyncio.Event()
        bus = await Bus.connect(self.nats_url, name="bench-hop-tracer", pending_size=256 * 1024 * 1024)

        async def heard(message: CoreMessage) -> None:
            self.messages.append(Heard(time.perf_counter(), message.subject, message.data))

        await bus.subscribe_core(">", heard)
        self._ready.set()
        await self._stop.wait()
        await bus.close()


def kind_of(message: Heard) -> str:
    """A short class for a message: what round trip of the protocol it is."""
    subject = message.subject
    if subject.startswith("$KV."):
        return "kv_write"
    if subject.startswith("$JS.API.DIRECT.GET") or subject.startswith("$JS.API.STREAM.MSG.GET"):
        return "kv_read"
    if subject.startswith("$JS.API.CONSUMER.MSG.NEXT"):
        return "fetch"
    if subject.startswith("$JS.API."):
        return "js_api"
    if subject.startswith("$JS.ACK."):
        return "ack"
    if subject.startswith("_INBOX.") or subject.startswith("_JS_"):
        return "reply"
    if subject.startswith("multipass.pass."):
        return "pass_request"
    if subject.startswith("multipass.events."):
        return "pass_event"
    if subject.startswith("multipass.jobevents."):
        return "job_event"
    if subject.startswith("multipass.gateway.notes"):
        return "replica_note"
    if subject.startswith("$JS.EVENT") or subject.startswith("$SYS"):
        return "advisory"
    return "other"


def job_hops(messages: list[Heard], job_id: str) -> dict:
    """The critical path of one job's passes from the messages heard while it ran (see the module doc)."""
    from multipass.v1 import diffusion_pb2, events_pb2

    requests: dict[str, float] = {}
    started: dict[str, float] = {}
    completed: dict[str, tuple[float, float]] = {}
    for message in messages:
        if message.subject.startswith("multipass.pass."):
            request = diffusion_pb2.PassRequest()
            try:
                request.ParseFromString(message.data)
            except Exception:  # noqa: BLE001 - a message of another shape on the subject
                continue
            if request.job_id == job_id:
                requests.setdefault(request.pass_name, message.at)
        elif message.subject.startswith(f"multipass.events.{job_id}."):
            event = events_pb2.PassEvent()
            event.ParseFromString(message.data)
            kind = event.WhichOneof("event")
            if kind == "started":
                started.setdefault(event.pass_name, message.at)
            elif kind == "completed":
                engine = event.completed.result.duration_seconds
                completed.setdefault(event.pass_name, (message.at, engine))
    order = sorted(requests, key=requests.__getitem__)
    passes = []
    previous_end: float | None = None
    for name in order:
        entry: dict = {"pass": name}
        if previous_end is not None:
            entry["dispatch_ms"] = round((requests[name] - previous_end) * 1000, 2)
        if name in started:
            entry["pickup_ms"] = round((started[name] - requests[name]) * 1000, 2)
        if name in started and name in completed:
            at, engine = completed[name]
            entry["run_ms"] = round((at - started[name]) * 1000, 2)
            entry["engine_ms"] = round(engine * 1000, 2)
            entry["run_overhead_ms"] = round((at - started[name] - engine) * 1000, 2)
        if name in completed:
            previous_end = completed[name][0]
        passes.append(entry)
    counts = Counter(kind_of(message) for message in messages)
    return {
        "passes": passes,
        "messages": dict(sorted(counts.items())),
        "messages_total": sum(counts.values()),
    }


def summarise(per_job: list[dict]) -> dict:
    """Median per pass and hop over jobs, and the median message counts per job."""
    if not per_job:
        return {}
    hops: dict[str, dict[str, list[float]]] = {}
    for job in per_job:
        for entry in job["passes"]:
            for key, value in entry.items():
                if key != "pass":
                    hops.setdefault(entry["pass"], {}).setdefault(key, []).append(value)
    passes = {
        name: {key: round(statistics.median(values), 2) for key, values in found.items()}
        for name, found in hops.items()
    }
    kinds = sorted({kind for job in per_job for kind in job["messages"]})
    messages = {kind: statistics.median(job["messages"].get(kind, 0) for job in per_job) for kind in kinds}
    totals = {
        "dispatch_ms": round(sum(p.get("dispatch_ms", 0.0) for p in passes.values()), 2),
        "pickup_ms": round(sum(p.get("pickup_ms", 0.0) for p in passes.values()), 2),
        "run_overhead_ms": round(sum(p.get("run_overhead_ms", 0.0) for p in passes.values()), 2),
    }
    return {"per_pass_median": passes, "totals_ms": totals, "messages_per_job_median": messages}
