"""Astria-compatible tunes: register from trained weights (we do not train), list, retrieve, delete.
Field mapping and the refusal of training: :mod:`multipass_http_api.astria.tune_object`."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Query, Request

from multipass.errors import InvalidInput, MultipassError, NotFound, Violation
from multipass.v1 import jobs_pb2
from multipass_http_api.astria import callbacks
from multipass_http_api.astria.bodies import read_body
from multipass_http_api.astria.field_names import call, tune_field
from multipass_http_api.astria.paging import MAX_LIMIT, check_offset
from multipass_http_api.astria.prompt_form import build_form
from multipass_http_api.astria.tune_object import (
    tune_from_json,
    tune_from_multipart,
    tune_object,
    tune_update,
)
from multipass_http_api.deps import Authorization, BaseUrl, Gateway, Settings
from multipass_http_api.errors import HttpError
from multipass_http_api.routes.astria_prompts import submit_prompt

router = APIRouter(tags=["astria"])

_ID = re.compile(r"^[0-9]{1,24}$")
_GATEWAY_PAGE = 100
MAX_REFERENCE_IMAGES = 10


def _tune_id(value: str) -> str:
    value = value.removesuffix(".json")
    if not _ID.match(value):
        raise NotFound(f"tune {value[:40]!r} not found")
    return value


@router.post("/p/{pack_id}/tunes")
async def create_tune_from_a_pack(pack_id: str, authorization: Authorization, gateway: Gateway):
    """Astria's packs (a curated set of prompts trained into a new tune) are not offered: 404 saying so,
    once the key is known good (a wrong key is 401 as on every route)."""
    await call(gateway.list_tunes(authorization, jobs_pb2.ListTunesRequest(page_size=1)))
    raise NotFound(
        f"pack {pack_id[:40]!r} not found: packs are not offered here; register the tune with POST /tunes "
        "(tune[prompts_attributes] for its prompts, tune[callback] and each prompt's callback for callbacks)"
    )


@router.post("/tunes", status_code=201)
async def create_tune(
    request: Request,
    background: BackgroundTasks,
    authorization: Authorization,
    gateway: Gateway,
    settings: Settings,
    base_url: BaseUrl,
):
    """Register a tune: JSON ``{"tune": {...}}`` or multipart ``tune[...]`` with ``tune[weights]`` (a
    .safetensors file) or ``tune[weights_url]``; ``tune[images][]`` become reference face images and
    ``tune[prompts_attributes]`` prompts created on the tune (answered under ``prompts``)."""
    kind, body = await read_body(request)
    form = tune_from_multipart(body) if kind == "form" else tune_from_json(body)
    form.check()
    if form.callback:
        await _check_callback(form.callback, settings)
    if len(form.images) + len(form.image_urls) > MAX_REFERENCE_IMAGES:
        raise InvalidInput.of(
            [
                Violation(
                    "tune[images][]",
                    f"at most {MAX_REFERENCE_IMAGES} images (tune[images][] and tune[image_urls][] together)",
                )
            ]
        )
    for image in form.images:
        if not image.content_type.startswith("image/") and image.content_type != "application/octet-stream":
            raise InvalidInput.of(
                [
                    Violation(
                        "tune[images][]",
                        f"{image.filename[:60]!r} is a {image.content_type[:60]}; expected an image",
                    )
                ]
            )
    if settings.astria_idempotency:
        existing = await _tune_titled(gateway, authorization, form.title)
        if existing is not None:  # Astria's idempotency: tunes are keyed by title
            return tune_object(
                existing,
                base_url=base_url,
                warnings=[f"a tune titled {form.title[:100]!r} exists: answered with it, nothing registered"],
            )
    metadata = form.metadata()
    try:  # the tune keeps its own copies of its reference faces: the uploads go once it is registered
        for image in form.images:
            uploaded = await call(
                gateway.upload_image(authorization, image.filename, [image.data]),
                tune_field,
                fields={"chunk": "tune[images][]"},
            )
            metadata.reference_image_ids.append(uploaded.image_id)
        chunks = [form.weights.data] if form.weights is not None else []
        tune = await call(gateway.register_tune(authorization, metadata, chunks), tune_field)
    finally:
        await gateway.discard_uploads(authorization, metadata.reference_image_ids)
    prompts, warnings = await _create_prompts(
        request, form, tune.tune_id, authorization, gateway, settings, base_url
    )
    answer = tune_object(
        tune, base_url=base_url, warnings=[*form.warnings, *warnings], callback=form.callback
    )
    if form.prompts:
        answer["prompts"] = prompts
    if form.callback:
        # Astria POSTs the tune when its training ends; these weights are ready now: after this answer,
        # signed with the caller's tenant's key.
        background.add_task(
            callbacks.deliver,
            tune_object(tune, base_url=base_url, callback=form.callback),
            form.callback,
            settings.astria_callbacks,
            key=await call(gateway.callback_key(authorization)),
            tune_id=tune.tune_id,
        )
    return answer


async def _tune_titled(gateway, authorization: str | None, title: str) -> jobs_pb2.Tune | None:
    """The caller's newest tune titled ``title`` (Astria's ``title`` is our ``Tune.name``), or None."""
    token = ""
    while True:
        page = await call(
            gateway.list_tunes(
                authorization, jobs_pb2.ListTunesRequest(page_size=_GATEWAY_PAGE, page_token=token)
            ),
            tune_field,
        )
        found = next((tune for tune in page.tunes if tune.name == title), None)
        if found is not None:
            return found
        token = page.next_page_token
        if not token:
            return None


async def _check_callback(url: str, settings) -> None:
    if not settings.astria_callbacks.signing_key:
        raise InvalidInput.of([Violation("tune[callback]", "callbacks are disabled on this service")])
    try:
        await callbacks.check_target(url, settings.astria_callbacks)
    except InvalidInput as error:
        raise InvalidInput.of(
            [Violation("tune[callback]", v.description) for v in error.violations]
        ) from error


async def _create_prompts(request, form, tune_id: str, authorization, gateway, settings, base_url):
    """``tune[prompts_attributes]``: each submitted on the registered tune, as Astria queues them for its
    end of training (the weights are here already). A prompt refused is named in a warning; the tune and
    the other prompts stand."""
    prompts: list[dict] = []
    warnings: list[str] = []
    for index, fields in enumerate(form.prompts):
        where = f"tune[prompts_attributes][{index}]"
        try:
            prompt = build_form(fields)
            prompts.append(
                await submit_prompt(request, prompt, tune_id, authorization, gateway, settings, base_url)
            )
        except (MultipassError, HttpError) as error:
            reason = error.message if isinstance(error, HttpError) else str(error)
            warnings.append(f"{where} not created: {reason}")
    return prompts, warnings


@router.get("/tunes")
async def list_tunes(
    authorization: Authorization,
    gateway: Gateway,
    base_url: BaseUrl,
    offset: Annotated[int, Query(ge=0, description="Tunes to skip; at most 10,000 (else 400).")] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 20,
):
    """The caller's tunes."""
    check_offset(offset)
    tunes: list[jobs_pb2.Tune] = []
    token = ""
    while len(tunes) < offset + limit:
        page = await call(
            gateway.list_tunes(
                authorization, jobs_pb2.ListTunesRequest(page_size=_GATEWAY_PAGE, page_token=token)
            ),
            tune_field,
        )
        tunes += page.tunes
        token = page.next_page_token
        if not token:
            break
    return [tune_object(tune, base_url=base_url) for tune in tunes[offset : offset + limit]]


@router.get("/tunes/{tune_id}")
async def get_tune(tune_id: str, authorization: Authorization, gateway: Gateway, base_url: BaseUrl):
    """A tune (``/tunes/:id`` or ``/tunes/:id.json``)."""
    tune = await call(gateway.get_tune(authorization, _tune_id(tune_id)), tune_field)
    return tune_object(tune, base_url=base_url)


@router.patch("/tunes/{tune_id}")
async def update_tune(
    tune_id: str, request: Request, authorization: Authorization, gateway: Gateway, base_url: BaseUrl
):
    """Change a tune's ``title``, ``name`` (class word) or ``characteristics`` (replaced as a whole);
    other fields are ignored with a warning."""
    tune_id = _tune_id(tune_id)
    kind, body = await read_body(request)
    update, warnings = tune_update(kind, body)
    update.tune_id = tune_id
    tune = await call(
        gateway.update_tune(authorization, update),
        tune_field,
        fields={"name": "tune[title]", "class_name": "tune[name]", "update_mask": "tune"},
    )
    return tune_object(tune, base_url=base_url, warnings=warnings)


@router.delete("/tunes/{tune_id}")
async def delete_tune(tune_id: str, authorization: Authorization, gateway: Gateway, base_url: BaseUrl):
    """Delete a tune and its file; answers the deleted tune."""
    tune = await call(gateway.get_tune(authorization, _tune_id(tune_id)), tune_field)
    await call(gateway.delete_tune(authorization, tune.tune_id), tune_field)
    return tune_object(tune, base_url=base_url)
