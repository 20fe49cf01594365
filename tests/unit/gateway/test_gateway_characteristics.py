"""Tune characteristics: ``{{name}}`` placeholders filled per part of the prompt from its tunes."""

from __future__ import annotations

from multipass_gateway.domain import characteristics
from multipass_prompt_parser.convert import to_proto
from multipass_prompt_parser.parser import parse_prompt

WOMAN = {"eye_color": "green eyes", "hair": "red curly hair"}
MAN = {"eye_color": "brown eyes", "beard": "short beard"}
TUNES = {"111": WOMAN, "222": MAN}


def parsed(text: str):
    return to_proto(parse_prompt(text))


def test_each_person_takes_its_own_tunes_values_also_in_the_common_prompt():
    prompt = parsed(
        "a couple at a gala BREAK photo, {{eye_color}} BREAK ohwx woman, {{hair}} <lora:111:1> "
        "BREAK ohwx man, {{ beard }} <lora:222:1>"
    )
    assert characteristics.apply(prompt, TUNES) == []
    woman, man = prompt.persons
    assert "red curly hair" in woman.prompt and "green eyes" in woman.effective_prompt
    assert "short beard" in man.prompt and "brown eyes" in man.effective_prompt
    assert "{{" not in woman.effective_prompt + man.effective_prompt
    # The base pass sees the common prompt too, where the two eye colours cannot both hold: left out.
    assert prompt.base_effective_prompt == "a couple at a gala, photo"
    assert any(
        "{{eye_color}} of the common prompt is left out of the base pass" in w for w in prompt.warnings
    )


def test_the_base_prompt_takes_a_value_all_tunes_agree_on_and_refuses_a_disputed_one():
    agreed = {"111": {"style": "film photo", **WOMAN}, "222": {"style": "film photo", **MAN}}
    prompt = parsed("{{style}}, a gala BREAK BREAK ohwx woman <lora:111:1> BREAK ohwx man <lora:222:1>")
    assert characteristics.apply(prompt, agreed) == []
    assert prompt.base_effective_prompt.startswith("film photo, a gala")
    prompt = parsed("a gala, {{eye_color}} BREAK BREAK ohwx woman <lora:111:1> BREAK ohwx man <lora:222:1>")
    before = prompt.SerializeToString()
    (problem,) = characteristics.apply(prompt, TUNES)
    assert problem.field == "prompt"
    assert "{{eye_color}} in the base prompt" in problem.description and "111, 222" in problem.description
    assert prompt.SerializeToString() == before  # nothing filled when something cannot be


def test_base_tags_fill_the_base_prompt_of_a_single_subject_prompt():
    prompt = parsed("portrait of ohwx woman, {{hair}}, {{eye_color}} <lora:111:1>")
    assert characteristics.apply(prompt, TUNES) == []
    assert "red curly hair, green eyes" in prompt.base_effective_prompt


def test_an_unknown_name_is_refused_naming_what_the_tunes_offer():
    prompt = parsed("ohwx woman, {{freckles}} <lora:111:1>")
    (problem,) = characteristics.apply(prompt, TUNES)
    assert "{{freckles}}" in problem.description and "eye_color, hair" in problem.description
    (problem,) = characteristics.apply(parsed("a cat, {{fur}}"), TUNES)
    assert "no <lora:...> or <faceid:...> tag" in problem.description
    (problem,) = characteristics.apply(parsed("ohwx man, {{fur}} <lora:333:1>"), {"333": {}})
    assert "has no characteristics" in problem.description


def test_text_that_is_no_placeholder_stays_and_values_are_not_read_again():
    prompt = parsed("a sign reading {{}} and {{two words}}, ohwx woman <lora:111:1>")
    assert characteristics.apply(prompt, {"111": {"x": "{{x}}"}}) == []
    assert "{{}} and {{two words}}" in prompt.base_effective_prompt
    prompt = parsed("ohwx woman, {{x}} <lora:111:1>")
    assert characteristics.apply(prompt, {"111": {"x": "{{hair}}"}}) == []
    assert "{{hair}}" in prompt.base_effective_prompt  # one substitution, not recursive


def test_registration_checks_names_count_and_values():
    assert characteristics.check({"eye_color": "blue eyes", "_x1": ""}) == []
    (bad,) = characteristics.check({"eye color": "blue"})
    assert bad.field == "metadata.characteristics" and "'eye color'" in bad.description
    (bad,) = characteristics.check({"hair": "x" * 201})
    assert bad.field == "metadata.characteristics[hair]" and "200" in bad.description
    (bad,) = characteristics.check({"hair": "red\nhair"})
    assert bad.field == "metadata.characteristics[hair]"
    (bad,) = characteristics.check({f"k{i}": "v" for i in range(33)})
    assert "at most 32" in bad.description


def test_placeholders_cannot_grow_a_text_past_the_added_length_bound():
    long = {"111": {"a": "x" * characteristics.MAX_VALUE_CHARS}}
    # A 4000-character prompt of one short placeholder would be 140,000 characters once filled.
    prompt = parsed("<lora:111:1> " + "{{a}}" * 700)
    before = prompt.SerializeToString()
    (problem,) = characteristics.apply(prompt, long)
    assert problem.field == "prompt"
    assert "the base prompt add 136500 characters" in problem.description
    assert f"at most {characteristics.MAX_ADDED_CHARS}" in problem.description
    assert prompt.SerializeToString() == before
    # Ten full-length values still fit; each person's part is bounded on its own.
    prompt = parsed("<lora:111:1> " + "{{a}} " * 10)
    assert characteristics.apply(prompt, long) == []
    assert prompt.base_effective_prompt.count("x" * characteristics.MAX_VALUE_CHARS) == 10
    persons = " BREAK ".join("ohwx woman <lora:111:1>" for _ in range(8))
    prompt = parsed("a room BREAK " + "{{a}}" * 600 + " BREAK " + persons)
    problems = characteristics.apply(prompt, long)
    assert {p.description.split(" add ")[0] for p in problems} >= {
        "the {{name}} placeholders of person 0's prompt",
        "the {{name}} placeholders of person 7's prompt",
    }
