"""Where each feature lives in a model directory: one rule per feature, the layout the loaders read.

Each rule looks at names and a few JSON fields only (no model is loaded; the standard library, plus numpy
through :mod:`multipass.face_detection`), and says whether the feature is there, which files it uses, and
what is missing. docs/CONTRACTS.md ("Model directory") describes the layout; tests/unit/models/
test_model_features_align.py runs these rules and the services' own loaders over the same directories so
the two cannot drift apart. :mod:`.features` turns the findings into the report.

| feature | uses |
|---|---|
| ``base`` | ``diffusion/<model>/model_index.json`` (a complete diffusers SD1.5 or SDXL pipeline) or ``diffusion/<model>.safetensors`` (:mod:`.base_models`) |
| ``inpaint`` | ``diffusion/<model>/unet_inpaint/config.json`` (9-channel inpainting UNet) |
| ``controlnet:<kind>`` | ``diffusion/controlnet/<family>/<kind>/config.json`` (SD1.5 also ``controlnet/<kind>/``), for a family with a base model |
| ``preprocessor:<kind>`` | ``diffusion/preprocessors/<kind>/config.json`` (depth, pose), ``hed/ControlNetHED.pth``, ``lineart/sk_model.pth`` (or the same as ``.safetensors``) |
| ``sam`` | ``segmentation/sam/``: ``config.json`` naming the weights, else ``sam_vit_{h,l,b}*.pth`` |
| ``text_masks`` | ``segmentation/grounding/config.json`` of a GroundingDINO or OWLv2 model |
| ``faces`` | ``segmentation/faces/``: a landmark detector (``det_10g.onnx``, ...), else the Haar fallback |
| ``faceid`` | ``diffusion/ip_adapter/<family>/faceid/ip-adapter-faceid.{safetensors,bin}`` + the face embedder |
| ``controlnet:composition`` | ``diffusion/ip_adapter/<family>/composition/ip_plus_composition_<family>.safetensors`` + ``diffusion/ip_adapter/image_encoder/`` (``config.json``, ``model.safetensors``) |
| ``face_swap`` | ``diffusion/face_swapper/`` ``inswapper_128.onnx`` + ``arcface.onnx`` (or as its config.json names them) |
| ``upscaler`` | ``diffusion/upscaler/``: one ``*.pth``/``*.safetensors`` file, or a diffusers x4 upscaler |
| ``face_restorer`` | ``diffusion/face_restorer/``: one ``*.pth``/``*.safetensors`` file |
| ``prompt_expander`` | ``diffusion/prompt_expander/``: a transformers causal LM (config, tokenizer, weights) |
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from multipass.errors import MultipassError
from multipass.model_catalog.base_models import find_base_models
from multipass.model_catalog.lora_folder import (  # noqa: F401 - NAMED_LORA_NAME: the layout's rule, re-exported
    NAMED_LORA_NAME,
    NAMED_LORAS_DIR,
    describe_ignored,
    ignored_lora_files,
    named_lora_files,
)

DIFFUSION = "diffusion"
SEGMENTATION = "segmentation"
SERVICES = (DIFFUSION, SEGMENTATION)

CONTROLNET_KINDS = ("pose", "canny", "depth", "lineart", "mlsd", "hed", "tile", "qr")
#: ControlNet kinds always reported (a profile provides each); the others only when installed.
REPORTED_CONTROLNETS = CONTROLNET_KINDS
#: Preprocessors whose conditioning image needs weights, and the files that may hold them (first: the
#: one ``models pull`` writes; hed and lineart are ControlNet 1.1's published annotator files).
PREPROCESSOR_FILES = {
    "depth": ("depth/config.json",),
    "pose": ("pose/config.json",),
    "hed": ("hed/ControlNetHED.pth", "hed/ControlNetHED.safetensors"),
    "lineart": ("lineart/sk_model.pth", "lineart/sk_model.safetensors"),
}
REPORTED_PREPROCESSORS = ("depth", "pose", "hed", "lineart")
SAM_VARIANTS = ("vit_h", "vit_l", "vit_b")
TEXT_DETECTORS = ("grounding-dino", "owlv2")
FACEID_WEIGHTS = ("ip-adapter-faceid.safetensors", "ip-adapter-faceid.bin")
#: ``controlnet=composition``: the IP Composition Adapter and the CLIP image encoder it reads.
COMPOSITION = "controlnet:composition"
IMAGE_ENCODER_FILES = ("ip_adapter/image_encoder/config.json", "ip_adapter/image_encoder/model.safetensors")
SWAPPER_FILE = "inswapper_128.onnx"
EMBEDDER_FILE = "arcface.onnx"
SINGLE_WEIGHT_SUFFIXES = (".pth", ".safetensors")

#: Every feature name a manifest profile may list.
FEATURE_NAMES = (
    "base",
    "inpaint",
    *(f"controlnet:{kind}" for kind in CONTROLNET_KINDS),
    COMPOSITION,
    *(f"preprocessor:{kind}" for kind in PREPROCESSOR_FILES),
    "sam",
    "text_masks",
    "faces",
    "faceid",
    "face_swap",
    "upscaler",
    "face_restorer",
    "prompt_expander",
    "named_loras",
)


@dataclass(frozen=True)
class Found:
    available: bool
    paths: tuple[str, ...] = ()
    detail: str = ""
    fallback: bool = False
    #: Family of the models the fix should fit ("" = any).
    family: str = ""
    #: The feature whose profile fixes this one, when another's ("base" for a ControlNet without its model).
    fixed_by: str = ""


@dataclass(frozen=True)
class Rule:
    name: str
    service: str
    find: Callable[[Path, dict[str, str]], Found]
    #: Reported even when missing (else only when something of it is installed).
    always: bool = True


# -- the rules ---------------------------------------------------------------------------------------


def _rel(model_dir: Path, path: Path) -> str:
    try:
        return path.relative_to(model_dir).as_posix()
    except ValueError:
        return str(path)


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def base_models(model_dir: Path) -> dict[str, str]:
    """Family by model name of every base model under ``diffusion/``: diffusers pipelines and single-file
    checkpoints ("" for one that is neither SD1.5 nor SDXL)."""
    return {name: model.family for name, model in find_base_models(model_dir).items()}


def _find_base(model_dir: Path, models: dict[str, str]) -> Found:
    found = find_base_models(model_dir)
    unusable = [model for model in found.values() if model.problem]
    if unusable:  # the diffusion worker does not start on such a model
        families = {model.family for model in unusable if model.family}
        return Found(
            False,
            tuple(_rel(model_dir, model.path) for model in unusable),
            "; ".join(model.problem for model in unusable) + "; the diffusion worker does not start on it",
            family=next(iter(families)) if len(families) == 1 else "sd15",
        )
    if not found:
        return Found(
            False,
            detail="no diffusers model under diffusion/<name>/ nor diffusion/<name>.safetensors",
            family="sd15",
        )
    listed = ", ".join(
        f"{name} ({model.family}{', single file' if model.path.is_file() else ''})"
        for name, model in found.items()
    )
    return Found(True, tuple(_rel(model_dir, model.path) for model in found.values()), listed)


def _find_inpaint(model_dir: Path, models: dict[str, str]) -> Found:
    found = [
        name for name in models if (model_dir / "diffusion" / name / "unet_inpaint" / "config.json").is_file()
    ]
    without = [name for name, family in models.items() if family and name not in found]
    if not found:
        families = {models[name] for name in without}
        return Found(
            False,
            detail="no diffusion/<model>/unet_inpaint/ (person passes inpaint with the base UNet)",
            family="sdxl" if families == {"sdxl"} else "sd15",
        )
    detail = f"models with one: {', '.join(found)}" + (f"; without: {', '.join(without)}" if without else "")
    return Found(True, tuple(f"diffusion/{name}/unet_inpaint" for name in found), detail)


def controlnet_dirs(model_dir: Path, family: str, kind: str) -> list[Path]:
    root = Path(model_dir) / "diffusion" / "controlnet"
    candidates = [root / family / kind] + ([root / kind] if family == "sd15" else [])
    return [path for path in candidates if (path / "config.json").is_file()]


def _controlnet_rule(kind: str) -> Callable[[Path, dict[str, str]], Found]:
    def find(model_dir: Path, models: dict[str, str]) -> Found:
        served = {family for family in models.values() if family}
        usable, orphaned = [], []
        for family in ("sd15", "sdxl"):
            dirs = controlnet_dirs(model_dir, family, kind)
            if dirs:
                (usable if family in served else orphaned).append((family, dirs[0]))
        if usable:
            return Found(
                True,
                tuple(_rel(model_dir, path) for _, path in usable),
                f"for {', '.join(family for family, _ in usable)}",
            )
        if orphaned:
            family, path = orphaned[0]
            return Found(
                False,
                (_rel(model_dir, path),),
                f"{_rel(model_dir, path)} is installed but no {family} base model is",
                family=family,
                fixed_by="base",
            )
        return Found(False, detail=f"no diffusion/controlnet/<family>/{kind}/", family=_fix_family(served))

    return find


def _preprocessor_rule(kind: str) -> Callable[[Path, dict[str, str]], Found]:
    def find(model_dir: Path, models: dict[str, str]) -> Found:
        root = model_dir / "diffusion" / "preprocessors"
        what = f"{kind} conditioning from a photo"
        for name in PREPROCESSOR_FILES[kind]:
            if (root / name).is_file():
                return Found(True, (_rel(model_dir, (root / name).parent),), what)
        return Found(False, detail=f"{what} needs {_rel(model_dir, root / PREPROCESSOR_FILES[kind][0])}")

    return find


def _find_sam(model_dir: Path, models: dict[str, str]) -> Found:
    sam_dir = model_dir / "segmentation" / "sam"
    config = sam_dir / "config.json"
    if config.is_file():
        data = _read_json(config)
        weights = data.get("weights") if data else None
        if not isinstance(weights, str) or not weights:
            return Found(
                False, (_rel(model_dir, config),), f"{_rel(model_dir, config)} names no weights file"
            )
        path = sam_dir / weights
        if not path.is_file():
            return Found(False, (_rel(model_dir, path),), f"{_rel(model_dir, path)} is missing")
        return Found(True, (_rel(model_dir, path),), f"SAM {data.get('variant', 'custom')} (config.json)")
    for variant in SAM_VARIANTS:
        found = sorted(sam_dir.glob(f"sam_{variant}*.pth"))
        if found:
            return Found(True, (_rel(model_dir, found[0]),), f"SAM {variant}")
    return Found(
        False, detail="no segmentation/sam/sam_vit_{b,l,h}*.pth (the segmentation service needs one)"
    )


def _find_text_masks(model_dir: Path, models: dict[str, str]) -> Found:
    config = model_dir / "segmentation" / "grounding" / "config.json"
    if not config.is_file():
        return Found(
            False, detail="no segmentation/grounding/config.json (the segmentation service needs one)"
        )
    model_type = (_read_json(config) or {}).get("model_type")
    if model_type not in TEXT_DETECTORS:
        return Found(
            False,
            (_rel(model_dir, config.parent),),
            f"model_type {model_type!r} is not one of {', '.join(TEXT_DETECTORS)}",
        )
    return Found(True, (_rel(model_dir, config.parent),), f"{model_type} (transformers)")


def _find_faces(model_dir: Path, models: dict[str, str]) -> Found:
    from multipass.face_detection import face_detector_choice

    try:
        choice = face_detector_choice(model_dir)
    except MultipassError as error:
        return Found(False, detail=str(error))
    if choice.has_landmarks:
        if choice.path is None or not choice.path.is_file():
            return Found(False, detail=f"landmark detector {choice.path} is missing")
        return Found(
            True, (_rel(model_dir, choice.path),), "landmark detector (boxes + 5 landmarks, aligned crops)"
        )
    if choice.path is not None and not choice.path.is_file():
        return Found(False, detail=f"Haar cascade {choice.path} is missing")
    uses = (
        (_rel(model_dir, choice.path),)
        if choice.path is not None
        else ("opencv:haarcascade_frontalface_default.xml",)
    )
    return Found(
        True,
        uses,
        "Haar cascade fallback (boxes only, no landmarks; misses turned, small and dark faces)",
        fallback=True,
    )


def face_swapper_files(model_dir: Path) -> tuple[Path, Path]:
    """(swapper, embedder) of ``diffusion/face_swapper/``, named by its optional config.json."""
    directory = Path(model_dir) / "diffusion" / "face_swapper"
    names = _read_json(directory / "config.json") or {}
    return directory / names.get("swapper", SWAPPER_FILE), directory / names.get("embedder", EMBEDDER_FILE)


def reference_detector(model_dir: Path) -> Path | None:
    """The landmark detector beside the face embedder that aligns reference faces (its config.json's
    ``detector``, else ``det_10g.onnx``/``scrfd*.onnx``/``det_*.onnx``), or None (central squares)."""
    from multipass.face_detection import find_landmark_detector

    directory = Path(model_dir) / "diffusion" / "face_swapper"
    named = (_read_json(directory / "config.json") or {}).get("detector")
    if isinstance(named, str) and named:
        return directory / named
    return find_landmark_detector(directory)


def _alignment(model_dir: Path) -> tuple[tuple[str, ...], str, bool] | None:
    """(paths, detail, fallback) of how reference faces are cropped for the embedder; None when the
    detector diffusion/face_swapper/config.json names is missing (the embedder would not load)."""
    detector = reference_detector(model_dir)
    if detector is None:
        return (
            (),
            "reference images as central squares (no landmark detector in diffusion/face_swapper/)",
            True,
        )
    if not detector.is_file():
        return None
    return (_rel(model_dir, detector),), "reference faces aligned by their landmarks", False


def _missing_detector(model_dir: Path) -> Found:
    named = _rel(model_dir, reference_detector(model_dir))
    return Found(False, detail=f"{named}, named by diffusion/face_swapper/config.json, is missing")


def _find_faceid(model_dir: Path, models: dict[str, str]) -> Found:
    embedder = face_swapper_files(model_dir)[1]
    served = sorted({family for family in models.values() if family})
    with_weights = {}
    for family in served or ["sd15"]:
        directory = model_dir / "diffusion" / "ip_adapter" / family / "faceid"
        weights = next((directory / name for name in FACEID_WEIGHTS if (directory / name).is_file()), None)
        if weights is not None:
            with_weights[family] = weights
    if with_weights and embedder.is_file():
        missing = [family for family in served if family not in with_weights]
        aligned = _alignment(model_dir)
        if aligned is None:
            return _missing_detector(model_dir)
        aligned_by, alignment, fallback = aligned
        detail = f"for {', '.join(with_weights)}" + (f"; not for {', '.join(missing)}" if missing else "")
        paths = (
            *(_rel(model_dir, path) for path in with_weights.values()),
            _rel(model_dir, embedder),
            *aligned_by,
        )
        family = next(iter(with_weights)) if len(with_weights) == 1 else ""
        return Found(True, paths, f"{detail}; {alignment}", fallback=fallback, family=family)
    lacking = []
    if not with_weights:
        lacking.append(f"diffusion/ip_adapter/<family>/faceid/{FACEID_WEIGHTS[0]}")
    if not embedder.is_file():
        lacking.append(_rel(model_dir, embedder))
    return Found(False, detail=f"needs {' and '.join(lacking)}", family=_fix_family(set(served)))


def composition_weights(model_dir: Path, family: str) -> Path:
    name = f"ip_plus_composition_{family}.safetensors"
    return Path(model_dir) / "diffusion" / "ip_adapter" / family / "composition" / name


def _find_composition(model_dir: Path, models: dict[str, str]) -> Found:
    served = sorted({family for family in models.values() if family})
    encoder = [model_dir / "diffusion" / name for name in IMAGE_ENCODER_FILES]
    with_weights = {f: composition_weights(model_dir, f) for f in served or ["sd15"]}
    with_weights = {f: path for f, path in with_weights.items() if path.is_file()}
    missing_encoder = [_rel(model_dir, path) for path in encoder if not path.is_file()]
    if with_weights and served and not missing_encoder:
        missing = [family for family in served if family not in with_weights]
        detail = f"IP Composition Adapter for {', '.join(with_weights)}" + (
            f"; not for {', '.join(missing)}" if missing else ""
        )
        paths = (
            *(_rel(model_dir, path) for path in with_weights.values()),
            _rel(model_dir, encoder[0].parent),
        )
        family = next(iter(with_weights)) if len(with_weights) == 1 else ""
        return Found(True, paths, detail, family=family)
    lacking = (
        []
        if with_weights
        else ["diffusion/ip_adapter/<family>/composition/ip_plus_composition_<family>.safetensors"]
    )
    lacking += missing_encoder
    if not lacking:  # weights of a family no base model is of
        return Found(False, detail="no base model of the adapter's family is installed", fixed_by="base")
    return Found(False, detail=f"needs {' and '.join(lacking)}", family=_fix_family(set(served)))


def _find_face_swap(model_dir: Path, models: dict[str, str]) -> Found:
    files = face_swapper_files(model_dir)
    missing = [_rel(model_dir, path) for path in files if not path.is_file()]
    if missing:
        return Found(False, detail=f"needs {' and '.join(missing)}")
    aligned = _alignment(model_dir)
    if aligned is None:
        return _missing_detector(model_dir)
    aligned_by, alignment, fallback = aligned
    paths = (*(_rel(model_dir, path) for path in files), *aligned_by)
    return Found(True, paths, f"swapper + face embedder; {alignment}", fallback=fallback)


def single_weight_files(directory: Path) -> list[Path]:
    """The ``*.pth``/``*.safetensors`` files directly in ``directory``, by name."""
    if not directory.is_dir():
        return []
    return sorted(
        p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in SINGLE_WEIGHT_SUFFIXES
    )


def _single_file_rule(component: str, *, diffusers_ok: bool) -> Callable[[Path, dict[str, str]], Found]:
    def find(model_dir: Path, models: dict[str, str]) -> Found:
        directory = model_dir / "diffusion" / component
        if diffusers_ok and (directory / "model_index.json").is_file():
            return Found(True, (_rel(model_dir, directory),), "diffusers x4 upscaler")
        files = single_weight_files(directory)
        if len(files) == 1:
            return Found(True, (_rel(model_dir, files[0]),), "architecture read from the file (spandrel)")
        if files:
            names = ", ".join(p.name for p in files)
            return Found(
                False,
                (_rel(model_dir, directory),),
                f"{len(files)} weights files ({names}); keep exactly one",
            )
        return Found(False, detail=f"no diffusion/{component}/*.pth or *.safetensors")

    return find


def _find_prompt_expander(model_dir: Path, models: dict[str, str]) -> Found:
    directory = model_dir / "diffusion" / "prompt_expander"
    needed = [directory / "config.json"]
    if not (directory / "tokenizer.json").is_file():
        needed.append(directory / "tokenizer_config.json")
    if not (directory / "pytorch_model.bin").is_file():
        needed.append(directory / "model.safetensors")
    missing = [_rel(model_dir, path) for path in needed if not path.is_file()]
    if missing:
        return Found(False, detail=f"needs {', '.join(missing)}")
    return Found(True, (_rel(model_dir, directory),), "transformers causal language model")


def _find_named_loras(model_dir: Path, models: dict[str, str]) -> Found:
    files = named_lora_files(model_dir)
    ignored = ignored_lora_files(model_dir)
    note = f"; {describe_ignored(ignored)}" if ignored else ""
    if not files:
        return Found(
            False,
            tuple(path for path, _ in ignored),
            f"no {NAMED_LORAS_DIR}/<NAME>.safetensors (optional: <lora:NAME:W> tags){note}",
        )
    return Found(
        True,
        tuple(_rel(model_dir, path) for path in files.values()),
        f"{len(files)} for every tenant: " + ", ".join(f"<lora:{name}:W>" for name in files) + note,
    )


def _fix_family(served: set[str]) -> str:
    """The family a fix should fit: the one base models are of when there is one, else SD1.5."""
    return next(iter(served)) if len(served) == 1 else "sd15"


RULES: tuple[Rule, ...] = (
    Rule("base", DIFFUSION, _find_base),
    Rule("inpaint", DIFFUSION, _find_inpaint),
    *(
        Rule(f"controlnet:{kind}", DIFFUSION, _controlnet_rule(kind), always=kind in REPORTED_CONTROLNETS)
        for kind in CONTROLNET_KINDS
    ),
    Rule(COMPOSITION, DIFFUSION, _find_composition),
    *(
        Rule(
            f"preprocessor:{kind}", DIFFUSION, _preprocessor_rule(kind), always=kind in REPORTED_PREPROCESSORS
        )
        for kind in PREPROCESSOR_FILES
    ),
    Rule("sam", SEGMENTATION, _find_sam),
    Rule("text_masks", SEGMENTATION, _find_text_masks),
    Rule("faces", SEGMENTATION, _find_faces),
    Rule("faceid", DIFFUSION, _find_faceid),
    Rule("face_swap", DIFFUSION, _find_face_swap),
    Rule("upscaler", DIFFUSION, _single_file_rule("upscaler", diffusers_ok=True)),
    Rule("face_restorer", DIFFUSION, _single_file_rule("face_restorer", diffusers_ok=False)),
    Rule("prompt_expander", DIFFUSION, _find_prompt_expander),
    Rule("named_loras", DIFFUSION, _find_named_loras, always=False),
)
