"""Tiny random-weight segmentation models of the real architectures, in the model-directory layout.

``build(root)`` writes, once, under ``root/"segmentation"``:

- ``sam/``: ``config.json`` (variant ``custom``: image encoder ``img_size=256``, ``embed_dim=32``, depth 2,
  prompt/mask decoder width 32) and ``sam_tiny.pth``, the state dict of a ``segment_anything`` ``Sam``;
- ``grounding/``: a ``GroundingDinoForObjectDetection`` in transformers format (Swin backbone with
  ``embed_dim=16``, BERT text encoder of 1 layer, ``d_model=32``, ``decoder_layers=2``, 20 queries) with
  its processor; the BERT tokenizer comes from a generated ``vocab.txt`` (common words, letters and
  ``##`` letter pieces, so any lower-case ASCII word tokenises);
- ``faces/``: ``det_10g.onnx``, a tiny detector with SCRFD's inputs and outputs that finds one face with
  five landmarks in every image (:mod:`multipass_dev.tiny_models.face_detector`), so the landmark path
  runs; ``build_haar_faces(directory)`` writes the Haar fallback's ``faces/`` (a ``config.json`` naming
  OpenCV's frontal-face cascade, copied from ``cv2.data``) on request.

``build_owlv2(directory)`` writes a tiny OWLv2 detector (the alternative ``grounding/`` model) on request:
ViT and text towers of width 32 and 1 layer, a CLIP tokenizer whose vocabulary is the 256 byte symbols
(every word tokenises into characters; no merges); its box head starts near the per-patch box prior.

Everything is loaded by the production loader (``multipass_segmentation.models``); nothing is downloaded.
"""

from __future__ import annotations

import json
import shutil
import string
from pathlib import Path

from multipass_dev.tiny_models.building import build_once, byte_to_unicode

#: Bump when the layout or the architectures change; a directory with another marker is rebuilt.
VERSION = "tiny-segmentation-v2"
MARKER = ".tiny-segmentation-built"
COMPONENTS = ("sam", "grounding", "faces")

#: The tiny SAM's architecture, as the loader's custom configuration reads it.
SAM_CONFIG = {
    "variant": "custom",
    "weights": "sam_tiny.pth",
    "image_size": 256,
    "patch_size": 16,
    "encoder_embed_dim": 32,
    "encoder_depth": 2,
    "encoder_num_heads": 2,
    "encoder_global_attn_indexes": [1],
    "window_size": 4,
    "prompt_embed_dim": 32,
    "mask_in_chans": 4,
    "decoder_depth": 2,
    "decoder_mlp_dim": 64,
    "decoder_num_heads": 2,
    "iou_head_hidden_dim": 32,
}

_WORDS = (
    "person", "people", "man", "woman", "boy", "girl", "child", "face", "head", "hair", "eye", "eyes",
    "mouth", "nose", "ear", "hand", "hands", "arm", "arms", "leg", "legs", "body", "shirt", "dress",
    "jacket", "hat", "glasses", "tie", "suit", "skirt", "shoe", "shoes", "background", "foreground", "sky",
    "tree", "trees", "grass", "water", "sea", "wall", "floor", "window", "windows", "door", "car", "dog",
    "cat", "flower", "building", "road", "a", "an", "the", "and", "of", "with", "in", "on", "red", "blue",
    "green", "black", "white",
)  # fmt: skip


def build(root: Path) -> None:
    """Write the tiny segmentation models under ``root/"segmentation"`` unless this version is there."""
    build_once(
        Path(root) / "segmentation",
        marker=MARKER,
        version=VERSION,
        lock=".build.lock",
        replaces=COMPONENTS,
        write=_write_all,
    )


def _write_all(base: Path) -> None:
    import torch

    with torch.random.fork_rng(devices=[]):
        _build_sam(base / "sam")
        _build_grounding(base / "grounding", base / ".vocab")
        _build_faces(base / "faces")


def _build_sam(directory: Path) -> None:
    from functools import partial

    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    c = SAM_CONFIG
    grid = c["image_size"] // c["patch_size"]
    torch.manual_seed(0)
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=c["encoder_depth"],
            embed_dim=c["encoder_embed_dim"],
            img_size=c["image_size"],
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=c["encoder_num_heads"],
            patch_size=c["patch_size"],
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=tuple(c["encoder_global_attn_indexes"]),
            window_size=c["window_size"],
            out_chans=c["prompt_embed_dim"],
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=c["prompt_embed_dim"],
            image_embedding_size=(grid, grid),
            input_image_size=(c["image_size"], c["image_size"]),
            mask_in_chans=c["mask_in_chans"],
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=c["decoder_depth"],
                embedding_dim=c["prompt_embed_dim"],
                mlp_dim=c["decoder_mlp_dim"],
                num_heads=c["decoder_num_heads"],
            ),
            transformer_dim=c["prompt_embed_dim"],
            iou_head_depth=3,
            iou_head_hidden_dim=c["iou_head_hidden_dim"],
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    staging = directory.with_name(directory.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    torch.save(sam.state_dict(), staging / c["weights"])
    (staging / "config.json").write_text(json.dumps(c, indent=2) + "\n")
    staging.rename(directory)


def _write_vocab(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    letters = list(string.ascii_lowercase + string.digits)
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *string.punctuation, *_WORDS, *letters]
    tokens += ["##" + c for c in letters]
    seen: list[str] = []
    for token in tokens:
        if token not in seen:
            seen.append(token)
    path.write_text("\n".join(seen) + "\n")
    return path


def _build_grounding(directory: Path, vocab_dir: Path) -> None:
    import torch
    from transformers import (
        BertConfig,
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    vocab = _write_vocab(vocab_dir / "vocab.txt")
    tokenizer = BertTokenizer(str(vocab), do_lower_case=True, model_max_length=256)
    config = GroundingDinoConfig(
        backbone_config=SwinConfig(
            embed_dim=16,
            depths=[1, 1, 1, 1],
            num_heads=[1, 1, 2, 2],
            window_size=7,
            image_size=224,
            out_indices=[2, 3, 4],
        ),
        text_config=BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=37,
            max_position_embeddings=256,
        ),
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,  # 1 fails in transformers 5.x (bbox head weight tying)
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        num_queries=20,
        num_feature_levels=4,
        encoder_n_points=2,
        decoder_n_points=2,
        max_text_len=256,
    )
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    torch.manual_seed(1)
    model = GroundingDinoForObjectDetection(config).eval()
    processor = GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessor(size={"shortest_edge": 128, "longest_edge": 192}),
        tokenizer=tokenizer,
    )
    staging = directory.with_name(directory.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    processor.save_pretrained(staging)
    staging.rename(directory)


def _build_faces(directory: Path) -> None:
    from multipass_dev.tiny_models.face_detector import write_face_detector

    staging = directory.with_name(directory.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    write_face_detector(staging / "det_10g.onnx")
    staging.rename(directory)


def build_haar_faces(directory: Path) -> None:
    """Write a ``faces/`` directory that selects OpenCV's frontal-face Haar cascade (replaced)."""
    import cv2

    directory = Path(directory)
    shutil.rmtree(directory, ignore_errors=True)
    cascade = "haarcascade_frontalface_default.xml"
    staging = directory.with_name(directory.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shutil.copyfile(Path(cv2.data.haarcascades) / cascade, staging / cascade)
    (staging / "config.json").write_text(
        json.dumps({"detector": "haar", "cascade": cascade}, indent=2) + "\n"
    )
    staging.rename(directory)


def build_owlv2(directory: Path) -> None:
    """Write a tiny random-weight OWLv2 detector in transformers format to ``directory`` (replaced)."""
    import tempfile

    import torch
    from transformers import (
        CLIPTokenizer,
        Owlv2Config,
        Owlv2ForObjectDetection,
        Owlv2ImageProcessor,
        Owlv2Processor,
    )
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    directory = Path(directory)
    symbols = list(byte_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    with tempfile.TemporaryDirectory() as scratch:
        vocab_path, merges_path = Path(scratch) / "vocab.json", Path(scratch) / "merges.txt"
        vocab_path.write_text(json.dumps({token: i for i, token in enumerate(vocab)}, ensure_ascii=False))
        merges_path.write_text("#version: 0.2\n")
        tokenizer = CLIPTokenizer(str(vocab_path), str(merges_path), model_max_length=16, pad_token="!")
    config = Owlv2Config(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 16,
            "bos_token_id": len(vocab) - 2,
            "eos_token_id": len(vocab) - 1,
            "pad_token_id": 0,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 64,
            "patch_size": 16,
        },
        projection_dim=32,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        model = Owlv2ForObjectDetection(config).eval()
        # Random box-head weights saturate every box to a sliver; small ones leave boxes near OWLv2's
        # per-patch prior (a patch-sized box on each patch), as a trained head starts out.
        with torch.no_grad():
            model.box_head.dense2.weight.mul_(0.01)
            model.box_head.dense2.bias.zero_()
    processor = Owlv2Processor(
        image_processor=Owlv2ImageProcessor(size={"height": 64, "width": 64}), tokenizer=tokenizer
    )
    shutil.rmtree(directory, ignore_errors=True)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
