"""``multipass up | down | status | demo``: the local stack."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from multipass_client.cli.options import (
    add_connection_args,
    client_from_args,
    local_stack_state,
    parse_key_values,
    reports_rpc_errors,
)
from multipass_client.stack_record import HOME_ENV, STACK_DIR_ENV, StackPaths, no_stack_hint


def register(subparsers: argparse._SubParsersAction) -> None:
    up = subparsers.add_parser(
        "up",
        help="start the local stack",
        description=(
            "Start nats-server, an S3 endpoint (moto, unless MULTIPASS_S3_ENDPOINT is set) and the services "
            "(prompt-parser, segmentation, diffusion, gateway, http-api: the HTTP API and web page) on loopback, supervised (crashed processes are restarted with backoff); create a dev tenant. Tiny random "
            f"models are built once under .multipass/models unless MULTIPASS_MODEL_DIR is set. State lives in "
            f".multipass/ (or ${HOME_ENV}/.multipass, or ${STACK_DIR_ENV})."
        ),
    )
    up.add_argument(
        "--detach",
        action="store_true",
        help="run the supervisor in the background; `multipass down` stops it",
    )
    up.add_argument(
        "--timeout",
        type=float,
        default=1800.0,
        help="with --detach: seconds to wait for the stack (default 1800)",
    )
    up.set_defaults(run=run_up)

    down = subparsers.add_parser("down", help="stop the local stack (SIGTERM, SIGKILL after a grace period)")
    down.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for an orderly stop (default 60)"
    )
    down.set_defaults(run=run_down)

    status = subparsers.add_parser(
        "status",
        help="show the local stack's processes; exit 0 when all are healthy",
        description=(
            f"Find the local stack (${STACK_DIR_ENV}, ${HOME_ENV}/.multipass, the .multipass/ of this directory or "
            "a parent, or of the checkout the package is installed from), probe every process now and show it."
        ),
    )
    status.add_argument("--json", action="store_true", help="machine-readable")
    status.set_defaults(run=run_status)

    demo = subparsers.add_parser(
        "demo",
        help="run the multi-person example against the running stack",
        description="Register a tiny LoRA per person, submit examples/multi-person.prompt with those tunes, download the results.",
    )
    demo.add_argument(
        "--out", type=Path, default=Path("out"), help="download into OUT/<job_id>/ (default out)"
    )
    demo.add_argument("--prompt-file", type=Path, help="another prompt document with <lora:ID> placeholders")
    demo.add_argument(
        "--param", action="append", metavar="NAME=VALUE", help="override a parameter (repeatable)"
    )
    demo.add_argument(
        "--model-dir", type=Path, help="model directory the LoRAs are built for (default: the stack's)"
    )
    add_connection_args(demo)
    demo.set_defaults(run=run_demo)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_up(args: argparse.Namespace) -> int:
    from multipass_dev.stack.control import (
        run_in_foreground,
        running_supervisor,
        spawn_detached,
        wait_until_up,
    )
    from multipass_dev.stack.local_stack import StackConfig, StackError

    recorded = StackPaths.locate()
    owner = running_supervisor(recorded) if recorded is not None else None
    paths = recorded if owner is not None else StackPaths.default()
    if owner is not None:
        _say(
            f"the local stack is already running (supervisor pid {owner}); `multipass status` shows it, `multipass down` stops it"
        )
        return 0
    if not args.detach:
        _log_to_terminal_and_file(paths)
        return run_in_foreground(StackConfig.from_env(paths), on_progress=_say)
    daemon = spawn_detached(paths)
    _say(f"supervisor started in the background (pid {daemon.pid}); logs in {paths.logs}")
    try:
        state = wait_until_up(paths, daemon, _say, timeout=args.timeout)
    except StackError as error:
        _say(f"the local stack failed to start:\n{error}")
        from multipass_dev.stack.control import stop_stack

        stop_stack(paths, on_progress=_say)
        return 1
    except KeyboardInterrupt:
        _say("interrupted; stopping the stack")
        from multipass_dev.stack.control import stop_stack

        stop_stack(paths, on_progress=_say)
        return 130
    _print_summary(state)
    return 0


def _log_to_terminal_and_file(paths: StackPaths) -> None:
    """Foreground ``up``: supervisor events (restarts, health) on stderr and in logs/supervisor.log."""
    from multipass.logs import JsonFormatter

    paths.logs.mkdir(parents=True, exist_ok=True)
    terminal = logging.StreamHandler(sys.stderr)
    terminal.setFormatter(logging.Formatter("%(asctime)s supervisor: %(message)s", "%H:%M:%S"))
    file_handler = logging.FileHandler(paths.supervisor_log)
    file_handler.setFormatter(JsonFormatter("supervisor"))
    logger = logging.getLogger("multipass_dev.stack")
    logger.handlers[:] = [terminal, file_handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _print_summary(state: dict) -> None:
    _say("")
    _say(f"gateway      {state.get('gateway_address')}")
    _say(f"web page     {state.get('http_url')}  (also the HTTP API; log in with the dev API key)")
    _say(f"dev API key  {state.get('api_key_file')}")
    _say(f"admin token  {state.get('admin_token_file')}")
    _say(
        f"models       {state.get('model_dir')}"
        + (" (tiny random weights)" if state.get("tiny_models") else "")
    )
    _say(f"logs         {state.get('logs')}")
    _say("`multipass status` shows every process; `multipass down` stops the stack.")


def run_down(args: argparse.Namespace) -> int:
    from multipass_dev.stack.control import stop_stack

    paths = StackPaths.current()
    if not stop_stack(paths, timeout=args.timeout, on_progress=_say):
        _say(f"no local stack recorded under {paths.root}")
        return 0
    _say("the local stack is stopped")
    return 0


def run_status(args: argparse.Namespace) -> int:
    from multipass_dev.stack.control import live_status

    paths = StackPaths.locate()
    state = live_status(paths) if paths is not None else None
    if state is None:
        searched = [paths] if paths is not None else StackPaths.candidates()
        hint = no_stack_hint(searched)
        if args.json:
            print(
                json.dumps({"status": "absent", "looked_in": [str(p.root) for p in searched], "hint": hint})
            )
        else:
            _say(hint)
        return 1
    processes = state.get("processes") or {}
    healthy = (
        state["supervisor_alive"]
        and state.get("status") == "running"
        and processes
        and all(p.get("health") == "SERVING" for p in processes.values())
    )
    if args.json:
        print(json.dumps(state, indent=2, sort_keys=True))
        return 0 if healthy else 1
    supervisor = "alive" if state["supervisor_alive"] else "NOT RUNNING"
    print(
        f"stack {state.get('status')}  (supervisor pid {state.get('supervisor_pid')}, {supervisor})  {paths.root}"
    )
    if state.get("error"):
        print(state["error"])
    print(f"{'process':<14} {'pid':>7}  {'state':<9} {'health':<12} {'restarts':>8}  {'address':<22} metrics")
    for name, p in processes.items():
        address = p.get("grpc_address") or p.get("url") or p.get("endpoint") or ""
        metrics = p.get("metrics_url") or p.get("monitor_url") or ""
        pid = p.get("pid") or "-"
        print(
            f"{name:<14} {pid!s:>7}  {p.get('state', ''):<9} {p.get('health', ''):<12} {p.get('restarts', 0):>8}  {address:<22} {metrics}"
        )
    if state.get("gateway_address"):
        print(f"gateway {state['gateway_address']}; dev API key in {state.get('api_key_file')}")
    if state.get("http_url"):
        print(f"web page and HTTP API {state['http_url']}")
    return 0 if healthy else 1


@reports_rpc_errors
def run_demo(args: argparse.Namespace) -> int:
    from rich.console import Console

    from multipass.v1 import jobs_pb2
    from multipass_client.downloads import s3_reader_for
    from multipass_dev.stack.demo import run_demo as demo

    try:
        params = parse_key_values(args.param)
    except argparse.ArgumentTypeError as error:
        _say(str(error))
        return 2
    state = local_stack_state(args) or {}
    model_dir = args.model_dir or (Path(state["model_dir"]) if state.get("model_dir") else None)
    if model_dir is None:
        _say("no model directory: start the local stack (`multipass up --detach`) or pass --model-dir")
        return 2
    console = Console(stderr=True, soft_wrap=True)  # paths stay whole when piped
    with client_from_args(args) as client:
        job = demo(
            client,
            out_dir=args.out,
            model_dir=model_dir,
            reader=s3_reader_for(state),
            console=console,
            prompt_path=args.prompt_file,
            params=params,
            tiny_models=bool(state.get("tiny_models", args.model_dir is None)),
        )
    if state.get("http_url"):
        console.print(
            f"Watch it in the web page: {state['http_url']}/#/jobs/{job.job_id} (log in with the dev API key)"
        )
    return 0 if job.state == jobs_pb2.JOB_STATE_SUCCEEDED else 1
