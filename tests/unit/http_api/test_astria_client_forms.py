"""Astria requests as its clients and its own examples encode them: objects as JSON text in a form field,
documented field names, JSON numbers, and error messages that name the fields the client sent."""

from __future__ import annotations

import pytest

from multipass.errors import InvalidInput
from multipass_http_api.astria.prompt_form import Upload
from multipass_http_api.astria.tune_object import tune_from_multipart, tune_update

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
