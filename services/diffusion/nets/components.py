"""Where the optional models live in the model directory, which are installed, and a cache of loaded ones.

The optional models are the finishing passes' networks and the prompt expander, each under
``<MODEL_DIR>/diffusion/<component>/`` (:data:`COMPONENTS`; docs/FINISHING.md). The upscaler and the face
restorer are one weights file each (``*.pth`` or ``*.safetensors``, as published: the architecture is
read from the file, :mod:`.image_models`), or for the upscaler a diffusers x4 upscaler. A component counts
as installed when every file it needs is there (and, for the face swapper, when onnxruntime can be
imported). A pass that needs a missing component raises ``FailedPrecondition`` naming the first missing
file, so the gateway can refuse the job at submit time from the worker's ``Info.capabilities``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from multipass.errors import FailedPrecondition

UPSCALER = "upscaler"
FACE_RESTORER = "face_restorer"
FACE_SWAPPER = "face_swapper"
PROMPT_EXPANDER = "prompt_expander"
COMPONENTS = (UPSCALER, FACE_RESTORER, FACE_SWAPPER, PROMPT_EXPANDER)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
#: Suffixes of the single weights file of the upscaler and the face restorer (pickles are read restricted
#: to tensors, never executing code).
WEIGHT_SUFFIXES = (".pth", ".safetensors")
#: The components that are one weights file of a spandrel-detected architecture.
SINGLE_FILE_COMPONENTS = (UPSCALER, FACE_RESTORER)
#: File names of the face swapper's two ONNX models unless its config.json names others.
DEFAULT_SWAPPER_FILE = "inswapper_128.onnx"
DEFAULT_EMBEDDER_FILE = "arcface.onnx"

T = TypeVar("T")


def component_dir(model_dir: Path, component: str) -> Path:
    if component not in COMPONENTS:
        raise ValueError(f"unknown optional component {component!r}")
    return Path(model_dir) / "diffusion" / component


def is_diffusers_upscaler(directory: Path) -> bool:
    return (Path(directory) / "model_index.json").is_file()


def weight_files(directory: Path) -> list[Path]:
    """The ``*.pth``/``*.safetensors`` files directly in ``directory``, sorted by name."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in WEIGHT_SUFFIXES)


def weights_file(directory: Path) -> Path:
    """The one weights file of an upscaler or face restorer directory; FailedPrecondition otherwise."""
    files = weight_files(directory)
    if not files:
        raise FailedPrecondition(f"{directory} holds no weights file (*.pth or *.safetensors)")
    if len(files) > 1:
        raise FailedPrecondition(
            f"{directory} holds {len(files)} weights files ({', '.join(p.name for p in files)}); keep exactly one"
        )
    return files[0]


def swapper_files(directory: Path) -> tuple[Path, Path]:
    """(swapper, embedder) ONNX files of a face-swapper directory, named by its optional config.json."""
    directory = Path(directory)
    names = {}
    config = directory / CONFIG_FILE
    if config.is_file():
        names = json.loads(config.read_text())
    return (
        directory / names.get("swapper", DEFAULT_SWAPPER_FILE),
        directory / names.get("embedder", DEFAULT_EMBEDDER_FILE),
    )


def missing_files(model_dir: Path, component: str) -> list[Path]:
    """The files ``component`` needs that are absent (empty when it is installed)."""
    directory = component_dir(model_dir, component)
    if component == UPSCALER and is_diffusers_upscaler(directory):
        return []
    if component in SINGLE_FILE_COMPONENTS:
        found = weight_files(directory)
        # Several files are ambiguous: the component is not installed until one is left.
        return [] if len(found) == 1 else [directory / "*.pth|*.safetensors"]
    if component == FACE_SWAPPER:
        needed = list(swapper_files(directory))
        config = directory / CONFIG_FILE
        detector = json.loads(config.read_text()).get("detector") if config.is_file() else None
        if isinstance(detector, str) and detector:  # the embedder does not load without the detector it names
            needed.append(directory / detector)
    else:
        needed = [directory / CONFIG_FILE]
        if not (directory / "tokenizer.json").is_file():
            needed.append(directory / "tokenizer_config.json")
        if not (directory / "pytorch_model.bin").is_file():
            needed.append(directory / WEIGHTS_FILE)
    return [path for path in needed if not path.is_file()]


def missing_packages(component: str) -> list[str]:
    if component == FACE_SWAPPER:
        return [name for name in ("onnxruntime", "onnx") if importlib.util.find_spec(name) is None]
    return []


def installed_capabilities(model_dir: Path) -> list[str]:
    """Names of the optional components installed under ``model_dir`` (for the diffusion Info rpc)."""
    return [
        component
        for component in COMPONENTS
        if not missing_files(model_dir, component) and not missing_packages(component)
    ]


def require(model_dir: Path, component: str, *, needed_by: str) -> Path:
    """The component's directory; FailedPrecondition naming the first missing file or package otherwise."""
    directory = component_dir(model_dir, component)
    if component in SINGLE_FILE_COMPONENTS and not (
        component == UPSCALER and is_diffusers_upscaler(directory)
    ):
        try:
            weights_file(directory)
        except FailedPrecondition as error:
            raise FailedPrecondition(f"{needed_by} needs the {component} model: {error}") from error
    missing = missing_files(model_dir, component)
    if missing:
        raise FailedPrecondition(
            f"{needed_by} needs the {component} model: {missing[0]} is not installed"
            + (f" (nor {', '.join(p.name for p in missing[1:])})" if missing[1:] else "")
        )
    packages = missing_packages(component)
    if packages:
        raise FailedPrecondition(
            f"{needed_by} needs the Python package(s) {', '.join(packages)}, which are not installed"
        )
    return directory


def fingerprint(model_dir: Path, component: str) -> str:
    """Identifies a component's files cheaply (names, config contents, weight sizes): part of cache keys."""
    directory = component_dir(model_dir, component)
    digest = hashlib.sha256(component.encode())
    if directory.is_dir():
        for file in sorted(directory.rglob("*")):
            if not file.is_file():
                continue
            digest.update(str(file.relative_to(directory)).encode() + b"\0")
            if file.suffix == ".json":
                digest.update(file.read_bytes())
            else:
                digest.update(str(file.stat().st_size).encode())
    return digest.hexdigest()


class LoadedModels:
    """A small LRU of loaded models keyed by (directory, device, dtype, files' fingerprint)."""

    def __init__(self, capacity: int = 2):
        self.capacity = capacity
        self._entries: OrderedDict[tuple, object] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple, load: Callable[[], T]) -> T:
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]  # type: ignore[return-value]
        loaded = load()
        with self._lock:
            self._entries[key] = loaded
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        return loaded
