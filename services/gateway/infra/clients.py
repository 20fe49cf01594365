"""gRPC clients of the internal services (prompt parser, segmentation, diffusion info).

Failures come back as our errors via :func:`multipass.grpc.errors.from_rpc_error`, so a parser's
INVALID_ARGUMENT keeps its field violations all the way to the user.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc

from multipass.errors import InvalidInput, Unavailable
from multipass.grpc.errors import from_rpc_error
from multipass.grpc.internal_auth import internal_metadata
from multipass.v1 import (
    diffusion_pb2,
    diffusion_pb2_grpc,
    prompt_pb2,
    prompt_pb2_grpc,
    segmentation_pb2,
    segmentation_pb2_grpc,
)
from multipass_gateway.infra.object_copies import ObjectCopies

_OPTIONS = [
    ("grpc.max_receive_message_length", 8 * 1024 * 1024),
    ("grpc.max_send_message_length", 8 * 1024 * 1024),
]


class InternalClients:
    """``copies``: where the copies of small outputs the segmentation service sends back are kept (for the
    pass requests that read them); None asks for none."""

    def __init__(
        self,
        *,
        parser: str,
        segmentation: str,
        diffusion: str,
        internal_token: str = "",
        copies: ObjectCopies | None = None,
    ):
        self._channels = [
            grpc.aio.insecure_channel(target, options=_OPTIONS)
            for target in (parser, segmentation, diffusion)
        ]
        self.parser = prompt_pb2_grpc.PromptParserStub(self._channels[0])
        self.segmentation = segmentation_pb2_grpc.SegmentationStub(self._channels[1])
        self.diffusion = diffusion_pb2_grpc.DiffusionStub(self._channels[2])
        self._targets = {"prompt parser": parser, "segmentation": segmentation, "diffusion": diffusion}
        self._metadata = internal_metadata(internal_token)
        self.copies = copies

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()

    async def _call(self, service: str, method, request, timeout: float):
        try:
            return await method(request, timeout=timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as error:
            rebuilt = from_rpc_error(error)
            if isinstance(rebuilt, InvalidInput) and rebuilt.violations:
                # The status details already repeat every violation; keep one copy of them.
                raise InvalidInput.of(list(rebuilt.violations)) from error
            if isinstance(rebuilt, Unavailable):
                raise Unavailable(
                    f"{service} at {self._targets[service]} unavailable: {error.details()}"
                ) from error
            raise rebuilt from error

    async def parse(
        self,
        text: str,
        params: Mapping[str, str],
        *,
        has_input_image: bool,
        has_mask_image: bool,
        native_size: int = 0,
    ) -> prompt_pb2.ParsedPrompt:
        request = prompt_pb2.ParseRequest(
            text=text,
            params=dict(params),
            has_input_image=has_input_image,
            has_mask_image=has_mask_image,
            native_size=native_size,
        )
        response = await self._call("prompt parser", self.parser.Parse, request, 10.0)
        return response.parsed

    async def layout(self, request: segmentation_pb2.LayoutRequest) -> segmentation_pb2.LayoutResponse:
        return self._keep_copies(
            await self._call("segmentation", self.segmentation.Layout, self._ask_copies(request), 60.0)
        )

    async def segment(self, request: segmentation_pb2.SegmentRequest) -> segmentation_pb2.SegmentResponse:
        return self._keep_copies(
            await self._call("segmentation", self.segmentation.Segment, self._ask_copies(request), 120.0)
        )

    def _ask_copies(self, request):
        if self.copies is not None and self.copies.enabled and not request.copies_up_to_bytes:
            request.copies_up_to_bytes = self.copies.copy_limit
        return request

    def _keep_copies(self, response):
        """Keep the response's copies and take them off it (callers see references only)."""
        if self.copies is not None and response.copies:
            self.copies.remember(response.copies)
        response.ClearField("copies")
        return response

    async def detect_faces(
        self, request: segmentation_pb2.DetectFacesRequest
    ) -> segmentation_pb2.DetectFacesResponse:
        return await self._call("segmentation", self.segmentation.DetectFaces, request, 60.0)

    async def info(self) -> diffusion_pb2.InfoResponse:
        return await self._call("diffusion", self.diffusion.Info, diffusion_pb2.InfoRequest(), 5.0)
