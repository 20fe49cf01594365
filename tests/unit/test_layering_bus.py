"""Only the bus port talks to NATS: no module outside ``shared/multipass/bus/`` imports ``nats`` or reaches for
the NATS client, its JetStream context or a KV bucket's internals."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUS = ROOT / "shared" / "multipass" / "bus"
#: Attributes that hold the raw NATS client (``nc``), its JetStream context (``js``) or nats-py KeyValue
#: internals (``_js``, ``_pre``).
RAW_HANDLES = {"nc", "js", "_js", "_pre"}


def python_modules() -> list[Path]:
    found = []
    for top in ("services", "shared", "scripts"):
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = path.relative_to(ROOT).parts
            if path.is_relative_to(BUS) or "v1" in parts or "__pycache__" in parts:
                continue  # the port itself, and generated protobuf stubs
            found.append(path)
    return found


def nats_imports(tree: ast.AST) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names if alias.name.split(".")[0] == "nats"]
        elif (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and (node.module or "").split(".")[0] == "nats"
        ):
            names.append(node.module)
    return names


def raw_handles(tree: ast.AST) -> list[str]:
    return [
        f"line {node.lineno}: .{node.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr in RAW_HANDLES
    ]


def test_the_walk_sees_the_services_and_the_port_exists():
    modules = {path.relative_to(ROOT).as_posix() for path in python_modules()}
    assert "services/gateway/infra/pass_scheduler.py" in modules and "services/diffusion/worker.py" in modules
    assert (BUS / "__init__.py").is_file() and not (ROOT / "shared" / "multipass" / "bus.py").exists()


@pytest.mark.parametrize("path", python_modules(), ids=lambda path: path.relative_to(ROOT).as_posix())
def test_no_module_outside_the_bus_touches_nats(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    assert not nats_imports(tree), f"imports {nats_imports(tree)}: go through multipass.bus"
    assert not raw_handles(tree), f"reaches for the NATS client: {raw_handles(tree)}"
