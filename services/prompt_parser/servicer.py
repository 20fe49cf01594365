"""The PromptParser gRPC servicer: request in, domain parse, response out. Errors are just raised;
the shared error interceptor turns InvalidInput into INVALID_ARGUMENT with BadRequest details."""

from __future__ import annotations

import grpc

from multipass.v1 import prompt_pb2, prompt_pb2_grpc
from multipass_prompt_parser.convert import from_request, to_response
from multipass_prompt_parser.language import Limits, with_native_size
from multipass_prompt_parser.parser import parse_prompt


class PromptParserServicer(prompt_pb2_grpc.PromptParserServicer):
    def __init__(self, limits: Limits):
        self._limits = limits

    async def Parse(  # noqa: N802 - the rpc's name
        self, request: prompt_pb2.ParseRequest, context: grpc.aio.ServicerContext
    ) -> prompt_pb2.ParseResponse:
        asked = from_request(request)
        parsed = parse_prompt(
            asked.text,
            asked.params,
            limits=with_native_size(self._limits, asked.native_size),
            has_input_image=asked.has_input_image,
            has_mask_image=asked.has_mask_image,
        )
        return to_response(parsed)
