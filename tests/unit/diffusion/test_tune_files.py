"""Which tune files a pass needs on local disk: its adapters, its faces' adapters, reference images."""

from __future__ import annotations

from diffusion_testkit import spec

from multipass.v1 import common_pb2, diffusion_pb2, prompt_pb2
from multipass_diffusion import tune_files


def ref(key: str) -> common_pb2.ObjectRef:
    return common_pb2.ObjectRef(bucket="multipass-tunes", key=f"tunes/t/{key}", sha256="a" * 64, size=1)


def lora(tune_id: str, kind: str = "lora") -> prompt_pb2.LoraRef:
    return prompt_pb2.LoraRef(tune_id=tune_id, weight=1.0, kind=kind)


def test_the_pass_adapters_and_every_faces_adapters_and_references_are_needed():
    faces = spec(
        kind="faces",
        loras=[lora("1")],
        faces=[
            diffusion_pb2.FaceTarget(loras=[lora("2"), lora("1")]),
            diffusion_pb2.FaceTarget(loras=[lora("3"), lora("4", kind="faceid")]),
        ],
        tune_files={
            key: ref(key) for key in ("1", "2", "3", "4", "9", "2/reference-1", "2/reference-0", "2/notes")
        },
    )
    # In order of first use; faceid refs load no file, unused tunes and unknown keys are not fetched.
    assert tune_files.needed_keys(faces) == ["1", "2", "3", "2/reference-0", "2/reference-1"]


def test_refs_without_a_file_are_left_to_the_engine():
    assert tune_files.needed_keys(spec(kind="person", loras=[lora("5")])) == []


def test_reference_keys():
    assert tune_files.reference_key("12", 3) == "12/reference-3"
    match = tune_files.reference_match("12/reference-3")
    assert (match["tune"], match["index"]) == ("12", "3")
    assert not tune_files.is_reference_key("12") and not tune_files.is_reference_key("12/reference-x")
