"""The diffusion worker's settings, read once from ``MULTIPASS_*`` environment variables."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from multipass.config import EnvReader
from multipass.connections import NatsSettings, S3Settings
from multipass.event_loop import DEFAULT_EVENT_LOOP, EVENT_LOOPS
from multipass_diffusion.device_tuning import DEFAULT_VAE_TILE_ABOVE_PIXELS

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "float16", "bfloat16")
PASS_CACHES = ("store", "memory", "off")
#: torch.compile modes ("" = torch's default).
COMPILE_MODES = ("", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: Ack wait of the pass consumers: a pass whose worker died is redelivered this long after its last heartbeat.
#: Short, because heartbeats (``in_progress`` every third of it, from the bus) keep a long pass of a live worker.
DEFAULT_ACK_WAIT_S = 15.0
#: Short side of person-pass crops per model family, unless MULTIPASS_DIFFUSION_WORKING_SIZE overrides it.
FAMILY_WORKING_SIZE = {"sd15": 512, "sdxl": 1024}


@dataclass(frozen=True)
class DiffusionSettings:
    """Everything the diffusion worker needs; see ``from_env`` for the variables.

    ``prefetch_depth`` (``MULTIPASS_DIFFUSION_PREFETCH``, default 1): passes this worker holds beyond the
    one on the device, with their inputs fetched and decoded, so the device starts the next pass as soon as
    it finishes one (docs/DIFFUSION.md, "Prefetch"). 0 = take the next pass only after the current one is
    decided.

    ``png_compress_level`` (``MULTIPASS_DIFFUSION_PNG_COMPRESS_LEVEL``, 0-9, default 1): zlib level of the
    pass outputs (and their pass-cache copies). The next pass of the chain waits for the upload, so speed
    wins: level 1 encodes a 1024x1024 photo 3-4x faster than 6 for ~10% more bytes; pixels are identical.

    ``recent_outputs_mb`` (``MULTIPASS_DIFFUSION_RECENT_OUTPUTS_MB``, default 256, 0 = off): memory for the
    decoded outputs this worker stored lately; the next pass of a chain that lands here reads its input
    image from it instead of the object store (:mod:`multipass_diffusion.recent_outputs`).

    ``compile`` (``MULTIPASS_DIFFUSION_COMPILE``, default off): ``torch.compile`` the base model's UNet(s)
    at load, with ``compile_mode`` (``MULTIPASS_DIFFUSION_COMPILE_MODE``, "" = torch's default) and
    ``compile_backend`` (``MULTIPASS_DIFFUSION_COMPILE_BACKEND``, default "inductor", or any registered
    dynamo backend). LoRAs then reach the compiled UNets by hot-swap into one adapter slot of rank
    ``compile_lora_rank`` (``MULTIPASS_DIFFUSION_COMPILE_LORA_RANK``, default 64: the largest summed rank
    of one pass's LoRAs), so switching persons never recompiles; a pass whose LoRAs need more rank, or
    target modules outside the transformer blocks, is refused (docs/DIFFUSION.md, "Compiled UNet").
    Compiling costs a first pass per new image size; checkpoint tunes stay uncompiled.

    ``ack_wait_s`` (``MULTIPASS_DIFFUSION_ACK_WAIT_S``, 5..3600, default 15): how long JetStream waits
    for a pass's decision before it hands the pass to another worker. While a pass runs (or waits for the
    device) the bus sends ``in_progress`` every ``ack_wait_s / 3``, so a live worker keeps its pass however
    long it runs, and a dead worker's pass is redelivered at most ``ack_wait_s`` after it died
    (docs/RELIABILITY.md, "Heartbeats and redelivery").
    """

    model_dir: Path
    #: Model names under ``<model_dir>/diffusion/`` this worker serves; empty = every model found there.
    models: tuple[str, ...] = ()
    device: str = "auto"
    dtype: str = "auto"
    #: Short side of the person-pass working size; 0 = by family (512 SD1.5, 1024 SDXL).
    working_size: int = 0
    #: Images with more pixels go through the VAE in tiles (bounded memory); 0 = never tile.
    vae_tile_above_pixels: int = DEFAULT_VAE_TILE_ABOVE_PIXELS
    #: "store" (object store, shared by workers), "memory" (in-process LRU) or "off".
    pass_cache: str = "store"
    pass_cache_entries: int = 64
    tune_cache_dir: Path = Path(".multipass/tune-cache")
    adapter_memory_mb: int = 2048
    checkpoint_cache_size: int = 1
    torch_threads: int = 0
    grpc_addr: str = "127.0.0.1:50053"
    metrics_port: int = 9103
    #: Seconds JetStream waits for a decision or a heartbeat before it redelivers a pass to another worker.
    ack_wait_s: float = DEFAULT_ACK_WAIT_S
    max_deliver: int = 5
    max_ack_pending: int = 16
    progress_interval_s: float = 0.25
    prefetch_depth: int = 1
    png_compress_level: int = 1
    #: Memory for decoded recent outputs, the next pass of a chain reads them here (0: off).
    recent_outputs_mb: int = 256
    #: Start the pass a request names as its ``next_pass`` while this one's output is stored (run_ahead.py).
    run_ahead: bool = True
    compile: bool = False
    compile_mode: str = ""
    compile_backend: str = "inductor"
    compile_lora_rank: int = 64
    worker_name: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    log_level: str = "INFO"
    #: When set, Diffusion.Info needs ``x-multipass-internal: <token>`` (health and reflection stay open).
    internal_token: str = field(default="", repr=False)
    nats: NatsSettings = field(default_factory=NatsSettings)
    s3: S3Settings = field(default_factory=S3Settings)
    #: ``MULTIPASS_EVENT_LOOP``: auto (uvloop where installed), uvloop or asyncio.
    event_loop: str = DEFAULT_EVENT_LOOP

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DiffusionSettings:
        env = EnvReader(environ)
        model_dir = env.path("MODEL_DIR", must_exist=True)
        if model_dir is None:
            env.str("MODEL_DIR", required=True)
        values = dict(
            model_dir=model_dir,
            models=env.csv("DIFFUSION_MODELS"),
            device=env.choice("DIFFUSION_DEVICE", "auto", DEVICES),
            dtype=env.choice("DIFFUSION_DTYPE", "auto", DTYPES),
            working_size=env.int("DIFFUSION_WORKING_SIZE", 0, min=0, max=4096),
            vae_tile_above_pixels=env.int(
                "DIFFUSION_VAE_TILE_ABOVE_PIXELS", DEFAULT_VAE_TILE_ABOVE_PIXELS, min=0, max=1 << 30
            ),
            pass_cache=env.choice("DIFFUSION_PASS_CACHE", "store", PASS_CACHES),
            pass_cache_entries=env.int("DIFFUSION_PASS_CACHE_ENTRIES", 64, min=1, max=100_000),
            tune_cache_dir=env.path("DIFFUSION_TUNE_CACHE_DIR", ".multipass/tune-cache"),
            adapter_memory_mb=env.int("DIFFUSION_ADAPTER_MEMORY_MB", 2048, min=1, max=1_000_000),
            checkpoint_cache_size=env.int("DIFFUSION_CHECKPOINT_CACHE_SIZE", 1, min=0, max=16),
            torch_threads=env.int("DIFFUSION_TORCH_THREADS", 0, min=0, max=512),
            grpc_addr=env.str("DIFFUSION_GRPC_ADDR", "127.0.0.1:50053"),
            metrics_port=env.int("DIFFUSION_METRICS_PORT", 9103, min=0, max=65535),
            ack_wait_s=env.float("DIFFUSION_ACK_WAIT_S", DEFAULT_ACK_WAIT_S, min=5.0, max=3600.0),
            max_deliver=env.int("DIFFUSION_MAX_DELIVER", 5, min=1, max=100),
            max_ack_pending=env.int("DIFFUSION_MAX_ACK_PENDING", 16, min=1, max=10_000),
            progress_interval_s=env.float("DIFFUSION_PROGRESS_INTERVAL_S", 0.25, min=0.0, max=60.0),
            prefetch_depth=env.int("DIFFUSION_PREFETCH", 1, min=0, max=8),
            png_compress_level=env.int("DIFFUSION_PNG_COMPRESS_LEVEL", 1, min=0, max=9),
            recent_outputs_mb=env.int("DIFFUSION_RECENT_OUTPUTS_MB", 256, min=0, max=1_000_000),
            run_ahead=env.bool("DIFFUSION_RUN_AHEAD", True),
            compile=env.bool("DIFFUSION_COMPILE", False),
            compile_mode=env.choice("DIFFUSION_COMPILE_MODE", "", COMPILE_MODES),
            compile_backend=env.str("DIFFUSION_COMPILE_BACKEND", "inductor"),
            compile_lora_rank=env.int("DIFFUSION_COMPILE_LORA_RANK", 64, min=1, max=1024),
            worker_name=env.str("DIFFUSION_WORKER_NAME", f"{socket.gethostname()}-{os.getpid()}"),
            log_level=env.str("LOG_LEVEL", "INFO"),
            event_loop=env.choice("EVENT_LOOP", DEFAULT_EVENT_LOOP, EVENT_LOOPS),
            internal_token=env.str("INTERNAL_TOKEN", ""),
            nats=NatsSettings.from_env(env),
            s3=S3Settings.from_env(env),
        )
        env.check()
        return cls(**values)

    def working_size_for(self, family: str) -> int:
        return self.working_size or FAMILY_WORKING_SIZE[family]
