"""The settings of an in-process diffusion worker on the tiny models, shared by the integration tests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from multipass_dev.tiny_models.diffusion import SD15_MODEL, TINY_WORKING_SIZE
from multipass_diffusion.app import DiffusionService, serve
from multipass_diffusion.settings import DiffusionSettings


def tiny_worker_settings(
    model_root: Path, nats_url: str, s3_endpoint: str, tune_cache_dir: Path, **extra: str
) -> DiffusionSettings:
    """One CPU thread, any free ports, the tiny SD1.5 model; ``extra`` adds ``MULTIPASS_DIFFUSION_<NAME>``
    variables (``PASS_CACHE="off"``)."""
    env = {
        "MULTIPASS_MODEL_DIR": str(model_root),
        "MULTIPASS_DIFFUSION_MODELS": SD15_MODEL,
        "MULTIPASS_DIFFUSION_DEVICE": "cpu",
        "MULTIPASS_DIFFUSION_WORKING_SIZE": str(TINY_WORKING_SIZE),
        "MULTIPASS_DIFFUSION_TORCH_THREADS": "1",
        "MULTIPASS_DIFFUSION_GRPC_ADDR": "127.0.0.1:0",
        "MULTIPASS_DIFFUSION_METRICS_PORT": "0",
        "MULTIPASS_DIFFUSION_TUNE_CACHE_DIR": str(tune_cache_dir),
        "MULTIPASS_NATS_URL": nats_url,
        "MULTIPASS_S3_ENDPOINT": s3_endpoint,
    }
    env.update({f"MULTIPASS_DIFFUSION_{name}": value for name, value in extra.items()})
    return DiffusionSettings.from_env(env)


@contextlib.asynccontextmanager
async def serving(settings: DiffusionSettings) -> AsyncIterator[DiffusionService]:
    """The worker and its gRPC server for the ``with`` block, stopped with a one-second grace after it."""
    running = await serve(settings)
    try:
        yield running
    finally:
        await running.stop(grace=1.0)
