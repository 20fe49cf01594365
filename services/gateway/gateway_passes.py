"""The gateway's own work queue (``multipass.pass.gateway``): passes that call the Segmentation service.

* ``segment``: one mask per person slot (Segmentation.Segment with the job's slots) under
  ``jobs/<tenant>/<job>/image-<k>/mask-person-<i>.png``; the pass's output is the image it segmented.
* ``mask``: the --mask_prompt mask of the input image (Segmentation.Segment with text).
* ``faces`` / ``face_correct`` / ``face_swap``: find the faces (Segmentation.DetectFaces), give each the
  prompt and LoRAs of the person whose slot holds it, and forward the completed request to the diffusion
  worker (:func:`faces_request`). No face found: the pass completes at once, unchanged, with a warning.

Results travel as ordinary pass events on ``multipass.events.<job_id>.<event>``, so the orchestrator
treats these passes like any other. Requests for a cancelled job or an outdated attempt are dropped.
"""

from __future__ import annotations

import asyncio
import logging

from multipass import subjects
from multipass.bus import Ack, Bus, Delivery, Term
from multipass.errors import MultipassError
from multipass.logs import log_context
from multipass.v1 import common_pb2, diffusion_pb2, events_pb2, segmentation_pb2
from multipass_gateway import job_state, names
from multipass_gateway.clients import InternalClients
from multipass_gateway.job_store import JobStore

log = logging.getLogger(__name__)

ACK_WAIT_SECONDS = 60.0
MAX_DELIVER = 6
WORKER_NAME = "gateway"


def error_detail(error: MultipassError) -> common_pb2.ErrorDetail:
    detail = common_pb2.ErrorDetail(
        code=common_pb2.ErrorCode.Value(f"ERROR_CODE_{error.code_name}"), message=str(error)
    )
    for violation in error.violations:
        detail.field_violations.add(field=violation.field, description=violation.description)
    return detail


def face_targets(
    record: events_pb2.JobRecord,
    image_index: int,
    faces: list[segmentation_pb2.Face],
    spec: diffusion_pb2.PassSpec,
    scale: tuple[float, float] | None,
) -> list[diffusion_pb2.FaceTarget]:
    """Each face with the prompt and adapters of its person (the base prompt for faces outside every slot).

    ``scale`` (x, y) maps slot boxes to the current image when the segmentation service could not assign
    faces itself (the image was resized since the masks were made): the face goes to the slot holding its
    centre.
    """
    plan = record.plans[image_index]
    persons = {p.person_index: p.spec for p in plan.passes if p.kind == "person"}
    targets = []
    for face in faces:
        slot = face.slot_index
        if scale is not None:
            slot = -1
            cx, cy = (face.box.x0 + face.box.x1) / 2, (face.box.y0 + face.box.y1) / 2
            for candidate in record.slots:
                box = candidate.box
                if (
                    box.x0 * scale[0] <= cx < box.x1 * scale[0]
                    and box.y0 * scale[1] <= cy < box.y1 * scale[1]
                ):
                    slot = candidate.index
                    break
        source = persons.get(slot)
        target = diffusion_pb2.FaceTarget(box=face.box)
        if source is not None:
            target.prompt, target.negative_prompt = source.prompt, source.negative_prompt
            target.loras.extend(source.loras)
        else:
            target.prompt, target.negative_prompt = spec.prompt, spec.negative_prompt
            target.loras.extend(spec.loras)
        targets.append(target)
    return targets


#: Face pass kinds that load each face's adapters (the others only need the faces' boxes and tunes).
ADAPTER_FACE_KINDS = frozenset({"faces"})


def faces_request(
    record: events_pb2.JobRecord,
    request: diffusion_pb2.PassRequest,
    faces: list[segmentation_pb2.Face],
    scale: tuple[float, float] | None,
) -> diffusion_pb2.PassRequest:
    """The diffusion request of a face pass: ``request`` with ``spec.faces`` filled in.

    Each face gets its person's prompt and LoRAs (:func:`face_targets`). A ``faces`` pass activates
    them, so the tune file of each (with its sha256, as planned for the person passes) is added to
    ``spec.tune_files`` for the worker to fetch; ``face_swap`` already carries its persons' reference
    images (``<tune_id>/reference-<k>``) from the plan.
    """
    forwarded = diffusion_pb2.PassRequest()
    forwarded.CopyFrom(request)
    forwarded.spec.faces.extend(face_targets(record, request.image_index, faces, request.spec, scale))
    if request.spec.kind in ADAPTER_FACE_KINDS:
        for target in forwarded.spec.faces:
            for ref in target.loras:
                if ref.tune_id not in forwarded.spec.tune_files:
                    file = _tune_file(record, ref.tune_id)
                    if file is not None:
                        forwarded.spec.tune_files[ref.tune_id].CopyFrom(file)
    return forwarded


class GatewayPasses:
    def __init__(self, bus: Bus, jobs: JobStore, clients: InternalClients, *, concurrency: int = 4):
        self.bus = bus
        self.jobs = jobs
        self.clients = clients
        self.concurrency = concurrency

    async def _emit(self, request: diffusion_pb2.PassRequest, event: events_pb2.PassEvent, name: str) -> None:
        event.job_id, event.tenant = request.job_id, request.tenant
        event.image_index, event.pass_name, event.attempt = (
            request.image_index,
            request.pass_name,
            request.attempt,
        )
        event.time.GetCurrentTime()
        await self.bus.publish(
            subjects.event_subject(request.job_id, name),
            event,
            msg_id=subjects.pass_msg_id(
                request.job_id, request.image_index, request.pass_name, request.attempt, name
            ),
        )

    async def _fail(self, request: diffusion_pb2.PassRequest, error: MultipassError) -> None:
        event = events_pb2.PassEvent(failed=events_pb2.PassFailed(error=error_detail(error), retriable=False))
        await self._emit(request, event, subjects.EVENT_FAILED)

    async def on_term(self, delivery: Delivery, reason: str) -> None:
        """The consume loop gave up on a request (retries exhausted): report the pass failed."""
        try:
            request = delivery.parse(diffusion_pb2.PassRequest)
        except MultipassError:
            return
        detail = common_pb2.ErrorDetail(code=common_pb2.ERROR_CODE_UNAVAILABLE, message=f"gave up: {reason}")
        await self._emit(
            request, events_pb2.PassEvent(failed=events_pb2.PassFailed(error=detail)), subjects.EVENT_FAILED
        )

    async def handle(self, delivery: Delivery):
        request = delivery.parse(diffusion_pb2.PassRequest)
        with log_context(job_id=request.job_id, **{"pass": request.pass_name, "image": request.image_index}):
            record = await self.jobs.load(request.tenant, request.job_id)
            if record is None:
                return Term(f"job {request.job_id} does not exist")
            index = job_state.find_pass(record, request.image_index, request.pass_name)
            if index is None:
                return Term(f"no pass {request.pass_name} in image {request.image_index}")
            state = record.job.images[request.image_index].passes[index]
            if (
                job_state.is_terminal(record)
                or state.attempt != request.attempt
                or state.status not in job_state.ACTIVE_PASS
            ):
                log.info("dropping an outdated gateway pass request")
                return Ack()
            planned = record.plans[request.image_index].passes[index]
            try:
                if planned.kind in ("segment", "mask"):
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

    async def _segment(
        self,
        record: events_pb2.JobRecord,
        request: diffusion_pb2.PassRequest,
        planned: events_pb2.PlannedPass,
    ) -> None:
        image = request.spec.image
        await self._emit(
            request,
            events_pb2.PassEvent(started=events_pb2.PassStarted(worker=WORKER_NAME, steps_total=1)),
            subjects.EVENT_STARTED,
        )
        segment = segmentation_pb2.SegmentRequest(
            image=image,
            output_bucket=names.BUCKET_JOBS,
            output_prefix=names.image_prefix(record.tenant, record.job.job_id, request.image_index),
        )
        if planned.kind == "segment":
            segment.persons.slots.extend(record.slots)
        else:
            mask = record.job.parsed.mask
            segment.text.prompt, segment.text.negative, segment.text.invert = (
                mask.prompt,
                mask.negative,
                mask.invert,
            )
            which = mask.WhichOneof("dilate")
            if which == "dilate_pixels":
                segment.text.dilate_pixels = mask.dilate_pixels
            elif which == "dilate_percent":
                segment.text.dilate_percent = mask.dilate_percent
        response = await self.clients.segment(segment)
        completed = events_pb2.PassCompleted(
            result=diffusion_pb2.PassResult(output=image, warnings=list(response.warnings)),
            masks=list(response.masks),
        )
        await self._emit(request, events_pb2.PassEvent(completed=completed), subjects.EVENT_COMPLETED)

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
        if not response.faces:
            result = diffusion_pb2.PassResult(output=image, warnings=["no face found; image unchanged"])
            await self._emit(
                request,
                events_pb2.PassEvent(completed=events_pb2.PassCompleted(result=result)),
                subjects.EVENT_COMPLETED,
            )
            return
        forwarded = faces_request(record, request, list(response.faces), scale)
        await self.bus.publish(
            subjects.diffusion_pass_subject(request.spec.model),
            forwarded,
            msg_id=subjects.pass_msg_id(
                request.job_id, request.image_index, request.pass_name, request.attempt, "faces"
            ),
        )

    async def run(self, stop: asyncio.Event) -> None:
        await self.bus.consume(
            stream=subjects.STREAM_PASSES,
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


def _tune_file(record: events_pb2.JobRecord, tune_id: str) -> common_pb2.ObjectRef | None:
    for plan in record.plans:
        for planned in plan.passes:
            if tune_id in planned.spec.tune_files:
                return planned.spec.tune_files[tune_id]
    return None
