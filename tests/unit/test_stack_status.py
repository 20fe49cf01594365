"""Finding the local stack from any directory: ``$MULTIPASS_HOME``, the working directory and its parents,
then the checkout the package is installed from; and a hint, not a bare "absent", when there is none."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from multipass_client.cli.main import main
from multipass_client.stack_record import StackPaths, dev_api_key, gateway_address
from multipass_dev.stack.state import write_json_atomic, write_secret

SERVE_FOREVER = "import time; time.sleep(60)  # multipass supervisor stand-in"


def record_stack(root: Path, supervisor_pid: int, gateway: str = "127.0.0.1:61234") -> StackPaths:
    paths = StackPaths(root)
    write_secret(paths.api_key_file, "mpk_recorded")
    write_json_atomic(
        paths.state_file,
        {
            "status": "running",
            "root": str(root),
            "supervisor_pid": supervisor_pid,
            "gateway_address": gateway,
            "api_key_file": str(paths.api_key_file),
            "processes": {},
        },
    )
    return paths


def clean_env(monkeypatch, **variables: str) -> None:
    for name in ("MULTIPASS_STACK_DIR", "MULTIPASS_HOME", "MULTIPASS_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)


def test_status_json_finds_the_stack_through_multipass_home_from_another_directory(
    tmp_path, monkeypatch, capsys
):
    home, elsewhere = tmp_path / "checkout", tmp_path / "elsewhere"
    elsewhere.mkdir()
    supervisor = subprocess.Popen([sys.executable, "-c", SERVE_FOREVER])
    try:
        record_stack(home / ".multipass", supervisor.pid)
        clean_env(monkeypatch, MULTIPASS_HOME=str(home))
        monkeypatch.chdir(elsewhere)
        code = main(["status", "--json"])
        state = json.loads(capsys.readouterr().out)
    finally:
        supervisor.kill()
        supervisor.wait()
    assert state["root"] == str(home / ".multipass")
    assert state["gateway_address"] == "127.0.0.1:61234" and state["supervisor_alive"] is True
    assert code == 1  # no process recorded is healthy yet


def test_client_commands_read_the_located_stack(tmp_path, monkeypatch):
    home, elsewhere = tmp_path / "checkout", tmp_path / "elsewhere"
    elsewhere.mkdir()
    record_stack(home / ".multipass", supervisor_pid=0, gateway="127.0.0.1:61999")
    clean_env(monkeypatch, MULTIPASS_HOME=str(home))
    monkeypatch.chdir(elsewhere)
    assert gateway_address() == "127.0.0.1:61999"
    assert dev_api_key() == "mpk_recorded"


def test_the_stack_of_the_checkout_the_package_is_installed_from_is_found(tmp_path):
    checkout = tmp_path / "checkout"
    record_stack(checkout / ".multipass", supervisor_pid=0)
    elsewhere = tmp_path / "elsewhere" / "deeper"
    elsewhere.mkdir(parents=True)
    package_dir = checkout / "shared" / "multipass_client"
    found = StackPaths.locate({}, cwd=elsewhere, package_dir=package_dir)
    assert found == StackPaths(checkout / ".multipass")


def test_the_working_directory_and_its_parents_come_before_the_checkout(tmp_path):
    record_stack(tmp_path / "checkout" / ".multipass", supervisor_pid=0)
    record_stack(tmp_path / "project" / ".multipass", supervisor_pid=0)
    inside = tmp_path / "project" / "src"
    inside.mkdir()
    package_dir = tmp_path / "checkout" / "shared" / "multipass_client"
    assert StackPaths.locate({}, cwd=inside, package_dir=package_dir) == StackPaths(
        tmp_path / "project" / ".multipass"
    )


def test_an_explicit_location_is_the_only_place_looked_at(tmp_path):
    record_stack(tmp_path / ".multipass", supervisor_pid=0)
    home = tmp_path / "empty-home"
    env = {"MULTIPASS_HOME": str(home)}
    assert StackPaths.candidates(env, cwd=tmp_path) == [StackPaths(home / ".multipass")]
    assert StackPaths.locate(env, cwd=tmp_path) is None
    stack_dir = {"MULTIPASS_STACK_DIR": str(tmp_path / ".multipass"), "MULTIPASS_HOME": str(home)}
    assert StackPaths.locate(stack_dir, cwd=home) == StackPaths(tmp_path / ".multipass")
    # A new stack goes where the variables say.
    assert StackPaths.default(env) == StackPaths(home / ".multipass")


def test_status_without_a_stack_prints_a_hint_in_json_and_text(tmp_path, monkeypatch, capsys):
    clean_env(monkeypatch, MULTIPASS_HOME=str(tmp_path / "nothing-here"))
    monkeypatch.chdir(tmp_path)
    assert main(["status", "--json"]) == 1
    answer = json.loads(capsys.readouterr().out)
    assert answer["status"] == "absent"
    assert answer["looked_in"] == [str(tmp_path / "nothing-here" / ".multipass")]
    assert "multipass up" in answer["hint"] and "MULTIPASS_HOME" in answer["hint"]
    assert main(["status"]) == 1
    assert "multipass up" in capsys.readouterr().err
