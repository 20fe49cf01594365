"""A job's inputs at submit: the input and mask images read (an upload, or a URL fetched safely), sized for
the chain and stored under the job, and the persons laid out on them (``Segmentation.Layout``; a default
layout's answer is shared by the tenant's jobs of one size and person count, :mod:`.default_layouts`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from PIL import Image

from multipass import names
from multipass.errors import InvalidInput, NotFound, Reason, Violation, violations_summary
from multipass.images import decode_image
from multipass.store import ObjectStore
from multipass.v1 import common_pb2, diffusion_pb2, jobs_pb2, prompt_pb2, segmentation_pb2
from multipass_gateway.app.default_layouts import DefaultLayouts
from multipass_gateway.domain import planner, requirements
from multipass_gateway.infra.clients import InternalClients
from multipass_gateway.infra.fetch import FetchError, SafeHttp
from multipass_gateway.infra.tune_store import unknown_upload
from multipass_gateway.settings import GatewaySettings

#: Native sizes by family, used to size an img2img scene from its input image.
NATIVE_SIDE = {"sd15": 512, "sdxl": 1024}


def native_side(info: diffusion_pb2.InfoResponse, model: str) -> int:
    """The native size the workers report for ``model``; 0 when they do not (the parser's own setting)."""
    return info.model_native_sizes.get(model, 0)


def scene_size(
    parsed: prompt_pb2.ParsedPrompt, input_size: tuple[int, int] | None, family: str, max_side: int
) -> tuple[int, int]:
    """Width and height of the chain's images.

    Keep-background: the input image's own size (fitted under ``max_side``). ``--only_upscale`` without an
    explicit w/h/ar: the same (the upscale multiplies the input's own pixels). An img2img input without an
    explicit w/h/ar: the input's aspect ratio at the area of the parsed size. Otherwise the parsed size.
    """
    params = parsed.params
    if input_size is None:
        return params.w, params.h
    width, height = input_size
    if parsed.keep_background:
        return planner.fit_size(width, height, max_side)
    if {"w", "h", "ar"} & set(parsed.explicit_params):
        return params.w, params.h
    if parsed.flags.only_upscale:
        return planner.fit_size(width, height, max_side)
    area = params.w * params.h or NATIVE_SIDE.get(family, 512) ** 2
    factor = (area / (width * height)) ** 0.5
    return planner.fit_size(max(8, int(width * factor)), max(8, int(height * factor)), max_side)


@dataclass(frozen=True)
class Prepared:
    input_image: common_pb2.ImageRef | None
    mask_image: common_pb2.ImageRef | None
    width: int
    height: int


class JobInputs:
    def __init__(
        self,
        *,
        settings: GatewaySettings,
        objects: ObjectStore,
        http: SafeHttp,
        clients: InternalClients,
        layouts: DefaultLayouts | None = None,
    ):
        self.settings = settings
        self.objects = objects
        self.http = http
        self.clients = clients
        #: Default layouts answered before, shared by a tenant's jobs of one size and person count.
        self.layouts = layouts if layouts is not None else DefaultLayouts()

    async def load_image(
        self, tenant: str, image_id: str, url: str, field_id: str, field_url: str, mode: str
    ) -> Image.Image | None:
        limits = self.settings.limits
        if image_id:
            try:
                data = await self.objects.get_bytes(
                    names.BUCKET_JOBS,
                    names.upload_key(tenant, image_id),
                    max_bytes=limits.max_image_bytes,
                    field=field_id,
                )
            except NotFound as error:
                raise unknown_upload(field_id, image_id) from error
            field = field_id
        elif url:
            try:
                fetched = await self.http.fetch(
                    url,
                    max_bytes=limits.max_image_bytes,
                    timeout=limits.fetch_timeout_seconds,
                    max_redirects=limits.max_redirects,
                )
            except FetchError as error:
                raise InvalidInput.of(
                    [Violation(field_url, error.reason)],
                    reason=Reason.IMAGE_TOO_LARGE if error.too_large else None,
                    metadata={"maxBytes": str(limits.max_image_bytes)} if error.too_large else None,
                ) from error
            data, field = fetched.data, field_url
        else:
            return None
        return await asyncio.to_thread(
            decode_image, data, field=field, max_pixels=limits.max_image_pixels, mode=mode
        )

    async def prepare(
        self,
        tenant: str,
        job_id: str,
        request: jobs_pb2.SubmitJobRequest,
        parsed: prompt_pb2.ParsedPrompt,
        family: str,
    ) -> Prepared:
        params = parsed.params
        results = await asyncio.gather(
            self.load_image(
                tenant,
                request.input_image_id,
                params.input_image_url,
                "input_image_id",
                "params.input_image_url",
                "RGB",
            ),
            self.load_image(
                tenant,
                request.mask_image_id,
                params.mask_image_url,
                "mask_image_id",
                "params.mask_image_url",
                "L",
            ),
            return_exceptions=True,
        )
        problems: list[Violation] = []
        failed: list[InvalidInput | NotFound] = []
        for result in results:
            if isinstance(result, InvalidInput | NotFound) and result.violations:
                problems += result.violations
                failed.append(result)
            elif isinstance(result, BaseException):
                raise result
        if failed:
            # Every problem of both images in one answer; an image id that names no upload makes it
            # NOT_FOUND, else the first image's reason (e.g. IMAGE_TOO_LARGE) stands for both.
            first = next((f for f in failed if isinstance(f, NotFound)), failed[0])
            raise type(first)(
                violations_summary(problems),
                violations=problems,
                reason=first.reason,
                metadata=first.metadata,
            )
        source, mask = results
        width, height = scene_size(
            parsed, source.size if source is not None else None, family, self.settings.max_side
        )
        input_ref = mask_ref = None
        if source is not None:
            if source.size != (width, height):
                source = await asyncio.to_thread(source.resize, (width, height), Image.Resampling.LANCZOS)
            input_ref = await self.objects.put_image(
                names.BUCKET_JOBS, names.input_key(tenant, job_id, "input"), source
            )
        if mask is not None:
            if mask.size != (width, height):
                mask = await asyncio.to_thread(mask.resize, (width, height), Image.Resampling.NEAREST)
            mask_ref = await self.objects.put_image(
                names.BUCKET_JOBS, names.input_key(tenant, job_id, "mask"), mask
            )
        return Prepared(input_ref, mask_ref, width, height)

    async def layout(
        self, tenant: str, count: int, prepared: Prepared, pose_installed: bool
    ) -> segmentation_pb2.LayoutResponse:
        request = segmentation_pb2.LayoutRequest(count=count)
        if prepared.input_image is not None:
            request.image.CopyFrom(prepared.input_image)
            return await self.clients.layout(request)
        # The default layout: the same for every job of this size and count, pose image included.
        shared = (tenant, prepared.width, prepared.height, count, pose_installed)
        known = self.layouts.get(shared)
        if known is not None:
            return known
        request.width, request.height = prepared.width, prepared.height
        if pose_installed:
            request.output_bucket = names.BUCKET_JOBS
            request.output_key = names.layout_prefix(tenant)
            request.content_addressed = True
        response = await self.clients.layout(request)
        self.layouts.put(shared, response)
        return response

    async def prepare_and_lay_out(
        self,
        tenant: str,
        job_id: str,
        request: jobs_pb2.SubmitJobRequest,
        parsed: prompt_pb2.ParsedPrompt,
        info: diffusion_pb2.InfoResponse,
        base_model: str,
    ) -> tuple[Prepared, segmentation_pb2.LayoutResponse | None]:
        """Store the inputs, then lay out the persons on them (Segmentation.Layout; None without persons)."""
        prepared = await self.prepare(
            tenant, job_id, request, parsed, requirements.model_family(info, base_model)
        )
        if not parsed.persons:
            return prepared, None
        with_pose = requirements.CAPABILITY_POSE in frozenset(info.capabilities)
        return prepared, await self.layout(tenant, len(parsed.persons), prepared, with_pose)
