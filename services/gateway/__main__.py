"""``python -m multipass_gateway``: serve the public API and orchestrate until SIGTERM or SIGINT."""

from __future__ import annotations

import sys

from multipass.service_main import run_service
from multipass_gateway.settings import GatewaySettings


async def _serve(settings: GatewaySettings):
    from multipass_gateway.main import serve

    return await serve(settings)


def main() -> int:
    return run_service("gateway", GatewaySettings.from_env, _serve, grace=10.0)


if __name__ == "__main__":
    sys.exit(main())
