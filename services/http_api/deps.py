"""What a route needs from the running service, as FastAPI dependencies.

``Authorization`` is read as the caller sent it and forwarded to the gateway unchanged; declaring it as an
HTTP bearer scheme only documents it in the OpenAPI document (a missing header is the gateway's to refuse).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from multipass.store import ObjectStore
from multipass_http_api.gateway import GatewayClient
from multipass_http_api.settings import HttpApiSettings

bearer = HTTPBearer(auto_error=False, description="An API key of your tenant: `Authorization: Bearer <key>`.")


def authorization_header(
    request: Request, _documented: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> str | None:
    """The caller's ``Authorization`` header, unchanged (None when absent)."""
    return request.headers.get("authorization")


def gateway_client(request: Request) -> GatewayClient:
    return request.app.state.gateway


def http_settings(request: Request) -> HttpApiSettings:
    return request.app.state.settings


def object_store(request: Request) -> ObjectStore | None:
    return request.app.state.objects


def public_base_url(request: Request) -> str:
    """The base URL for ``url`` fields: the configured public URL, else the one the request came to."""
    configured = request.app.state.settings.public_url
    return configured or str(request.base_url).rstrip("/")


Authorization = Annotated[str | None, Depends(authorization_header)]
Gateway = Annotated[GatewayClient, Depends(gateway_client)]
Settings = Annotated[HttpApiSettings, Depends(http_settings)]
Objects = Annotated[ObjectStore | None, Depends(object_store)]
BaseUrl = Annotated[str, Depends(public_base_url)]
