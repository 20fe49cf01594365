"""Ports of the local stack: reserved at once and held until their process starts, so they never
collide; a port taken anyway at start (by another program) makes the whole start run again."""

from __future__ import annotations

import errno
import socket
from pathlib import Path

import pytest

from multipass_client.stack_record import StackPaths
from multipass_dev.local import NatsServerProcess
from multipass_dev.local.process import LOOPBACK, PortReservation, is_port_clash, reserve_ports
from multipass_dev.stack import local_stack
from multipass_dev.stack.local_stack import START_TRIES, LocalStack, StackConfig, StackError, _Wiring
from multipass_dev.stack.supervisor import StartError


def bind_error(port: int) -> int | None:
    """The errno of binding ``port`` on loopback now (None when it binds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError as error:
            return error.errno
    return None


def test_reserved_ports_are_distinct_every_time():
    # Picked one at a time, 12 ports collided about once in 200 draws on this machine.
    for _ in range(300):
        ports = reserve_ports(12)
        assert len(set(ports)) == 12


def test_reserved_ports_are_held_until_released():
    with PortReservation(3) as reservation:
        first, second, third = reservation.ports
        assert all(bind_error(port) == errno.EADDRINUSE for port in reservation.ports)
        reservation.release(second)
        assert bind_error(second) is None
        assert bind_error(first) == errno.EADDRINUSE and bind_error(third) == errno.EADDRINUSE
    assert all(bind_error(port) is None for port in (first, third))


def config_for(tmp_path: Path, **overrides) -> StackConfig:
    values = dict(
        paths=StackPaths(tmp_path / ".multipass"),
        model_dir=tmp_path,
        s3_endpoint="127.0.0.1:9",  # external: no S3 process of its own
        base_env={"PATH": "/usr/bin:/bin"},
    )
    values.update(overrides)
    return StackConfig(**values)


def test_a_stacks_wiring_holds_every_port_until_its_processes_start(tmp_path):
    config = config_for(tmp_path, s3_endpoint=None, diffusion_replicas=2)
    wiring = _Wiring.choose(config)
    try:
        names = ["nats", "s3", *(s.name for s in config.workers), "gateway", "http-api"]
        ports = [port for name in names for port in wiring.ports_of(name)]
        assert len(ports) == len(set(ports)) == 2 + 1 + 2 * (len(names) - 2)
        assert all(bind_error(port) == errno.EADDRINUSE for port in ports)
        wiring.release(["nats"])
        assert [bind_error(port) for port in wiring.ports_of("nats")] == [None, None]
        assert bind_error(wiring.grpc_ports["gateway"]) == errno.EADDRINUSE
    finally:
        wiring.release_all()
    assert bind_error(wiring.grpc_ports["gateway"]) is None


@pytest.mark.parametrize(
    "log_line",
    [
        # nats-server
        "[ERR] Error listening on port: 127.0.0.1:4222, "
        '"listen tcp 127.0.0.1:4222: bind: address already in use"',
        # moto_server (werkzeug)
        "Address already in use\nPort 5000 is in use by another program.",
        # a service's /metrics endpoint (prometheus_client)
        "OSError: [Errno 98] Address already in use",
        # a service's gRPC port (multipass.grpc.server)
        "OSError: could not bind gRPC server to 127.0.0.1:50051",
    ],
)
def test_port_clashes_are_recognised_in_every_servers_words(log_line):
    assert is_port_clash(log_line)
    error = StartError("nats", "exited with exit code 1 while starting", f"booting\n{log_line}\n", Path("x"))
    assert local_stack.port_clash_line(error) is not None


def test_other_start_failures_are_not_clashes():
    error = StartError(
        "diffusion",
        "exited with exit code 1 while starting",
        "ModuleNotFoundError: No module named 'torch'",
        Path("x"),
    )
    assert local_stack.port_clash_line(error) is None


def take_the_nats_port(monkeypatch, times: int) -> list[int]:
    """Make another program take nats-server's port between reservation and start, ``times`` times."""
    taken: list[int] = []
    holders: list[socket.socket] = []
    choose = _Wiring.choose.__func__

    def choose_then_take(cls, config):
        wiring = choose(cls, config)
        if len(taken) < times:
            wiring.reservation.release(wiring.nats_port)
            holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            holder.bind((LOOPBACK, wiring.nats_port))
            holder.listen()
            holders.append(holder)
            taken.append(wiring.nats_port)
        return wiring

    monkeypatch.setattr(_Wiring, "choose", classmethod(choose_then_take))
    # The services are not what this is about: the infrastructure's real start is.
    monkeypatch.setattr(LocalStack, "_start_services", lambda self, wiring: None)
    return taken


def test_a_port_taken_at_start_makes_the_whole_start_run_again_on_new_ports(tmp_path, monkeypatch):
    taken = take_the_nats_port(monkeypatch, times=1)
    messages: list[str] = []
    stack = LocalStack(config_for(tmp_path), on_progress=messages.append)
    try:
        stack.start()
        assert stack.status == "running"
        assert stack.wiring.nats_port != taken[0]
        nats = {p.name: p for p in stack.supervisor.snapshot()}["nats"]
        assert nats.healthy and nats.restarts == 0
        retried = [m for m in messages if "found its port taken" in m]
        assert len(retried) == 1 and f"try 2 of {START_TRIES}" in retried[0]
        assert "address already in use" in retried[0].lower()
    finally:
        stack.stop()


def test_a_start_gives_up_after_its_tries_naming_the_clash(tmp_path, monkeypatch):
    taken = take_the_nats_port(monkeypatch, times=START_TRIES)
    stack = LocalStack(config_for(tmp_path))
    with pytest.raises(StackError, match="(?i)address already in use"):
        stack.start()
    assert len(taken) == START_TRIES and stack.status == "failed"


def test_a_standalone_nats_server_gets_two_different_ports(tmp_path):
    server = NatsServerProcess.start(tmp_path / "nats")
    try:
        assert server.port != server.monitor_port and server.healthy()
    finally:
        server.stop()
