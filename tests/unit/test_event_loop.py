"""MULTIPASS_EVENT_LOOP: every service reads it, runs on the loop it names, and refuses a bad value."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from multipass import event_loop
from multipass.errors import ConfigError
from multipass.service_main import EXIT_CONFIG, run_service

SETTINGS = [
    "multipass_gateway.settings:GatewaySettings",
    "multipass_prompt_parser.settings:ParserSettings",
    "multipass_segmentation.settings:SegmentationSettings",
    "multipass_diffusion.settings:DiffusionSettings",
    "multipass_http_api.settings:HttpApiSettings",
]


def _settings_class(spec: str):
    module, name = spec.split(":")
    return getattr(__import__(module, fromlist=[name]), name)


def test_auto_runs_on_uvloop_where_it_is_installed():
    pytest.importorskip("uvloop")
    assert event_loop.resolve("auto") == "uvloop"
    assert event_loop.resolve("asyncio") == "asyncio"

    async def loop_type():
        return type(asyncio.get_running_loop()).__module__

    assert event_loop.run(loop_type(), "auto").startswith("uvloop")
    assert event_loop.run(loop_type(), "asyncio").startswith("asyncio")


def test_auto_falls_back_to_asyncio_without_uvloop_and_uvloop_insists(monkeypatch):
    monkeypatch.setattr(event_loop, "uvloop_installed", lambda: False)
    assert event_loop.resolve("auto") == "asyncio"
    assert event_loop.loop_factory("auto") is None
    with pytest.raises(ConfigError, match="uvloop is not installed"):
        event_loop.resolve("uvloop")
    with pytest.raises(ConfigError, match="allowed: auto, uvloop, asyncio"):
        event_loop.resolve("trio")


@pytest.mark.parametrize("spec", SETTINGS)
def test_every_service_reads_the_event_loop_and_names_a_bad_value(spec, tmp_path):
    settings_class = _settings_class(spec)
    required = {"MULTIPASS_MODEL_DIR": str(tmp_path)}
    assert settings_class.from_env(required).event_loop == "auto"
    assert settings_class.from_env({**required, "MULTIPASS_EVENT_LOOP": "asyncio"}).event_loop == "asyncio"
    with pytest.raises(ConfigError) as caught:
        settings_class.from_env({**required, "MULTIPASS_EVENT_LOOP": "twisted"})
    assert [v.field for v in caught.value.violations] == ["MULTIPASS_EVENT_LOOP"]
    assert "twisted" in str(caught.value)


def test_run_service_serves_on_the_chosen_loop(monkeypatch):
    seen = []

    class Settings:
        log_level = "WARNING"
        event_loop = "asyncio"

    class Handle:
        async def stop(self, grace):
            pass

    async def serve(settings):
        seen.append(type(asyncio.get_running_loop()).__module__)
        raise ConfigError("stop here")  # ends the run at once, after the loop started

    assert run_service("probe", Settings, serve) == EXIT_CONFIG
    assert seen and seen[0].startswith("asyncio")
    if event_loop.uvloop_installed():
        Settings.event_loop = "auto"
        assert run_service("probe", Settings, serve) == EXIT_CONFIG
        assert seen[1].startswith("uvloop")


def test_a_service_process_exits_2_naming_a_bad_event_loop():
    result = subprocess.run(
        [sys.executable, "-m", "multipass_prompt_parser"],
        env={"MULTIPASS_EVENT_LOOP": "gevent", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == EXIT_CONFIG
    assert "MULTIPASS_EVENT_LOOP" in result.stderr and "gevent" in result.stderr
    assert "Traceback" not in result.stderr
