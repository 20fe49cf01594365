"""Tiny random-weight models of the finishing components, in the model-directory layout.

``build(root)`` writes, once, under ``root/"diffusion"`` (docs/FINISHING.md has the layout):

- ``upscaler/RealESRGAN_x4plus-tiny.pth``: a Real-ESRGAN x4 RRDBNet (8 features, 1 block) in the file
  layout Real-ESRGAN publishes (a pickle of ``{"params_ema": state}`` with BasicSR parameter names);
- ``face_restorer/RestoreFormer-tiny.pth``: a RestoreFormer at width 32 (``{"state_dict": state}``);
- ``face_swapper/``: ``inswapper_128.onnx`` with inswapper's signature (``target`` 1x3x128x128 and
  ``source`` 1x512 in, the swapped 1x3x128x128 crop out, plus a 512x512 ``emap`` initializer) and
  ``arcface.onnx`` (1x3x112x112 in, 1x512 embedding out; pictures of different faces get clearly
  different embeddings, for face swap and ``<faceid:...>``), both exported from small torch modules, and
  ``det_10g.onnx``, the tiny landmark detector (:mod:`multipass_dev.tiny_models.face_detector`) that
  aligns reference images before they are embedded;
- ``prompt_expander/``: a 2-layer GPT-2 with a byte-level tokenizer (every byte a token, no merges).

The first two are spandrel's architecture classes at small sizes
(:mod:`multipass_dev.tiny_models.image_nets`), which spandrel detects from the files as it does the
published ones; every model is loaded by the production loading code.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from multipass_dev.tiny_models import image_nets
from multipass_dev.tiny_models.building import build_once, byte_to_unicode
from multipass_dev.tiny_models.face_detector import write_face_detector

#: Bump when the layout or the architectures change; a directory with another marker is rebuilt.
VERSION = "tiny-finishing-v5"
MARKER = ".tiny-finishing-built"
COMPONENTS = ("upscaler", "face_restorer", "face_swapper", "prompt_expander")

UPSCALER_FILE = "RealESRGAN_x4plus-tiny.pth"
RESTORER_FILE = "RestoreFormer-tiny.pth"
SWAP_SIZE = 128
EMBED_SIZE = 112


def build(root: Path) -> None:
    """Write the tiny finishing models under ``root/"diffusion"`` unless this version is already there."""
    build_once(
        Path(root) / "diffusion",
        marker=MARKER,
        version=VERSION,
        lock=".finishing-build.lock",
        replaces=COMPONENTS,
        write=_write_all,
    )


def _write_all(base: Path) -> None:
    _build_upscaler(base / "upscaler")
    _build_face_restorer(base / "face_restorer")
    _build_face_swapper(base / "face_swapper")
    _build_prompt_expander(base / "prompt_expander")


def _build_upscaler(directory: Path) -> None:
    state = image_nets.esrgan_state(scale=4, features=8, blocks=1, seed=400, near_identity=True)
    image_nets.save_weights(state, directory / UPSCALER_FILE, wrapper="params_ema")


def _build_face_restorer(directory: Path) -> None:
    state = image_nets.restoreformer_state(seed=410)
    image_nets.save_weights(state, directory / RESTORER_FILE, wrapper="state_dict")


def _swapper_module():
    import torch
    from torch import nn

    class TinySwapper(nn.Module):
        """inswapper's interface: the target crop is re-synthesised, modulated by the identity latent."""

        def __init__(self):
            super().__init__()
            self.encode = nn.Sequential(
                nn.Conv2d(3, 8, 3, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(8, 16, 3, 2, 1)
            )
            self.style = nn.Linear(512, 32)
            self.decode = nn.Sequential(
                nn.Upsample(scale_factor=4, mode="nearest"),
                nn.Conv2d(16, 8, 3, 1, 1),
                nn.LeakyReLU(0.2),
                nn.Conv2d(8, 3, 3, 1, 1),
            )

        def forward(self, target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
            features = self.encode(target)
            scale, shift = self.style(source).chunk(2, dim=1)
            features = features * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
            return torch.sigmoid(self.decode(features) + (target - 0.5) * 4)

    return TinySwapper()


def _embedder_module():
    """ArcFace's interface; signed features pooled per 4x4 region, so different faces point elsewhere."""
    import torch
    from torch import nn

    module = nn.Sequential(
        nn.Conv2d(3, 8, 3, 2, 1),
        nn.PReLU(8),
        nn.Conv2d(8, 16, 3, 2, 1),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(256, 512, bias=False),
    )
    with torch.no_grad():
        module[2].bias.zero_()  # a shared offset would make every embedding point the same way
    return module


def _export(module, args: tuple, path: Path, input_names: list[str], output_names: list[str]) -> None:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            args,
            str(path),
            input_names=input_names,
            output_names=output_names,
            dynamo=False,
            opset_version=17,
        )


def _build_face_swapper(directory: Path) -> None:
    import numpy as np
    import onnx
    import torch
    from onnx import numpy_helper

    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(420)
    swapper_path = directory / "inswapper_128.onnx"
    _export(
        _swapper_module(),
        (torch.rand(1, 3, SWAP_SIZE, SWAP_SIZE), torch.rand(1, 512)),
        swapper_path,
        ["target", "source"],
        ["output"],
    )
    model = onnx.load(str(swapper_path))
    emap, _ = np.linalg.qr(np.random.default_rng(421).standard_normal((512, 512)))
    model.graph.initializer.append(numpy_helper.from_array(emap.astype(np.float32), name="emap"))
    onnx.save(model, str(swapper_path))
    torch.manual_seed(422)
    _export(
        _embedder_module(),
        (torch.rand(1, 3, EMBED_SIZE, EMBED_SIZE),),
        directory / "arcface.onnx",
        ["input"],
        ["embedding"],
    )
    write_face_detector(directory / "det_10g.onnx")
    (directory / "config.json").write_text(
        json.dumps({"swapper": "inswapper_128.onnx", "embedder": "arcface.onnx"}, indent=2) + "\n"
    )


def _build_prompt_expander(directory: Path) -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Tokenizer
    from transformers.utils import logging as transformers_logging

    directory.mkdir(parents=True, exist_ok=True)
    vocab = {symbol: byte for byte, symbol in byte_to_unicode().items()}
    vocab["<|endoftext|>"] = 256
    verbosity = transformers_logging.get_verbosity()
    bars = transformers_logging.is_progress_bar_enabled()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    try:
        GPT2Tokenizer(vocab=vocab, merges=[], model_max_length=128).save_pretrained(directory)
        torch.manual_seed(430)
        config = GPT2Config(
            vocab_size=257,
            n_positions=128,
            n_embd=32,
            n_layer=2,
            n_head=2,
            bos_token_id=256,
            eos_token_id=256,
            initializer_range=0.2,
        )
        GPT2LMHeadModel(config).save_pretrained(directory, safe_serialization=True)
    finally:
        transformers_logging.set_verbosity(verbosity)
        if bars:
            transformers_logging.enable_progress_bar()


def write_diffusion_upscaler(directory: Path, sd15_model: Path) -> Path:
    """Write a tiny ``StableDiffusionUpscalePipeline`` (the other ``upscaler/`` layout) to ``directory``.

    It reuses the text encoder and tokenizer of the tiny SD1.5 model at ``sd15_model``; its VAE has three
    blocks (the real x4 factor) and its UNet takes the 4 latent + 3 low-resolution image channels and a
    noise-level class embedding, like the real x4 upscaler. Used by tests of the diffusers upscale path.
    """
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        DDPMScheduler,
        StableDiffusionUpscalePipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTokenizer

    sd15_model = Path(sd15_model)
    torch.manual_seed(440)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=8,
        in_channels=7,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
        num_class_embeds=1000,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 16, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
        scaling_factor=0.08333,
    )
    pipe = StableDiffusionUpscalePipeline(
        vae=vae,
        text_encoder=CLIPTextModel.from_pretrained(sd15_model / "text_encoder", local_files_only=True),
        tokenizer=CLIPTokenizer.from_pretrained(sd15_model / "tokenizer", local_files_only=True),
        unet=unet,
        low_res_scheduler=DDPMScheduler(),
        scheduler=DDIMScheduler(prediction_type="v_prediction"),
        max_noise_level=350,
    )
    directory = Path(directory)
    pipe.save_pretrained(directory, safe_serialization=True)
    return directory
