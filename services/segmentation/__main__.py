"""``python -m multipass_segmentation``: load the models and serve until SIGTERM or SIGINT.

The heavy imports (torch, segment-anything, transformers) happen inside ``_serve``, after logging is
configured, so an import or model-loading failure is logged as JSON and exits 3.
"""

from __future__ import annotations

import sys

from multipass.service_main import run_service
from multipass_segmentation.settings import SegmentationSettings


async def _serve(settings: SegmentationSettings):
    from multipass_segmentation.app import serve

    return await serve(settings)


def main() -> int:
    return run_service("segmentation", SegmentationSettings.from_env, _serve, grace=10.0)


if __name__ == "__main__":
    sys.exit(main())
