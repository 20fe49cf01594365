"""IP-Adapter weights in the UNets of a component set: read once, attached for a pass, detached after.

Both adapters the workers serve use this: IP-Adapter FaceID (``<faceid:...>``,
:mod:`multipass_diffusion.faceid`) and the IP Composition Adapter (``controlnet=composition``,
:mod:`multipass_diffusion.composition`). :func:`read_weights` reads a released file (safetensors with
``image_proj.``/``ip_adapter.`` prefixes, or the pickled ``{"image_proj": ..., "ip_adapter": ...}``);
:class:`IpLayers` loads it into a component set's UNets once with diffusers' ``load_ip_adapter`` (no image
encoder: the embeddings are given to the pipeline) and then switches between the UNets' own attention
processors and the adapter's, so a pass without the adapter runs the unmodified model. Only one adapter is
attached to a UNet at a time: each snapshot of "the UNet's own processors" is taken while none is.
"""

from __future__ import annotations

from pathlib import Path

from multipass.errors import FailedPrecondition


def read_weights(path: Path, what: str) -> dict:
    """``{"image_proj": {...}, "ip_adapter": {...}}`` from a safetensors (prefixed keys) or pickled file.

    ``what`` names the kind of file in errors ("IP-Adapter FaceID", ...). FailedPrecondition when the
    file cannot be read or is no IP-Adapter.
    """
    import pickle

    import torch
    from safetensors import SafetensorError, safe_open

    try:
        if path.suffix == ".safetensors":
            state: dict = {"image_proj": {}, "ip_adapter": {}}
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                for key in handle.keys():  # noqa: SIM118 - safe_open handles are not iterable
                    part, _, name = key.partition(".")
                    if part in state:
                        state[part][name] = handle.get_tensor(key)
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except (SafetensorError, OSError, RuntimeError, ValueError, pickle.UnpicklingError) as error:
        raise FailedPrecondition(f"{path} is not a readable {what} file: {error}") from error
    if not isinstance(state, dict) or not state.get("image_proj") or not state.get("ip_adapter"):
        raise FailedPrecondition(
            f"{path} is not an IP-Adapter file (expected image_proj and ip_adapter weights)"
        )
    return state


def check_width(path: Path, width: int, cross_attention_dim: int) -> None:
    """FailedPrecondition when an adapter's tokens are not as wide as the UNet's cross-attention."""
    if width != cross_attention_dim:
        raise FailedPrecondition(
            f"{path}: cross-attention width {width} does not fit the UNet ({cross_attention_dim})"
        )


def _snapshot(unet) -> tuple:
    return dict(unet.attn_processors), unet.encoder_hid_proj, unet.config.encoder_hid_dim_type


def _restore(unet, state) -> None:
    processors, projection, hid_type = state
    # The projection first: an IP-Adapter Plus projection has attention layers of its own, which count
    # among the UNet's processors while it is attached.
    unet.encoder_hid_proj = projection
    unet.config.encoder_hid_dim_type = hid_type
    unet.set_attn_processor(dict(processors))  # set_attn_processor empties the dict it is given


def _copy(state: dict) -> dict:
    return {part: dict(tensors) for part, tensors in state.items()}


class IpLayers:
    """One adapter's layers on a component set's UNets, and the UNets' own processors to put back."""

    def __init__(self, components, state: dict, *, source: Path):
        pipes = [components.pipe]
        if components.inpaint_unet is not None:
            pipes.append(components.pipeline("inpaint"))
        self._unets: list[tuple[object, tuple, tuple]] = []
        for pipe in pipes:
            unet = pipe.unet
            own = _snapshot(unet)
            extractor = getattr(pipe, "feature_extractor", None)
            try:
                pipe.load_ip_adapter(
                    _copy(state),
                    subfolder="",
                    weight_name="",
                    image_encoder_folder=None,
                    low_cpu_mem_usage=False,
                )
            except (RuntimeError, ValueError, KeyError) as error:
                _restore(unet, own)
                self.detach()
                raise FailedPrecondition(
                    f"{source} does not fit model {components.label}: {error}"
                ) from error
            if extractor is None and getattr(pipe, "feature_extractor", None) is not None:
                # The embeddings are given to the pipeline: leave it without an image processor, as it was.
                pipe.register_modules(feature_extractor=None)
            self._unets.append((unet, own, _snapshot(unet)))

    def attach(self, scale: float) -> None:
        from diffusers.models.attention_processor import IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0

        for unet, _, loaded in self._unets:
            _restore(unet, loaded)
            for processor in loaded[0].values():
                if isinstance(processor, (IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0)):
                    processor.scale = [scale] * len(processor.scale)

    def detach(self) -> None:
        for unet, own, _ in self._unets:
            _restore(unet, own)


def uses_guidance(unet, guidance_scale: float) -> bool:
    """Whether the pipelines split image embeddings in an unconditional and a conditional half."""
    return guidance_scale > 1 and unet.config.time_cond_proj_dim is None
