"""The Astria request forms, the prompt and tune objects and the callback URL policy (pure parts)."""

from __future__ import annotations

import pytest

from multipass.errors import InvalidInput
from multipass.v1 import common_pb2, jobs_pb2
from multipass_http_api.astria import callbacks
from multipass_http_api.astria.origin import Origin, origin_of
from multipass_http_api.astria.prompt_form import Upload, form_of_job, from_json, from_multipart
from multipass_http_api.astria.prompt_object import prompt_object
from multipass_http_api.astria.tune_object import tune_from_json, tune_object


def test_multipart_booleans_numbers_files_and_unknown_fields():
    upload = Upload("a.png", "image/png", b"png")
    form = from_multipart(
        [
            ("prompt[text]", "ohwx woman"),
            ("prompt[super_resolution]", "1"),
            ("prompt[hires_fix]", "false"),
            ("prompt[face_correct]", "True"),
            ("prompt[steps]", " 30 "),
            ("prompt[cfg_scale]", ""),
            ("prompt[input_image]", upload),
            ("prompt[foo]", "x"),
            ("utf8", "✓"),
        ]
    )
    assert form.text == "ohwx woman"
    assert form.params == {
        "super_resolution": "true",
        "hires_fix": "false",
        "face_correct": "true",
        "steps": "30",
    }
    assert form.uploads == {"input_image": upload}
    assert form.warnings == ("unknown field utf8 ignored", "unknown field prompt[foo] ignored")


def test_json_values_become_the_gateways_strings_and_bad_ones_name_the_field():
    form = from_json({"prompt": {"text": "a", "seed": 7, "cfg_scale": 6.5, "use_lpw": True, "w": None}})
    assert form.params == {"seed": "7", "cfg_scale": "6.5", "use_lpw": "true"}
    with pytest.raises(InvalidInput) as caught:
        from_json({"prompt": {"text": "a", "steps": [1], "film_grain": "maybe"}})
    assert {v.field for v in caught.value.violations} == {"prompt[steps]", "prompt[film_grain]"}
    with pytest.raises(InvalidInput):
        from_json(["not", "an", "object"])


def test_an_empty_boolean_is_unset_so_the_texts_block_decides():
    form = from_multipart(
        [("prompt[text]", "a cat\nhires_fix=true"), ("prompt[hires_fix]", ""), ("prompt[use_lpw]", " ")]
    )
    assert form.params == {}
    form = from_json({"prompt": {"text": "a cat", "film_grain": ""}})
    assert form.params == {}
    with pytest.raises(InvalidInput) as caught:
        from_multipart([("prompt[text]", "a"), ("prompt[hires_fix]", "maybe")])
    (violation,) = caught.value.violations
    assert violation.field == "prompt[hires_fix]" and "'maybe'" in violation.description
    assert "empty for unset" in violation.description


def test_flag_and_tag_errors_are_the_texts_and_keep_which_part():
    from multipass_http_api.astria.field_names import prompt_field
    from multipass_http_api.errors import HttpError

    assert prompt_field("flag --mask_dilate") == "prompt[text]"
    assert prompt_field("tag <lora:1:9>") == "prompt[text]"
    error = HttpError(
        400,
        "invalid flag --mask_dilate: got 'abc'",
        {
            "flag --mask_dilate": ["got 'abc'; allowed: -2048..2048"],
            "params.steps": ["got '51'; allowed: 1..50"],
        },
    ).renamed(prompt_field)
    assert error.field_errors == {
        "prompt[text]": ["flag --mask_dilate: got 'abc'; allowed: -2048..2048"],
        "prompt[steps]": ["got '51'; allowed: 1..50"],
    }
    assert error.message == "invalid prompt[text]: flag --mask_dilate: got 'abc'"


def test_origin_round_trips_in_the_idempotency_key_and_restores_the_text():
    origin = Origin("123", tune_applied=True)
    key = origin.idempotency_key()
    assert origin_of(key) == origin and key != origin.idempotency_key()
    assert origin.astria_text(origin.submitted_text("ohwx woman")) == "ohwx woman"
    assert origin_of("a-key-of-our-own-api") is None


def finished_job() -> jobs_pb2.Job:
    job = jobs_pb2.Job(
        job_id="0123456789abcdef01234567",
        state=jobs_pb2.JOB_STATE_SUCCEEDED,
        prompt="<lora:123:1> ohwx woman",
        idempotency_key=Origin("123", tune_applied=True).idempotency_key(),
        callback_url=callbacks.relay_url(
            "http://api/astria/callbacks/prompt", "https://x.test/hook?id=1&a=b"
        ),
    )
    job.created_at.FromSeconds(1_700_000_000)
    job.finished_at.FromSeconds(1_700_000_010)
    job.parsed.params.steps = 20
    job.parsed.params.cfg_scale = 7.0
    job.parsed.params.num_images = 1
    job.parsed.params.super_resolution = True
    job.parsed.explicit_params.extend(["steps", "super_resolution"])
    image = job.images.add(index=0, seed=42, url="https://s3.test/final.png")
    image.final.CopyFrom(common_pb2.ImageRef(bucket="b", key="k"))
    return job


def test_prompt_object_of_a_finished_job():
    obj = prompt_object(
        finished_job(), base_url="http://api", callback="https://x.test/hook", image_url=lambda j, i: i.url
    )
    assert obj["tune_id"] == 123 and obj["text"] == "ohwx woman"
    assert obj["images"] == ["https://s3.test/final.png"] and obj["user_error"] is None
    assert obj["steps"] == 20 and obj["cfg_scale"] is None and obj["seed"] == 42
    assert obj["super_resolution"] is True and obj["num_images"] == 1
    assert obj["trained_at"] == "2023-11-14T22:13:30.000Z" and obj["created_at"] == "2023-11-14T22:13:20.000Z"
    assert obj["url"] == "http://api/tunes/123/prompts/0123456789abcdef01234567.json"
    # Fields of Astria's answers that clients read: what we have, and null or empty for what we lack.
    assert (obj["aspect_ratio"], obj["resolution"]) == (None, None)  # the test job has no size
    assert (obj["pack_id"], obj["order_id"], obj["image_references"]) == (None, None, [])
    sized = finished_job()
    sized.parsed.params.ar, sized.parsed.params.w, sized.parsed.params.h = "portrait", 512, 768
    obj = prompt_object(sized, base_url="http://api", callback=None, image_url=lambda j, i: i.url)
    assert (obj["aspect_ratio"], obj["resolution"]) == ("portrait", "512x768")


def test_prompt_object_of_running_and_failed_jobs_has_no_images():
    job = finished_job()
    job.state = jobs_pb2.JOB_STATE_RUNNING
    running = prompt_object(job, base_url="", callback=None, image_url=lambda j, i: i.url)
    assert running["images"] == [] and running["trained_at"] is None and running["user_error"] is None
    job.state = jobs_pb2.JOB_STATE_FAILED
    job.error.message = "pass person-0 failed"
    failed = prompt_object(job, base_url="", callback=None, image_url=lambda j, i: i.url)
    assert failed["images"] == [] and failed["user_error"] == "pass person-0 failed" and failed["trained_at"]


def test_duplicate_form_keeps_explicit_params_and_takes_overrides():
    job = finished_job()
    original = form_of_job(job, "ohwx woman", callbacks.target_of(job.callback_url))
    assert original.params == {"steps": "20", "super_resolution": "true"}
    assert original.callback == "https://x.test/hook?id=1&a=b"
    merged = from_json({"prompt": {"steps": 5}}).merged_over(original)
    assert merged.params["steps"] == "5" and merged.text == "ohwx woman"


def test_duplicate_form_keeps_a_controlnet_turned_off():
    # A prompt sent with controlnet=none over its text's "controlnet=canny" line was duplicated with an
    # empty controlnet, which reads as unset: the duplicate ran the canny ControlNet.
    job = finished_job()
    job.parsed.explicit_params.append("controlnet")
    original = form_of_job(job, "a dancer\ncontrolnet=canny", None)
    assert original.params["controlnet"] == "none"
    assert from_json({"prompt": {"steps": 5}}).merged_over(original).params["controlnet"] == "none"


def test_relay_url_carries_the_callers_url_and_nothing_else_is_taken_for_one():
    relayed = callbacks.relay_url("http://h:1/astria/callbacks/prompt", "https://x.test/a?b=1&c=2")
    assert callbacks.target_of(relayed) == "https://x.test/a?b=1&c=2"
    assert callbacks.target_of("https://x.test/hook?url=https://y") is None
    assert callbacks.target_of("") is None


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://10.0.0.5/hook",
        "http://169.254.169.254/latest",
        "http://[::1]/hook",
        "ftp://example.com/x",
        "http://user:pw@example.com/",
        "http://localhost:8080/",
        # internal addresses inside IPv6 forms, refused as the gateway's policy refuses them
        "http://[2002:7f00:1::]/",  # 6to4 wrapping 127.0.0.1
        "http://[64:ff9b::a9fe:a9fe]/",  # NAT64 wrapping the metadata address
        "http://[::127.0.0.1]/",  # IPv4-compatible
        "http://[::ffff:0:a9fe:a9fe]/",  # IPv4-translated metadata address
        "http://[fec0::1]/",  # site-local
        "http://2130706433/",  # 127.0.0.1 as one number
        "http://0177.0.0.1/",  # octal
    ],
)
async def test_callback_urls_to_internal_addresses_are_refused(url):
    with pytest.raises(InvalidInput) as caught:
        await callbacks.check_target(url, callbacks.CallbackSettings(signing_key="k"))
    assert caught.value.violations[0].field == "prompt[callback]"


async def test_allow_listed_network_passes_and_http_connects_to_the_checked_address():
    import ipaddress

    settings = callbacks.CallbackSettings(allow_networks=(ipaddress.ip_network("127.0.0.0/8"),))
    checked = await callbacks.check_target("http://127.0.0.1:9/hook?x=1", settings)
    assert checked.connect_url == "http://127.0.0.1:9/hook?x=1" and checked.host_header == "127.0.0.1:9"


def test_signature_is_the_gateways_scheme():
    body = b'{"prompt":{}}'
    header = callbacks.sign(body, "key", 1_700_000_000)
    assert header.startswith("t=1700000000,v1=")
    assert not callbacks.verify(header, body, "key")  # too old
    import time

    fresh = callbacks.sign(body, "key", int(time.time()))
    assert callbacks.verify(fresh, body, "key") and not callbacks.verify(fresh, body + b" ", "key")


def test_tune_requests_map_to_registration_and_training_is_refused():
    form = tune_from_json(
        {
            "tune": {
                "title": "t",
                "name": "man",
                "branch": "sdxl1",
                "model_type": "lora",
                "weights_url": "https://x/w",
            }
        }
    )
    form.check()
    metadata = form.metadata()
    assert (metadata.class_name, metadata.base_family, metadata.kind, metadata.token) == (
        "man",
        "sdxl",
        "lora",
        "ohwx",
    )
    training = tune_from_json({"tune": {"title": "t", "name": "man", "image_urls": ["https://x/1.jpg"]}})
    with pytest.raises(InvalidInput) as caught:
        training.check()
    assert "training is not offered" in caught.value.violations[0].description
    for branch, why in (("fast", "mock training branch"), ("flux1", "Flux models are not served")):
        other = tune_from_json(
            {"tune": {"title": "t", "name": "man", "branch": branch, "weights_url": "https://x/w"}}
        )
        with pytest.raises(InvalidInput) as caught:
            other.check()
        (violation,) = caught.value.violations
        assert violation.field == "tune[branch]" and why in violation.description
    tune = jobs_pb2.Tune(
        tune_id="1700000000000123", name="t", class_name="man", base_family="sdxl", kind="checkpoint"
    )
    obj = tune_object(tune, base_url="http://api")
    assert obj["id"] == 1700000000000123 and obj["branch"] == "sdxl1" and obj["model_type"] is None
