"""A pass's inputs, read together: its images and masks decoded, its tune files on local disk.

Every read of a pass (image, mask, control image, each layer's image and mask, each tune file the pass
needs) starts at once, so their S3 round trips overlap; the first failure cancels the others and is
raised. Input and layer images come through ``read_image``, which lets the worker answer from its own
recent outputs; masks and the control image through ``read_stored``, which lets it answer from the copies
the request carries (``PassRequest.copies``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

from PIL import Image

from multipass.errors import InvalidInput, Violation
from multipass.store import ObjectStore
from multipass.v1 import common_pb2, diffusion_pb2
from multipass_diffusion import tune_files
from multipass_diffusion.passes.context import PassInputs

#: ``read_image(ref, field, mode)``: a decoded input image; ``field`` names it in errors.
ImageReader = Callable[[common_pb2.ImageRef, str, str], Awaitable[Image.Image]]


async def read_inputs(
    spec: diffusion_pb2.PassSpec,
    *,
    store: ObjectStore,
    read_image: ImageReader,
    tune_cache_dir: Path,
    read_stored: ImageReader | None = None,
) -> PassInputs:
    """The pass's images, decoded, and its tune files on local disk (cached by sha256).

    Tune files: every ``spec.tune_files`` entry the pass needs (:func:`tune_files.needed_keys`: the
    adapters of ``spec.loras`` and of each face's ``loras``, and the tunes' reference images), under
    the same keys in ``PassInputs.tune_paths``.
    """
    if read_stored is None:

        def read_stored(ref: common_pb2.ImageRef, field: str, mode: str) -> Awaitable[Image.Image]:
            return store.get_image(ref, field=field, mode=mode)

    inputs = PassInputs()
    layers = [[None, None] for _ in spec.layers]
    reads: list[tuple[Callable[[Any], None], Awaitable[Any]]] = []
    if spec.HasField("image"):
        reads.append((partial(setattr, inputs, "image"), read_image(spec.image, "spec.image", "RGB")))
    if spec.HasField("mask"):
        reads.append((partial(setattr, inputs, "mask"), read_stored(spec.mask, "spec.mask", "L")))
    if spec.HasField("control_image"):
        control = read_stored(spec.control_image, "spec.control_image", "RGB")
        reads.append((partial(setattr, inputs, "control_image"), control))
    for number, layer in enumerate(spec.layers):
        field = f"spec.layers[{number}]"
        reads.append(
            (partial(layers[number].__setitem__, 0), read_image(layer.image, f"{field}.image", "RGB"))
        )
        mask = read_stored(layer.mask, f"{field}.mask", "L")
        reads.append((partial(layers[number].__setitem__, 1), mask))
    for key in tune_files.needed_keys(spec):
        reads.append(
            (partial(inputs.tune_paths.__setitem__, key), _tune_file(store, spec, key, tune_cache_dir))
        )
    values = await all_or_first_error(*(read for _assign, read in reads))
    for (assign, _read), value in zip(reads, values, strict=True):
        assign(value)
    inputs.layers.extend((image, mask) for image, mask in layers)
    return inputs


async def _tune_file(store: ObjectStore, spec: diffusion_pb2.PassSpec, key: str, cache_dir: Path) -> Path:
    try:
        return await store.fetch_to_cache(spec.tune_files[key], cache_dir)
    except InvalidInput as error:  # the reference lacks its sha256: name the entry
        raise InvalidInput.of(
            [Violation(f"spec.tune_files[{key}].{v.field}", v.description) for v in error.violations]
        ) from error


async def all_or_first_error(*reads: Awaitable[Any]) -> list[Any]:
    """Run the reads together; on the first error cancel the rest and raise it (results in order)."""
    tasks = [asyncio.ensure_future(read) for read in reads]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
