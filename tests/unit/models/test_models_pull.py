"""``multipass models pull`` against a local fake Hub (``fake_hub``): the whole pull, resume after a kill,
checksums, tokens, endpoints, and ``models list``."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_hub import FakeHub

from multipass.errors import FailedPrecondition, NotFound, PermissionDenied, Unavailable
from multipass.model_catalog.manifest import load_manifest
from multipass.model_sync import catalog_commands
from multipass.model_sync.hub_pull import (
    RECORD_NAME,
    ChecksumMismatch,
    HubSettings,
    pull,
    read_record,
)

MB = 1 << 20
REPO = "acme/tiny-upscalers"
SMALL_CONFIG = b'{"scale": 4}'


def blobs(seed: int, count: int, size: int) -> list[bytes]:
    """``count`` reproducible blobs of ``size`` bytes, each a repeated digest of its own."""
    out = []
    for index in range(count):
        block = hashlib.sha256(f"{seed}-{index}".encode()).digest() * (size // 32)
        out.append(block[:size])
    return out


def write_manifest(path: Path, profiles: dict[str, list[dict]]) -> Path:
    lines = ["schema = 1", ""]
    for name, files in profiles.items():
        lines += [
            f"[profiles.{name}]",
            f'description = "test profile {name}"',
            'licence = "Apache-2.0"',
            'features = ["upscaler"]',
            "size_mb = 30",
            "files = [",
        ]
        for item in files:
            fields = ", ".join(f"{key} = {json.dumps(value)}" for key, value in item.items())
            lines.append(f"  {{ {fields} }},")
        lines += ["]", ""]
    path.write_text("\n".join(lines))
    return path


@pytest.fixture
def hub():
    fake = FakeHub().start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def repo_files() -> dict[str, bytes]:
    weights = blobs(1, 3, 10 * MB)
    return {
        "config.json": SMALL_CONFIG,
        "a.safetensors": weights[0],
        "b.safetensors": weights[1],
        "nested/c.safetensors": weights[2],
    }


def file_entries(
    files: dict[str, bytes], prefix: str = "diffusion/upscaler/", repo: str = REPO
) -> list[dict]:
    return [
        {"repo": repo, "revision": "main", "path": path, "target": prefix + path.replace("/", "-")}
        for path in files
    ]


def settings(hub: FakeHub, token: str | None = None) -> HubSettings:
    return HubSettings(endpoint=hub.endpoint, token=token)


def test_pull_fetches_every_file_checks_it_and_records_it(tmp_path, hub, repo_files):
    hub.add(REPO, repo_files)
    manifest = load_manifest(write_manifest(tmp_path / "m.toml", {"ups": file_entries(repo_files)}))
    model_dir = tmp_path / "models"

    report = pull(manifest, manifest.select(["ups"]), model_dir, settings(hub), progress=False)

    assert sorted(report.downloaded) == sorted(e["target"] for e in file_entries(repo_files))
    for entry in file_entries(repo_files):
        assert (model_dir / entry["target"]).read_bytes() == repo_files[entry["path"]]
    assert report.bytes_downloaded == sum(len(data) for data in repo_files.values())
    record = read_record(model_dir)
    big = record["diffusion/upscaler/a.safetensors"]
    assert big["sha256"] == hashlib.sha256(repo_files["a.safetensors"]).hexdigest() == big["etag"]
    assert big["commit"] == hub.repos[REPO].commit and big["repo"] == REPO
    assert not list(model_dir.rglob("*.part"))
    # The token never goes to the CDN; the big files came from it.
    assert all(auth == "" for method, path, auth in hub.requests if path.startswith("/cdn/"))

    sent = hub.bytes_sent
    again = pull(manifest, manifest.select(["ups"]), model_dir, settings(hub), progress=False)
    assert again.downloaded == [] and len(again.present) == len(repo_files)
    assert hub.bytes_sent == sent  # nothing fetched twice


def test_a_killed_pull_resumes_and_fetches_again_less_than_a_tenth(tmp_path, hub, repo_files):
    hub.add(REPO, repo_files)
    total = sum(len(data) for data in repo_files.values())
    manifest_path = write_manifest(tmp_path / "m.toml", {"ups": file_entries(repo_files)})
    model_dir = tmp_path / "models"
    hub.throttle = 0.004  # about 16 MB/s
    env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": "0", "MULTIPASS_MODEL_DIR": ""}
    command = [
        sys.executable, "-m", "multipass_client.cli.main", "models", "pull", "ups",
        "--dir", str(model_dir), "--manifest", str(manifest_path), "--progress", "always",
    ]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while hub.bytes_sent < total * 0.55 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert process.poll() is None, process.communicate()[1].decode()
        process.send_signal(signal.SIGKILL)
    finally:
        _, stderr = process.communicate(timeout=30)
    first_run = hub.bytes_sent
    assert 0.5 * total < first_run < total
    # A progress bar per file, named by its target.
    progress = stderr.decode()
    assert "diffusion/upscaler/a.safetensors" in progress and "%|" in progress
    assert list(model_dir.rglob("*.part")), "the killed pull leaves its part file"

    hub.throttle = 0.0
    manifest = load_manifest(manifest_path)
    report = pull(manifest, manifest.select(["ups"]), model_dir, settings(hub), progress=False)

    fetched_again = first_run + (hub.bytes_sent - first_run) - total
    assert fetched_again < 0.10 * total, f"re-downloaded {fetched_again} of {total} bytes"
    assert report.resumed, "the interrupted file resumed from its part"
    for entry in file_entries(repo_files):
        assert (model_dir / entry["target"]).read_bytes() == repo_files[entry["path"]]
    assert not list(model_dir.rglob("*.part"))
    print(f"\nresume: first run sent {first_run}, second {hub.bytes_sent - first_run}; "
          f"fetched again {fetched_again} bytes = {fetched_again / total:.2%} of {total}")  # fmt: skip


def test_a_file_unlike_the_manifests_sha256_is_refused_and_deleted(tmp_path, hub):
    data = blobs(2, 1, 200_000)[0]
    hub.add(REPO, {"x.safetensors": data})
    entry = {
        "repo": REPO, "revision": "main", "path": "x.safetensors", "target": "diffusion/upscaler/x.safetensors",
        "sha256": hashlib.sha256(b"the file we reviewed").hexdigest(),
    }  # fmt: skip
    manifest = load_manifest(write_manifest(tmp_path / "m.toml", {"ups": [entry]}))
    with pytest.raises(ChecksumMismatch) as caught:
        pull(manifest, manifest.select(["ups"]), tmp_path / "models", settings(hub), progress=False)
    assert "refused" in str(caught.value) and entry["sha256"] in str(caught.value)
    assert "the manifest" in str(caught.value)
    assert not (tmp_path / "models" / entry["target"]).exists()
    assert not list((tmp_path / "models").rglob("*.part"))


def test_bytes_corrupted_in_transit_are_refused_by_the_hubs_sha256(tmp_path, hub):
    data = blobs(3, 1, 300_000)[0]
    hub.add(REPO, {"x.safetensors": data})
    hub.corrupt[(REPO, "x.safetensors")] = data[:1000] + bytes(1000) + data[2000:]
    manifest = load_manifest(
        write_manifest(tmp_path / "m.toml", {"ups": file_entries({"x.safetensors": data})})
    )
    with pytest.raises(ChecksumMismatch) as caught:
        pull(manifest, manifest.select(["ups"]), tmp_path / "models", settings(hub), progress=False)
    assert hashlib.sha256(data).hexdigest() in str(caught.value) and "the Hub" in str(caught.value)
    assert not (tmp_path / "models" / "diffusion/upscaler/x.safetensors").exists()

    del hub.corrupt[(REPO, "x.safetensors")]  # the next pull starts over and succeeds
    pull(manifest, manifest.select(["ups"]), tmp_path / "models", settings(hub), progress=False)
    assert (tmp_path / "models" / "diffusion/upscaler/x.safetensors").read_bytes() == data


def test_a_small_file_is_checked_against_its_git_blob_hash(tmp_path, hub):
    hub.add(REPO, {"config.json": SMALL_CONFIG})
    hub.corrupt[(REPO, "config.json")] = b'{"scale": 8}'
    manifest = load_manifest(write_manifest(tmp_path / "m.toml", {"ups": file_entries({"config.json": b""})}))
    with pytest.raises(ChecksumMismatch, match="git-sha1"):
        pull(manifest, manifest.select(["ups"]), tmp_path / "models", settings(hub), progress=False)


def test_a_private_repository_needs_hf_token(tmp_path, hub):
    hub.add(REPO, {"config.json": SMALL_CONFIG}, private=True)
    manifest = load_manifest(write_manifest(tmp_path / "m.toml", {"ups": file_entries({"config.json": b""})}))
    with pytest.raises(NotFound, match="set HF_TOKEN"):
        pull(manifest, manifest.select(["ups"]), tmp_path / "a", settings(hub, token=None), progress=False)

    hub_settings = HubSettings.from_env({"HF_ENDPOINT": hub.endpoint + "/", "HF_TOKEN": hub.token})
    assert hub_settings == HubSettings(hub.endpoint, hub.token)
    pull(manifest, manifest.select(["ups"]), tmp_path / "b", hub_settings, progress=False)
    assert (tmp_path / "b" / "diffusion/upscaler/config.json").read_bytes() == SMALL_CONFIG
    assert ("HEAD", f"/{REPO}/resolve/main/config.json", f"Bearer {hub.token}") in hub.requests


def test_a_file_the_repository_lacks_is_named(tmp_path, hub):
    hub.add(REPO, {"config.json": SMALL_CONFIG})
    entries = [
        {"repo": REPO, "revision": "main", "path": "missing.pth", "target": "diffusion/upscaler/m.pth"}
    ]
    manifest = load_manifest(write_manifest(tmp_path / "m.toml", {"ups": entries}))
    with pytest.raises(NotFound, match=f"{REPO}@main has no file missing.pth"):
        pull(manifest, manifest.select(["ups"]), tmp_path / "models", settings(hub), progress=False)


def test_a_users_own_file_at_a_target_is_kept_unless_forced(tmp_path, hub):
    hub.add(REPO, {"config.json": SMALL_CONFIG})
    manifest = load_manifest(write_manifest(tmp_path / "m.toml", {"ups": file_entries({"config.json": b""})}))
    own = tmp_path / "models" / "diffusion/upscaler/config.json"
    own.parent.mkdir(parents=True)
    own.write_bytes(b'{"mine": true}')
    with pytest.raises(FailedPrecondition, match="--force"):
        pull(manifest, manifest.select(["ups"]), tmp_path / "models", settings(hub), progress=False)
    assert own.read_bytes() == b'{"mine": true}'
    pull(manifest, manifest.select(["ups"]), tmp_path / "models", settings(hub), force=True, progress=False)
    assert own.read_bytes() == SMALL_CONFIG
    # A file that already is the manifest's (copied by hand) is kept and recorded without fetching it.
    (tmp_path / "models" / RECORD_NAME).unlink()
    sent = hub.bytes_sent
    report = pull(manifest, manifest.select(["ups"]), tmp_path / "models", settings(hub), progress=False)
    assert report.present == ["diffusion/upscaler/config.json"] and hub.bytes_sent == sent


def test_the_cli_pulls_with_hf_endpoint_and_lists_what_is_present(tmp_path, hub, repo_files, capsys):
    small = {"config.json": SMALL_CONFIG, "a.safetensors": repo_files["a.safetensors"][: 2 * MB]}
    hub.add(REPO, small)
    manifest_path = write_manifest(tmp_path / "m.toml", {"ups": file_entries(small), "other": file_entries(
        {"x.pth": b""}, prefix="diffusion/face_restorer/")})  # fmt: skip
    model_dir = tmp_path / "models"
    env = {"HF_ENDPOINT": hub.endpoint, "MULTIPASS_MODEL_DIR": str(model_dir)}

    def run(*argv: str) -> int:
        parser = argparse.ArgumentParser()
        from multipass.model_sync.command import register

        register(parser.add_subparsers(dest="command"))
        args = parser.parse_args(["models", *argv])
        return args.run(args, environ=env)

    assert run("pull", "ups", "--manifest", str(manifest_path), "--progress", "never") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["downloaded"] == 2 and summary["model_dir"] == str(model_dir)
    assert run("list", "--json", "--manifest", str(manifest_path)) == 0
    rows = {row["profile"]: row for row in json.loads(capsys.readouterr().out)["profiles"]}
    assert (rows["ups"]["files_present"], rows["ups"]["files"]) == (2, 2)
    assert rows["ups"]["bytes_present"] == sum(len(d) for d in small.values())
    assert (rows["other"]["files_present"], rows["other"]["command"]) == (0, "multipass models pull other")
    assert run("pull", "nope", "--manifest", str(manifest_path)) == 2
    assert "expected one of ups, other" in capsys.readouterr().err
    assert catalog_commands.run_pull(
        argparse.Namespace(dir=None, manifest=manifest_path, profiles=["ups"], force=False, progress="never"),
        environ={"HF_ENDPOINT": hub.endpoint},
    ) == 2  # fmt: skip
    assert "MULTIPASS_MODEL_DIR" in capsys.readouterr().err


def test_pull_without_the_models_extra_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(catalog_commands, "PULL_PACKAGES", ("huggingface_hub_not_installed",))
    args = argparse.Namespace(dir=tmp_path, manifest=None, profiles=["sam"], force=False, progress="never")
    assert catalog_commands.run_pull(args, environ={}) == 2
    assert "pip install 'multipass[models]'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_a_file_the_hub_names_no_digest_for_is_refused_before_its_bytes_come(tmp_path, hub):
    hub.add(REPO, {"config.json": SMALL_CONFIG})
    hub.etags[(REPO, "config.json")] = "not-a-hash"
    manifest = load_manifest(write_manifest(tmp_path / "m.toml", {"ups": file_entries({"config.json": b""})}))
    with pytest.raises(ChecksumMismatch, match="cannot be checked") as caught:
        pull(manifest, manifest.select(["ups"]), tmp_path / "models", settings(hub), progress=False)
    assert "'not-a-hash'" in str(caught.value)
    assert not list((tmp_path / "models").rglob("config.json")) and hub.bytes_sent == 0


def test_an_etag_is_never_part_of_a_path(tmp_path, hub):
    hub.add(REPO, {"config.json": SMALL_CONFIG})
    hub.etags[(REPO, "config.json")] = "../../../../escaped/x"
    entry = {**file_entries({"config.json": b""})[0], "sha256": hashlib.sha256(SMALL_CONFIG).hexdigest()}
    manifest = load_manifest(write_manifest(tmp_path / "m.toml", {"ups": [entry]}))
    report = pull(manifest, manifest.select(["ups"]), tmp_path / "models", settings(hub), progress=False)
    assert report.downloaded == [entry["target"]]
    assert (tmp_path / "models" / entry["target"]).read_bytes() == SMALL_CONFIG
    assert not (tmp_path / "escaped").exists() and not list(tmp_path.rglob("*.part"))


def test_bytes_past_the_announced_size_stop_the_download(tmp_path, hub):
    data = blobs(4, 1, 3 * MB)[0]
    hub.add(REPO, {"x.safetensors": data})
    hub.announced[(REPO, "x.safetensors")] = 1000
    manifest = load_manifest(
        write_manifest(tmp_path / "m.toml", {"ups": file_entries({"x.safetensors": data})})
    )
    with pytest.raises(ChecksumMismatch, match="more than the 1000 bytes"):
        pull(manifest, manifest.select(["ups"]), tmp_path / "models", settings(hub), progress=False)
    assert not list((tmp_path / "models").rglob("*.part"))
    assert not (tmp_path / "models" / "diffusion/upscaler/x.safetensors").exists()


def test_a_part_file_that_is_a_link_is_never_written_through(tmp_path, hub):
    data = blobs(5, 1, 200_000)[0]
    hub.add(REPO, {"x.safetensors": data})
    manifest = load_manifest(
        write_manifest(tmp_path / "m.toml", {"ups": file_entries({"x.safetensors": data})})
    )
    target = tmp_path / "models" / "diffusion/upscaler/x.safetensors"
    target.parent.mkdir(parents=True)
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"keep me")
    sha = hashlib.sha256(data).hexdigest()
    (target.parent / f".{target.name}.{sha[:16]}.part").symlink_to(victim)
    pull(manifest, manifest.select(["ups"]), tmp_path / "models", settings(hub), progress=False)
    assert victim.read_bytes() == b"keep me" and target.read_bytes() == data


def test_a_directory_at_a_target_is_named_before_any_download(tmp_path, hub):
    hub.add(REPO, {"config.json": SMALL_CONFIG})
    entries = file_entries({"config.json": b""})
    manifest = load_manifest(write_manifest(tmp_path / "m.toml", {"ups": entries}))
    (tmp_path / "models" / entries[0]["target"]).mkdir(parents=True)
    with pytest.raises(FailedPrecondition, match="is not a file"):
        pull(
            manifest, manifest.select(["ups"]), tmp_path / "models", settings(hub), progress=False, force=True
        )
    assert hub.bytes_sent == 0


def test_a_model_dir_that_is_a_file_is_one_line_of_error(tmp_path, hub, capsys):
    hub.add(REPO, {"config.json": SMALL_CONFIG})
    manifest = write_manifest(tmp_path / "m.toml", {"ups": file_entries({"config.json": b""})})
    not_a_dir = tmp_path / "afile"
    not_a_dir.write_text("x")
    args = argparse.Namespace(
        dir=not_a_dir / "sub", manifest=manifest, profiles=["ups"], force=False, progress="never"
    )
    code = catalog_commands.run_pull(args, {"HF_ENDPOINT": hub.endpoint})
    err = capsys.readouterr().err
    assert code == 1 and "multipass models pull:" in err and "Traceback" not in err


def test_models_check_names_a_model_dir_that_is_missing_or_not_one(tmp_path, capsys):
    missing = tmp_path / "models"
    args = argparse.Namespace(dir=missing, manifest=None, json=True)
    assert catalog_commands.run_check(args, environ={}) == 0  # the table says what to pull
    captured = capsys.readouterr()
    assert f"{missing} does not exist yet: nothing is installed" in captured.err
    assert not any(f["available"] for f in json.loads(captured.out)["features"] if not f["fallback"])
    missing.write_text("x")
    assert catalog_commands.run_check(args, environ={}) == 2
    assert f"{missing} is not a directory" in capsys.readouterr().err


def test_an_unknown_profile_is_a_usage_error(tmp_path, capsys):
    args = argparse.Namespace(dir=tmp_path, manifest=None, profiles=["nope"], force=False, progress="never")
    assert catalog_commands.run_pull(args, environ={}) == 2
    assert "'nope'" in capsys.readouterr().err


def test_a_redirect_to_a_non_http_address_fails_at_once(tmp_path, hub):
    data = blobs(6, 1, 200_000)[0]
    hub.add(REPO, {"x.safetensors": data})
    hub.locations[(REPO, "x.safetensors")] = "file:///etc/passwd"
    manifest = load_manifest(
        write_manifest(tmp_path / "m.toml", {"ups": file_entries({"x.safetensors": data})})
    )
    started = time.monotonic()
    with pytest.raises(Unavailable, match="not an http\\(s\\) address"):
        pull(manifest, manifest.select(["ups"]), tmp_path / "models", settings(hub), progress=False)
    assert time.monotonic() - started < 5  # not retried as an interrupted download
    assert not list((tmp_path / "models").rglob("*.part"))


def test_a_token_the_hub_refuses_is_named_not_offered_a_resume(tmp_path, hub):
    hub.add(REPO, {"config.json": SMALL_CONFIG})
    manifest = load_manifest(write_manifest(tmp_path / "m.toml", {"ups": file_entries({"config.json": b""})}))
    with pytest.raises(PermissionDenied) as caught:
        pull(manifest, manifest.select(["ups"]), tmp_path / "m", settings(hub, "hf_expired"), progress=False)
    message = str(caught.value)
    assert "HF_TOKEN" in message and "invalid or expired" in message and "\n" not in message
    assert "resume" not in message


def test_a_pull_that_stops_early_leaves_no_config_announcing_weights_that_did_not_arrive(tmp_path, hub):
    from multipass.model_catalog import features

    weights = blobs(3, 1, 2 * MB)[0]
    hub.add(REPO, {"config.json": SMALL_CONFIG, "diffusion_pytorch_model.safetensors": weights})
    hub.corrupt[(REPO, "diffusion_pytorch_model.safetensors")] = bytes(len(weights))
    entries = [  # the manifest's order: the config first
        {"repo": REPO, "revision": "main", "path": path, "target": f"diffusion/controlnet/sd15/pose/{path}"}
        for path in ("config.json", "diffusion_pytorch_model.safetensors")
    ]
    manifest = load_manifest(write_manifest(tmp_path / "m.toml", {"pose": entries}))
    model_dir = tmp_path / "models"
    base = model_dir / "diffusion" / "sd15"  # a base model, so a ControlNet there would be usable
    base.mkdir(parents=True)
    (base / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))

    with pytest.raises(ChecksumMismatch):
        pull(manifest, manifest.select(["pose"]), model_dir, settings(hub), progress=False)

    assert not (model_dir / "diffusion/controlnet/sd15/pose/config.json").exists()
    assert not features.check(model_dir).by_name()["controlnet:pose"].available
    hub.corrupt.clear()
    report = pull(manifest, manifest.select(["pose"]), model_dir, settings(hub), progress=False)
    assert report.downloaded == [e["target"] for e in reversed(entries)]
