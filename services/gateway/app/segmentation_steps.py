"""The segmentation steps the gateway runs itself, from its own work queue (``multipass.pass.gateway``).

* ``segment``: one mask per person slot (Segmentation.Segment with the job's slots) under
  ``jobs/<tenant>/<job>/image-<k>/mask-person-<i>.png``; the masks are the pass's result (it has no
  output image: the next pass works on the image it segmented).
* ``mask``: the --mask_prompt mask of the input image (Segmentation.Segment with text).
* ``faces`` / ``face_correct`` / ``face_swap``: find the faces (Segmentation.DetectFaces), then forward
  the request with its faces to the diffusion worker
  (:func:`~multipass_gateway.domain.face_targets.faces_request`). No face found: the pass completes at
  once, unchanged, with a warning.

Results travel as ordinary pass events, so the orchestrator treats these passes like any other.
Requests for a cancelled job or an outdated attempt are dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from multipass import names
from multipass.bus import Ack, Bus, Delivery, Term, publish_pass_event
from multipass.errors import MultipassError
from multipass.logs import log_context
from multipass.v1 import common_pb2, diffusion_pb2, events_pb2, prompt_pb2, segmentation_pb2
from multipass_gateway.domain import job_state
from multipass_gateway.domain.face_targets import FaceFilter, faces_request
from multipass_gateway.infra.clients import InternalClients
from multipass_gateway.infra.job_store import JobStore
from multipass_gateway.infra.object_copies import ObjectCopies

log = logging.getLogger(__name__)

#: A request whose replica died comes back this long after; a long segmentation call is kept by heartbeats.
ACK_WAIT_SECONDS = 15.0
MAX_DELIVER = 6
WORKER_NAME = "gateway"


def error_detail(error: MultipassError) -> common_pb2.ErrorDetail:
    detail = common_pb2.ErrorDetail(
        code=common_pb2.ErrorCode.Value(f"ERROR_CODE_{error.code_name}"), message=str(error)
    )
    for violation in error.violations:
        detail.field_violations.add(field=violation.field, description=violation.description)
    return detail


def _runs_now(record: events_pb2.JobRecord, request: diffusion_pb2.PassRequest, index: int) -> bool:
    """Whether the record shows the request's attempt as the pass's current, active one."""
    state = record.job.images[request.image_index].passes[index]
    return (
        not job_state.is_terminal(record)
        and state.attempt == request.attempt
        and state.status in job_state.ACTIVE_PASS
    )


#: Hands a pass event this replica published to its orchestrator (with its Nats-Msg-Id).
PublishedHook = Callable[[events_pb2.PassEvent, str], Awaitable[None]]


def text_mask_request(mask: prompt_pb2.MaskSpec) -> segmentation_pb2.TextMaskRequest:
    """The prompt mask's flags as the segmentation service takes them: ``--mask_prompt``, ``--mask_negative``,
    ``--mask_invert`` and ``--mask_dilate`` in pixels or in percent of the shorter side."""
    request = segmentation_pb2.TextMaskRequest(prompt=mask.prompt, negative=mask.negative, invert=mask.invert)
    which = mask.WhichOneof("dilate")
    if which == "dilate_pixels":
        request.dilate_pixels = mask.dilate_pixels
    elif which == "dilate_percent":
        request.dilate_percent = mask.dilate_percent
    return request


class SegmentationSteps:
    def __init__(
        self,
        bus: Bus,
        jobs: JobStore,
        clients: InternalClients,
        *,
        concurrency: int = 4,
        on_completed: PublishedHook | None = None,
        copies: ObjectCopies | None = None,
        face_filter: FaceFilter | None = None,
    ):
        self.bus = bus
        self.jobs = jobs
        self.clients = clients
        self.concurrency = concurrency
        #: Applies a step's ``completed`` event here once it is stored, instead of after the stream's
        #: delivery (the orchestrator then acknowledges that delivery without applying it again).
        self.on_completed = on_completed
        #: The copies this replica holds (the image to segment may be among them).
        self.copies = copies
        #: Which detected faces the face passes repaint.
        self.face_filter = face_filter or FaceFilter()

    async def _completed(
        self, request: diffusion_pb2.PassRequest, completed: events_pb2.PassCompleted
    ) -> None:
        event, msg_id = await publish_pass_event(
            self.bus, request, names.EVENT_COMPLETED, completed=completed
        )
        if self.on_completed is not None:
            await self.on_completed(event, msg_id)

    async def _fail(self, request: diffusion_pb2.PassRequest, error: MultipassError) -> None:
        failed = events_pb2.PassFailed(error=error_detail(error), retriable=False)
        await publish_pass_event(self.bus, request, names.EVENT_FAILED, failed=failed)

    async def on_term(self, delivery: Delivery, reason: str) -> None:
        """The consume loop gave up on a request (retries exhausted): report the pass failed."""
        try:
            request = delivery.parse(diffusion_pb2.PassRequest)
        except MultipassError:
            return
        detail = common_pb2.ErrorDetail(code=common_pb2.ERROR_CODE_UNAVAILABLE, message=f"gave up: {reason}")
        await publish_pass_event(
            self.bus, request, names.EVENT_FAILED, failed=events_pb2.PassFailed(error=detail)
        )

    async def handle(self, delivery: Delivery):
        request = delivery.parse(diffusion_pb2.PassRequest)
        with log_context(job_id=request.job_id, **{"pass": request.pass_name, "image": request.image_index}):
            record = self._held_record_for_segment(request)
            if record is None:
                record = await self.jobs.load(request.tenant, request.job_id)
            if record is None:
                return Term(f"job {request.job_id} does not exist")
            index = job_state.find_pass(record, request.image_index, request.pass_name)
            if index is None:
                return Term(f"no pass {request.pass_name} in image {request.image_index}")
            if not _runs_now(record, request, index):
                log.info("dropping an outdated gateway pass request")
                return Ack()
            planned = record.plans[request.image_index].passes[index]
            try:
                if planned.kind in job_state.SEGMENT_KINDS:
                    await self._segment(record, request, planned)
                elif planned.needs_faces:
                    await self._faces(record, request)
                else:
                    return Term(f"pass kind {planned.kind!r} does not run in the gateway")
            except MultipassError as error:
                if error.retriable and not delivery.is_last_delivery:
                    raise
                await self._fail(request, error)
                return Term(str(error))
        return Ack()

    def _held_record_for_segment(self, request: diffusion_pb2.PassRequest) -> events_pb2.JobRecord | None:
        """The record this replica holds, when it shows the request as a segmentation step to run now.

        A segmentation step reads only what the submit fixed (slots, the mask prompt), so a record another
        replica wrote since cannot make it wrong: at worst it runs for a job cancelled meanwhile, whose
        result the orchestrator ignores. Anything that does not fit is read from the store.
        """
        record = self.jobs.recent(request.tenant, request.job_id)
        if record is None:
            return None
        index = job_state.find_pass(record, request.image_index, request.pass_name)
        if index is None or not _runs_now(record, request, index):
            return None
        planned = record.plans[request.image_index].passes[index]
        return record if planned.kind in job_state.SEGMENT_KINDS else None

    def _image_copies(self, request: diffusion_pb2.PassRequest) -> list[common_pb2.ObjectCopy]:
        """A copy of the image to segment: one the request carries, else one this replica holds (the
        output copy of the pass before, kept when its ``completed`` event was applied here)."""
        image = request.spec.image
        carried = [copy for copy in request.copies if (copy.bucket, copy.key) == (image.bucket, image.key)]
        if carried or self.copies is None:
            return carried
        held = self.copies.held(image)
        return [held] if held is not None else []

    async def _segment(
        self,
        record: events_pb2.JobRecord,
        request: diffusion_pb2.PassRequest,
        planned: events_pb2.PlannedPass,
    ) -> None:
        image = request.spec.image
        segment = segmentation_pb2.SegmentRequest(
            image=image,
            output_bucket=names.BUCKET_JOBS,
            output_prefix=names.image_prefix(record.tenant, record.job.job_id, request.image_index),
            copies=self._image_copies(request),
        )
        if planned.kind == "segment":
            segment.persons.slots.extend(record.slots)
        else:
            segment.text.CopyFrom(text_mask_request(record.job.parsed.mask))
        # ``started`` goes out while the segmentation service works; ``completed`` waits for it.
        started = asyncio.ensure_future(
            publish_pass_event(
                self.bus,
                request,
                names.EVENT_STARTED,
                started=events_pb2.PassStarted(worker=WORKER_NAME, steps_total=1),
            )
        )
        try:
            response = await self.clients.segment(segment)
        except BaseException:
            started.cancel()
            await asyncio.gather(started, return_exceptions=True)
            raise
        await started  # one that could not be published fails the step (retried)
        completed = events_pb2.PassCompleted(
            result=diffusion_pb2.PassResult(warnings=list(response.warnings)),
            masks=list(response.masks),
        )
        await self._completed(request, completed)

    async def _warn(self, request: diffusion_pb2.PassRequest, warnings: list[str]) -> None:
        def add(record: events_pb2.JobRecord) -> bool:
            new = [w for w in warnings if w not in record.job.warnings]
            record.job.warnings.extend(new)
            return bool(new)

        await self.jobs.update(request.tenant, request.job_id, add)

    async def _faces(self, record: events_pb2.JobRecord, request: diffusion_pb2.PassRequest) -> None:
        image = request.spec.image
        masks = record.job.images[request.image_index].masks
        person_masks = [
            segmentation_pb2.MaskResult(index=i, mask=masks[f"person-{i}"], label=f"person-{i}")
            for i in range(len(record.job.persons))
            if f"person-{i}" in masks
        ]
        same_size = all(m.mask.width == image.width and m.mask.height == image.height for m in person_masks)
        detect = segmentation_pb2.DetectFacesRequest(
            image=image, person_masks=person_masks if same_size else []
        )
        response = await self.clients.detect_faces(detect)
        scale = None
        if person_masks and not same_size:
            first = person_masks[0].mask
            scale = (image.width / max(1, first.width), image.height / max(1, first.height))
        faces, left_out = self.face_filter.select(list(response.faces), image.width, image.height)
        if not faces:
            warnings = left_out or ["no face found; image unchanged"]
            result = diffusion_pb2.PassResult(output=image, warnings=warnings)
            await self._completed(request, events_pb2.PassCompleted(result=result))
            return
        if left_out:  # the worker's completion carries its own warnings: these go to the job now
            await self._warn(request, [f"{request.pass_name}: {warning}" for warning in left_out])
        forwarded = faces_request(record, request, faces, scale)
        await self.bus.publish(
            names.diffusion_pass_subject(request.spec.model),
            forwarded,
            msg_id=names.pass_msg_id(
                request.job_id, request.image_index, request.pass_name, request.attempt, "faces"
            ),
        )

    async def run(self, stop: asyncio.Event) -> None:
        await self.bus.consume(
            stream=names.STREAM_PASSES,
            durable=names.GATEWAY_PASS_DURABLE,
            filter_subject=names.GATEWAY_PASS_SUBJECT,
            handler=self.handle,
            ack_wait=ACK_WAIT_SECONDS,
            max_deliver=MAX_DELIVER,
            max_ack_pending=max(16, self.concurrency * 4),
            stop=stop,
            batch=self.concurrency,
            concurrency=self.concurrency,
            backoff=(1.0, 2.0, 5.0, 10.0, 30.0),
            on_term=self.on_term,
        )
