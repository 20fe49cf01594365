"""Prompt expansion with a tiny GPT-2: deterministic, bounded, refused clearly without a model."""

from __future__ import annotations

import shutil

import pytest
from transformers import AutoTokenizer

from multipass.errors import FailedPrecondition, InvalidInput
from multipass_diffusion.finishing import expand_prompt
from multipass_diffusion.finishing.prompt_expansion import clean, join


def test_expansion_continues_the_prompt_deterministically(model_root):
    first = expand_prompt(model_root, "a portrait of a knight", max_new_tokens=12, seed=1)
    assert first.startswith("a portrait of a knight")
    assert len(first) > len("a portrait of a knight")
    assert first == expand_prompt(model_root, "a portrait of a knight", max_new_tokens=12, seed=1)


def test_new_tokens_are_bounded(model_root):
    tokenizer = AutoTokenizer.from_pretrained(model_root / "diffusion" / "prompt_expander")
    prompt = "a cat on a sofa"
    short = expand_prompt(model_root, prompt, max_new_tokens=3, seed=0)
    longer = expand_prompt(model_root, prompt, max_new_tokens=12, seed=0)
    added = len(tokenizer(short)["input_ids"]) - len(tokenizer(prompt)["input_ids"])
    assert 0 < added <= 4  # three new tokens, plus at most the separating space
    assert len(longer) > len(short)


def test_sampling_is_seeded(model_root):
    from multipass_diffusion.finishing.prompt_expansion import expand_prompt as expand

    one = expand(model_root, "a house", max_new_tokens=16, seed=1, temperature=1.5)
    assert one == expand(model_root, "a house", max_new_tokens=16, seed=1, temperature=1.5)
    assert one != expand(model_root, "a house", max_new_tokens=16, seed=2, temperature=1.5)


def test_a_missing_expander_is_refused_naming_the_directory(tmp_path):
    with pytest.raises(FailedPrecondition) as caught:
        expand_prompt(tmp_path, "a cat", max_new_tokens=8, seed=0)
    assert str(tmp_path / "diffusion" / "prompt_expander") in str(caught.value)


def test_an_incomplete_expander_is_refused_naming_the_file(model_root, tmp_path):
    target = tmp_path / "diffusion" / "prompt_expander"
    shutil.copytree(model_root / "diffusion" / "prompt_expander", target)
    (target / "model.safetensors").unlink()
    with pytest.raises(FailedPrecondition, match="model.safetensors"):
        expand_prompt(tmp_path, "a cat", max_new_tokens=8, seed=0)


@pytest.mark.parametrize(
    ("prompt", "tokens", "field"),
    [("  ", 8, "prompt"), ("a cat", 0, "max_new_tokens"), ("a cat", 1000, "max_new_tokens")],
)
def test_bad_requests_are_refused(model_root, prompt, tokens, field):
    with pytest.raises(InvalidInput) as caught:
        expand_prompt(model_root, prompt, max_new_tokens=tokens, seed=0)
    assert caught.value.violations[0].field == field


def test_continuations_are_cleaned_and_joined():
    assert clean("  highly   detailed\x07, 8k\nsecond line") == "highly detailed, 8k"
    assert clean("\ufffdsharp") == "sharp"
    assert join("a cat ", ", oil painting") == "a cat, oil painting"
    assert join("a cat", "in the rain") == "a cat in the rain"
    assert join("a cat", "") == "a cat"
