"""What the Astria endpoints remember about a prompt inside its gateway job.

The service keeps no state of its own, so the Astria-only facts of a prompt travel in the job:
- the tune id of its path and whether that tune was applied as a ``<lora:ID:1>`` tag (``<faceid:ID:1>`` for a
  faceid tune), in the job's ``idempotency_key``: ``astria-<tune_id>-<l|f|b>-<nonce>`` (Astria's REST API
  has no idempotency key of its own, and the nonce keeps two identical prompts two jobs, as Astria makes
  them);
- the ``prompt[callback]`` URL, inside the job's ``callback_url`` (see :mod:`.callbacks`).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

_KEY = re.compile(r"^astria-([0-9]{1,24})-([lfb])-[0-9a-f]{16}$")
#: The idempotency-key letter of each way a path tune is applied ("" = not applied: the base model).
_LETTERS = {"lora": "l", "faceid": "f", "": "b"}


def tune_tag(tune_id: str, kind: str = "lora") -> str:
    """The tag that applies a path tune to the whole prompt (its base pass)."""
    return f"<{kind}:{tune_id}:1>"


@dataclass(frozen=True)
class Origin:
    #: The tune id of the creating request's path.
    tune_id: str
    #: True when the path tune was applied by prefixing :func:`tune_tag` to the text.
    tune_applied: bool = False
    #: The tag kind it was applied with: ``lora``, or ``faceid`` for a faceid tune (face images only).
    tag_kind: str = "lora"

    def key_prefix(self) -> str:
        """What the keys of every job created under this origin's tune start with."""
        return f"astria-{self.tune_id}-"

    def idempotency_key(self, nonce: str = "") -> str:
        """The job's key; ``nonce`` (16 hex digits) makes repeats one job, a random one keeps them apart."""
        letter = _LETTERS[self.tag_kind if self.tune_applied else ""]
        return f"{self.key_prefix()}{letter}-{nonce or secrets.token_hex(8)}"

    def submitted_text(self, text: str) -> str:
        return f"{tune_tag(self.tune_id, self.tag_kind)} {text}" if self.tune_applied else text

    def astria_text(self, submitted: str) -> str:
        """The text as the client wrote it (without the tag this service added)."""
        prefix = f"{tune_tag(self.tune_id, self.tag_kind)} "
        if self.tune_applied and submitted.startswith(prefix):
            return submitted[len(prefix) :]
        return submitted


def origin_of(idempotency_key: str) -> Origin | None:
    """The origin of a job created by the Astria endpoints; None for other jobs."""
    match = _KEY.match(idempotency_key)
    if match is None:
        return None
    letter = match.group(2)
    return Origin(match.group(1), letter != "b", "faceid" if letter == "f" else "lora")
