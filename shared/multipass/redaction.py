"""Text fit for logs and error messages: URLs with their password replaced by ``***``.

``MULTIPASS_NATS_URL`` carries the NATS user's password in Kubernetes (``nats://gateway:PASSWORD@nats:4222``);
anything that writes such a URL to a log line or an error writes :func:`redact_url` of it instead.
"""

from __future__ import annotations

import re

REDACTED = "***"

#: ``scheme://userinfo@``: the user information of every URL in a text (a list of servers has several).
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#@\s]*)@")


def redact_url(url: str) -> str:
    """``url`` with the password of its user information (``user:password@``) replaced by ``***``.

    User information without a password is a token to NATS (``nats://TOKEN@host``): all of it is
    replaced. Text without user information comes back unchanged."""

    def redact(match: re.Match) -> str:
        user, colon, _ = match["userinfo"].partition(":")
        shown = f"{user}:{REDACTED}" if colon else REDACTED
        return f"{match['scheme']}{shown}@"

    return _USERINFO.sub(redact, url)
