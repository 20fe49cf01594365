"""Weighted/long prompts (use_lpw) with the real CLIP vocabulary, against the tiny text encoders."""

from __future__ import annotations

import pytest
import torch
from diffusion_testkit import SD15_MODEL, SDXL_MODEL, spec

from multipass_diffusion.prompts_lpw import (
    LpwEncoder,
    chunk_tokens,
    parse_weights,
    strip_break,
    truncation_warning,
)

BOS, EOS = 49406, 49407


@pytest.fixture(scope="module")
def sd15(engine):
    return engine.runtime(SD15_MODEL).base


@pytest.fixture(scope="module")
def sdxl(engine):
    return engine.runtime(SDXL_MODEL).base


def approx(pairs):
    return [(text, pytest.approx(weight)) for text, weight in pairs]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a (cat:1.5) sat", [("a ", 1.0), ("cat", 1.5), (" sat", 1.0)]),
        ("(cat)", [("cat", 1.1)]),
        ("[cat]", [("cat", 1 / 1.1)]),
        ("((cat))", [("cat", 1.21)]),
        ("(a [b] c:2)", [("a ", 2.0), ("b", 2 / 1.1), (" c", 2.0)]),
        (r"\(literal\) x", [("(literal) x", 1.0)]),
        ("(open", [("open", 1.1)]),
        ("ratio 16:9 wide", [("ratio 16:9 wide", 1.0)]),
        ("", [("", 1.0)]),
    ],
)
def test_parse_weights(text, expected):
    assert parse_weights(text) == approx(expected)


def test_break_never_reaches_the_encoder():
    assert strip_break("a castle BREAK ohwx man BREAK woman") == "a castle ohwx man woman"
    assert parse_weights("a BREAK (b:2)") == approx([("a ", 1.0), ("b", 2.0)])


def test_the_tokenizer_has_the_real_clip_vocabulary(sd15):
    assert sd15.tokenizers[0]("a photo of a cat")["input_ids"] == [BOS, 320, 1125, 539, 320, 2368, EOS]


def test_chunk_places_weights_on_their_tokens(sd15):
    chunks = chunk_tokens(sd15.tokenizers[0], parse_weights("a photo of a (cat:1.5)"))
    assert chunks.count == 1
    assert chunks.ids[0][:7] == [BOS, 320, 1125, 539, 320, 2368, EOS]
    assert len(chunks.ids[0]) == 77 and chunks.ids[0][7:] == [EOS] * 70  # SD1.5 pads with EOS
    assert chunks.weights[0][:7] == pytest.approx([1, 1, 1, 1, 1, 1.5, 1])


def test_long_prompts_are_cut_into_75_token_chunks_with_bos_and_eos(sd15):
    chunks = chunk_tokens(sd15.tokenizers[0], parse_weights("cat " * 80))
    assert chunks.count == 2
    first, second = chunks.ids
    assert len(first) == len(second) == 77
    assert first[0] == BOS and first[76] == EOS and first[1:76] == [2368] * 75
    assert second[:7] == [BOS] + [2368] * 5 + [EOS]


def test_sdxl_second_tokenizer_pads_with_its_own_pad_token(sdxl):
    chunks = chunk_tokens(sdxl.tokenizers[1], parse_weights("a cat"))
    assert chunks.ids[0][:4] == [BOS, 320, 2368, EOS]
    assert chunks.ids[0][4:] == [0] * 73


def test_unweighted_short_prompt_matches_the_diffusers_encoder(sd15):
    encoded = LpwEncoder(sd15.tokenizers, sd15.text_encoders, sdxl=False).encode("a red house", "blurry")
    reference, negative = sd15.pipe.encode_prompt("a red house", "cpu", 1, True, "blurry")
    assert torch.allclose(encoded.prompt_embeds, reference, atol=1e-6)
    assert torch.allclose(encoded.negative_prompt_embeds, negative, atol=1e-6)


def test_weights_scale_token_features_and_keep_the_chunk_mean(sd15):
    encoder = LpwEncoder(sd15.tokenizers, sd15.text_encoders, sdxl=False)
    plain = encoder.encode("a photo of a cat", "").prompt_embeds
    weighted = encoder.encode("a photo of a (cat:1.5)", "").prompt_embeds
    multipliers = torch.ones(1, 77, 1)
    multipliers[0, 5] = 1.5
    expected = plain * multipliers
    expected = expected * (plain.mean() / expected.mean())
    assert torch.allclose(weighted, expected, atol=1e-5)
    assert not torch.allclose(weighted, plain)
    assert weighted.mean().item() == pytest.approx(plain.mean().item(), abs=1e-6)


def test_long_prompt_and_short_negative_get_the_same_number_of_chunks(sd15):
    encoded = LpwEncoder(sd15.tokenizers, sd15.text_encoders, sdxl=False).encode("tree, " * 60, "ugly")
    assert encoded.prompt_embeds.shape == (1, 154, 32)
    assert encoded.negative_prompt_embeds.shape == (1, 154, 32)


def test_sdxl_concatenates_both_encoders_and_pools_the_second(sdxl):
    encoded = LpwEncoder(sdxl.tokenizers, sdxl.text_encoders, sdxl=True).encode("a red house", "blurry")
    reference = sdxl.pipe.encode_prompt("a red house", device="cpu", negative_prompt="blurry")
    prompt_embeds, negative_embeds, pooled, negative_pooled = reference
    assert encoded.prompt_embeds.shape == (1, 77, 64)
    assert torch.allclose(encoded.prompt_embeds, prompt_embeds, atol=1e-5)
    assert torch.allclose(encoded.negative_prompt_embeds, negative_embeds, atol=1e-5)
    assert torch.allclose(encoded.pooled_prompt_embeds, pooled, atol=1e-5)
    assert torch.allclose(encoded.negative_pooled_prompt_embeds, negative_pooled, atol=1e-5)
    long = LpwEncoder(sdxl.tokenizers, sdxl.text_encoders, sdxl=True).encode("(house:1.3), " * 50, "")
    assert long.prompt_embeds.shape == (1, 154, 64)


def test_truncation_warning_counts_dropped_tokens(sd15):
    tokenizer = sd15.tokenizers[0]
    assert truncation_warning(tokenizer, "a cat", "prompt") is None
    warning = truncation_warning(tokenizer, "cat " * 100, "prompt")
    assert "25 of 100 tokens" in warning


def test_engine_reports_truncation_without_lpw_and_none_with_it(engine):
    long_prompt = "cat " * 90
    plain = engine.run(spec(prompt=long_prompt, steps=2))
    assert any("15 of 90 tokens" in w for w in plain.warnings)
    weighted = engine.run(spec(prompt=long_prompt, steps=2, use_lpw=True))
    assert weighted.warnings == []
    assert weighted.image.tobytes() != plain.image.tobytes()
