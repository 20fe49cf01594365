"""One set of components per model (or checkpoint tune), and every pipeline built on it with ``from_pipe``.

The text-to-image pipeline loaded from disk owns the components (UNet, VAE, text encoders, tokenizers).
Image-to-image, inpainting and ControlNet pipelines are made from it with ``from_pipe``, which reuses the
same module objects, so no weight is ever loaded or held twice. Inpainting uses the model's 9-channel
inpainting UNet when it has one; otherwise the base UNet inpaints in latent space (the diffusers inpaint
pipelines blend the noised original back outside the mask at every step).
"""

from __future__ import annotations

import threading

TASKS = ("txt2img", "img2img", "inpaint")

_CLASSES = {
    ("sd15", "txt2img", False): "StableDiffusionPipeline",
    ("sd15", "img2img", False): "StableDiffusionImg2ImgPipeline",
    ("sd15", "inpaint", False): "StableDiffusionInpaintPipeline",
    ("sd15", "txt2img", True): "StableDiffusionControlNetPipeline",
    ("sd15", "img2img", True): "StableDiffusionControlNetImg2ImgPipeline",
    ("sd15", "inpaint", True): "StableDiffusionControlNetInpaintPipeline",
    ("sdxl", "txt2img", False): "StableDiffusionXLPipeline",
    ("sdxl", "img2img", False): "StableDiffusionXLImg2ImgPipeline",
    ("sdxl", "inpaint", False): "StableDiffusionXLInpaintPipeline",
    ("sdxl", "txt2img", True): "StableDiffusionXLControlNetPipeline",
    ("sdxl", "img2img", True): "StableDiffusionXLControlNetImg2ImgPipeline",
    ("sdxl", "inpaint", True): "StableDiffusionXLControlNetInpaintPipeline",
}


class ComponentSet:
    """The components of one model in memory and the pipelines built on them."""

    def __init__(self, pipe, *, family: str, label: str, inpaint_unet=None):
        self.pipe = pipe
        self.family = family
        self.label = label
        self.inpaint_unet = inpaint_unet
        self.dtype = pipe.unet.dtype
        self._pipelines: dict[tuple[str, int], object] = {}
        self._lock = threading.Lock()
        self.scheduler_config = dict(pipe.scheduler.config)
        #: IP-Adapter FaceID layers on these UNets, once a faceid pass used them (``multipass_diffusion.faceid``).
        self.faceid = None

    @property
    def unets(self) -> list:
        return [self.pipe.unet] + ([self.inpaint_unet] if self.inpaint_unet is not None else [])

    @property
    def tokenizers(self) -> list:
        return [t for t in (self.pipe.tokenizer, getattr(self.pipe, "tokenizer_2", None)) if t is not None]

    @property
    def text_encoders(self) -> list:
        return [
            t for t in (self.pipe.text_encoder, getattr(self.pipe, "text_encoder_2", None)) if t is not None
        ]

    @property
    def cross_attention_dim(self) -> int:
        return int(self.pipe.unet.config.cross_attention_dim)

    @property
    def native_size(self) -> int:
        return int(self.pipe.unet.config.sample_size) * int(self.pipe.vae_scale_factor)

    def pipeline(self, task: str, controlnet=None):
        """The pipeline for ``task`` (optionally with ``controlnet``), built once on these components."""
        import diffusers

        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}")
        key = (task, id(controlnet) if controlnet is not None else 0)
        with self._lock:
            cached = self._pipelines.get(key)
            if cached is not None:
                return cached
            if task == "txt2img" and controlnet is None:
                built = self.pipe
            else:
                pipeline_class = getattr(diffusers, _CLASSES[(self.family, task, controlnet is not None)])
                overrides = {}
                if controlnet is not None:
                    overrides["controlnet"] = controlnet
                if task == "inpaint" and self.inpaint_unet is not None:
                    overrides["unet"] = self.inpaint_unet
                # from_pipe casts to float32 unless told the dtype: the modules are shared, so keep theirs.
                built = pipeline_class.from_pipe(self.pipe, dtype=self.dtype, **overrides)
                built.set_progress_bar_config(disable=True)
            self._pipelines[key] = built
            return built

    def forget_controlnet(self, controlnet) -> None:
        with self._lock:
            for key in [k for k in self._pipelines if k[1] == id(controlnet)]:
                del self._pipelines[key]


def checkpoint_components(base: ComponentSet, path, layout: str, *, label: str, model_path) -> ComponentSet:
    """A second component set whose UNet and text encoder(s) come from a checkpoint tune file.

    ``layout`` "diffusers": one safetensors file with keys prefixed ``unet.``, ``text_encoder.`` and
    (SDXL) ``text_encoder_2.``; parts it lacks are shared with the base model. ``layout`` "ldm": an
    original-format single file (``model.diffusion_model.*``), converted by diffusers' single-file loader
    with the base model's configs (read locally, never downloaded).
    """
    import torch
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file

    device = base.pipe.unet.device
    overrides: dict[str, object] = {}
    if layout == "diffusers":
        state = load_file(str(path))
        parts: dict[str, dict] = {}
        for key, tensor in state.items():
            prefix, _, rest = key.partition(".")
            parts.setdefault(prefix, {})[rest] = tensor
        unet = UNet2DConditionModel.from_config(base.pipe.unet.config)
        unet.load_state_dict(parts.pop("unet"), strict=True)
        overrides["unet"] = unet.to(device=device, dtype=base.dtype)
        for name in ("text_encoder", "text_encoder_2"):
            if name in parts and getattr(base.pipe, name, None) is not None:
                template = getattr(base.pipe, name)
                encoder = type(template)(template.config)
                weights = parts.pop(name)
                if not hasattr(encoder, "text_model"):
                    weights = {k.removeprefix("text_model."): v for k, v in weights.items()}
                encoder.load_state_dict(weights, strict=True)
                overrides[name] = encoder.to(device=device, dtype=base.dtype)
    else:
        keep = {
            k: v
            for k, v in base.pipe.components.items()
            if k not in ("unet", "text_encoder", "text_encoder_2")
        }
        loaded = type(base.pipe).from_single_file(
            str(path), config=str(model_path), local_files_only=True, dtype=base.dtype, **keep
        )
        overrides = {
            k: getattr(loaded, k).to(device)
            for k in ("unet", "text_encoder", "text_encoder_2")
            if getattr(loaded, k, None) is not None
        }
    with torch.no_grad():
        pipe = type(base.pipe).from_pipe(base.pipe, dtype=base.dtype, **overrides)
    pipe.set_progress_bar_config(disable=True)
    return ComponentSet(pipe, family=base.family, label=label)
