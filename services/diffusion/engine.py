"""The diffusion engine: a PassSpec and its decoded inputs in, an image and metadata out.

Domain code only (no gRPC, NATS or object-store client): the worker fetches inputs and the tune files a
pass needs (:func:`multipass_diffusion.tune_files.needed_keys`), and stores outputs. All model work of one
device runs on one thread (the worker's executor), so the engine needs no locking around the models.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from multipass.errors import FailedPrecondition, InvalidInput, Violation
from multipass.v1 import diffusion_pb2
from multipass_diffusion import composition, faceid, metrics, models, named_loras, prompt_expansion
from multipass_diffusion.adapters import AdapterRequest
from multipass_diffusion.nets import components
from multipass_diffusion.pass_cache import PassCache
from multipass_diffusion.passes.context import FoundInCache, PassContext, PassInputs, ProgressFn, StepMonitor
from multipass_diffusion.passes.handler import PassHandler
from multipass_diffusion.passes.registry import HANDLERS, handler_for
from multipass_diffusion.passes.sampling import prompt_warnings
from multipass_diffusion.preprocessors import Preprocessors
from multipass_diffusion.runtime import CompileOptions, ModelRuntime
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


@dataclass
class _Prepared:
    """A pass ready to run or to be answered from the cache (see ``Engine._prepare``)."""

    spec: diffusion_pb2.PassSpec
    handler: PassHandler
    runtime: ModelRuntime
    tunes: _Tunes
    identity: faceid.FaceIdRequest | None
    working: int
    key: str
    warnings: list[str]
    reported_metadata: dict[str, str]


def resolve_device(setting: str) -> str:
    import torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda" and not torch.cuda.is_available():
        raise FailedPrecondition("MULTIPASS_DIFFUSION_DEVICE=cuda but no CUDA device is available")
    return setting


def compile_options(settings: DiffusionSettings) -> CompileOptions | None:
    """The runtimes' compile options, or None when ``MULTIPASS_DIFFUSION_COMPILE`` is off."""
    if not settings.compile:
        return None
    return CompileOptions(settings.compile_mode, settings.compile_backend, settings.compile_lora_rank)


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
                compile_options=compile_options(self.settings),
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
        counted: bool = True,
    ) -> PassOutput:
        """Run one pass. Raises InvalidInput, FailedPrecondition, Unavailable (tune fetch) or Cancelled.

        A pass that succeeds is counted in the pass metrics; ``counted=False`` leaves them alone (a pass
        run ahead of its request: :meth:`count` it when a request takes it). A failure is counted by the
        worker, which sees every failure of a pass, those before and after the engine's part included."""
        started = time.perf_counter()
        output = self._run(spec, inputs or PassInputs(), progress, cancel, started)
        if counted:
            self.count(spec, output)
        self.record_memory()
        return output

    @staticmethod
    def count(spec: diffusion_pb2.PassSpec, output: PassOutput) -> None:
        """Count a pass that succeeded in the pass metrics (duration, outcome, cache hit, steps)."""
        _count_success(spec.kind or "unknown", output)

    def _run(self, spec, inputs: PassInputs, progress, cancel, started: float) -> PassOutput:
        handler = handler_for(spec.kind)
        if not handler.uses_models:
            self.runtime(spec.model)  # the subject's model: checked as for every pass
            return self._run_without_models(handler, spec, inputs, started)
        monitor = StepMonitor(progress, cancel)
        prepared = self._prepare(spec, inputs, monitor)
        lookup = getattr(self.cache, "lookup", None)
        if lookup is None:
            hit = self._cached(prepared, started)
            if hit is not None:
                return hit
        else:
            # A store round trip: run beside it and stop at the next step if it finds the output.
            monitor.lookup = lookup(prepared.key)
        try:
            ctx = self._context(prepared, inputs, monitor)
            image = prepared.handler.run(ctx)
        except FoundInCache as found:
            return self._hit(prepared, found.image, started)
        finally:
            if monitor.lookup is not None:
                monitor.lookup.cancel()
        return self._finish(prepared, ctx, image, monitor.steps_run, started)

    def _prepare(self, spec, inputs: PassInputs, monitor: StepMonitor) -> _Prepared:
        """Validate, expand the prompt, resolve tunes and identity, and compute the pass-cache key."""
        handler = handler_for(spec.kind)
        runtime = self.runtime(spec.model)
        expand = prompt_expansion.requested(spec)
        handler.validate(spec, inputs)
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
        tunes = self._resolve_tunes(spec, inputs, runtime, uses_faceid=handler.uses_faceid)
        identity = faceid.resolve(spec, inputs, runtime) if handler.uses_faceid else None
        working = self.settings.working_size_for(runtime.family)
        extra = list(handler.cache_parts(spec, self.settings.model_dir))
        extra.append(f"vae-tile-above:{runtime.vae_tile_above_pixels}")
        if runtime.compile_options is not None:
            # Compiled kernels and folded LoRA scales round differently: never mix with uncompiled outputs.
            extra.append("unet:compiled-hotswap")
        if spec.controlnet == composition.KIND:
            extra.append(composition.fingerprint(runtime.model_dir, runtime.family))
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
        return _Prepared(spec, handler, runtime, tunes, identity, working, key, warnings, reported_metadata)

    def _cached(self, prepared: _Prepared, started: float) -> PassOutput | None:
        if self.cache is None:
            return None
        cached = self.cache.get(prepared.key)
        if cached is None:
            return None
        return self._hit(prepared, cached, started)

    def _hit(self, prepared: _Prepared, cached, started: float) -> PassOutput:
        return PassOutput(
            cached,
            prepared.key,
            True,
            time.perf_counter() - started,
            0,
            list(prepared.warnings),
            {"cache": "hit", **prepared.reported_metadata},
        )

    def _context(self, prepared: _Prepared, inputs: PassInputs, monitor) -> PassContext:
        """Activate the pass's checkpoint, adapters and identity; the context its handler runs in."""
        runtime, identity = prepared.runtime, prepared.identity
        checkpoint = prepared.tunes.checkpoint
        if checkpoint is None:
            components, adapters = runtime.components_for(None, None, None, None)
        else:
            tune_id, resolved, layout = checkpoint
            components, adapters = runtime.components_for(tune_id, resolved.path, resolved.sha256, layout)
            runtime.adapters.deactivate()
        # Without a faceid tag this detaches FaceID wherever it is attached: the pass runs the plain model.
        faceid_lora = runtime.faceid.activate(components, identity)
        adapters.activate(prepared.tunes.adapters + ([faceid_lora] if faceid_lora is not None else []))
        return PassContext(
            prepared.spec,
            inputs,
            runtime,
            components,
            adapters,
            monitor,
            prepared.working,
            warnings=list(prepared.warnings),
            metadata=dict(prepared.reported_metadata),
            faceid=identity,
        )

    def _finish(
        self, prepared: _Prepared, ctx: PassContext, image, steps_run: int, started: float
    ) -> PassOutput:
        ctx.metadata["steps_run"] = str(steps_run)
        if ctx.adapters.active:
            ctx.metadata["adapters"] = ",".join(ctx.adapters.active)
        if self.cache is not None and not getattr(self.cache, "written_by_worker", False):
            self.cache.put(prepared.key, image)
        return PassOutput(
            image,
            prepared.key,
            False,
            time.perf_counter() - started,
            steps_run,
            ctx.warnings,
            ctx.metadata,
        )

    def run_batch(
        self,
        spec: diffusion_pb2.PassSpec,
        seeds: Sequence[int],
        inputs: PassInputs | None = None,
        *,
        progress: Sequence[ProgressFn | None] | None = None,
        cancel: threading.Event | None = None,
    ) -> list[PassOutput]:
        """Run ``spec`` once per seed (``spec.seed`` replaced): one output per seed, in order.

        Each seed's pass is looked up in the pass cache first; the misses run as one pipeline call when
        their handler can batch them (``batch_support``) and their prepared specs are equal but for the
        seed, else one after the other through :meth:`run`. ``progress[i]`` hears seed *i*'s steps.

        The batched outputs share the batch's wall time as their duration and its steps as steps_run,
        and say ``batch=<n>`` in their metadata.
        """
        started = time.perf_counter()
        seeds = list(seeds)
        inputs = inputs or PassInputs()
        reporters = list(progress) if progress is not None else [None] * len(seeds)
        if len(reporters) != len(seeds):
            raise ValueError(f"{len(reporters)} progress callbacks for {len(seeds)} seeds")
        monitors = [StepMonitor(reporter, cancel) for reporter in reporters]
        prepared = [
            self._prepare(_with_seed(spec, seed), inputs, monitor)
            for seed, monitor in zip(seeds, monitors, strict=True)
        ]
        outputs: list[PassOutput | None] = [self._cached(one, started) for one in prepared]
        misses = [i for i, output in enumerate(outputs) if output is None]
        if self._batches(prepared, misses, inputs):
            self._run_together(prepared, misses, inputs, monitors, outputs, started)
        else:
            for i in misses:
                ctx = self._context(prepared[i], inputs, monitors[i])
                image = prepared[i].handler.run(ctx)
                outputs[i] = self._finish(prepared[i], ctx, image, monitors[i].steps_run, started)
        for output in outputs:
            _count_success(spec.kind or "unknown", output)
        self.record_memory()
        return outputs

    @staticmethod
    def _batches(prepared: list[_Prepared], misses: list[int], inputs: PassInputs) -> bool:
        """Whether the missed seeds run as one pipeline call (their specs equal but for the seed)."""
        if len(misses) < 2:
            return False
        lead = prepared[misses[0]]
        if not lead.handler.batch_support(lead.spec, inputs):
            return False
        return len({_unseeded(prepared[i].spec) for i in misses}) == 1

    def _run_together(
        self,
        prepared: list[_Prepared],
        misses: list[int],
        inputs: PassInputs,
        monitors: list[StepMonitor],
        outputs: list[PassOutput | None],
        started: float,
    ) -> None:
        lead = prepared[misses[0]]
        monitor = _BatchMonitor([monitors[i] for i in misses])
        ctx = self._context(lead, inputs, monitor)
        images = lead.handler.run_batch(ctx, [prepared[i].spec.seed for i in misses])
        for i, image in zip(misses, images, strict=True):
            own = prepared[i]
            member = dataclasses.replace(
                ctx,
                spec=own.spec,
                warnings=own.warnings + [w for w in ctx.warnings if w not in own.warnings],
                metadata={**ctx.metadata, **own.reported_metadata, "batch": str(len(misses))},
            )
            outputs[i] = self._finish(own, member, image, monitor.steps_run, started)

    def _run_without_models(
        self, handler: PassHandler, spec, inputs: PassInputs, started: float
    ) -> PassOutput:
        """A pass without model work (composite): no runtime, adapters, or pass-cache lookup (it is cheap)."""
        handler.validate(spec, inputs)
        ctx = PassContext(spec, inputs, None, None, None, StepMonitor(), 0)
        image = handler.run(ctx)
        key = hashlib.sha256(
            ENGINE_VERSION.encode() + b"\0" + spec.SerializeToString(deterministic=True)
        ).hexdigest()
        return PassOutput(image, key, False, time.perf_counter() - started, 0, ctx.warnings, ctx.metadata)

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
            resolved = ResolvedTune(*named_loras.local_file(spec, inputs, runtime.model_dir, ref, tag))
            shas[ref.tune_id] = resolved.sha256
            info = models.inspect_tune(resolved.path, tag)
            models.check_family(info, runtime, tag)
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
        model_dir = self.settings.model_dir
        found: set[str] = {f"pass:{kind}" for kind in HANDLERS}
        for handler in HANDLERS.values():
            found.update(handler.capabilities(model_dir))
        if components.PROMPT_EXPANDER in components.installed_capabilities(model_dir):
            found.add(components.PROMPT_EXPANDER)  # the prompt_expansion option of the sampling passes
        for runtime in self.runtimes.values():
            found.update(runtime.capabilities())
        found.update(f"preprocessor:{kind}" for kind in self.preprocessors.installed())
        found.update(named_loras.capabilities(model_dir, self.runtimes))
        return sorted(found)


class _BatchMonitor:
    """The step monitor of a batch: each step is a step of every member (progress, cancel)."""

    def __init__(self, members: list[StepMonitor]):
        self.members = members

    @property
    def steps_run(self) -> int:
        """The batch's steps (each member counts every one of them; not its model evaluations)."""
        return max((member.steps_run for member in self.members), default=0)

    def check(self) -> None:
        for member in self.members:
            member.check()

    def callback(self, pipe, step: int, timestep, tensors: dict) -> dict:
        for member in self.members:
            member.callback(pipe, step, timestep, tensors)
        return tensors


def _with_seed(spec: diffusion_pb2.PassSpec, seed: int) -> diffusion_pb2.PassSpec:
    seeded = diffusion_pb2.PassSpec()
    seeded.CopyFrom(spec)
    seeded.seed = seed
    return seeded


def _unseeded(spec: diffusion_pb2.PassSpec) -> bytes:
    return _with_seed(spec, 0).SerializeToString(deterministic=True)


def _count_success(kind: str, output: PassOutput) -> None:
    metrics.PASS_DURATION.labels(pass_kind=kind).observe(output.duration_seconds)
    metrics.PASSES.labels(pass_kind=kind, outcome="succeeded").inc()
    if output.cache_hit:
        metrics.PASS_CACHE_HITS.inc()
    metrics.PASS_STEPS.inc(output.steps_run)


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
    if inputs.cache_scope:
        digest.update(f"scope:{inputs.cache_scope}".encode() + b"\0")
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


def _quiet_libraries() -> None:
    """diffusers/transformers print progress bars and load reports; the worker logs its own lines."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
