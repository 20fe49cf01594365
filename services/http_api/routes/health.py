"""``/healthz``: the process answers (liveness, and the start-up probe). ``/readyz``: it can serve, i.e.
the gateway behind it answers its gRPC health as SERVING (readiness: a pod whose gateway is unreachable or
not serving leaves its Service's endpoints instead of answering every request with 503)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from multipass_http_api.deps import Gateway

router = APIRouter(include_in_schema=False)


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(gateway: Gateway) -> JSONResponse:
    problem = await gateway.serving()
    if problem:
        return JSONResponse({"status": "not ready", "reason": problem}, status_code=503)
    return JSONResponse({"status": "ok"})
