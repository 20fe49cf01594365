"""The public ``multipass.v1.Tunes`` servicer (tenant-scoped: another tenant's tune is NOT_FOUND)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from multipass.errors import InvalidInput, Violation
from multipass.store import ObjectStore
from multipass.v1 import jobs_pb2, jobs_pb2_grpc
from multipass_gateway.api.auth import authenticate, authenticate_key
from multipass_gateway.api.client_streams import ClientStream, drained_on_refusal
from multipass_gateway.api.views import public_tune
from multipass_gateway.infra.tenant_store import TenantStore
from multipass_gateway.infra.tune_store import TuneStore

SERVICE_NAME = "multipass.v1.Tunes"


def checked_tune_id(tune_id: str) -> str:
    """The request's tune id; an empty one is INVALID_ARGUMENT, like an empty job id."""
    if not tune_id:
        raise InvalidInput.of([Violation("tune_id", "is required")])
    return tune_id


class TunesServicer(jobs_pb2_grpc.TunesServicer):
    def __init__(
        self, *, tenants: TenantStore, tunes: TuneStore, objects: ObjectStore, presign_expiry_seconds: int
    ):
        self.tenants = tenants
        self.tunes = tunes
        self.objects = objects
        self.presign_expiry_seconds = presign_expiry_seconds

    async def _view(self, tune: jobs_pb2.Tune) -> jobs_pb2.Tune:
        return await public_tune(tune, self.objects, self.presign_expiry_seconds)

    async def RegisterTune(self, request_iterator, context) -> jobs_pb2.Tune:
        async with drained_on_refusal(ClientStream(request_iterator)) as stream:
            key = await authenticate_key(self.tenants, context)
            first = await stream.next_or_none()
            if first is None or first.WhichOneof("part") != "metadata":
                raise InvalidInput.of(
                    [Violation("metadata", "the first message must carry the tune's metadata")]
                )

            async def chunks() -> AsyncIterator[bytes]:
                async for part in stream:
                    if part.WhichOneof("part") != "chunk":
                        raise InvalidInput.of(
                            [Violation("metadata", "metadata may only come in the first message")]
                        )
                    yield part.chunk

            registered = await self.tunes.register(
                key.tenant, first.metadata, chunks(), still_allowed=lambda: self.tenants.require_live(key)
            )
            return await self._view(registered)

    async def GetTune(self, request: jobs_pb2.GetTuneRequest, context) -> jobs_pb2.Tune:
        tenant = await authenticate(self.tenants, context)
        return await self._view(await self.tunes.get(tenant, checked_tune_id(request.tune_id)))

    async def ListTunes(self, request: jobs_pb2.ListTunesRequest, context) -> jobs_pb2.ListTunesResponse:
        tenant = await authenticate(self.tenants, context)
        tunes, token = await self.tunes.list(tenant, request.page_size, request.page_token)
        views = await asyncio.gather(*(self._view(tune) for tune in tunes))
        return jobs_pb2.ListTunesResponse(tunes=views, next_page_token=token)

    async def DeleteTune(self, request: jobs_pb2.DeleteTuneRequest, context) -> jobs_pb2.DeleteTuneResponse:
        tenant = await authenticate(self.tenants, context)
        await self.tunes.delete(tenant, checked_tune_id(request.tune_id))
        return jobs_pb2.DeleteTuneResponse(deleted=True)

    async def UpdateTune(self, request: jobs_pb2.UpdateTuneRequest, context) -> jobs_pb2.Tune:
        tenant = await authenticate(self.tenants, context)
        return await self._view(await self.tunes.update(tenant, request))
