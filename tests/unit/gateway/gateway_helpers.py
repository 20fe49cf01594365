"""Builders of parsed prompts and job records for the gateway's pure-module tests."""

from __future__ import annotations

from datetime import UTC, datetime

from multipass.v1 import common_pb2, events_pb2, jobs_pb2, prompt_pb2, segmentation_pb2
from multipass_gateway.domain import job_state, planner

T0 = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


def parsed_prompt(
    persons: int = 0,
    *,
    base: str = "a garden",
    common: str = "spring",
    keep_background: bool = False,
    mask_prompt: str = "",
    explicit: tuple[str, ...] = (),
    person_loras: dict[int, list[str]] | None = None,
    base_loras: list[str] | None = None,
    only_upscale: bool = False,
    tiled: bool = False,
    **params,
) -> prompt_pb2.ParsedPrompt:
    values = {
        "num_images": 1,
        "steps": 30,
        "cfg_scale": 7.0,
        "scheduler": "dpm++2m_karras",
        "w": 512,
        "h": 512,
        "ar": "1:1",
        "denoising_strength": 0.8,
    }
    values.update(params)
    parsed = prompt_pb2.ParsedPrompt(
        base_prompt=base,
        common_prompt=common,
        base_effective_prompt=", ".join(p for p in (base, common) if p),
        base_effective_negative_prompt="blurry",
        keep_background=keep_background,
        hires_denoising_strength=0.4,
        params=prompt_pb2.Params(**values),
        multi_pass=persons > 0,
        explicit_params=sorted(explicit),
    )
    parsed.flags.only_upscale = only_upscale
    parsed.flags.tiled_upscale = tiled
    if mask_prompt:
        parsed.mask.prompt = mask_prompt
    for tune_id in base_loras or []:
        parsed.base_loras.add(tune_id=tune_id, weight=1.0, kind="lora", tag=f"<lora:{tune_id}:1>")
    for index in range(persons):
        person = parsed.persons.add(
            index=index,
            prompt=f"ohwx person {index}",
            effective_prompt=f"{common}, ohwx person {index}",
            effective_negative_prompt=f"ugly {index}",
        )
        for tune_id in (person_loras or {}).get(index, []):
            person.loras.add(tune_id=tune_id, weight=0.8, kind="lora", tag=f"<lora:{tune_id}:0.8>")
    return parsed


def image_ref(key: str, width: int = 512, height: int = 512) -> common_pb2.ImageRef:
    return common_pb2.ImageRef(
        bucket="multipass-jobs",
        key=key,
        sha256="0" * 64,
        size=10,
        width=width,
        height=height,
        content_type="image/png",
    )


def slots(count: int, width: int = 512) -> list[segmentation_pb2.Slot]:
    step = width / max(1, count)
    return [
        segmentation_pb2.Slot(
            index=i,
            box=common_pb2.Box(x0=i * step, y0=0, x1=(i + 1) * step, y1=512),
            keypoints=[common_pb2.Keypoint(index=0, x=(i + 0.5) * step, y=50, confidence=1.0)],
        )
        for i in range(count)
    ]


def config(**overrides) -> planner.PlannerConfig:
    values = {
        "base_model": "tiny-sd15",
        "person_model": "tiny-sd15",
        "capabilities": frozenset({"controlnet:pose"}),
    }
    values.update(overrides)
    return planner.PlannerConfig(**values)


def record_for(
    parsed: prompt_pb2.ParsedPrompt,
    *,
    inputs: planner.JobInputs | None = None,
    cfg: planner.PlannerConfig | None = None,
    job_id: str = "0123456789abcdef01234567",
    tenant: str = "t0123456789abcdef",
) -> events_pb2.JobRecord:
    """A job record the way SubmitJob builds it (before ``start``)."""
    inputs = inputs or planner.JobInputs(
        seed=100, width=parsed.params.w, height=parsed.params.h, slots=slots(len(parsed.persons))
    )
    plans = planner.plan_job(parsed, inputs, cfg or config())
    job = jobs_pb2.Job(job_id=job_id, state=jobs_pb2.JOB_STATE_QUEUED, parsed=parsed)
    job.created_at.FromDatetime(T0)
    for plan in plans:
        image = job.images.add(index=plan.index, seed=planner.image_seed(inputs.seed, plan.index))
        for planned in plan.passes:
            state = image.passes.add(
                name=planned.name, kind=planned.kind, status=jobs_pb2.PASS_STATUS_PENDING
            )
            if planned.kind in planner.STEP_KINDS:
                state.steps_total = planned.weight
    for person in parsed.persons:
        job.persons.add(index=person.index, prompt=person.effective_prompt)
    record = events_pb2.JobRecord(job=job, tenant=tenant, plans=plans, slots=list(inputs.slots))
    if inputs.input_image is not None:
        record.input_image.CopyFrom(inputs.input_image)
    if inputs.mask_image is not None:
        record.mask_image.CopyFrom(inputs.mask_image)
    return record


def started(record: events_pb2.JobRecord) -> events_pb2.JobRecord:
    outcome = job_state.start(record, T0)
    job_state.commit(record, outcome, T0)
    return record


def event(
    record: events_pb2.JobRecord, image: int, pass_name: str, kind: str, attempt: int | None = None, **fields
) -> events_pb2.PassEvent:
    index = job_state.find_pass(record, image, pass_name)
    current_attempt = record.job.images[image].passes[index].attempt if index is not None else 1
    message = events_pb2.PassEvent(
        job_id=record.job.job_id,
        tenant=record.tenant,
        image_index=image,
        pass_name=pass_name,
        attempt=current_attempt if attempt is None else attempt,
    )
    if kind == "started":
        message.started.steps_total = fields.get("steps_total", 0)
        message.started.worker = "w"
    elif kind == "progress":
        message.progress.step = fields["step"]
        message.progress.steps_total = fields["steps_total"]
    elif kind == "completed":
        output = fields.get("output") or image_ref(
            f"jobs/{record.tenant}/{record.job.job_id}/image-{image}/{pass_name}.png"
        )
        message.completed.result.output.CopyFrom(output)
        message.completed.result.warnings.extend(fields.get("warnings", []))
        for mask in fields.get("masks", []):
            message.completed.masks.append(mask)
    elif kind == "failed":
        message.failed.error.code = fields.get("code", common_pb2.ERROR_CODE_INVALID_ARGUMENT)
        message.failed.error.message = fields.get("message", "boom")
        message.failed.retriable = fields.get("retriable", False)
    return message
