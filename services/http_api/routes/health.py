"""``/healthz``: the process answers (a probe for the local stack's supervisor and Kubernetes)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(include_in_schema=False)


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
