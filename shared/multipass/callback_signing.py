"""Signed callbacks: the signature scheme, and each tenant's own signing key.

A callback carries ``X-Multipass-Signature: t=<unix seconds>,v1=<hex>`` with v1 = HMAC-SHA256(key,
"<t>.<body>"). The key is the tenant's: :func:`tenant_key` derives it from the deployment's secret
(``MULTIPASS_CALLBACK_SIGNING_KEY``) and the tenant id, so a tenant can check its callbacks with its own key
(``GetCallbackKey``) without learning the secret, and cannot sign another tenant's. The tenant a callback is
for travels in ``X-Multipass-Tenant``; a receiver holding the secret (the HTTP API's relay) derives the key
from it, so a callback relabelled with another tenant fails the check.
"""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "X-Multipass-Signature"
TENANT_HEADER = "X-Multipass-Tenant"
#: Seconds a signature stays acceptable (either side of the receiver's clock).
DEFAULT_TOLERANCE_SECONDS = 300.0
_DERIVATION = b"multipass callback signing key v1\x00"


def tenant_key(secret: str, tenant: str) -> str:
    """The tenant's callback signing key (64 hex digits); "" when callbacks are disabled (no secret)."""
    if not secret:
        return ""
    return hmac.new(secret.encode("utf-8"), _DERIVATION + tenant.encode("utf-8"), hashlib.sha256).hexdigest()


def sign(body: bytes, key: str, timestamp: int) -> str:
    """``t=<timestamp>,v1=<hex>`` with v1 = HMAC-SHA256(key, "<timestamp>.<body>")."""
    digest = hmac.new(key.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(
    header: str,
    body: bytes,
    key: str,
    *,
    now: float | None = None,
    tolerance: float = DEFAULT_TOLERANCE_SECONDS,
) -> bool:
    """True when ``header`` is a valid signature of ``body`` under ``key``, made within ``tolerance`` s."""
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        fields.setdefault(name, []).append(value)
    try:
        timestamp = int(fields.get("t", [""])[0])
    except ValueError:
        return False
    current = time.time() if now is None else now
    if not key or abs(current - timestamp) > tolerance:
        return False
    expected = sign(body, key, timestamp).split("v1=", 1)[1]
    return any(hmac.compare_digest(expected, candidate) for candidate in fields.get("v1", []))
