"""The HTTP service's settings, read once from ``MULTIPASS_*`` environment variables."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from multipass.config import EnvReader
from multipass.connections import S3Settings
from multipass.errors import ConfigError, Violation
from multipass.event_loop import DEFAULT_EVENT_LOOP, EVENT_LOOPS
from multipass.metrics import metrics_host_for
from multipass_http_api.astria.callbacks import CallbackSettings
from multipass_http_api.astria.callbacks import settings_from_env as callback_settings_from_env

#: Largest request body an operator may allow (uploads of input images and tune files).
MAX_BODY_BYTES_CAP = 1 << 30


@dataclass(frozen=True)
class HttpApiSettings:
    #: Where the HTTP server listens (``host:port``; port 0 picks a free one).
    http_addr: str = "127.0.0.1:8080"
    #: The gateway's public gRPC address.
    gateway_target: str = "127.0.0.1:50050"
    #: Base URL clients reach this service at, used in the ``url`` fields of responses; empty = derived
    #: from the request (its scheme and Host header).
    public_url: str = ""
    #: Requests with a larger body are refused with 413 before they are read.
    max_body_bytes: int = 32 * 1024 * 1024
    #: Port of the /metrics endpoint; 0 picks a free port.
    metrics_port: int = 9105
    #: Origins allowed by CORS; empty turns CORS off (the web page is served from the same origin).
    cors_origins: tuple[str, ...] = ()
    #: Seconds between heartbeat comments on an idle Server-Sent Events stream.
    sse_heartbeat_seconds: float = 15.0
    #: Deadline of one unary call to the gateway.
    gateway_timeout_seconds: float = 30.0
    #: The object store, read for pass outputs and masks the service streams to the caller.
    s3: S3Settings = field(default_factory=S3Settings)
    #: ``prompt[callback]`` of the Astria endpoints: relay URL, signing key, address policy.
    astria_callbacks: CallbackSettings = field(default_factory=CallbackSettings)
    #: Astria's account-level idempotency (``MULTIPASS_HTTP_ASTRIA_IDEMPOTENCY``): a tune whose title an
    #: existing tune of the tenant has, and a prompt whose key fields (:mod:`.astria.idempotency`) an earlier
    #: prompt of the tune had, are answered with the existing one instead of being made again.
    astria_idempotency: bool = False
    log_level: str = "INFO"
    #: ``MULTIPASS_EVENT_LOOP``: auto (uvloop where installed), uvloop or asyncio.
    event_loop: str = DEFAULT_EVENT_LOOP

    @property
    def metrics_host(self) -> str:
        """/metrics listens where HTTP does: loopback locally, every interface in a pod (0.0.0.0)."""
        return metrics_host_for(self.http_addr)

    @property
    def host(self) -> str:
        return self.http_addr.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.http_addr.rpartition(":")[2])

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> HttpApiSettings:
        """Settings from the environment; ConfigError names every bad variable."""
        env = EnvReader(environ)
        http_addr = env.str("HTTP_ADDR", cls.http_addr)
        public_url = env.str("HTTP_PUBLIC_URL", "")
        if public_url:
            public_url = env.url("HTTP_PUBLIC_URL", "", schemes=("http", "https")).rstrip("/")
        settings = cls(
            http_addr=http_addr,
            gateway_target=env.address("GATEWAY_TARGET", cls.gateway_target),
            public_url=public_url,
            max_body_bytes=env.int(
                "HTTP_MAX_BODY_BYTES", cls.max_body_bytes, min=1024, max=MAX_BODY_BYTES_CAP
            ),
            metrics_port=env.int("HTTP_METRICS_PORT", cls.metrics_port, min=0, max=65535),
            cors_origins=env.csv("HTTP_CORS_ORIGINS"),
            sse_heartbeat_seconds=env.float(
                "HTTP_SSE_HEARTBEAT_SECONDS", cls.sse_heartbeat_seconds, min=0.05, max=300
            ),
            gateway_timeout_seconds=env.float(
                "HTTP_GATEWAY_TIMEOUT_SECONDS", cls.gateway_timeout_seconds, min=0.1, max=600
            ),
            s3=S3Settings.from_env(env),
            astria_callbacks=callback_settings_from_env(env),
            astria_idempotency=env.bool("HTTP_ASTRIA_IDEMPOTENCY", False),
            log_level=env.choice(
                "LOG_LEVEL", cls.log_level, ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
            ),
            event_loop=env.choice("EVENT_LOOP", DEFAULT_EVENT_LOOP, EVENT_LOOPS),
        )
        env.check()
        host, sep, port = http_addr.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ConfigError(
                "bad configuration: MULTIPASS_HTTP_ADDR",
                violations=[
                    Violation(
                        "MULTIPASS_HTTP_ADDR", f"got {http_addr!r}; expected host:port, port in 0..65535"
                    )
                ],
            )
        return settings
