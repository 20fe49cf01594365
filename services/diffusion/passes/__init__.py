"""The pass registry: one handler per pass kind, each in its own module.

A handler validates a spec against its inputs (raising InvalidInput before any model work) and runs the
pass, returning the output image. New kinds plug in by a module that calls :func:`register` on import,
listed in ``_MODULES`` (the finishing passes register through ``multipass_diffusion.finishing.registration``).

Optional handler hooks the engine uses when present:

- ``cache_parts(spec, model_dir) -> list[str]``: more strings for the pass-cache key (for instance the
  fingerprint of a component the pass loads from the model directory, so new weights miss the cache);
- ``capabilities(model_dir) -> list[str]``: installed optional components, for ``Diffusion.Info``;
- ``uses_models = False``: the pass does no model work (``composite``): the engine runs it without a
  runtime, adapters or the pass cache (``PassContext.runtime``/``components``/``adapters`` are None);
- ``uses_faceid = True``: the pass samples with ``passes.sampling.generate`` on the engine's component set, so
  the engine conditions it on a ``<faceid:ID:W>`` ref (``multipass_diffusion.faceid``); other passes ignore
  such refs with a warning.
"""

from __future__ import annotations

import importlib
from typing import Protocol

from PIL import Image

from multipass.errors import InvalidInput, Violation
from multipass.v1 import diffusion_pb2
from multipass_diffusion.passes.context import PassContext, PassInputs


class PassHandler(Protocol):
    kind: str

    def validate(self, spec: diffusion_pb2.PassSpec, inputs: PassInputs) -> None: ...

    def run(self, ctx: PassContext) -> Image.Image: ...


_REGISTRY: dict[str, PassHandler] = {}
_MODULES = (
    "multipass_diffusion.passes.base",
    "multipass_diffusion.passes.person",
    "multipass_diffusion.passes.composite",
    "multipass_diffusion.finishing.registration",
)
_loaded = False


def register(handler: PassHandler) -> PassHandler:
    if handler.kind in _REGISTRY:
        raise ValueError(f"pass kind {handler.kind!r} registered twice")
    _REGISTRY[handler.kind] = handler
    return handler


def _load() -> None:
    global _loaded
    if not _loaded:
        for module in _MODULES:
            importlib.import_module(module)
        _loaded = True


def kinds() -> list[str]:
    _load()
    return sorted(_REGISTRY)


def handlers() -> list[PassHandler]:
    _load()
    return [_REGISTRY[kind] for kind in sorted(_REGISTRY)]


def handler_for(kind: str) -> PassHandler:
    _load()
    handler = _REGISTRY.get(kind)
    if handler is None:
        raise InvalidInput.of(
            [Violation("spec.kind", f"got {kind!r}; this worker runs {', '.join(sorted(_REGISTRY))}")]
        )
    return handler
