"""Our job API over HTTP: submit, get, list, cancel; each call is one call of the gateway's Jobs API."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import grpc
from fastapi import APIRouter, Query, status
from pydantic import BaseModel, ConfigDict, Field

from multipass.v1 import jobs_pb2
from multipass_http_api.deps import Authorization, BaseUrl, Gateway
from multipass_http_api.errors import HttpError, http_error_for_rpc
from multipass_http_api.job_views import job_view, message_dict

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

ParamValue = str | int | float | bool


class SubmitJobBody(BaseModel):
    """A job: ``SubmitJobRequest`` as JSON. Named fields override the same names in ``params``."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(
        description="The prompt document: text with BREAK, tags, flags, optional name=value block."
    )
    params: dict[str, ParamValue] = Field(
        default_factory=dict, description="Parameters by their Astria names (steps, w, h, cfg_scale, ...)."
    )
    num_images: int | None = Field(default=None, description="Output images, 1..8.")
    seed: int | None = Field(default=None, description="Seed of the first image; image k uses seed + k.")
    input_image_url: str | None = Field(default=None, description="An http(s) URL of the input image.")
    mask_image_url: str | None = Field(default=None, description="An http(s) URL of the mask image.")
    input_image_id: str = Field(default="", description="An image uploaded with Jobs.UploadImage.")
    mask_image_id: str = Field(default="", description="A mask uploaded with Jobs.UploadImage.")
    callback_url: str = Field(default="", description="POSTed the job, signed, when it ends.")
    idempotency_key: str = Field(default="", description="Same key and tenant: the same job.")

    def to_request(self) -> jobs_pb2.SubmitJobRequest:
        params = {name: _param_text(value) for name, value in self.params.items()}
        for name in _BODY_PARAMS:
            value = getattr(self, name)
            if value is not None:
                params[name] = _param_text(value)
        return jobs_pb2.SubmitJobRequest(
            prompt=self.prompt,
            params=params,
            input_image_id=self.input_image_id,
            mask_image_id=self.mask_image_id,
            callback_url=self.callback_url,
            idempotency_key=self.idempotency_key,
        )


#: Parameters a body may give as fields of its own (they travel to the gateway as ``params``).
_BODY_PARAMS = ("num_images", "seed", "input_image_url", "mask_image_url")


def _body_field(body: SubmitJobBody) -> Callable[[str], str]:
    """The gateway's ``params.<name>`` as the body's own field, for the parameters the body gave as fields."""
    given = {name for name in _BODY_PARAMS if getattr(body, name) is not None}

    def rename(field: str) -> str:
        name = field.removeprefix("params.")
        return name if name != field and name in given else field

    return rename


def _param_text(value: ParamValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class SubmittedJob(BaseModel):
    job_id: str
    existing: bool
    warnings: list[str]
    links: dict[str, str]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=SubmittedJob)
async def submit_job(body: SubmitJobBody, authorization: Authorization, gateway: Gateway, base_url: BaseUrl):
    """Submit a job; answers its id at once (201), or the existing job's for a repeated idempotency key."""
    try:
        response = await gateway.submit_job(authorization, body.to_request())
    except grpc.RpcError as error:
        raise http_error_for_rpc(error).renamed(_body_field(body)) from error
    return {
        "job_id": response.job_id,
        "existing": response.existing,
        "warnings": list(response.warnings),
        "links": {
            "self": f"{base_url}/v1/jobs/{response.job_id}",
            "events": f"{base_url}/v1/jobs/{response.job_id}/events",
        },
    }


JOB_STATES = tuple(name for name, _ in jobs_pb2.JobState.items() if name != "JOB_STATE_UNSPECIFIED")


@router.get("")
async def list_jobs(
    authorization: Authorization,
    gateway: Gateway,
    base_url: BaseUrl,
    page_size: Annotated[int, Query(ge=1, le=100, description="Jobs per page, 1..100.")] = 20,
    page_token: Annotated[str, Query(max_length=1000, description="From the previous page.")] = "",
    state: Annotated[
        list[str] | None, Query(description="Only jobs in these states (JOB_STATE_...).")
    ] = None,
    idempotency_key_prefix: Annotated[
        str, Query(max_length=128, description="Only jobs whose idempotency key starts with this.")
    ] = "",
) -> dict[str, Any]:
    """The caller's jobs, newest first, a page at a time."""
    states = []
    for name in state or ():
        if name not in JOB_STATES:
            raise HttpError(
                422,
                f"invalid state: {name[:100]!r}",
                {"state": [f"got {name[:100]!r}; expected one of {', '.join(JOB_STATES)}"]},
            )
        states.append(jobs_pb2.JobState.Value(name))
    response = await gateway.list_jobs(
        authorization,
        jobs_pb2.ListJobsRequest(
            page_size=page_size,
            page_token=page_token,
            states=states,
            idempotency_key_prefix=idempotency_key_prefix,
        ),
    )
    return {
        "jobs": [job_view(job, base_url) for job in response.jobs],
        "next_page_token": response.next_page_token,
    }


@router.get("/{job_id}")
async def get_job(
    job_id: str, authorization: Authorization, gateway: Gateway, base_url: BaseUrl
) -> dict[str, Any]:
    """The job: plan, per-pass state and timings, persons, images (presigned final URLs), and links to
    every pass output and mask served by this service."""
    return job_view(await gateway.get_job(authorization, job_id), base_url)


@router.delete("/{job_id}")
async def cancel_job(
    job_id: str,
    authorization: Authorization,
    gateway: Gateway,
    purge: Annotated[
        bool, Query(description="Delete the job too: its record, events and every stored image (404 after).")
    ] = False,
) -> dict[str, Any]:
    """Cancel the job (queued or running); ``cancelled`` is false when it had already ended. With
    ``purge=true`` the job is deleted as well (cancelled first when it still runs)."""
    if purge:
        deleted = await gateway.delete_job(authorization, job_id)
        return {"job_id": job_id, "deleted": True, **message_dict(deleted)}
    response = await gateway.cancel_job(authorization, job_id)
    return {"job_id": job_id, "cancelled": response.cancelled, **message_dict(response)}
