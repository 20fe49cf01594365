"""``<faceid:ID:WEIGHT>``: IP-Adapter FaceID conditioning on the identity of a tune's reference faces.

Model directory (docs/DIFFUSION.md): ``<MODEL_DIR>/diffusion/ip_adapter/<family>/faceid/`` holds
``ip-adapter-faceid.safetensors`` (keys ``image_proj.*`` and ``ip_adapter.*``) or the released
``ip-adapter-faceid_sd15.bin``/``_sdxl.bin`` renamed to ``ip-adapter-faceid.bin`` (a pickled
``{"image_proj": ..., "ip_adapter": ...}``): the FaceID projection (a 512-d ArcFace embedding through an
MLP to 4 tokens of the UNet's cross-attention width) and ``to_k_ip``/``to_v_ip`` per cross-attention
processor, plus FaceID's optional LoRA (``<k>.to_{q,k,v,out}_lora.*``). One adapter serves every model of
its family; a file whose width does not fit the UNet is FAILED_PRECONDITION. The identity comes from the
face swapper's ArcFace-class embedder (:mod:`multipass_diffusion.nets.face_embedding`); FaceID Plus (which
also needs CLIP image embeddings) is not supported.

A pass takes at most one ``faceid`` LoraRef. :func:`resolve` turns it into a :class:`FaceIdRequest`: the
normalised mean embedding of the tune's reference images (``spec.tune_files`` keys
``<tune_id>/reference-<k>``, cached by their sha256s) and the tag's weight. :class:`FaceIdAdapter` (one per
model runtime) reads the weights once, on the first pass that needs them, loads them into a component
set's UNets with diffusers' ``load_ip_adapter`` (no image encoder), and keeps them attached to at most one
component set: a pass without faceid detaches them, which puts the UNets' own attention processors back,
so that pass runs the unmodified model. The IP-Adapter's scale is the tag's weight, and so is the weight
of the FaceID LoRA (a PEFT adapter activated with the pass's LoRAs): weight 0 is the model without FaceID.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from multipass.errors import FailedPrecondition, InvalidInput, Violation
from multipass.v1 import diffusion_pb2, prompt_pb2
from multipass_diffusion import ip_layers, models
from multipass_diffusion.adapters import AdapterRequest
from multipass_diffusion.nets import components as model_components
from multipass_diffusion.nets.face_embedding import EMBEDDING_SIZE, Reference, embedder_file, load_embedder
from multipass_diffusion.pipelines import ComponentSet
from multipass_diffusion.tune_files import reference_keys

log = logging.getLogger(__name__)

CAPABILITY = "faceid"
KIND = "faceid"
#: Weight file names looked for, in this order; the first is the one named when none is installed.
WEIGHT_FILES = ("ip-adapter-faceid.safetensors", "ip-adapter-faceid.bin")
_LORA_PARTS = ("to_q", "to_k", "to_v", "to_out")


def adapter_dir(model_dir: Path, family: str) -> Path:
    return models.diffusion_root(model_dir) / "ip_adapter" / family / "faceid"


def weights_file(model_dir: Path, family: str) -> Path | None:
    directory = adapter_dir(model_dir, family)
    return next((directory / name for name in WEIGHT_FILES if (directory / name).is_file()), None)


def missing_files(model_dir: Path, family: str) -> list[Path]:
    """Files ``<faceid:...>`` needs on a model of ``family`` that are absent (empty when installed)."""
    missing = []
    if weights_file(model_dir, family) is None:
        missing.append(adapter_dir(model_dir, family) / WEIGHT_FILES[0])
    if not embedder_file(model_dir).is_file():
        missing.append(embedder_file(model_dir))
    return missing


def installed(model_dir: Path, family: str) -> bool:
    return not missing_files(model_dir, family) and not model_components.missing_packages(
        model_components.FACE_SWAPPER
    )


def fingerprint(model_dir: Path, family: str) -> str:
    """The adapter's weight file (name and size) and the embedder's files: part of the pass-cache key."""
    path = weights_file(model_dir, family)
    weights = f"{path.name}:{path.stat().st_size}" if path is not None else "none"
    embedder = model_components.fingerprint(model_dir, model_components.FACE_SWAPPER)
    return f"faceid-weights:{weights}:embedder:{embedder}"


def faceid_refs(loras: Sequence[prompt_pb2.LoraRef]) -> list[prompt_pb2.LoraRef]:
    return [ref for ref in loras if ref.kind == KIND]


def tag_of(ref: prompt_pb2.LoraRef) -> str:
    return f"<faceid:{ref.tune_id}:{round(float(ref.weight), 6):g}>"


@dataclass(frozen=True)
class FaceIdRequest:
    """One pass's identity conditioning: the tune, the tag's weight and the identity embedding (512,)."""

    tune_id: str
    weight: float
    embedding: np.ndarray

    @property
    def tag(self) -> str:
        return f"<faceid:{self.tune_id}:{self.weight:g}>"

    @property
    def embedding_sha256(self) -> str:
        return hashlib.sha256(np.ascontiguousarray(self.embedding, dtype="<f4").tobytes()).hexdigest()

    def cache_part(self) -> str:
        return f"faceid:{self.tune_id}:{self.weight!r}:{self.embedding_sha256}"


def resolve(spec: diffusion_pb2.PassSpec, inputs, runtime) -> FaceIdRequest | None:
    """The pass's ``faceid`` ref as a request (None without one); errors name the tag.

    InvalidInput: two faceid tags, or a tune without reference images in ``spec.tune_files``.
    FailedPrecondition: the adapter's weights or the embedder are not installed, or a reference image was
    not fetched.
    """
    refs = faceid_refs(spec.loras)
    if not refs:
        return None
    if len(refs) > 1:
        raise InvalidInput.of(
            [
                Violation(
                    tag_of(refs[1]), f"a pass takes one <faceid:...> tag; {tag_of(refs[0])} is one already"
                )
            ]
        )
    ref = refs[0]
    tag = tag_of(ref)
    missing = missing_files(runtime.model_dir, runtime.family)
    if missing:
        raise FailedPrecondition(
            f"{tag} needs IP-Adapter FaceID on model {runtime.name}: {missing[0]} is not installed"
        )
    keys = reference_keys(spec, ref.tune_id)
    if not keys:
        raise InvalidInput.of(
            [
                Violation(
                    tag,
                    f"tune {ref.tune_id} has no reference images in spec.tune_files ({ref.tune_id}/reference-<k>)",
                )
            ]
        )
    references = []
    for key in keys:
        path = inputs.tune_paths.get(key)
        if path is None:
            raise FailedPrecondition(f"{tag}: reference image {key} was not fetched to local disk")
        path = Path(path)
        sha256 = spec.tune_files[key].sha256.lower() or models.file_sha256(path)
        references.append(Reference(path, sha256, f"reference image {key} of {tag}"))
    embedder = load_embedder(
        runtime.model_dir, device=runtime.device, threads=_torch_threads(), needed_by=tag
    )
    embedding = embedder.identity_for(references)
    return FaceIdRequest(ref.tune_id, round(float(ref.weight), 6), embedding)


def pipeline_kwargs(request: FaceIdRequest, pipe, guidance_scale: float) -> dict:
    """``ip_adapter_image_embeds`` for ``pipe``: the identity, after zeros for the unconditional half.

    The pipelines split the embeddings in two when they guide (``guidance_scale > 1`` and a UNet without
    a guidance embedding), as they split the prompt embeddings; zeros are FaceID's "no identity".
    """
    import torch

    unet = pipe.unet
    identity = torch.from_numpy(np.array(request.embedding, dtype=np.float32)).reshape(1, 1, EMBEDDING_SIZE)
    identity = identity.to(device=unet.device, dtype=unet.dtype)
    if ip_layers.uses_guidance(unet, guidance_scale):
        identity = torch.cat([torch.zeros_like(identity), identity])
    return {"ip_adapter_image_embeds": [identity]}


@dataclass
class _Weights:
    path: Path
    sha256: str
    #: ``{"image_proj": ..., "ip_adapter": ...}`` without the LoRA keys (what ``load_ip_adapter`` takes).
    state: dict
    #: FaceID's LoRA in diffusers' attention-processor layout (``unet.<processor>.to_k_lora.down.weight``).
    lora: dict | None


class _FaceIdLayers(ip_layers.IpLayers):
    """The FaceID layers of one component set's UNets (the weights they were made from kept beside)."""

    def __init__(self, components: ComponentSet, weights: _Weights):
        super().__init__(components, weights.state, source=weights.path)
        self.weights = weights


class FaceIdAdapter:
    """IP-Adapter FaceID of one model runtime: weights read once, attached to one component set at most."""

    def __init__(self, model_dir: Path, family: str, *, label: str):
        self.model_dir = Path(model_dir)
        self.family = family
        self.label = label
        self._weights: _Weights | None = None
        self._attached: ComponentSet | None = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._weights is not None

    @property
    def attached(self) -> ComponentSet | None:
        return self._attached

    def activate(self, components: ComponentSet, request: FaceIdRequest | None) -> AdapterRequest | None:
        """Condition ``components`` on ``request`` (None: no FaceID anywhere). Returns FaceID's LoRA to
        activate with the pass's LoRAs, if the weights have one."""
        with self._lock:
            if self._attached is not None and (request is None or self._attached is not components):
                self._attached.faceid.detach()
                self._attached = None
            if request is None:
                return None
            weights = self._load(components, request.tag)
            if components.faceid is None or components.faceid.weights is not weights:
                components.faceid = _FaceIdLayers(components, weights)
            components.faceid.attach(request.weight)
            self._attached = components
        if weights.lora is None:
            return None
        return AdapterRequest(
            "faceid", weights.path, weights.sha256, request.weight, state=weights.lora, label=request.tag
        )

    def deactivate(self) -> None:
        with self._lock:
            if self._attached is not None:
                self._attached.faceid.detach()
                self._attached = None

    def _load(self, components: ComponentSet, tag: str) -> _Weights:
        if self._weights is not None:
            return self._weights
        path = weights_file(self.model_dir, self.family)
        if path is None:
            missing = adapter_dir(self.model_dir, self.family) / WEIGHT_FILES[0]
            raise FailedPrecondition(
                f"{tag} needs IP-Adapter FaceID on model {self.label}: {missing} is not installed"
            )
        state = read_weights(path)
        _check(path, state, int(components.cross_attention_dim))
        try:
            lora = _lora_part(state["ip_adapter"], list(components.pipe.unet.attn_processors))
        except FailedPrecondition as error:
            raise FailedPrecondition(f"{path}: {error}") from error
        self._weights = _Weights(path, models.file_sha256(path), state, lora)
        log.info(
            "faceid adapter loaded",
            extra={"model": self.label, "path": str(path), "lora": lora is not None},
        )
        return self._weights


def read_weights(path: Path) -> dict:
    """``{"image_proj": {...}, "ip_adapter": {...}}`` of an IP-Adapter FaceID file."""
    return ip_layers.read_weights(path, "IP-Adapter FaceID")


def _check(path: Path, state: dict, cross_attention_dim: int) -> None:
    projection = state["image_proj"]
    if "perceiver_resampler.proj_in.weight" in projection:
        raise FailedPrecondition(
            f"{path} is IP-Adapter FaceID Plus, which needs CLIP image embeddings; use FaceID"
        )
    if not {"proj.0.weight", "proj.2.weight", "norm.weight"} <= set(projection):
        raise FailedPrecondition(
            f"{path} is not an IP-Adapter FaceID file (its image projection has no proj.0/proj.2/norm weights)"
        )
    if projection["proj.0.weight"].shape[1] != EMBEDDING_SIZE:
        raise FailedPrecondition(
            f"{path} takes {projection['proj.0.weight'].shape[1]}-d identities, the embedder gives {EMBEDDING_SIZE}"
        )
    ip_layers.check_width(path, int(projection["norm.weight"].shape[0]), cross_attention_dim)


def _lora_part(ip_adapter: dict, processors: list[str]) -> dict | None:
    """Split FaceID's LoRA off ``ip_adapter`` (in place) in the layout ``load_lora_weights`` reads."""
    lora_keys = [key for key in ip_adapter if "_lora." in key]
    if not lora_keys:
        return None
    lora = {}
    for index, name in enumerate(processors):
        for part in _LORA_PARTS:
            for side in ("down", "up"):
                key = f"{index}.{part}_lora.{side}.weight"
                if key in ip_adapter:
                    lora[f"unet.{name}.{part}_lora.{side}.weight"] = ip_adapter[key]
    if len(lora) != len(lora_keys):
        raise FailedPrecondition(
            f"its FaceID LoRA has {len(lora_keys)} weights, {len(lora)} of which fit the UNet's attention processors"
        )
    for key in lora_keys:
        del ip_adapter[key]
    return lora


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()
