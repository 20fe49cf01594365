"""``python -m multipass_prompt_parser``: serve the prompt parser until SIGTERM or SIGINT."""

from __future__ import annotations

import sys

from multipass.service_main import run_service
from multipass_prompt_parser.settings import ParserSettings


async def _serve(settings: ParserSettings):
    from multipass_prompt_parser.app import serve

    return await serve(settings)


def main() -> int:
    return run_service("prompt-parser", ParserSettings.from_env, _serve, grace=5.0)


if __name__ == "__main__":
    sys.exit(main())
