"""Settings from MULTIPASS_* variables: typed values, defaults, and one error naming every bad variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from multipass.config import EnvReader
from multipass.connections import NatsSettings, S3Settings
from multipass.errors import ConfigError


def bad_fields(reader: EnvReader) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        reader.check()
    return [v.field for v in caught.value.violations]


def test_typed_values_are_read():
    reader = EnvReader(
        {
            "MULTIPASS_NAME": "gw",
            "MULTIPASS_COUNT": "7",
            "MULTIPASS_RATIO": "0.25",
            "MULTIPASS_ON": "yes",
            "MULTIPASS_OFF": "0",
            "MULTIPASS_DIR": "~/models",
            "MULTIPASS_KIND": "b",
            "MULTIPASS_LIST": " a, b ,,c ",
            "MULTIPASS_ADDR": "minio:9000",
        }
    )
    assert reader.str("NAME") == "gw"
    assert reader.int("COUNT", 1, min=1, max=10) == 7
    assert reader.float("RATIO", 1.0, min=0.0, max=1.0) == 0.25
    assert reader.bool("ON", False) is True
    assert reader.bool("OFF", True) is False
    assert reader.path("DIR") == Path("~/models").expanduser()
    assert reader.choice("KIND", "a", ("a", "b")) == "b"
    assert reader.csv("LIST") == ("a", "b", "c")
    assert reader.address("ADDR", "127.0.0.1:1") == "minio:9000"
    reader.check()


def test_unset_and_empty_variables_take_defaults():
    reader = EnvReader({"MULTIPASS_COUNT": ""})
    assert reader.int("COUNT", 3) == 3
    assert reader.str("NAME", "x") == "x"
    assert reader.path("DIR") is None
    assert reader.csv("LIST", ("d",)) == ("d",)
    reader.check()


def test_every_bad_variable_is_named_in_one_error():
    reader = EnvReader(
        {
            "MULTIPASS_COUNT": "seven",
            "MULTIPASS_RANGE": "99",
            "MULTIPASS_RATIO": "x",
            "MULTIPASS_ON": "maybe",
            "MULTIPASS_KIND": "z",
            "MULTIPASS_URL": "http://x",
            "MULTIPASS_ADDR": "http://minio:9000",
        }
    )
    assert reader.int("COUNT", 1) == 1
    assert reader.int("RANGE", 5, min=1, max=10) == 5
    reader.float("RATIO", 0.5)
    reader.bool("ON", False)
    reader.choice("KIND", "a", ("a", "b"))
    reader.url("URL", "nats://h:1", schemes=("nats",))
    reader.address("ADDR", "127.0.0.1:9000")
    reader.str("TOKEN", required=True)
    assert bad_fields(reader) == [
        "MULTIPASS_COUNT",
        "MULTIPASS_RANGE",
        "MULTIPASS_RATIO",
        "MULTIPASS_ON",
        "MULTIPASS_KIND",
        "MULTIPASS_URL",
        "MULTIPASS_ADDR",
        "MULTIPASS_TOKEN",
    ]


def test_config_error_message_names_the_variables():
    reader = EnvReader({"MULTIPASS_COUNT": "x"})
    reader.int("COUNT", 1)
    with pytest.raises(ConfigError, match="MULTIPASS_COUNT") as caught:
        reader.check()
    assert "'x'" in str(caught.value)


def test_must_exist_path(tmp_path):
    reader = EnvReader({"MULTIPASS_HERE": str(tmp_path), "MULTIPASS_GONE": str(tmp_path / "nope")})
    assert reader.path("HERE", must_exist=True) == tmp_path
    reader.path("GONE", must_exist=True)
    assert bad_fields(reader) == ["MULTIPASS_GONE"]


@pytest.mark.parametrize("value", ["minio:9000", "127.0.0.1:1", "[::1]:9000", "s3.example.com:443"])
def test_address_accepts_host_port(value):
    reader = EnvReader({"MULTIPASS_A": value})
    assert reader.address("A", "x:1") == value
    reader.check()


@pytest.mark.parametrize(
    "value", ["minio", "minio:", ":9000", "minio:0", "minio:70000", "minio:http", "a b:1"]
)
def test_address_refuses_anything_else(value):
    reader = EnvReader({"MULTIPASS_A": value})
    reader.address("A", "x:1")
    assert bad_fields(reader) == ["MULTIPASS_A"]


def test_connection_settings_defaults_match_the_contract():
    reader = EnvReader({})
    assert NatsSettings.from_env(reader) == NatsSettings(url="nats://127.0.0.1:4222")
    assert S3Settings.from_env(reader) == S3Settings(
        endpoint="127.0.0.1:9000",
        access_key="multipass",
        secret_key="multipass-secret",
        secure=False,
        region="us-east-1",
    )
    reader.check()


def test_connection_settings_from_environment():
    reader = EnvReader(
        {
            "MULTIPASS_NATS_URL": "nats://nats.multipass.svc:4222",
            "MULTIPASS_S3_ENDPOINT": "minio.multipass.svc:9000",
            "MULTIPASS_S3_ACCESS_KEY": "ak",
            "MULTIPASS_S3_SECRET_KEY": "sk-very-secret",
            "MULTIPASS_S3_SECURE": "true",
            "MULTIPASS_S3_REGION": "eu-west-1",
        }
    )
    nats = NatsSettings.from_env(reader)
    s3 = S3Settings.from_env(reader)
    reader.check()
    assert nats.url == "nats://nats.multipass.svc:4222"
    assert (s3.endpoint, s3.access_key, s3.secret_key, s3.secure, s3.region) == (
        "minio.multipass.svc:9000",
        "ak",
        "sk-very-secret",
        True,
        "eu-west-1",
    )
    assert "sk-very-secret" not in repr(s3)


def test_bad_connection_settings_are_named():
    reader = EnvReader(
        {
            "MULTIPASS_NATS_URL": "localhost:4222",
            "MULTIPASS_S3_ENDPOINT": "http://minio:9000",
            "MULTIPASS_S3_SECURE": "si",
        }
    )
    NatsSettings.from_env(reader)
    S3Settings.from_env(reader)
    assert bad_fields(reader) == ["MULTIPASS_NATS_URL", "MULTIPASS_S3_ENDPOINT", "MULTIPASS_S3_SECURE"]


def test_settings_are_frozen():
    settings = NatsSettings()
    with pytest.raises(AttributeError):
        settings.url = "nats://elsewhere:4222"  # type: ignore[misc]


def test_nats_replicas_default_to_one_and_are_bounded():
    from multipass.connections import NatsSettings

    assert NatsSettings.from_env(EnvReader({})).replicas == 1
    assert NatsSettings.from_env(EnvReader({"MULTIPASS_NATS_REPLICAS": "3"})).replicas == 3
    reader = EnvReader({"MULTIPASS_NATS_REPLICAS": "7"})
    NatsSettings.from_env(reader)
    with pytest.raises(ConfigError) as caught:
        reader.check()
    assert "MULTIPASS_NATS_REPLICAS" in str(caught.value)


def test_the_nats_password_never_reaches_a_log_line():
    """MULTIPASS_NATS_URL carries the NATS user's password in Kubernetes (nats://gateway:$(NATS_PASSWORD)@nats:4222)."""
    nats = NatsSettings.from_env(EnvReader({"MULTIPASS_NATS_URL": "nats://gateway:n4ts-s3cret@nats:4222"}))
    assert nats.url == "nats://gateway:n4ts-s3cret@nats:4222"  # the client still gets it
    assert "n4ts-s3cret" not in repr(nats)
    assert "nats://gateway:***@nats:4222" in repr(nats)
    reader = EnvReader({"MULTIPASS_NATS_URL": "http://gateway:n4ts-s3cret@nats:4222"})
    NatsSettings.from_env(reader)
    with pytest.raises(ConfigError) as caught:
        reader.check()
    assert "n4ts-s3cret" not in str(caught.value)
