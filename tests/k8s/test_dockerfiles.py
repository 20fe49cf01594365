"""The service Dockerfiles: lint-clean, built from the repository root, non-root, no weights inside."""

from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
from pathlib import Path

import dockerfile
import pytest
from k8s_manifests import SERVICES, containers, main_container, one, workloads
from k8s_render import ROOT, rendered

HADOLINT = Path(sys.executable).with_name("hadolint")
DOCKERFILES = sorted(ROOT.glob("services/*/Dockerfile*"))
ML_SERVICES = {"segmentation", "diffusion"}


def service_of(path: Path) -> str:
    return path.parent.name.replace("_", "-")


def commands(path: Path) -> list:
    return list(dockerfile.parse_file(str(path)))


def final_stage(path: Path) -> list:
    parsed = commands(path)
    last_from = max(i for i, command in enumerate(parsed) if command.cmd == "FROM")
    return parsed[last_from:]


def test_there_is_a_dockerfile_per_service_and_two_for_diffusion():
    names = {p.relative_to(ROOT).as_posix() for p in DOCKERFILES}
    expected = {f"services/{s.replace('-', '_')}/Dockerfile" for s in SERVICES}
    assert names == expected | {"services/diffusion/Dockerfile.cuda"}


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_hadolint_finds_nothing(path):
    result = subprocess.run(
        [str(HADOLINT), "--config", str(ROOT / "docker" / "hadolint.yaml"), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_image_runs_the_service_as_a_non_root_user(path):
    package, grpc_port, metrics_port = SERVICES[service_of(path)]
    stage = final_stage(path)
    users = [c.value[0] for c in stage if c.cmd == "USER"]
    assert users, "the final stage sets no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000, f"USER {users[-1]} is not a numeric non-root uid"
    entrypoint = [c for c in stage if c.cmd == "ENTRYPOINT"][-1]
    assert entrypoint.json and list(entrypoint.value) == ["python", "-m", package]
    exposed = {int(v) for c in stage if c.cmd == "EXPOSE" for v in c.value}
    assert exposed == {grpc_port, metrics_port}


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_build_uses_pinned_bases_and_only_repository_files(path):
    parsed = commands(path)
    arguments = {}
    for command in parsed:
        if command.cmd == "ARG" and "=" in command.value[0]:
            key, _, value = command.value[0].partition("=")
            arguments[key] = value
    for command in parsed:
        if command.cmd == "FROM":
            image = re.sub(r"\$\{(\w+)\}", lambda m: arguments[m.group(1)], command.value[0])
            name, _, tag = image.rpartition(":")
            assert name and tag and tag != "latest" and re.search(r"\d+\.\d+\.\d+", tag), image
        if command.cmd == "COPY" and not any(flag.startswith("--from") for flag in command.flags):
            for source in command.value[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository root"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_dependencies_match_the_service(path):
    text = path.read_text()
    installs = re.findall(r'pip install -c constraints\.txt "?(\.(?:\[\w+\])?)"?', text)
    expected = ".[ml]" if service_of(path) in ML_SERVICES else "."
    assert installs == [expected]
    assert "grpc_tools.protoc" in text, "the gRPC code is generated in the build"
    if path.name == "Dockerfile.cuda":
        assert "whl/cpu" not in text
    elif service_of(path) in ML_SERVICES:
        assert re.search(r"--index-url \$\{TORCH_INDEX_URL\} torch==2\.14\.1 torchvision==0\.29\.1", text)
        assert "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text


def test_model_sync_runs_from_the_service_image():
    """The init containers call ``multipass``: the image's console script from pyproject."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'multipass = "multipass.cli.main:main"' in pyproject
    for overlay in ("dev", "prod"):
        for service in ML_SERVICES:
            deployment = one(rendered(overlay), "Deployment", service)
            (init,) = deployment["spec"]["template"]["spec"]["initContainers"]
            assert init["image"] == main_container(deployment)["image"]


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last matching pattern wins; ``!`` re-includes."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.removeprefix("!").rstrip("/")
        candidates = [path, *(path.rsplit("/", i)[0] for i in range(1, path.count("/") + 1))]
        if any(
            fnmatch.fnmatch(c, pattern) or fnmatch.fnmatch(c, pattern.removeprefix("**/")) for c in candidates
        ):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_weights_environments_and_generated_code_out():
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for path in (
        ".venv/bin/python",
        ".multipass/models/diffusion/sd15-tiny/unet/diffusion_pytorch_model.safetensors",
        "shared/multipass/v1/jobs_pb2.py",
        "services/diffusion/weights/model.safetensors",
        "services/segmentation/sam_vit_b.pth",
        "k8s/base/kustomization.yaml",
        "tests/conftest.py",
        ".git/config",
        "services/gateway/__pycache__/service.cpython-311.pyc",
    ):
        assert _ignored(path, patterns), f"{path} would be sent to the build"
    for path in (
        "pyproject.toml",
        "setup.py",
        "constraints.txt",
        "protos/multipass/v1/jobs.proto",
        "shared/multipass/bus.py",
        "services/diffusion/engine.py",
    ):
        assert not _ignored(path, patterns), f"{path} is needed by the build"


def test_build_script_tags_what_the_manifests_pin():
    script = (ROOT / "docker" / "build-images.sh").read_text()
    built = dict(re.findall(r'^build (\S+) "(\S+?):\$\{version\}', script, re.M))
    built_tags = {
        (image, suffix)
        for image, suffix in re.findall(r'^build \S+ "(\S+?):\$\{version\}([^"]*)"', script, re.M)
    }
    assert set(built) == {p.relative_to(ROOT).as_posix() for p in DOCKERFILES}
    for overlay in ("dev", "prod"):
        for workload in workloads(rendered(overlay)):
            for container in containers(workload):
                name, _, tag = container["image"].rpartition(":")
                if name.startswith("multipass-"):
                    suffix = tag[tag.index("-") :] if "-" in tag else ""
                    assert (name, suffix) in built_tags, container["image"]
