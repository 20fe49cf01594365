"""scripts/gpu_wheels.sh and scripts/gpu_check.sh (docs/BENCHMARKS.md, "GPU check").

The wheel set must cover every third-party distribution that the GPU check can import (the diffusion
engine, scripts/bench_gpu.py, tests/gpu with tests/conftest.py, and every first-party module they import,
at module level or inside a function) and that the GPU machine lacks, and every declared requirement of
those wheels; the pins must be constraints.txt's. The check script parses, answers --help and passes a
dry run here in seconds; the whole ``--tiny`` run (about 40 s here) is marked slow.
"""

from __future__ import annotations

import ast
import functools
import json
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from multipass_bench import gpu

ROOT = Path(__file__).resolve().parents[2]
WHEELS_SCRIPT = ROOT / "scripts" / "gpu_wheels.sh"
CHECK_SCRIPT = ROOT / "scripts" / "gpu_check.sh"

#: The Python packages of the offline GPU machines' image ('cuda'), as listed for them when last read
#: (2026-11-17), less peft: the machine's documented image lacks it, and another version may be
#: there, so it travels. A package here at another version than ours travels too where our code needs
#: that version (protobuf: the stubs need the runtime >= the protoc that generated them).
_PREINSTALLED = """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings
cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils
execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet
httpcore httpx huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax
jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning
lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib
mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc
nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver
nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13
nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx
optimistix orbax-checkpoint packaging pandas pathspec patsy pillow pip pluggy portalocker
prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools
shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server
tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq
torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer typing-extensions
typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
"""
PREINSTALLED = _PREINSTALLED.split()
#: Where the GPU machine's packages are at another version than our code needs.
NEEDS_OUR_VERSION = {"protobuf"}
#: What the GPU check imports: the modules its three parts start from.
ENTRY_MODULES = ("multipass_diffusion.engine", "multipass_bench.gpu")
ENTRY_FILES = ("scripts/bench_gpu.py", "tests/conftest.py", "tests/gpu")
#: The environment of Requires-Dist markers there (CPython 3.12 on x86-64 Linux).
MARKERS = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "os_name": "posix",
    "extra": "",
}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@functools.cache
def wheel_specs() -> dict[str, str]:
    done = subprocess.run(
        ["bash", str(WHEELS_SCRIPT), "--list"], capture_output=True, text=True, timeout=30, check=True
    )
    pairs = [line.split("==") for line in done.stdout.split()]
    return {normalise(name): version for name, version in pairs}


def package_roots() -> dict[str, str]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    return next(
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "PACKAGE_ROOTS" for t in node.targets)
    )


def module_file(roots: dict[str, str], name: str) -> Path | None:
    parts = name.split(".")
    if parts[0] not in roots:
        return None
    base = ROOT / roots[parts[0]]
    base = base.joinpath(*parts[1:]) if len(parts) > 1 else base
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_names(path: Path, module: str):
    """Every name ``path`` imports, anywhere in the file (relative imports resolved; ``from a import b``
    also yields ``a.b``, which is a module when ``b`` is one)."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package[: len(package) - (node.level - 1)] + ([node.module] if node.module else [])
                base = ".".join(parts)
            else:
                base = node.module or ""
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


@functools.cache
def third_party_imports() -> dict[str, set[str]]:
    """Third-party import roots (``google.*`` to two levels) reachable from the GPU check, with the
    first-party files that import each."""
    roots = package_roots()
    queue = [(module_file(roots, name), name) for name in ENTRY_MODULES]
    for entry in ENTRY_FILES:
        path = ROOT / entry
        files = sorted(path.glob("*.py")) if path.is_dir() else [path]
        queue += [(file, file.stem) for file in files]
    seen: set[Path] = set()
    found: dict[str, set[str]] = {}
    while queue:
        path, module = queue.pop()
        if path is None or path in seen:
            continue
        seen.add(path)
        for name in imported_names(path, module):
            parts = name.split(".")
            if parts[0] in roots:
                queue += [
                    (module_file(roots, ".".join(parts[:i])), ".".join(parts[:i]))
                    for i in range(1, len(parts) + 1)
                ]
            elif parts[0] and parts[0] not in sys.stdlib_module_names and parts[0] != "__future__":
                key = ".".join(parts[:2]) if parts[0] == "google" else parts[0]
                found.setdefault(key, set()).add(str(path.relative_to(ROOT)))
    assert len(seen) > 50, "the import walk found too little: did the entry modules move?"
    return found


@functools.cache
def _packages_distributions() -> dict[str, list[str]]:
    return metadata.packages_distributions()


def distribution_of(root: str) -> str:
    by_module = {"google.protobuf": "protobuf", "google.rpc": "googleapis-common-protos"}
    if root in by_module:
        return by_module[root]
    names = _packages_distributions().get(root)
    assert names, f"{root} is imported by the GPU check but no installed distribution provides it"
    assert len(names) == 1, f"{root} comes from several distributions: {names}"
    return normalise(names[0])


def test_both_scripts_parse():
    for script in (WHEELS_SCRIPT, CHECK_SCRIPT):
        subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
        assert os.access(script, os.X_OK), f"{script.name} is not executable"


def test_wheels_are_pinned_as_constraints_and_the_venv():
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line:
            name, version = line.split("==", 1)
            pins[normalise(name)] = version.strip()
    specs = wheel_specs()
    assert specs, "gpu_wheels.sh --list printed nothing"
    for name, version in specs.items():
        assert pins.get(name) == version, f"{name}=={version}: constraints.txt pins {pins.get(name)}"
        assert normalise(metadata.version(name)) == normalise(version), (
            f"the venv has {name} {metadata.version(name)}"
        )


def test_wheels_cover_what_the_gpu_check_imports_and_their_requirements():
    preinstalled = {normalise(name) for name in PREINSTALLED} - NEEDS_OUR_VERSION
    wheels = set(wheel_specs())
    available = preinstalled | wheels
    missing = {}
    for root, importers in third_party_imports().items():
        dist = distribution_of(root)
        if dist not in available:
            missing[dist] = sorted(importers)[:3]
    assert not missing, f"imported by the GPU check, not on the GPU machine, not in gpu_wheels.sh: {missing}"
    for dist in NEEDS_OUR_VERSION:
        assert dist in wheels, f"{dist} must travel at our version"
    for dist in sorted(wheels):
        for text in metadata.requires(dist) or []:
            requirement = Requirement(text)
            if requirement.marker is not None and not requirement.marker.evaluate(MARKERS):
                continue
            assert normalise(requirement.name) in available, (
                f"{dist} requires {requirement}, which is not there"
            )


def test_wheels_are_not_more_than_needed():
    """Each wheel is imported by the GPU check, is a requirement of another wheel, or is one the machine lacks (peft, nats-py, minio)."""
    wheels = set(wheel_specs())
    needed = {distribution_of(root) for root in third_party_imports()} | {"peft", "nats-py", "minio"}
    for dist in wheels:
        for text in metadata.requires(dist) or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate(MARKERS):
                needed.add(normalise(requirement.name))
    assert wheels <= needed, f"wheels nothing needs: {sorted(wheels - needed)}"


def _check(tmp_path: Path, *args: str, timeout: int) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "OUT": str(tmp_path / "out"),
        "GPU_CHECK_MODELS": str(tmp_path / "models"),
        "TMPDIR": str(tmp_path),
    }
    return subprocess.run(
        ["bash", str(CHECK_SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
    )


def test_check_help_and_dry_run(tmp_path):
    done = _check(tmp_path, "--help", timeout=30)
    assert done.returncode == 0 and "--tiny" in done.stdout
    assert _check(tmp_path, "--bogus", timeout=30).returncode == 2
    done = _check(tmp_path, "--tiny", "--dry-run", timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "dry run: ok" in done.stdout
    assert "scripts/bench_gpu.py --tiny --device cpu" in done.stdout
    environment = json.loads((tmp_path / "out" / "environment.json").read_text())
    assert environment["imports"] == "ok"
    assert (tmp_path / "out" / "gpu_check.log").is_file()
    assert not (tmp_path / "out" / "bench_gpu.json").exists()


@pytest.mark.slow
def test_tiny_check_passes_and_reports_every_figure(tmp_path):
    done = _check(tmp_path, "--tiny", timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    result = json.loads((tmp_path / "out" / "bench_gpu.json").read_text())
    assert result["complete"] is True and result["tiny"] is True
    for family in ("sd15", "sdxl"):
        figures = result["families"][family]
        for kind in ("base", "person", "hires"):
            one = figures["passes"][kind]
            assert one["raw_its"] > 0 and one["engine_its"] > 0 and one["engine_vs_raw"] > 0
        assert figures["two_person_job"]["cold_seconds"] > 0
        assert figures["lora_switch_ms"] > 0 and figures["lora_switch_fraction"] > 0
        assert figures["batched_base"]["speedup"] > 0
        assert figures["peak_memory"]["bytes"] > 0
        assert isinstance(figures["compiled"], str) and figures["compiled"].startswith("skipped")
        assert figures["model"] == gpu.model_name(family, True)
        assert figures["engine_over_raw"] == pytest.approx(figures["ratios"][0], rel=1e-3)
        job = figures["two_person_job"]
        assert set(job["cold_passes"]) == {"base", "person-0", "person-1"} and job["warm_seconds"] > 0
        assert figures["lora_switch"]["disk_fraction"] > 0
        batched = figures["batched_base"]
        assert batched["images"] == gpu.BATCH_IMAGES and len(batched["batched_seconds"]) == 1
        assert batched["speedup"] == pytest.approx(batched["ratios"][0], rel=1e-3)
        assert batched["images_per_s_batched"] > 0 and batched["images_per_s_sequential"] > 0
        assert (tmp_path / "models" / "diffusion" / figures["model"] / "model_index.json").is_file()
    assert (tmp_path / "models" / "diffusion" / "sdxl-tinycfg" / "text_encoder_2").is_dir()
    assert result["tiny"] is True and result["device"] == "cpu"
    for key in ("python", "torch", "diffusers", "transformers", "multipass"):
        assert result["versions"][key]
    assert set(result["targets"]) == {
        "engine_vs_raw_eager",
        "compiled_vs_raw_eager_sd15",
        "lora_switch_fraction",
        "sdxl_engine_vs_raw",
    }
    assert result["targets"]["compiled_vs_raw_eager_sd15"]["reasons"]["sd15.base"].startswith("skipped")
    assert (tmp_path / "out" / "pytest.xml").is_file()
