"""``multipass models pull | list | check``: the model directory from the Hub, and what it can do.

- ``pull [PROFILE ...]`` fetches the profiles of the manifest (``multipass.model_catalog``) into
  ``--dir`` or ``MULTIPASS_MODEL_DIR`` (:mod:`.hub_pull`; needs the ``models`` extra, i.e.
  ``huggingface_hub``). Without a profile it pulls :data:`DEFAULT_PROFILES`, what the services need to
  start plus the landmark face detector.
- ``list`` shows every profile: its size, features, licence and how much of it is present.
- ``check [--json]`` shows which features the directory provides, the file each one uses, and the
  ``pull`` command that adds each missing one (the table the services log at start).

``list`` and ``check`` read ``--dir``, else ``MULTIPASS_MODEL_DIR``, else the local stack's tiny models
(``$MULTIPASS_STACK_DIR/models``, default ``.multipass/models``) when they exist.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from multipass.errors import InvalidInput, MultipassError

#: What ``multipass models pull`` fetches without arguments: a base model, what the segmentation service
#: needs to start (SAM and the text-grounded detector), and the landmark face detector.
DEFAULT_PROFILES = ("sd15", "sam", "grounding", "faces")
STACK_DIR_DEFAULT = ".multipass"
#: What ``pull`` needs beyond the runtime (the ``models`` extra).
PULL_PACKAGES = ("huggingface_hub", "tqdm")


class UsageError(Exception):
    """The command cannot run as asked (exit status 2)."""


def add_catalog_commands(actions: argparse._SubParsersAction) -> None:
    pull = actions.add_parser(
        "pull",
        help="fetch model profiles from the Hugging Face Hub into the model directory",
        description=(
            "Fetch the files of each PROFILE (default: "
            + " ".join(DEFAULT_PROFILES)
            + ") from the Hugging Face Hub into the model directory; an interrupted pull resumes, "
            "every file is checked against its SHA-256. HF_TOKEN and HF_ENDPOINT are honoured."
        ),
    )
    pull.add_argument(
        "profiles", nargs="*", metavar="PROFILE", help="profiles to fetch (see `multipass models list`)"
    )
    _add_dir_arguments(pull)
    pull.add_argument(
        "--force", action="store_true", help="replace files at the targets that were not pulled"
    )
    pull.add_argument(
        "--progress",
        choices=("auto", "always", "never"),
        default="auto",
        help="a progress bar per file on stderr (auto: only on a terminal)",
    )
    pull.set_defaults(run=run_pull)

    listing = actions.add_parser("list", help="the profiles `pull` knows: size, features, licence, presence")
    _add_dir_arguments(listing)
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(run=run_list)

    check = actions.add_parser(
        "check", help="which features the model directory provides, and how to add the missing ones"
    )
    _add_dir_arguments(check)
    check.add_argument("--json", action="store_true", help="print JSON")
    check.set_defaults(run=run_check)


def _add_dir_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, help="the model directory (default: MULTIPASS_MODEL_DIR)")
    parser.add_argument("--manifest", type=Path, help="another manifest file (default: the curated one)")


def model_dir_for(args: argparse.Namespace, environ: Mapping[str, str], *, stack_fallback: bool) -> Path:
    if args.dir is not None:
        return Path(args.dir).expanduser()
    if environ.get("MULTIPASS_MODEL_DIR"):
        return Path(environ["MULTIPASS_MODEL_DIR"]).expanduser()
    if stack_fallback:
        tiny = Path(environ.get("MULTIPASS_STACK_DIR") or STACK_DIR_DEFAULT).expanduser() / "models"
        if tiny.is_dir():
            return tiny
    raise UsageError("no model directory: pass --dir DIR or set MULTIPASS_MODEL_DIR")


def _hub_logs_once() -> None:
    """huggingface_hub's records through our handler only: the library puts a plain handler of its own on
    its root logger, which printed each of its retry warnings a second time beside our JSON line."""
    import huggingface_hub.utils.logging  # noqa: F401 - configures the library's logger (and its handler)

    library = logging.getLogger("huggingface_hub")
    for handler in list(library.handlers):
        if type(handler) is logging.StreamHandler:
            library.removeHandler(handler)


def _fail(command: str, error: Exception) -> int:
    print(f"multipass models {command}: {error}", file=sys.stderr)
    return 2 if isinstance(error, UsageError | InvalidInput) else 1  # what the command line asked is wrong


def run_pull(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> int:
    from multipass.logs import configure_logging
    from multipass.model_catalog.manifest import load_manifest

    env = os.environ if environ is None else environ
    configure_logging("models-pull", env.get("MULTIPASS_LOG_LEVEL", "WARNING"), stream=sys.stderr)
    try:
        model_dir = model_dir_for(args, env, stack_fallback=False)
        manifest = load_manifest(args.manifest)
        profiles = manifest.select(args.profiles or DEFAULT_PROFILES)
        absent = [name for name in PULL_PACKAGES if importlib.util.find_spec(name) is None]
        if absent:
            raise UsageError(
                f"pulling needs {', '.join(absent)}; install the models extra: pip install 'multipass[models]'"
            )
        from multipass.model_sync.hub_pull import HubSettings, pull

        _hub_logs_once()

        hub = HubSettings.from_env(env)
        print(
            f"pulling {', '.join(p.name for p in profiles)} from {hub.endpoint} into {model_dir} "
            f"(about {_size(sum(p.size_mb for p in profiles))})",
            file=sys.stderr,
        )
        progress = {"auto": None, "always": True, "never": False}[args.progress]
        report = pull(
            manifest, profiles, model_dir, hub, force=args.force, stream=sys.stderr, progress=progress
        )
    except (MultipassError, UsageError, OSError) as error:  # OSError: the directory, the disk
        return _fail("pull", error)
    print(
        json.dumps(
            {"model_dir": str(model_dir), "profiles": [p.name for p in profiles], **report.summary()},
        )
    )
    print(f"next: multipass models check --dir {model_dir}", file=sys.stderr)
    return 0


def run_list(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> int:
    from multipass.model_catalog.manifest import load_manifest, profile_presence

    env = os.environ if environ is None else environ
    try:
        manifest = load_manifest(args.manifest)
        try:
            model_dir: Path | None = model_dir_for(args, env, stack_fallback=True)
        except UsageError:
            model_dir = None
    except MultipassError as error:
        return _fail("list", error)
    rows = []
    for profile in manifest.profiles.values():
        present = profile_presence(profile, model_dir) if model_dir is not None else None
        rows.append(
            {
                "profile": profile.name,
                "size_mb": profile.size_mb,
                "features": list(profile.features),
                "licence": profile.licence,
                "description": profile.description,
                "files": len(profile.files),
                "files_present": present.files_present if present else 0,
                "bytes_present": present.bytes_present if present else 0,
                "command": profile.command,
            }
        )
    if args.json:
        print(json.dumps({"model_dir": str(model_dir) if model_dir else None, "profiles": rows}, indent=1))
        return 0
    print(f"model directory: {model_dir if model_dir else '(none: pass --dir or set MULTIPASS_MODEL_DIR)'}")
    table = [("PROFILE", "SIZE", "PRESENT", "FEATURES", "LICENCE")]
    for row in rows:
        present = (
            "all" if row["files_present"] == row["files"] else f"{row['files_present']}/{row['files']} files"
        )
        table.append(
            (row["profile"], _size(row["size_mb"]), present, ", ".join(row["features"]), row["licence"])
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]) - 1)]
    for r in table:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r[:-1])) + "  " + r[-1])
    return 0


def run_check(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> int:
    from multipass.model_catalog.features import check, render_table
    from multipass.model_catalog.manifest import load_manifest

    env = os.environ if environ is None else environ
    try:
        model_dir = model_dir_for(args, env, stack_fallback=True)
        if model_dir.exists() and not model_dir.is_dir():
            raise UsageError(f"{model_dir} is not a directory")
        if not model_dir.exists():
            print(
                f"multipass models check: {model_dir} does not exist yet: nothing is installed "
                "(the FIX column says what to pull)",
                file=sys.stderr,
            )
        manifest = load_manifest(args.manifest)
        report = check(model_dir, manifest=manifest)
    except (MultipassError, UsageError) as error:
        return _fail("check", error)
    if args.json:
        print(json.dumps(report.as_dict(), indent=1))
    else:
        print(render_table(report))
    return 0


def _size(megabytes: int) -> str:
    return f"{megabytes / 1000:.1f} GB" if megabytes >= 1000 else f"{megabytes} MB"
