"""LoRA adapters as named PEFT adapters on one component set, kept in an LRU bounded by a memory budget.

A pass asks for its adapters with :meth:`AdapterCache.activate` (loading the ones not resident, evicting
the least recently used ones that the pass does not need while the budget is exceeded) and weights them
with ``set_adapters``; :meth:`AdapterCache.deactivate` disables every adapter, so the base pass runs the
unmodified model. Adapters load into the base UNet, the inpainting UNet (when the model has one) and the
text encoders, each with a kohya/A1111 file's alpha/rank scale or a diffusers-format file's saved
LoraConfig (``lora_alpha``/``r`` and patterns, from its header; :func:`load_lora_parts`).

PEFT walks every module of a model on each ``enable_lora``/``set_adapters``/``disable_lora`` call, so the
cache skips the calls that would change nothing: the LoRA state each *module* (UNet, inpainting UNet, text
encoder) was last put in is remembered in :data:`_MODULE_STATES`, keyed by the module itself, because a
checkpoint set shares modules with the base set (its VAE, and the text encoders it does not replace) and
every pipeline built with ``from_pipe`` shares all of them. Loading or deleting an adapter forgets the
state of the modules it touched (PEFT makes new layers enabled and may change the active adapters).
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file as load_safetensors

from multipass.errors import InvalidInput, Violation
from multipass_diffusion import comfy_lora
from multipass_diffusion.comfy_lora import is_comfy
from multipass_diffusion.pipelines import ComponentSet

log = logging.getLogger(__name__)

#: ((adapter name, weight), ...) made active with ``set_adapters``.
ActiveSet = tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class _LoraState:
    """What a module's LoRA layers were last set to: enabled or not, and the active adapters."""

    enabled: bool | None  # None: not known
    adapters: ActiveSet | None  # None: not known


#: The last known LoRA state of each module (absent: unknown, the next call goes to PEFT).
_MODULE_STATES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def forget_lora_state(modules) -> None:
    """Forget what ``modules`` were set to (after anything changed their adapters outside this cache)."""
    for module in modules:
        if module is not None:
            _MODULE_STATES.pop(module, None)


@dataclass(frozen=True)
class AdapterRequest:
    """One LoRA for one pass: its tune id, resolved file and sha256, and its weight.

    ``state``: the LoRA's weights already in memory (FaceID's LoRA, split off its IP-Adapter file at
    ``path``), read instead of ``path``; ``label``: the tag errors name instead of ``<lora:ID:W>``.
    """

    tune_id: str
    path: Path
    sha256: str
    weight: float
    state: Mapping | None = field(default=None, compare=False, repr=False)
    label: str = field(default="", compare=False)

    @property
    def adapter_name(self) -> str:
        return f"t{re.sub(r'[^0-9A-Za-z_]', '_', self.tune_id)}_{self.sha256[:12]}"

    @property
    def tag(self) -> str:
        return self.label or f"<lora:{self.tune_id}:{self.weight:g}>"


class AdapterCache:
    """Resident adapters of one component set; least recently used first."""

    def __init__(
        self,
        components: ComponentSet,
        budget_bytes: int,
        *,
        on_hit: Callable[[], None] = lambda: None,
        on_miss: Callable[[], None] = lambda: None,
        namespace: str = "",
    ):
        self.components = components
        #: Prefix of this cache's adapter names: a checkpoint set can share a text encoder with the base set.
        self.namespace = namespace
        self.budget_bytes = budget_bytes
        self._resident: OrderedDict[str, int] = OrderedDict()
        self._on_hit = on_hit
        self._on_miss = on_miss
        self.active: tuple[str, ...] = ()

    @property
    def resident(self) -> list[str]:
        return list(self._resident)

    @property
    def resident_bytes(self) -> int:
        return sum(self._resident.values())

    def activate(self, requests: list[AdapterRequest]) -> None:
        """Make exactly ``requests`` active with their weights (an empty list deactivates everything)."""
        if not requests:
            self.deactivate()
            return
        names = []
        for request in requests:
            name = self.namespace + request.adapter_name
            if name in self._resident:
                self._resident.move_to_end(name)
                self._on_hit()
            else:
                self._on_miss()
                self._load(request, name, keep={self.namespace + r.adapter_name for r in requests})
            names.append(name)
        weights = [float(r.weight) for r in requests]
        wanted: ActiveSet = tuple(zip(names, weights, strict=True))
        pipe = self.components.pipe
        # pipe.enable_lora / pipe.set_adapters act on the UNet and every text encoder together.
        pipe_modules = [pipe.unet, *self.components.text_encoders]
        if not all(_is_enabled(m) for m in pipe_modules):
            pipe.enable_lora()
            _mark(pipe_modules, enabled=True)
        if not all(_has_active(m, wanted) for m in pipe_modules):
            pipe.set_adapters(names, adapter_weights=weights)
            _mark(pipe_modules, adapters=wanted)
        inpaint = self.components.inpaint_unet
        if inpaint is not None:
            if not _is_enabled(inpaint):
                inpaint.enable_lora()
                _mark([inpaint], enabled=True)
            if not _has_active(inpaint, wanted):
                inpaint.set_adapters(names, weights=weights)
                _mark([inpaint], adapters=wanted)
        self.active = tuple(names)

    def deactivate(self) -> None:
        """Disable every adapter on these modules (also ones another cache loaded into a shared module)."""
        from diffusers.loaders.lora_base import disable_lora_for_text_encoder

        for unet in self.components.unets:
            if getattr(unet, "peft_config", None) and not _is_disabled(unet):
                unet.disable_lora()
                _mark([unet], enabled=False)
        for encoder in self.components.text_encoders:
            has_lora = getattr(encoder, "peft_config", None) or getattr(
                encoder, "_hf_peft_config_loaded", False
            )
            if has_lora and not _is_disabled(encoder):
                disable_lora_for_text_encoder(encoder)
                _mark([encoder], enabled=False)
        self.active = ()

    def _load(self, request: AdapterRequest, name: str, *, keep: set[str]) -> None:
        pipe = self.components.pipe
        state_dict, alphas, metadata = read_lora(pipe, request)
        size = sum(t.numel() for t in state_dict.values()) * self.components.dtype.itemsize
        self._evict(size, keep)
        forget_lora_state(self._touched_modules())
        try:
            with warnings.catch_warnings():
                # Several adapters on one model is what this cache is for.
                warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                load_lora_parts(pipe, state_dict, alphas, adapter_name=name, metadata=metadata)
                if self.components.inpaint_unet is not None:
                    unet_part = {k: v for k, v in state_dict.items() if "conv_in" not in k}
                    type(pipe).load_lora_into_unet(
                        unet_part,
                        alphas,
                        unet=self.components.inpaint_unet,
                        adapter_name=name,
                        metadata=component_metadata(metadata, "unet"),
                    )
        except (ValueError, RuntimeError, KeyError) as error:
            self._drop(name)
            raise InvalidInput.of(
                [Violation(request.tag, f"does not fit model {self.components.label}: {error}")]
            ) from error
        self._resident[name] = size
        log.info("adapter loaded", extra={"adapter": name, "bytes": size, "resident": len(self._resident)})

    def _evict(self, incoming: int, keep: set[str]) -> None:
        for name in list(self._resident):
            if self.resident_bytes + incoming <= self.budget_bytes:
                return
            if name in keep:
                continue
            self._drop(name)
            log.info("adapter evicted", extra={"adapter": name})

    def _touched_modules(self) -> list:
        return [*self.components.unets, *self.components.text_encoders]

    def _drop(self, name: str) -> None:
        self._resident.pop(name, None)
        forget_lora_state(self._touched_modules())
        with contextlib.suppress(ValueError, KeyError):
            self.components.pipe.delete_adapters(name)
        if self.components.inpaint_unet is not None:
            with contextlib.suppress(ValueError, KeyError):
                self.components.inpaint_unet.delete_adapters(name)


def read_lora(pipe, request: AdapterRequest) -> tuple[dict, dict | None, dict | None]:
    """(state dict, kohya network alphas, adapter metadata) of a LoRA file or in-memory state, converted by
    diffusers to its own key format; a file diffusers cannot read is the request's invalid input."""
    try:
        source = dict(request.state) if request.state is not None else str(request.path)
        if request.state is None and is_comfy(safetensors_names(request.path)):
            source = load_safetensors(str(request.path))
        if isinstance(source, dict) and is_comfy(source):
            source = comfy_lora.to_kohya(source)  # diffusers reads kohya's names, not ComfyUI's
        return pipe.lora_state_dict(source, unet_config=pipe.unet.config, return_lora_metadata=True)
    except (ValueError, KeyError, OSError) as error:
        raise InvalidInput.of(
            [Violation(request.tag, f"is not a LoRA diffusers can read: {error}")]
        ) from error


def safetensors_names(path: Path) -> list[str]:
    """The tensor names of a safetensors file (its header only); none for a file that is not one."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return list(handle.keys())
    except Exception:  # noqa: BLE001 - not a safetensors file: diffusers says what it is not
        return []


def load_lora_parts(
    pipe,
    state_dict: dict,
    alphas: dict | None,
    *,
    adapter_name: str,
    unet: bool = True,
    metadata: dict | None = None,
) -> None:
    """Load a ``lora_state_dict`` result into ``pipe``'s UNet (unless ``unet`` is False) and text encoders.

    ``pipe.load_lora_weights`` cannot take the alphas: it runs ``lora_state_dict`` again on what it is
    given, and an already converted kohya/A1111 file no longer looks like one, so its ``alpha`` values
    would be lost and every module would run at scale 1 instead of alpha/rank. This does what
    ``load_lora_weights`` does after that conversion, with the alphas ``lora_state_dict`` returned, so the
    UNet, the inpainting UNet and the text encoders all get the scale the LoRA was trained with.

    ``metadata`` is the file's ``lora_adapter_metadata`` (``lora_state_dict(...,
    return_lora_metadata=True)``): the LoraConfig a diffusers-format file was saved with (``lora_alpha``,
    ``r``, rank/alpha patterns), keyed ``unet.*``/``text_encoder*.*``; the dict of weights has no header,
    so without it such a file would run at scale 1 instead of lora_alpha/r.
    Raises ValueError for a state dict that is not a LoRA, as ``load_lora_weights`` does.
    """
    if not all("lora" in key for key in state_dict):
        raise ValueError("Invalid LoRA checkpoint: every parameter name must contain 'lora'")
    parts = ("unet.", *(f"{p}." for p in ("text_encoder", "text_encoder_2") if getattr(pipe, p, None)))
    unused = sorted(key for key in state_dict if not key.startswith(parts))
    if unused:
        # diffusers would drop them without a word: the tune would run as another one.
        raise ValueError(
            f"{len(unused)} of its tensors fit no part of the model ({', '.join(p.rstrip('.') for p in parts)}), "
            f"e.g. {unused[0]}"
        )
    loader = type(pipe)
    if unet:
        loader.load_lora_into_unet(
            state_dict,
            alphas,
            unet=pipe.unet,
            adapter_name=adapter_name,
            _pipeline=pipe,
            metadata=component_metadata(metadata, "unet"),
        )
    for prefix in ("text_encoder", "text_encoder_2"):
        encoder = getattr(pipe, prefix, None)
        if encoder is not None:
            loader.load_lora_into_text_encoder(
                state_dict,
                alphas,
                text_encoder=encoder,
                prefix=prefix,
                lora_scale=pipe.lora_scale,
                adapter_name=adapter_name,
                _pipeline=pipe,
                metadata=component_metadata(metadata, prefix),
            )


def component_metadata(metadata: dict | None, prefix: str) -> dict | None:
    """``metadata`` when it holds ``prefix``'s LoraConfig, else None (diffusers then reads the shapes).

    diffusers keeps only the ``prefix.*`` keys of what it is given and builds ``LoraConfig(**rest)``: a
    file with metadata for its UNet but not for its text encoder would otherwise get a default config
    (rank 8, no target modules) for the text encoder instead of one read from its weights.
    """
    if metadata and any(key.startswith(f"{prefix}.") for key in metadata):
        return metadata
    return None


def _is_enabled(module) -> bool:
    state = _MODULE_STATES.get(module)
    return state is not None and state.enabled is True


def _is_disabled(module) -> bool:
    state = _MODULE_STATES.get(module)
    return state is not None and state.enabled is False


def _has_active(module, wanted: ActiveSet) -> bool:
    state = _MODULE_STATES.get(module)
    return state is not None and state.adapters == wanted


def _mark(modules, *, enabled: bool | None = None, adapters: ActiveSet | None = None) -> None:
    """Record a call that just went to PEFT: ``enabled`` and/or ``adapters`` (None = left as it was)."""
    for module in modules:
        state = _MODULE_STATES.get(module) or _LoraState(enabled=None, adapters=None)
        _MODULE_STATES[module] = _LoraState(
            enabled=state.enabled if enabled is None else enabled,
            adapters=state.adapters if adapters is None else adapters,
        )
