"""Connection settings for the two shared dependencies: NATS JetStream and the S3/MinIO object store.

Service settings embed these and read them with the same :class:`~multipass.config.EnvReader`, so one
``reader.check()`` at the end reports every bad variable at once::

    reader = EnvReader()
    nats = NatsSettings.from_env(reader)
    s3 = S3Settings.from_env(reader)
    reader.check()
"""

from __future__ import annotations

from dataclasses import dataclass

from multipass.config import EnvReader
from multipass.redaction import redact_url

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
DEFAULT_S3_ENDPOINT = "127.0.0.1:9000"
DEFAULT_S3_ACCESS_KEY = "multipass"
DEFAULT_S3_SECRET_KEY = "multipass-secret"
DEFAULT_S3_REGION = "us-east-1"


@dataclass(frozen=True)
class NatsSettings:
    """Where the NATS server is (``MULTIPASS_NATS_URL``) and how many replicas the streams and KV buckets
    get when this service creates them (``MULTIPASS_NATS_REPLICAS``, 1..5; 3 on a three-server cluster)."""

    url: str = DEFAULT_NATS_URL
    replicas: int = 1

    def __repr__(self) -> str:  # the URL's password never reaches a log line
        return f"NatsSettings(url={redact_url(self.url)!r}, replicas={self.replicas!r})"

    @classmethod
    def from_env(cls, reader: EnvReader) -> NatsSettings:
        """Read the NATS variables; problems are collected by ``reader`` (call ``reader.check()``)."""
        return cls(
            url=reader.url("NATS_URL", DEFAULT_NATS_URL, schemes=("nats", "tls", "ws", "wss")),
            replicas=reader.int("NATS_REPLICAS", 1, min=1, max=5),
        )


@dataclass(frozen=True)
class S3Settings:
    """How to reach the S3-compatible object store (MinIO in production, moto server in tests)."""

    endpoint: str = DEFAULT_S3_ENDPOINT
    access_key: str = DEFAULT_S3_ACCESS_KEY
    secret_key: str = DEFAULT_S3_SECRET_KEY
    secure: bool = False
    region: str = DEFAULT_S3_REGION

    def __repr__(self) -> str:  # the secret key never reaches a log line
        return (
            f"S3Settings(endpoint={self.endpoint!r}, access_key={self.access_key!r}, secret_key='***', "
            f"secure={self.secure!r}, region={self.region!r})"
        )

    @classmethod
    def from_env(cls, reader: EnvReader) -> S3Settings:
        """Read ``MULTIPASS_S3_ENDPOINT`` (``host:port``), ``_ACCESS_KEY``, ``_SECRET_KEY``, ``_SECURE``, ``_REGION``."""
        return cls(
            endpoint=reader.address("S3_ENDPOINT", DEFAULT_S3_ENDPOINT),
            access_key=reader.str("S3_ACCESS_KEY", DEFAULT_S3_ACCESS_KEY),
            secret_key=reader.str("S3_SECRET_KEY", DEFAULT_S3_SECRET_KEY),
            secure=reader.bool("S3_SECURE", False),
            region=reader.str("S3_REGION", DEFAULT_S3_REGION),
        )
