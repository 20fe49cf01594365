"""The tunes of one face: its LoRA/checkpoint adapters and its tune's reference images.

A face's adapters are ``FaceTarget.loras`` (the LoRAs of the person whose slot holds it) or, when it has
none, the pass's ``spec.loras``. Their files are in ``spec.tune_files`` by tune id and on local disk in
``PassInputs.tune_paths``, exactly as for the pass's own adapters (the engine resolves ``spec.loras``
the same way). Reference images of a tune travel in the same map under the keys
``<tune_id>/reference-<k>`` (:func:`multipass_diffusion.tune_files.reference_key`), so the worker fetches them with the tune files.
A face's ``<faceid:ID:W>`` ref conditions its inpaint on that tune's reference identity (IP-Adapter FaceID,
attached for that face and detached for faces without one), as it does the person's pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from multipass.errors import FailedPrecondition, InvalidInput, Violation
from multipass.v1 import diffusion_pb2
from multipass_diffusion import faceid, models, named_loras
from multipass_diffusion.adapters import AdapterRequest
from multipass_diffusion.passes.context import PassContext
from multipass_diffusion.tune_files import reference_keys


@dataclass
class FaceTunes:
    #: (tune id, path, sha256, layout) of a checkpoint tune, if one is among the LoRA refs.
    checkpoint: tuple[str, Path, str, str] | None = None
    adapters: list[AdapterRequest] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: The face's ``<faceid:...>`` identity, if it has one.
    identity: faceid.FaceIdRequest | None = None


def resolve(ctx: PassContext, loras, field_name: str) -> FaceTunes:
    """Resolve LoRA refs like the engine does for ``spec.loras``; errors name ``field_name``."""
    spec, inputs = ctx.spec, ctx.inputs
    found = FaceTunes(identity=_identity(ctx, loras))
    for ref in loras:
        if ref.kind == faceid.KIND:
            continue  # found.identity
        if ref.kind and ref.kind != "lora":
            found.warnings.append(
                f"<{ref.kind}:{ref.tune_id}> ignored: the {spec.kind} pass does not use {ref.kind} adapters"
            )
            continue
        tag = f"<lora:{ref.tune_id}:{ref.weight:g}>"
        path, sha256 = named_loras.local_file(spec, inputs, ctx.runtime.model_dir, ref, f"{field_name} {tag}")
        info = models.inspect_tune(path, tag)
        models.check_family(info, ctx.runtime, tag)
        if info.kind == "checkpoint":
            if found.checkpoint is not None:
                raise InvalidInput.of(
                    [Violation(f"{field_name} {tag}", "a face uses at most one checkpoint tune")]
                )
            found.checkpoint = (ref.tune_id, path, sha256, info.layout)
        else:
            found.adapters.append(AdapterRequest(ref.tune_id, path, sha256, float(ref.weight)))
    return found


def activate(ctx: PassContext, tunes: FaceTunes):
    """Make ``tunes`` the active adapters (FaceID attached for a face with an identity, detached for one
    without); returns the (component set, adapter cache) to sample with."""
    runtime = ctx.runtime
    if tunes.checkpoint is None:
        components, adapters = runtime.components_for(None, None, None, None)
    else:
        tune_id, path, sha256, layout = tunes.checkpoint
        components, adapters = runtime.components_for(tune_id, path, sha256, layout)
        runtime.adapters.deactivate()
    faceid_lora = runtime.faceid.activate(components, tunes.identity)
    adapters.activate(tunes.adapters + ([faceid_lora] if faceid_lora is not None else []))
    return components, adapters


def _identity(ctx: PassContext, loras) -> faceid.FaceIdRequest | None:
    """The identity of the face's ``<faceid:...>`` ref (None without one), resolved as for a pass's."""
    refs = faceid.faceid_refs(loras)
    if not refs:
        return None
    probe = diffusion_pb2.PassSpec()
    probe.CopyFrom(ctx.spec)
    del probe.loras[:]
    probe.loras.extend(refs)
    return faceid.resolve(probe, ctx.inputs, ctx.runtime)


def first_with_references(ctx: PassContext, tune_ids: list[str]) -> tuple[str, list[Path]] | None:
    """The first of ``tune_ids`` that has reference images, with their local files; None when none has."""
    for tune_id in tune_ids:
        paths = reference_images(ctx, tune_id)
        if paths:
            return tune_id, paths
    return None


def reference_images(ctx: PassContext, tune_id: str) -> list[Path]:
    """Local files of ``tune_id``'s reference images, in index order (empty when the tune has none)."""
    paths = []
    for key in reference_keys(ctx.spec, tune_id):
        path = ctx.inputs.tune_paths.get(key)
        if path is None:
            raise FailedPrecondition(f"reference image {key} of tune {tune_id} was not fetched to local disk")
        paths.append(Path(path))
    return paths
