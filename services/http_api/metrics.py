"""HTTP metrics: requests by method, route template and status, and their latency.

Routes are labelled by their template (``/v1/jobs/{job_id}``), never by the raw path, so a label's
values stay bounded whatever clients send; a request no route matches counts under ``<unmatched>``.
Methods are the standard ones the API serves; any other a client sends counts under ``other``.
Served on their own port like every other service's ``/metrics``.
"""

from __future__ import annotations

import time

from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from multipass.metrics import RPC_BUCKETS

HTTP_REQUESTS = Counter(
    "multipass_http_requests_total",
    "HTTP requests answered, by method, route template and status code.",
    ["method", "route", "status"],
)
HTTP_REQUEST_SECONDS = Histogram(
    "multipass_http_request_duration_seconds",
    "Time from an HTTP request's arrival to the end of its response (a whole event stream included).",
    ["method", "route"],
    buckets=RPC_BUCKETS + (120, 300, 600),
)
HTTP_STREAMS_OPEN = Counter(
    "multipass_http_event_streams_total",
    "Server-Sent Events streams opened.",
    ["route"],
)

UNMATCHED = "<unmatched>"
#: Method label values; a method outside them is labelled ``other``.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "other"


def route_template(scope: Scope) -> str:
    """The template of the route that handled the request, or ``<unmatched>``."""
    route = scope.get("route")
    path = getattr(route, "path", None) if route is not None else None
    return path or UNMATCHED


def method_label(scope: Scope) -> str:
    """The request's method when it is a standard one, else ``other``."""
    method = scope.get("method", "GET")
    return method if method in METHODS else OTHER_METHOD


class MetricsMiddleware:
    """Counts and times every HTTP request by its route template (a pure ASGI middleware, so streamed
    responses pass through untouched)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def send_counting(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_counting)
        finally:
            route = route_template(scope)
            method = method_label(scope)
            HTTP_REQUESTS.labels(method=method, route=route, status=str(status["code"])).inc()
            HTTP_REQUEST_SECONDS.labels(method=method, route=route).observe(time.perf_counter() - started)
