"""``multipass demo`` (what ``make run`` calls after ``multipass up --detach``) against the running stack."""

from __future__ import annotations

import json
import re

import pytest

pytestmark = pytest.mark.e2e


def test_demo_registers_tunes_runs_the_example_and_downloads_it(stack, client, tmp_path):
    out = tmp_path / "out"
    result = stack.cli("demo", "--out", str(out), "--param", "num_images=1", timeout=400)
    assert result.returncode == 0, result.stderr[-4000:]
    log = result.stderr

    # The placeholders of examples/multi-person.prompt were replaced by two new tunes of this tenant.
    prompt = (out / "demo.prompt").read_text()
    assert "849330" not in prompt and "861629" not in prompt
    tune_ids = re.findall(r"<lora:(\d+):1>", prompt)
    assert len(tune_ids) == 2 and len(set(tune_ids)) == 2
    mine = {tune.tune_id: tune for tune in client.tunes.list()}
    assert {mine[t].class_name for t in tune_ids} == {"woman", "man"}

    (job_dir,) = [p for p in out.iterdir() if p.is_dir()]
    job = json.loads((job_dir / "job.json").read_text())
    assert job["state"] == "JOB_STATE_SUCCEEDED"
    assert [lora["tune_id"] for person in job["persons"] for lora in person["loras"]] == tune_ids
    image_dir = job_dir / "image-0"
    files = {p.name for p in image_dir.iterdir()}
    assert {
        "00-base.png",
        "mask-person-0.png",
        "mask-person-1.png",
        "final.png",
        "contact-sheet.png",
    } <= files
    assert f"contact sheet: {image_dir / 'contact-sheet.png'}" in log
    assert "look like noise" in log and "MULTIPASS_MODEL_DIR" in log
    assert "make down" in log
