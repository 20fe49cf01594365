"""SAM prompted with boxes and points, with image embeddings computed once per image.

The image encoder is the expensive part of SAM; its output for an image is cached (LRU, keyed by the
SHA-256 of the pixels and their shape), so every prompt on the same image (all person slots, the prompt and
the negative of a text mask, a later request on the same base image) reuses it.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from segment_anything import SamPredictor
from segment_anything.modeling import Sam


@dataclass(frozen=True)
class Embedding:
    """SAM's image embedding plus the sizes the prompt transforms need."""

    key: str
    features: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]


@dataclass(frozen=True)
class SamMask:
    """Mask logits at image resolution (``> 0`` is inside) and SAM's predicted IoU clipped to 0..1."""

    logits: np.ndarray
    score: float

    @property
    def mask(self) -> np.ndarray:
        return self.logits > 0


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0


def image_key(image: np.ndarray) -> str:
    """SHA-256 of an image's pixels and shape: the embedding cache key."""
    digest = hashlib.sha256()
    digest.update(repr((image.shape, str(image.dtype))).encode())
    digest.update(np.ascontiguousarray(image).data)
    return digest.hexdigest()


class SamEngine:
    """One SAM model, its predictor and the embedding cache. Thread-safe (calls are serialised)."""

    def __init__(self, model: Sam, cache_size: int = 8):
        self.model = model
        self._predictor = SamPredictor(model)
        self._cache: OrderedDict[str, Embedding] = OrderedDict()
        self._cache_size = max(1, cache_size)
        self._lock = threading.RLock()
        self.stats = CacheStats()

    @property
    def cache_size(self) -> int:
        return self._cache_size

    def embed(self, image: np.ndarray) -> Embedding:
        """The embedding of an RGB ``uint8`` image, from the cache when it was computed before."""
        key = image_key(image)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                self.stats.hits += 1
                return cached
            self.stats.misses += 1
            self._predictor.set_image(image, image_format="RGB")
            embedding = Embedding(
                key=key,
                features=self._predictor.features,
                original_size=tuple(self._predictor.original_size),
                input_size=tuple(self._predictor.input_size),
            )
            self._cache[key] = embedding
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
            return embedding

    def clear(self) -> None:
        """Forget every cached embedding and reset the statistics."""
        with self._lock:
            self._cache.clear()
            self._predictor.reset_image()
            self.stats = CacheStats()

    def _use(self, embedding: Embedding) -> SamPredictor:
        predictor = self._predictor
        predictor.features = embedding.features
        predictor.original_size = embedding.original_size
        predictor.input_size = embedding.input_size
        predictor.is_image_set = True
        return predictor

    def predict(
        self,
        embedding: Embedding,
        *,
        box: Sequence[float] | None = None,
        positive: Sequence[tuple[float, float]] = (),
        negative: Sequence[tuple[float, float]] = (),
    ) -> SamMask:
        """One mask for one instance, prompted by a box and/or positive and negative points."""
        points = [*positive, *negative]
        coords = np.asarray(points, dtype=np.float32) if points else None
        labels = np.asarray([1] * len(positive) + [0] * len(negative), dtype=np.int32) if points else None
        box_array = np.asarray(box, dtype=np.float32) if box is not None else None
        with self._lock, torch.inference_mode():
            predictor = self._use(embedding)
            logits, scores, _ = predictor.predict(
                point_coords=coords,
                point_labels=labels,
                box=box_array,
                multimask_output=False,
                return_logits=True,
            )
        return SamMask(logits=logits[0].astype(np.float32), score=_clip01(float(scores[0])))

    def predict_boxes(self, embedding: Embedding, boxes: Sequence[Sequence[float]]) -> list[SamMask]:
        """One mask per box (a batch through the decoder)."""
        if not boxes:
            return []
        with self._lock, torch.inference_mode():
            predictor = self._use(embedding)
            box_tensor = torch.as_tensor(np.asarray(boxes, dtype=np.float32), device=predictor.device)
            transformed = predictor.transform.apply_boxes_torch(box_tensor, embedding.original_size)
            logits, scores, _ = predictor.predict_torch(
                None, None, transformed, multimask_output=False, return_logits=True
            )
        logits_np = logits[:, 0].float().cpu().numpy()
        scores_np = scores[:, 0].float().cpu().numpy()
        return [SamMask(logits_np[i], _clip01(float(scores_np[i]))) for i in range(len(boxes))]


def _clip01(value: float) -> float:
    return float(min(1.0, max(0.0, value)))
