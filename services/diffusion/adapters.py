"""LoRA adapters as named PEFT adapters on one component set, kept in an LRU bounded by a memory budget.

A pass asks for its adapters with :meth:`AdapterCache.activate` (loading the ones not resident, evicting
the least recently used ones that the pass does not need while the budget is exceeded) and weights them
with ``set_adapters``; :meth:`AdapterCache.deactivate` disables every adapter, so the base pass runs the
unmodified model. Adapters load into the base UNet, the inpainting UNet (when the model has one) and the
text encoders.
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from multipass.errors import InvalidInput, Violation
from multipass_diffusion.pipelines import ComponentSet

log = logging.getLogger(__name__)


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
        pipe = self.components.pipe
        pipe.enable_lora()
        pipe.set_adapters(names, adapter_weights=weights)
        if self.components.inpaint_unet is not None:
            self.components.inpaint_unet.enable_lora()
            self.components.inpaint_unet.set_adapters(names, weights=weights)
        self.active = tuple(names)

    def deactivate(self) -> None:
        """Disable every adapter on these modules (also ones another cache loaded into a shared module)."""
        from diffusers.loaders.lora_base import disable_lora_for_text_encoder

        for unet in self.components.unets:
            if getattr(unet, "peft_config", None):
                unet.disable_lora()
        for encoder in self.components.text_encoders:
            if getattr(encoder, "peft_config", None) or getattr(encoder, "_hf_peft_config_loaded", False):
                disable_lora_for_text_encoder(encoder)
        self.active = ()

    def _load(self, request: AdapterRequest, name: str, *, keep: set[str]) -> None:
        pipe = self.components.pipe
        try:
            source = dict(request.state) if request.state is not None else str(request.path)
            state_dict, alphas = pipe.lora_state_dict(source, unet_config=pipe.unet.config)
        except (ValueError, KeyError, OSError) as error:
            raise InvalidInput.of(
                [Violation(request.tag, f"is not a LoRA diffusers can read: {error}")]
            ) from error
        size = sum(t.numel() for t in state_dict.values()) * self.components.dtype.itemsize
        self._evict(size, keep)
        try:
            with warnings.catch_warnings():
                # Several adapters on one model is what this cache is for.
                warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                pipe.load_lora_weights(state_dict, adapter_name=name)
                if self.components.inpaint_unet is not None:
                    unet_part = {k: v for k, v in state_dict.items() if "conv_in" not in k}
                    type(pipe).load_lora_into_unet(
                        unet_part, alphas, unet=self.components.inpaint_unet, adapter_name=name
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

    def _drop(self, name: str) -> None:
        self._resident.pop(name, None)
        with contextlib.suppress(ValueError, KeyError):
            self.components.pipe.delete_adapters(name)
        if self.components.inpaint_unet is not None:
            with contextlib.suppress(ValueError, KeyError):
                self.components.inpaint_unet.delete_adapters(name)
