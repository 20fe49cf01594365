"""The local stack's process manager with trivial child processes: readiness, restarts, backoff, stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from multipass_client.stack_record import StackPaths, read_state
from multipass_dev.stack.health import HealthProbe
from multipass_dev.stack.state import pid_alive, write_json_atomic
from multipass_dev.stack.supervisor import (
    BACKOFF,
    FAILED,
    RUNNING,
    STOPPED,
    ProcessSpec,
    RestartPolicy,
    StartError,
    Supervisor,
)

PY = sys.executable


def wait_for(predicate, timeout: float = 15.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def spec(name: str, code: str, **kwargs) -> ProcessSpec:
    return ProcessSpec(name=name, argv=(PY, "-c", textwrap.dedent(code)), env=dict(os.environ), **kwargs)


@pytest.fixture
def supervisor(tmp_path):
    sup = Supervisor(tmp_path / "logs", poll_interval=0.05)
    yield sup
    sup.stop()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


SERVE_TCP = """
import socket, sys, time
sock = socket.socket(); sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", int(sys.argv[1]))); sock.listen()
while True:
    time.sleep(1)
"""


def test_restart_delays_double_from_the_initial_delay_up_to_the_cap():
    policy = RestartPolicy(initial_delay=0.5, factor=2.0, max_delay=3.0)
    assert [policy.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


def test_a_group_is_up_when_every_probe_passes(supervisor, tmp_path):
    port = closed_port()
    server = ProcessSpec(
        name="server",
        argv=(PY, "-c", SERVE_TCP, str(port)),
        env=dict(os.environ),
        probe=HealthProbe("tcp", f"127.0.0.1:{port}"),
        ready_timeout=10,
    )
    supervisor.start_group([server, spec("sleeper", "import time; time.sleep(60)")])
    statuses = {s.name: s for s in supervisor.snapshot()}
    assert statuses["server"].state == RUNNING and statuses["server"].healthy
    assert statuses["sleeper"].state == RUNNING
    assert pid_alive(statuses["server"].pid)
    assert HealthProbe("tcp", f"127.0.0.1:{port}").check()


def test_a_process_that_exits_while_starting_raises_with_its_log_tail(supervisor):
    crasher = spec(
        "crasher",
        "import sys; print('cannot open the model directory', flush=True); sys.exit(3)",
        probe=HealthProbe("tcp", f"127.0.0.1:{closed_port()}"),
    )
    with pytest.raises(StartError) as caught:
        supervisor.start_group([crasher])
    assert caught.value.name == "crasher"
    assert "exit code 3" in caught.value.reason
    assert "cannot open the model directory" in caught.value.log_tail
    assert "last lines of" in caught.value.describe()
    assert supervisor.status("crasher").state == FAILED


def test_a_process_that_never_turns_healthy_times_out(supervisor):
    port = closed_port()
    hung = spec(
        "hung",
        "import time; time.sleep(60)",
        probe=HealthProbe("tcp", f"127.0.0.1:{port}"),
        ready_timeout=0.6,
    )
    started = time.monotonic()
    with pytest.raises(StartError) as caught:
        supervisor.start_group([hung])
    assert "not healthy after" in caught.value.reason
    assert time.monotonic() - started < 5


def test_a_restarted_process_runs_its_after_restart_step_before_it_counts_as_running(supervisor):
    """The in-memory S3 endpoint's buckets are made again this way; a failing step is tried again."""
    calls = []

    def remake_buckets():
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise OSError("the endpoint is not answering yet")

    policy = RestartPolicy(initial_delay=0.1, stable_after=60)
    supervisor.start_group(
        [spec("store", "import time; time.sleep(60)", restart=policy, after_restart=remake_buckets)]
    )
    assert calls == []  # not at the first start: the services make their buckets then
    os.kill(supervisor.status("store").pid, signal.SIGKILL)
    wait_for(lambda: (s := supervisor.status("store")).restarts == 1 and s.state == RUNNING)
    assert len(calls) == 2  # failed once, then done, and only then running


def test_a_killed_process_is_restarted_logged_and_counted(supervisor, tmp_path):
    policy = RestartPolicy(initial_delay=0.1, stable_after=60)
    supervisor.start_group(
        [spec("worker", "import time; print('worker up', flush=True); time.sleep(60)", restart=policy)]
    )
    first = supervisor.status("worker")
    log_path = Path(first.log_path)
    wait_for(lambda: "worker up" in log_path.read_text())
    os.kill(first.pid, signal.SIGKILL)
    status = wait_for(
        lambda: (s := supervisor.status("worker")).restarts == 1 and s.state == RUNNING and s.pid and s
    )
    assert status.pid != first.pid
    assert status.last_exit == "signal SIGKILL"
    wait_for(lambda: log_path.read_text().count("worker up") == 2)
    assert "worker restart 1 after signal SIGKILL" in log_path.read_text()


def test_quick_failures_back_off_exponentially_and_a_long_run_resets_the_delay(supervisor, tmp_path):
    stamps = tmp_path / "starts.txt"
    flapping = spec(
        "flapping",
        f"import time; open({str(stamps)!r}, 'a').write(f'{{time.monotonic()}}\\n'); time.sleep(0.05); raise SystemExit(1)",
        restart=RestartPolicy(initial_delay=0.3, factor=3.0, max_delay=10, stable_after=5, max_failures=4),
    )
    supervisor.start_group([flapping])
    wait_for(lambda: supervisor.status("flapping").state == FAILED, timeout=20)
    starts = [float(line) for line in stamps.read_text().split()]
    assert len(starts) == 4  # the first start and three restarts, then it is given up
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    # Each gap is the restart delay (0.3, 0.9, 2.7 s) plus the child's ~0.05 s run and interpreter start.
    for gap, delay in zip(gaps, (0.3, 0.9, 2.7), strict=True):
        assert delay <= gap < delay + 1.5, gaps
    assert gaps[0] < gaps[1] < gaps[2]
    assert supervisor.status("flapping").restarts == 3


def test_runs_longer_than_stable_after_do_not_grow_the_delay(supervisor, tmp_path):
    stamps = tmp_path / "starts.txt"
    steady = spec(
        "steady",
        f"import time; open({str(stamps)!r}, 'a').write(f'{{time.monotonic()}}\\n'); time.sleep(0.4); raise SystemExit(1)",
        restart=RestartPolicy(initial_delay=0.1, factor=10.0, max_delay=30, stable_after=0.3),
    )
    supervisor.start_group([steady])
    wait_for(lambda: len(stamps.read_text().split()) >= 4 if stamps.exists() else False, timeout=20)
    starts = [float(line) for line in stamps.read_text().split()][:4]
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    # 0.4 s run + a constant 0.1 s delay; without the reset the delays would be 0.1, 1 and 10 s.
    assert all(0.5 <= gap < 2.5 for gap in gaps), gaps


def test_stop_goes_in_reverse_group_order_and_kills_what_ignores_sigterm(tmp_path):
    order = tmp_path / "order.txt"
    polite = """
import signal, sys, time
def bye(*_):
    open({path!r}, 'a').write({name!r} + '\\n'); sys.exit(0)
signal.signal(signal.SIGTERM, bye)
print('ready', flush=True)
while True:
    time.sleep(0.05)
"""
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    supervisor = Supervisor(tmp_path / "logs", poll_interval=0.05)
    try:
        supervisor.start_group([spec("first", polite.format(path=str(order), name="first"), stop_grace=3)])
        supervisor.start_group([spec("second", polite.format(path=str(order), name="second"), stop_grace=3)])
        supervisor.start_group([spec("stubborn", stubborn, stop_grace=0.5)])
        # Give the children time to install their SIGTERM handlers.
        wait_for(
            lambda: all(
                "ready" in Path(s.log_path).read_text() for s in supervisor.snapshot() if s.name != "stubborn"
            )
        )
        time.sleep(0.2)
        stubborn_pid = supervisor.status("stubborn").pid
    finally:
        started = time.monotonic()
        supervisor.stop()
    assert order.read_text().split() == ["second", "first"]
    assert not pid_alive(stubborn_pid)
    assert supervisor.status("stubborn").last_exit == "signal SIGKILL"
    assert time.monotonic() - started < 6
    assert {s.state for s in supervisor.snapshot()} == {STOPPED}


def test_a_stopping_supervisor_does_not_restart(tmp_path):
    supervisor = Supervisor(tmp_path / "logs", poll_interval=0.05)
    supervisor.start_group(
        [spec("worker", "import time; time.sleep(60)", restart=RestartPolicy(initial_delay=0.05))]
    )
    pid = supervisor.status("worker").pid
    supervisor.stop()
    time.sleep(0.3)
    assert not pid_alive(pid)
    assert supervisor.status("worker").restarts == 0
    assert supervisor.status("worker").state == STOPPED


def test_observers_see_every_state_change(tmp_path):
    seen: list[dict[str, tuple[str, int]]] = []
    supervisor = Supervisor(
        tmp_path / "logs",
        poll_interval=0.05,
        on_change=lambda snapshot: seen.append({s.name: (s.state, s.restarts) for s in snapshot}),
    )
    try:
        supervisor.start_group(
            [spec("worker", "import time; time.sleep(60)", restart=RestartPolicy(initial_delay=0.05))]
        )
        os.kill(supervisor.status("worker").pid, signal.SIGKILL)
        # the observer is called by the monitor thread after the state changed: wait for the call itself
        wait_for(lambda: any(entry.get("worker") == (RUNNING, 1) for entry in list(seen)))
    finally:
        supervisor.stop()
    states = [entry["worker"] for entry in seen if "worker" in entry]
    assert ("running", 0) in states
    assert (BACKOFF, 0) in states
    assert ("running", 1) in states
    assert states[-1] == (STOPPED, 1)


def test_children_die_with_a_killed_supervisor(tmp_path):
    """PR_SET_PDEATHSIG: a supervisor killed with SIGKILL leaves no orphans behind."""
    pid_file = tmp_path / "child.pid"
    script = f"""
import os, sys, time
from pathlib import Path
from multipass_dev.stack.supervisor import ProcessSpec, Supervisor
sup = Supervisor(Path({str(tmp_path / "logs")!r}))
sup.start_group([ProcessSpec(name="child", argv=(sys.executable, "-c", "import time; time.sleep(60)"), env=dict(os.environ))])
Path({str(pid_file)!r}).write_text(str(sup.status("child").pid))
time.sleep(60)
"""
    parent = subprocess.Popen([PY, "-c", script])
    try:
        child = int(wait_for(lambda: pid_file.exists() and pid_file.read_text()))
        assert pid_alive(child)
        parent.kill()
        parent.wait(5)
        wait_for(lambda: not pid_alive(child), timeout=5)
    finally:
        if parent.poll() is None:
            parent.kill()


def test_children_are_the_command_itself_with_native_crash_tracebacks_on(supervisor, tmp_path):
    """The orphan guard execs the command (same pid, parent the supervisor); no Python runs between fork
    and exec in the supervisor; a Python child has faulthandler on, so a native crash leaves a traceback."""
    report = tmp_path / "child.txt"
    code = f"""
        import faulthandler, os, time
        from pathlib import Path
        Path({str(report)!r}).write_text(f"{{os.getpid()}} {{os.getppid()}} {{faulthandler.is_enabled()}}")
        time.sleep(60)
    """
    supervisor.start_group([spec("first", "import time; time.sleep(60)")])  # the monitor thread runs now
    supervisor.start_group([spec("child", code)])
    pid, parent, faulthandler_on = wait_for(lambda: report.exists() and report.read_text()).split()
    assert int(pid) == supervisor.status("child").pid and int(parent) == os.getpid()
    assert faulthandler_on == "True"
    crashing = spec(
        "crashing",
        "import ctypes; ctypes.string_at(0)",
        probe=HealthProbe("tcp", f"127.0.0.1:{closed_port()}"),
    )
    with pytest.raises(StartError) as caught:
        supervisor.start_group([crashing])
    # Started once more after the first crash, then given up: both crashes are in its log.
    assert "SIGSEGV" in caught.value.reason
    log_text = supervisor.status("crashing") and (tmp_path / "logs" / "crashing.log").read_text()
    assert log_text.count("Fatal Python error: Segmentation fault") == 2
    assert "exited with signal SIGSEGV while starting; starting it once more" in log_text


def test_state_file_round_trip_is_atomic_and_private(tmp_path):
    paths = StackPaths(tmp_path / ".multipass")
    write_json_atomic(paths.state_file, {"status": "running", "gateway_address": "127.0.0.1:1234"})
    assert read_state(paths) == {"status": "running", "gateway_address": "127.0.0.1:1234"}
    assert paths.state_file.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in paths.root.iterdir()] == ["stack.json"]  # no temporary file left behind
    paths.state_file.write_text("{not json")
    assert read_state(paths) is None


# -- the local stack's wiring and control (no services started) -----------------------------------


def test_every_service_is_wired_to_loopback_ports_and_the_gateway_to_its_peers(tmp_path):
    from multipass_dev.stack.local_stack import (
        DIFFUSION,
        GATEWAY,
        PARSER,
        SEGMENTATION,
        LocalStack,
        StackConfig,
        _Wiring,
    )

    user_env = {
        "PATH": os.environ["PATH"],
        "MULTIPASS_DIFFUSION_MODELS": "my-model",  # the user's choice wins over the stack's default
        "MULTIPASS_GATEWAY_GRPC_ADDR": "0.0.0.0:50050",  # but never over the wiring
    }
    config = StackConfig(
        paths=StackPaths(tmp_path / ".multipass"), base_env=user_env, fetch_allow_hosts=("127.0.0.2",)
    )
    stack = LocalStack(config)
    wiring = _Wiring.choose(config)
    ports = [
        wiring.nats_port,
        wiring.nats_monitor_port,
        *wiring.grpc_ports.values(),
        *wiring.metrics_ports.values(),
    ]
    assert len(set(ports)) == len(ports)
    gateway = stack.service_env(GATEWAY, wiring)
    assert gateway["MULTIPASS_GATEWAY_GRPC_ADDR"] == wiring.grpc_address("gateway")
    assert gateway["MULTIPASS_PARSER_TARGET"] == wiring.grpc_address(PARSER.name)
    assert gateway["MULTIPASS_SEGMENTATION_TARGET"] == wiring.grpc_address(SEGMENTATION.name)
    assert gateway["MULTIPASS_DIFFUSION_TARGET"] == wiring.grpc_address(DIFFUSION.name)
    assert gateway["MULTIPASS_ADMIN_TOKEN"] == wiring.admin_token
    assert gateway["MULTIPASS_CALLBACK_SIGNING_KEY"] == wiring.callback_key
    assert gateway["MULTIPASS_FETCH_ALLOW_HOSTS"] == "127.0.0.2"
    # Astria's callbacks work on the local stack: the HTTP API signs with the same key, and only its relay
    # endpoint (on loopback) is exempt from the gateway's address policy.
    from multipass_dev.stack.local_stack import HTTP_API
    from multipass_http_api.astria.callbacks import RELAY_PATH

    http_api = stack.service_env(HTTP_API, wiring)
    assert http_api["MULTIPASS_CALLBACK_SIGNING_KEY"] == wiring.callback_key
    assert gateway["MULTIPASS_CALLBACK_TRUSTED_PREFIXES"] == wiring.http_url + RELAY_PATH
    diffusion = stack.service_env(DIFFUSION, wiring)
    assert diffusion["MULTIPASS_DIFFUSION_MODELS"] == "my-model"
    assert diffusion["MULTIPASS_DIFFUSION_TUNE_CACHE_DIR"] == str(tmp_path / ".multipass" / "tune-cache")
    assert diffusion["MULTIPASS_MODEL_DIR"] == str(tmp_path / ".multipass" / "models")
    for env in (gateway, diffusion, stack.service_env(PARSER, wiring)):
        assert env["MULTIPASS_NATS_URL"] == wiring.nats_url
        assert env["MULTIPASS_S3_ENDPOINT"] == wiring.s3_endpoint
        assert env["MULTIPASS_INTERNAL_TOKEN"] == wiring.internal_token
    assert "MULTIPASS_ADMIN_TOKEN" not in stack.service_env(PARSER, wiring)
    assert [spec.name for spec in stack._infra_specs(wiring)] == ["nats", "s3"]


def test_an_external_s3_endpoint_replaces_the_moto_server(tmp_path):
    from multipass_dev.stack.local_stack import GATEWAY, LocalStack, StackConfig, _Wiring

    environ = {
        "MULTIPASS_S3_ENDPOINT": "minio.internal:9000",
        "MULTIPASS_S3_SECURE": "true",
        "MULTIPASS_MODEL_DIR": str(tmp_path),
    }
    config = StackConfig.from_env(StackPaths(tmp_path / ".multipass"), environ)
    stack = LocalStack(config)
    wiring = _Wiring.choose(config)
    assert [spec.name for spec in stack._infra_specs(wiring)] == ["nats"]
    env = stack.service_env(GATEWAY, wiring)
    assert (env["MULTIPASS_S3_ENDPOINT"], env["MULTIPASS_S3_SECURE"]) == ("minio.internal:9000", "true")
    assert env["MULTIPASS_MODEL_DIR"] == str(tmp_path)


def test_up_refuses_to_start_a_second_stack_in_the_same_directory(tmp_path):
    from multipass_dev.stack.local_stack import LocalStack, StackConfig, StackError

    paths = StackPaths(tmp_path / ".multipass")
    other = subprocess.Popen([PY, "-c", "import time; time.sleep(30)  # multipass supervisor stand-in"])
    try:
        write_json_atomic(paths.state_file, {"status": "running", "supervisor_pid": other.pid})
        with pytest.raises(StackError, match="already running"):
            LocalStack(StackConfig(paths=paths)).start()
    finally:
        other.kill()
        other.wait()


def test_down_signals_the_supervisor_then_stops_only_leftovers_that_are_still_ours(tmp_path):
    from multipass_dev.stack.control import stop_stack

    paths = StackPaths(tmp_path / ".multipass")
    marker = tmp_path / "supervisor-stopped"
    supervisor = subprocess.Popen(
        [
            PY,
            "-c",
            f"import signal, sys, time\nsignal.signal(signal.SIGTERM, lambda *a: (open({str(marker)!r}, 'w').close(), sys.exit(0)))\nprint('ready', flush=True)\ntime.sleep(60)  # multipass supervisor stand-in",
        ],
        stdout=subprocess.PIPE,
    )
    assert supervisor.stdout.readline().strip() == b"ready"
    leftover_argv = [PY, "-c", "import time; time.sleep(60)  # leftover"]
    leftover = subprocess.Popen(leftover_argv, start_new_session=True)
    stranger = subprocess.Popen([PY, "-c", "import time; time.sleep(60)  # stranger"], start_new_session=True)
    try:
        write_json_atomic(
            paths.state_file,
            {
                "status": "running",
                "supervisor_pid": supervisor.pid,
                "processes": {
                    "worker": {"pid": leftover.pid, "argv": leftover_argv},
                    # A recorded pid now used by another program is left alone.
                    "gateway": {"pid": stranger.pid, "argv": [PY, "-m", "multipass_gateway"]},
                },
            },
        )
        assert stop_stack(paths, timeout=10, on_progress=lambda message: None)
        supervisor.wait(5)
        assert marker.exists()
        leftover.wait(15)
        assert stranger.poll() is None
    finally:
        for process in (supervisor, leftover, stranger):
            if process.poll() is None:
                process.kill()
                process.wait()
    assert not stop_stack(StackPaths(tmp_path / "none"), on_progress=lambda message: None)


def test_status_probes_every_recorded_process_now(tmp_path):
    from multipass_dev.stack.control import live_status

    paths = StackPaths(tmp_path / ".multipass")
    port = closed_port()
    server = subprocess.Popen([PY, "-c", SERVE_TCP + "# multipass supervisor stand-in\n", str(port)])
    stranger = subprocess.Popen([PY, "-c", "import time; time.sleep(30)"])
    try:
        wait_for(lambda: HealthProbe("tcp", f"127.0.0.1:{port}").check())
        # A recorded supervisor pid now used by another program does not count as a running stack.
        write_json_atomic(paths.state_file, {"status": "running", "supervisor_pid": stranger.pid})
        assert live_status(paths)["supervisor_alive"] is False
        write_json_atomic(
            paths.state_file,
            {
                "status": "running",
                "supervisor_pid": server.pid,
                "processes": {
                    "up": {"pid": server.pid, "probe": {"kind": "tcp", "target": f"127.0.0.1:{port}"}},
                    "hung": {
                        "pid": os.getpid(),
                        "probe": {"kind": "tcp", "target": f"127.0.0.1:{closed_port()}"},
                    },
                    "gone": {"pid": None, "probe": {"kind": "tcp", "target": "127.0.0.1:1"}},
                },
            },
        )
        state = live_status(paths)
    finally:
        for process in (server, stranger):
            process.kill()
            process.wait()
    assert state["supervisor_alive"] is True
    assert {name: p["health"] for name, p in state["processes"].items()} == {
        "up": "SERVING",
        "hung": "NOT_SERVING",
        "gone": "DOWN",
    }
