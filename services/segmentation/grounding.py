"""Text -> boxes with an open-vocabulary detector through ``transformers``: GroundingDINO or OWLv2.

A prompt is split into phrases at commas, periods and semicolons (``"hair, red shirt"`` is two phrases;
``"windows door"`` is one). All phrases go through the model in one call as ``"hair. red shirt."``; a
query's score for a phrase is its highest token probability over that phrase's tokens. A box is kept for a
phrase when that score exceeds the box threshold and at least one of the phrase's tokens exceeds the text
threshold (GroundingDINO's two thresholds, strict as in its reference post-processing, so a threshold of 1
keeps nothing), then boxes of one phrase are de-duplicated by NMS.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from PIL import Image
from torchvision.ops import nms

from multipass_segmentation.slots import Box

DEFAULT_BOX_THRESHOLD = 0.3
DEFAULT_TEXT_THRESHOLD = 0.25
NMS_IOU = 0.5


@dataclass(frozen=True)
class Detection:
    phrase: str
    box: Box
    score: float


def split_phrases(prompt: str) -> list[str]:
    """Lower-cased, de-duplicated phrases of a prompt, in order; empty parts are dropped."""
    phrases: list[str] = []
    for part in re.split(r"[,.;]", prompt.lower()):
        phrase = " ".join(part.split())
        if phrase and phrase not in phrases:
            phrases.append(phrase)
    return phrases


class TextDetector(Protocol):
    """Anything that turns phrases into scored boxes in image pixels."""

    def detect(
        self, image: np.ndarray, phrases: Sequence[str], box_threshold: float, text_threshold: float
    ) -> list[Detection]: ...


class GroundingDinoDetector:
    """GroundingDINO (``GroundingDinoForObjectDetection`` + its processor) on one device."""

    def __init__(self, model, processor, *, device: torch.device, max_boxes_per_phrase: int = 20):
        self.model = model.to(device).eval()
        self.processor = processor
        self.device = device
        self.max_boxes_per_phrase = max_boxes_per_phrase
        self._lock = threading.Lock()

    def detect(
        self, image: np.ndarray, phrases: Sequence[str], box_threshold: float, text_threshold: float
    ) -> list[Detection]:
        if not phrases:
            return []
        text, char_spans = _detector_text(phrases)
        height, width = image.shape[:2]
        tokenizer = self.processor.tokenizer
        encoded_text = tokenizer(
            text, return_offsets_mapping=True, truncation=True, max_length=self.model.config.max_text_len
        )
        token_spans = _token_spans(encoded_text["offset_mapping"], char_spans)
        inputs = self.processor(images=Image.fromarray(image), text=text, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        with self._lock, torch.inference_mode():
            outputs = self.model(**inputs)
        probs = torch.sigmoid(outputs.logits[0].float()).cpu()  # (queries, max_text_len)
        boxes = _cxcywh_to_pixels(outputs.pred_boxes[0].float().cpu(), width, height)
        detections: list[Detection] = []
        for phrase, tokens in zip(phrases, token_spans, strict=True):
            if not tokens:
                continue
            phrase_probs = probs[:, tokens]
            scores = phrase_probs.max(dim=1).values
            keep = (scores > box_threshold) & (phrase_probs > text_threshold).any(dim=1)
            detections += _best_boxes(
                phrase, boxes[keep], scores[keep], width, height, self.max_boxes_per_phrase
            )
        return detections


class Owlv2Detector:
    """OWLv2 (``Owlv2ForObjectDetection`` + its processor): one text query per phrase.

    OWLv2 scores each (patch, query) pair directly, so only the box threshold applies (its usual values are
    lower than GroundingDINO's, around 0.1-0.2). The processor pads images to a square at the bottom and
    right; boxes are relative to that square.
    """

    def __init__(self, model, processor, *, device: torch.device, max_boxes_per_phrase: int = 20):
        self.model = model.to(device).eval()
        self.processor = processor
        self.device = device
        self.max_boxes_per_phrase = max_boxes_per_phrase
        self._lock = threading.Lock()

    def detect(
        self, image: np.ndarray, phrases: Sequence[str], box_threshold: float, text_threshold: float
    ) -> list[Detection]:
        if not phrases:
            return []
        height, width = image.shape[:2]
        side = max(height, width)
        inputs = self.processor(
            text=[list(phrases)], images=Image.fromarray(image), return_tensors="pt", truncation=True
        )
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        with self._lock, torch.inference_mode():
            outputs = self.model(**inputs)
        probs = torch.sigmoid(outputs.logits[0].float()).cpu()  # (patches, phrases)
        boxes = _cxcywh_to_pixels(outputs.pred_boxes[0].float().cpu(), side, side)
        detections: list[Detection] = []
        for index, phrase in enumerate(phrases):
            scores = probs[:, index]
            keep = scores > box_threshold
            detections += _best_boxes(
                phrase, boxes[keep], scores[keep], width, height, self.max_boxes_per_phrase
            )
        return detections


def _detector_text(phrases: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    """``"a. b."`` and each phrase's character range in it."""
    spans: list[tuple[int, int]] = []
    text = ""
    for phrase in phrases:
        start = len(text)
        text += phrase
        spans.append((start, len(text)))
        text += ". "
    return text.rstrip(), spans


def _token_spans(
    offsets: Sequence[tuple[int, int]], char_spans: Sequence[tuple[int, int]]
) -> list[list[int]]:
    """Token positions of each phrase (special tokens have empty offsets and belong to none)."""
    spans: list[list[int]] = []
    for start, end in char_spans:
        spans.append([i for i, (a, b) in enumerate(offsets) if b > a and a >= start and b <= end])
    return spans


def _cxcywh_to_pixels(boxes: torch.Tensor, width: int, height: int) -> torch.Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    corners = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)
    return corners * torch.tensor([width, height, width, height], dtype=corners.dtype)


def _best_boxes(
    phrase: str, boxes: torch.Tensor, scores: torch.Tensor, width: int, height: int, limit: int
) -> list[Detection]:
    if boxes.numel() == 0:
        return []
    boxes = boxes.clone()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes, scores = boxes[valid], scores[valid]
    if boxes.numel() == 0:
        return []
    keep = nms(boxes, scores, NMS_IOU)[:limit]
    return [
        Detection(phrase, Box(*(float(v) for v in boxes[i].tolist())), float(scores[i]))
        for i in keep.tolist()
    ]
