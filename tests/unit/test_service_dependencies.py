"""Each service image installs what its code imports: the core dependencies and the service's extra of
pyproject.toml (docker/Dockerfile installs ``.[<service>]``), with what those require in turn.

The imports are read from the source (at any depth, lazy ones included) of the service's package and of
every ``multipass`` module it reaches, so a module added to a service without its distribution in the
extra fails here rather than in a pod that crash-loops.
"""

from __future__ import annotations

import ast
import contextlib
import re
import sys
import tomllib
from functools import cache
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
SERVICES = ("gateway", "http_api", "prompt_parser", "segmentation", "diffusion")
#: Imports a service reaches in the source but never runs, each with the reason.
NEVER_RUN = {
    "gateway": {
        # multipass.face_detection, imported inside the model catalog's face-detector check, which the
        # segmentation and diffusion services and `multipass models check` run; the gateway reads only
        # the catalog's tables.
        "cv2",
        "onnxruntime",
    },
}


def _distribution(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


def installed_by(requirements: list[str], seen: set[str] | None = None) -> set[str]:
    """The distributions ``requirements`` install, with their own requirements (not their extras')."""
    seen = set() if seen is None else seen
    extras = PYPROJECT["project"]["optional-dependencies"]
    for requirement in requirements:
        if "extra ==" in requirement:
            continue
        name = _distribution(requirement)
        if name == "multipass":
            for extra in re.search(r"\[(.*)\]", requirement).group(1).split(","):
                installed_by(extras[extra.strip()], seen)
            continue
        if name in seen:
            continue
        seen.add(name)
        with contextlib.suppress(metadata.PackageNotFoundError):  # not installed here: no requirements known
            installed_by(metadata.requires(name) or [], seen)
    return seen


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


@cache
def _shared_file(module: str) -> Path | None:
    """The source file of a ``multipass`` module (a package's ``__init__``), None when there is none."""
    base = ROOT / "shared" / Path(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def third_party_imports(service: str) -> dict[str, set[str]]:
    """Top-level third-party modules the service's code can import -> the files importing each."""
    files = [p for p in (ROOT / "services" / service).rglob("*.py")]
    seen: set[Path] = set()
    found: dict[str, set[str]] = {}
    while files:
        path = files.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in _imports(path):
            top = module.split(".")[0]
            if top == "multipass":
                shared = _shared_file(module)
                if shared is not None and "v1" not in shared.relative_to(ROOT / "shared").parts[1:2]:
                    files.append(shared)
                continue
            if top.startswith("multipass") or top in sys.stdlib_module_names or top == "__future__":
                continue
            found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


@pytest.mark.parametrize("service", SERVICES)
def test_the_services_image_installs_every_module_its_code_imports(service):
    project = PYPROJECT["project"]
    allowed = installed_by(project["dependencies"] + project["optional-dependencies"][service])
    distributions = metadata.packages_distributions()
    missing = {
        module: sorted(files)
        for module, files in third_party_imports(service).items()
        if module not in NEVER_RUN.get(service, set())
        and not any(d.lower().replace("_", "-") in allowed for d in distributions.get(module, [module]))
    }
    assert not missing, f"imported by the {service} service but not installed by .[{service}]: {missing}"
