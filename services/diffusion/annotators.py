"""The edge and line networks of ControlNet 1.1's preprocessors, loading the published weight files.

ControlNet's ``softedge``/``hed`` and ``lineart`` models were trained on the maps of two small networks
whose weights are published as plain PyTorch state dicts (``lllyasviel/Annotators`` on the Hub, the files
A1111's ControlNet extension and ComfyUI's preprocessors keep in their ``annotator`` folders):

- ``ControlNetHED.pth``: the Apache-2.0 HED of ControlNet 1.1: five VGG-like stages of 3x3 convolutions
  (64, 128, 256, 512, 512 channels; 2, 2, 3, 3, 3 convolutions each, max-pooled between stages), each with
  a 1x1 side output; RGB in 0..255 minus a learnt per-channel offset (``norm``). The edge map is the
  sigmoid of the mean of the five side outputs, each resized to the input;
- ``sk_model.pth``: the "informative drawings" line generator: 7x7 stem, two stride-2 convolutions,
  three residual blocks at 256 channels, two transposed convolutions back, 7x7 head and a sigmoid;
  instance norms without parameters; RGB in 0..1, out 1 for paper and 0 for a line.

The modules below are built so that their parameter names are exactly those files' keys, and
:func:`load_state` reads either file as published (``torch.load`` restricted to tensors) or the same
tensors saved as safetensors. Both maps come out as one channel in 0..1 where 1 is an edge or a line,
the polarity the ControlNets expect (white strokes on black).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional

from multipass.errors import FailedPrecondition

#: (output channels, convolutions) of the HED stages.
HED_STAGES = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
#: Residual blocks of the published line generator.
LINE_RESIDUAL_BLOCKS = 3


class HedStage(nn.Module):
    """3x3 convolutions with ReLU (``convs.<i>``) and a 1x1 side output (``projection``)."""

    def __init__(self, in_channels: int, out_channels: int, convolutions: int):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1)
            for i in range(convolutions)
        )
        self.projection = nn.Conv2d(out_channels, 1, 1)

    def forward(self, features: torch.Tensor, *, pool: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if pool:
            features = functional.max_pool2d(features, kernel_size=2, stride=2)
        for conv in self.convs:
            features = functional.relu(conv(features))
        return features, self.projection(features)


class HedNetwork(nn.Module):
    """Soft edges of an RGB image: (N, 3, H, W) in 0..1 -> (N, 1, H, W) in 0..1."""

    def __init__(self):
        super().__init__()
        self.norm = nn.Parameter(torch.zeros(1, 3, 1, 1))
        channels = 3
        for index, (width, convolutions) in enumerate(HED_STAGES, start=1):
            self.add_module(f"block{index}", HedStage(channels, width, convolutions))
            channels = width

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = image * 255.0 - self.norm
        sides = []
        for index in range(1, len(HED_STAGES) + 1):
            stage = getattr(self, f"block{index}")
            features, side = stage(features, pool=index > 1)
            sides.append(
                functional.interpolate(side, size=image.shape[-2:], mode="bilinear", align_corners=False)
            )
        return torch.sigmoid(torch.stack(sides).mean(dim=0))


class _Residual(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        # Indices 1 and 5 are the convolutions, as in the published files (pads and norms hold no weights).
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            nn.InstanceNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            nn.InstanceNorm2d(channels),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features + self.conv_block(features)


def _down(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1),
        nn.InstanceNorm2d(out_channels),
        nn.ReLU(True),
    ]


def _up(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.ConvTranspose2d(in_channels, out_channels, 3, stride=2, padding=1, output_padding=1),
        nn.InstanceNorm2d(out_channels),
        nn.ReLU(True),
    ]


class LineNetwork(nn.Module):
    """Line drawing of an RGB image: (N, 3, H, W) in 0..1 -> (N, 1, H, W) in 0..1, 1 on a line."""

    def __init__(self, residual_blocks: int = LINE_RESIDUAL_BLOCKS):
        super().__init__()
        self.model0 = nn.Sequential(
            nn.ReflectionPad2d(3), nn.Conv2d(3, 64, 7), nn.InstanceNorm2d(64), nn.ReLU(True)
        )
        self.model1 = nn.Sequential(*_down(64, 128), *_down(128, 256))
        self.model2 = nn.Sequential(*(_Residual(256) for _ in range(residual_blocks)))
        self.model3 = nn.Sequential(*_up(256, 128), *_up(128, 64))
        self.model4 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(64, 1, 7), nn.Sigmoid())

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        # The generator halves twice: pad to a multiple of 4 by reflection, crop the answer back.
        padded = functional.pad(image, (0, -width % 4, 0, -height % 4), mode="reflect")
        drawing = self.model4(self.model3(self.model2(self.model1(self.model0(padded)))))
        return 1.0 - drawing[..., :height, :width]


#: The network of each preprocessor kind (its files: ``multipass.model_catalog.layout.PREPROCESSOR_FILES``).
NETWORKS: dict[str, type[nn.Module]] = {"hed": HedNetwork, "lineart": LineNetwork}


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``.pth`` (tensors only: no code is unpickled) or a ``.safetensors`` file."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is the operator's to replace
        raise FailedPrecondition(f"{path} is not a readable weight file: {error}") from error
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise FailedPrecondition(f"{path} holds no state dict of tensors")
    return state


def load_network(kind: str, path: Path, device: str = "cpu") -> nn.Module:
    """The network of ``kind`` with the weights of ``path``; a file of another network is named, not guessed."""
    network = NETWORKS[kind]()
    state = load_state(path)
    expected = network.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(
        key for key in set(expected) & set(state) if tuple(state[key].shape) != tuple(expected[key].shape)
    )
    if missing or unexpected or wrong:
        problems = [
            f"{label} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for label, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("shape differs for", wrong),
            )
            if keys
        ]
        raise FailedPrecondition(f"{path} is not the published {kind} preprocessor: {'; '.join(problems)}")
    network.load_state_dict({key: value.float() for key, value in state.items()})
    return network.to(device).eval()
