"""The HTTP routes, one module per resource: ``jobs`` and ``events`` (our API), ``files`` (pass outputs,
masks and the zip of a job), ``web`` (the page), ``astria_prompts`` and ``astria_tunes`` (Astria's API)."""
