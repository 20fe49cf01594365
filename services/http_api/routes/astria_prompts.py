"""Astria-compatible prompts: create, retrieve (also as ``.json``), list, cancel, duplicate, and the relay
endpoint that turns the gateway's job callback into Astria's prompt callback.

The path's tune id names the base model. The gateway serves one configured base model, so any tune id is
accepted (Astria's gallery ids such as 690204 included) and echoed back; when it is one of the caller's
own tunes, that tune is applied to the whole prompt as a ``<lora:ID:1>`` tag before the text, unless the
text already tags it (Astria prompts a fine-tuned tune by posting to it). Other tunes are used through
``<lora:ID:W>`` / ``<faceid:ID:W>`` tags in the text, as in Astria's multi-person prompts.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Annotated

import grpc
from fastapi import APIRouter, Depends, Query, Request, Response
from google.protobuf import json_format

from multipass.errors import InvalidInput, NotFound, Violation
from multipass.grpc.errors import reason_of
from multipass.store import ObjectStore
from multipass.v1 import common_pb2, jobs_pb2
from multipass_http_api.astria import callbacks, idempotency
from multipass_http_api.astria.bodies import read_body
from multipass_http_api.astria.field_names import call
from multipass_http_api.astria.origin import Origin, origin_of
from multipass_http_api.astria.paging import MAX_LIMIT, check_offset
from multipass_http_api.astria.prompt_form import PromptForm, Upload, form_of_job, from_json, from_multipart
from multipass_http_api.astria.prompt_object import prompt_object
from multipass_http_api.deps import Authorization, BaseUrl, Gateway, Objects, Settings
from multipass_http_api.errors import HttpError
from multipass_http_api.job_views import file_path

log = logging.getLogger(__name__)
router = APIRouter(tags=["astria"])

_ID = re.compile(r"^[0-9]{1,24}$")
_JOB_ID = re.compile(r"^[0-9a-f]{24}$")
#: A prompt's id: its job's id.
_PROMPT_ID = re.compile(r"[0-9a-f]{24}")
#: The largest stored input image a duplicate reads back to send again (the gateway's own upload bound).
MAX_CARRIED_IMAGE_BYTES = 20 * 1024 * 1024
#: Page size of the gateway listing a list request walks through.
_GATEWAY_PAGE = 100


def _tune_id(value: str) -> str:
    if not _ID.match(value):
        raise NotFound(f"tune {value[:40]!r} not found")
    return value


def _prompt_id(value: str) -> str:
    value = value.removesuffix(".json")
    if not _JOB_ID.match(value):
        raise NotFound(f"prompt {value[:40]!r} not found")
    return value


def _image_url(base_url: str):
    """The final image's download link: the gateway's presigned URL (usable without an API key, as
    Astria's image URLs are), else this service's file route."""

    def link(job: jobs_pb2.Job, image: jobs_pb2.OutputImage) -> str:
        return image.url or base_url + file_path(job.job_id, image.index, "final")

    return link


def _relay_base(settings, base_url: str) -> str:
    return settings.astria_callbacks.relay_url or base_url + callbacks.RELAY_PATH


def _object(job: jobs_pb2.Job, base_url: str, warnings=()) -> dict:
    return prompt_object(
        job,
        base_url=base_url,
        callback=callbacks.target_of(job.callback_url),
        image_url=_image_url(base_url),
        warnings=warnings,
    )


async def _form(request: Request) -> PromptForm:
    kind, body = await read_body(request)
    return from_multipart(body) if kind == "form" else from_json(body)


async def _origin(gateway, authorization: str | None, tune_id: str, text: str) -> tuple[Origin, list[str]]:
    """Whether the path's tune is the caller's own (applied as a tag) or names the base model (as Astria's
    gallery base tunes do, the persons tagged in the text); a warning when that leaves no tune at all."""
    try:
        tune = await call(gateway.get_tune(authorization, tune_id))
    except HttpError as error:
        if error.status == 404:
            untagged = re.search(r"<(lora|faceid):", text) is None
            return Origin(tune_id), [
                f"tune {tune_id} is not one of your tunes and the text tags none: the prompt runs on the "
                "base model alone"
            ] if untagged else []
        raise
    tagged = re.search(rf"<(lora|faceid):{tune_id}(:|>)", text)
    return Origin(
        tune_id, tune_applied=tagged is None, tag_kind="faceid" if tune.kind == "faceid" else "lora"
    ), []


async def _upload(gateway, authorization: str | None, form: PromptForm, name: str) -> str:
    upload = form.uploads.get(name)
    if upload is None:
        return ""
    field = f"prompt[{name}]"
    if not upload.content_type.startswith("image/") and upload.content_type != "application/octet-stream":
        raise InvalidInput.of([Violation(field, f"got a {upload.content_type[:60]} file; expected an image")])
    response = await call(
        gateway.upload_image(authorization, upload.filename, [upload.data]), fields={"chunk": field}
    )
    return response.image_id


async def submit_prompt(
    request: Request, form: PromptForm, tune_id: str, authorization, gateway, settings, base_url
) -> dict:
    """Submit ``form`` as a prompt of the tune (``POST /tunes/:id/prompts``, and each of a new tune's
    ``tune[prompts_attributes]``); the prompt object."""
    if not form.text or not form.text.strip():
        raise InvalidInput.of([Violation("prompt[text]", "is required")])
    problems: list[Violation] = []
    callback_url = ""
    if form.callback:
        if not settings.astria_callbacks.signing_key:
            problems.append(Violation("prompt[callback]", "callbacks are disabled on this service"))
        else:
            try:
                await callbacks.check_target(form.callback, settings.astria_callbacks)
                callback_url = callbacks.relay_url(_relay_base(settings, base_url), form.callback)
            except InvalidInput as error:
                problems += error.violations
    if problems:
        raise InvalidInput.of(problems)
    origin, origin_warnings = await _origin(gateway, authorization, tune_id, form.text)
    nonce = ""
    if settings.astria_idempotency:
        nonce = idempotency.prompt_nonce(tune_id, form.text, form.callback, form.params)
    uploaded: list[str] = []
    try:  # the job keeps its own copies of its inputs: the uploads go once it is submitted (or refused)
        uploaded.append(await _upload(gateway, authorization, form, "input_image"))
        uploaded.append(await _upload(gateway, authorization, form, "mask_image"))
        request = jobs_pb2.SubmitJobRequest(
            prompt=origin.submitted_text(form.text),
            params=form.params,
            input_image_id=uploaded[0],
            mask_image_id=uploaded[1],
            callback_url=callback_url,
            idempotency_key=origin.idempotency_key(nonce),
        )
        try:
            submitted = await gateway.submit_job(authorization, request)
        except grpc.RpcError as error:
            first = _first_job_of_key(error) if nonce else None
            if first is None:
                await call(_raise(error), submitted_body=True, fields=form.field_names)
            # The same key fields with other fields changed: Astria answers with the first prompt too.
            submitted = jobs_pb2.SubmitJobResponse(job_id=first, existing=True)
    finally:
        await gateway.discard_uploads(authorization, uploaded)
    job = await call(gateway.get_job(authorization, submitted.job_id))
    return _object(job, base_url, [*form.warnings, *origin_warnings, *submitted.warnings])


def _first_job_of_key(error: grpc.RpcError) -> str | None:
    """The job an idempotency key was first used for, when ``error`` is the gateway refusing a repeat whose
    other fields differ."""
    info = reason_of(error)
    if info is None or info.reason != "IDEMPOTENCY_KEY_REUSED":
        return None
    return info.metadata.get("jobId") or None


async def _raise(error: BaseException):
    raise error


@router.post("/tunes/{tune_id}/prompts", status_code=201)
async def create_prompt(
    tune_id: str,
    request: Request,
    authorization: Authorization,
    gateway: Gateway,
    settings: Settings,
    base_url: BaseUrl,
):
    """Create a prompt: multipart ``prompt[text]=...`` fields (files in ``prompt[input_image]``,
    ``prompt[mask_image]``) or JSON ``{"prompt": {...}}``. Answers the prompt object."""
    tune_id = _tune_id(tune_id)
    form = await _form(request)
    return await submit_prompt(request, form, tune_id, authorization, gateway, settings, base_url)


async def _job(gateway, authorization, prompt_id: str, tune_id: str | None = None) -> jobs_pb2.Job:
    try:
        job = await call(gateway.get_job(authorization, _prompt_id(prompt_id)))
    except HttpError as error:
        if error.status == 404:  # in this API's words: a prompt, not the gateway's job
            raise NotFound(f"prompt {_prompt_id(prompt_id)} does not exist") from error
        raise
    if tune_id is not None:
        origin = origin_of(job.idempotency_key)
        if origin is None or origin.tune_id != _tune_id(tune_id):
            raise NotFound(f"prompt {job.job_id} not found under tune {tune_id}")
    return job


@router.get("/tunes/{tune_id}/prompts/{prompt_id}")
async def get_tune_prompt(
    tune_id: str, prompt_id: str, authorization: Authorization, gateway: Gateway, base_url: BaseUrl
):
    """A prompt (``/tunes/:tune_id/prompts/:id`` or ``...:id.json``): ``images`` filled once done."""
    return _object(await _job(gateway, authorization, prompt_id, tune_id), base_url)


@router.get("/prompts/{prompt_id}")
async def get_prompt(prompt_id: str, authorization: Authorization, gateway: Gateway, base_url: BaseUrl):
    """A prompt by its id alone (``/prompts/:id`` or ``/prompts/:id.json``)."""
    return _object(await _job(gateway, authorization, prompt_id), base_url)


def _check_before_id(before_id: str | None) -> None:
    if before_id is not None and not _PROMPT_ID.fullmatch(before_id):
        raise HttpError(
            400,
            "before_id is not a prompt id",
            {"before_id": [f"got {before_id[:40]!r}; allowed: the id of a prompt (24 hexadecimal digits)"]},
        )


async def _list(
    gateway,
    authorization,
    base_url: str,
    page: tuple[int, int, str | None],
    tune_id: str | None,
) -> list:
    """The prompts of a page: ``offset`` skipped, at most ``limit``, only those older than ``before_id``
    (a prompt's id, from an earlier page) when it is given."""
    offset, limit, before_id = page
    check_offset(offset)
    _check_before_id(before_id)
    wanted: list[jobs_pb2.Job] = []
    token = ""
    while len(wanted) < offset + limit:
        asked = jobs_pb2.ListJobsRequest(page_size=_GATEWAY_PAGE, page_token=token)
        if tune_id is not None:  # the gateway skips the other tunes' prompts (and every other job)
            asked.idempotency_key_prefix = Origin(tune_id).key_prefix()
        listed = await call(gateway.list_jobs(authorization, asked))
        for job in listed.jobs:
            if before_id is not None and job.job_id >= before_id:
                continue  # ids sort by creation time: this one is not older than the cursor
            origin = origin_of(job.idempotency_key)
            if tune_id is None or (origin is not None and origin.tune_id == tune_id):
                wanted.append(job)
        token = listed.next_page_token
        if not token:
            break
    return [_object(job, base_url) for job in wanted[offset : offset + limit]]


Offset = Annotated[
    int, Query(ge=0, description="Prompts to skip, newest first; at most 10,000 (else 400: use before_id).")
]
BeforeId = Annotated[
    str | None,
    Query(
        description="Keyset cursor: only prompts older than this prompt id (the last id of the page before)."
    ),
]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Prompts to answer, 1..120.")]


def prompt_page(
    offset: Offset = 0, limit: Limit = 20, before_id: BeforeId = None
) -> tuple[int, int, str | None]:
    """A list's page as its query gives it: offset, limit, keyset cursor."""
    return offset, limit, before_id


Page = Annotated[tuple[int, int, str | None], Depends(prompt_page)]


@router.get("/tunes/{tune_id}/prompts")
async def list_tune_prompts(
    tune_id: str,
    authorization: Authorization,
    gateway: Gateway,
    base_url: BaseUrl,
    page: Page,
):
    """The prompts created under this tune, newest first."""
    return await _list(gateway, authorization, base_url, page, _tune_id(tune_id))


@router.get("/prompts")
async def list_prompts(authorization: Authorization, gateway: Gateway, base_url: BaseUrl, page: Page):
    """Every prompt of the caller (jobs submitted through any API), newest first."""
    return await _list(gateway, authorization, base_url, page, None)


async def _delete(gateway, authorization, base_url: str, prompt_id: str, tune_id: str | None) -> dict:
    """Delete the prompt (its work is cancelled if it still runs, its images deleted); answers the prompt
    object as it was, with a warning saying it is gone."""
    job = await _job(gateway, authorization, prompt_id, tune_id)
    outcome = await call(gateway.delete_job(authorization, job.job_id))
    job.state = outcome.state
    job.ClearField("images")  # deleted with the prompt: no link to them
    return _object(job, base_url, [f"deleted: {outcome.message}"])


@router.delete("/tunes/{tune_id}/prompts/{prompt_id}")
async def delete_tune_prompt(
    tune_id: str, prompt_id: str, authorization: Authorization, gateway: Gateway, base_url: BaseUrl
):
    """Delete the prompt: its queued and running work stops, its images are deleted, and it is 404 after."""
    return await _delete(gateway, authorization, base_url, prompt_id, tune_id)


@router.delete("/prompts/{prompt_id}")
async def delete_prompt(prompt_id: str, authorization: Authorization, gateway: Gateway, base_url: BaseUrl):
    """Delete the prompt: its queued and running work stops, its images are deleted, and it is 404 after."""
    return await _delete(gateway, authorization, base_url, prompt_id, None)


@router.post("/prompts/{prompt_id}/duplicate", status_code=201)
async def duplicate_prompt(
    prompt_id: str,
    request: Request,
    authorization: Authorization,
    gateway: Gateway,
    settings: Settings,
    base_url: BaseUrl,
    objects: Objects,
):
    """A new prompt from this one's text, parameters, input and mask images and callback, with the body's
    fields overriding."""
    job = await _job(gateway, authorization, prompt_id)
    origin = origin_of(job.idempotency_key)
    if origin is None:
        raise NotFound(f"prompt {job.job_id} was not created through the tunes API; submit it as a new job")
    original = form_of_job(job, origin.astria_text(job.prompt), callbacks.target_of(job.callback_url))
    form = (await _form(request)).merged_over(original)
    carried_images = {
        "input_image": _input_image_ref(job),
        "mask_image": job.mask_image if job.mask_image.key else None,
    }
    for name, ref in carried_images.items():
        if name not in form.uploads and f"{name}_url" not in form.params:
            carried = await _stored_image(ref, objects)
            if carried is not None:
                form = dataclasses.replace(form, uploads={**form.uploads, name: carried})
    return await submit_prompt(request, form, origin.tune_id, authorization, gateway, settings, base_url)


def _input_image_ref(job: jobs_pb2.Job) -> common_pb2.ImageRef | None:
    """The input image a job was given (its ``prepare`` pass holds the stored copy); None without one."""
    return next(
        (p.output for image in job.images[:1] for p in image.passes if p.kind == "prepare" and p.output.key),
        None,
    )


async def _stored_image(ref: common_pb2.ImageRef | None, objects: ObjectStore | None) -> Upload | None:
    """A job's stored input or mask image, to send again with a duplicate; None without one, or without
    an object store to read it from."""
    if ref is None or objects is None:
        return None
    data = await objects.get_bytes(ref.bucket, ref.key, max_bytes=MAX_CARRIED_IMAGE_BYTES)
    return Upload(filename=ref.key.rsplit("/", 1)[-1], content_type="image/png", data=data)


@router.post(callbacks.RELAY_PATH, include_in_schema=False)
async def relay_prompt_callback(request: Request, settings: Settings, base_url: BaseUrl) -> Response:
    """The gateway's signed job callback in, Astria's ``{"prompt": {...}}`` callback out."""
    config = settings.astria_callbacks
    body = await request.body()
    relayed = callbacks.relayed_tenant_key(config, request.headers, body)
    if relayed is None:
        raise HttpError(401, "missing or bad X-Multipass-Signature for the X-Multipass-Tenant named")
    _tenant, key = relayed
    job = jobs_pb2.Job()
    try:
        json_format.Parse(body, job, ignore_unknown_fields=True)
    except (json_format.ParseError, UnicodeDecodeError) as error:
        raise HttpError(422, "the body is not a job") from error
    target = callbacks.target_of(job.callback_url)
    if target is None:
        raise HttpError(422, "the job has no prompt callback")
    delivery = await callbacks.deliver(
        _object(job, base_url),
        target,
        config,
        key=key,
        job_id=job.job_id,
        attempt=request.headers.get("X-Multipass-Attempt", ""),
    )
    return Response(
        content=delivery.outcome, status_code=delivery.relay_status, media_type="text/plain; charset=utf-8"
    )
