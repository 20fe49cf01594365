"""Wrapping the four kinds of gRPC method handlers, shared by the error and metrics interceptors.

Request bodies that do not decode are handed to the handler as :class:`UndecodableRequest` so that they
become ``INVALID_ARGUMENT`` rather than the ``INTERNAL`` grpc answers by default.

A response-streaming handler comes in one of two shapes, and a wrapper keeps the shape it wraps because
``grpc.aio`` tells them apart by their function type: an async generator that yields responses (our
servicers, reflection) or a coroutine that writes them with ``context.write`` and returns ``None``
(``grpc.health.v1`` ``Watch``). A client that goes away ends either one: the generator is closed
(``GeneratorExit``) or the coroutine cancelled; both are counted as ``CANCELLED`` and never turned into an
error status, since there is nobody left to receive one.
"""

from __future__ import annotations

import asyncio
import inspect

import grpc
from grpc.aio import AbortError


class UndecodableRequest(Exception):
    """Stands in for a request message whose bytes did not parse."""

    def __init__(self, size: int):
        super().__init__(f"{size} undecodable bytes")
        self.size = size


def _lenient(deserializer):
    if deserializer is None:
        return None

    def deserialize(data: bytes):
        try:
            return deserializer(data)
        except Exception:
            return UndecodableRequest(len(data))

    return deserialize


def _check(request):
    if isinstance(request, UndecodableRequest):
        raise request
    return request


async def _checked_stream(request_iterator):
    async for request in request_iterator:
        yield _check(request)


async def _responses(produced):
    """The responses of a streaming handler's result, async or not."""
    if hasattr(produced, "__aiter__"):
        async for response in produced:
            yield response
    else:
        for response in produced:
            yield response


async def _close(produced) -> None:
    close = getattr(produced, "aclose", None)
    if close is not None:
        await close()


def wrap_handler(handler: grpc.RpcMethodHandler, *, on_error=None, on_start=None, on_finish=None):
    """A handler like ``handler`` that reports start/finish and routes exceptions to ``on_error``.

    ``on_finish(code_name)`` receives "OK" or the status code's name; ``on_error(exc, context)`` must abort.
    """

    checking = on_error is not None

    def prepare(request_or_iterator, streaming_request: bool):
        if not checking:
            return request_or_iterator
        return _checked_stream(request_or_iterator) if streaming_request else _check(request_or_iterator)

    def started() -> None:
        if on_start is not None:
            on_start()

    def finished(code: str) -> None:
        if on_finish is not None:
            on_finish(code)

    async def fail(error: BaseException, context) -> None:
        if isinstance(error, (asyncio.CancelledError, GeneratorExit)):
            finished("CANCELLED")
            raise error
        if isinstance(error, AbortError):
            finished(context.code().name if context.code() else "UNKNOWN")
            raise error
        if on_error is None:
            finished("INTERNAL" if not hasattr(error, "code_name") else error.code_name)
            raise error
        try:
            await on_error(error, context)
        except AbortError:
            code = context.code()
            finished(code.name if code is not None else "UNKNOWN")
            raise

    if handler.unary_unary or handler.stream_unary:
        inner = handler.unary_unary or handler.stream_unary
        streaming_request = handler.stream_unary is not None

        async def wrapped(request_or_iterator, context):
            started()
            try:
                response = await inner(prepare(request_or_iterator, streaming_request), context)
            except BaseException as error:  # noqa: BLE001 - every error ends in exactly one status
                await fail(error, context)
                raise
            finished("OK")
            return response

        factory = (
            grpc.stream_unary_rpc_method_handler if streaming_request else grpc.unary_unary_rpc_method_handler
        )
    else:
        inner = handler.unary_stream or handler.stream_stream
        streaming_request = handler.stream_stream is not None

        if inspect.iscoroutinefunction(inner):

            async def wrapped(request_or_iterator, context):
                started()
                try:
                    await inner(prepare(request_or_iterator, streaming_request), context)
                except BaseException as error:  # noqa: BLE001
                    await fail(error, context)
                    raise
                finished("OK")

        else:

            async def wrapped(request_or_iterator, context):
                started()
                produced = None
                try:
                    produced = inner(prepare(request_or_iterator, streaming_request), context)
                    async for response in _responses(produced):
                        yield response
                except BaseException as error:  # noqa: BLE001
                    await fail(error, context)
                    raise
                finally:
                    await _close(produced)
                finished("OK")

        factory = (
            grpc.stream_stream_rpc_method_handler
            if streaming_request
            else grpc.unary_stream_rpc_method_handler
        )

    return factory(
        wrapped,
        request_deserializer=_lenient(handler.request_deserializer)
        if checking
        else handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
