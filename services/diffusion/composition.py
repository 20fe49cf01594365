"""``controlnet=composition``: the IP Composition Adapter, a picture's layout without its look.

The published IP Composition Adapter (``ostris/ip-composition-adapter``, SD1.5 and SDXL) is an IP-Adapter
Plus: the input image's CLIP-H penultimate hidden states go through a perceiver resampler to 16 tokens of
the UNet's cross-attention width, which every cross-attention attends to beside the prompt. Trained on
layout, it carries where things are and how bodies stand, while the prompt decides who and what they
look like. Unlike a ControlNet it does not pin edges to pixels.

Model directory (docs/DIFFUSION.md):

- ``diffusion/ip_adapter/<family>/composition/ip_plus_composition_<family>.safetensors``: the released
  file as it is (keys ``image_proj.*``: ``latents``, ``proj_in``, ``layers.<i>.*``, ``proj_out``,
  ``norm_out``; ``ip_adapter.<k>.to_k_ip/to_v_ip.weight``);
- ``diffusion/ip_adapter/image_encoder/``: the CLIP vision model the adapter was trained with
  (``h94/IP-Adapter``'s ``models/image_encoder``: ``config.json`` + ``model.safetensors``), one for both
  families, loaded with transformers' ``CLIPVisionModelWithProjection``.

:class:`CompositionAdapter` (one per model runtime) reads the adapter on the first composition pass and
attaches its layers for that pipeline call only (:func:`CompositionAdapter.attached`): every other pass
runs the unmodified model. ``controlnet_conditioning_scale`` is the adapter's scale (default 1). A pass
takes either this or ``<faceid:...>``: both are image-prompt attention on the same layers.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from multipass.errors import FailedPrecondition
from multipass.model_catalog import layout
from multipass_diffusion import ip_layers, models
from multipass_diffusion.nets.components import LoadedModels

log = logging.getLogger(__name__)

KIND = "composition"
CAPABILITY = f"controlnet:{KIND}"


def weights_path(model_dir: Path, family: str) -> Path:
    """The adapter file of ``family`` (the model catalog's layout)."""
    return layout.composition_weights(model_dir, family)


def encoder_dir(model_dir: Path) -> Path:
    return _encoder_files(model_dir)[0].parent


def missing_files(model_dir: Path, family: str) -> list[Path]:
    """Files ``controlnet=composition`` needs on a model of ``family`` that are absent (empty: installed)."""
    needed = [weights_path(model_dir, family), *_encoder_files(model_dir)]
    return [path for path in needed if not path.is_file()]


def installed(model_dir: Path, family: str) -> bool:
    return not missing_files(model_dir, family)


def fingerprint(model_dir: Path, family: str) -> str:
    """The adapter's and the encoder's files (names, sizes, the encoder's config): part of the pass-cache key."""
    return f"composition:{_files_digest([weights_path(model_dir, family), *_encoder_files(model_dir)])}"


def _encoder_files(model_dir: Path) -> list[Path]:
    return [models.diffusion_root(model_dir) / name for name in layout.IMAGE_ENCODER_FILES]


def _files_digest(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0")
        if path.suffix == ".json" and path.is_file():
            digest.update(path.read_bytes())
        elif path.is_file():
            digest.update(str(path.stat().st_size).encode())
    return digest.hexdigest()[:16]


class ImageEncoder:
    """The CLIP vision model and its preprocessing: an image's penultimate hidden states, as IP-Adapter
    Plus reads them (and those of a black image, its "no image")."""

    def __init__(self, directory: Path, *, device: str, dtype):
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        try:
            self.model = CLIPVisionModelWithProjection.from_pretrained(
                str(directory), local_files_only=True, torch_dtype=dtype
            ).to(device)
        except (OSError, ValueError, RuntimeError) as error:
            raise FailedPrecondition(f"{directory} is not a loadable CLIP vision model: {error}") from error
        self.model.eval()
        size = int(self.model.config.image_size)
        # As diffusers' load_ip_adapter builds it when an encoder folder comes without a processor config.
        self.processor = CLIPImageProcessor(size=size, crop_size=size)
        self.hidden_size = int(self.model.config.hidden_size)
        self._lock = threading.Lock()

    def hidden_states(self, image: Image.Image):
        """(conditional, unconditional) penultimate hidden states, each (1, tokens, hidden)."""
        import torch

        pixels = self.processor(images=image.convert("RGB"), return_tensors="pt").pixel_values
        pixels = pixels.to(device=self.model.device, dtype=self.model.dtype)
        with self._lock, torch.inference_mode():
            conditional = self.model(pixels, output_hidden_states=True).hidden_states[-2]
            unconditional = self.model(torch.zeros_like(pixels), output_hidden_states=True).hidden_states[-2]
        return conditional, unconditional


_ENCODERS = LoadedModels(capacity=1)


def load_encoder(model_dir: Path, *, device: str, dtype) -> ImageEncoder:
    """The CLIP image encoder of ``model_dir``, loaded once per (directory, device, dtype, files)."""
    directory = encoder_dir(model_dir)
    missing = [path for path in _encoder_files(model_dir) if not path.is_file()]
    if missing:
        raise FailedPrecondition(
            f"controlnet=composition needs the CLIP image encoder: {missing[0]} is not installed"
        )
    key = (str(directory), device, str(dtype), _files_digest(_encoder_files(model_dir)))
    return _ENCODERS.get(key, lambda: ImageEncoder(directory, device=device, dtype=dtype))


@dataclass
class _Weights:
    path: Path
    state: dict


class CompositionAdapter:
    """The IP Composition Adapter of one model runtime: read once, attached for one pipeline call at a time."""

    def __init__(self, model_dir: Path, family: str, *, label: str, device: str, dtype):
        self.model_dir = Path(model_dir)
        self.family = family
        self.label = label
        self.device = device
        self.dtype = dtype
        self._weights: _Weights | None = None
        #: Layers per component set (the base model's, a checkpoint tune's), gone with their set.
        self._layers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._weights is not None

    @contextlib.contextmanager
    def attached(
        self, components, pipe, image: Image.Image, *, scale: float, guidance_scale: float
    ) -> Iterator[dict]:
        """Attach the adapter to ``components``' UNets for one call of ``pipe``; yields the pipeline's
        ``ip_adapter_image_embeds``. The UNets get their own processors back after (also on error)."""
        encoder = load_encoder(self.model_dir, device=self.device, dtype=self.dtype)
        with self._lock:
            weights = self._load(encoder, components)
            layers = self._layers.get(components)
            if layers is None:
                layers = ip_layers.IpLayers(components, weights.state, source=weights.path)
                self._layers[components] = layers
            embeds = self._embeds(encoder, image, pipe.unet, guidance_scale)
            layers.attach(scale)
            try:
                yield {"ip_adapter_image_embeds": [embeds]}
            finally:
                layers.detach()

    @staticmethod
    def _embeds(encoder: ImageEncoder, image: Image.Image, unet, guidance_scale: float):
        import torch

        conditional, unconditional = encoder.hidden_states(image)
        # (batch, images, tokens, hidden): one image per prompt; the pipeline splits the halves to guide.
        conditional = conditional.unsqueeze(1).to(device=unet.device, dtype=unet.dtype)
        if not ip_layers.uses_guidance(unet, guidance_scale):
            return conditional
        unconditional = unconditional.unsqueeze(1).to(device=unet.device, dtype=unet.dtype)
        return torch.cat([unconditional, conditional])

    def _load(self, encoder: ImageEncoder, components) -> _Weights:
        if self._weights is not None:
            return self._weights
        path = weights_path(self.model_dir, self.family)
        if not path.is_file():
            raise FailedPrecondition(
                f"controlnet=composition needs the IP Composition Adapter on model {self.label}: {path} is not installed"
            )
        state = ip_layers.read_weights(path, "IP Composition Adapter")
        check(path, state, encoder.hidden_size, components.cross_attention_dim)
        self._weights = _Weights(path, state)
        log.info("composition adapter loaded", extra={"model": self.label, "path": str(path)})
        return self._weights


def check(path: Path, state: dict, encoder_width: int, cross_attention_dim: int) -> None:
    """FailedPrecondition unless ``state`` is an IP-Adapter Plus that fits the encoder and the UNet."""
    projection = state["image_proj"]
    if (
        "latents" not in projection
        or "proj_in.weight" not in projection
        or "proj_out.weight" not in projection
    ):
        raise FailedPrecondition(
            f"{path} is not an IP-Adapter Plus file (its image projection has no latents/proj_in/proj_out); "
            "the IP Composition Adapter is one"
        )
    takes = int(projection["proj_in.weight"].shape[1])
    if takes != encoder_width:
        raise FailedPrecondition(
            f"{path} reads {takes}-d image features, the image encoder gives {encoder_width}"
        )
    ip_layers.check_width(path, int(projection["proj_out.weight"].shape[0]), cross_attention_dim)
