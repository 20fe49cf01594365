"""The public protos are ready for clients in other languages: every file names the same package for
each language (protoc-gen-go refuses a file without ``go_package``; Java, C#, PHP, Ruby and Objective-C
clients otherwise get packages derived from ``multipass.v1`` that differ per generator), and the
descriptors served by reflection carry them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROTOS = sorted((ROOT / "protos" / "multipass" / "v1").glob("*.proto"))
LANGUAGE_OPTIONS = {
    "go_package": '"multipass/gen/go/multipass/v1;multipassv1"',
    "java_package": '"dev.multipass.v1"',
    "java_multiple_files": "true",
    "csharp_namespace": '"Multipass.V1"',
    "php_namespace": '"Multipass\\\\V1"',
    "ruby_package": '"Multipass::V1"',
    "objc_class_prefix": '"MPX"',
}


def _options(text: str) -> dict[str, str]:
    return dict(re.findall(r"^option (\w+) = (.+);$", text, re.M))


def test_the_set_is_found():
    assert {p.name for p in PROTOS} >= {"jobs.proto", "common.proto", "prompt.proto", "admin.proto"}


@pytest.mark.parametrize("proto", PROTOS, ids=lambda p: p.name)
def test_every_file_names_each_languages_package(proto):
    options = _options(proto.read_text())
    for name, value in LANGUAGE_OPTIONS.items():
        assert options.get(name) == value, f"{proto.name}: option {name}"
    outer = options.get("java_outer_classname", "").strip('"')
    assert outer.endswith("Proto") and outer != "Proto"


def _descriptors():
    from google.protobuf import descriptor_pb2

    import multipass.v1  # noqa: F401 - the generated modules register the files
    from multipass.v1 import (
        admin_pb2,
        common_pb2,
        diffusion_pb2,
        events_pb2,
        jobs_pb2,
        prompt_pb2,
        segmentation_pb2,
    )

    for module in (admin_pb2, common_pb2, diffusion_pb2, events_pb2, jobs_pb2, prompt_pb2, segmentation_pb2):
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        yield proto


def test_the_generated_descriptors_carry_the_options_for_reflection_clients():
    """grpcurl, Postman and other reflection clients read the options from the served descriptors."""
    files = list(_descriptors())
    assert len(files) == len(PROTOS)
    for proto in files:
        assert proto.options.go_package == "multipass/gen/go/multipass/v1;multipassv1", proto.name
        assert proto.options.java_package == "dev.multipass.v1", proto.name
        assert proto.options.java_multiple_files, proto.name
        assert proto.options.csharp_namespace == "Multipass.V1", proto.name


def test_java_outer_classes_clash_with_no_type():
    """protoc's Java generator refuses an outer class named like a type, and two files with one name."""
    files = list(_descriptors())
    types = {t.name for f in files for t in [*f.message_type, *f.enum_type, *f.service]}
    outers = [f.options.java_outer_classname for f in files]
    assert len(set(outers)) == len(outers)
    assert not set(outers) & types
