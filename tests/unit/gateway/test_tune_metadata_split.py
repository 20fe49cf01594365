"""RegisterTune's metadata checks, split so that the metadata is judged before the file is read:
``check_fields`` (the metadata alone) and ``check_source`` (whether chunks came), plus the upload bound."""

from __future__ import annotations

import pytest

from multipass.errors import ConfigError, ResourceExhausted
from multipass.v1 import jobs_pb2
from multipass_gateway.domain.tune_checks import check_fields, check_metadata, check_source
from multipass_gateway.infra.upload_limits import UploadSlots
from multipass_gateway.settings import GatewaySettings, Limits

FACE_ID = "0123456789abcdef01234567"
NO_FILE = "no file: send the file in chunks after the metadata, or set metadata.url"
FACEID_FILE = (
    "a faceid tune has no file: its reference images (metadata.reference_image_ids) are the identity; "
    "register LoRA weights as kind lora"
)


def fields(violations) -> dict[str, str]:
    return {v.field: v.description for v in violations}


def lora(**fields) -> jobs_pb2.TuneMetadata:
    return jobs_pb2.TuneMetadata(**{"token": "ohwx", "class_name": "woman", "base_family": "sd15", **fields})


def test_field_checks_need_no_file_and_name_every_bad_field():
    bad = jobs_pb2.TuneMetadata(
        token="O H", class_name="", base_family="sd3", kind="pickle", sha256="xyz", reference_image_ids=["no"]
    )
    assert set(fields(check_fields(bad))) == {
        "metadata.token",
        "metadata.class_name",
        "metadata.base_family",
        "metadata.kind",
        "metadata.sha256",
        "metadata.reference_image_ids[0]",
    }
    assert check_fields(lora()) == [] and check_fields(lora(url="https://x/y")) == []


def test_source_checks_say_where_the_file_may_come_from():
    assert fields(check_source(lora(), streamed=False)) == {"chunk": NO_FILE}
    assert check_source(lora(), streamed=True) == []
    assert check_source(lora(url="https://x/y"), streamed=False) == []
    assert fields(check_source(lora(url="https://x/y"), streamed=True)) == {
        "metadata.url": "give either a URL or file chunks, not both"
    }
    faceid = jobs_pb2.TuneMetadata(
        token="ohwx", class_name="woman", kind="faceid", reference_image_ids=[FACE_ID]
    )
    assert check_source(faceid, streamed=False) == []
    assert fields(check_source(faceid, streamed=True)) == {"chunk": FACEID_FILE}


def test_a_faceid_tune_with_a_url_is_refused_by_the_fields_alone():
    faceid = jobs_pb2.TuneMetadata(token="ohwx", class_name="woman", kind="faceid", url="https://x/y")
    assert fields(check_fields(faceid)) == {
        "metadata.url": FACEID_FILE,
        "metadata.reference_image_ids": "a faceid tune needs at least one reference image "
        "(reference_image_ids or _urls)",
    }
    # Chunks as well add nothing: the URL is the one violation about the file.
    assert check_source(faceid, streamed=True) == []


@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.parametrize(
    "metadata",
    [
        lora(),
        lora(url="https://x/y"),
        lora(token="X", url="https://x/y"),
        jobs_pb2.TuneMetadata(token="ohwx", class_name="woman", kind="faceid"),
        jobs_pb2.TuneMetadata(token="ohwx", class_name="woman", kind="faceid", url="https://x/y"),
    ],
)
def test_check_metadata_is_both_halves(metadata, streamed):
    combined = check_metadata(metadata, streamed=streamed)
    assert combined == check_fields(metadata) + check_source(metadata, streamed=streamed)
    assert len({v.field for v in combined}) == len(combined)  # one violation per field, as before the split


def test_max_tune_uploads_is_read_once_with_its_bounds():
    assert GatewaySettings.from_env({}).limits.max_tune_uploads == Limits().max_tune_uploads == 4
    assert GatewaySettings.from_env({"MULTIPASS_GATEWAY_MAX_TUNE_UPLOADS": "9"}).limits.max_tune_uploads == 9
    for bad in ("0", "65", "many"):
        with pytest.raises(ConfigError, match="MULTIPASS_GATEWAY_MAX_TUNE_UPLOADS"):
            GatewaySettings.from_env({"MULTIPASS_GATEWAY_MAX_TUNE_UPLOADS": bad})


def test_upload_slots_refuse_one_more_and_free_on_exit():
    slots = UploadSlots(
        2,
        retry_after_seconds=7.0,
        what="tune file uploads",
        scope="tune_uploads",
        setting="MULTIPASS_GATEWAY_MAX_TUNE_UPLOADS",
        per_tenant=2,
    )
    with slots.hold(), slots.hold():
        assert slots.running == 2
        with pytest.raises(ResourceExhausted) as caught, slots.hold():
            pass
        assert caught.value.retry_after_seconds == 7.0
        assert "2 tune file uploads are in progress" in str(caught.value) and "retry after 7 s" in str(
            caught.value
        )
        assert slots.running == 2
    assert slots.running == 0
    with pytest.raises(RuntimeError), slots.hold():
        raise RuntimeError("the upload failed")
    assert slots.running == 0


def test_a_tenant_holds_at_most_its_share_of_the_slots():
    slots = UploadSlots(4, retry_after_seconds=1.0, what="uploads", scope="s", setting="X")
    assert slots.per_tenant == 2
    with slots.hold("a"), slots.hold("a"):
        with pytest.raises(ResourceExhausted, match="its share"), slots.hold("a"):
            pass
        with slots.hold("b"), slots.hold("b"):
            assert slots.running == 4
            with pytest.raises(ResourceExhausted, match="the most it receives"), slots.hold("c"):
                pass
    assert slots.running == 0
