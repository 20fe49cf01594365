"""The work of ``multipass parse``: parse a prompt document in-process or through a running prompt-parser
service, and print the ParsedPrompt as proto3 JSON or as readable text (:func:`describe`)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

import grpc
from google.protobuf import json_format

from multipass.config import EnvReader
from multipass.errors import ConfigError, InvalidInput
from multipass.grpc.errors import field_violations
from multipass.grpc.internal_auth import INTERNAL_TOKEN_HEADER
from multipass.v1 import prompt_pb2_grpc
from multipass_dev.cli.parse_cmd import EXIT_INVALID
from multipass_prompt_parser.convert import from_proto, to_proto, to_request
from multipass_prompt_parser.parser import parse_prompt
from multipass_prompt_parser.settings import ParserSettings

#: Exit status of every other failure.
EXIT_FAILED = 1
RPC_TIMEOUT_SECONDS = 10.0


def parse_local(args: argparse.Namespace, text: str, params: dict[str, str]) -> int:
    """Parse with the prompt parser in this process, with the limits of its ``MULTIPASS_*`` settings."""
    try:
        limits = ParserSettings.from_env().limits
    except ConfigError as error:
        print(f"multipass parse: {error}", file=sys.stderr)
        return EXIT_FAILED
    try:
        parsed = parse_prompt(text, params, limits=limits, has_input_image=args.input_image)
    except InvalidInput as error:
        _print_violations([(v.field, v.description) for v in error.violations])
        return EXIT_INVALID
    _print(args, to_proto(parsed))
    return 0


def parse_remote(args: argparse.Namespace, text: str, params: dict[str, str]) -> int:
    """Ask the prompt-parser service at ``args.addr``."""
    token = EnvReader().str("INTERNAL_TOKEN", "")
    metadata = ((INTERNAL_TOKEN_HEADER, token),) if token else ()
    request = to_request(text, params, has_input_image=args.input_image)
    with grpc.insecure_channel(args.addr) as channel:
        try:
            response = prompt_pb2_grpc.PromptParserStub(channel).Parse(
                request, timeout=RPC_TIMEOUT_SECONDS, metadata=metadata
            )
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
                _print_violations(field_violations(error) or [("request", error.details() or "invalid")])
                return EXIT_INVALID
            print(f"multipass parse: {args.addr}: {error.code().name}: {error.details()}", file=sys.stderr)
            return EXIT_FAILED
    _print(args, response.parsed)
    return 0


def _print_violations(violations: list[tuple[str, str]]) -> None:
    print("invalid prompt:", file=sys.stderr)
    for field, description in violations:
        print(f"  {field}: {description}", file=sys.stderr)


def _print(args: argparse.Namespace, message) -> None:
    if args.json:
        print(
            json_format.MessageToJson(
                message,
                preserving_proto_field_name=True,
                always_print_fields_with_no_presence=True,
                indent=2,
            )
        )
        return
    print(describe(from_proto(message)))


def _tags(tags) -> str:
    return " ".join(tag.tag or f"<{tag.kind}:{tag.tune_id}:{tag.weight:g}>" for tag in tags) or "-"


def describe(parsed) -> str:
    """A ParsedPrompt (the parser's dataclass) as readable text."""
    lines: list[str] = []
    if parsed.only_upscale:
        mode = "upscale only (no generation)"
    elif parsed.multi_pass:
        count = len(parsed.persons)
        mode = f"multi-pass: base pass + {count} person pass{'es' if count != 1 else ''}"
        if parsed.keep_background:
            mode += ", keep background (the input image is the scene)"
    else:
        mode = "single pass"
    lines.append(mode)
    lines.append(f"base:    {parsed.base_prompt or '-'}")
    lines.append(f"common:  {parsed.common_prompt or '-'}")
    lines.append("")
    lines.append("base pass" + (" (skipped: keep background)" if parsed.keep_background else ""))
    lines.append(f"  prompt:   {parsed.base_effective_prompt or '-'}")
    lines.append(f"  negative: {parsed.base_effective_negative_prompt or '-'}")
    lines.append(f"  tags:     {_tags(parsed.base_loras)}")
    for person in parsed.persons:
        lines.append(f"person {person.index}: {person.prompt or '-'}")
        lines.append(f"  prompt:   {person.effective_prompt or '-'}")
        lines.append(f"  negative: {person.effective_negative_prompt or '-'}")
        lines.append(f"  tags:     {_tags(person.loras)}")
        for tag in person.loras:
            lines.append(f"            {tag.kind} {tag.tune_id} weight {tag.weight:g}")
    if parsed.mask is not None:
        mask = parsed.mask
        text = f"mask: {mask.prompt!r}"
        if mask.negative:
            text += f" minus {mask.negative!r}"
        if mask.dilate_pixels is not None:
            text += f", dilate {mask.dilate_pixels:+d} px"
        if mask.dilate_percent is not None:
            text += f", dilate {mask.dilate_percent:+g}%"
        if mask.invert:
            text += ", inverted"
        lines.append(text)
    extras = [f"hires_denoising_strength={parsed.hires_denoising_strength:g}"]
    extras += [name for name in ("tiled_upscale", "only_upscale") if getattr(parsed, name)]
    lines.append("flags: " + ", ".join(extras))
    lines.append("")
    lines.append("parameters (* = set in the prompt or request):")
    for field in fields(parsed.params):
        value = getattr(parsed.params, field.name)
        shown = "(unset)" if value is None or value == "" else value
        if isinstance(shown, float):
            shown = f"{shown:g}"
        if isinstance(shown, bool):
            shown = str(shown).lower()
        mark = "*" if field.name in parsed.explicit_params else " "
        lines.append(f" {mark} {field.name} = {shown}")
    if parsed.warnings:
        lines.append("")
        lines.append("warnings:")
        lines += [f"  - {warning}" for warning in parsed.warnings]
    return "\n".join(lines)
