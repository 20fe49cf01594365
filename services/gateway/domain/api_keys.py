"""API keys: generating them, hashing them for storage, checking their shape (pure)."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

#: Every API key starts with this, so leaked keys are easy to scan for.
KEY_PREFIX = "mpk_"
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
