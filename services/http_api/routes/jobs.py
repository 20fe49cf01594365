"""Our job API over HTTP: submit, get, list, cancel; each call is one call of the gateway's Jobs API."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import grpc
from fastapi import APIRouter, Header, Query, status
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from multipass.v1 import jobs_pb2
from multipass_http_api.deps import Authorization, BaseUrl, Gateway
from multipass_http_api.errors import HttpError, http_error_for_rpc
from multipass_http_api.job_views import job_view, message_dict
from multipass_http_api.text_checks import check_text

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

#: Text a protobuf string can carry (a lone surrogate is a 422 naming the field, not a failed conversion).
Text = Annotated[str, AfterValidator(check_text)]
ParamValue = Text | int | float | bool


class SubmitJobBody(BaseModel):
    """A job: ``SubmitJobRequest`` as JSON. Named fields override the same names in ``params``."""

    model_config = ConfigDict(extra="forbid")

    prompt: Text = Field(
        description="The prompt document: text with BREAK, tags, flags, optional name=value block."
    )
    params: dict[Text, ParamValue] = Field(
        default_factory=dict, description="Parameters by their Astria names (steps, w, h, cfg_scale, ...)."
    )
    num_images: int | None = Field(default=None, description="Output images, 1..8.")
    seed: int | None = Field(default=None, description="Seed of the first image; image k uses seed + k.")
    input_image_url: Text | None = Field(default=None, description="An http(s) URL of the input image.")
    mask_image_url: Text | None = Field(default=None, description="An http(s) URL of the mask image.")
    input_image_id: Text = Field(default="", description="An image uploaded with Jobs.UploadImage.")
    mask_image_id: Text = Field(default="", description="A mask uploaded with Jobs.UploadImage.")
    callback_url: Text = Field(default="", description="POSTed the job, signed, when it ends.")
    idempotency_key: Text = Field(default="", description="Same key and tenant: the same job.")

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


def _with_header_key(body: SubmitJobBody, header: str | None) -> SubmitJobBody:
    """The body with the ``Idempotency-Key`` header as its key; a header and a body key that differ is a 422."""
    if header is None:
        return body
    if body.idempotency_key and body.idempotency_key != header:
        raise HttpError(
            422,
            "invalid Idempotency-Key: differs from the body's idempotency_key",
            {
                "Idempotency-Key": [
                    f"got {header[:100]!r}; the body's idempotency_key is another key: send one"
                ]
            },
        )
    return body.model_copy(update={"idempotency_key": header})


@router.post("", status_code=status.HTTP_201_CREATED, response_model=SubmittedJob)
async def submit_job(
    body: SubmitJobBody,
    authorization: Authorization,
    gateway: Gateway,
    base_url: BaseUrl,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="The same as the body's idempotency_key (either, or both equal).",
        ),
    ] = None,
):
    """Submit a job; answers its id at once (201), or the existing job's for a repeated idempotency key
    (the body's ``idempotency_key`` or the ``Idempotency-Key`` header)."""
    body = _with_header_key(body, idempotency_key)
    try:
        response = await gateway.submit_job(authorization, body.to_request())
    except grpc.RpcError as error:
        raise http_error_for_rpc(error).renamed(_body_field(body)).as_body_fault() from error
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
#: Short state names (``succeeded``, as the CLI and the Astria objects write them) -> the enum's names.
_SHORT_STATES = {name.removeprefix("JOB_STATE_").lower(): name for name in JOB_STATES}


def job_state_of(name: str) -> int:
    """A state filter as the enum's name (``JOB_STATE_SUCCEEDED``) or short (``succeeded``, any case)."""
    full = name if name in JOB_STATES else _SHORT_STATES.get(name.strip().lower())
    if full is None:
        raise HttpError(
            422,
            f"invalid state: {name[:100]!r}",
            {"state": [f"got {name[:100]!r}; expected one of {', '.join(_SHORT_STATES)} (or JOB_STATE_...)"]},
        )
    return jobs_pb2.JobState.Value(full)


@router.get("")
async def list_jobs(
    authorization: Authorization,
    gateway: Gateway,
    base_url: BaseUrl,
    page_size: Annotated[int, Query(ge=0, le=100, description="Jobs per page, 1..100 (0: 20).")] = 20,
    page_token: Annotated[str, Query(max_length=1000, description="From the previous page.")] = "",
    state: Annotated[
        list[str] | None,
        Query(
            description="Only jobs in these states: queued, running, succeeded, failed, partial, cancelled."
        ),
    ] = None,
    idempotency_key_prefix: Annotated[
        str, Query(max_length=128, description="Only jobs whose idempotency key starts with this.")
    ] = "",
) -> dict[str, Any]:
    """The caller's jobs, newest first, a page at a time."""
    states = [job_state_of(name) for name in state or ()]
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
