"""Loading the segmentation models from the model directory (``<MODEL_DIR>/segmentation/``).

```
segmentation/sam/         sam_vit_b.pth | sam_vit_l.pth | sam_vit_h.pth (official checkpoints, any suffix),
                          or config.json {"variant": "vit_b"|"vit_l"|"vit_h"|"custom", "weights": FILE, ...}
segmentation/grounding/   a transformers detector directory (config.json, weights, processor files):
                          GroundingDINO (model_type grounding-dino) or OWLv2 (model_type owlv2)
segmentation/faces/       optional: a landmark detector det_10g.onnx | scrfd*.onnx | det_*.onnx (SCRFD, ONNX),
                          or config.json {"detector": "scrfd", "model": FILE} | {"detector": "haar",
                          "cascade": FILE}; nothing there: OpenCV's frontal-face cascade (the Haar fallback)
```

Official checkpoints and custom configurations (the tiny test model) take the same path: build the
architecture, load the state dict strictly, move to the device. A missing or unreadable model raises
``FailedPrecondition`` naming the file; nothing ever stands in for a model that is not there.
"""

from __future__ import annotations

import json
import logging
import pickle
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from segment_anything import sam_model_registry
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from multipass.errors import FailedPrecondition
from multipass_segmentation.faces import (
    FaceDetector,
    FaceDetectorChoice,
    HaarFaceDetector,
    LandmarkFaceDetector,
    face_detector_choice_in,
)
from multipass_segmentation.grounding import GroundingDinoDetector, Owlv2Detector, TextDetector

log = logging.getLogger(__name__)

SAM_VARIANTS = ("vit_h", "vit_l", "vit_b")
#: Keys of a custom SAM configuration (all required for variant "custom").
CUSTOM_SAM_KEYS = (
    "image_size", "patch_size", "encoder_embed_dim", "encoder_depth", "encoder_num_heads",
    "encoder_global_attn_indexes", "window_size", "prompt_embed_dim", "mask_in_chans",
    "decoder_depth", "decoder_mlp_dim", "decoder_num_heads", "iou_head_hidden_dim",
)  # fmt: skip
SUPPORTED_DETECTORS = ("grounding-dino", "owlv2")


@dataclass
class SegmentationModels:
    sam: Sam
    detector: TextDetector
    faces: FaceDetector
    device: torch.device
    sam_source: Path
    detector_source: Path
    faces_source: Path
    #: Which face detector runs: the landmark detector or the Haar fallback (``describe()`` says which).
    faces_choice: FaceDetectorChoice


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FailedPrecondition(f"device {name!r} requested but CUDA is not available")
    return torch.device(name)


def load_models(
    model_dir: Path, device: torch.device, *, max_boxes_per_phrase: int = 20, face_max_side: int = 1024
) -> SegmentationModels:
    root = Path(model_dir) / "segmentation"
    sam, sam_source = load_sam(root / "sam", device)
    detector, detector_source = load_detector(
        root / "grounding", device, max_boxes_per_phrase=max_boxes_per_phrase
    )
    faces, faces_choice = load_face_detector(root / "faces", max_side=face_max_side, device=device.type)
    log.info(
        "segmentation models loaded",
        extra={
            "sam": str(sam_source),
            "detector": str(detector_source),
            "faces": faces_choice.describe(),
            "device": str(device),
        },
    )
    return SegmentationModels(
        sam, detector, faces, device, sam_source, detector_source, faces.source, faces_choice
    )


def find_sam_checkpoint(sam_dir: Path) -> tuple[Path, dict]:
    """The weights file and the architecture description of the SAM model in ``sam_dir``."""
    config_path = sam_dir / "config.json"
    if config_path.is_file():
        config = _read_json(config_path)
        weights = config.get("weights")
        if not isinstance(weights, str) or not weights:
            raise FailedPrecondition(f"{config_path} names no weights file (key 'weights')")
        return sam_dir / weights, config
    for variant in SAM_VARIANTS:
        found = sorted(sam_dir.glob(f"sam_{variant}*.pth"))
        if found:
            return found[0], {"variant": variant}
    expected = " | ".join(f"sam_{v}.pth" for v in reversed(SAM_VARIANTS))
    raise FailedPrecondition(f"SAM model missing: expected {sam_dir}/{{{expected}}} or {config_path}")


def build_sam_architecture(config: dict, *, source: Path) -> Sam:
    variant = config.get("variant", "custom")
    if variant in SAM_VARIANTS:
        return sam_model_registry[variant](checkpoint=None)
    if variant != "custom":
        raise FailedPrecondition(
            f"{source}: unknown SAM variant {variant!r}; expected one of {', '.join(SAM_VARIANTS)} or custom"
        )
    missing = [key for key in CUSTOM_SAM_KEYS if key not in config]
    if missing:
        raise FailedPrecondition(f"{source}: custom SAM configuration lacks {', '.join(missing)}")
    image_size, patch_size, prompt_dim = (
        int(config["image_size"]),
        int(config["patch_size"]),
        int(config["prompt_embed_dim"]),
    )
    grid = image_size // patch_size
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=int(config["encoder_depth"]),
            embed_dim=int(config["encoder_embed_dim"]),
            img_size=image_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=int(config["encoder_num_heads"]),
            patch_size=patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=tuple(int(i) for i in config["encoder_global_attn_indexes"]),
            window_size=int(config["window_size"]),
            out_chans=prompt_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(image_size, image_size),
            mask_in_chans=int(config["mask_in_chans"]),
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=int(config["decoder_depth"]),
                embedding_dim=prompt_dim,
                mlp_dim=int(config["decoder_mlp_dim"]),
                num_heads=int(config["decoder_num_heads"]),
            ),
            transformer_dim=prompt_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=int(config["iou_head_hidden_dim"]),
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def load_sam(sam_dir: Path, device: torch.device) -> tuple[Sam, Path]:
    weights, config = find_sam_checkpoint(sam_dir)
    if not weights.is_file():
        raise FailedPrecondition(f"SAM weights missing: {weights}")
    model = build_sam_architecture(config, source=sam_dir / "config.json")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    except (RuntimeError, OSError, ValueError, KeyError, EOFError, pickle.UnpicklingError) as error:
        raise FailedPrecondition(
            f"SAM weights {weights} do not load into the {config.get('variant', 'custom')} architecture: {error}"
        ) from error
    return model.to(device).eval(), weights


def load_detector(
    detector_dir: Path, device: torch.device, *, max_boxes_per_phrase: int = 20
) -> tuple[TextDetector, Path]:
    config_path = detector_dir / "config.json"
    if not config_path.is_file():
        raise FailedPrecondition(
            f"grounding detector missing: expected a transformers model at {config_path}"
        )
    model_type = _read_json(config_path).get("model_type")
    if model_type not in SUPPORTED_DETECTORS:
        raise FailedPrecondition(
            f"{config_path}: detector model_type {model_type!r} is not supported; expected {', '.join(SUPPORTED_DETECTORS)}"
        )
    from transformers import AutoProcessor, GroundingDinoForObjectDetection, Owlv2ForObjectDetection
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    model_class, detector_class = {
        "grounding-dino": (GroundingDinoForObjectDetection, GroundingDinoDetector),
        "owlv2": (Owlv2ForObjectDetection, Owlv2Detector),
    }[model_type]
    try:
        processor = AutoProcessor.from_pretrained(detector_dir, local_files_only=True)
        model = model_class.from_pretrained(detector_dir, local_files_only=True)
    except (OSError, ValueError) as error:
        raise FailedPrecondition(f"grounding detector at {detector_dir} does not load: {error}") from error
    detector = detector_class(model, processor, device=device, max_boxes_per_phrase=max_boxes_per_phrase)
    return detector, config_path


def load_face_detector(
    faces_dir: Path, *, max_side: int = 1024, device: str = "cpu"
) -> tuple[FaceDetector, FaceDetectorChoice]:
    """The face detector of ``faces_dir`` (:func:`multipass.face_detection.face_detector_choice_in`).

    A landmark detector runs on ``device`` ("cuda" when available there); the Haar fallback on the CPU.
    FailedPrecondition names the file that is missing or does not load.
    """
    choice = face_detector_choice_in(faces_dir)
    if choice.has_landmarks:
        return LandmarkFaceDetector(choice.path, device=device), choice
    if choice.path is None:
        return HaarFaceDetector.packaged(max_side=max_side), choice
    return HaarFaceDetector(choice.path, max_side=max_side), choice


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise FailedPrecondition(f"{path} is not readable JSON: {error}") from error
    if not isinstance(value, dict):
        raise FailedPrecondition(f"{path} must hold a JSON object")
    return value
