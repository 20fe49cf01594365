"""``multipass segment`` in-process, with the tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from multipass_client.cli.main import main


@pytest.fixture
def astronaut_file(tmp_path: Path) -> Path:
    path = tmp_path / "astronaut.png"
    Image.fromarray(data.astronaut()).save(path)
    return path


def run_json(capsys, argv: list[str]) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_prompt_mask_with_negative_dilate_and_invert(haar_model_dir, astronaut_file, tmp_path, capsys):
    """With the Haar fallback, which finds her real face."""
    out = tmp_path / "masks" / "face.png"
    report = run_json(
        capsys,
        [
            "segment",
            str(astronaut_file),
            "--prompt",
            "face",
            "--dilate",
            "4",
            "--model-dir",
            str(haar_model_dir),
            "--out",
            str(out),
            "--json",
        ],
    )
    [entry] = report["masks"]
    assert entry["label"] == "prompt" and entry["path"] == str(out)
    mask = np.asarray(Image.open(out))
    assert mask.shape == (512, 512) and set(np.unique(mask)) <= {0, 255}
    x0, y0, x1, y1 = entry["box"]
    assert 150 <= x0 < x1 <= 300 and 40 <= y0 < y1 <= 190  # around her face
    assert entry["area_fraction"] == pytest.approx((mask == 255).mean(), abs=1e-6)
    inverted = tmp_path / "inverted.png"
    run_json(
        capsys,
        [
            "segment", str(astronaut_file), "--prompt", "face", "--dilate", "4", "--invert",
            "--model-dir", str(haar_model_dir), "--out", str(inverted), "--json",
        ],
    )  # fmt: skip
    assert np.array_equal(np.asarray(Image.open(inverted)), 255 - mask)


def test_negative_percent_dilation_erodes(tiny_model_dir, astronaut_file, tmp_path, capsys):
    out = tmp_path / "eroded.png"
    argv = [
        "segment",
        str(astronaut_file),
        "--prompt",
        "face",
        "--model-dir",
        str(tiny_model_dir),
        "--out",
        str(out),
    ]
    plain = run_json(capsys, [*argv, "--json"])["masks"][0]["area_fraction"]
    report = run_json(capsys, [*argv, "--dilate=-1%", "--json"])
    assert report["masks"][0]["area_fraction"] < plain


def test_slots_write_one_mask_per_person(tiny_model_dir, astronaut_file, tmp_path, capsys):
    out = tmp_path / "people.png"
    report = run_json(
        capsys,
        [
            "segment",
            str(astronaut_file),
            "--slots",
            "2",
            "--model-dir",
            str(tiny_model_dir),
            "--out",
            str(out),
            "--json",
        ],
    )
    assert [m["label"] for m in report["masks"]] == ["person-0", "person-1"]
    assert [s["index"] for s in report["slots"]] == [0, 1]
    masks = [np.asarray(Image.open(tmp_path / f"people-person-{i}.png")) == 255 for i in range(2)]
    assert not (masks[0] & masks[1]).any()


def test_faces_write_one_box_mask_per_face(haar_model_dir, astronaut_file, tmp_path, capsys):
    """With the Haar fallback, which finds her real face."""
    out = tmp_path / "faces.png"
    report = run_json(
        capsys,
        [
            "segment",
            str(astronaut_file),
            "--faces",
            "--model-dir",
            str(haar_model_dir),
            "--out",
            str(out),
            "--json",
        ],
    )
    [face] = report["masks"]
    assert face["label"] == "face-0" and face["slot_index"] == -1
    mask = np.asarray(Image.open(tmp_path / "faces-face-0.png")) == 255
    ys, xs = np.nonzero(mask)
    assert (xs.min(), ys.min()) == pytest.approx((177, 67), abs=6)


def test_plain_output_lists_the_files(tiny_model_dir, astronaut_file, tmp_path, capsys):
    out = tmp_path / "plain.png"
    assert (
        main(
            [
                "segment",
                str(astronaut_file),
                "--prompt",
                "person",
                "--model-dir",
                str(tiny_model_dir),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.strip() == str(out)
    assert out.is_file()


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["--faces", "--negative", "hat"], 2, "apply to --prompt only"),
        (["--prompt", "  "], 2, "--prompt is empty"),
        (["--slots", "0"], 2, "--slots got 0"),
        (["--prompt", "face", "--dilate", "5px"], 1, "--dilate"),
    ],
)
def test_bad_arguments(tiny_model_dir, astronaut_file, capsys, extra, code, message):
    assert main(["segment", str(astronaut_file), *extra, "--model-dir", str(tiny_model_dir)]) == code
    assert message in capsys.readouterr().err


def test_a_file_that_is_not_an_image(tiny_model_dir, tmp_path, capsys):
    notes = tmp_path / "notes.png"
    notes.write_text("not an image")
    assert main(["segment", str(notes), "--faces", "--model-dir", str(tiny_model_dir)]) == 1
    assert "is not an image" in capsys.readouterr().err


def test_a_model_dir_without_models(astronaut_file, tmp_path, capsys):
    assert main(["segment", str(astronaut_file), "--faces", "--model-dir", str(tmp_path / "empty")]) == 1
    assert "SAM model missing" in capsys.readouterr().err
