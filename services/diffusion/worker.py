"""The JetStream side of the diffusion worker: pass requests in, images and pass events out.

One durable pull consumer per served model on ``multipass.pass.diffusion.<model>`` (explicit ack, a
short ack wait, ``MULTIPASS_DIFFUSION_ACK_WAIT_S`` = 15 s, kept by the bus's ``in_progress`` heartbeats
every third of it while a pass runs or waits for the device, so a long pass stays with its live worker and
a dead worker's pass goes to another one within the ack wait; bounded ``max_deliver``). Each message ends in one decision: Ack after the output is stored and ``completed``
is published; Nak with backoff when the object store or NATS is unavailable; Term plus a ``failed``
event (code, message, pass name, field violations) for a request that cannot succeed. Model work runs
on the engine's single device thread, never on the event loop. ``multipass.cancel.<job_id>`` (core NATS)
stops that job's running pass within one denoising step.

Prefetch: each consumer holds ``1 + prefetch_depth`` passes. They fetch their inputs at once and take the
device in arrival order (:class:`~multipass_diffusion.device_queue.DeviceQueue`), so the device never
waits for the next pass's downloads; a held pass gets ``in_progress`` heartbeats from the bus like the
running one, is decided ``Term`` + ``failed`` when its job is cancelled while it waits, and is nak'ed at
once (no delay) when the worker stops, so another worker takes it.

Running ahead: a request naming its ``next_pass`` may have that pass started here as soon as its output is
encoded, and the next request answered with that run (:mod:`multipass_diffusion.run_ahead`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import Executor
from pathlib import Path
from typing import TypeVar

from multipass import names
from multipass.bus import Ack, Bus, Decision, Delivery, Nak, Term, backoff_delay, publish_pass_event
from multipass.copies import MAX_COPY_BYTES, object_copy
from multipass.errors import Cancelled, InvalidInput, MultipassError, Violation
from multipass.image_work import encode_png_async
from multipass.logs import log_context
from multipass.store import png_ref
from multipass.v1 import common_pb2, diffusion_pb2, events_pb2
from multipass_diffusion import metrics
from multipass_diffusion.device_queue import DeviceQueue
from multipass_diffusion.engine import Engine, PassOutput
from multipass_diffusion.input_reads import read_inputs
from multipass_diffusion.passes.context import PassInputs
from multipass_diffusion.passes.registry import HANDLERS
from multipass_diffusion.recent_outputs import RecentOutputs
from multipass_diffusion.request_copies import RequestCopies
from multipass_diffusion.run_ahead import AheadRun, RunAhead
from multipass_diffusion.settings import DiffusionSettings

log = logging.getLogger(__name__)
T = TypeVar("T")

#: How long a cancel is remembered for a job whose pass has not started on this worker yet.
CANCEL_MEMORY_SECONDS = 600.0
NAK_BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


class DiffusionWorker:
    def __init__(self, settings: DiffusionSettings, engine: Engine, bus: Bus, store, executor: Executor):
        self.settings = settings
        self.engine = engine
        self.bus = bus
        self.store = store
        self.executor = executor
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._cancel_sub = None
        self._running: dict[str, set[threading.Event]] = {}
        self._cancelled: OrderedDict[str, float] = OrderedDict()
        #: One for every served model: they share the one device thread.
        self.device = DeviceQueue(executor)
        self.recent = RecentOutputs(settings.recent_outputs_mb * 1024 * 1024)
        #: The next pass of a chain, started before its request arrives (run_ahead.py).
        self.ahead = RunAhead()
        #: Pass-cache copies being written after their pass was decided (awaited when the worker stops).
        self._cache_writes: set[asyncio.Task] = set()

    # -- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._cancel_sub = await self.bus.subscribe_core(names.CANCEL_ALL, self._on_cancel)
        for model in self.engine.runtimes:
            await self.bus.ensure_consumer(**self._consumer_config(model))
            self._tasks.append(asyncio.create_task(self._consume(model), name=f"consume-{model}"))

    def _consumer_config(self, model: str) -> dict:
        return {
            "stream": names.STREAM_PASSES,
            "durable": names.diffusion_durable(model),
            "filter_subject": names.diffusion_pass_subject(model),
            "ack_wait": self.settings.ack_wait_s,
            "max_deliver": self.settings.max_deliver,
            "max_ack_pending": self.settings.max_ack_pending,
        }

    async def _consume(self, model: str) -> None:
        await self.bus.consume(
            **self._consumer_config(model),
            handler=functools.partial(self.handle, model),
            stop=self._stop,
            backoff=NAK_BACKOFF,
            on_term=self._on_term,
            concurrency=1 + self.settings.prefetch_depth,
            prefetch_gate=self.device.until_busy,
        )

    async def stop(self) -> None:
        """Stop fetching; passes in flight finish and are decided; then unsubscribe."""
        self._stop.set()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.ahead.close()
        if self._cancel_sub is not None:
            await self._cancel_sub.unsubscribe()
        if self._cache_writes:
            await asyncio.gather(*self._cache_writes, return_exceptions=True)

    # -- cancellation ----------------------------------------------------------------------------------

    async def _on_cancel(self, msg) -> None:
        job_id = names.job_id_from_subject(msg.subject)
        now = time.monotonic()
        self._cancelled[job_id] = now
        while self._cancelled and next(iter(self._cancelled.values())) < now - CANCEL_MEMORY_SECONDS:
            self._cancelled.popitem(last=False)
        for event in self._running.get(job_id, ()):
            event.set()
        self.device.poke()  # a pass of the job waiting for the device gives its turn up
        log.info("cancel received", extra={"job_id": job_id, "running": len(self._running.get(job_id, ()))})

    # -- one message -----------------------------------------------------------------------------------

    async def handle(self, model: str, delivery: Delivery) -> Decision:
        request = delivery.parse(diffusion_pb2.PassRequest)
        metrics.count_delivery(request.spec.kind, delivery.num_delivered)
        if request.batch:
            return await self._handle_batch(model, request, delivery)
        with log_context(
            job_id=request.job_id,
            tenant=request.tenant,
            **{"pass": request.pass_name},
            delivery=delivery.num_delivered,
        ):
            try:
                self._check_request(model, request)
            except InvalidInput as error:
                return await self._fail(request, delivery, error)

            async def work(cancel: threading.Event) -> None:
                output = await self._taken_over(request, cancel)
                if output is None:
                    output = await self._run(request, delivery, cancel)
                await self._complete(request, output)

            return await self._decide(request.job_id, work, functools.partial(self._fail, request, delivery))

    async def _decide(
        self,
        job_id: str,
        work: Callable[[threading.Event], Awaitable[None]],
        fail: Callable[[MultipassError], Awaitable[Decision]],
    ) -> Decision:
        """Run one message's work with its job's cancel flag registered; one decision for every outcome."""
        if job_id in self._cancelled:
            return await fail(Cancelled("job cancelled before the pass started"))
        cancel = threading.Event()
        self._running.setdefault(job_id, set()).add(cancel)
        try:
            await work(cancel)
            return Ack()
        except _HandedBack:
            log.info("held pass handed back: the worker is stopping")
            return Nak(0.0)
        except MultipassError as error:
            return await fail(error)
        except Exception as error:  # a bug: fail this delivery, let the backoff retry it
            log.exception("pass failed unexpectedly")
            return await fail(_Internal(f"{type(error).__name__}: {error}"))
        finally:
            running = self._running.get(job_id, set())
            running.discard(cancel)
            if not running:
                self._running.pop(job_id, None)

    async def _complete(self, request: diffusion_pb2.PassRequest, output: PassOutput) -> None:
        """Store the output at the request's key, publish ``completed``, fill the shared pass cache.

        The output is in the object store before the event that announces it (another process may read
        it as soon as the event is out); the event carries a copy of it when the request asked for one
        (``copy_output``: the next pass runs in the gateway's segmentation step) and it is small. Only then is it remembered among the recent outputs, and the
        pass-cache copy is written after the event, off the chain's path (a lost copy is a cache miss).
        """
        phase = time.perf_counter()
        data = await encode_png_async(output.image, self.settings.png_compress_level)
        phase = _phase_done("encode", phase)
        ref = png_ref(
            request.output_bucket,
            request.output_key,
            data,
            width=output.image.width,
            height=output.image.height,
        )
        self._run_ahead(request, output, ref)
        await self.store.put_png_at(ref, data)
        phase = _phase_done("upload", phase)
        completed = events_pb2.PassCompleted(result=_result(output, ref))
        if request.copy_output and len(data) <= MAX_COPY_BYTES:
            completed.output_copy.CopyFrom(object_copy(ref, data))
        await publish_pass_event(self.bus, request, names.EVENT_COMPLETED, completed=completed)
        _phase_done("announce", phase)
        self.recent.remember(ref.bucket, ref.key, ref.sha256, output.image)
        cache = self.engine.cache
        if not output.cache_hit and getattr(cache, "written_by_worker", False):
            self._write_cache_copy(cache, output.spec_hash, data)
        log.info(
            "pass completed",
            extra={
                "seconds": round(output.duration_seconds, 3),
                "cache_hit": output.cache_hit,
                "image": request.image_index,
            },
        )

    # -- running ahead (run_ahead.py) ---------------------------------------------------------------

    def _run_ahead(
        self, request: diffusion_pb2.PassRequest, output: PassOutput, ref: common_pb2.ImageRef
    ) -> None:
        """Start ``request.next_pass`` on this pass's output (encoded, with ``ref``, not stored yet) when
        nothing else waits for the device."""
        following = request.next_pass
        if (
            not self.settings.run_ahead
            or not request.HasField("next_pass")
            or request.batch
            or self.device.held > 0
            or self._stop.is_set()
            or request.job_id in self._cancelled
            or following.spec.model not in self.engine.runtimes
        ):
            return
        expected = diffusion_pb2.PassRequest()
        expected.CopyFrom(following)
        expected.spec.image.CopyFrom(ref)
        # The input is read from memory under the reference it is about to be stored with: until its
        # ``completed`` event is out, only this run knows that reference.
        self.recent.remember(ref.bucket, ref.key, ref.sha256, output.image)
        run = AheadRun(expected)
        # The gateway attaches the copies of the next pass's inputs to this request.
        run.task = asyncio.ensure_future(self._run_ahead_pass(run, list(request.copies)))
        self.ahead.begin(run)
        log.debug("running ahead", extra={"next": following.pass_name})

    async def _run_ahead_pass(self, run: AheadRun, copies: list[common_pb2.ObjectCopy]) -> PassOutput:
        spec = run.expected.spec
        job_id = run.expected.job_id
        self._running.setdefault(job_id, set()).add(run.cancel)
        self.device.hold()
        on_device = False
        try:
            inputs = await self.fetch_inputs(spec, copies=copies, tenant=run.expected.tenant)
            run.steps_total = _steps_to_run(spec, inputs)
            if not await self.device.wait_turn(self._stop, run.cancel):
                raise Cancelled("run ahead stopped before it had the device")
            on_device = True
            try:
                return await self.device.run(
                    functools.partial(
                        self.engine.run, spec, inputs, progress=run.progress, cancel=run.cancel, counted=False
                    )
                )
            finally:
                self.device.end_turn()
        finally:
            if not on_device:
                self.device.release()
            running = self._running.get(job_id, set())
            running.discard(run.cancel)
            if not running:
                self._running.pop(job_id, None)

    async def _taken_over(
        self, request: diffusion_pb2.PassRequest, cancel: threading.Event
    ) -> PassOutput | None:
        """The output of the run ahead of exactly this request, if there is one and it succeeds (its
        ``started`` published at once); None: run the request as usual."""
        run = self.ahead.take(request)
        if run is None:
            return None
        started = events_pb2.PassStarted(worker=self.settings.worker_name, steps_total=run.steps_total)
        announced = asyncio.ensure_future(
            publish_pass_event(self.bus, request, names.EVENT_STARTED, started=started)
        )
        # The steps still to come are reported as the request's progress.
        reporter = _ProgressReporter(
            self, request, asyncio.get_running_loop(), self.settings.progress_interval_s, announced
        )
        run.reporter = reporter
        try:
            output = await run.result()
        finally:
            run.reporter = None
            await announced
            await reporter.drain()
        if cancel.is_set():
            raise Cancelled("job cancelled while the pass ran")
        if output is not None:
            self.engine.count(run.expected.spec, output)
        return output

    def _write_cache_copy(self, cache, spec_hash: str, data: bytes) -> None:
        async def write() -> None:
            try:
                await cache.write_encoded(spec_hash, data)
            except Exception:  # noqa: BLE001 - a cache copy that failed is a later cache miss, nothing more
                log.warning("pass-cache copy not written", exc_info=True)

        task = asyncio.create_task(write(), name=f"pass-cache-{spec_hash[:12]}")
        self._cache_writes.add(task)
        task.add_done_callback(self._cache_writes.discard)

    async def _handle_batch(
        self, model: str, batched: diffusion_pb2.PassRequest, delivery: Delivery
    ) -> Decision:
        """A batched request (``PassRequest.batch``): one engine call for every member's seed.

        Every member is a pass of its own to the gateway: it gets its own started, progress, completed or
        failed events (under its image index and attempt) and its output at its own key. A failure fails
        every member alike, and the message gets one decision (Nak or Term) for all of them.
        """
        members = batch_members(batched)
        with log_context(
            job_id=batched.job_id,
            tenant=batched.tenant,
            **{"pass": batched.pass_name},
            delivery=delivery.num_delivered,
            batch=len(members),
        ):
            try:
                for member in members:
                    self._check_request(model, member)
            except InvalidInput as error:
                return await self._fail_all(members, delivery, error)

            async def work(cancel: threading.Event) -> None:
                outputs = await self._run_batch(batched, members, cancel)
                for member, output in zip(members, outputs, strict=True):
                    await self._complete(member, output)

            return await self._decide(
                batched.job_id, work, functools.partial(self._fail_all, members, delivery)
            )

    async def _run_batch(
        self,
        batched: diffusion_pb2.PassRequest,
        members: list[diffusion_pb2.PassRequest],
        cancel: threading.Event,
    ) -> list[PassOutput]:
        """As :meth:`_run`, for every member at once: one fetch of the shared inputs, one device turn."""
        seeds = [member.spec.seed for member in members]
        return await self._device_turn(
            batched.spec,
            members,
            cancel,
            lambda inputs, reporters: functools.partial(
                self.engine.run_batch, batched.spec, seeds, inputs, progress=reporters, cancel=cancel
            ),
        )

    async def _fail_all(
        self, members: list[diffusion_pb2.PassRequest], delivery: Delivery, error: MultipassError
    ) -> Decision:
        """Publish the failure for every member of a batch; the message's one decision."""
        decision: Decision = Ack()
        for member in members:
            decision = await self._fail(member, delivery, error)
        return decision

    def _check_request(self, model: str, request: diffusion_pb2.PassRequest) -> None:
        problems = []
        for field in ("job_id", "pass_name", "output_bucket", "output_key"):
            if not getattr(request, field):
                problems.append(Violation(field, "is required"))
        if request.spec.model != model:
            problems.append(
                Violation("spec.model", f"got {request.spec.model!r} on the subject of model {model!r}")
            )
        if problems:
            raise InvalidInput.of(problems)
        names.check_token(request.job_id, "job_id")

    async def _run(
        self, request: diffusion_pb2.PassRequest, delivery: Delivery, cancel: threading.Event
    ) -> PassOutput:
        """Fetch the inputs while another pass may hold the device, wait for the device, run."""
        return await self._device_turn(
            request.spec,
            [request],
            cancel,
            lambda inputs, reporters: functools.partial(
                self.engine.run, request.spec, inputs, progress=reporters[0], cancel=cancel
            ),
        )

    async def _device_turn(
        self,
        spec: diffusion_pb2.PassSpec,
        members: list[diffusion_pb2.PassRequest],
        cancel: threading.Event,
        engine_call: Callable[[PassInputs, list[_ProgressReporter]], Callable[[], T]],
    ) -> T:
        """Hold a place, fetch the inputs, wait for the device, publish ``started`` per member, run there."""
        self.ahead.make_way()
        self.device.hold()
        on_device = False
        try:
            inputs = await self.fetch_inputs(spec, copies=members[0].copies, tenant=members[0].tenant)
            if not await self.device.wait_turn(self._stop, cancel):
                if cancel.is_set():
                    raise Cancelled("job cancelled before the pass started")
                raise _HandedBack
            loop = asyncio.get_running_loop()
            interval = self.settings.progress_interval_s
            started = events_pb2.PassStarted(
                worker=self.settings.worker_name, steps_total=_steps_to_run(spec, inputs)
            )

            # ``started`` goes out while the engine begins (its acknowledgement is no reason to keep the
            # device waiting); progress events follow it, and ``completed`` waits for all of them.
            async def announce() -> None:
                for member in members:
                    await publish_pass_event(self.bus, member, names.EVENT_STARTED, started=started)

            announced = asyncio.ensure_future(announce())
            reporters = [_ProgressReporter(self, member, loop, interval, announced) for member in members]
            try:
                on_device = True
                result = await self.device.run(engine_call(inputs, reporters))
                await announced
                return result
            finally:
                self.device.end_turn()
                if not announced.done():
                    with contextlib.suppress(Exception):
                        await announced
                for reporter in reporters:
                    await reporter.drain()
        finally:
            if not on_device:
                self.device.release()

    async def fetch_inputs(
        self,
        spec: diffusion_pb2.PassSpec,
        copies: Iterable[common_pb2.ObjectCopy] = (),
        *,
        tenant: str = "",
    ) -> PassInputs:
        """The pass's inputs, read together (:func:`multipass_diffusion.input_reads.read_inputs`); masks
        and control images from the request's ``copies`` where one matches. ``tenant`` scopes the pass
        cache: one tenant's outputs are never another's cache hits."""
        started = time.perf_counter()
        held = RequestCopies(copies)
        inputs = await read_inputs(
            spec,
            store=self.store,
            read_image=lambda ref, field, mode: self._image(ref, field=field, mode=mode),
            read_stored=lambda ref, field, mode: held.read(ref, field=field, mode=mode, store=self.store),
            tune_cache_dir=Path(self.settings.tune_cache_dir),
        )
        inputs.cache_scope = tenant
        _phase_done("fetch", started)
        return inputs

    async def _image(self, ref: common_pb2.ImageRef, *, field: str, mode: str):
        """An input image: this worker's own recent output when it is that very object, else the store's."""
        found = self.recent.recall(ref.bucket, ref.key, ref.sha256, mode)
        if found is not None:
            return found
        return await self.store.get_image(ref, field=field, mode=mode)

    async def _fail(
        self, request: diffusion_pb2.PassRequest, delivery: Delivery, error: MultipassError
    ) -> Decision:
        retry = error.retriable and not delivery.is_last_delivery
        metrics.count_failed_pass(request.spec.kind, cancelled=isinstance(error, Cancelled), retried=retry)
        detail = common_pb2.ErrorDetail(
            code=common_pb2.ErrorCode.Value(f"ERROR_CODE_{_code(error)}"),
            message=str(error.message),
            pass_name=request.pass_name,
            field_violations=[
                common_pb2.FieldViolation(field=v.field, description=v.description) for v in error.violations
            ],
        )
        suffix = f"{names.EVENT_FAILED}:retry{delivery.num_delivered}" if retry else names.EVENT_FAILED
        if request.job_id:
            try:
                await publish_pass_event(
                    self.bus,
                    request,
                    names.EVENT_FAILED,
                    suffix=suffix,
                    failed=events_pb2.PassFailed(error=detail, retriable=retry),
                )
            except MultipassError:
                log.warning("could not publish the failed event", exc_info=True)
        if retry:
            delay = backoff_delay(NAK_BACKOFF, delivery.num_delivered)
            log.warning("pass failed; nak", extra={"error": str(error), "delay": delay})
            return Nak(delay)
        log.warning("pass failed; term", extra={"error": str(error), "code": error.code_name})
        return Term(f"{error.code_name}: {error}")

    async def _on_term(self, delivery: Delivery, reason: str) -> None:
        """The bus terminated a message itself (undecodable payload, last delivery): say so if we can."""
        try:
            request = delivery.parse(diffusion_pb2.PassRequest)
        except InvalidInput:
            log.error(
                "undecodable pass request terminated", extra={"reason": reason, "subject": delivery.subject}
            )
            return
        if request.job_id:
            detail = common_pb2.ErrorDetail(
                code=common_pb2.ERROR_CODE_INTERNAL, message=reason, pass_name=request.pass_name
            )
            for member in batch_members(request):
                await publish_pass_event(
                    self.bus,
                    member,
                    names.EVENT_FAILED,
                    failed=events_pb2.PassFailed(error=detail, retriable=False),
                )


def _phase_done(phase: str, since: float) -> float:
    """Observe the seconds since ``since`` under ``phase``; the time now, for the next phase."""
    now = time.perf_counter()
    metrics.PASS_PHASE.labels(phase=phase).observe(now - since)
    return now


class _ProgressReporter:
    """Called on the device thread after each step; publishes at most one event per ``interval``."""

    def __init__(
        self,
        worker: DiffusionWorker,
        request,
        loop: asyncio.AbstractEventLoop,
        interval: float,
        announced: asyncio.Future,
    ):
        self.worker = worker
        self.request = request
        self.loop = loop
        self.interval = interval
        #: The publish of the pass's ``started`` events, which every progress event follows.
        self.announced = announced
        self._last = float("-inf")
        self._pending: list = []

    def __call__(self, step: int, total: int) -> None:
        now = time.monotonic()
        if now - self._last < self.interval and step < total:
            return
        self._last = now
        progress = events_pb2.PassProgress(step=step, steps_total=total)
        self._pending.append(asyncio.run_coroutine_threadsafe(self._publish(progress), self.loop))

    async def _publish(self, progress: events_pb2.PassProgress) -> None:
        await asyncio.shield(self.announced)
        await publish_pass_event(
            self.worker.bus,
            self.request,
            names.EVENT_PROGRESS,
            suffix=f"{names.EVENT_PROGRESS}:{progress.step}",
            progress=progress,
        )

    async def drain(self) -> None:
        """Wait for the progress events sent so far (so ``completed`` comes after them)."""
        for future in self._pending:
            try:
                await asyncio.wrap_future(future)
            except Exception:  # noqa: BLE001 - a lost progress event is not worth failing the pass
                log.debug("progress event not published", exc_info=True)


class _HandedBack(Exception):
    """A held pass gives its device turn up because the worker stops (decided Nak, no delay)."""


class _Internal(MultipassError):
    code_name = "INTERNAL"
    retriable = True


def batch_members(request: diffusion_pb2.PassRequest) -> list[diffusion_pb2.PassRequest]:
    """The passes a request stands for: itself, then one request per ``batch`` member (lead first).

    A member's request is the lead's with the member's image index, attempt, seed and output key, and no
    batch of its own, so the ordinary event and storage code serves it unchanged.
    """
    lead = diffusion_pb2.PassRequest()
    lead.CopyFrom(request)
    lead.ClearField("batch")
    members = [lead]
    for member in request.batch:
        one = diffusion_pb2.PassRequest()
        one.CopyFrom(lead)
        one.image_index, one.attempt, one.output_key = member.image_index, member.attempt, member.output_key
        one.spec.seed = member.seed
        members.append(one)
    return members


def _steps_to_run(spec: diffusion_pb2.PassSpec, inputs: PassInputs) -> int:
    """What ``started`` reports as the pass's steps: those it will really run (0: its progress tells)."""
    handler = HANDLERS.get(spec.kind)
    return handler.steps_to_run(spec, inputs) if handler is not None else 0


def _code(error: MultipassError) -> str:
    name = error.code_name
    return name if f"ERROR_CODE_{name}" in common_pb2.ErrorCode.keys() else "INTERNAL"  # noqa: SIM118 - an enum wrapper


def _result(output: PassOutput, ref: common_pb2.ImageRef) -> diffusion_pb2.PassResult:
    return diffusion_pb2.PassResult(
        output=ref,
        duration_seconds=output.duration_seconds,
        cache_hit=output.cache_hit,
        spec_hash=output.spec_hash,
        warnings=output.warnings,
        metadata=output.metadata,
    )
