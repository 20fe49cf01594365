"""``multipass parse`` in-process: JSON and readable output, parameters, exit status 2 on bad input."""

import io
import json
from pathlib import Path

import pytest

from multipass_client.cli.main import main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(autouse=True)
def default_settings(monkeypatch):
    for name in (
        "MULTIPASS_MAX_PERSONS",
        "MULTIPASS_MAX_SIZE",
        "MULTIPASS_NATIVE_SIZE",
        "MULTIPASS_MAX_PROMPT_CHARS",
    ):
        monkeypatch.delenv(name, raising=False)


def test_json_of_the_multi_person_example(capsys):
    assert main(["parse", "--json", "-f", str(EXAMPLES / "multi-person.prompt")]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["base_prompt"].startswith("a grand ballroom at a charity gala")
    assert shown["common_prompt"] == "elegant, detailed skin, sharp focus, natural colours"
    assert [[lora["tune_id"] for lora in person["loras"]] for person in shown["persons"]] == [
        ["849330"],
        ["861629"],
    ]
    assert shown["persons"][0]["index"] == 0 and shown["persons"][1]["index"] == 1
    assert shown["multi_pass"] is True
    assert shown["params"]["w"] == 768 and shown["params"]["h"] == 512


def test_json_prints_fields_at_their_default_values(capsys):
    assert main(["parse", "--json", "a lighthouse"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["common_prompt"] == "" and shown["persons"] == [] and shown["keep_background"] is False
    assert shown["flags"] == {"tiled_upscale": False, "only_upscale": False}
    assert shown["params"]["use_lpw"] is False and shown["params"]["controlnet"] == ""
    assert "seed" not in shown["params"]
    assert "mask" not in shown


def test_readable_output(capsys):
    assert main(["parse", "-f", str(EXAMPLES / "multi-person.prompt")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("multi-pass: base pass + 2 person passes")
    assert "person 0: ohwx woman, long red silk evening gown, pearl earrings, smiling" in out
    assert "lora 861629 weight 1" in out
    assert " * num_images = 2" in out and "   seed = (unset)" in out


def test_readable_output_of_mask_and_warnings(capsys):
    text = "a house --mask_prompt door --mask_dilate -20% --mask_invert\nhires_fix=true"
    assert main(["parse", text, "--param", "input_image_url=https://example.com/a.png"]) == 0
    out = capsys.readouterr().out
    assert "mask: 'door', dilate -20%, inverted" in out
    assert "warnings:\n  - hires_fix=true without super_resolution=true" in out


def test_params_override_the_block(capsys):
    assert (
        main(["parse", "--json", "a lighthouse\nsteps=20", "--param", "steps=40", "--param", "seed=9"]) == 0
    )
    params = json.loads(capsys.readouterr().out)["params"]
    assert (params["steps"], params["seed"]) == (40, 9)


def test_input_image_switch_gives_keep_background(capsys):
    assert main(["parse", "--json", "--input-image", "BREAK BREAK ohwx man <lora:3:1>"]) == 0
    assert json.loads(capsys.readouterr().out)["keep_background"] is True


def test_prompt_from_stdin(capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("a lighthouse BREAK dusk BREAK ohwx man <lora:3:1>\n"))
    assert main(["parse", "--json", "-f", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["persons"][0]["loras"][0]["tune_id"] == "3"


def test_invalid_prompt_exits_2_with_violations_on_stderr(capsys):
    assert main(["parse", "a lighthouse --mask_promt x\nstesp=3", "--param", "cfg_scale=99"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("invalid prompt:\n")
    assert (
        "  params.stesp: unknown parameter 'stesp' on line 2 of the parameter block; did you mean 'steps'?"
        in captured.err
    )
    assert "  flag --mask_promt: unknown flag --mask_promt; did you mean --mask_prompt?" in captured.err
    assert "  params.cfg_scale: got '99' in the request; allowed: a number in 0..15" in captured.err


def test_settings_from_the_environment_apply(capsys, monkeypatch):
    monkeypatch.setenv("MULTIPASS_MAX_PERSONS", "1")
    assert main(["parse", "a BREAK b BREAK ohwx man BREAK ohwx woman"]) == 2
    assert "at most 1 are allowed" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["parse"], "give the prompt as TEXT or with -f FILE"),
        (["parse", "x", "--param", "steps"], "expected NAME=VALUE"),
        (["parse", "-f", "/nonexistent/prompt.txt"], "cannot read /nonexistent/prompt.txt"),
    ],
)
def test_usage_errors_exit_2(capsys, argv, words):
    assert main(argv) == 2
    assert words in capsys.readouterr().err


WHO = ("--token", "ohwx", "--class", "woman")


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (
            ["tunes", "register", *WHO, "--family", "sd15"],
            "a .safetensors file or an http(s) URL is required",
        ),
        (["tunes", "register", *WHO, "/nonexistent/me.safetensors"], "--family is required"),
        (
            ["tunes", "register", *WHO, "/nonexistent/me.safetensors", "--family", "sd15"],
            "/nonexistent/me.safetensors: no such file",
        ),
        (["tunes", "update", "1", "--no-characteristics", "--characteristic", "a=b"], "not both"),
        (["submit", "a cat", "--input-image", "/nonexistent/in.png"], "/nonexistent/in.png: no such file"),
    ],
)
def test_client_commands_used_wrongly_exit_2_naming_the_problem(capsys, monkeypatch, tmp_path, argv, words):
    monkeypatch.setenv("MULTIPASS_API_KEY", "mp_test")
    monkeypatch.setenv("MULTIPASS_STACK_DIR", str(tmp_path / "no-stack"))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert words in err and f"multipass {argv[0]}: " in err and "Traceback" not in err


def test_a_client_command_without_credentials_exits_2_saying_where_a_key_comes_from(
    capsys, monkeypatch, tmp_path
):
    monkeypatch.delenv("MULTIPASS_API_KEY", raising=False)
    monkeypatch.setenv("MULTIPASS_STACK_DIR", str(tmp_path / "no-stack"))
    assert main(["list"]) == 2
    assert "no API key: pass --api-key" in capsys.readouterr().err


def test_text_and_file_together_are_refused(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["parse", "a lighthouse", "-f", str(EXAMPLES / "multi-person.prompt")])
    assert caught.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_readable_output_of_keep_background_and_only_upscale(capsys):
    assert main(["parse", "-f", str(EXAMPLES / "keep-background.prompt")]) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        "multi-pass: base pass + 2 person passes, keep background (the input image is the scene)"
    )
    assert "base pass (skipped: keep background)" in out
    assert main(["parse", "--input-image", "--only_upscale --tiled_upscale"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("upscale only (no generation)")
    assert "flags: hires_denoising_strength=0.4, tiled_upscale, only_upscale" in out


def test_a_reader_that_stops_early_ends_the_command_quietly():
    """``multipass parse --json ... | head -1``: no traceback when the reader has gone."""
    import os
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is written
    try:
        done = subprocess.run(
            [sys.executable, "-m", "multipass_client.cli.main", "parse", "--json", "-f",
             str(EXAMPLES / "multi-person.prompt")],
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60, check=False,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr
    assert done.returncode == 141
