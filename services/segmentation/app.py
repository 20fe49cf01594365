"""Wiring of the segmentation service: models, store, gRPC server, metrics endpoint.

``serve(settings)`` is what ``python -m multipass_segmentation`` runs and what tests run in-process. The
models load and warm up on the model thread before the port opens; a missing model fails here with
``FailedPrecondition`` naming the file.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from multipass.grpc.internal_auth import InternalTokenInterceptor
from multipass.grpc.server import Registration, RunningServer, start_grpc_server
from multipass.metrics import metrics_host_for
from multipass.metrics_endpoint import MetricsEndpoint
from multipass.model_catalog.features import log_report
from multipass.v1 import segmentation_pb2_grpc
from multipass_segmentation.models import load_models, resolve_device
from multipass_segmentation.person_masks import PersonMaskOptions
from multipass_segmentation.segmenter import Segmenter, SegmenterOptions
from multipass_segmentation.servicer import SERVICE_NAME, SegmentationServicer, model_features
from multipass_segmentation.settings import SegmentationSettings

log = logging.getLogger(__name__)


@dataclass
class SegmentationService:
    """A running service: its gRPC server, domain facade and metrics endpoint."""

    server: RunningServer
    segmenter: Segmenter
    executor: ThreadPoolExecutor
    metrics_port: int
    _metrics: MetricsEndpoint | None = None

    @property
    def address(self) -> str:
        return self.server.address

    @property
    def port(self) -> int:
        return self.server.port

    async def stop(self, grace: float = 5.0) -> None:
        """NOT_SERVING, finish in-flight calls within ``grace``, then release the model thread and /metrics."""
        await self.server.stop(grace)
        self.executor.shutdown(wait=True)
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None


def segmenter_options(settings: SegmentationSettings) -> SegmenterOptions:
    return SegmenterOptions(
        box_threshold=settings.box_threshold,
        text_threshold=settings.text_threshold,
        embedding_cache=settings.embedding_cache,
        person=PersonMaskOptions(min_fill=settings.min_fill, min_score=settings.min_score),
        face_min_overlap=settings.face_min_overlap,
        face_phrases=settings.face_phrases,
    )


def build_segmenter(settings: SegmentationSettings) -> Segmenter:
    """Load the models from the model directory (blocking) and warm SAM up."""
    import torch

    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    models = load_models(
        settings.model_dir, resolve_device(settings.device), max_boxes_per_phrase=settings.max_boxes
    )
    segmenter = Segmenter(models, segmenter_options(settings))
    segmenter.warm_up()
    return segmenter


async def serve(settings: SegmentationSettings, store=None) -> SegmentationService:
    """Load models, connect the store, open /metrics and the gRPC port; returns the running service."""
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="segmentation-model")
    metrics = None
    log_report(model_features(settings.model_dir), log)
    try:
        segmenter = await asyncio.get_running_loop().run_in_executor(executor, build_segmenter, settings)
        if store is None:
            from multipass.store import ObjectStore

            store = ObjectStore.from_settings(settings.s3)
        # /metrics listens where gRPC does: loopback locally, every interface in a pod (0.0.0.0).
        metrics = MetricsEndpoint.start(settings.metrics_port, metrics_host_for(settings.grpc_addr))
        servicer = SegmentationServicer(
            segmenter, store, executor, max_pixels=settings.max_pixels, model_dir=settings.model_dir
        )
        interceptors = [InternalTokenInterceptor(settings.internal_token)] if settings.internal_token else []
        server = await start_grpc_server(
            settings.grpc_addr,
            [Registration(segmentation_pb2_grpc.add_SegmentationServicer_to_server, servicer, SERVICE_NAME)],
            extra_interceptors=interceptors,
        )
    except BaseException:
        executor.shutdown(wait=False)
        if metrics is not None:
            metrics.close()
        raise
    service = SegmentationService(server, segmenter, executor, metrics.port, metrics)
    log.info(
        "segmentation service ready",
        extra={"address": settings.grpc_addr, "port": server.port, "metrics_port": service.metrics_port},
    )
    return service
