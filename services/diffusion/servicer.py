"""The thin gRPC servicer: Diffusion.Info describes this worker (health is served by the shared server).

``features`` is the check of the worker's model directory (``multipass.model_catalog.features``, the table
``multipass models check`` prints and the worker logs at start), read again on every call.
"""

from __future__ import annotations

import os

from multipass.model_catalog import features
from multipass.v1 import diffusion_pb2, diffusion_pb2_grpc
from multipass_diffusion.engine import Engine


def resident_memory() -> int:
    """Resident set size of this process in bytes (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def info(engine: Engine) -> diffusion_pb2.InfoResponse:
    families = sorted({runtime.family for runtime in engine.runtimes.values()})
    first = next(iter(engine.runtimes.values()), None)
    adapters = [name for runtime in engine.runtimes.values() for name in runtime.resident_adapters()]
    return diffusion_pb2.InfoResponse(
        models=list(engine.runtimes),
        model_family=",".join(families),
        model_families={name: runtime.family for name, runtime in engine.runtimes.items()},
        model_native_sizes={name: runtime.base.native_size for name, runtime in engine.runtimes.items()},
        device=engine.device,
        dtype=str(engine.dtype).removeprefix("torch."),
        loaded_adapters=adapters,
        device_memory_allocated=engine.record_memory(),
        resident_memory=resident_memory(),
        capabilities=engine.capabilities(),
        working_size=engine.settings.working_size_for(first.family) if first else 0,
        features=features.to_proto(model_features(engine)),
    )


def model_features(engine: Engine) -> features.Report:
    """The features of the worker's model directory that the diffusion worker uses."""
    return features.check(engine.settings.model_dir, services=[features.DIFFUSION])


class DiffusionServicer(diffusion_pb2_grpc.DiffusionServicer):
    def __init__(self, engine: Engine):
        self.engine = engine

    async def Info(self, request: diffusion_pb2.InfoRequest, context) -> diffusion_pb2.InfoResponse:  # noqa: N802
        return info(self.engine)
