"""The ``multipass models`` commands, and the model-sync command that fills a model directory from the bucket.

The Kubernetes init containers of the diffusion and segmentation pods run the sync from the service image
as ``python -m multipass.model_sync --bucket B --prefix P --dest D``; on a developer machine it is also
``multipass models sync``. Object-store settings come from the same ``MULTIPASS_S3_*`` variables the
services read. ``multipass models pull | list | check`` (the Hugging Face Hub, the manifest, the feature
check) are in :mod:`.catalog_commands`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

DEFAULT_BUCKET = "multipass-models"
DESCRIPTION = (
    "Download the objects below PREFIX into DEST, skipping files that are already current. "
    "Object-store settings: MULTIPASS_S3_ENDPOINT, MULTIPASS_S3_ACCESS_KEY, MULTIPASS_S3_SECRET_KEY, "
    "MULTIPASS_S3_SECURE, MULTIPASS_S3_REGION."
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """``multipass models sync | pull | list | check``."""
    from multipass.model_sync.catalog_commands import add_catalog_commands

    models = subparsers.add_parser("models", help="manage the model directory (MULTIPASS_MODEL_DIR)")
    actions = models.add_subparsers(dest="models_action", metavar="ACTION", required=True)
    add_catalog_commands(actions)
    sync = actions.add_parser(
        "sync", help="mirror a prefix of the models bucket into a local directory", description=DESCRIPTION
    )
    add_sync_arguments(sync)


def build_parser() -> argparse.ArgumentParser:
    """``python -m multipass.model_sync``: the same arguments as ``multipass models sync``."""
    parser = argparse.ArgumentParser(prog="python -m multipass.model_sync", description=DESCRIPTION)
    add_sync_arguments(parser)
    return parser


def add_sync_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bucket", default=DEFAULT_BUCKET, help=f"source bucket (default {DEFAULT_BUCKET})")
    parser.add_argument(
        "--prefix", default="", help="folder in the bucket to mirror (default: the whole bucket)"
    )
    parser.add_argument("--dest", required=True, type=Path, help="local directory to fill")
    parser.add_argument("--delete", action="store_true", help="remove local files that are not in the bucket")
    parser.add_argument("--workers", type=int, default=4, help="parallel downloads (default 4)")
    parser.set_defaults(run=run_sync)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


def s3_client_from_env(environ: Mapping[str, str] | None = None):
    """A ``Minio`` client from the ``MULTIPASS_S3_*`` variables; a bad variable raises ConfigError."""
    from minio import Minio

    from multipass.config import EnvReader

    env = EnvReader(environ)
    endpoint = env.str("S3_ENDPOINT", "127.0.0.1:9000")
    access_key = env.str("S3_ACCESS_KEY", "multipass")
    secret_key = env.str("S3_SECRET_KEY", "multipass-secret")
    secure = env.bool("S3_SECURE", False)
    region = env.str("S3_REGION", "us-east-1")
    env.check()
    return Minio(
        endpoint=endpoint, access_key=access_key, secret_key=secret_key, secure=secure, region=region
    )


def run_sync(args: argparse.Namespace) -> int:
    from multipass.errors import MultipassError
    from multipass.logs import configure_logging
    from multipass.model_sync.mirror import sync_prefix

    configure_logging("models-sync", os.environ.get("MULTIPASS_LOG_LEVEL", "INFO"), stream=sys.stderr)
    try:
        client = s3_client_from_env()
        report = sync_prefix(
            client,
            bucket=args.bucket,
            prefix=args.prefix,
            dest=args.dest,
            delete=args.delete,
            workers=args.workers,
        )
    except MultipassError as error:
        print(f"multipass models sync: {error}", file=sys.stderr)
        return 1
    print(
        json.dumps({"bucket": args.bucket, "prefix": args.prefix, "dest": str(args.dest), **report.summary()})
    )
    return 0
