"""A compact GFPGAN-class face restoration network (``face_restorer/``) and its loader.

Architecture (``config.json``: ``size``, ``channels``, ``middle_blocks``): a U-Net-shaped encoder-decoder.
The encoder (``conv_in`` then, per level, a residual block and a stride-2 convolution) keeps each level's
features; the middle runs ``middle_blocks`` residual blocks at the lowest resolution; each decoder level
upsamples (nearest x2 + convolution) and is modulated by its encoder level through a channel-split
spatial feature transform (GFPGAN's CS-SFT: half of the channels are scaled and shifted by maps computed
from the skip features, the other half pass unchanged), then refined by a residual block. ``to_rgb``
maps back to RGB with ``tanh``. Input and output are N x 3 x size x size in -1..1 (aligned face crops).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from multipass.errors import FailedPrecondition
from multipass_diffusion.nets import components

ARCHITECTURE = "FaceRestorerNet"


@dataclass(frozen=True)
class RestorerConfig:
    size: int = 512
    channels: tuple[int, ...] = (32, 64, 128, 256, 256)
    middle_blocks: int = 2

    @classmethod
    def from_dict(cls, values: dict) -> RestorerConfig:
        architecture = values.get("architecture", ARCHITECTURE)
        if architecture != ARCHITECTURE:
            raise ValueError(f"architecture {architecture!r} is not {ARCHITECTURE}")
        config = cls(
            size=int(values.get("size", cls.size)),
            channels=tuple(int(c) for c in values.get("channels", cls.channels)),
            middle_blocks=int(values.get("middle_blocks", cls.middle_blocks)),
        )
        levels = len(config.channels) - 1
        if levels < 1 or config.size % (1 << levels):
            raise ValueError(
                f"size {config.size} must be a multiple of 2**{levels} (channels {config.channels})"
            )
        return config


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.leaky_relu(self.conv1(x), 0.2))
        return F.leaky_relu(y + self.skip(x), 0.2)


class ChannelSplitSFT(nn.Module):
    """Scale and shift half of ``features``' channels by maps computed from ``condition``."""

    def __init__(self, channels: int, condition_channels: int):
        super().__init__()
        self.half = channels // 2
        self.scale = nn.Sequential(
            nn.Conv2d(condition_channels, channels, 3, 1, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(channels, self.half, 3, 1, 1),
        )
        self.shift = nn.Sequential(
            nn.Conv2d(condition_channels, channels, 3, 1, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(channels, self.half, 3, 1, 1),
        )

    def forward(self, features: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        kept, modulated = features[:, : -self.half], features[:, -self.half :]
        modulated = modulated * (1 + self.scale(condition)) + self.shift(condition)
        return torch.cat((kept, modulated), dim=1)


class FaceRestorerNet(nn.Module):
    def __init__(self, config: RestorerConfig):
        super().__init__()
        self.config = config
        ch = config.channels
        self.conv_in = nn.Conv2d(3, ch[0], 3, 1, 1)
        self.encoder = nn.ModuleList(ResBlock(ch[i], ch[i + 1]) for i in range(len(ch) - 1))
        self.downsample = nn.ModuleList(nn.Conv2d(ch[i + 1], ch[i + 1], 3, 2, 1) for i in range(len(ch) - 1))
        self.middle = nn.Sequential(*(ResBlock(ch[-1], ch[-1]) for _ in range(config.middle_blocks)))
        self.upsample = nn.ModuleList(
            nn.Conv2d(ch[i + 1], ch[i], 3, 1, 1) for i in reversed(range(len(ch) - 1))
        )
        self.sft = nn.ModuleList(ChannelSplitSFT(ch[i], ch[i + 1]) for i in reversed(range(len(ch) - 1)))
        self.decoder = nn.ModuleList(ResBlock(ch[i], ch[i]) for i in reversed(range(len(ch) - 1)))
        self.to_rgb = nn.Conv2d(ch[0], 3, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = F.leaky_relu(self.conv_in(x), 0.2)
        skips = []
        for block, down in zip(self.encoder, self.downsample, strict=True):
            feat = block(feat)
            skips.append(feat)
            feat = F.leaky_relu(down(feat), 0.2)
        feat = self.middle(feat)
        for up, sft, block, skip in zip(self.upsample, self.sft, self.decoder, reversed(skips), strict=True):
            feat = F.leaky_relu(up(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
            feat = block(sft(feat, skip))
        return torch.tanh(self.to_rgb(feat))


class FaceRestorer:
    """A loaded :class:`FaceRestorerNet`: restores uint8 RGB crops of any size."""

    def __init__(self, directory: Path, *, device: str, dtype):
        from safetensors.torch import load_file

        try:
            config = RestorerConfig.from_dict(components.read_config(directory))
        except (TypeError, ValueError) as error:
            raise FailedPrecondition(f"{directory / components.CONFIG_FILE}: {error}") from error
        model = FaceRestorerNet(config)
        weights = directory / components.WEIGHTS_FILE
        try:
            model.load_state_dict(load_file(str(weights)), strict=True)
        except (RuntimeError, OSError) as error:
            raise FailedPrecondition(
                f"{weights} does not fit the {ARCHITECTURE} of its config.json: {error}"
            ) from error
        self.model = model.to(device=device, dtype=dtype).eval()
        self.device, self.dtype = device, dtype
        self.size = config.size

    def restore(self, crop):
        """A PIL RGB crop in, the restored crop (same size) out."""
        import numpy as np
        from PIL import Image

        work = crop.resize((self.size, self.size), Image.Resampling.LANCZOS)
        tensor = torch.from_numpy(np.asarray(work, dtype=np.float32)).permute(2, 0, 1)[None]
        tensor = (tensor / 127.5 - 1.0).to(device=self.device, dtype=self.dtype)
        with torch.inference_mode():
            output = self.model(tensor)[0].float().cpu()
        array = ((output.permute(1, 2, 0).numpy() + 1.0) * 127.5).clip(0, 255)
        restored = Image.fromarray(np.rint(array).astype(np.uint8))
        return restored.resize(crop.size, Image.Resampling.LANCZOS)


def load_face_restorer(model_dir: Path, *, device: str, dtype) -> FaceRestorer:
    """The face restorer of ``model_dir``; FailedPrecondition naming the missing file when not installed."""
    directory = components.require(model_dir, components.FACE_RESTORER, needed_by="the face_correct pass")
    return FaceRestorer(directory, device=device, dtype=dtype)
