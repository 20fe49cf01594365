"""Astria requests as Astria's own examples and its clients encode them, against the real gateway: objects
as JSON text in a form field, the documented ``aspect_ratio`` parameter, JSON numbers, and refusals that
name the fields the client sent."""

from __future__ import annotations

from gateway_support import (  # noqa: F401 - fixtures
    capabilities_fixture,
    segmentation_models_fixture,
    stack_fixture,
)
from test_http_api_astria import (  # noqa: F401 - fixtures
    astria_api_fixture,
    astria_overrides_fixture,
    registration,
)


async def test_characteristics_as_json_text_in_a_multipart_body(astria_api):
    """Astria's example: ``-F 'tune[characteristics]={"short_description":"satin brown dress"}'``."""
    async with astria_api.client() as client:
        created = await client.post(
            "/tunes",
            files=registration("order-31", "woman", ("tune[characteristics]", '{"eye_color": "green eyes"}')),
        )
        assert created.status_code == 201, created.text
        tune = created.json()
        assert tune["characteristics"] == {"eye_color": "green eyes"}
        changed = await client.patch(
            f"/tunes/{tune['id']}", files={"tune[characteristics]": (None, '{"eye_color": "blue eyes"}')}
        )
        assert changed.status_code == 200, changed.text
        assert changed.json()["characteristics"] == {"eye_color": "blue eyes"}


async def test_aspect_ratio_sets_the_size_and_a_refusal_names_it(astria_api):
    async with astria_api.client() as client:
        wide = await client.post(
            "/tunes/690204/prompts",
            files={"prompt[text]": (None, "a lighthouse"), "prompt[aspect_ratio]": (None, "16:9")},
        )
        assert wide.status_code == 201, wide.text
        made = wide.json()
        assert made["aspect_ratio"] == "16:9" and made["ar"] == "16:9"
        width, height = (int(side) for side in made["resolution"].split("x"))
        assert width > height
        assert not any("aspect_ratio" in warning for warning in made["warnings"])
        refused = await client.post(
            "/tunes/690204/prompts", json={"prompt": {"text": "a lighthouse", "aspect_ratio": "7:3"}}
        )
        assert refused.status_code == 422, refused.text
        assert list(refused.json()["errors"]) == ["prompt[aspect_ratio]"]
        assert refused.json()["error"].startswith("invalid prompt[aspect_ratio]: ")
