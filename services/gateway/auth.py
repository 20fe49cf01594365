"""API keys and the admin token: generating, hashing, reading them from call metadata (pure)."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

#: Every API key starts with this, so leaked keys are easy to scan for.
KEY_PREFIX = "mpk_"
#: Metadata key of the operator credential (also accepted as ``authorization: Bearer <token>``).
ADMIN_TOKEN_HEADER = "x-multipass-admin-token"
_KEY_SHAPE = re.compile(r"^mpk_([0-9a-f]{16})_([A-Za-z0-9_-]{40,64})$")
_KEY_ID = re.compile(r"^[0-9a-f]{16}$")


@dataclass(frozen=True)
class IssuedKey:
    key_id: str
    #: The secret key, shown to its owner once and never stored.
    api_key: str


def issue_key() -> IssuedKey:
    """A new key: public id (for revocation) plus 256 bits of secret."""
    key_id = secrets.token_hex(8)
    return IssuedKey(key_id=key_id, api_key=f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}")


def hash_key(api_key: str, pepper: str = "") -> str:
    """What is stored: HMAC-SHA256 of the key under the server pepper (plain SHA-256 without one).

    The key holds 256 random bits, so a fast hash is enough against guessing; the pepper additionally
    keeps a stolen KV dump useless without the server's configuration.
    """
    data = api_key.encode("utf-8")
    if pepper:
        return hmac.new(pepper.encode("utf-8"), data, hashlib.sha256).hexdigest()
    return hashlib.sha256(data).hexdigest()


def looks_like_key(api_key: str) -> bool:
    return bool(_KEY_SHAPE.match(api_key))


def valid_key_id(key_id: str) -> bool:
    return bool(_KEY_ID.match(key_id))


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The token of ``authorization: Bearer <token>``, or None when absent or malformed."""
    for key, value in metadata or ():
        if key.lower() != "authorization":
            continue
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        scheme, _, token = text.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return None


def header(metadata: Iterable[tuple[str, str | bytes]] | None, name: str) -> str | None:
    for key, value in metadata or ():
        if key.lower() == name:
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return None


def admin_token_matches(metadata: Iterable[tuple[str, str | bytes]] | None, expected: str) -> bool:
    """True when the call carries ``expected`` (in x-multipass-admin-token or as a bearer token).

    Compared in constant time; an empty ``expected`` (admin API disabled) matches nothing.
    """
    if not expected:
        return False
    presented = [header(metadata, ADMIN_TOKEN_HEADER), bearer_token(metadata)]
    expected_bytes = expected.encode("utf-8")
    return any(
        hmac.compare_digest(candidate.encode("utf-8"), expected_bytes)
        for candidate in presented
        if candidate is not None
    )
