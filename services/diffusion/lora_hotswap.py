"""LoRAs on a compiled UNet: one fixed adapter slot whose weights are swapped in place, never re-traced.

``torch.compile`` guards on the structure of the UNet's LoRA layers (which adapters exist and are active,
their ranks, Python-float scalings): loading a second PEFT adapter or calling ``set_adapters`` with new
weights would recompile the UNet, which costs far more than a pass. With compile on, each UNet therefore
gets one adapter, :data:`SLOT`, before it is compiled (:func:`prepare_slot`):

- it targets every Linear and 1x1 convolution of the UNet's transformer blocks (what LoRA trainers target:
  attention projections, feed-forward, ``proj_in``/``proj_out``), at rank ``target_rank``, with zero
  weights, alpha = rank (scaling 1); ``enable_lora_hotswap`` turns its scalings into tensors first;
- a pass's LoRAs are folded into one rank-``<= target_rank`` LoRA per module (each LoRA's ``up`` matrix
  scaled by its alpha/rank and its weight, several LoRAs concatenated along the rank) and copied into the
  slot's parameters in place (:func:`fill_slot`, what ``load_lora_adapter(..., hotswap=True)`` does, but
  without its two walks over the whole UNet state dict per call: 31 ms per switch on the tiny test UNet,
  most of a 2-step pass): same storage, same shapes, so the compiled graph runs on; the slot's rows a
  LoRA does not use are zero, which adds exactly nothing;
- a LoRA targeting a module outside the slot, or LoRAs adding up to more than ``target_rank``, are
  refused (:class:`~multipass.errors.InvalidInput` naming the modules and the rank).

The base pass disables the slot (``disable_lora``: a second graph, compiled once). Text-encoder parts stay
ordinary named PEFT adapters (the text encoders are not compiled), loaded with their kohya alphas or
saved LoraConfig (``lora_adapter_metadata``) as in :mod:`adapters`; the slot folds the same alpha/rank. The cache keeps each LoRA's folded UNet weights resident on the model's device, bounded
by the same memory budget as the PEFT adapters of the non-compiled path.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable

from multipass.errors import InvalidInput, Violation
from multipass_diffusion.adapters import (
    ActiveSet,
    AdapterCache,
    AdapterRequest,
    _is_disabled,
    _is_enabled,
    _mark,
    forget_lora_state,
    load_lora_parts,
    read_lora,
)

log = logging.getLogger(__name__)

#: Name of the one adapter a compiled UNet carries.
SLOT = "multipass_hotswap_slot"

#: Per module: (lora_A weight, lora_B weight already scaled by the LoRA's alpha/rank).
FoldedLora = dict[str, tuple[object, object]]


def slot_modules(unet) -> list[str]:
    """Names of the UNet modules that carry the slot (after :func:`prepare_slot`)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [
        name
        for name, module in unet.named_modules()
        if isinstance(module, BaseTunerLayer) and SLOT in getattr(module, "lora_A", {})
    ]


def slot_targets(unet) -> list[str]:
    """Names of the modules the slot is made for: Linear and 1x1 Conv2d layers of the transformer blocks."""
    import torch

    names = []
    for name, module in unet.named_modules():
        if ".attentions." not in f".{name}" or "lora_" in name:
            continue
        if isinstance(module, torch.nn.Linear) or (
            isinstance(module, torch.nn.Conv2d) and tuple(module.kernel_size) == (1, 1)
        ):
            names.append(name)
    return names


def prepare_slot(unet, target_rank: int) -> None:
    """Give ``unet`` the zero-weight hot-swap slot (call before compiling it, and before any other LoRA)."""
    import torch

    unet.enable_lora_hotswap(target_rank=target_rank)
    state = {}
    for name in slot_targets(unet):
        module = unet.get_submodule(name)
        weight = module.weight
        if isinstance(module, torch.nn.Linear):
            down_shape = (target_rank, module.in_features)
            up_shape = (module.out_features, target_rank)
        else:
            down_shape = (target_rank, module.in_channels, 1, 1)
            up_shape = (module.out_channels, target_rank, 1, 1)
        state[f"{name}.lora_A.weight"] = torch.zeros(down_shape, dtype=weight.dtype, device=weight.device)
        state[f"{name}.lora_B.weight"] = torch.zeros(up_shape, dtype=weight.dtype, device=weight.device)
    unet.load_lora_adapter(state, prefix=None, adapter_name=SLOT)


def fold_unet_lora(
    state_dict: dict, alphas: dict | None, *, slot: Iterable[str], metadata: dict | None = None
) -> FoldedLora:
    """The UNet part of a LoRA (``lora_state_dict`` output) as per-module (A, B * alpha/rank).

    The alpha/rank of each module is read from the same LoraConfig diffusers builds when it loads the LoRA
    as a PEFT adapter, so the folded LoRA changes the UNet exactly as the adapter would at weight 1: the
    file's saved config when its ``metadata`` (``lora_adapter_metadata``) has ``unet.*`` keys (prefix
    stripped, as ``load_lora_adapter`` does), else one derived from the shapes and kohya ``alphas``.
    Raises ValueError for LoRAs the slot cannot hold (other modules, DoRA, biases).
    """
    from diffusers.utils.peft_utils import _create_lora_config
    from diffusers.utils.state_dict_utils import convert_unet_state_dict_to_peft
    from peft.utils.other import get_pattern_key

    part = {k.removeprefix("unet."): v for k, v in state_dict.items() if k.startswith("unet.")}
    if not part:
        return {}
    if "lora_A" not in next(iter(part)):
        part = convert_unet_state_dict_to_peft(part)
    unet_alphas = {k.removeprefix("unet."): v for k, v in (alphas or {}).items() if k.startswith("unet.")}
    if any(not (k.endswith(".lora_A.weight") or k.endswith(".lora_B.weight")) for k in part):
        odd = sorted(k for k in part if not k.endswith((".lora_A.weight", ".lora_B.weight")))
        raise ValueError(f"has weights a hot-swapped LoRA cannot hold (DoRA, biases): {', '.join(odd[:3])}")
    ranks = {f"^{k}": v.shape[1] for k, v in part.items() if "lora_B" in k and v.ndim > 1}
    unet_metadata = {k.removeprefix("unet."): v for k, v in (metadata or {}).items() if k.startswith("unet.")}
    config = _create_lora_config(
        part, unet_alphas or None, unet_metadata or None, ranks, model_state_dict=None
    )
    modules = sorted({k.rsplit(".lora_", 1)[0] for k in part})
    outside = sorted(set(modules) - set(slot))
    if outside:
        raise ValueError(
            f"targets {len(outside)} UNet module(s) outside the compiled hot-swap slot "
            f"(transformer-block Linear and 1x1 conv layers): {', '.join(outside[:5])}"
            + (" ..." if len(outside) > 5 else "")
        )
    folded: FoldedLora = {}
    for module in modules:
        down, up = part[f"{module}.lora_A.weight"], part[f"{module}.lora_B.weight"]
        # As PEFT's LoRA layers do: patterns matched against the module name.
        rank = config.rank_pattern.get(get_pattern_key(config.rank_pattern.keys(), module), config.r)
        alpha = config.alpha_pattern.get(
            get_pattern_key(config.alpha_pattern.keys(), module), config.lora_alpha
        )
        if rank != down.shape[0]:
            raise ValueError(f"module {module}: rank {down.shape[0]} in the file, {rank} in its config")
        scaling = alpha / (rank**0.5) if config.use_rslora else alpha / rank
        folded[module] = (down, up.float() * scaling)
    return folded


def slot_parameters(unet) -> dict[str, tuple[object, object]]:
    """Per slot module of ``unet``: its (lora_A, lora_B) weight parameters of the slot."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return {
        name: (module.lora_A[SLOT].weight, module.lora_B[SLOT].weight)
        for name, module in unet.named_modules()
        if isinstance(module, BaseTunerLayer) and SLOT in getattr(module, "lora_A", {})
    }


def slot_ranks(loras: list[tuple[FoldedLora, float]], *, target_rank: int, label: str) -> dict[str, int]:
    """Summed rank per module of ``loras``; InvalidInput when a module needs more than the slot holds."""
    ranks: dict[str, int] = {}
    for folded, _ in loras:
        for module, (down, _) in folded.items():
            ranks[module] = ranks.get(module, 0) + down.shape[0]
    widest = max(ranks, key=ranks.get, default=None)
    if widest is not None and ranks[widest] > target_rank:
        raise InvalidInput.of(
            [
                Violation(
                    label,
                    f"LoRAs of this pass add up to rank {ranks[widest]} on UNet module {widest}; the "
                    f"compiled hot-swap slot holds rank {target_rank} (MULTIPASS_DIFFUSION_COMPILE_LORA_RANK)",
                )
            ]
        )
    return ranks


def fill_slot(parameters: dict, loras: list[tuple[FoldedLora, float]], *, filled: set[str]) -> set[str]:
    """Copy ``loras`` into the slot in place; returns the modules whose slot now holds weights.

    ``B1 A1 x + B2 A2 x = [B1 B2] [A1; A2] x``: several LoRAs fill consecutive rank rows, each ``B`` times
    its weight; the rows after them are zero, so they add exactly nothing. Modules in ``filled`` (holding
    the previous LoRAs' weights) that the new ones do not target are zeroed. The parameters keep their
    storage and shape, so the compiled graph runs on (this is what ``load_lora_adapter(hotswap=True)``
    does, without its two walks over the UNet's whole state dict per call).
    """
    import torch

    targeted: dict[str, list[tuple[object, object, float]]] = {}
    for folded, weight in loras:
        for module, (down, up) in folded.items():
            targeted.setdefault(module, []).append((down, up, weight))
    with torch.no_grad():
        for module in filled - set(targeted):
            down_slot, up_slot = parameters[module]
            down_slot.zero_()
            up_slot.zero_()
        for module, parts in targeted.items():
            down_slot, up_slot = parameters[module]
            offset = 0
            for down, up, weight in parts:
                rank = down.shape[0]
                down_slot[offset : offset + rank].copy_(down)
                up_slot[:, offset : offset + rank].copy_(up)
                if weight != 1.0:
                    up_slot[:, offset : offset + rank].mul_(weight)
                offset += rank
            down_slot[offset:].zero_()
            up_slot[:, offset:].zero_()
    return set(targeted)


class HotswapAdapterCache(AdapterCache):
    """:class:`AdapterCache` for compiled UNets: LoRAs reach the UNets through the slot, never as adapters.

    Text-encoder parts load as named PEFT adapters (uncompiled encoders), exactly as in the parent class.
    """

    def __init__(self, components, budget_bytes: int, *, target_rank: int, **kwargs):
        super().__init__(components, budget_bytes, **kwargs)
        self.target_rank = target_rank
        self._folded: dict[str, FoldedLora] = {}
        self._slot_modules = set(slot_modules(components.pipe.unet))
        self._slot_parameters = [slot_parameters(unet) for unet in components.unets]
        #: Slot modules holding LoRA weights (all others are zero); every slot module after prepare_slot.
        self._filled: set[str] = set(self._slot_modules)
        #: (name, weight) set the slot holds now; None = unknown (zero weights after prepare_slot).
        self._swapped: ActiveSet | None = None
        #: Swaps made (a pass with the same LoRAs as the one before makes none).
        self.swaps = 0

    def activate(self, requests: list[AdapterRequest]) -> None:
        if not requests:
            self.deactivate()
            return
        names = []
        keep = {self.namespace + r.adapter_name for r in requests}
        for request in requests:
            name = self.namespace + request.adapter_name
            if name in self._resident:
                self._resident.move_to_end(name)
                self._on_hit()
            else:
                self._on_miss()
                self._load(request, name, keep=keep)
            names.append(name)
        wanted: ActiveSet = tuple(zip(names, [float(r.weight) for r in requests], strict=True))
        self._swap_unets(wanted, label=requests[0].tag)
        for unet in self.components.unets:
            if not _is_enabled(unet):
                unet.enable_lora()
                _mark([unet], enabled=True)
        self._activate_text_encoders(wanted)
        self.active = tuple(names)

    def _swap_unets(self, wanted: ActiveSet, *, label: str) -> None:
        if self._swapped == wanted:
            return
        loras = [(self._folded[name], weight) for name, weight in wanted]
        slot_ranks(loras, target_rank=self.target_rank, label=label)
        self._swapped = None
        for parameters in self._slot_parameters:
            filled = fill_slot(parameters, loras, filled=self._filled)
        self._filled = filled
        self._swapped = wanted
        self.swaps += 1

    def _activate_text_encoders(self, wanted: ActiveSet) -> None:
        from diffusers.loaders.lora_base import (
            disable_lora_for_text_encoder,
            enable_lora_for_text_encoder,
            set_adapters_for_text_encoder,
        )

        for encoder in self.components.text_encoders:
            config = getattr(encoder, "peft_config", None) or {}
            own: ActiveSet = tuple((name, weight) for name, weight in wanted if name in config)
            if not own:
                if config and not _is_disabled(encoder):
                    disable_lora_for_text_encoder(encoder)
                    _mark([encoder], enabled=False)
                continue
            if not _is_enabled(encoder):
                enable_lora_for_text_encoder(encoder)
                _mark([encoder], enabled=True)
            state = _module_state(encoder)
            if state != own:
                set_adapters_for_text_encoder([n for n, _ in own], encoder, [w for _, w in own])
                _mark([encoder], adapters=own)

    def _load(self, request: AdapterRequest, name: str, *, keep: set[str]) -> None:
        pipe = self.components.pipe
        state_dict, alphas, metadata = read_lora(pipe, request)
        try:
            folded = fold_unet_lora(state_dict, alphas, slot=self._slot_modules, metadata=metadata)
        except (ValueError, KeyError, RuntimeError) as error:
            raise InvalidInput.of(
                [Violation(request.tag, f"does not fit model {self.components.label}: {error}")]
            ) from error
        device, dtype = pipe.unet.device, self.components.dtype
        folded = {m: (d.to(device, dtype), u.to(device, dtype)) for m, (d, u) in folded.items()}
        encoder_part = {k: v for k, v in state_dict.items() if not k.startswith("unet.")}
        size = sum(d.numel() * d.element_size() + u.numel() * u.element_size() for d, u in folded.values())
        size += sum(t.numel() for t in encoder_part.values()) * self.components.dtype.itemsize
        self._evict(size, keep)
        if encoder_part:
            forget_lora_state(self.components.text_encoders)
            try:
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                    load_lora_parts(
                        pipe, encoder_part, alphas, adapter_name=name, unet=False, metadata=metadata
                    )
            except (ValueError, RuntimeError, KeyError) as error:
                self._drop(name)
                raise InvalidInput.of(
                    [Violation(request.tag, f"does not fit model {self.components.label}: {error}")]
                ) from error
        self._folded[name] = folded
        self._resident[name] = size
        log.info(
            "adapter loaded for hot-swap",
            extra={"adapter": name, "bytes": size, "resident": len(self._resident)},
        )

    def _touched_modules(self) -> list:
        return list(self.components.text_encoders)

    def _drop(self, name: str) -> None:
        from diffusers.utils.peft_utils import delete_adapter_layers

        self._resident.pop(name, None)
        self._folded.pop(name, None)
        if self._swapped is not None and any(n == name for n, _ in self._swapped):
            self._swapped = None  # the slot still holds its weights until the next swap
        forget_lora_state(self.components.text_encoders)
        for encoder in self.components.text_encoders:
            if name in (getattr(encoder, "peft_config", None) or {}):
                delete_adapter_layers(encoder, name)


def _module_state(module) -> ActiveSet | None:
    from multipass_diffusion.adapters import _MODULE_STATES

    state = _MODULE_STATES.get(module)
    return state.adapters if state is not None else None
