"""The diffusion engine: a PassSpec and its decoded inputs in, an image and metadata out.

Domain code only (no gRPC, NATS or object-store client): the worker fetches inputs and the tune files a
pass needs (:func:`multipass_diffusion.tune_files.needed_keys`), and stores outputs. All model work of one
device runs on one thread (the worker's executor), so the engine needs no locking around the models.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from multipass.errors import Cancelled, FailedPrecondition, InvalidInput, MultipassError, Violation
from multipass.v1 import diffusion_pb2
from multipass_diffusion import faceid, metrics, models, passes
from multipass_diffusion.adapters import AdapterRequest
from multipass_diffusion.finishing import prompt_expansion
from multipass_diffusion.pass_cache import PassCache
from multipass_diffusion.passes.context import PassContext, PassInputs, ProgressFn, StepMonitor
from multipass_diffusion.passes.sampling import prompt_warnings
from multipass_diffusion.preprocessors import Preprocessors
from multipass_diffusion.runtime import ModelRuntime
from multipass_diffusion.settings import DiffusionSettings

log = logging.getLogger(__name__)

#: Part of every pass-cache key: bump when a change of this code changes outputs.
ENGINE_VERSION = "multipass-diffusion-1"


@dataclass
class PassOutput:
    image: Image.Image
    spec_hash: str
    cache_hit: bool
    duration_seconds: float
    steps_run: int = 0
    warnings: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ResolvedTune:
    path: Path
    sha256: str


@dataclass(frozen=True)
class _Tunes:
    adapters: list[AdapterRequest]
    checkpoint: tuple | None  # (tune_id, ResolvedTune, layout)
    shas: dict[str, str]
    warnings: list[str]


def resolve_device(setting: str) -> str:
    import torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda" and not torch.cuda.is_available():
        raise FailedPrecondition("MULTIPASS_DIFFUSION_DEVICE=cuda but no CUDA device is available")
    return setting


def resolve_dtype(setting: str, device: str):
    import torch

    if setting == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return getattr(torch, setting)


class Engine:
    def __init__(self, settings: DiffusionSettings, *, cache: PassCache | None = None):
        self.settings = settings
        self.cache = cache
        self.device = resolve_device(settings.device)
        self.dtype = resolve_dtype(settings.dtype, self.device)
        self.runtimes: dict[str, ModelRuntime] = {}
        self.preprocessors = Preprocessors(
            models.diffusion_root(settings.model_dir) / "preprocessors", self.device
        )

    # -- loading -------------------------------------------------------------------------------------

    def load(self) -> None:
        """Load every served model and warm it up (one small generation each)."""
        import torch

        _quiet_libraries()
        if self.settings.torch_threads:
            torch.set_num_threads(self.settings.torch_threads)
        if self.device.startswith("cuda"):
            torch.backends.cudnn.benchmark = False
        for entry in models.select(self.settings.model_dir, self.settings.models):
            started = time.perf_counter()
            runtime = ModelRuntime(
                entry,
                model_dir=self.settings.model_dir,
                device=self.device,
                dtype=self.dtype,
                adapter_budget_bytes=self.settings.adapter_memory_mb * 1024 * 1024,
                checkpoint_cache_size=self.settings.checkpoint_cache_size,
                preprocessors=self.preprocessors,
                vae_tile_above_pixels=self.settings.vae_tile_above_pixels,
            )
            self._warm_up(runtime)
            self.runtimes[entry.name] = runtime
            seconds = time.perf_counter() - started
            metrics.MODEL_LOAD_SECONDS.labels(model=entry.name).set(seconds)
            log.info(
                "model loaded",
                extra={
                    "model": entry.name,
                    "family": entry.family,
                    "seconds": round(seconds, 3),
                    "device": self.device,
                },
            )
        self.record_memory()

    def _warm_up(self, runtime: ModelRuntime) -> None:
        import torch

        with torch.inference_mode():
            runtime.base.pipe(
                prompt="",
                num_inference_steps=1,
                width=64,
                height=64,
                output_type="pil",
                generator=torch.Generator("cpu").manual_seed(0),
            )

    # -- running -------------------------------------------------------------------------------------

    def runtime(self, model: str) -> ModelRuntime:
        runtime = self.runtimes.get(model)
        if runtime is None:
            raise InvalidInput.of(
                [
                    Violation(
                        "spec.model",
                        f"got {model!r}; this worker serves {', '.join(self.runtimes) or 'nothing'}",
                    )
                ]
            )
        return runtime

    def run(
        self,
        spec: diffusion_pb2.PassSpec,
        inputs: PassInputs | None = None,
        *,
        progress: ProgressFn | None = None,
        cancel: threading.Event | None = None,
    ) -> PassOutput:
        """Run one pass. Raises InvalidInput, FailedPrecondition, Unavailable (tune fetch) or Cancelled."""
        started = time.perf_counter()
        kind = spec.kind or "unknown"
        try:
            output = self._run(spec, inputs or PassInputs(), progress, cancel, started)
        except Cancelled:
            metrics.PASSES.labels(pass_kind=kind, outcome="cancelled").inc()
            raise
        except MultipassError as error:
            outcome = "retried" if error.retriable else "failed"
            metrics.PASSES.labels(pass_kind=kind, outcome=outcome).inc()
            raise
        except Exception:
            metrics.PASSES.labels(pass_kind=kind, outcome="failed").inc()
            raise
        metrics.PASS_DURATION.labels(pass_kind=kind).observe(output.duration_seconds)
        metrics.PASSES.labels(pass_kind=kind, outcome="succeeded").inc()
        if output.cache_hit:
            metrics.PASS_CACHE_HITS.inc()
        metrics.PASS_STEPS.inc(output.steps_run)
        self.record_memory()
        return output

    def _run(self, spec, inputs: PassInputs, progress, cancel, started: float) -> PassOutput:
        handler = passes.handler_for(spec.kind)
        runtime = self.runtime(spec.model)
        expand = prompt_expansion.requested(spec)
        handler.validate(spec, inputs)
        monitor = StepMonitor(progress, cancel)
        monitor.check()
        expansion_warnings: list[str] = []
        # Metadata told on cache hits too (prompt expansion, faceid).
        reported_metadata: dict[str, str] = {}
        if expand:
            # Before the key: the key holds the expanded prompt, and the pass samples with it.
            original = spec.prompt
            spec, expanded = prompt_expansion.expand_spec(spec, self.settings.model_dir)
            expansion_warnings, reported_metadata = prompt_expansion.expansion_report(original, expanded)
            monitor.check()
        uses_faceid = getattr(handler, "uses_faceid", False)
        tunes = self._resolve_tunes(spec, inputs, runtime, uses_faceid=uses_faceid)
        identity = faceid.resolve(spec, inputs, runtime) if uses_faceid else None
        working = self.settings.working_size_for(runtime.family)
        extra = (
            list(handler.cache_parts(spec, self.settings.model_dir))
            if hasattr(handler, "cache_parts")
            else []
        )
        extra.append(f"vae-tile-above:{runtime.vae_tile_above_pixels}")
        if identity is not None:
            extra += [identity.cache_part(), faceid.fingerprint(runtime.model_dir, runtime.family)]
            reported_metadata["faceid"] = f"{identity.tune_id}:{identity.weight:g}"
        key = spec_hash(
            spec,
            inputs,
            runtime=runtime,
            tune_shas=tunes.shas,
            working_size=working,
            dtype=str(self.dtype),
            extra=extra,
        )
        warnings = expansion_warnings + tunes.warnings + prompt_warnings(spec, runtime.base.tokenizers[0])
        if self.cache is not None:
            cached = self.cache.get(key)
            if cached is not None:
                return PassOutput(
                    cached,
                    key,
                    True,
                    time.perf_counter() - started,
                    0,
                    warnings,
                    {"cache": "hit", **reported_metadata},
                )
        checkpoint = tunes.checkpoint
        if checkpoint is None:
            components, adapters = runtime.components_for(None, None, None, None)
        else:
            tune_id, resolved, layout = checkpoint
            components, adapters = runtime.components_for(tune_id, resolved.path, resolved.sha256, layout)
            runtime.adapters.deactivate()
        # Without a faceid tag this detaches FaceID wherever it is attached: the pass runs the plain model.
        faceid_lora = runtime.faceid.activate(components, identity)
        adapters.activate(tunes.adapters + ([faceid_lora] if faceid_lora is not None else []))
        ctx = PassContext(
            spec,
            inputs,
            runtime,
            components,
            adapters,
            monitor,
            working,
            warnings=list(warnings),
            metadata=dict(reported_metadata),
            faceid=identity,
        )
        image = handler.run(ctx)
        ctx.metadata["steps_run"] = str(monitor.steps_run)
        if adapters.active:
            ctx.metadata["adapters"] = ",".join(adapters.active)
        if self.cache is not None and not getattr(self.cache, "written_by_worker", False):
            self.cache.put(key, image)
        return PassOutput(
            image, key, False, time.perf_counter() - started, monitor.steps_run, ctx.warnings, ctx.metadata
        )

    def _resolve_tunes(
        self, spec: diffusion_pb2.PassSpec, inputs: PassInputs, runtime: ModelRuntime, *, uses_faceid: bool
    ) -> _Tunes:
        adapters: list[AdapterRequest] = []
        checkpoint = None
        shas: dict[str, str] = {}
        warnings: list[str] = []
        for ref in spec.loras:
            if ref.kind == faceid.KIND and uses_faceid:
                continue  # faceid.resolve
            if ref.kind and ref.kind != "lora":
                warnings.append(
                    f"<{ref.kind}:{ref.tune_id}> ignored: the {spec.kind} pass does not use {ref.kind} adapters"
                )
                continue
            tag = f"<lora:{ref.tune_id}:{ref.weight:g}>"
            if ref.tune_id not in spec.tune_files:
                raise InvalidInput.of([Violation(tag, "has no file in spec.tune_files")])
            path = inputs.tune_paths.get(ref.tune_id)
            if path is None:
                raise FailedPrecondition(f"{tag}: the tune file was not fetched to local disk")
            resolved = ResolvedTune(
                Path(path), spec.tune_files[ref.tune_id].sha256.lower() or file_sha256(Path(path))
            )
            shas[ref.tune_id] = resolved.sha256
            info = models.inspect_tune(resolved.path, tag)
            check_family(info, runtime, tag)
            if info.kind == "checkpoint":
                if checkpoint is not None:
                    raise InvalidInput.of(
                        [
                            Violation(
                                tag,
                                f"a pass uses at most one checkpoint tune; {checkpoint[0]} is one already",
                            )
                        ]
                    )
                if ref.weight != 1:
                    warnings.append(f"{tag}: a checkpoint tune has no weight; {ref.weight:g} ignored")
                checkpoint = (ref.tune_id, resolved, info.layout)
            else:
                adapters.append(
                    AdapterRequest(ref.tune_id, resolved.path, resolved.sha256, float(ref.weight))
                )
        return _Tunes(adapters, checkpoint, shas, warnings)

    # -- reporting -----------------------------------------------------------------------------------

    def record_memory(self) -> int:
        import torch

        if not self.device.startswith("cuda"):
            return 0
        allocated = int(torch.cuda.memory_allocated())
        metrics.GPU_MEMORY.labels(device=self.device).set(allocated)
        return allocated

    def capabilities(self) -> list[str]:
        found: set[str] = {f"pass:{kind}" for kind in passes.kinds()}
        for handler in passes.handlers():
            if hasattr(handler, "capabilities"):
                found.update(handler.capabilities(self.settings.model_dir))
        for runtime in self.runtimes.values():
            found.update(runtime.capabilities())
        found.update(f"preprocessor:{kind}" for kind in self.preprocessors.installed())
        return sorted(found)


def check_family(info: models.TuneFile, runtime: ModelRuntime, tag: str) -> None:
    """A tune must be made for the family of the model its pass runs on."""
    sdxl = runtime.family == "sdxl"
    if info.has_second_text_encoder and not sdxl:
        raise InvalidInput.of([Violation(tag, f"is an SDXL tune; model {runtime.name} is {runtime.family}")])
    expected = runtime.base.cross_attention_dim
    if info.cross_attention_dim is not None and info.cross_attention_dim != expected:
        raise InvalidInput.of(
            [
                Violation(
                    tag,
                    f"is a tune for another model family (cross-attention width {info.cross_attention_dim}; model {runtime.name} is {runtime.family} with {expected})",
                )
            ]
        )


def spec_hash(
    spec: diffusion_pb2.PassSpec,
    inputs: PassInputs,
    *,
    runtime: ModelRuntime,
    tune_shas: dict[str, str],
    working_size: int,
    dtype: str,
    extra: list[str] = (),
) -> str:
    """Hash of everything that determines a pass's output (the pass-cache key)."""
    normalised = diffusion_pb2.PassSpec()
    normalised.CopyFrom(spec)
    for name in ("image", "mask", "control_image"):
        normalised.ClearField(name)
    normalised.ClearField("tune_files")
    digest = hashlib.sha256()
    for part in (ENGINE_VERSION, runtime.fingerprint, dtype, str(working_size), *extra):
        digest.update(part.encode() + b"\0")
    for tune_id in sorted(tune_shas):
        digest.update(f"tune:{tune_id}={tune_shas[tune_id]}".encode() + b"\0")
    digest.update(normalised.SerializeToString(deterministic=True))
    for name in ("image", "mask", "control_image"):
        image = getattr(inputs, name)
        if image is None:
            digest.update(f"{name}:none".encode() + b"\0")
            continue
        digest.update(f"{name}:{image.mode}:{image.width}x{image.height}".encode() + b"\0")
        digest.update(hashlib.sha256(image.tobytes()).digest())
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _quiet_libraries() -> None:
    """diffusers/transformers print progress bars and load reports; the worker logs its own lines."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
