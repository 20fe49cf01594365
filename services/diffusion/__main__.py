"""``python -m multipass_diffusion``: load and warm up the models, then take passes until SIGTERM/SIGINT.

On SIGTERM the worker stops fetching, finishes or hands back the in-flight pass, then stops serving.
"""

from __future__ import annotations

import sys

from multipass.service_main import run_service
from multipass_diffusion.settings import DiffusionSettings


async def _serve(settings: DiffusionSettings):
    from multipass_diffusion.app import serve

    return await serve(settings)


def main() -> int:
    return run_service("diffusion", DiffusionSettings.from_env, _serve, grace=10.0)


if __name__ == "__main__":
    sys.exit(main())
