"""The FastAPI application: routers, the body-size limit, metrics, CORS (off unless configured) and the
one error mapping. ``create_app`` takes everything it uses, so tests build it around a real gateway."""

from __future__ import annotations

import asyncio
import importlib
import logging

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from multipass.store import ObjectStore
from multipass_http_api.body_limit import BodyLimitMiddleware
from multipass_http_api.errors import install_error_handlers
from multipass_http_api.gateway import GatewayClient
from multipass_http_api.metrics import MetricsMiddleware
from multipass_http_api.settings import HttpApiSettings

log = logging.getLogger(__name__)

#: Route modules under ``multipass_http_api.routes``, each exposing ``router``, in inclusion order.
ROUTE_MODULES = (
    "health",
    "jobs",
    "uploads",
    "events",
    "files",
    "callback_key",
    "astria_prompts",
    "astria_tunes",
    "web",
)

DESCRIPTION = (
    "Multipass over HTTP: our job API (`/v1/...`, with Server-Sent Events), Astria-compatible "
    "`/tunes` and `/prompts` endpoints, and a web page at `/`. Every call is authenticated by the "
    "gateway with `Authorization: Bearer <api key>`."
)


def create_app(
    settings: HttpApiSettings, gateway: GatewayClient, objects: ObjectStore | None = None
) -> FastAPI:
    """The application answering HTTP for ``gateway``; ``objects`` serves pass outputs and masks."""
    # No /docs or /redoc: FastAPI's pages load their scripts from a CDN, on the web page's origin (where
    # the page keeps the caller's key). The OpenAPI document is at /openapi.json for any viewer.
    app = FastAPI(
        title="Multipass HTTP API", version="1", description=DESCRIPTION, docs_url=None, redoc_url=None
    )
    app.state.settings = settings
    app.state.gateway = gateway
    app.state.objects = objects
    #: Set when the service stops: open event streams end.
    app.state.stopping = asyncio.Event()
    for name in ROUTE_MODULES:
        module = importlib.import_module(f"multipass_http_api.routes.{name}")
        app.include_router(module.router)
    install_error_handlers(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID", "X-Filename"],
        )
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware)
    return app
