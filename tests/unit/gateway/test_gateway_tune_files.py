"""The safetensors check works from a file's head and size: the same verdicts and messages as on the
whole file, without the tensor data."""

from __future__ import annotations

import json

import pytest

from multipass.errors import InvalidInput
from multipass_gateway.domain.tune_files import (
    MAX_SAFETENSORS_HEADER,
    check_safetensors,
    check_safetensors_head,
    head_bytes,
)


def safetensors(header: dict, data: bytes) -> bytes:
    encoded = json.dumps(header).encode()
    return len(encoded).to_bytes(8, "little") + encoded + data


LORA = safetensors(
    {"lora_unet_x.lora_down.weight": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 16
)
FILES = {
    "lora": LORA,
    "empty": b"",
    "short": b"\x01\x00",
    "zip": b"PK\x03\x04" + b"\x00" * 100,
    "pickle": b"\x80\x02}q\x00" + b"\x00" * 100,
    "not json": (10).to_bytes(8, "little") + b"not json!!" + b"\0" * 4,
    "json list": (2).to_bytes(8, "little") + b"[]" + b"\0" * 4,
    "length past the end": (1000).to_bytes(8, "little") + b"{}",
    "damaged": safetensors(
        {"lora_unet.weight": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8
    ),
    "unknown format": safetensors(
        {"model.weight": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8
    ),
}


def verdict(check) -> list[tuple[str, str]] | None:
    try:
        check()
    except InvalidInput as error:
        return [(v.field, v.description) for v in error.violations]
    return None


@pytest.mark.parametrize("name", sorted(FILES))
def test_the_head_and_size_give_the_whole_files_verdict(name):
    data = FILES[name]
    head = data[: head_bytes(data[:8], len(data))]
    whole = verdict(lambda: check_safetensors(data, "chunk", "sd15"))
    assert verdict(lambda: check_safetensors_head(head, len(data), "chunk", "sd15")) == whole
    # Bytes past the header (a larger read) change nothing.
    assert verdict(lambda: check_safetensors_head(data[: len(head) + 5], len(data), "chunk", "sd15")) == whole
    assert (whole is None) == (name == "lora")


def test_messages_name_the_field_and_what_is_wrong():
    def message(data: bytes, field: str = "chunk") -> str:
        head = data[: head_bytes(data[:8], len(data))]
        (found,) = verdict(lambda: check_safetensors_head(head, len(data), field))
        assert found[0] == field
        return found[1]

    assert message(b"", "metadata.url") == "is 0 bytes; not a safetensors file"
    assert "bad header length" in message(FILES["pickle"])
    assert message(FILES["json list"]) == "is not a safetensors file (header is not a JSON object)"
    assert message(FILES["damaged"]).startswith("is a damaged safetensors file: ")
    assert message(FILES["unknown format"]).startswith("is in no tune format the workers load")


def test_only_the_header_is_read_however_large_the_file():
    header_end = len(LORA) - 16
    assert head_bytes(LORA[:8], len(LORA)) == header_end
    # A 4 GiB file announcing its header: the head is still only the header.
    assert head_bytes(LORA[:8], 4 << 30) == header_end
    # An announced length out of bounds needs no more than the length bytes to be refused.
    assert head_bytes((MAX_SAFETENSORS_HEADER + 1).to_bytes(8, "little"), 4 << 30) == 8
    assert head_bytes(b"\x01", 1) == 1
    with pytest.raises(InvalidInput, match="bad header length"):
        check_safetensors_head((MAX_SAFETENSORS_HEADER + 1).to_bytes(8, "little"), 4 << 30, "chunk")


def test_a_head_cut_short_of_the_header_is_the_callers_mistake():
    with pytest.raises(ValueError, match="header ends at"):
        check_safetensors_head(LORA[:20], len(LORA), "chunk")
