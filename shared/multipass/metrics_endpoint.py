"""The /metrics HTTP endpoint of a service, on a thread of its own, that closes at once.

prometheus_client's ``start_http_server`` serves with the standard library's default poll of half a
second, so closing it (``shutdown``) waited up to 0.5 s: every service stop, and every rolling update of a
pod, paid it. This endpoint serves the same WSGI app (``make_wsgi_app``: the text format, gzip,
``name[]=`` filters) and checks for a close every :data:`POLL_SECONDS`.
"""

from __future__ import annotations

import socket
import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, CollectorRegistry, make_wsgi_app

#: How often the serving thread checks for a close (a select() timeout: no work while idle).
POLL_SECONDS = 0.05


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's signature
        """Scrapes are not logged (one per scrape interval per Prometheus)."""


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _ThreadingServer6(_ThreadingServer):
    address_family = socket.AF_INET6


class MetricsEndpoint:
    """A running /metrics endpoint; :meth:`close` stops it within :data:`POLL_SECONDS`."""

    def __init__(self, server: WSGIServer, thread: threading.Thread):
        self._server = server
        self._thread = thread

    @classmethod
    def start(
        cls, port: int, host: str = "127.0.0.1", registry: CollectorRegistry = REGISTRY
    ) -> MetricsEndpoint:
        """Listen on ``host:port`` (port 0 picks a free one) and serve ``registry``."""
        server_class = _ThreadingServer6 if ":" in host else _ThreadingServer
        server = make_server(
            host.strip("[]"), port, make_wsgi_app(registry), server_class, handler_class=_QuietHandler
        )
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": POLL_SECONDS}, name="metrics", daemon=True
        )
        thread.start()
        return cls(server, thread)

    @property
    def port(self) -> int:
        return self._server.server_port

    def close(self) -> None:
        """Stop serving and release the port (idempotent)."""
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()
        self._thread.join()
