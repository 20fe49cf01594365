"""``multipass submit | watch | get | cancel | delete | list``: the Jobs API from the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from multipass_client.cli.options import (
    UsageError,
    add_connection_args,
    client_from_args,
    local_stack_state,
    parse_key_values,
    reports_rpc_errors,
)


def _sequence(text: str) -> int:
    """A job event sequence for --from-seq: a whole number, 0 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"got {text!r}; expected a whole number >= 0") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"got {value}; expected a whole number >= 0")
    return value


def _is_url(value: str) -> bool:
    return value.lower().startswith(("http://", "https://"))


def register(subparsers: argparse._SubParsersAction) -> None:
    submit = subparsers.add_parser("submit", help="submit a job", description="Submit a prompt as a job.")
    source = submit.add_mutually_exclusive_group(required=True)
    source.add_argument("text", nargs="?", help="the prompt text")
    source.add_argument("-f", "--file", type=Path, help="read the prompt document from FILE ('-' = stdin)")
    submit.add_argument(
        "--param", action="append", metavar="NAME=VALUE", help="a parameter (repeatable), e.g. steps=4"
    )
    submit.add_argument(
        "--input-image",
        metavar="PATH_OR_URL",
        help="input image: a local file is uploaded, a URL is fetched by the gateway",
    )
    submit.add_argument("--mask-image", metavar="PATH_OR_URL", help="mask image: a local file or a URL")
    submit.add_argument("--callback", metavar="URL", help="POSTed the job (signed) when it ends")
    submit.add_argument("--idempotency-key", metavar="KEY", help="same key → same job")
    submit.add_argument(
        "--wait", action="store_true", help="follow the job with progress bars, then download its results"
    )
    submit.add_argument(
        "--out", type=Path, default=Path("out"), help="with --wait: download into OUT/<job_id>/ (default out)"
    )
    add_connection_args(submit)
    submit.set_defaults(run=run_submit)

    watch = subparsers.add_parser(
        "watch",
        help="stream a job's events",
        description="Print a job's events until it ends; exit 0 when it succeeded.",
    )
    watch.add_argument("job_id")
    watch.add_argument(
        "--from-seq",
        type=_sequence,
        default=0,
        metavar="N",
        help="replay events after sequence N (default 0: all)",
    )
    add_connection_args(watch)
    watch.set_defaults(run=run_watch)

    get = subparsers.add_parser(
        "get", help="show a job", description="Show a job: state, persons, passes, outputs."
    )
    get.add_argument("job_id")
    get.add_argument("--json", action="store_true", help="the Job as proto3 JSON")
    add_connection_args(get)
    get.set_defaults(run=run_get)

    cancel = subparsers.add_parser("cancel", help="cancel a job")
    cancel.add_argument("job_id")
    add_connection_args(cancel)
    cancel.set_defaults(run=run_cancel)

    delete = subparsers.add_parser("delete", help="delete a job with every image it stored (cancelled first)")
    delete.add_argument("job_id")
    add_connection_args(delete)
    delete.set_defaults(run=run_delete)

    key = subparsers.add_parser(
        "callback-key",
        help="print the key your callbacks are signed with",
        description="Print the key every callback to your tenant is signed with (a job's callback_url, and "
        "the HTTP API's prompt[callback] and tune[callback]; X-Multipass-Signature: "
        "t=<unix seconds>,v1=HMAC-SHA256(key, '<t>.<body>') in hex), to check them.",
    )
    add_connection_args(key)
    key.set_defaults(run=run_callback_key)

    listing = subparsers.add_parser("list", help="list your jobs, newest first")
    listing.add_argument(
        "--state",
        action="append",
        metavar="S",
        help="only jobs in state S (repeatable or comma-separated): queued, running, succeeded, ...",
    )
    listing.add_argument("--limit", type=int, default=20, metavar="N", help="at most N jobs (default 20)")
    add_connection_args(listing)
    listing.set_defaults(run=run_list)


def _read_prompt(args: argparse.Namespace) -> str | None:
    """The prompt text (an argument, a file or stdin); None, said on stderr, when the file cannot be read."""
    if args.file is None:
        return args.text
    if str(args.file) == "-":
        return sys.stdin.read()
    try:
        return args.file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        print(f"multipass submit: cannot read {args.file}: {error}", file=sys.stderr)
        return None


def _image_argument(client, value: str | None, url_param: str, params: dict[str, str]) -> str:
    """Upload a local image (returning its id) or put a URL into ``params``."""
    if not value:
        return ""
    if _is_url(value):
        params[url_param] = value
        return ""
    path = Path(value)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "no such file"
        raise UsageError(f"{value}: {what} (give a local image or an http(s) URL)")
    return client.jobs.upload_image(path).image_id


@reports_rpc_errors
def run_submit(args: argparse.Namespace) -> int:
    from rich.console import Console

    from multipass_client.downloads import s3_reader_for
    from multipass_client.follow import follow_and_download

    try:
        params = parse_key_values(args.param)
    except argparse.ArgumentTypeError as error:
        print(error, file=sys.stderr)
        return 2
    prompt = _read_prompt(args)
    if prompt is None:
        return 2
    with client_from_args(args) as client:
        input_id = _image_argument(client, args.input_image, "input_image_url", params)
        mask_id = _image_argument(client, args.mask_image, "mask_image_url", params)
        try:
            response = client.jobs.submit(
                prompt,
                params,
                input_image_id=input_id,
                mask_image_id=mask_id,
                callback_url=args.callback or "",
                idempotency_key=args.idempotency_key or "",
            )
        finally:  # the job keeps its own copies of its inputs
            client.jobs.discard_uploads((input_id, mask_id))
        for warning in response.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        if response.existing:
            print(f"the idempotency key matched job {response.job_id}", file=sys.stderr)
        if not args.wait:
            print(response.job_id)
            return 0
        console = Console(stderr=True, soft_wrap=True)  # paths stay whole when piped
        console.print(f"job {response.job_id} submitted")
        reader = s3_reader_for(local_stack_state(args))
        job, _ = follow_and_download(client, response.job_id, args.out, reader, console)
        print(response.job_id)
    from multipass.v1 import jobs_pb2

    return 0 if job.state == jobs_pb2.JOB_STATE_SUCCEEDED else 1


@reports_rpc_errors
def run_watch(args: argparse.Namespace) -> int:
    from multipass.v1 import jobs_pb2
    from multipass_client.progress import describe_event

    outcome = None
    with client_from_args(args) as client:
        for event in client.jobs.watch(args.job_id, args.from_seq):
            print(describe_event(event), flush=True)
            if event.WhichOneof("event") == "finished":
                outcome = event.finished.state
        if outcome is None:
            outcome = client.jobs.get(args.job_id).state
    return 0 if outcome == jobs_pb2.JOB_STATE_SUCCEEDED else 1


@reports_rpc_errors
def run_get(args: argparse.Namespace) -> int:
    from multipass_client.downloads import job_to_json

    with client_from_args(args) as client:
        job = client.jobs.get(args.job_id)
    if args.json:
        print(job_to_json(job))
    else:
        print(format_job(job))
    return 0


def format_job(job) -> str:
    from multipass.v1 import jobs_pb2
    from multipass_client.jobs import state_name

    lines = [
        f"job       {job.job_id}",
        f"state     {state_name(job.state)}  ({job.progress * 100:.0f}%)",
        f"created   {job.created_at.ToJsonString() if job.HasField('created_at') else '-'}",
        f"prompt    {job.prompt.strip().splitlines()[0][:100] if job.prompt.strip() else ''}",
    ]
    if job.idempotency_key:
        lines.append(f"idempotency key  {job.idempotency_key}")
    if job.callback_url:
        lines.append(f"callback  {job.callback_url}  {job.callback_outcome or '(pending)'}")
    for person in job.persons:
        box = person.slot_box
        loras = ", ".join(f"{lora.tune_id}:{lora.weight:g}" for lora in person.loras)
        lines.append(
            f"person {person.index}  slot ({box.x0:.0f},{box.y0:.0f})-({box.x1:.0f},{box.y1:.0f})  {person.prompt[:60]}"
            + (f"  [{loras}]" if loras else "")
        )
        if person.fallback_mask:
            lines.append("          (fallback mask: the person was not found inside the slot)")
    for image in job.images:
        lines.append(
            f"image {image.index}  seed {image.seed}  {jobs_pb2.PassStatus.Name(image.status).removeprefix('PASS_STATUS_')}"
        )
        for state in image.passes:
            status = jobs_pb2.PassStatus.Name(state.status).removeprefix("PASS_STATUS_")
            detail = state.output.key or (state.error.message if state.error.message else "")
            cached = " (cached)" if state.cache_hit else ""
            lines.append(f"  {state.name:<14} {status:<10}{cached} {detail}")
        for name in sorted(image.masks):
            lines.append(f"  mask {name:<9} {image.masks[name].key}")
        if image.final.key:
            lines.append(f"  final          {image.final.key}")
        if image.url:
            lines.append(f"  url            {image.url}")
    for warning in job.warnings:
        lines.append(f"warning: {warning}")
    if job.error.message:
        lines.append(f"error: {job.error.message}")
        lines += [f"  {v.field}: {v.description}" for v in job.error.field_violations]
    return "\n".join(lines)


@reports_rpc_errors
def run_cancel(args: argparse.Namespace) -> int:
    from multipass_client.jobs import state_name

    with client_from_args(args) as client:
        response = client.jobs.cancel(args.job_id)
    verdict = "cancelled" if response.cancelled else "not cancelled"
    print(
        f"{args.job_id}: {verdict}; state {state_name(response.state)}"
        + (f" ({response.message})" if response.message else "")
    )
    return 0


@reports_rpc_errors
def run_list(args: argparse.Namespace) -> int:
    from multipass_client.jobs import parse_state, state_name

    try:
        states = [
            parse_state(part) for value in args.state or [] for part in value.split(",") if part.strip()
        ]
    except ValueError as error:
        print(error, file=sys.stderr)
        return 2
    if args.limit < 1:
        print("--limit must be at least 1", file=sys.stderr)
        return 2
    with client_from_args(args) as client:
        jobs = list(client.jobs.list(states=states, limit=args.limit))
    if not jobs:
        print("no jobs")
        return 0
    for job in jobs:
        created = job.created_at.ToJsonString()[:19] if job.HasField("created_at") else "-"
        prompt = " ".join(job.prompt.split())[:60]
        print(f"{job.job_id}  {state_name(job.state):<10} {job.progress * 100:4.0f}%  {created}  {prompt}")
    return 0


@reports_rpc_errors
def run_callback_key(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        print(client.jobs.callback_key())
    return 0


@reports_rpc_errors
def run_delete(args: argparse.Namespace) -> int:
    from multipass_client.jobs import state_name

    with client_from_args(args) as client:
        response = client.jobs.delete(args.job_id)
    print(f"{args.job_id}: deleted (it was {state_name(response.state)}); {response.message}")
    return 0
