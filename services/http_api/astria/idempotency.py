"""Astria's account-level idempotency, when the operator turns it on (``MULTIPASS_HTTP_ASTRIA_IDEMPOTENCY``).

Astria documents it as an account setting for clients that retry after a timeout: tunes are keyed by
their ``title``, prompts by the fields in :data:`PROMPT_KEY_FIELDS` (within their tune). Here:

- a prompt's key fields hash into the nonce of its gateway idempotency key (:mod:`.origin`), so the
  gateway's own idempotency answers a repeat with the first job (durably, across replicas); a repeat whose
  other fields differ (an input image, film grain) is answered with the first prompt too, as Astria keys
  only on these fields;
- a tune whose title one of the tenant's tunes already has is answered with that tune, nothing registered.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

#: The fields Astria keys prompts by (besides the tune).
PROMPT_KEY_FIELDS = (
    "text", "cfg_scale", "steps", "seed", "callback", "negative_prompt", "super_resolution", "face_correct",
    "ar", "num_images", "controlnet", "denoising_strength", "use_lpw", "controlnet_conditioning_scale", "w",
    "h", "hires_fix", "scheduler", "controlnet_txt2img", "inpaint_faces",
)  # fmt: skip


def prompt_nonce(tune_id: str, text: str, callback: str | None, params: Mapping[str, str]) -> str:
    """16 hex digits naming the prompt's key fields (the nonce of its gateway idempotency key)."""
    values = {"text": text, "callback": callback or ""}
    keyed = {name: values.get(name, params.get(name, "")) for name in PROMPT_KEY_FIELDS}
    canonical = json.dumps([tune_id, keyed], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]
