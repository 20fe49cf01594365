"""The segmentation service's settings, read once from ``MULTIPASS_*`` environment variables."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from multipass.config import EnvReader
from multipass.connections import S3Settings
from multipass.event_loop import DEFAULT_EVENT_LOOP, EVENT_LOOPS
from multipass.images import DEFAULT_MAX_PIXELS

DEVICES = ("auto", "cpu", "cuda")
DEFAULT_GRPC_ADDR = "127.0.0.1:50052"
DEFAULT_METRICS_PORT = 9102


@dataclass(frozen=True)
class SegmentationSettings:
    """Everything the segmentation service needs; ``from_env`` names the variables.

    Variables (prefix ``MULTIPASS_``): ``MODEL_DIR`` (required), ``SEGMENTATION_GRPC_ADDR``,
    ``SEGMENTATION_METRICS_PORT`` (0 picks a free port), ``SEGMENTATION_DEVICE`` (auto|cpu|cuda),
    ``SEGMENTATION_MAX_PIXELS``, ``SEGMENTATION_BOX_THRESHOLD``, ``SEGMENTATION_TEXT_THRESHOLD``,
    ``SEGMENTATION_MAX_BOXES``, ``SEGMENTATION_EMBEDDING_CACHE``, ``SEGMENTATION_MIN_FILL``,
    ``SEGMENTATION_MIN_SCORE``, ``SEGMENTATION_FACE_MIN_OVERLAP``, ``SEGMENTATION_FACE_PHRASES``
    (face/head phrases use the face detector), ``SEGMENTATION_TORCH_THREADS`` (0 = torch default),
    ``INTERNAL_TOKEN``, ``LOG_LEVEL`` and the ``S3_*`` variables.
    """

    model_dir: Path
    s3: S3Settings = field(default_factory=S3Settings)
    grpc_addr: str = DEFAULT_GRPC_ADDR
    metrics_port: int = DEFAULT_METRICS_PORT
    device: str = "auto"
    #: Largest width*height of an image the service decodes.
    max_pixels: int = DEFAULT_MAX_PIXELS
    #: Detector thresholds used when a request leaves them at 0.
    box_threshold: float = 0.3
    text_threshold: float = 0.25
    #: Most boxes kept per phrase after NMS.
    max_boxes: int = 20
    #: Images whose SAM embeddings are kept (LRU).
    embedding_cache: int = 8
    #: A person mask covering less than this fraction of its slot's territory falls back to the silhouette.
    min_fill: float = 0.05
    #: A person mask whose SAM score is below this falls back to the silhouette.
    min_score: float = 0.0
    #: A face is assigned to a slot when that slot's mask covers at least this fraction of the face box.
    face_min_overlap: float = 0.1
    #: Text-mask phrases "face"/"head" (and plurals) use the face detector instead of the grounding detector.
    face_phrases: bool = True
    torch_threads: int = 0
    internal_token: str = ""
    log_level: str = "INFO"
    #: ``MULTIPASS_EVENT_LOOP``: auto (uvloop where installed), uvloop or asyncio.
    event_loop: str = DEFAULT_EVENT_LOOP

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SegmentationSettings:
        env = EnvReader(environ)
        model_dir = env.path("MODEL_DIR", must_exist=True)
        if model_dir is None:
            env.str("MODEL_DIR", required=True)
        values = dict(
            model_dir=model_dir,
            s3=S3Settings.from_env(env),
            grpc_addr=env.address("SEGMENTATION_GRPC_ADDR", DEFAULT_GRPC_ADDR),
            metrics_port=env.int("SEGMENTATION_METRICS_PORT", DEFAULT_METRICS_PORT, min=0, max=65535),
            device=env.choice("SEGMENTATION_DEVICE", "auto", DEVICES),
            max_pixels=env.int("SEGMENTATION_MAX_PIXELS", DEFAULT_MAX_PIXELS, min=1, max=1 << 30),
            box_threshold=env.float("SEGMENTATION_BOX_THRESHOLD", 0.3, min=0.0, max=1.0),
            text_threshold=env.float("SEGMENTATION_TEXT_THRESHOLD", 0.25, min=0.0, max=1.0),
            max_boxes=env.int("SEGMENTATION_MAX_BOXES", 20, min=1, max=900),
            embedding_cache=env.int("SEGMENTATION_EMBEDDING_CACHE", 8, min=1, max=1024),
            min_fill=env.float("SEGMENTATION_MIN_FILL", 0.05, min=0.0, max=1.0),
            min_score=env.float("SEGMENTATION_MIN_SCORE", 0.0, min=0.0, max=1.0),
            face_min_overlap=env.float("SEGMENTATION_FACE_MIN_OVERLAP", 0.1, min=0.0, max=1.0),
            face_phrases=env.bool("SEGMENTATION_FACE_PHRASES", True),
            torch_threads=env.int("SEGMENTATION_TORCH_THREADS", 0, min=0, max=512),
            internal_token=env.str("INTERNAL_TOKEN", ""),
            log_level=env.choice("LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR")),
            event_loop=env.choice("EVENT_LOOP", DEFAULT_EVENT_LOOP, EVENT_LOOPS),
        )
        env.check()
        return cls(**values)
