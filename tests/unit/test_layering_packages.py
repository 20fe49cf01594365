"""The package layering: the runtime imports no service and no tooling, the client only the generated stubs,
and a service only the runtime and itself (a service image installs nothing else)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNTIME = ROOT / "shared" / "multipass"
CLIENT = ROOT / "shared" / "multipass_client"
SERVICES = {
    "multipass_gateway": ROOT / "services" / "gateway",
    "multipass_prompt_parser": ROOT / "services" / "prompt_parser",
    "multipass_segmentation": ROOT / "services" / "segmentation",
    "multipass_diffusion": ROOT / "services" / "diffusion",
    "multipass_http_api": ROOT / "services" / "http_api",
}
TOOLING = ("multipass_client", "multipass_dev", "multipass_bench")
NOT_RUNTIME = (*SERVICES, *TOOLING)

IMPORT_EVERY_RUNTIME_MODULE = """
import importlib, json, pkgutil, sys
import multipass
for info in pkgutil.walk_packages(multipass.__path__, "multipass."):
    if info.name.startswith("multipass.v1") or info.name.rsplit(".", 1)[-1] == "__main__":
        continue
    importlib.import_module(info.name)
print(json.dumps(sorted(sys.modules)))
"""


def sources(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "v1" not in p.relative_to(root).parts[:1])


def imported_modules(path: Path) -> list[str]:
    """Every module a file imports, at any depth, including ``importlib.import_module("...")`` literals."""
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append(node.args[0].value)
    return found


def top_level(module: str) -> str:
    return module.split(".", 1)[0]


def offending(root: Path, allowed) -> list[str]:
    return [
        f"{root.name}/{path.relative_to(root)}: {module}"
        for path in sources(root)
        for module in imported_modules(path)
        if top_level(module).startswith("multipass") and not allowed(module)
    ]


def test_importing_the_runtime_loads_no_service_and_no_tooling():
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_EVERY_RUNTIME_MODULE],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert "multipass.store" in loaded and "multipass.grpc.server" in loaded
    assert [name for name in loaded if top_level(name) in NOT_RUNTIME] == []


def test_runtime_sources_import_no_service_and_no_tooling():
    assert offending(RUNTIME, lambda module: top_level(module) not in NOT_RUNTIME) == []


def test_client_imports_only_the_generated_stubs_of_the_runtime():
    def allowed(module: str) -> bool:
        if top_level(module) == "multipass_client":
            return True
        return module == "multipass.v1" or module.startswith("multipass.v1.")

    assert offending(CLIENT, allowed) == []


@pytest.mark.parametrize("package", sorted(SERVICES))
def test_a_service_imports_only_the_runtime_and_itself(package):
    assert offending(SERVICES[package], lambda module: top_level(module) in {"multipass", package}) == []


def test_the_checks_see_a_forbidden_import(tmp_path):
    """The static checks read nested and dynamic imports, so a lazy import cannot slip through."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import importlib\n"
        "from multipass.v1 import jobs_pb2\n"
        "def later():\n"
        "    from multipass_gateway import planner\n"
        "    return importlib.import_module('multipass_dev.stack')\n"
    )
    modules = imported_modules(sample)
    assert "multipass_gateway" in modules and "multipass_dev.stack" in modules
    found = offending(tmp_path, lambda module: top_level(module) not in NOT_RUNTIME)
    assert found == [
        f"{tmp_path.name}/sample.py: multipass_gateway",
        f"{tmp_path.name}/sample.py: multipass_gateway.planner",
        f"{tmp_path.name}/sample.py: multipass_dev.stack",
    ]
