"""Random-weight upscalers and face restorers written in the file layouts they are published in.

Each ``*_state`` function builds one of spandrel's own architecture classes with small hyper-parameters
that spandrel still detects from the keys and shapes, and returns its state dict under the key names of
the published files:

- ``esrgan_state``: ESRGAN's RRDBNet, in BasicSR/Real-ESRGAN names (``conv_first``, ``body.N.rdbM.convK``,
  ``conv_body``, ``conv_up1``, ...) or in the original ESRGAN names (``model.0``, ``model.1.sub.N.RDBM``);
  x2 is Real-ESRGAN's pixel-unshuffle variant (12 input channels);
- ``swinir_state``, ``hat_state``, ``dat_state``: the transformer upscalers (x2 or x4);
- ``restoreformer_state``: RestoreFormer at a small width (32 channels: its group norms need 32);
- ``gfpgan_state``: GFPGAN v1 "clean" at its only size (512 px, about 87 M parameters: spandrel reads no
  size from the file, so there is no small GFPGAN).

``save_weights`` writes a state dict as ``.safetensors``, or as ``.pth`` wrapped the way the projects
publish them (``{"params_ema": ...}`` for BasicSR-trained models, ``{"state_dict": ...}`` otherwise).
"""

from __future__ import annotations

import re
from pathlib import Path

#: Key renames from spandrel's ESRGAN (original layout) to BasicSR's RRDBNet, the Real-ESRGAN layout.
_BASICSR_BODY = re.compile(r"^model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)$")


def _seeded(seed: int):
    import torch

    torch.manual_seed(seed)


def _contiguous(model) -> dict:
    return {key: tensor.detach().clone().contiguous() for key, tensor in model.state_dict().items()}


def esrgan_state(
    *,
    scale: int = 4,
    features: int = 8,
    blocks: int = 1,
    layout: str = "basicsr",
    seed: int = 0,
    near_identity: bool = False,
) -> dict:
    """An RRDBNet x``scale`` (4, or 2 through pixel-unshuffle) in ``layout`` "basicsr" or "original".

    ``near_identity`` makes the trunk's outer convolutions pass their first channels through (plus small
    noise), so the network outputs the upsampled input with a texture added, not a blank image.
    """
    import torch
    from spandrel.architectures.ESRGAN import ESRGAN

    if scale not in (2, 4):
        raise ValueError(f"scale {scale} is not 2 or 4")
    _seeded(seed)
    unshuffle = 2 if scale == 2 else None
    model = ESRGAN(
        in_nc=3 * (unshuffle or 1) ** 2,
        out_nc=3,
        num_filters=features,
        num_blocks=blocks,
        scale=4,
        shuffle_factor=unshuffle,
    )
    state = _contiguous(model)
    if near_identity:
        with torch.no_grad():
            for key in ("model.0", "model.3", "model.6", "model.8", "model.10"):
                weight = state[f"{key}.weight"]
                torch.nn.init.dirac_(weight)
                weight.add_(torch.randn_like(weight) * 0.02)
                state[f"{key}.bias"].zero_()
            state[f"model.1.sub.{blocks}.weight"].normal_(0.0, 0.05)
    if layout == "original":
        return state
    if layout != "basicsr":
        raise ValueError(f"layout {layout!r} is not 'basicsr' or 'original'")
    renamed = {}
    for key, tensor in state.items():
        match = _BASICSR_BODY.match(key)
        if match:
            block, rdb, conv, kind = match.groups()
            renamed[f"body.{block}.rdb{rdb}.conv{conv}.{kind}"] = tensor
            continue
        name, _, kind = key.rpartition(".")
        renamed[f"{_basicsr_name(name, blocks)}.{kind}"] = tensor
    return renamed


def _basicsr_name(name: str, blocks: int) -> str:
    fixed = {
        "model.0": "conv_first",
        f"model.1.sub.{blocks}": "conv_body",
        "model.3": "conv_up1",
        "model.6": "conv_up2",
        "model.8": "conv_hr",
        "model.10": "conv_last",
    }
    if name not in fixed:
        raise ValueError(f"unexpected ESRGAN parameter {name!r}")
    return fixed[name]


def swinir_state(*, scale: int = 4, seed: int = 0) -> dict:
    """A two-block SwinIR (window 4, 12 channels) with the classical pixel-shuffle upsampler."""
    from spandrel.architectures.SwinIR import SwinIR

    _seeded(seed)
    model = SwinIR(
        img_size=16,
        in_chans=3,
        embed_dim=12,
        depths=[2],
        num_heads=[2],
        window_size=4,
        mlp_ratio=2.0,
        upscale=scale,
        upsampler="pixelshuffle",
        resi_connection="1conv",
    )
    return _contiguous(model)


def hat_state(*, scale: int = 4, seed: int = 0) -> dict:
    """A one-group HAT (window 4, 12 channels)."""
    from spandrel.architectures.HAT import HAT

    _seeded(seed)
    model = HAT(
        img_size=16,
        embed_dim=12,
        depths=[2],
        num_heads=[2],
        window_size=4,
        compress_ratio=3,
        squeeze_factor=3,
        mlp_ratio=2.0,
        upscale=scale,
        num_feat=8,
    )
    return _contiguous(model)


def dat_state(*, scale: int = 2, seed: int = 0) -> dict:
    """A one-group DAT (32 channels, split 2x4: narrower leaves some of its layers without parameters)."""
    from spandrel.architectures.DAT import DAT

    _seeded(seed)
    model = DAT(
        img_size=16,
        embed_dim=32,
        split_size=[2, 4],
        depth=[2],
        num_heads=[2],
        expansion_factor=2.0,
        upscale=scale,
    )
    return _contiguous(model)


def restoreformer_state(*, seed: int = 0) -> dict:
    """RestoreFormer with its six levels (so its attention runs at 16x16 on a 512 px face) at width 32."""
    from spandrel.architectures.RestoreFormer import RestoreFormer

    _seeded(seed)
    model = RestoreFormer(
        n_embed=64,
        embed_dim=16,
        ch=32,
        ch_mult=(1, 1, 1, 1, 1, 1),
        num_res_blocks=1,
        z_channels=32,
    )
    return _contiguous(model)


def gfpgan_state(*, seed: int = 0) -> dict:
    """GFPGAN v1 clean (the architecture of GFPGANv1.3/v1.4) at its published size.

    The module is built on the meta device (no 87 M-parameter initialisation) and its state filled with
    seeded normal values: weights and the decoder's noise maps N(0, 1) scaled by 1/sqrt(fan-in) for
    weights, biases zero.
    """
    import math

    import torch
    from spandrel.architectures.GFPGAN import GFPGAN

    with torch.device("meta"):
        model = GFPGAN(
            out_size=512,
            num_style_feat=512,
            channel_multiplier=2,
            decoder_load_path=None,
            fix_decoder=False,
            num_mlp=8,
            input_is_latent=True,
            different_w=True,
            narrow=1,
            sft_half=True,
        )
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, meta in model.state_dict().items():
        if key.endswith(".bias"):
            state[key] = torch.zeros(meta.shape)
            continue
        values = torch.randn(meta.shape, generator=generator)
        if ".noises." not in key and meta.dim() > 1:
            values /= math.sqrt(math.prod(meta.shape[1:]))
        state[key] = values.contiguous()
    return state


def save_weights(state: dict, path: Path, *, wrapper: str | None = None) -> Path:
    """Write ``state`` to ``path``: safetensors, or a ``.pth`` pickle (inside ``{wrapper: state}`` if given)."""
    import torch
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        if wrapper:
            raise ValueError("safetensors files hold the tensors at the top level")
        save_file(state, str(path))
    elif path.suffix == ".pth":
        torch.save({wrapper: state} if wrapper else state, str(path))
    else:
        raise ValueError(f"{path.name}: expected .safetensors or .pth")
    return path
