"""BREAK (§2): segments, persons, joins, and BREAK never reaching the text."""

import pytest

from multipass.errors import InvalidInput
from multipass_prompt_parser.breaks import join, tidy
from multipass_prompt_parser.language import Limits
from multipass_prompt_parser.parser import parse_prompt


def problems_of(text, params=None, **kwargs):
    with pytest.raises(InvalidInput) as caught:
        parse_prompt(text, params, **kwargs)
    return {v.field: v.description for v in caught.value.violations}


def test_no_break_is_a_single_pass():
    parsed = parse_prompt("a red fox in the snow")
    assert parsed.multi_pass is False
    assert parsed.persons == ()
    assert (parsed.base_prompt, parsed.common_prompt, parsed.base_effective_prompt) == (
        "a red fox in the snow",
        "",
        "a red fox in the snow",
    )


def test_break_on_its_own_line_and_inline_give_the_same_segments():
    own_lines = parse_prompt("a ballroom\nBREAK\nevening light\nBREAK\nohwx woman\nBREAK\nohwx man")
    inline = parse_prompt("a ballroom BREAK evening light BREAK ohwx woman BREAK ohwx man")
    assert own_lines == inline
    assert own_lines.multi_pass is True
    assert own_lines.base_prompt == "a ballroom"
    assert own_lines.common_prompt == "evening light"
    assert [(p.index, p.prompt) for p in own_lines.persons] == [(0, "ohwx woman"), (1, "ohwx man")]


def test_effective_prompts_join_base_common_and_person():
    # The common prompt is appended to the base prompt and to every person prompt (the person's own words,
    # its identity token first, stay at the front of what the text encoder reads).
    parsed = parse_prompt("a ballroom, BREAK , evening light, BREAK ohwx woman, red dress")
    assert parsed.base_effective_prompt == "a ballroom, evening light"
    assert parsed.persons[0].effective_prompt == "ohwx woman, red dress, evening light"


def test_empty_common_segment_joins_without_a_stray_comma():
    parsed = parse_prompt("a ballroom BREAK BREAK ohwx woman")
    assert parsed.common_prompt == ""
    assert parsed.base_effective_prompt == "a ballroom"
    assert parsed.persons[0].effective_prompt == "ohwx woman"


@pytest.mark.parametrize(
    "text", ["BREAKFAST at noon", "a break in the clouds", "Break dance", "UNBREAKABLE vow", "BREAK_1"]
)
def test_break_only_as_a_whole_upper_case_word(text):
    parsed = parse_prompt(text)
    assert parsed.multi_pass is False and parsed.base_prompt == text


def test_break_next_to_punctuation_splits():
    parsed = parse_prompt("a ballroom,BREAK,light BREAK.ohwx man")
    assert (parsed.base_prompt, parsed.common_prompt, parsed.persons[0].prompt) == (
        "a ballroom",
        "light",
        ".ohwx man",
    )


def test_one_break_without_persons_warns():
    parsed = parse_prompt("a ballroom BREAK evening light")
    assert parsed.multi_pass and parsed.persons == ()
    assert parsed.base_effective_prompt == "a ballroom, evening light"
    assert any("without person segments" in w for w in parsed.warnings)


def test_more_persons_than_allowed():
    text = "a park BREAK light" + " BREAK ohwx man" * 3
    assert len(parse_prompt(text, limits=Limits(max_persons=3)).persons) == 3
    found = problems_of(text + " BREAK ohwx woman", limits=Limits(max_persons=3))
    assert "4 person segments" in found["text"] and "at most 3" in found["text"]


def test_default_limit_is_eight_persons():
    assert len(parse_prompt("a park BREAK light" + " BREAK ohwx man" * 8).persons) == 8
    assert "9 person segments" in problems_of("a park BREAK light" + " BREAK ohwx man" * 9)["text"]


def test_empty_person_segment_is_an_error():
    found = problems_of("a park BREAK light BREAK ohwx man BREAK ")
    assert "person 1 (segment 3) is empty" in found["text"]


def test_person_with_only_tags_warns():
    parsed = parse_prompt("a park BREAK light BREAK <lora:5:1>")
    assert parsed.persons[0].prompt == ""
    assert parsed.persons[0].effective_prompt == "light"
    assert any("person 0 has only tags" in w for w in parsed.warnings)


def test_person_without_tags_warns():
    parsed = parse_prompt("a park BREAK light BREAK ohwx man")
    assert any("person 0 has no <lora:...> tag" in w for w in parsed.warnings)


def test_break_never_reaches_any_text():
    parsed = parse_prompt(
        "a BREAK b BREAK c <lora:1:1> BREAK d <lora:2:1>\nnegative_prompt=x BREAK y BREAK z BREAK w"
    )
    texts = [
        parsed.base_effective_prompt,
        parsed.base_effective_negative_prompt,
        *(p.effective_prompt for p in parsed.persons),
        *(p.effective_negative_prompt for p in parsed.persons),
    ]
    assert texts == ["a, b", "x, y", "c, b", "d, b", "z, y", "w, y"]


@pytest.mark.parametrize(
    ("raw", "tidied"),
    [
        ("  a   cat ,  dog  ", "a cat, dog"),
        (", a cat,", "a cat"),
        ("a\n\tcat", "a cat"),
        ("a, , ,b", "a,b"),
        ("(word:1.3), [word]", "(word:1.3), [word]"),
        ("", ""),
    ],
)
def test_tidy(raw, tidied):
    assert tidy(raw) == tidied


@pytest.mark.parametrize(
    ("parts", "joined"),
    [
        (("base", "common"), "base, common"),
        (("base,", "common"), "base, common"),
        (("base, ", ", common"), "base, common"),
        (("", "common"), "common"),
        (("base", ""), "base"),
        (("", ""), ""),
    ],
)
def test_join(parts, joined):
    assert join(*parts) == joined


def test_person_with_only_common_tags_does_not_warn():
    parsed = parse_prompt("a park BREAK light <lora:7:1> BREAK ohwx man")
    assert [t.tune_id for t in parsed.persons[0].loras] == ["7"]
    assert not any("has no <lora" in w for w in parsed.warnings)


@pytest.mark.parametrize(
    ("text", "word", "why"),
    [
        ("a garden Break Break ohwx woman <lora:1:1>", "Break", "a model tag follows it"),
        ("a garden\nbreak\nohwx woman", "break", "it stands alone on its line"),
        ("a garden BREAK Break BREAK ohwx woman <lora:1>", "Break", "a model tag follows it"),
    ],
)
def test_break_in_another_case_that_looks_meant_to_split_is_text_with_a_warning(text, word, why):
    # "Break" once made a single-pass job, the persons' LoRAs on its one pass, without a word.
    parsed = parse_prompt(text)
    assert word in parsed.base_prompt or word in parsed.common_prompt
    assert parsed.warnings[0] == (
        f"{word!r} is sent as text, not read as BREAK ({why}): only BREAK in upper case splits the prompt "
        "into segments"
    )
    assert len([w for w in parsed.warnings if "not read as BREAK" in w]) == 1


@pytest.mark.parametrize(
    "text", ["Break dance at noon", "a coffee break", "a break in the clouds\nBREAK\nsoft"]
)
def test_break_in_another_case_as_an_ordinary_word_has_no_warning(text):
    assert not any("not read as BREAK" in w for w in parse_prompt(text).warnings)
