"""The JetStream side of the diffusion worker: pass requests in, images and pass events out.

One durable pull consumer per served model on ``multipass.pass.diffusion.<model>`` (explicit ack, ack
wait sized for long passes, ``in_progress`` heartbeats from the bus while a pass runs, bounded
``max_deliver``). Each message ends in one decision: Ack after the output is stored and ``completed``
is published; Nak with backoff when the object store or NATS is unavailable; Term plus a ``failed``
event (code, message, pass name, field violations) for a request that cannot succeed. Model work runs
on the engine's single device thread, never on the event loop. ``multipass.cancel.<job_id>`` (core NATS)
stops that job's running pass within one denoising step.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import Executor
from pathlib import Path

from google.protobuf.timestamp_pb2 import Timestamp

from multipass import subjects
from multipass.bus import Ack, Bus, Decision, Delivery, Nak, Term, backoff_delay
from multipass.errors import Cancelled, InvalidInput, MultipassError, Violation
from multipass.images import encode_png
from multipass.logs import log_context
from multipass.v1 import common_pb2, diffusion_pb2, events_pb2
from multipass_diffusion import tune_files
from multipass_diffusion.engine import Engine, PassOutput
from multipass_diffusion.passes.context import PassInputs
from multipass_diffusion.settings import DiffusionSettings

log = logging.getLogger(__name__)

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

    # -- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._cancel_sub = await self.bus.subscribe_core(subjects.CANCEL_ALL, self._on_cancel)
        for model in self.engine.runtimes:
            await self.bus.ensure_consumer(**self._consumer_config(model))
            self._tasks.append(asyncio.create_task(self._consume(model), name=f"consume-{model}"))

    def _consumer_config(self, model: str) -> dict:
        return {
            "stream": subjects.STREAM_PASSES,
            "durable": subjects.diffusion_durable(model),
            "filter_subject": subjects.diffusion_pass_subject(model),
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
        )

    async def stop(self) -> None:
        """Stop fetching; passes in flight finish and are decided; then unsubscribe."""
        self._stop.set()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._cancel_sub is not None:
            await self._cancel_sub.unsubscribe()

    # -- cancellation ----------------------------------------------------------------------------------

    async def _on_cancel(self, msg) -> None:
        job_id = subjects.job_id_from_subject(msg.subject)
        now = time.monotonic()
        self._cancelled[job_id] = now
        while self._cancelled and next(iter(self._cancelled.values())) < now - CANCEL_MEMORY_SECONDS:
            self._cancelled.popitem(last=False)
        for event in self._running.get(job_id, ()):
            event.set()
        log.info("cancel received", extra={"job_id": job_id, "running": len(self._running.get(job_id, ()))})

    # -- one message -----------------------------------------------------------------------------------

    async def handle(self, model: str, delivery: Delivery) -> Decision:
        request = delivery.parse(diffusion_pb2.PassRequest)
        with log_context(
            job_id=request.job_id, **{"pass": request.pass_name}, delivery=delivery.num_delivered
        ):
            try:
                self._check_request(model, request)
            except InvalidInput as error:
                return await self._fail(request, delivery, error)
            if request.job_id in self._cancelled:
                return await self._fail(request, delivery, Cancelled("job cancelled before the pass started"))
            cancel = threading.Event()
            self._running.setdefault(request.job_id, set()).add(cancel)
            try:
                output = await self._run(request, delivery, cancel)
                data = await asyncio.to_thread(encode_png, output.image)
                ref = await self.store.put_png(
                    request.output_bucket,
                    request.output_key,
                    data,
                    width=output.image.width,
                    height=output.image.height,
                )
                await self._publish(
                    request,
                    subjects.EVENT_COMPLETED,
                    completed=events_pb2.PassCompleted(result=_result(output, ref)),
                )
                cache = self.engine.cache
                if not output.cache_hit and getattr(cache, "written_by_worker", False):
                    await cache.write_encoded(output.spec_hash, data)
                log.info(
                    "pass completed",
                    extra={"seconds": round(output.duration_seconds, 3), "cache_hit": output.cache_hit},
                )
                return Ack()
            except MultipassError as error:
                return await self._fail(request, delivery, error)
            except Exception as error:  # a bug: fail this delivery, let the backoff retry it
                log.exception("pass failed unexpectedly")
                return await self._fail(request, delivery, _Internal(f"{type(error).__name__}: {error}"))
            finally:
                running = self._running.get(request.job_id, set())
                running.discard(cancel)
                if not running:
                    self._running.pop(request.job_id, None)

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
        subjects.check_token(request.job_id, "job_id")

    async def _run(
        self, request: diffusion_pb2.PassRequest, delivery: Delivery, cancel: threading.Event
    ) -> PassOutput:
        spec = request.spec
        await self._publish(
            request,
            subjects.EVENT_STARTED,
            started=events_pb2.PassStarted(worker=self.settings.worker_name, steps_total=spec.steps),
        )
        inputs = await self.fetch_inputs(spec)
        loop = asyncio.get_running_loop()
        reporter = _ProgressReporter(self, request, loop, self.settings.progress_interval_s)
        run = functools.partial(self.engine.run, spec, inputs, progress=reporter, cancel=cancel)
        try:
            return await loop.run_in_executor(self.executor, run)
        finally:
            await reporter.drain()

    async def fetch_inputs(self, spec: diffusion_pb2.PassSpec) -> PassInputs:
        """The pass's images, decoded, and its tune files on local disk (cached by sha256).

        Tune files: every ``spec.tune_files`` entry the pass needs (:func:`tune_files.needed_keys`: the
        adapters of ``spec.loras`` and of each face's ``loras``, and the tunes' reference images), under
        the same keys in ``PassInputs.tune_paths``.
        """
        inputs = PassInputs()
        if spec.HasField("image"):
            inputs.image = await self.store.get_image(spec.image, field="spec.image", mode="RGB")
        if spec.HasField("mask"):
            inputs.mask = await self.store.get_image(spec.mask, field="spec.mask", mode="L")
        if spec.HasField("control_image"):
            inputs.control_image = await self.store.get_image(
                spec.control_image, field="spec.control_image", mode="RGB"
            )
        for key in tune_files.needed_keys(spec):
            ref = spec.tune_files[key]
            try:
                inputs.tune_paths[key] = await self.store.fetch_to_cache(
                    ref, Path(self.settings.tune_cache_dir)
                )
            except InvalidInput as error:  # the reference lacks its sha256: name the entry
                raise InvalidInput.of(
                    [Violation(f"spec.tune_files[{key}].{v.field}", v.description) for v in error.violations]
                ) from error
        return inputs

    async def _fail(
        self, request: diffusion_pb2.PassRequest, delivery: Delivery, error: MultipassError
    ) -> Decision:
        retry = error.retriable and not delivery.is_last_delivery
        detail = common_pb2.ErrorDetail(
            code=common_pb2.ErrorCode.Value(f"ERROR_CODE_{_code(error)}"),
            message=str(error.message),
            pass_name=request.pass_name,
            field_violations=[
                common_pb2.FieldViolation(field=v.field, description=v.description) for v in error.violations
            ],
        )
        suffix = f"{subjects.EVENT_FAILED}:retry{delivery.num_delivered}" if retry else subjects.EVENT_FAILED
        if request.job_id:
            try:
                await self._publish(
                    request,
                    subjects.EVENT_FAILED,
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
            await self._publish(
                request, subjects.EVENT_FAILED, failed=events_pb2.PassFailed(error=detail, retriable=False)
            )

    async def _publish(
        self, request: diffusion_pb2.PassRequest, event: str, *, suffix: str | None = None, **payload
    ) -> None:
        message = events_pb2.PassEvent(
            job_id=request.job_id,
            tenant=request.tenant,
            image_index=request.image_index,
            pass_name=request.pass_name,
            attempt=request.attempt,
            **payload,
        )
        now = Timestamp()
        now.GetCurrentTime()
        message.time.CopyFrom(now)
        msg_id = subjects.pass_msg_id(
            request.job_id, request.image_index, request.pass_name, request.attempt, suffix or event
        )
        await self.bus.publish(subjects.event_subject(request.job_id, event), message, msg_id=msg_id)


class _ProgressReporter:
    """Called on the device thread after each step; publishes at most one event per ``interval``."""

    def __init__(self, worker: DiffusionWorker, request, loop: asyncio.AbstractEventLoop, interval: float):
        self.worker = worker
        self.request = request
        self.loop = loop
        self.interval = interval
        self._last = float("-inf")
        self._pending: list = []

    def __call__(self, step: int, total: int) -> None:
        now = time.monotonic()
        if now - self._last < self.interval and step < total:
            return
        self._last = now
        progress = events_pb2.PassProgress(step=step, steps_total=total)
        coroutine = self.worker._publish(
            self.request,
            subjects.EVENT_PROGRESS,
            suffix=f"{subjects.EVENT_PROGRESS}:{step}",
            progress=progress,
        )
        self._pending.append(asyncio.run_coroutine_threadsafe(coroutine, self.loop))

    async def drain(self) -> None:
        """Wait for the progress events sent so far (so ``completed`` comes after them)."""
        for future in self._pending:
            try:
                await asyncio.wrap_future(future)
            except Exception:  # noqa: BLE001 - a lost progress event is not worth failing the pass
                log.debug("progress event not published", exc_info=True)


class _Internal(MultipassError):
    code_name = "INTERNAL"
    retriable = True


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
