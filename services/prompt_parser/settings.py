"""The prompt parser's settings, read once from ``MULTIPASS_*`` environment variables."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from multipass.config import EnvReader
from multipass.errors import ConfigError, Violation
from multipass.event_loop import DEFAULT_EVENT_LOOP, EVENT_LOOPS
from multipass.metrics import metrics_host_for
from multipass_prompt_parser.language import MIN_SIZE, SIZE_STEP, Limits

#: Largest size cap an operator may configure: the longest side a diffusion worker makes (a larger w/h
#: would be accepted here and refused by every pass of the job).
MAX_SIZE_CAP = 4096


@dataclass(frozen=True)
class ParserSettings:
    grpc_addr: str = "127.0.0.1:50051"
    #: Port of the /metrics endpoint; 0 picks a free port.
    metrics_port: int = 9101
    max_persons: int = 8
    max_size: int = 2048
    native_size: int = 512
    max_prompt_chars: int = 4000
    log_level: str = "INFO"
    #: When set, Parse needs the x-multipass-internal metadata with this value.
    internal_token: str = field(default="", repr=False)
    #: ``MULTIPASS_EVENT_LOOP``: auto (uvloop where installed), uvloop or asyncio.
    event_loop: str = DEFAULT_EVENT_LOOP

    @property
    def metrics_host(self) -> str:
        """/metrics listens where gRPC does: loopback locally, every interface in a pod (0.0.0.0)."""
        return metrics_host_for(self.grpc_addr)

    @property
    def limits(self) -> Limits:
        return Limits(
            native_size=self.native_size,
            max_size=self.max_size,
            max_persons=self.max_persons,
            max_prompt_chars=self.max_prompt_chars,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ParserSettings:
        """Settings from the environment; ConfigError names every bad variable."""
        env = EnvReader(environ)
        settings = cls(
            grpc_addr=env.str("PARSER_GRPC_ADDR", cls.grpc_addr),
            metrics_port=env.int("PARSER_METRICS_PORT", cls.metrics_port, min=0, max=65535),
            max_persons=env.int("MAX_PERSONS", cls.max_persons, min=1, max=64),
            max_size=env.int("MAX_SIZE", cls.max_size, min=MIN_SIZE, max=MAX_SIZE_CAP),
            native_size=env.int("NATIVE_SIZE", cls.native_size, min=MIN_SIZE, max=MAX_SIZE_CAP),
            max_prompt_chars=env.int("MAX_PROMPT_CHARS", cls.max_prompt_chars, min=100, max=100_000),
            log_level=env.choice(
                "LOG_LEVEL", cls.log_level, ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
            ),
            event_loop=env.choice("EVENT_LOOP", DEFAULT_EVENT_LOOP, EVENT_LOOPS),
            internal_token=env.str("INTERNAL_TOKEN", ""),
        )
        env.check()
        problems = []
        if settings.max_size % SIZE_STEP:
            problems.append(
                Violation(
                    "MULTIPASS_MAX_SIZE", f"got {settings.max_size}; expected a multiple of {SIZE_STEP}"
                )
            )
        if settings.native_size % SIZE_STEP or settings.native_size > settings.max_size:
            problems.append(
                Violation(
                    "MULTIPASS_NATIVE_SIZE",
                    f"got {settings.native_size}; expected a multiple of {SIZE_STEP} in "
                    f"{MIN_SIZE}..MULTIPASS_MAX_SIZE ({settings.max_size})",
                )
            )
        if problems:
            names = ", ".join(v.field for v in problems)
            raise ConfigError(f"bad configuration: {names}", violations=problems)
        return settings
