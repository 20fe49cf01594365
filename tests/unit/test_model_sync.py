"""``multipass models sync`` against a real S3 endpoint (the shared moto server fixture, on loopback)."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
from pathlib import Path

import boto3
import pytest
from minio import Minio

from multipass.errors import Internal, InvalidInput, Unavailable
from multipass.model_sync import command as models_cmd
from multipass.model_sync.mirror import MANIFEST_NAME, PART_SUFFIX, download, relative_path, sync_prefix

BUCKET = "multipass-models"


@pytest.fixture
def client(s3_settings) -> Minio:
    """A minio client on the session's S3 server (emptied for this test), with the models bucket."""
    minio = Minio(
        endpoint=s3_settings.endpoint,
        access_key=s3_settings.access_key,
        secret_key=s3_settings.secret_key,
        secure=s3_settings.secure,
        region=s3_settings.region,
    )
    minio.make_bucket(bucket_name=BUCKET)
    return minio


def put(client: Minio, key: str, data: bytes, **kwargs) -> None:
    client.put_object(bucket_name=BUCKET, object_name=key, data=io.BytesIO(data), length=len(data), **kwargs)


def seed(client: Minio) -> dict[str, bytes]:
    files = {
        "diffusion/sd15/model_index.json": b'{"_class_name": "StableDiffusionPipeline"}',
        "diffusion/sd15/unet/diffusion_pytorch_model.safetensors": os.urandom(70_000),
        "diffusion/controlnet/pose/config.json": b'{"kind": "pose"}',
        "segmentation/sam/sam_vit_b.pth": os.urandom(3_000),
    }
    for key, data in files.items():
        put(client, key, data)
    return files


def tree(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in root.rglob("*")
        if path.is_file() and not path.name.startswith(".multipass-sync")
    }


def test_first_sync_mirrors_only_the_prefix_with_the_prefix_stripped(client, tmp_path):
    files = seed(client)
    report = sync_prefix(client, bucket=BUCKET, prefix="diffusion", dest=tmp_path)
    expected = {
        key.removeprefix("diffusion/"): data for key, data in files.items() if key.startswith("diffusion/")
    }
    assert tree(tmp_path) == expected
    assert sorted(report.downloaded) == sorted(expected)
    assert report.skipped == []
    assert report.bytes_downloaded == sum(len(data) for data in expected.values())
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    unet = "sd15/unet/diffusion_pytorch_model.safetensors"
    assert manifest["files"][unet]["sha256"] == hashlib.sha256(expected[unet]).hexdigest()


def test_second_sync_skips_current_files_without_rewriting_them(client, tmp_path):
    seed(client)
    sync_prefix(client, bucket=BUCKET, prefix="diffusion/", dest=tmp_path)
    unet = tmp_path / "sd15/unet/diffusion_pytorch_model.safetensors"
    before = unet.stat()
    report = sync_prefix(client, bucket=BUCKET, prefix="diffusion/", dest=tmp_path)
    assert report.downloaded == []
    assert len(report.skipped) == 3
    assert report.bytes_downloaded == 0
    after = unet.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_changed_object_of_the_same_size_is_downloaded_again(client, tmp_path):
    put(client, "diffusion/sd15/model_index.json", b"version-1")
    sync_prefix(client, bucket=BUCKET, prefix="diffusion", dest=tmp_path)
    put(client, "diffusion/sd15/model_index.json", b"version-2")
    report = sync_prefix(client, bucket=BUCKET, prefix="diffusion", dest=tmp_path)
    assert report.downloaded == ["sd15/model_index.json"]
    assert (tmp_path / "sd15/model_index.json").read_bytes() == b"version-2"


def test_locally_modified_file_is_repaired(client, tmp_path):
    put(client, "diffusion/weights.bin", b"A" * 1000)
    sync_prefix(client, bucket=BUCKET, prefix="diffusion", dest=tmp_path)
    target = tmp_path / "weights.bin"
    target.write_bytes(b"B" * 1000)  # same size, different content, newer mtime
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10_000_000))
    report = sync_prefix(client, bucket=BUCKET, prefix="diffusion", dest=tmp_path)
    assert report.downloaded == ["weights.bin"]
    assert target.read_bytes() == b"A" * 1000


def test_file_seeded_by_hand_is_skipped_when_its_md5_matches_the_etag(client, tmp_path):
    put(client, "diffusion/seeded.bin", b"seeded content")
    put(client, "diffusion/stale.bin", b"remote content")
    (tmp_path / "seeded.bin").write_bytes(b"seeded content")
    (tmp_path / "stale.bin").write_bytes(b"local  content")
    report = sync_prefix(client, bucket=BUCKET, prefix="diffusion", dest=tmp_path)
    assert report.skipped == ["seeded.bin"]
    assert report.downloaded == ["stale.bin"]
    assert (tmp_path / "stale.bin").read_bytes() == b"remote content"


def test_multipart_object_is_checked_by_its_sha256_metadata(client, tmp_path):
    data = os.urandom(6 * 1024 * 1024)
    digest = hashlib.sha256(data).hexdigest()
    client.put_object(
        bucket_name=BUCKET,
        object_name="diffusion/big.safetensors",
        data=io.BytesIO(data),
        length=-1,
        part_size=5 * 1024 * 1024,
        metadata={"sha256": digest},
    )
    assert "-" in client.stat_object(bucket_name=BUCKET, object_name="diffusion/big.safetensors").etag
    seeded = tmp_path / "seeded"
    seeded.mkdir()
    (seeded / "big.safetensors").write_bytes(data)
    report = sync_prefix(client, bucket=BUCKET, prefix="diffusion", dest=seeded)
    assert (report.skipped, report.downloaded) == (["big.safetensors"], [])

    fresh = tmp_path / "fresh"
    report = sync_prefix(client, bucket=BUCKET, prefix="diffusion", dest=fresh)
    assert report.downloaded == ["big.safetensors"]
    assert hashlib.sha256((fresh / "big.safetensors").read_bytes()).hexdigest() == digest


def test_sha256_mismatch_fails_and_leaves_the_previous_file(client, tmp_path):
    put(client, "diffusion/model.bin", b"old!")
    sync_prefix(client, bucket=BUCKET, prefix="diffusion", dest=tmp_path)
    put(client, "diffusion/model.bin", b"evil", metadata={"sha256": hashlib.sha256(b"good").hexdigest()})
    with pytest.raises(Internal, match="sha256"):
        sync_prefix(client, bucket=BUCKET, prefix="diffusion", dest=tmp_path)
    assert (tmp_path / "model.bin").read_bytes() == b"old!"
    assert not list(tmp_path.rglob(f"*{PART_SUFFIX}"))


class _BrokenStream:
    """A response that fails half-way through the body, like a dropped connection."""

    headers = {"content-length": "8", "etag": '"x"'}

    def stream(self, _size):
        yield b"half"
        raise OSError("connection reset")

    def close(self):
        pass

    def release_conn(self):
        pass


class _DroppingClient:
    def get_object(self, *, bucket_name, object_name):
        return _BrokenStream()


def test_interrupted_download_leaves_no_partial_file(tmp_path):
    target = tmp_path / "sd15" / "unet.bin"
    target.parent.mkdir()
    target.write_bytes(b"previous")
    with pytest.raises(Unavailable, match="connection reset"):
        download(_DroppingClient(), bucket=BUCKET, key="diffusion/sd15/unet.bin", target=target)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in target.parent.iterdir()] == ["unet.bin"]


def test_stale_part_files_from_a_crashed_sync_are_removed(client, tmp_path):
    put(client, "diffusion/a.bin", b"a")
    stale = tmp_path / "sd15" / f".unet.bin.abc123{PART_SUFFIX}"
    stale.parent.mkdir()
    stale.write_bytes(b"half")
    sync_prefix(client, bucket=BUCKET, prefix="diffusion", dest=tmp_path)
    assert not stale.exists()


def test_delete_removes_only_files_missing_from_the_bucket(client, tmp_path):
    put(client, "diffusion/keep.bin", b"keep")
    (tmp_path / "old" / "nested").mkdir(parents=True)
    (tmp_path / "old" / "nested" / "gone.bin").write_bytes(b"gone")
    report = sync_prefix(client, bucket=BUCKET, prefix="diffusion", dest=tmp_path)
    assert report.deleted == []
    assert (tmp_path / "old/nested/gone.bin").exists()
    report = sync_prefix(client, bucket=BUCKET, prefix="diffusion", dest=tmp_path, delete=True)
    assert report.deleted == ["old/nested/gone.bin"]
    assert not (tmp_path / "old").exists()
    assert tree(tmp_path) == {"keep.bin": b"keep"}
    assert (tmp_path / MANIFEST_NAME).exists()


def test_empty_prefix_mirrors_the_whole_bucket_and_skips_folder_markers(client, tmp_path):
    files = seed(client)
    put(client, "diffusion/empty-folder/", b"")
    sync_prefix(client, bucket=BUCKET, dest=tmp_path)
    assert tree(tmp_path) == files


@pytest.mark.parametrize(
    "key",
    [
        "diffusion/../etc/passwd",
        "diffusion//abs",
        "diffusion/./x",
        "diffusion/",
        "other/x",
        "diffusion/.x.part",
    ],
)
def test_keys_that_would_escape_or_collide_are_refused(key):
    with pytest.raises(InvalidInput):
        relative_path(key, "diffusion/")


def test_unsafe_key_in_the_bucket_aborts_before_writing(client, s3_settings, tmp_path):
    put(client, "diffusion/ok.bin", b"ok")
    # the minio client refuses to write such a key; another S3 client does not
    raw = boto3.client(
        "s3",
        endpoint_url=f"http://{s3_settings.endpoint}",
        aws_access_key_id="multipass",
        aws_secret_access_key="multipass-secret",
        region_name="us-east-1",
    )
    raw.put_object(Bucket=BUCKET, Key="diffusion/x/../../escape.bin", Body=b"bad")
    dest = tmp_path / "dest"
    with pytest.raises(InvalidInput):
        sync_prefix(client, bucket=BUCKET, prefix="diffusion", dest=dest)
    assert not (tmp_path / "escape.bin").exists()
    assert tree(dest) == {}


def test_missing_bucket_is_unavailable(client, tmp_path):
    with pytest.raises(Unavailable, match="no-such-bucket"):
        sync_prefix(client, bucket="no-such-bucket", dest=tmp_path)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="multipass")
    models_cmd.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_cli_sync_reads_s3_settings_from_the_environment(client, s3_settings, tmp_path, monkeypatch, capsys):
    seed(client)
    monkeypatch.setenv("MULTIPASS_S3_ENDPOINT", s3_settings.endpoint)
    monkeypatch.setenv("MULTIPASS_S3_SECURE", "false")
    args = _parse(
        ["models", "sync", "--bucket", BUCKET, "--prefix", "segmentation/", "--dest", str(tmp_path)]
    )
    assert args.run(args) == 0
    assert set(tree(tmp_path)) == {"sam/sam_vit_b.pth"}
    summary = json.loads(capsys.readouterr().out)
    assert summary["downloaded"] == 1 and summary["skipped"] == 0


def test_cli_names_the_bad_variable_and_fails(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MULTIPASS_S3_SECURE", "maybe")
    args = _parse(["models", "sync", "--dest", str(tmp_path)])
    assert args.run(args) == 1
    assert "MULTIPASS_S3_SECURE" in capsys.readouterr().err


def test_cli_defaults_match_the_models_bucket(tmp_path):
    args = _parse(["models", "sync", "--dest", str(tmp_path)])
    assert (args.bucket, args.prefix, args.delete, args.workers) == ("multipass-models", "", False, 4)
