"""``multipass tunes register | list | get | delete``: a tenant's LoRAs and checkpoints."""

from __future__ import annotations

import argparse
from pathlib import Path

from multipass_client.cli.options import (
    UsageError,
    add_connection_args,
    client_from_args,
    reports_rpc_errors,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    tunes = subparsers.add_parser("tunes", help="register and manage tunes (LoRAs, checkpoints)")
    actions = tunes.add_subparsers(dest="tunes_command", metavar="ACTION", required=True)

    reg = actions.add_parser("register", help="register a LoRA or checkpoint file (or URL)")
    reg.add_argument(
        "file",
        nargs="?",
        default="",
        help="a .safetensors file, or an http(s) URL the gateway fetches (none for --kind faceid)",
    )
    reg.add_argument("--token", required=True, help="trigger token, e.g. ohwx")
    reg.add_argument("--class", dest="class_name", required=True, help="class word, e.g. woman")
    reg.add_argument(
        "--family", choices=("sd15", "sdxl"), help="base model family (required unless --kind faceid)"
    )
    reg.add_argument(
        "--kind",
        default="lora",
        choices=("lora", "checkpoint", "faceid"),
        help="default lora; faceid: no file, the --reference faces are the identity",
    )
    reg.add_argument(
        "--reference",
        dest="references",
        action="append",
        default=[],
        type=Path,
        metavar="IMAGE",
        help="a photo of the person's face (repeatable): for face swap and <faceid:...>",
    )
    reg.add_argument("--name", default="", help="display name (default: the file name)")
    _characteristic_option(
        reg, [], "a text prompts write as {{NAME}}, e.g. eye_color='green eyes' (repeatable)"
    )
    add_connection_args(reg)
    reg.set_defaults(run=run_register)

    listing = actions.add_parser("list", help="list your tunes")
    add_connection_args(listing)
    listing.set_defaults(run=run_list)

    get = actions.add_parser("get", help="show a tune")
    get.add_argument("tune_id")
    get.add_argument("--json", action="store_true", help="the Tune as proto3 JSON")
    add_connection_args(get)
    get.set_defaults(run=run_get)

    update = actions.add_parser("update", help="change a tune's name, class word or characteristics")
    update.add_argument("tune_id")
    update.add_argument("--name", help="new display name")
    update.add_argument("--class", dest="class_name", help="new class word, e.g. woman")
    _characteristic_option(update, None, "replaces all characteristics with the ones given (repeatable)")
    update.add_argument("--no-characteristics", action="store_true", help="remove every characteristic")
    add_connection_args(update)
    update.set_defaults(run=run_update)

    delete = actions.add_parser("delete", help="delete a tune")
    delete.add_argument("tune_id")
    add_connection_args(delete)
    delete.set_defaults(run=run_delete)


def format_tune(tune) -> str:
    created = tune.created_at.ToJsonString()[:19] if tune.HasField("created_at") else "-"
    return (
        f"{tune.tune_id}  {tune.kind:<10} {tune.base_family:<5} {tune.token} {tune.class_name:<8} "
        f"{tune.name}  ({tune.file.size} bytes, {created})"
    )


def _characteristic_option(parser: argparse.ArgumentParser, default: list | None, help_text: str) -> None:
    """``--characteristic NAME=TEXT`` (repeatable) into ``args.characteristics``."""
    parser.add_argument(
        "--characteristic",
        dest="characteristics",
        action="append",
        default=default,
        type=_characteristic,
        metavar="NAME=TEXT",
        help=help_text,
    )


def _characteristic(value: str) -> tuple[str, str]:
    name, sep, text = value.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"{value!r}: expected NAME=TEXT, e.g. eye_color='green eyes'")
    return name.strip(), text


def _not_a_file(path: Path) -> str:
    return "is a directory, not a tune file" if path.is_dir() else "no such file"


@reports_rpc_errors
def run_register(args: argparse.Namespace) -> int:
    faceid = args.kind == "faceid"
    if faceid and (args.file or not args.references):
        raise UsageError("--kind faceid takes no file, and at least one --reference face image")
    if not faceid and not args.file:
        raise UsageError("a .safetensors file or an http(s) URL is required (or --kind faceid)")
    if not faceid and not args.family:
        raise UsageError("--family is required (sd15 or sdxl)")
    for reference in args.references:
        if not reference.is_file():
            raise UsageError(f"{reference}: {_not_a_file(reference)}")
    is_url = args.file.lower().startswith(("http://", "https://"))
    path = None if is_url or faceid else Path(args.file)
    if path is not None and not path.is_file():
        raise UsageError(f"{args.file}: {_not_a_file(path)}")
    with client_from_args(args) as client:
        uploaded = tuple(client.jobs.upload_image(reference).image_id for reference in args.references)
        try:
            tune = client.tunes.register(
                path,
                url=args.file if is_url else "",
                reference_image_ids=uploaded,
                token=args.token,
                class_name=args.class_name,
                base_family=args.family or "",
                kind=args.kind,
                name=args.name,
                characteristics=dict(args.characteristics),
            )
        finally:  # the tune keeps its own copies of its reference faces
            client.jobs.discard_uploads(uploaded)
    print(tune.tune_id)
    return 0


@reports_rpc_errors
def run_list(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        tunes = list(client.tunes.list())
    if not tunes:
        print("no tunes")
    for tune in tunes:
        print(format_tune(tune))
    return 0


@reports_rpc_errors
def run_get(args: argparse.Namespace) -> int:
    from google.protobuf import json_format

    with client_from_args(args) as client:
        tune = client.tunes.get(args.tune_id)
    if args.json:
        print(json_format.MessageToJson(tune, preserving_proto_field_name=True, indent=2, sort_keys=True))
    else:
        print(format_tune(tune))
        if tune.file.key:
            print(f"  file {tune.file.bucket}/{tune.file.key}  sha256 {tune.file.sha256}")
        if tune.reference_images:
            print(f"  {len(tune.reference_images)} reference face image(s)")
        for name, text in sorted(tune.characteristics.items()):
            print(f"  {{{{{name}}}}} = {text}")
    return 0


@reports_rpc_errors
def run_update(args: argparse.Namespace) -> int:
    if args.characteristics and args.no_characteristics:
        raise UsageError("give --characteristic or --no-characteristics, not both")
    characteristics = {} if args.no_characteristics else args.characteristics
    with client_from_args(args) as client:
        tune = client.tunes.update(
            args.tune_id,
            name=args.name,
            class_name=args.class_name,
            characteristics=dict(characteristics) if characteristics is not None else None,
        )
    print(format_tune(tune))
    return 0


@reports_rpc_errors
def run_delete(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        response = client.tunes.delete(args.tune_id)
    print(f"{args.tune_id}: {'deleted' if response.deleted else 'not deleted'}")
    return 0 if response.deleted else 1
