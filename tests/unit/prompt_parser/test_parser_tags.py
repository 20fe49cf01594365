"""Model tags (§3): <lora:ID:WEIGHT>, <faceid:ID:WEIGHT>, where they apply, and every error."""

import pytest

from multipass.errors import InvalidInput
from multipass_prompt_parser.parser import parse_prompt
from multipass_prompt_parser.tags import ModelTag


def problems_of(text, params=None, **kwargs):
    with pytest.raises(InvalidInput) as caught:
        parse_prompt(text, params, **kwargs)
    return {v.field: v.description for v in caught.value.violations}


def person(text):
    return parse_prompt(f"a park BREAK BREAK {text}").persons[0]


def test_lora_tag_with_weight_is_removed_from_the_text():
    p = person("ohwx woman, red dress <lora:849330:0.8>")
    assert p.prompt == "ohwx woman, red dress"
    assert p.loras == (ModelTag(kind="lora", tune_id="849330", weight=0.8, tag="<lora:849330:0.8>"),)


def test_weight_defaults_to_one():
    assert person("ohwx man <lora:12>").loras[0].weight == 1.0


def test_faceid_tag_and_chained_tags_keep_their_order():
    p = person("ohwx woman <lora:12:0.7><faceid:12:0.5> <lora:my_style.v2-b:-0.25>")
    assert [(t.kind, t.tune_id, t.weight) for t in p.loras] == [
        ("lora", "12", 0.7),
        ("faceid", "12", 0.5),
        ("lora", "my_style.v2-b", -0.25),
    ]
    assert p.prompt == "ohwx woman"


def test_tag_inside_the_text_leaves_tidy_commas():
    assert person("ohwx woman, <lora:1:1>, red dress").prompt == "ohwx woman, red dress"
    assert person("ohwx woman <lora:1:1>, red dress").prompt == "ohwx woman, red dress"


def test_kind_is_case_insensitive_and_spaces_are_trimmed():
    tag = person("ohwx man <LoRA: 77 : 0.5 >").loras[0]
    assert (tag.kind, tag.tune_id, tag.weight, tag.tag) == ("lora", "77", 0.5, "<LoRA: 77 : 0.5 >")


def test_base_tags_apply_to_the_base_pass_and_common_tags_to_every_pass():
    parsed = parse_prompt(
        "a park <lora:1:1> BREAK film look <lora:2:0.5> BREAK ohwx man <lora:3:1> BREAK ohwx woman"
    )
    assert [t.tune_id for t in parsed.base_loras] == ["1", "2"]
    assert [t.tune_id for t in parsed.common_loras] == ["2"]
    assert [t.tune_id for t in parsed.persons[0].loras] == ["3", "2"]
    assert [t.tune_id for t in parsed.persons[1].loras] == ["2"]
    assert parsed.common_prompt == "film look"


def test_angle_brackets_that_are_not_tags_stay_text():
    assert parse_prompt("I <3 cats, <b> bold, a<b>c").base_prompt == "I <3 cats, <b> bold, a<b>c"


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("ohwx <lora:12:0.5 red dress", "tag <lora:12:0.5"),
        ("ohwx <lora:12", "tag <lora:12"),
        ("ohwx <lora:12:1 <lora:13:1>", "tag <lora:12:1"),
    ],
)
def test_unclosed_tag(text, field):
    found = problems_of(f"a park BREAK BREAK {text}")
    assert "not closed" in found[field] and "person 0" in found[field]


def test_weight_that_is_not_a_number_names_the_tag():
    found = problems_of("a park BREAK BREAK ohwx <lora:12:x>")
    assert "weight 'x'" in found["tag <lora:12:x>"] and "not a number" in found["tag <lora:12:x>"]


@pytest.mark.parametrize("weight", ["5.5", "-6", "nan", "1e9"])
def test_weight_out_of_range(weight):
    found = problems_of(f"a park <lora:12:{weight}>")
    assert repr(weight) in found[f"tag <lora:12:{weight}>"] and "-5..5" in found[f"tag <lora:12:{weight}>"]


@pytest.mark.parametrize(
    ("tag", "words"),
    [
        ("<lora::1>", "no id"),
        ("<lora: :1>", "no id"),
        ("<lora:a/b:1>", "not a tune id"),
        ("<lora:1:2:3>", "4 parts"),
    ],
)
def test_malformed_tags(tag, words):
    assert words in problems_of(f"a park {tag}")[f"tag {tag}"]


def test_unknown_tag_kind_suggests_lora():
    assert "did you mean <lora:...>?" in problems_of("a park <lroa:1:1>")["tag <lroa:1:1>"]
    assert "unknown tag kind 'lyco'" in problems_of("a park <lyco:1:1>")["tag <lyco:1:1>"]


def test_same_tune_twice_in_one_segment():
    found = problems_of("a park BREAK BREAK ohwx <lora:5:1> <lora:5:0.5>")
    assert "appears twice in person 0" in found["tag <lora:5:0.5>"]


def test_person_tag_repeating_a_common_tag():
    found = problems_of("a park BREAK look <lora:5:1> BREAK ohwx <lora:5:0.5>")
    assert "already in the common segment" in found["tag <lora:5:0.5>"]


def test_tags_are_refused_in_the_negative_prompt():
    found = problems_of("a park\nnegative_prompt=blurry <lora:5:1>")
    assert "not allowed in the negative prompt" in found["params.negative_prompt"]


def test_tag_text_never_reaches_the_prompt():
    parsed = parse_prompt("a <lora:1:1> park BREAK x <faceid:2> BREAK ohwx <lora:3:0.5>")
    texts = [
        parsed.base_effective_prompt,
        parsed.common_prompt,
        *(p.effective_prompt for p in parsed.persons),
    ]
    assert not any("<" in text or "lora" in text or "faceid" in text for text in texts)


@pytest.mark.parametrize("written", ["<lora :123:1>", "< lora:123:1>", "<LoRA  : 123 : 1>", "< faceid:9>"])
def test_a_tag_with_spaces_in_its_start_is_an_error_not_text(written):
    found = problems_of(f"a park BREAK BREAK ohwx woman {written} smiling")
    assert found[f"tag {written}"] == (
        f"tag {written!r} in person 0 (segment 2) has a space inside its start; write <lora:ID:WEIGHT> or "
        "<faceid:ID:WEIGHT> with WEIGHT a number in -5..5 (no spaces around '<' and before ':')"
    )


def test_angle_brackets_in_text_are_no_tags():
    assert parse_prompt("a < b and lora: c, <3").base_prompt == "a < b and lora: c, <3"
