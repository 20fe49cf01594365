"""The client commands as a user runs them against the local stack (address and API key from .multipass/)."""

from __future__ import annotations

import hashlib
import json

import pytest
from e2e_support import FAST

pytestmark = pytest.mark.e2e

PARAMS = [arg for name, value in FAST.items() for arg in ("--param", f"{name}={value}")]


def test_tunes_register_list_get_delete(stack, sd15_model, tmp_path):
    from multipass_dev.tiny_models.diffusion import write_random_lora

    lora = write_random_lora(sd15_model, tmp_path / "anna.safetensors", seed=31)
    register = ("tunes", "register", str(lora), "--token", "ohwx", "--class", "woman", "--family", "sd15")
    registered = stack.cli(
        *register,
        "--name",
        "anna",
        "--characteristic",
        "eye_color=green eyes",
        "--characteristic",
        "outfit=red silk dress, pearls",
    )
    assert registered.returncode == 0, registered.stderr
    tune_id = registered.stdout.strip()
    shown = stack.cli("tunes", "get", tune_id)
    assert (
        "{{eye_color}} = green eyes" in shown.stdout and "{{outfit}} = red silk dress, pearls" in shown.stdout
    )
    malformed = stack.cli(*register, "--characteristic", "no-equals-sign")
    assert malformed.returncode == 2 and "NAME=TEXT" in malformed.stderr

    listed = stack.cli("tunes", "list")
    assert listed.returncode == 0
    (line,) = [line for line in listed.stdout.splitlines() if line.startswith(tune_id)]
    assert "anna" in line and "ohwx" in line and "sd15" in line

    got = stack.cli("tunes", "get", tune_id, "--json")
    assert got.returncode == 0, got.stderr
    tune = json.loads(got.stdout)
    assert (tune["token"], tune["class_name"], tune["base_family"], tune["kind"]) == (
        "ohwx",
        "woman",
        "sd15",
        "lora",
    )
    assert tune["file"]["sha256"] == hashlib.sha256(lora.read_bytes()).hexdigest()
    assert tune["characteristics"] == {"eye_color": "green eyes", "outfit": "red silk dress, pearls"}
    updated = stack.cli("tunes", "update", tune_id, "--name", "Anna", "--characteristic", "hair=red hair")
    assert updated.returncode == 0 and "Anna" in updated.stdout, updated.stderr
    tune = json.loads(stack.cli("tunes", "get", tune_id, "--json").stdout)
    assert tune["name"] == "Anna" and tune["characteristics"] == {"hair": "red hair"}
    cleared = stack.cli("tunes", "update", tune_id, "--no-characteristics")
    assert cleared.returncode == 0, cleared.stderr
    assert "characteristics" not in json.loads(stack.cli("tunes", "get", tune_id, "--json").stdout)
    refused = stack.cli("tunes", "update", tune_id)
    assert refused.returncode == 1 and "update_mask" in refused.stderr

    # A faceid tune: face photos, no weights.
    from PIL import Image

    face = tmp_path / "face.png"
    Image.new("RGB", (96, 96), "tan").save(face)
    faceid = stack.cli(
        "tunes",
        "register",
        "--kind",
        "faceid",
        "--token",
        "ohwx",
        "--class",
        "woman",
        "--reference",
        str(face),
    )
    assert faceid.returncode == 0, faceid.stderr
    shown = stack.cli("tunes", "get", faceid.stdout.strip())
    assert "1 reference face image(s)" in shown.stdout and "file " not in shown.stdout
    no_face = stack.cli("tunes", "register", "--kind", "faceid", "--token", "ohwx", "--class", "woman")
    assert no_face.returncode == 2 and "--reference" in no_face.stderr

    not_a_lora = tmp_path / "notes.safetensors"
    not_a_lora.write_bytes(b"this is not a safetensors file")
    refused = stack.cli(
        "tunes", "register", str(not_a_lora), "--token", "ohwx", "--class", "man", "--family", "sd15"
    )
    assert refused.returncode == 1
    first, *violations = refused.stderr.strip().splitlines()
    assert first.startswith("INVALID_ARGUMENT") and violations and violations[0].startswith("  ")

    deleted = stack.cli("tunes", "delete", tune_id)
    assert deleted.returncode == 0 and "deleted" in deleted.stdout
    gone = stack.cli("tunes", "get", tune_id)
    assert gone.returncode == 1 and gone.stderr.startswith("NOT_FOUND")


def test_submit_watch_get_list_cancel(stack):
    submitted = stack.cli("submit", "a teapot on a wooden table", *PARAMS)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()

    watched = stack.cli("watch", job_id)
    assert watched.returncode == 0, watched.stdout + watched.stderr
    lines = watched.stdout.splitlines()
    assert lines[0].startswith("#1 ") and "accepted" in lines[0]
    assert "finished: SUCCEEDED" in lines[-1]
    last = int(lines[-1].split()[0].lstrip("#"))
    resumed = stack.cli("watch", job_id, "--from-seq", str(last - 1))
    assert resumed.returncode == 0 and resumed.stdout.splitlines() == [lines[-1]]

    shown = stack.cli("get", job_id)
    assert shown.returncode == 0
    assert f"job       {job_id}" in shown.stdout and "state     SUCCEEDED" in shown.stdout
    assert any(line.strip().startswith("base") and "COMPLETED" in line for line in shown.stdout.splitlines())

    listed = stack.cli("list", "--state", "succeeded", "--limit", "50")
    assert listed.returncode == 0
    rows = listed.stdout.splitlines()
    assert any(row.startswith(job_id) for row in rows)
    assert all(row.split()[1] == "SUCCEEDED" for row in rows)
    assert stack.cli("list", "--state", "bogus").returncode == 2

    cancelled = stack.cli("cancel", job_id)
    assert cancelled.returncode == 0 and "not cancelled; state SUCCEEDED" in cancelled.stdout
