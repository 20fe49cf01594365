"""A gRPC channel that carries the caller's credentials on every call, and the client bundling the stubs."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from multipass_client.admin import ADMIN_TOKEN_HEADER, AdminClient
from multipass_client.jobs import JobsClient
from multipass_client.tunes import TunesClient

#: Streamed uploads may carry 1 MiB chunks; keep the same limits as the servers.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024


class _MetadataInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds fixed metadata (``authorization``, the admin token) to every call."""

    def __init__(self, pairs: Sequence[tuple[str, str]]):
        self._pairs = tuple(pairs)

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = list(details.metadata or ()) + list(self._pairs)
        return _CallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, method, timeout, metadata, credentials, wait_for_ready, compression):
        self.method = method
        self.timeout = timeout
        self.metadata = metadata
        self.credentials = credentials
        self.wait_for_ready = wait_for_ready
        self.compression = compression


def open_channel(address: str, *, api_key: str | None = None, admin_token: str | None = None) -> grpc.Channel:
    """An insecure (loopback / in-cluster) channel adding ``authorization: Bearer <api_key>`` and/or the
    admin token to every call."""
    channel = grpc.insecure_channel(
        address,
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    pairs = []
    if api_key:
        pairs.append(("authorization", f"Bearer {api_key}"))
    if admin_token:
        pairs.append((ADMIN_TOKEN_HEADER, admin_token))
    return grpc.intercept_channel(channel, _MetadataInterceptor(pairs)) if pairs else channel


class Client:
    """Jobs, Tunes and Admin clients over one channel; a context manager that closes it."""

    def __init__(self, channel: grpc.Channel, *, timeout: float = 30.0):
        self.channel = channel
        self.jobs = JobsClient(channel, timeout=timeout)
        self.tunes = TunesClient(channel, timeout=timeout)
        self.admin = AdminClient(channel, timeout=timeout)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def connect(
    address: str, *, api_key: str | None = None, admin_token: str | None = None, timeout: float = 30.0
) -> Client:
    return Client(open_channel(address, api_key=api_key, admin_token=admin_token), timeout=timeout)
