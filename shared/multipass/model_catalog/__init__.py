"""The model catalog: the curated manifest of what ``multipass models pull`` fetches (``manifest.toml``,
:mod:`.manifest`) and the check of which features a model directory provides (:mod:`.features`).

Both are pure: no network, no model loading, no ``huggingface_hub``. The services use the check at start
(their logs) and in their Info rpcs; the gateway uses the fix commands when it refuses a job at submit.
"""
