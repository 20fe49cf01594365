"""One served model in memory: its component set, adapter cache, checkpoint tunes, ControlNets, FaceID and
the composition adapter."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from multipass.errors import InvalidInput, Violation
from multipass_diffusion import composition, faceid, lora_hotswap, metrics, models, reference_attention
from multipass_diffusion.adapters import AdapterCache
from multipass_diffusion.device_tuning import compile_unets, tune_unets
from multipass_diffusion.pipelines import ComponentSet, checkpoint_components
from multipass_diffusion.preprocessors import Preprocessors

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompileOptions:
    """How the base UNets are compiled (``DiffusionSettings.compile*``); None on a runtime = not compiled."""

    mode: str = ""
    backend: str = "inductor"
    #: Rank of the LoRA hot-swap slot: the largest summed rank of one pass's LoRAs.
    lora_rank: int = 64


class ModelRuntime:
    def __init__(
        self,
        entry: models.ModelEntry,
        *,
        model_dir: Path,
        device: str,
        dtype,
        adapter_budget_bytes: int,
        checkpoint_cache_size: int,
        preprocessors: Preprocessors,
        vae_tile_above_pixels: int = 0,
        compile_options: CompileOptions | None = None,
    ):
        self.entry = entry
        self.model_dir = Path(model_dir)
        self.device = device
        self.dtype = dtype
        self.preprocessors = preprocessors
        #: Images with more pixels go through the VAE in tiles (0 = never).
        self.vae_tile_above_pixels = vae_tile_above_pixels
        self._adapter_budget = adapter_budget_bytes
        self._checkpoint_cache_size = checkpoint_cache_size
        pipe = models.load_pipeline(entry, device=device, dtype=dtype)
        inpaint_unet = models.load_inpaint_unet(entry, device=device, dtype=dtype)
        tune_unets((pipe.unet, inpaint_unet), device)
        #: Set when the base UNets are compiled: their LoRAs go through the hot-swap slot.
        self.compile_options = compile_options
        if compile_options is not None:
            for unet in (pipe.unet, inpaint_unet):
                if unet is not None:
                    lora_hotswap.prepare_slot(unet, compile_options.lora_rank)
            compile_unets(
                (pipe.unet, inpaint_unet), mode=compile_options.mode, backend=compile_options.backend
            )
        self.base = ComponentSet(pipe, family=entry.family, label=entry.name, inpaint_unet=inpaint_unet)
        self.adapters = self._base_adapter_cache(self.base)
        self.fingerprint = models.fingerprint(entry.path)
        self._checkpoints: OrderedDict[str, tuple[ComponentSet, AdapterCache]] = OrderedDict()
        self._controlnets: dict[str, object] = {}
        #: IP-Adapter FaceID of this model's family: read on the first faceid pass, never before.
        self.faceid = faceid.FaceIdAdapter(self.model_dir, entry.family, label=entry.name)
        #: The IP Composition Adapter (controlnet=composition): read on the first composition pass.
        self.composition = composition.CompositionAdapter(
            self.model_dir, entry.family, label=entry.name, device=device, dtype=dtype
        )
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def family(self) -> str:
        return self.entry.family

    def _base_adapter_cache(self, components: ComponentSet) -> AdapterCache:
        if self.compile_options is None:
            return self._adapter_cache(components)
        return lora_hotswap.HotswapAdapterCache(
            components,
            self._adapter_budget,
            target_rank=self.compile_options.lora_rank,
            on_hit=metrics.LORA_CACHE_HITS.inc,
            on_miss=metrics.LORA_CACHE_MISSES.inc,
        )

    def _adapter_cache(self, components: ComponentSet, namespace: str = "") -> AdapterCache:
        return AdapterCache(
            components,
            self._adapter_budget,
            on_hit=metrics.LORA_CACHE_HITS.inc,
            on_miss=metrics.LORA_CACHE_MISSES.inc,
            namespace=namespace,
        )

    def controlnet(self, kind: str):
        with self._lock:
            if kind not in self._controlnets:
                self._controlnets[kind] = models.load_controlnet(
                    self.model_dir,
                    self.family,
                    kind,
                    cross_attention_dim=self.base.cross_attention_dim,
                    device=self.device,
                    dtype=self.dtype,
                )
            return self._controlnets[kind]

    def capabilities(self) -> list[str]:
        found = [f"controlnet:{kind}" for kind in models.installed_controlnets(self.model_dir, self.family)]
        found.append(reference_attention.CAPABILITY)  # needs no weights
        if composition.installed(self.model_dir, self.family):
            found += [composition.CAPABILITY, f"{composition.CAPABILITY}:{self.name}"]
        if self.base.inpaint_unet is not None:
            found.append(f"inpaint_unet:{self.name}")
        if faceid.installed(self.model_dir, self.family):
            found += [faceid.CAPABILITY, f"{faceid.CAPABILITY}:{self.name}"]
        return found

    def components_for(
        self, checkpoint_tune_id: str | None, path: Path | None, sha256: str | None, layout: str | None
    ):
        """(component set, adapter cache) of the base model, or of a checkpoint tune (cached, LRU)."""
        if checkpoint_tune_id is None:
            return self.base, self.adapters
        with self._lock:
            cached = self._checkpoints.get(sha256)
            if cached is not None:
                self._checkpoints.move_to_end(sha256)
                return cached
        try:
            components = checkpoint_components(
                self.base,
                path,
                layout,
                label=f"{self.name}+{checkpoint_tune_id}",
                model_path=self.entry.config_dir,
            )
        except (RuntimeError, KeyError, ValueError, OSError) as error:
            raise InvalidInput.of(
                [
                    Violation(
                        f"<lora:{checkpoint_tune_id}>", f"checkpoint does not fit model {self.name}: {error}"
                    )
                ]
            ) from error
        entry = (components, self._adapter_cache(components, namespace=f"c{sha256[:8]}_"))
        with self._lock:
            if self._checkpoint_cache_size > 0:
                self._checkpoints[sha256] = entry
                while len(self._checkpoints) > self._checkpoint_cache_size:
                    self._checkpoints.popitem(last=False)
        return entry

    def resident_adapters(self) -> list[str]:
        names = list(self.adapters.resident)
        for _, cache in self._checkpoints.values():
            names += cache.resident
        return names
