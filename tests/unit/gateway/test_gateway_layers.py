"""The gateway's layers: ``domain`` is pure, ``infra`` adapts it to the world, ``app`` uses both, ``api`` serves
them, and ``main`` wires everything; no layer imports one above it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

GATEWAY = Path(__file__).resolve().parents[3] / "services" / "gateway"
#: What each layer may not import (a module or any module under it).
FORBIDDEN = {
    "domain": (
        "asyncio",
        "grpc",
        "minio",
        "nats",
        "prometheus_client",
        "socket",
        "urllib3",
        "multipass.bus",
        "multipass.grpc",
        "multipass.store",
        "multipass_gateway.infra",
        "multipass_gateway.app",
        "multipass_gateway.api",
        "multipass_gateway.main",
    ),
    "infra": ("multipass_gateway.app", "multipass_gateway.api", "multipass_gateway.main"),
    "app": ("multipass_gateway.api", "multipass_gateway.main"),
    "api": ("multipass_gateway.main",),
}


def imports(path: Path) -> list[str]:
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return found


def violations(layer: str) -> list[str]:
    banned = FORBIDDEN[layer]
    return [
        f"{path.relative_to(GATEWAY)}: {module}"
        for path in sorted((GATEWAY / layer).glob("*.py"))
        for module in imports(path)
        if any(module == name or module.startswith(f"{name}.") for name in banned)
    ]


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_layer_imports_a_layer_above_it_and_the_domain_does_no_io(layer):
    assert (GATEWAY / layer / "__init__.py").is_file()
    assert violations(layer) == []


def test_the_check_sees_a_forbidden_import(tmp_path, monkeypatch):
    (tmp_path / "domain").mkdir()
    (tmp_path / "domain" / "__init__.py").write_text("")
    (tmp_path / "domain" / "sample.py").write_text("from multipass.bus import Bus\nimport grpc\n")
    monkeypatch.setitem(globals(), "GATEWAY", tmp_path)
    assert violations("domain") == [
        "domain/sample.py: multipass.bus",
        "domain/sample.py: multipass.bus.Bus",
        "domain/sample.py: grpc",
    ]
