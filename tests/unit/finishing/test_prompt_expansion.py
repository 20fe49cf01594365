"""Prompt expansion with a tiny GPT-2: deterministic, bounded, refused clearly without a model."""

from __future__ import annotations

import shutil

import pytest
from finishing_testkit import pixels, spec
from transformers import AutoTokenizer

from multipass.errors import FailedPrecondition, InvalidInput
from multipass_diffusion.nets.prompt_expander import clean, expand_prompt, join


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
    one = expand_prompt(model_root, "a house", max_new_tokens=16, seed=1, temperature=1.5)
    assert one == expand_prompt(model_root, "a house", max_new_tokens=16, seed=1, temperature=1.5)
    assert one != expand_prompt(model_root, "a house", max_new_tokens=16, seed=2, temperature=1.5)


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


# -- as a pass option of the engine -------------------------------------------------------------------


def expanding(prompt: str = "a portrait of a knight", **options):
    values = {"prompt_expansion": "true", "prompt_expansion_tokens": "12", **options}
    return spec("base", prompt=prompt, width=64, height=64, options=values)


def test_the_base_pass_samples_with_the_expanded_prompt(engine, model_root):
    from multipass_diffusion.pass_cache import MemoryPassCache

    expected = expand_prompt(model_root, "a portrait of a knight", max_new_tokens=12, seed=7)
    assert expected != "a portrait of a knight"
    engine.cache = MemoryPassCache()
    try:
        expanded = engine.run(expanding())
        again = engine.run(expanding())
    finally:
        engine.cache = None
    assert expanded.metadata["expanded_prompt"] == expected
    assert f"prompt_expansion: the prompt became {expected!r}" in expanded.warnings
    # The key holds the expansion: a repeat hits the cache and still reports the expanded prompt.
    assert again.cache_hit and again.spec_hash == expanded.spec_hash
    assert again.metadata["expanded_prompt"] == expected
    # What was encoded is the expanded prompt: the same image as asking for that prompt directly.
    literal = engine.run(spec("base", prompt=expected, width=64, height=64))
    plain = engine.run(spec("base", prompt="a portrait of a knight", width=64, height=64))
    assert (pixels(literal.image) == pixels(expanded.image)).all()
    assert (pixels(plain.image) != pixels(expanded.image)).any()
    assert len({plain.spec_hash, literal.spec_hash, expanded.spec_hash}) == 3
    assert "expanded_prompt" not in plain.metadata


def test_expansion_follows_the_seed_and_token_options(engine):
    short = engine.run(expanding(prompt_expansion_tokens="2"))
    longer = engine.run(expanding())
    assert len(short.metadata["expanded_prompt"]) < len(longer.metadata["expanded_prompt"])
    assert short.spec_hash != longer.spec_hash


@pytest.mark.parametrize(
    ("kind", "options", "field"),
    [
        ("base", {"prompt_expansion": "maybe"}, "spec.options[prompt_expansion]"),
        ("finish", {"prompt_expansion": "true"}, "spec.options[prompt_expansion]"),
        (
            "base",
            {"prompt_expansion": "true", "prompt_expansion_tokens": "0"},
            "spec.options[prompt_expansion_tokens]",
        ),
    ],
)
def test_bad_expansion_options_are_refused_before_any_work(engine, kind, options, field):
    with pytest.raises(InvalidInput) as caught:
        engine.run(spec(kind, width=64, height=64, options=options))
    assert caught.value.violations[0].field == field


def test_an_empty_prompt_is_not_expanded_and_says_so(engine):
    output = engine.run(spec("base", prompt="", width=64, height=64, options={"prompt_expansion": "true"}))
    assert "expanded_prompt" not in output.metadata
    assert "prompt_expansion skipped: the prompt is empty" in output.warnings


def test_expansion_without_an_expander_is_a_failed_precondition(tmp_path):
    from multipass_diffusion.prompt_expansion import expand_spec

    with pytest.raises(FailedPrecondition, match="prompt_expander"):
        expand_spec(expanding(), tmp_path)
