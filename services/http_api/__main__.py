"""``python -m multipass_http_api``: serve the HTTP API and the web page until SIGTERM or SIGINT."""

from __future__ import annotations

import sys

from multipass.service_main import run_service
from multipass_http_api.settings import HttpApiSettings


async def _serve(settings: HttpApiSettings):
    from multipass_http_api.server import serve

    return await serve(settings)


def main() -> int:
    return run_service("http-api", HttpApiSettings.from_env, _serve, grace=5.0)


if __name__ == "__main__":
    sys.exit(main())
