"""Every rpc and every field of the public and internal protos says what it is (the contract's first rule)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PROTOS = sorted((Path(__file__).resolve().parents[2] / "protos" / "multipass" / "v1").glob("*.proto"))
DECLARATION = re.compile(r"^(rpc \w+|(repeated |optional |map<[^>]+> )?[\w.]+ \w+ = \d+;)")


def undocumented(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    missing = []
    for number, line in enumerate(lines):
        text = line.strip()
        if not DECLARATION.match(text) or "//" in line:
            continue
        above = lines[number - 1].strip() if number else ""
        if not above.startswith("//"):
            missing.append(f"{path.name}:{number + 1}: {text}")
    return missing


def test_the_protos_are_found():
    assert {p.name for p in PROTOS} >= {"jobs.proto", "admin.proto", "common.proto", "diffusion.proto"}


@pytest.mark.parametrize("path", PROTOS, ids=lambda p: p.name)
def test_every_rpc_and_field_has_a_comment(path):
    assert undocumented(path) == []


def test_a_field_without_a_comment_is_found(tmp_path):
    proto = tmp_path / "x.proto"
    proto.write_text("message A {\n  // Documented.\n  int32 a = 1;\n  string b = 2;\n}\n")
    assert undocumented(proto) == ["x.proto:4: string b = 2;"]
