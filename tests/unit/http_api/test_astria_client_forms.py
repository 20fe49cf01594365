"""Astria requests as its clients and its own examples encode them: objects as JSON text in a form field,
documented field names, JSON numbers, and error messages that name the fields the client sent."""

from __future__ import annotations

import pytest

from multipass.errors import InvalidInput
from multipass_http_api.astria.field_names import prompt_field
from multipass_http_api.astria.prompt_form import Upload, from_json, from_multipart
from multipass_http_api.astria.tune_object import tune_from_multipart, tune_update
from multipass_http_api.errors import HttpError

FACE = Upload("face.jpg", "image/jpeg", b"jpeg")


def faceid_tune(*fields: tuple[str, object]):
    return tune_from_multipart(
        [
            ("tune[title]", "Brown dress"),
            ("tune[name]", "woman"),
            ("tune[model_type]", "faceid"),
            ("tune[images][]", FACE),
            *fields,
        ]
    )


def test_characteristics_sent_as_json_text_in_a_form_field_are_the_object():
    # Astria's own example: -F 'tune[characteristics]={"short_description":"satin brown dress"}'
    form = faceid_tune(("tune[characteristics]", '{"short_description": "satin brown dress"}'))
    form.check()
    assert dict(form.characteristics) == {"short_description": "satin brown dress"}
    update, warnings = tune_update("form", [("tune[characteristics]", '{"eye_color": "blue eyes"}')])
    assert dict(update.characteristics) == {"eye_color": "blue eyes"}
    assert list(update.update_mask.paths) == ["characteristics"] and not warnings


def test_prompts_attributes_sent_as_a_json_list_in_a_form_field_are_the_prompts():
    form = faceid_tune(("tune[prompts_attributes]", '[{"text": "ohwx woman", "num_images": 2}]'))
    assert form.prompts == ((("text", "ohwx woman"), ("num_images", 2)),)


@pytest.mark.parametrize(
    ("field", "text"),
    [
        ("tune[characteristics]", "{not json"),
        ("tune[characteristics]", '["a list"]'),
        ("tune[prompts_attributes]", '{"text": "an object"}'),
    ],
)
def test_json_text_of_the_wrong_shape_is_a_422_naming_the_field(field, text):
    with pytest.raises(InvalidInput) as caught:
        faceid_tune((field, text))
    assert [v.field for v in caught.value.violations] == [field]


def test_json_text_no_protobuf_string_can_carry_names_where_it_is():
    with pytest.raises(InvalidInput) as caught:
        faceid_tune(("tune[characteristics]", '{"eye_color": "\\ud800"}'))
    assert [v.field for v in caught.value.violations] == ["tune[characteristics][eye_color]"]


def test_aspect_ratio_is_the_ar_parameter_and_a_refusal_names_it():
    form = from_multipart([("prompt[text]", "a dog"), ("prompt[aspect_ratio]", "16:9")])
    assert form.params == {"ar": "16:9"} and form.warnings == ()
    same = from_json({"prompt": {"text": "a dog", "aspect_ratio": "1:1", "ar": "1:1"}})
    assert same.params == {"ar": "1:1"}
    with pytest.raises(InvalidInput) as caught:
        from_json({"prompt": {"text": "a dog", "aspect_ratio": "16:9", "ar": "1:1"}})
    (violation,) = caught.value.violations
    assert violation.field == "prompt[aspect_ratio]" and "prompt[ar] '1:1'" in violation.description
    # The gateway's refusal of the value names the field the client sent.
    refused = HttpError(422, "invalid params.ar: got '9:16'", {"params.ar": ["got '9:16'"]})
    answer = refused.renamed(lambda name: form.field_names.get(name) or prompt_field(name))
    assert answer.message == "invalid prompt[aspect_ratio]: got '9:16'"
    assert answer.field_errors == {"prompt[aspect_ratio]": ["got '9:16'"]}
    duplicate = from_json({"prompt": {"aspect_ratio": "landscape"}}).merged_over(
        from_json({"prompt": {"text": "a dog", "ar": "1:1"}})
    )
    assert duplicate.params == {"ar": "landscape"}
    assert duplicate.field_names == {"params.ar": "prompt[aspect_ratio]"}


def test_whole_json_numbers_written_as_floats_are_the_integers():
    # JSON has one number type: Python's json.dumps(2.0) and many serializers write whole numbers as 2.0.
    form = from_json({"prompt": {"text": "a dog", "num_images": 2.0, "steps": 30.0, "seed": 7.0, "w": 512.0}})
    assert form.params == {"num_images": "2", "steps": "30", "seed": "7", "w": "512"}
    assert from_json({"prompt": {"text": "a", "cfg_scale": 7.5, "seed": 1e300}}).params == {
        "cfg_scale": "7.5",
        "seed": "1e+300",
    }


def test_a_message_listing_several_problems_names_the_fields_the_client_sent():
    refused = HttpError(
        422,
        "invalid request: 3 problems (params.h: got '128'; params.w: got '100'; flag --mask_dilate: got 'x')",
        {"params.h": ["got '128'"], "params.w": ["got '100'"], "flag --mask_dilate": ["got 'x'"]},
    )
    answer = refused.renamed(prompt_field)
    assert answer.message == (
        "invalid request: 3 problems (prompt[h]: got '128'; prompt[w]: got '100'; "
        "prompt[text]: flag --mask_dilate: got 'x')"
    )
    assert set(answer.field_errors) == {"prompt[h]", "prompt[w]", "prompt[text]"}
